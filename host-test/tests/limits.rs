//! The host's sandbox: a test-only component (`host-test/misbehave`) that spins, grows its
//! memory, traps or floods is stopped within the configured limits with an error naming the
//! instance, and the instance's state stays intact for the next run.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{component_wasm, read_lines, run_host, text, write_json};

struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        Sandbox {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
    /// `run --once` of instance `tenant-x` in `mode`, with extra flags.
    fn run(&self, mode: &str, extra: &[&str]) -> std::process::Output {
        write_json(
            &self.dir.path().join("misbehave.json"),
            &json!({"mode": mode, "events": if mode == "flood" { 20000 } else { 1 }}),
        );
        let wasm = component_wasm("misbehaving-connector");
        let mut args = vec![
            "run",
            wasm.to_str().unwrap(),
            "--config",
            &self.path("misbehave.json"),
            "--state",
            &self.path("state.db"),
            "--out",
            &self.path("out.jsonl"),
            "--instance",
            "tenant-x",
            "--once",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        args.extend(extra.iter().map(|s| s.to_string()));
        run_host(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }
}

#[test]
fn a_component_that_never_returns_is_stopped_at_its_deadline() {
    let sb = Sandbox::new();
    let started = Instant::now();
    let out = sb.run("spin", &["--deadline-secs", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("instance tenant-x") && err.contains("deadline of 1 s"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "stopped promptly"
    );
}

#[test]
fn a_component_that_grows_without_bound_is_stopped_at_its_memory_cap() {
    let sb = Sandbox::new();
    let out = sb.run("grow", &["--memory-mb", "64"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("instance tenant-x") && err.contains("memory limit of 64 MiB"),
        "{err}"
    );
}

#[test]
fn a_trap_fails_the_poll_and_leaves_the_state_as_it_was() {
    let sb = Sandbox::new();
    assert!(sb.run("ok", &[]).status.success());
    let out = sb.run("trap", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("instance tenant-x: `poll` trapped"),
        "{}",
        text(&out.stderr)
    );
    // The next run goes on from the cursor the first run committed.
    assert!(sb.run("ok", &[]).status.success());
    let lines = read_lines(Path::new(&sb.path("out.jsonl")));
    let ids: Vec<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        ["e0-0", "e1-0"],
        "cursor 0, then 1: the trapped poll committed nothing"
    );
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2]);
}

#[test]
fn a_huge_batch_is_committed_and_delivered_whole() {
    let sb = Sandbox::new();
    let out = sb.run("flood", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines = read_lines(Path::new(&sb.path("out.jsonl")));
    assert_eq!(lines.len(), 20000);
    assert_eq!(lines.last().unwrap()["seq"], 20000);
}

#[test]
fn degraded_types_show_in_status_until_a_committed_poll_reports_none() {
    let sb = Sandbox::new();
    let status = || {
        let out = run_host(&["status", "--state", &sb.path("state.db")]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let first = sb.run("degraded", &[]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let lines = read_lines(Path::new(&sb.path("out.jsonl")));
    assert_eq!(
        lines[0]["incomplete"], "alerts not read: $expand=alerts keeps failing",
        "the event line says what is missing"
    );
    let shown = status();
    assert!(
        shown
            .contains("degraded: risk_detections throttled (429 without Retry-After; polled again"),
        "the table shows it, shortened to 120 columns: {shown}"
    );
    let json = run_host(&["status", "--json", "--state", &sb.path("state.db")]);
    let rows: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        rows[0]["degraded"],
        serde_json::json!([
            {"data_type": "risk_detections", "code": "throttled", "message": "429 without Retry-After; polled again in 60 s"},
            {"data_type": "incidents", "code": "fallback", "message": "read without $expand=alerts"}
        ]),
        "`--json` has it in full"
    );

    // A failed poll says nothing new about the data types: the list stays.
    let failed = sb.run("fail", &[]);
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed.stderr));
    assert!(
        status().contains("risk_detections throttled"),
        "{}",
        status()
    );

    // The next committed poll reports none: cleared, and its event is complete.
    let next = sb.run("degraded", &[]);
    assert!(next.status.success(), "{}", text(&next.stderr));
    assert!(!status().contains("degraded"), "{}", status());
    let lines = read_lines(Path::new(&sb.path("out.jsonl")));
    assert_eq!(lines.len(), 2);
    assert!(lines[1].get("incomplete").is_none(), "{}", lines[1]);
}
