//! `connector-host serve` with many instances in one process, against loopback Graph
//! simulators: healthy tenants keep their schedule and deliver exactly once while a
//! throttled, a stalled, a wrong-secret, a trapping, a spinning, a broken and a
//! component-less instance fail on their own and say why in `status` and in the metrics;
//! files added, changed and removed take effect on SIGHUP without a restart; SIGTERM ends
//! it cleanly.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use support::graph_sim::{Behaviour, Fault, GraphSim, SECRET};
use support::{assert_exactly_once, assert_no_secrets, host, read_lines, text, write_json};

/// Waits for `done`; on a timeout, fails with serve's log.
fn wait_until(what: &str, log: &Path, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > timeout {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("timed out waiting for {what}; serve's log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn instance(dir: &Path, name: &str, sim: &GraphSim, secrets: &str, backfill_days: u32) {
    write_json(
        &dir.join(format!("{name}.json")),
        &json!({
            "component": support::alerts_wasm(),
            "config": sim.config(backfill_days),
            "secrets": format!("secrets/{secrets}.json"),
            "interval_secs": 1,
        }),
    );
}

fn status(state: &Path) -> String {
    let out = support::run_host(&["status", "--state", &state.display().to_string()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// Every instance of `status --json`.
fn status_rows(state: &Path) -> Vec<serde_json::Value> {
    let out = support::run_host(&["status", "--state", &state.display().to_string(), "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// One instance of `status --json` as one line: its fields and `[code] error` in full.
fn status_of(state: &Path, name: &str) -> String {
    status_rows(state)
        .into_iter()
        .find(|r| r["instance"] == name)
        .map(|r| {
            let error = match (&r["last_error_code"], &r["last_error"]) {
                (serde_json::Value::String(c), serde_json::Value::String(m)) => {
                    format!("[{c}] {m}")
                }
                _ => String::new(),
            };
            format!(
                "{} {} {} failures={} {error}",
                r["instance"], r["state"], r["connector"], r["failures"]
            )
        })
        .unwrap_or_default()
}

fn metrics(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("metrics listener");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn signal(child: &Child, name: &str) {
    let kill = std::process::Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
}

fn stop(mut child: Child, log: &Path) -> (i32, String) {
    signal(&child, "TERM");
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let stderr = std::fs::read_to_string(log).unwrap();
            return (status.code().unwrap_or(-1), stderr);
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "serve did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn serve_keeps_healthy_tenants_on_schedule_while_broken_ones_report_why() {
    let alpha = GraphSim::start(Behaviour::default());
    alpha.add_alerts("alpha", 30, Duration::from_secs(3600));
    let bravo = GraphSim::start(Behaviour::default());
    bravo.add_alerts("bravo", 20, Duration::from_secs(3600));
    let throttled = GraphSim::start(Behaviour {
        throttle_every: Some(1),
        ..Behaviour::default()
    });
    throttled.add_alerts("throttled", 5, Duration::from_secs(3600));
    let stalled = GraphSim::start(Behaviour {
        fault: Some((1, Fault::Slow(Duration::from_secs(5)))),
        ..Behaviour::default()
    });
    stalled.add_alerts("stalled", 5, Duration::from_secs(3600));

    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("instances");
    std::fs::create_dir_all(dir.join("secrets")).unwrap();
    write_json(
        &dir.join("secrets/good.json"),
        &json!({"client-secret": SECRET}),
    );
    write_json(
        &dir.join("secrets/wrong.json"),
        &json!({"client-secret": "not-the-secret"}),
    );
    instance(&dir, "alpha", &alpha, "good", 1);
    instance(&dir, "bravo", &bravo, "good", 1);
    instance(&dir, "throttled", &throttled, "good", 1);
    instance(&dir, "stalled", &stalled, "good", 1);
    instance(&dir, "wrong-secret", &bravo, "wrong", 1);
    for mode in ["trap", "spin"] {
        write_json(
            &dir.join(format!("{mode}.json")),
            &json!({
                "component": support::component_wasm("misbehaving-connector"),
                "config": {"mode": mode},
                "interval_secs": 1,
                // Its own limit: the others keep serve's (60 s).
                "limits": {"deadline_secs": 2},
            }),
        );
    }
    std::fs::write(dir.join("broken.json"), "{\"component\": ").unwrap();
    write_json(
        &dir.join("ghost.json"),
        &json!({"component": "no-such.wasm", "config": bravo.config(1)}),
    );
    let state = work.path().join("state.db");
    let out = work.path().join("out");
    let port = free_port();
    // A file, not a pipe: a pipe nobody reads would stall the server once full.
    let log = work.path().join("serve.log");

    let child = host(&[
        "serve",
        "--instances",
        &dir.display().to_string(),
        "--state",
        &state.display().to_string(),
        "--out",
        &out.display().to_string(),
        "--metrics",
        &format!("127.0.0.1:{port}"),
        // Changes below take effect on SIGHUP; the periodic rescan would take an hour.
        "--rescan-secs",
        "3600",
        "--http-timeout-secs",
        "2",
        "--log-level",
        "debug",
    ])
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&log).unwrap())
    .spawn()
    .expect("start serve");
    let _kill = support::KillOnDrop(child.id());

    // The healthy tenants' backfills arrive whole, whatever the others do.
    let caught_up = |sim: &GraphSim, name: &str| {
        let file = out.join(format!("{name}.jsonl"));
        let got: std::collections::BTreeSet<(String, String)> = read_lines(&file)
            .iter()
            .map(|l| {
                (
                    l["id"].as_str().unwrap().to_string(),
                    l["version"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        got == sim.latest()
    };
    wait_until(
        "the healthy backfills",
        &log,
        Duration::from_secs(30),
        || caught_up(&alpha, "alpha") && caught_up(&bravo, "bravo"),
    );

    // They keep polling every second while the stalled tenant's polls hang for seconds.
    let before = alpha.with_counters(|c| c.graph_requests);
    std::thread::sleep(Duration::from_secs(5));
    let polls = alpha.with_counters(|c| c.graph_requests) - before;
    assert!(
        polls >= 3,
        "alpha polled {polls} times in 5 s at a 1 s interval"
    );
    alpha.add_alerts("alpha-new", 3, Duration::from_secs(1));
    wait_until("new alerts", &log, Duration::from_secs(10), || {
        caught_up(&alpha, "alpha")
    });

    // Between turns an instance holds no open output file: with 100,000 instances one
    // per instance would run out of file descriptors. Alpha polls every second, so a
    // sample may catch its turn; some sample catches none.
    let open_outputs = || {
        std::fs::read_dir(format!("/proc/{}/fd", child.id()))
            .map(|fds| {
                fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
                    .filter(|target| target.starts_with(&out))
                    .count()
            })
            .unwrap_or(0)
    };
    let fewest = (0..20)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            open_outputs()
        })
        .min();
    assert_eq!(fewest, Some(0), "output files stay open between turns");

    // Broken instances say why, in status and in the metrics.
    wait_until(
        "every failure recorded",
        &log,
        Duration::from_secs(20),
        || {
            let rows = status_rows(&state);
            [
                "throttled",
                "stalled",
                "wrong-secret",
                "broken",
                "ghost",
                "trap",
                "spin",
            ]
            .iter()
            .all(|n| {
                rows.iter()
                    .any(|r| r["instance"] == *n && r["failures"].as_u64().is_some_and(|f| f > 0))
            })
        },
    );
    let table = status(&state);
    eprintln!("status while serving:\n{table}");
    for (name, says) in [
        ("alpha", None),
        ("bravo", None),
        ("throttled", Some("throttled")),
        ("stalled", Some("transient")),
        ("wrong-secret", Some("auth")),
        ("broken", Some("instance-file")),
        ("ghost", Some("instance-file")),
        ("trap", Some("trap")),
        ("spin", Some("trap")),
    ] {
        let line = status_of(&state, name);
        match says {
            None => assert!(
                line.contains("\"running\" \"defender-alerts\" failures=0"),
                "{name} is healthy: {line}\n{table}"
            ),
            Some(code) => assert!(
                line.contains(&format!("[{code}]")),
                "{name} reports {code}:\n{table}"
            ),
        }
    }
    assert!(
        status_of(&state, "ghost").contains("no-such.wasm"),
        "{table}"
    );
    assert!(
        status_of(&state, "spin").contains("deadline of 2 s"),
        "{table}"
    );
    let m = metrics(port);
    for line in [
        r#"connector_up{instance="alpha",connector="defender-alerts"} 1.0"#,
        r#"connector_up{instance="bravo",connector="defender-alerts"} 1.0"#,
        r#"connector_last_error{instance="throttled",connector="defender-alerts",code="throttled"} 1.0"#,
        r#"connector_last_error{instance="wrong-secret",connector="defender-alerts",code="auth"} 1.0"#,
        r#"connector_last_error{instance="broken",connector="-",code="instance-file"} 1.0"#,
        r#"connector_events_total{instance="bravo",connector="defender-alerts"} 20.0"#,
    ] {
        assert!(m.contains(line), "{line} missing from the metrics:\n{m}");
    }
    let throttled_responses: f64 = m
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                r#"connector_throttled_responses_total{instance="throttled",connector="defender-alerts"} "#,
            )
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or_default();
    assert!(throttled_responses >= 1.0, "429s counted:\n{m}");

    // Hot reload: a new file starts an instance, a changed backfill is refused for that
    // instance only, a removed file stops its instance.
    let charlie = GraphSim::start(Behaviour::default());
    charlie.add_alerts("charlie", 4, Duration::from_secs(600));
    instance(&dir, "charlie", &charlie, "good", 1);
    signal(&child, "HUP");
    wait_until("the added instance", &log, Duration::from_secs(15), || {
        caught_up(&charlie, "charlie")
    });
    instance(&dir, "alpha", &alpha, "good", 3);
    signal(&child, "HUP");
    wait_until("the refused config", &log, Duration::from_secs(15), || {
        status_of(&state, "alpha").contains("[config]")
    });
    let refusal = status_of(&state, "alpha");
    assert!(refusal.contains("backfill_days"), "{refusal}");
    std::fs::remove_file(dir.join("bravo.json")).unwrap();
    signal(&child, "HUP");
    std::thread::sleep(Duration::from_secs(3));
    let after_removal = bravo.with_counters(|c| c.graph_requests);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        bravo.with_counters(|c| c.graph_requests),
        after_removal,
        "a removed instance stops polling"
    );
    charlie.add_alerts("charlie-new", 2, Duration::from_secs(1));
    wait_until("the others go on", &log, Duration::from_secs(10), || {
        caught_up(&charlie, "charlie")
    });

    let (code, stderr) = stop(child, &log);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("stopped"), "{stderr}");
    for (sim, name) in [(&alpha, "alpha"), (&bravo, "bravo"), (&charlie, "charlie")] {
        assert_exactly_once(&out.join(format!("{name}.jsonl")), sim);
    }
    for sim in [&alpha, &bravo, &throttled, &stalled, &charlie] {
        assert_no_secrets("serve's stderr", stderr.as_bytes(), sim);
    }
    assert_no_secrets("the metrics", m.as_bytes(), &alpha);
}

#[test]
fn polls_that_exceed_the_address_space_fail_with_host_and_serve_lives_on() {
    // Under `ulimit -v` 3 GiB, no store with wasmtime's 4 GiB reservation per linear
    // memory can be made: every poll of six instances on two workers fails. The process
    // must not abort (issue 18: it did at 6,800 instances); each instance reports `host`
    // and is tried again; SIGTERM still ends it cleanly.
    let sim = GraphSim::start(Behaviour::default());
    let dir = tempfile::tempdir().unwrap();
    let instances = dir.path().join("instances");
    std::fs::create_dir_all(instances.join("secrets")).unwrap();
    write_json(
        &instances.join("secrets/ok.json"),
        &json!({"client-secret": SECRET}),
    );
    for n in 0..6 {
        instance(&instances, &format!("t{n}"), &sim, "ok", 1);
    }
    let state = dir.path().join("state.db");
    let log = dir.path().join("serve.log");
    let command = format!(
        "ulimit -v 3145728 && exec {} serve --instances {} --state {} --out {} --workers 2 \
         --rescan-secs 1",
        env!("CARGO_BIN_EXE_connector-host"),
        instances.display(),
        state.display(),
        dir.path().join("out").display()
    );
    let child = std::process::Command::new("sh")
        .args(["-c", &command])
        .env("CONNECTOR_HOST_CACHE", support::cache_dir())
        .env("CONNECTOR_HOST_MEMORY_LAYOUT", "reserved")
        .env_remove("RUST_LOG")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // Killed if the test fails before its SIGTERM.
    let mut child = support::Running(child);
    wait_until(
        "every instance to fail twice with `host`",
        &log,
        Duration::from_secs(120),
        || {
            let out =
                support::run_host(&["status", "--state", &state.display().to_string(), "--json"]);
            // Before serve created the state file, `status` finds none.
            let rows: Vec<serde_json::Value> =
                serde_json::from_slice(&out.stdout).unwrap_or_default();
            rows.len() == 6
                && rows.iter().all(|r| {
                    r["last_error_code"] == "host" && r["failures"].as_u64().unwrap_or(0) >= 2
                })
        },
    );
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "serve is still running"
    );
    let row = status_of(&state, "t0");
    assert!(row.contains("[host]"), "the failure is the host's: {row}");
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert_eq!(child.0.wait().unwrap().code(), Some(0));
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(!log.contains("panicked") && !log.contains("abort"), "{log}");
}

/// A tenant whose recent records fill several pages: after its backfill `serve` goes idle
/// until the next interval. With a fresh component instance per poll, every window that
/// spans polls was resumed and followed by another at once, so the re-read overlap (more
/// than a page here) kept the tenant polling without pause until its call budget ran out.
#[test]
fn a_tenant_with_several_pages_of_recent_records_goes_idle_after_its_backfill() {
    let sim = GraphSim::start(Behaviour {
        page_max: 4,
        ..Behaviour::default()
    });
    sim.add_alerts("old", 30, Duration::from_secs(20 * 3600));
    sim.add_alerts("new", 20, Duration::from_secs(300));
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("instances");
    std::fs::create_dir_all(dir.join("secrets")).unwrap();
    write_json(
        &dir.join("secrets/t.json"),
        &json!({"client-secret": SECRET}),
    );
    write_json(
        &dir.join("busy.json"),
        &json!({
            "component": support::alerts_wasm(),
            "config": sim.config(1),
            "secrets": "secrets/t.json",
            "interval_secs": 60,
        }),
    );
    let state = work.path().join("state.db");
    let log = work.path().join("serve.log");
    let serve = host(&[
        "serve",
        "--instances",
        &dir.display().to_string(),
        "--state",
        &state.display().to_string(),
        "--out",
        &work.path().display().to_string(),
    ])
    .stderr(std::fs::File::create(&log).unwrap())
    .spawn()
    .unwrap();
    let _kill = support::KillOnDrop(serve.id());
    wait_until(
        "the backfill delivered",
        &log,
        Duration::from_secs(60),
        || {
            state.exists()
                && status_rows(&state)
                    .first()
                    .is_some_and(|r| r["events"].as_u64() >= Some(50) && r["undelivered"] == 0)
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let settled = sim.requests().len();
    std::thread::sleep(Duration::from_secs(6));
    let later = sim.requests().len();
    assert_eq!(
        later - settled,
        0,
        "Graph calls while the tenant should wait for its interval"
    );
    assert_exactly_once(&work.path().join("busy.jsonl"), &sim);
    let (code, _) = stop(serve, &log);
    assert_eq!(code, 0);
}
