//! `connector-host run` end to end: the CLI binary, the built component, a Graph-like
//! simulator on loopback, and the ground truth it keeps.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use support::graph_sim::{Behaviour, GraphSim};
use support::{
    Tenant, alerts_wasm, assert_exactly_once, assert_no_secrets, read_lines, run_host, text,
    write_json,
};

fn state_bytes(files: &Tenant) -> Vec<u8> {
    let mut bytes = vec![];
    for suffix in ["", "-wal", "-shm"] {
        if let Ok(b) = std::fs::read(files.path(&format!("state.db{suffix}"))) {
            bytes.extend(b);
        }
    }
    bytes
}

#[test]
fn run_delivers_every_alert_version_once_through_paging_throttling_and_token_expiry() {
    let sim = GraphSim::start(Behaviour {
        page_max: 7,
        token_lifetime: Duration::from_millis(300),
        throttle_every: Some(4),
        ..Behaviour::default()
    });
    sim.add_alerts("a", 40, Duration::from_secs(20 * 3600));
    let files = Tenant::new(&sim);

    let first = files.run_once("defender-alerts", &["--log-level", "trace"]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert_exactly_once(Path::new(&files.path("out.jsonl")), &sim);
    assert!(
        sim.with_counters(|c| c.throttled) > 0,
        "the run met throttling"
    );

    // The tenant moves on: updates of known alerts and new ones.
    let ids = sim.ids();
    sim.update_alerts(&ids[..5]);
    sim.add_alerts("b", 9, Duration::from_secs(60));
    let second = files.run_once("defender-alerts", &["--log-level", "trace"]);
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert_exactly_once(Path::new(&files.path("out.jsonl")), &sim);
    assert_eq!(
        read_lines(Path::new(&files.path("out.jsonl"))).len(),
        40 + 5 + 9
    );
    assert!(
        sim.with_counters(|c| c.expired_tokens) > 0,
        "a token expired mid-run"
    );

    for (what, bytes) in [
        ("stderr of the first run", first.stderr),
        ("stderr of the second run", second.stderr),
        ("stdout", [first.stdout, second.stdout].concat()),
        ("--out", std::fs::read(files.path("out.jsonl")).unwrap()),
        ("the state database", state_bytes(&files)),
    ] {
        assert_no_secrets(what, &bytes, &sim);
    }
}

#[test]
fn validate_prints_ok_or_the_cause_with_its_exit_code() {
    let sim = GraphSim::start(Behaviour::default());
    let files = Tenant::new(&sim);
    let validate = |secrets: &str| {
        run_host(&[
            "validate",
            alerts_wasm().to_str().unwrap(),
            "--config",
            &files.path("tenant.json"),
            "--secrets",
            secrets,
        ])
    };
    let ok = validate(&files.path("secrets.json"));
    assert_eq!(text(&ok.stdout), "ok\n", "{}", text(&ok.stderr));
    assert_eq!(ok.status.code(), Some(0));

    write_json(
        &files.dir.path().join("wrong.json"),
        &json!({"client-secret": "not-the-secret-x"}),
    );
    let wrong = validate(&files.path("wrong.json"));
    assert!(
        text(&wrong.stdout).starts_with("error: invalid-secret: "),
        "{}",
        text(&wrong.stdout)
    );
    assert_eq!(wrong.status.code(), Some(1));
    assert_no_secrets(
        "validate output",
        &[wrong.stdout, wrong.stderr].concat(),
        &sim,
    );
}

#[test]
fn a_changed_backfill_is_refused_once_the_instance_has_state() {
    let sim = GraphSim::start(Behaviour::default());
    sim.add_alerts("a", 3, Duration::from_secs(3600));
    let files = Tenant::new(&sim);
    assert!(
        files
            .run_once("defender-alerts", &["--log-level", "warn"])
            .status
            .success()
    );
    write_json(&files.dir.path().join("tenant.json"), &sim.config(7));
    let refused = files.run_once("defender-alerts", &["--log-level", "warn"]);
    assert_eq!(refused.status.code(), Some(2));
    let err = text(&refused.stderr);
    assert!(
        err.contains("backfill_days") && err.contains("delete the instance"),
        "{err}"
    );
}

#[test]
fn sigterm_finishes_the_poll_in_flight_and_exits_0() {
    let sim = GraphSim::start(Behaviour::default());
    sim.add_alerts("a", 30, Duration::from_secs(3600));
    let files = Tenant::new(&sim);
    let args = files.run_args("defender-alerts", false, &["--interval", "3600"]);
    let child = support::host(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it has caught up (30 alerts, 7 a page), then ask it to stop.
    let out = Path::new(&files.path("out.jsonl")).to_path_buf();
    for _ in 0..300 {
        if read_lines(&out).len() == 30 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(read_lines(&out).len(), 30, "caught up before the signal");
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(
        text(&output.stderr).contains("stopped"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn incidents_keep_to_the_quota_and_deliver_every_version_once() {
    // 2,600 incidents in parts of one page (at most 50, Graph's maximum, sized to about
    // 37): the backfill needs more than the minute's 50 calls, so it must pause for the
    // budget (about a minute) instead of drawing 429s.
    let sim = GraphSim::start(Behaviour {
        page_max: 100,
        incidents_quota: true,
        ..Behaviour::default()
    });
    sim.add_alerts("i", 2600, Duration::from_secs(20 * 3600));
    let files = Tenant::new(&sim);
    let started = std::time::Instant::now();
    let out = files.run_once("defender-incidents", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_exactly_once(Path::new(&files.path("out.jsonl")), &sim);
    assert_eq!(
        sim.with_counters(|c| c.quota_violations),
        0,
        "no 429 from the connector's own pace"
    );
    assert!(
        text(&out.stderr).contains("call budget spent"),
        "{}",
        text(&out.stderr)
    );
    let lines = read_lines(Path::new(&files.path("out.jsonl")));
    assert!(lines.iter().all(|l| l["kind"] == "defender.incident"));
    let (calls, tokens) = sim.with_counters(|c| (c.graph_requests, c.token_requests));
    eprintln!(
        "incidents backfill: {} records, {calls} Graph calls, {tokens} token requests, {:.0?} elapsed",
        lines.len(),
        started.elapsed()
    );
}

#[test]
fn entra_reads_all_four_types_and_delivers_every_record_and_version_once() {
    let sim = GraphSim::start(Behaviour {
        page_max: 6,
        throttle_every: Some(7),
        ..Behaviour::default()
    });
    sim.add_alerts("e", 25, Duration::from_secs(20 * 3600));
    let files = Tenant::with_all_entra_types(&sim);
    let run = || files.run_once("entra", &[]);
    let first = run();
    assert!(first.status.success(), "{}", text(&first.stderr));
    // Risk changes: users and detections get new versions; audits and sign-ins do not change.
    let ids = sim.ids();
    sim.update_alerts(&ids[..4]);
    let second = run();
    assert!(second.status.success(), "{}", text(&second.stderr));

    let lines = read_lines(Path::new(&files.path("out.jsonl")));
    let of_kind = |kind: &str| -> Vec<(String, String)> {
        lines
            .iter()
            .filter(|l| l["kind"] == kind)
            .map(|l| {
                (
                    l["id"].as_str().unwrap().into(),
                    l["version"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    let all_ids: std::collections::BTreeSet<String> = ids.iter().cloned().collect();
    for kind in ["entra.directory_audit", "entra.risky_sign_in"] {
        let got = of_kind(kind);
        let unique: std::collections::BTreeSet<String> =
            got.iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(unique.len(), got.len(), "{kind}: a record twice");
        assert_eq!(unique, all_ids, "{kind}: every record");
        assert!(got.iter().all(|(_, v)| v.is_empty()), "{kind} is immutable");
    }
    let latest = sim.latest();
    let truth = sim.ground_truth();
    for kind in ["entra.risky_user", "entra.risk_detection"] {
        let got = of_kind(kind);
        let unique: std::collections::BTreeSet<(String, String)> = got.iter().cloned().collect();
        assert_eq!(unique.len(), got.len(), "{kind}: a version twice");
        assert!(
            latest.is_subset(&unique),
            "{kind}: a current version missing"
        );
        assert!(unique.is_subset(&truth), "{kind}: a version never served");
        assert!(
            unique.len() > latest.len(),
            "{kind}: the updates came as new versions"
        );
    }
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=lines.len() as u64).collect::<Vec<_>>());
    assert!(sim.with_counters(|c| c.throttled) > 0, "throttling was met");
}

#[test]
fn a_backfill_reads_shallow_parts_with_few_graph_calls() {
    // 10,000 alerts over 20 hours, read in window parts of at most 500 alerts, one page each
    // (no `$skip`): 20 pages at best; the count of each new part and the parts whose width
    // adapts to the alerts' spread cost some more (32 measured), never more than twice.
    let sim = GraphSim::start(Behaviour {
        page_max: 2000,
        ..Behaviour::default()
    });
    sim.add_alerts("a", 10_000, Duration::from_secs(20 * 3600));
    let files = Tenant::new(&sim);
    let out = files.run_once("defender-alerts", &["--log-level", "warn"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_exactly_once(Path::new(&files.path("out.jsonl")), &sim);
    let (calls, tokens) = sim.with_counters(|c| (c.graph_requests, c.token_requests));
    assert!(
        (20..=40).contains(&calls) && tokens == 1,
        "Graph calls ({calls}) and token requests ({tokens}) for 10,000 alerts"
    );
}

#[test]
fn status_shows_each_instance_with_its_health_and_the_broken_one_with_its_error() {
    let sim = GraphSim::start(Behaviour {
        throttle_every: Some(3),
        ..Behaviour::default()
    });
    sim.add_alerts("a", 20, Duration::from_secs(3600));
    let files = Tenant::new(&sim);
    assert!(
        files
            .run_once("defender-alerts", &["--log-level", "warn"])
            .status
            .success()
    );
    // A second instance in the same state file, with a wrong secret.
    write_json(&files.dir.path().join("broken.json"), &sim.config(1));
    write_json(
        &files.dir.path().join("wrong.json"),
        &json!({"client-secret": "not-the-secret-x"}),
    );
    let args = files.run_args_with(
        "defender-alerts",
        &[
            ("--config", "broken.json"),
            ("--secrets", "wrong.json"),
            ("--out", "broken.jsonl"),
        ],
        &["--once"],
    );
    let broken = run_host(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(broken.status.code(), Some(1));

    let out = run_host(&["status", "--state", &files.path("state.db")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let row = |name: &str| -> Vec<String> {
        table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name}: {table}"))
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    // INSTANCE STATE CONNECTOR LAST-OK LAG EVENTS UNDELIV FAILS NEXT-POLL OWNER
    let healthy = row("tenant ");
    assert_eq!(healthy[1..3], ["stopped", "defender-alerts"], "{table}");
    assert_eq!(healthy[6], "20", "events: {table}");
    assert_eq!(healthy[8], "0", "no failures: {table}");
    let failing = row("broken ");
    assert_eq!(failing[3], "never", "{table}");
    assert!(
        table.contains("invalid-secret") || table.contains("client secret is wrong"),
        "{table}"
    );
    assert_no_secrets("status", &out.stdout, &sim);
    let json = run_host(&["status", "--state", &files.path("state.db"), "--json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&json.stdout).unwrap();
    assert!(
        rows[1]["throttled"].as_u64().unwrap() > 0,
        "throttled responses counted: {rows:?}"
    );
    assert_no_secrets("status --json", &json.stdout, &sim);
}

/// Runs `args` under a pseudo-terminal (util-linux `script`): what a user at a terminal sees.
fn on_terminal(args: &[String]) -> String {
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut command = quote(env!("CARGO_BIN_EXE_connector-host"));
    for a in args {
        command.push(' ');
        command.push_str(&quote(a));
    }
    let out = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("CONNECTOR_HOST_CACHE", support::cache_dir())
        .env_remove("RUST_LOG")
        .output()
        .expect("util-linux script runs");
    assert!(out.status.success(), "{}", text(&out.stdout));
    text(&out.stdout)
}

#[test]
fn a_backfill_shows_progress_on_a_terminal_and_plain_logs_elsewhere() {
    let sim = GraphSim::start(Behaviour {
        page_max: 5,
        ..Behaviour::default()
    });
    sim.add_alerts("a", 40, Duration::from_secs(3600));
    let files = Tenant::new(&sim);

    let plain = files.run_once("defender-alerts", &[]);
    assert!(plain.status.success(), "{}", text(&plain.stderr));
    let log = text(&plain.stderr);
    assert!(
        !log.contains("catching up"),
        "no progress line in a log: {log}"
    );

    let terminal = Tenant::new(&sim);
    // Event lines go to `--out`: the terminal shows the progress and the logs only.
    let screen = on_terminal(&terminal.run_args("defender-alerts", true, &[]));
    assert!(screen.contains("catching up: "), "{screen}");
    assert!(screen.contains("caught up"), "{screen}");
    assert_exactly_once(Path::new(&terminal.path("out.jsonl")), &sim);
}

#[test]
fn processes_sharing_a_state_file_wait_for_each_other_instead_of_failing() {
    // Three `run` processes of three instances commit into one state file at once (many
    // small pages each) while `status` reads it.
    let sims: Vec<GraphSim> = (0..3)
        .map(|_| {
            let sim = GraphSim::start(Behaviour {
                page_max: 2,
                ..Behaviour::default()
            });
            sim.add_alerts("a", 60, Duration::from_secs(3600));
            sim
        })
        .collect();
    let shared = tempfile::tempdir().unwrap();
    let state = shared.path().join("state.db").display().to_string();
    let tenants: Vec<Tenant> = sims.iter().map(Tenant::new).collect();
    let children: Vec<_> = tenants
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let instance = format!("t{i}");
            let args = t.run_args_with(
                "defender-alerts",
                &[("--state", &state)],
                &["--once", "--instance", &instance],
            );
            support::host(&args.iter().map(String::as_str).collect::<Vec<_>>())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    while !Path::new(&state).exists() {
        std::thread::sleep(Duration::from_millis(10));
    }
    for _ in 0..20 {
        let status = run_host(&["status", "--state", &state]);
        assert!(status.status.success(), "{}", text(&status.stderr));
    }
    for (child, (sim, tenant)) in children.into_iter().zip(sims.iter().zip(&tenants)) {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_exactly_once(Path::new(&tenant.path("out.jsonl")), sim);
    }
}

#[test]
fn polls_on_fresh_component_instances_share_one_token_that_no_file_holds() {
    // Each poll after a wait runs on a component instance of its own (the one before was
    // dropped with its memory); the token of the first reaches the others through the
    // host's token cache.
    let sim = GraphSim::start(Behaviour::default());
    sim.add_alerts("a", 3, Duration::from_secs(3600));
    let files = Tenant::new(&sim);
    let args = files.run_args("defender-alerts", false, &["--interval", "1"]);
    let child = support::host(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..600 {
        if sim.with_counters(|c| c.graph_requests) >= 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let output = child.wait_with_output().unwrap();
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let (polls, tokens) = sim.with_counters(|c| (c.graph_requests, c.token_requests));
    assert!(polls >= 3, "{polls} polls:\n{stderr}");
    assert_eq!(tokens, 1, "token requests for {polls} polls");
    assert_exactly_once(Path::new(&files.path("out.jsonl")), &sim);

    let mut every_file = vec![];
    for entry in std::fs::read_dir(files.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n == "secrets.json") {
            continue; // the secret's own file, written by the test
        }
        every_file.extend(std::fs::read(&path).unwrap());
    }
    for (what, bytes) in [
        ("stderr", output.stderr),
        ("stdout", output.stdout),
        ("the files of the run", every_file),
    ] {
        assert_no_secrets(what, &bytes, &sim);
    }
}
