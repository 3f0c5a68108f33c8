//! Crash consistency: `connector-host run` is killed with SIGKILL at random moments while it
//! backfills and while the tenant keeps changing, restarted each time, and at the end its
//! `--out` holds every alert version exactly once with `seq` contiguous; with a SQLite
//! state file and with a PostgreSQL one.
//!
//! `CRASH_KILLS=200 cargo test -p connector-host --test crash -- --nocapture` runs it longer
//! (`host-test/crash-test.sh`).

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::graph_sim::{Behaviour, GraphSim};
use support::{Rng, Tenant, assert_exactly_once, host, text, with_state};

#[test]
fn kill_9_at_random_moments_neither_loses_nor_repeats_a_line() {
    crash_test(None);
}

/// The same on a PostgreSQL store: the lease of a killed `run` on this machine is taken
/// over at once (its process is gone), and the transaction it had open is rolled back.
#[test]
fn kill_9_at_random_moments_on_postgresql_neither_loses_nor_repeats_a_line() {
    let server = support::postgres::PgServer::start();
    crash_test(Some(server.database("crash")));
}

/// `state`: a PostgreSQL URL, or the tenant's SQLite file.
fn crash_test(state: Option<String>) {
    let kills: usize = std::env::var("CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut rng = Rng::seeded("CRASH_SEED", &format!("crash test: {kills} kills"));

    let sim = GraphSim::start(Behaviour {
        page_max: 4,
        ..Behaviour::default()
    });
    sim.add_alerts("a", 120, Duration::from_secs(20 * 3600));
    let tenant = Tenant::new(&sim);
    let args = |once: bool| {
        let args = tenant.run_args(
            "defender-alerts",
            once,
            &["--log-level", "warn", "--interval", "1"],
        );
        with_state(args, state.as_deref())
    };

    for k in 0..kills {
        let a = args(false);
        let mut child = host(&a.iter().map(String::as_str).collect::<Vec<_>>())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start connector-host");
        std::thread::sleep(Duration::from_millis(20 + rng.below(300)));
        child.kill().expect("SIGKILL"); // std sends SIGKILL on Unix
        child.wait().unwrap();
        // The tenant changes between crashes: alerts are updated and new ones arrive.
        if k % 4 == 3 {
            support::change_alerts(&sim, &mut rng, &format!("k{k}"));
        }
    }

    // Catch up without interruption, then compare with the ground truth.
    let a = args(true);
    let last = host(&a.iter().map(String::as_str).collect::<Vec<_>>())
        .output()
        .unwrap();
    assert!(
        last.status.success(),
        "the state left by the crashes is usable: {}",
        text(&last.stderr)
    );
    assert_exactly_once(std::path::Path::new(&tenant.path("out.jsonl")), &sim);
}
