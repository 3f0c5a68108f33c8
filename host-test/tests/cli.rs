//! The CLI's answers to bad input: one clear line on stderr and the documented exit code.

mod support;

use serde_json::json;
use support::{alerts_wasm, run_host, text, write_json};

#[test]
fn describe_prints_the_metadata_and_the_config_schema() {
    let out = run_host(&["describe", alerts_wasm().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["name"], "defender-alerts");
    assert_eq!(doc["event_kinds"], json!(["defender.alert"]));
    assert!(
        doc["permissions"]
            .as_array()
            .unwrap()
            .contains(&json!("SecurityAlert.Read.All"))
    );
    assert!(doc["config_schema"]["properties"]["service_sources"].is_object());
    assert_eq!(doc["wit"], "secops:connector@0.2.0");
}

fn run_with_config(config: serde_json::Value) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tenant.json");
    write_json(&path, &config);
    run_host(&[
        "run",
        alerts_wasm().to_str().unwrap(),
        "--config",
        path.to_str().unwrap(),
        "--state",
        dir.path().join("s.db").to_str().unwrap(),
        "--once",
    ])
}

#[test]
fn bad_configs_are_refused_with_the_key_and_exit_code_2() {
    let base = json!({"tenant_id": "contoso.onmicrosoft.com", "client_id": "2b7c9d1e-3f4a-4b5c-8d6e-7f8a9b0c1d2e"});
    let with = |key: &str, value: serde_json::Value| {
        let mut c = base.clone();
        c[key] = value;
        c
    };
    let cases = [
        (with("backfill_days", json!(30)), "backfill_days"),
        (with("backfill_days", json!("7")), "backfill_days"),
        (
            with("graph_url", json!("http://graph.example.com")),
            "graph_url",
        ),
        (with("colour", json!("blue")), "colour"),
        (
            with("service_sources", json!(["notASource"])),
            "service_sources",
        ),
    ];
    for (config, key) in cases {
        let out = run_with_config(config.clone());
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{config}: {err}");
        assert!(
            err.contains("invalid config") && err.contains(key),
            "{config}: {err}"
        );
        assert_eq!(
            err.lines().filter(|l| l.starts_with("error:")).count(),
            1,
            "{err}"
        );
    }
}

#[test]
fn a_file_that_is_not_a_component_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.wasm");
    std::fs::write(&bogus, b"\0asm\x01\0\0\0").unwrap(); // a core module, not a component
    let out = run_host(&["describe", bogus.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("is not a WebAssembly component"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_corrupt_state_file_is_refused_with_the_remedy() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("s.db");
    std::fs::write(&state, vec![b'x'; 4096]).unwrap();
    let config = dir.path().join("tenant.json");
    write_json(
        &config,
        &json!({"tenant_id": "contoso.onmicrosoft.com", "client_id": "2b7c9d1e-3f4a-4b5c-8d6e-7f8a9b0c1d2e"}),
    );
    let out = run_host(&[
        "run",
        alerts_wasm().to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
        "--once",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    // Not SQLite at all: no advice to delete what may be another file.
    assert!(
        err.contains("is not a SQLite database") && !err.contains("delete"),
        "{err}"
    );
    // SQLite, damaged: a state file gone bad, to restore or start over.
    let mut bytes = b"SQLite format 3\0".to_vec();
    bytes.extend(vec![0xAB; 4096]);
    std::fs::write(&state, bytes).unwrap();
    let out = run_host(&[
        "run",
        alerts_wasm().to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
        "--once",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("not a usable SQLite database") && err.contains("delete it"),
        "{err}"
    );
}

#[test]
fn demo_replays_the_bundled_fixture_to_stdout() {
    let out = run_host(&["--log-level", "warn", "demo"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert!(lines.iter().all(|l| l["kind"] == "defender.alert"));
}

#[test]
fn a_corrupt_or_foreign_cursor_fails_the_poll_clearly_and_is_kept() {
    use support::graph_sim::{Behaviour, GraphSim};
    let sim = GraphSim::start(Behaviour::default());
    sim.add_alerts("a", 3, std::time::Duration::from_secs(3600));
    let tenant = support::Tenant::new(&sim);
    let path = |n: &str| tenant.path(n);
    let run = || tenant.run_once("defender-alerts", &[]);
    assert!(run().status.success());
    let db = rusqlite::Connection::open(path("state.db")).unwrap();
    for (cursor, expected) in [
        ("not a cursor", "cursor"),
        (r#"{"v":1,"connector":"entra","streams":{}}"#, "entra"),
        (
            r#"{"v":9,"connector":"defender-alerts","streams":{}}"#,
            "version",
        ),
    ] {
        db.execute("UPDATE instances SET cursor = ?1", [cursor])
            .unwrap();
        let out = run();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cursor}: {err}");
        assert!(
            err.contains("instance tenant") && err.contains(expected),
            "{cursor}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        let kept: String = db
            .query_row("SELECT cursor FROM instances", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kept, cursor, "a failed poll keeps its cursor");
    }
}

#[test]
fn a_state_file_cut_short_by_a_crash_is_refused_or_opens_cleanly_never_panics() {
    use support::graph_sim::{Behaviour, GraphSim};
    let sim = GraphSim::start(Behaviour::default());
    sim.add_alerts("a", 5, std::time::Duration::from_secs(3600));
    let tenant = support::Tenant::new(&sim);
    let path = |n: &str| tenant.path(n);
    let run = || tenant.run_once("defender-alerts", &[]);
    assert!(run().status.success());
    // Truncate the database file at several lengths (a torn copy, a full disk).
    let full = std::fs::read(path("state.db")).unwrap();
    for cut in [full.len() / 2, 100, 0] {
        std::fs::write(path("state.db"), &full[..cut]).unwrap();
        let _ = std::fs::remove_file(path("state.db-wal"));
        let out = run();
        let err = text(&out.stderr);
        assert!(!err.contains("panicked"), "cut at {cut}: {err}");
        assert!(
            out.status.success() || err.contains("not a usable SQLite database"),
            "cut at {cut}: {err}"
        );
    }
}

#[test]
fn every_release_component_stays_within_the_1_mib_size_budget() {
    for connector in ["defender-alerts", "defender-incidents", "entra"] {
        let size = std::fs::metadata(support::component_wasm(connector))
            .unwrap()
            .len();
        assert!(
            size <= 1024 * 1024,
            "{connector}: {size} bytes (see BENCHMARKS.md)"
        );
    }
}

/// The alerts component (WIT 0.2.0) with every `secops:connector` interface renamed to
/// `version` (same length, so the binary stays valid): what a component built for another
/// WIT version of the package looks like to the host.
fn alerts_built_for(version: &str, dir: &std::path::Path) -> std::path::PathBuf {
    let bytes = std::fs::read(alerts_wasm()).unwrap();
    let (from, to) = (b"@0.2.0".as_slice(), format!("@{version}").into_bytes());
    assert_eq!(from.len(), to.len());
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let mut renamed = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(from) {
            out.extend_from_slice(&to);
            i += from.len();
            renamed += 1;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    assert!(renamed > 0, "the component names its WIT version");
    let path = dir.join(format!("alerts-{version}.wasm"));
    std::fs::write(&path, out).unwrap();
    path
}

#[test]
fn a_component_for_an_unknown_wit_minor_version_is_refused_naming_the_versions() {
    let dir = tempfile::tempdir().unwrap();
    let newer = alerts_built_for("0.3.0", dir.path());
    let out = run_host(&["describe", &newer.display().to_string()]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("built for WIT package secops:connector@0.3.0")
            && err.contains("supports secops:connector@0.1.0, secops:connector@0.2.0"),
        "{err}"
    );
    // A patch release of a known minor version is compatible.
    let patch = alerts_built_for("0.2.9", dir.path());
    let out = run_host(&["describe", &patch.display().to_string()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn serve_refuses_a_missing_instances_directory_and_a_public_metrics_address() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.db").display().to_string();
    let missing = dir.path().join("nope").display().to_string();
    let out = run_host(&["serve", "--instances", &missing, "--state", &state]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot read the instances directory") && err.contains("nope"),
        "{err}"
    );

    let here = dir.path().display().to_string();
    let args = ["serve", "--instances", &here, "--state", &state];
    let out = run_host(&[&args[..], &["--metrics", "0.0.0.0:9464"]].concat());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("loopback address only"),
        "{}",
        text(&out.stderr)
    );
}
