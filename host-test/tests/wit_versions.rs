//! Components built for older WIT versions still load and run: the checked-in
//! `data/defender_alerts-0.1.0.wasm` (built from the 0.1.0 release commit, see
//! `data/README.md`) against the Graph simulator, through the host's 0.1 bindings.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::graph_sim::{Behaviour, GraphSim};
use support::{Tenant, assert_exactly_once, run_host, text};

fn alerts_0_1_0() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/defender_alerts-0.1.0.wasm")
}

#[test]
fn the_0_1_0_alerts_component_loads_as_0_1_and_describes_itself() {
    let engine = connector_host::engine::HostEngine::new(Some(support::cache_dir())).unwrap();
    let loaded = engine
        .load(&alerts_0_1_0())
        .expect("the 0.1.0 component loads");
    assert_eq!(loaded.wit_version(), connector_host::wit::WitVersion::V0_1);
    let current = engine
        .load(&support::alerts_wasm())
        .expect("the current component loads");
    assert_eq!(current.wit_version(), connector_host::wit::WitVersion::V0_2);

    let out = run_host(&["describe", alerts_0_1_0().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["name"], "defender-alerts");
    assert_eq!(doc["version"], "0.1.0");
    assert_eq!(doc["wit"], "secops:connector@0.1.0");
    assert!(doc["config_schema"]["properties"]["service_sources"].is_object());
    // 0.1 has no `secrets` in its metadata: the host shows none rather than guessing.
    assert_eq!(doc["secrets"], serde_json::json!([]));
}

#[test]
fn the_0_1_0_alerts_component_validates_and_delivers_every_alert_version_once() {
    let sim = GraphSim::start(Behaviour {
        page_max: 7,
        throttle_every: Some(5),
        token_lifetime: Duration::from_secs(3600),
        ..Behaviour::default()
    });
    sim.add_alerts("a", 30, Duration::from_secs(20 * 3600));
    let files = Tenant::new(&sim);
    let component = alerts_0_1_0().display().to_string();
    let run = || {
        let mut args = files.run_args("defender-alerts", true, &[]);
        args[1] = component.clone();
        run_host(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let validate = run_host(&[
        "validate",
        &component,
        "--config",
        &files.path("tenant.json"),
        "--secrets",
        &files.path("secrets.json"),
    ]);
    assert_eq!(text(&validate.stdout), "ok\n", "{}", text(&validate.stderr));

    let first = run();
    assert!(first.status.success(), "{}", text(&first.stderr));
    let out = files.path("out.jsonl");
    assert_exactly_once(Path::new(&out), &sim);
    assert!(
        sim.with_counters(|c| c.throttled) > 0,
        "the run met throttling"
    );

    // Updates and new alerts: the 0.1 cursor the host stored is read back by the same
    // component, and only the new versions come.
    let ids = sim.ids();
    sim.update_alerts(&ids[..4]);
    sim.add_alerts("b", 6, Duration::from_secs(60));
    let second = run();
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert_exactly_once(Path::new(&out), &sim);
    let lines = support::read_lines(Path::new(&out));
    assert_eq!(lines.len(), 30 + 4 + 6);
    assert!(
        lines.iter().all(|l| l.get("incomplete").is_none()),
        "a 0.1 event is never incomplete"
    );
    assert!(
        lines.iter().all(|l| l.get("ocsf").is_none()),
        "a 0.1 component does not normalize: its events have no `ocsf`"
    );
    let status = run_host(&["status", "--state", &files.path("state.db")]);
    assert!(status.status.success(), "{}", text(&status.stderr));
    assert!(
        !text(&status.stdout).contains("degraded"),
        "a 0.1 batch reports nothing degraded: {}",
        text(&status.stdout)
    );
}
