//! Operating many instances on one host (issue 17), at the CLI: one process per instance,
//! instances bound to their config file, state files that cannot be used, delivery
//! failures, removal and `forget`, `status`, rotation, logs, secrets, `describe`, health
//! endpoints, `--help`, `demo` and `inspect`.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use support::graph_sim::{Behaviour, GraphSim, SECRET};
use support::{Tenant, host, read_lines, run_host, text, write_json};

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn status_json(state: &str) -> Vec<serde_json::Value> {
    let out = run_host(&["status", "--state", state, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
}

fn status_of(state: &str, instance: &str) -> serde_json::Value {
    status_json(state)
        .into_iter()
        .find(|r| r["instance"] == instance)
        .unwrap_or_else(|| panic!("no instance {instance} in status"))
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn spawn(args: &[&str], log: &Path) -> Child {
    host(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn signal(child: &Child, name: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("listener");
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// Whether a response's status line says 200.
fn ok_200(response: &str) -> bool {
    response
        .lines()
        .next()
        .is_some_and(|l| l.split_whitespace().nth(1) == Some("200"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// Item 1: one process per instance and state file.
#[test]
fn a_second_process_on_an_instance_is_refused_naming_the_holder_and_a_killed_one_does_not_block() {
    let sim = GraphSim::start(Behaviour::default());
    sim.add_alerts("a", 30, Duration::from_secs(3600));
    let tenant = Tenant::new(&sim);
    let first_args = tenant.run_args("defender-alerts", false, &["--interval", "3600"]);
    let log = tenant.dir.path().join("first.log");
    let mut first = spawn(&args(&first_args), &log);
    let out = tenant.path("out.jsonl");
    wait_until("the first run's backfill", Duration::from_secs(30), || {
        read_lines(Path::new(&out)).len() == 30
    });

    let second = tenant.run_once("defender-alerts", &[]);
    let err = text(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("held by process {}", first.id())) && err.contains("since"),
        "{err}"
    );
    assert_eq!(
        read_lines(Path::new(&out)).len(),
        30,
        "nothing delivered twice"
    );
    let row = status_of(&tenant.path("state.db"), "tenant");
    assert_eq!(row["state"], "running");
    assert_eq!(row["owner"]["pid"], first.id());
    assert!(row["next_poll"].is_string(), "{row}");

    // A holder that dies without releasing its claim does not block a restart.
    first.kill().unwrap();
    first.wait().unwrap();
    sim.add_alerts("b", 2, Duration::from_secs(60));
    let after = tenant.run_once("defender-alerts", &[]);
    assert!(after.status.success(), "{}", text(&after.stderr));
    support::assert_exactly_once(Path::new(&out), &sim);
    assert_eq!(
        status_of(&tenant.path("state.db"), "tenant")["state"],
        "stopped"
    );
}

// Item 2 (host part): the default instance name cannot hand one tenant another's cursor.
#[test]
fn two_config_files_with_the_same_name_do_not_share_an_instance() {
    let sim = GraphSim::start(Behaviour::default());
    sim.add_alerts("a", 3, Duration::from_secs(3600));
    let tenant = Tenant::new(&sim);
    for dir in ["acme", "globex"] {
        std::fs::create_dir_all(tenant.dir.path().join(dir)).unwrap();
        write_json(
            &tenant.dir.path().join(dir).join("alerts.json"),
            &sim.config(1),
        );
    }
    let run = |config: &str, extra: &[&str]| {
        let a = tenant.run_args_with(
            "defender-alerts",
            &[("--config", config)],
            &[&["--once"], extra].concat(),
        );
        run_host(&args(&a))
    };
    let acme = run("acme/alerts.json", &[]);
    assert!(acme.status.success(), "{}", text(&acme.stderr));
    let globex = run("globex/alerts.json", &[]);
    let err = text(&globex.stderr);
    assert_eq!(globex.status.code(), Some(2), "{err}");
    assert!(
        err.contains("acme/alerts.json") && err.contains("--instance"),
        "{err}"
    );
    // Named explicitly, it is its own instance with its own backfill.
    let named = run("globex/alerts.json", &["--instance", "globex-alerts"]);
    assert!(named.status.success(), "{}", text(&named.stderr));
    let lines = read_lines(Path::new(&tenant.path("out.jsonl")));
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["instance"] == "globex-alerts")
            .count(),
        3
    );
}

// Item 2 (guest part): an instance with state refuses another tenant, app or Graph host,
// as it refuses another backfill.
#[test]
fn a_changed_tenant_app_or_graph_host_is_refused_for_an_instance_with_state() {
    let sim = GraphSim::start(Behaviour::default());
    sim.add_alerts("a", 2, Duration::from_secs(3600));
    let tenant = Tenant::new(&sim);
    assert!(tenant.run_once("defender-alerts", &[]).status.success());
    let other = GraphSim::start(Behaviour::default());
    for (key, value) in [
        ("tenant_id", json!("0f0e0d0c-0b0a-4090-8070-605040302010")),
        ("client_id", json!("10203040-5060-4070-8090-a0b0c0d0e0f0")),
        ("graph_url", json!(other.base)),
    ] {
        let mut config = sim.config(1);
        config[key] = value;
        write_json(&tenant.dir.path().join("tenant.json"), &config);
        let out = tenant.run_once("defender-alerts", &[]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{key}: {err}");
        assert!(
            err.contains(key) && err.contains("was created for"),
            "{key}: {err}"
        );
    }
    assert_eq!(
        other.with_counters(|c| c.graph_requests + c.token_requests),
        0,
        "nothing was asked of the other Graph host"
    );
    // Set back, the instance goes on where it stood.
    write_json(&tenant.dir.path().join("tenant.json"), &sim.config(1));
    assert!(tenant.run_once("defender-alerts", &[]).status.success());
}

// Item 3: a state file that cannot be used gets a message per cause, at start.
#[test]
fn unusable_state_files_are_refused_at_start_each_with_its_cause() {
    let tenant = Tenant::new(&GraphSim::start(Behaviour::default()));
    let run_on = |state: &str| {
        let a = tenant.run_args_with("defender-alerts", &[("--state", state)], &["--once"]);
        run_host(&args(&a))
    };
    let config_bytes = std::fs::read(tenant.path("tenant.json")).unwrap();
    std::fs::create_dir(tenant.dir.path().join("adir")).unwrap();
    for (state, expected, advises_delete) in [
        ("missing/state.db", "does not exist; create it", false),
        ("adir", "is a directory", false),
        ("tenant.json", "is not a SQLite database", false),
    ] {
        let out = run_on(state);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{state}: {err}");
        assert!(err.contains(expected), "{state}: {err}");
        assert_eq!(err.contains("delete"), advises_delete, "{state}: {err}");
    }
    assert_eq!(
        std::fs::read(tenant.path("tenant.json")).unwrap(),
        config_bytes,
        "the config passed as state is untouched"
    );
    // A database of another program is refused, not given a schema.
    let foreign = tenant.path("foreign.db");
    rusqlite::Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE songs (title TEXT)")
        .unwrap();
    let before = std::fs::read(&foreign).unwrap();
    let out = run_on("foreign.db");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("\"songs\""),
        "{}",
        text(&out.stderr)
    );
    // `status` on an empty or foreign file writes nothing into it: an empty one has no
    // instances yet, a foreign one is refused.
    std::fs::write(tenant.path("empty.db"), b"").unwrap();
    let out = run_host(&["status", "--state", &tenant.path("empty.db"), "--json"]);
    assert_eq!(text(&out.stdout), "[]\n", "{}", text(&out.stderr));
    let out = run_host(&["status", "--state", &foreign]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(tenant.path("empty.db")).unwrap(), b"");
    assert_eq!(std::fs::read(&foreign).unwrap(), before);
}

// Item 3: a state file this user cannot write is refused at start (exit 2), not retried
// forever.
#[test]
fn a_read_only_state_file_is_refused_at_start() {
    let sim = GraphSim::start(Behaviour::default());
    sim.add_alerts("a", 2, Duration::from_secs(3600));
    let tenant = Tenant::new(&sim);
    assert!(tenant.run_once("defender-alerts", &[]).status.success());
    let root = unsafe { libc::geteuid() } == 0;
    let mut run_args = tenant.run_args("defender-alerts", true, &[]);
    let mut cmd = host(&args(&run_args));
    if root {
        // The build may live under root's home, which that user cannot enter: run copies
        // of the host and the component from the tenant's directory.
        let exe = tenant.dir.path().join("connector-host");
        std::fs::copy(env!("CARGO_BIN_EXE_connector-host"), &exe).unwrap();
        let wasm = tenant.dir.path().join("defender_alerts.wasm");
        std::fs::copy(&run_args[1], &wasm).unwrap();
        run_args[1] = wasm.display().to_string();
        cmd = std::process::Command::new(&exe);
        cmd.args(args(&run_args)).env_remove("RUST_LOG");
        // root writes any file: run as another user, for whom the files are read-only.
        use std::os::unix::process::CommandExt;
        cmd.uid(65534).gid(65534);
        // The files of the run must stay readable to that user.
        let dir = tenant.dir.path();
        let mut perms = std::fs::metadata(dir).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(dir, perms).unwrap();
        for f in ["tenant.json", "secrets.json", "state.db", "out.jsonl"] {
            let mut perms = std::fs::metadata(tenant.path(f)).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
            std::fs::set_permissions(tenant.path(f), perms).unwrap();
        }
        cmd.env(
            "CONNECTOR_HOST_CACHE",
            std::env::temp_dir().join("no-cache-for-nobody"),
        );
    } else {
        let mut perms = std::fs::metadata(tenant.path("state.db"))
            .unwrap()
            .permissions();
        perms.set_readonly(true);
        std::fs::set_permissions(tenant.path("state.db"), perms).unwrap();
    }
    let start = Instant::now();
    let out = cmd.output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("cannot be written"), "{err}");
    // Refused at start, not retried: the bound leaves room for compiling the component.
    assert!(start.elapsed() < Duration::from_secs(120));
}

// Item 4: a failed delivery is a failure in status and metrics, with the count waiting.
#[test]
fn a_failed_delivery_shows_in_status_with_the_undelivered_count() {
    let sim = GraphSim::start(Behaviour::default());
    sim.add_alerts("a", 5, Duration::from_secs(3600));
    let tenant = Tenant::new(&sim);
    let a = tenant.run_args_with("defender-alerts", &[("--out", "/dev/full")], &["--once"]);
    let out = run_host(&args(&a));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let row = status_of(&tenant.path("state.db"), "tenant");
    assert_eq!(row["last_error_code"], "delivery", "{row}");
    assert_eq!(row["undelivered"], 5, "{row}");
    assert!(row["failures"].as_u64().unwrap() >= 1, "{row}");
    let table = text(&run_host(&["status", "--state", &tenant.path("state.db")]).stdout);
    assert!(
        table.contains("[delivery] 5 committed events not delivered"),
        "{table}"
    );
    // Once the output works, the waiting events are delivered and the failure clears.
    assert!(tenant.run_once("defender-alerts", &[]).status.success());
    let row = status_of(&tenant.path("state.db"), "tenant");
    assert_eq!(
        (row["undelivered"].as_u64(), row["failures"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(read_lines(Path::new(&tenant.path("out.jsonl"))).len(), 5);
}

// Item 7: the table fits 120 columns, `--json` has it all, a closed pipe is no error.
#[test]
fn status_fits_120_columns_and_survives_a_closed_pipe() {
    let sim = GraphSim::start(Behaviour::default());
    let tenant = Tenant::new(&sim);
    write_json(
        &tenant.dir.path().join("wrong.json"),
        &json!({"client-secret": "not-the-secret-at-all"}),
    );
    let a = tenant.run_args_with(
        "defender-alerts",
        &[("--secrets", "wrong.json")],
        &[
            "--once",
            "--instance",
            "a-rather-long-instance-name-for-a-tenant",
        ],
    );
    assert_eq!(run_host(&args(&a)).status.code(), Some(1));
    let out = run_host(&["status", "--state", &tenant.path("state.db")]);
    let table = text(&out.stdout);
    assert!(table.lines().count() >= 3, "{table}");
    for line in table.lines() {
        assert!(line.chars().count() <= 120, "{line}");
    }
    let row = &status_json(&tenant.path("state.db"))[0];
    assert_eq!(row["state"], "stopped");
    assert_eq!(row["last_error_code"], "auth");
    let full = row["last_error"].as_str().unwrap();
    assert!(table.contains(&full[..20]), "{table}");

    let mut child = host(&["status", "--state", &tenant.path("state.db")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("panicked"));
}

// Item 10: a component swapped under an instance is named before any config check.
#[test]
fn a_swapped_component_is_reported_before_the_config() {
    let sim = GraphSim::start(Behaviour::default());
    sim.add_alerts("a", 2, Duration::from_secs(3600));
    let tenant = Tenant::new(&sim);
    assert!(tenant.run_once("defender-alerts", &[]).status.success());
    // The alerts config lacks entra's required `event_types`: the swap must be named first.
    let out = tenant.run_once("entra", &[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("was created by defender-alerts; the component is entra"),
        "{err}"
    );
    assert!(!err.contains("event_types"), "{err}");
}

// Item 11: a misspelled secret key, a secrets file others can read.
#[test]
fn secrets_name_a_misspelled_key_and_warn_when_others_can_read_them() {
    let sim = GraphSim::start(Behaviour::default());
    sim.add_alerts("a", 1, Duration::from_secs(3600));
    let tenant = Tenant::new(&sim);
    write_json(
        &tenant.dir.path().join("typo.json"),
        &json!({"client_secret": SECRET}),
    );
    let a = tenant.run_args_with(
        "defender-alerts",
        &[("--secrets", "typo.json")],
        &["--once"],
    );
    let out = run_host(&args(&a));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("\"client_secret\"") && err.contains("\"client-secret\""),
        "{err}"
    );
    assert!(!err.contains(SECRET));

    use std::os::unix::fs::PermissionsExt;
    let secrets = tenant.path("secrets.json");
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = tenant.run_once("defender-alerts", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("can be read by other users"),
        "{}",
        text(&out.stderr)
    );
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = tenant.run_once("defender-alerts", &[]);
    assert!(!text(&out.stderr).contains("can be read by other users"));
}

// Items 6 and 11: `serve --check`, per-instance secrets from the environment, `validate`
// of an instance file.
#[test]
fn serve_check_prints_a_line_per_instance_and_fails_on_any() {
    let sim = GraphSim::start(Behaviour::default());
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    std::fs::create_dir_all(dir.join("secrets")).unwrap();
    write_json(
        &dir.join("secrets/good.json"),
        &json!({"client-secret": SECRET}),
    );
    write_json(
        &dir.join("secrets/typo.json"),
        &json!({"client_secret": SECRET}),
    );
    let wasm = support::alerts_wasm();
    let file = |name: &str, body: serde_json::Value| write_json(&dir.join(name), &body);
    file(
        "good.json",
        json!({"component": wasm, "config": sim.config(1), "secrets": "secrets/good.json"}),
    );
    file(
        "from-env.json",
        json!({"component": wasm, "config": sim.config(1)}),
    );
    file(
        "no-secret.json",
        json!({"component": wasm, "config": sim.config(1)}),
    );
    file(
        "typo.json",
        json!({"component": wasm, "config": sim.config(1), "secrets": "secrets/typo.json"}),
    );
    file(
        "bad-config.json",
        json!({"component": wasm, "config": {"tenant_id": "x"}, "secrets": "secrets/good.json"}),
    );
    file(
        "ghost.json",
        json!({"component": "no-such.wasm", "config": sim.config(1)}),
    );
    std::fs::write(dir.join("broken.json"), b"{not json").unwrap();
    let d = dir.display().to_string();
    let out = host(&["serve", "--instances", &d, "--check", "--online"])
        .env("CONNECTOR_SECRET_FROM_ENV_CLIENT_SECRET", SECRET)
        .env("CONNECTOR_SECRET_CLIENT_SECRET", SECRET)
        .output()
        .unwrap();
    let lines = text(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{lines}{}", text(&out.stderr));
    let line = |name: &str| {
        lines
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no line for {name}:\n{lines}"))
            .to_string()
    };
    assert!(line("good").starts_with("ok "), "{lines}");
    assert!(line("good").contains("validated"), "{lines}");
    assert!(line("from-env").starts_with("ok "), "{lines}");
    assert!(
        line("no-secret").contains("CONNECTOR_SECRET_NO_SECRET_CLIENT_SECRET"),
        "the shared variable does not serve every instance:\n{lines}"
    );
    assert!(line("typo").contains("\"client-secret\""), "{lines}");
    assert!(line("bad-config").contains("config refused"), "{lines}");
    assert!(line("ghost").contains("no-such.wasm"), "{lines}");
    assert!(line("broken").starts_with("FAIL"), "{lines}");
    assert_eq!(lines.lines().count(), 7, "{lines}");
    assert!(!lines.contains(SECRET));

    let one = run_host(&["validate", &dir.join("good.json").display().to_string()]);
    assert!(one.status.success(), "{}", text(&one.stdout));
}

// Issue 16: a sink URL (an instance file's `sink`, else `serve --sink`) is checked as
// `serve` reads it, and nothing connects to it.
#[test]
fn serve_check_and_validate_name_each_bad_sink_url_with_its_fix_without_connecting() {
    let sim = GraphSim::start(Behaviour::default());
    // The good sinks point here: the check must not connect.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    std::fs::create_dir_all(dir.join("secrets")).unwrap();
    write_json(
        &dir.join("secrets/t.json"),
        &json!({"client-secret": SECRET, "sink-sasl-password": "sasl-pw-not-shown"}),
    );
    let wasm = support::alerts_wasm();
    let webhook = format!("http://127.0.0.1:{port}/in");
    let kafka = format!("kafka://127.0.0.1:{port}");
    // (instance, its file's sink, what its line says)
    let cases = [
        (
            "webhook",
            Some(format!("{webhook}#format=ndjson")),
            format!("ok, to webhook {webhook}"),
        ),
        (
            "kafka",
            Some(format!("{kafka}?topic=secops.{{kind}}")),
            format!("ok, to kafka {kafka}?topic=secops.{{kind}}"),
        ),
        (
            "scheme",
            Some("ftp://siem.example/in".into()),
            "unknown scheme ftp: a sink is kafka://… or https://…".into(),
        ),
        (
            "plain-http",
            Some("http://siem.example/in".into()),
            "plain http:// only to a loopback address".into(),
        ),
        (
            "credentials",
            Some("https://ingest:hunter2@siem.example/in".into()),
            "credentials do not belong in the URL".into(),
        ),
        (
            "option",
            Some("https://siem.example/in#max_event=3".into()),
            "unknown option max_event; the options are format".into(),
        ),
        (
            "option-value",
            Some("https://siem.example/in#format=xml".into()),
            "format=xml: give json or ndjson".into(),
        ),
        (
            "brokers",
            Some("kafka://broker.example".into()),
            "give the brokers as kafka://<host>:<port>".into(),
        ),
        (
            "topic",
            Some(format!("{kafka}?topic=a%20b")),
            "a topic name has letters, digits".into(),
        ),
        (
            "kafka-option",
            Some(format!("{kafka}?acks=1")),
            "unknown option acks; the options are topic".into(),
        ),
        (
            "kafka-password",
            Some(format!("{kafka}?sasl.password=hunter2")),
            "put it in the secrets as sink-sasl-password".into(),
        ),
        // No sink of its own: `serve --sink`, when given.
        (
            "default",
            None,
            "unknown option compression; the options are topic".into(),
        ),
    ];
    for (name, sink, _) in &cases {
        let mut file =
            json!({"component": wasm, "config": sim.config(1), "secrets": "secrets/t.json"});
        if let Some(sink) = sink {
            file["sink"] = json!(sink);
        }
        write_json(&dir.join(format!("{name}.json")), &file);
    }
    let d = dir.display().to_string();
    let bad_default = format!("{kafka}?compression=zstd");
    let out = run_host(&[
        "serve",
        "--instances",
        &d,
        "--check",
        "--sink",
        &bad_default,
    ]);
    let lines = text(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{lines}{}", text(&out.stderr));
    assert_eq!(lines.lines().count(), cases.len(), "{lines}");
    for (name, _, says) in &cases {
        let line = lines
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no line for {name}:\n{lines}"));
        match says.strip_prefix("ok") {
            Some(to) => assert!(
                line.starts_with("ok ") && line.ends_with(to),
                "{name}: {line}"
            ),
            None => assert!(
                line.starts_with("FAIL ") && line.contains(says.as_str()),
                "{name}: {line}"
            ),
        }
    }
    for secret in ["hunter2", "sasl-pw-not-shown"] {
        assert!(
            !lines.contains(secret) && !text(&out.stderr).contains(secret),
            "{lines}"
        );
    }

    // Without --sink, an instance that names none writes to --out: nothing to check.
    let out = run_host(&["serve", "--instances", &d, "--check"]);
    let lines = text(&out.stdout);
    let default = lines.lines().find(|l| l.contains(" default ")).unwrap();
    assert!(
        default.starts_with("ok ") && !default.contains(", to "),
        "{lines}"
    );

    // `validate <instance file>` checks the file's sink the same way.
    let one = run_host(&[
        "validate",
        &dir.join("plain-http.json").display().to_string(),
    ]);
    assert_eq!(one.status.code(), Some(2), "{}", text(&one.stdout));
    assert!(
        text(&one.stdout).contains("use https:// for another host"),
        "{}",
        text(&one.stdout)
    );
    let one = run_host(&["validate", &dir.join("webhook.json").display().to_string()]);
    assert!(one.status.success(), "{}", text(&one.stdout));

    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the check connected to the sink: {other:?}"),
    }
}

// Items 5, 8 (serve) and 13: removal, forget, /healthz and /readyz, rotation on SIGHUP.
#[test]
fn a_removed_instance_leaves_the_metrics_and_forget_deletes_only_its_state() {
    let a = GraphSim::start(Behaviour::default());
    a.add_alerts("a", 3, Duration::from_secs(3600));
    let b = GraphSim::start(Behaviour::default());
    b.add_alerts("b", 4, Duration::from_secs(3600));
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("instances");
    std::fs::create_dir_all(dir.join("secrets")).unwrap();
    write_json(
        &dir.join("secrets/s.json"),
        &json!({"client-secret": SECRET}),
    );
    for (name, sim) in [("alpha", &a), ("bravo", &b)] {
        write_json(
            &dir.join(format!("{name}.json")),
            &json!({"component": support::alerts_wasm(), "config": sim.config(1),
                    "secrets": "secrets/s.json", "interval_secs": 1}),
        );
    }
    let state = work.path().join("state.db").display().to_string();
    let out = work.path().join("out");
    let port = free_port();
    let log = work.path().join("serve.log");
    let addr = format!("127.0.0.1:{port}");
    let mut child = spawn(
        &[
            "serve",
            "--instances",
            &dir.display().to_string(),
            "--state",
            &state,
            "--out",
            &out.display().to_string(),
            "--metrics",
            &addr,
        ],
        &log,
    );
    let delivered = |name: &str| read_lines(&out.join(format!("{name}.jsonl"))).len();
    wait_until("both backfills", Duration::from_secs(30), || {
        delivered("alpha") == 3 && delivered("bravo") == 4
    });
    assert!(ok_200(&http_get(port, "/healthz")));
    let ready = http_get(port, "/readyz");
    assert!(ok_200(&ready), "{ready}");

    // Rotation: the file is moved away, SIGHUP, and new events go to a new file.
    std::fs::rename(out.join("alpha.jsonl"), out.join("alpha.jsonl.1")).unwrap();
    signal(&child, "HUP");
    std::thread::sleep(Duration::from_millis(500));
    a.add_alerts("a-new", 2, Duration::from_secs(1));
    wait_until(
        "delivery to the reopened file",
        Duration::from_secs(20),
        || delivered("alpha") == 2,
    );
    assert_eq!(read_lines(&out.join("alpha.jsonl.1")).len(), 3);

    std::fs::remove_file(dir.join("bravo.json")).unwrap();
    signal(&child, "HUP");
    wait_until("bravo removed", Duration::from_secs(20), || {
        status_of(&state, "bravo")["state"] == "removed"
    });
    let m = http_get(port, "/metrics");
    assert!(m.contains(r#"connector_up{instance="alpha""#), "{m}");
    assert!(!m.contains(r#"instance="bravo""#), "{m}");

    let refused = run_host(&["forget", "--state", &state, "--instance", "bravo"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(text(&refused.stderr).contains("--yes"));
    let held = run_host(&["forget", "--state", &state, "--instance", "alpha", "--yes"]);
    assert_eq!(held.status.code(), Some(2), "alpha is running");
    assert!(
        text(&held.stderr).contains("held by process"),
        "{}",
        text(&held.stderr)
    );
    let forgot = run_host(&["forget", "--state", &state, "--instance", "bravo", "--yes"]);
    assert!(forgot.status.success(), "{}", text(&forgot.stderr));
    let names: Vec<_> = status_json(&state)
        .iter()
        .map(|r| r["instance"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["alpha"]);
    assert_eq!(status_of(&state, "alpha")["events"], 5);

    signal(&child, "TERM");
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
}

// Item 13: a public metrics address needs its flag.
#[test]
fn metrics_on_a_public_address_need_metrics_public() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state.db").display().to_string();
    let d = work.path().display().to_string();
    let port = free_port();
    let addr = format!("0.0.0.0:{port}");
    let refused = run_host(&[
        "serve",
        "--instances",
        &d,
        "--state",
        &state,
        "--metrics",
        &addr,
    ]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(text(&refused.stderr).contains("--metrics-public"));
    let log = work.path().join("serve.log");
    let mut child = spawn(
        &[
            "serve",
            "--instances",
            &d,
            "--state",
            &state,
            "--metrics",
            &addr,
            "--metrics-public",
        ],
        &log,
    );
    wait_until("the public listener", Duration::from_secs(20), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(ok_200(&http_get(port, "/healthz")));
    signal(&child, "TERM");
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("anyone who can reach")
    );
}

// Item 8 (run): SIGHUP reopens `--out`; `--interval 0` is refused.
#[test]
fn run_reopens_its_output_on_sighup_and_refuses_a_zero_interval() {
    let sim = GraphSim::start(Behaviour::default());
    sim.add_alerts("a", 3, Duration::from_secs(3600));
    let tenant = Tenant::new(&sim);
    let zero = tenant.run_args("defender-alerts", false, &["--interval", "0"]);
    let out = run_host(&args(&zero));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--interval 0"));

    let a = tenant.run_args("defender-alerts", false, &["--interval", "1"]);
    let log = tenant.dir.path().join("run.log");
    let mut child = spawn(&args(&a), &log);
    let out = tenant.dir.path().join("out.jsonl");
    wait_until("the backfill", Duration::from_secs(30), || {
        read_lines(&out).len() == 3
    });
    std::fs::rename(&out, tenant.dir.path().join("out.jsonl.1")).unwrap();
    signal(&child, "HUP");
    std::thread::sleep(Duration::from_millis(300));
    sim.add_alerts("b", 2, Duration::from_secs(1));
    wait_until("the reopened file", Duration::from_secs(20), || {
        read_lines(&out).len() == 2
    });
    signal(&child, "TERM");
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("output file reopened"), "{log}");
}

// Item 9: a start line, JSON logs, debug without the libraries' lines.
#[test]
fn logs_start_with_the_instance_and_come_as_json_on_request() {
    let sim = GraphSim::start(Behaviour::default());
    sim.add_alerts("a", 3, Duration::from_secs(3600));
    let tenant = Tenant::new(&sim);
    let out = tenant.run_once(
        "defender-alerts",
        &["--log-format", "json", "--log-level", "debug"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stderr)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    let started = lines
        .iter()
        .find(|l| l["fields"]["message"] == "instance started")
        .expect("a start line");
    for field in [
        "instance",
        "connector",
        "version",
        "interval_secs",
        "state",
        "out",
    ] {
        assert!(!started["fields"][field].is_null(), "{field} in {started}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "poll committed")
    );
    assert!(
        lines.iter().any(|l| l["level"] == "DEBUG"),
        "debug lines shown"
    );
    let stderr = text(&out.stderr);
    for library in ["rustls", "ureq", "cranelift", "wasmtime"] {
        assert!(!stderr.contains(library), "{library} at debug:\n{stderr}");
    }
    // A poll that finds nothing new says so at info (once per quarter hour, not per poll).
    let quiet = tenant.run_once("defender-alerts", &[]);
    let log = text(&quiet.stderr);
    assert_eq!(log.matches("up to date: no new events").count(), 1, "{log}");
    assert!(!log.contains("poll committed"), "{log}");
}

// Item 12: describe agrees with configure and lists the secrets.
#[test]
fn describe_lists_the_secrets_and_offers_only_supported_clouds() {
    for connector in ["defender-alerts", "defender-incidents", "entra"] {
        let wasm = support::component_wasm(connector).display().to_string();
        let out = run_host(&["describe", &wasm]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(doc["secrets"], json!(["client-secret"]), "{connector}");
        let clouds = &doc["config_schema"]["properties"]["cloud"]["enum"];
        assert!(clouds.is_array(), "{connector}: {doc}");
        assert!(!text(&out.stdout).contains("china"), "{connector}");
    }
}

// Item 14: every command's help has examples and the exit codes.
#[test]
fn every_command_help_has_an_example_and_the_exit_codes() {
    let top = run_host(&["--help"]);
    assert!(text(&top.stdout).contains("Exit codes:"));
    for command in [
        "describe", "inspect", "validate", "run", "replay", "serve", "record", "status", "forget",
        "demo",
    ] {
        let out = run_host(&[command, "--help"]);
        let help = text(&out.stdout);
        assert!(out.status.success(), "{command}");
        assert!(
            help.contains("Examples:\n  connector-host ") && help.contains("Exit codes:"),
            "{command}:\n{help}"
        );
    }
}

// Item 15: the demo lists every connector's scenarios and runs one from anywhere.
#[test]
fn demo_lists_scenarios_and_runs_one_from_another_directory() {
    let list = run_host(&["demo", "--list"]);
    let listing = text(&list.stdout);
    for connector in ["defender-alerts", "defender-incidents", "entra"] {
        assert!(listing.contains(connector), "{listing}");
    }
    assert!(listing.contains("call-budget") && listing.contains("50-calls-a-minute"));
    let elsewhere = tempfile::tempdir().unwrap();
    let out = host(&["--log-level", "warn", "demo", "--scenario", "call-budget"])
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("defender-incidents/call-budget: The 50-calls"),
        "{err}"
    );
    assert!(!text(&out.stdout).is_empty());

    // The summary counts a validate step's requests too: every recorded exchange.
    let scenario: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../fixtures/entra/validate-ok/scenario.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let exchanges = scenario["steps"][0]["exchanges"].as_array().unwrap().len();
    let out = run_host(&[
        "--log-level",
        "warn",
        "demo",
        "--scenario",
        "validate-ok",
        "--connector",
        "entra",
    ]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "Validate: ok (0 events, 0 polls, {exchanges} requests)"
        )),
        "{err}"
    );
}

// Item 17: `inspect` names the component, its version and WIT version.
#[test]
fn inspect_prints_name_version_and_wit_version() {
    let out = run_host(&["inspect", &support::alerts_wasm().display().to_string()]);
    let t = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(t.contains("name: defender-alerts"), "{t}");
    assert!(t.contains("version: "), "{t}");
    assert!(t.contains("wit: secops:connector@0."), "{t}");
}

// Item 16: the toolchain file pins the toolchain this suite runs on, with the target.
#[test]
fn the_toolchain_file_pins_this_toolchain_and_the_wasm_target() {
    let file = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../rust-toolchain.toml"),
    )
    .unwrap();
    let rustc = std::process::Command::new(std::env::var("RUSTC").unwrap_or("rustc".into()))
        .arg("--version")
        .output()
        .unwrap();
    let version = text(&rustc.stdout);
    let pinned = file
        .lines()
        .find_map(|l| l.strip_prefix("channel = "))
        .map(|v| v.trim_matches('"').to_string())
        .expect("a pinned channel");
    assert!(
        version.starts_with(&format!("rustc {pinned} ")),
        "{pinned} vs {version}"
    );
    assert!(file.contains("\"wasm32-wasip2\""));
}

mod wasm_target {
    include!("../build-support/wasm_target.rs");
}

// Item 16: on a toolchain without the wasm target, the build adds it with rustup.
#[test]
fn the_build_adds_a_missing_wasm_target_with_rustup_and_says_so() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let sysroot = dir.path().join("sysroot");
    std::fs::create_dir_all(sysroot.join("lib/rustlib/x86_64-unknown-linux-gnu")).unwrap();
    let script = |name: &str, body: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    };
    let rustc = script("rustc", format!("echo {}", sysroot.display()));
    let log = dir.path().join("rustup.log");
    // A rustup that installs the target into the sysroot, as the real one does.
    let rustup = script(
        "rustup",
        format!(
            "echo \"$@\" >> {}\nmkdir -p {}/lib/rustlib/wasm32-wasip2",
            log.display(),
            sysroot.display()
        ),
    );
    let done = wasm_target::ensure_wasm_target(&rustc, &rustup, Some("1.95.0-x86_64"))
        .unwrap()
        .expect("the target was added");
    assert!(done.contains("rustup target add wasm32-wasip2"), "{done}");
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "target add wasm32-wasip2 --toolchain 1.95.0-x86_64\n"
    );
    // Present now: nothing to do, rustup not called again.
    assert_eq!(
        wasm_target::ensure_wasm_target(&rustc, &rustup, None).unwrap(),
        None
    );
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 1);
    // Where rustup cannot add it (offline, no rustup), the build stops saying what to do.
    std::fs::remove_dir_all(sysroot.join("lib/rustlib/wasm32-wasip2")).unwrap();
    let failing = script("rustup-offline", "exit 1".into());
    let why = wasm_target::ensure_wasm_target(&rustc, &failing, None).unwrap_err();
    assert!(why.contains("install it by hand"), "{why}");
}

// Item 1 (serve): a second `serve` on the same state file leaves the held instances alone.
#[test]
fn a_second_serve_on_one_state_file_does_not_run_the_held_instances() {
    let sim = GraphSim::start(Behaviour::default());
    sim.add_alerts("a", 6, Duration::from_secs(3600));
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("instances");
    std::fs::create_dir_all(dir.join("secrets")).unwrap();
    write_json(
        &dir.join("secrets/s.json"),
        &json!({"client-secret": SECRET}),
    );
    write_json(
        &dir.join("alpha.json"),
        &json!({"component": support::alerts_wasm(), "config": sim.config(1),
                "secrets": "secrets/s.json", "interval_secs": 1}),
    );
    let state = work.path().join("state.db").display().to_string();
    let serve = |out: &str, log: &str| {
        let out = work.path().join(out).display().to_string();
        spawn(
            &[
                "serve",
                "--instances",
                &dir.display().to_string(),
                "--state",
                &state,
                "--out",
                &out,
            ],
            &work.path().join(log),
        )
    };
    let mut first = serve("out1", "first.log");
    let first_out = work.path().join("out1/alpha.jsonl");
    wait_until(
        "the first serve's backfill",
        Duration::from_secs(30),
        || read_lines(&first_out).len() == 6,
    );
    let mut second = serve("out2", "second.log");
    let second_log = work.path().join("second.log");
    wait_until(
        "the second serve's refusal",
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(&second_log)
                .unwrap_or_default()
                .contains(&format!("held by process {}", first.id()))
        },
    );
    sim.add_alerts("b", 3, Duration::from_secs(1));
    wait_until("the new alerts", Duration::from_secs(20), || {
        read_lines(&first_out).len() == 9
    });
    assert!(read_lines(&work.path().join("out2/alpha.jsonl")).is_empty());
    support::assert_exactly_once(&first_out, &sim);
    for child in [&mut first, &mut second] {
        signal(child, "TERM");
        assert_eq!(child.wait().unwrap().code(), Some(0));
    }
}

// Item 9: a connection failure is `network`, with the host to check, in the log and
// `status` (and so in the metrics' `code` label); the component says when it gave up.
#[test]
fn an_unreachable_endpoint_is_a_network_failure_naming_the_host() {
    let port = free_port(); // nothing listens there
    let tenant = Tenant::new(&GraphSim::start(Behaviour::default()));
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tenant.path("tenant.json")).unwrap()).unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    config["login_url"] = json!(endpoint);
    config["graph_url"] = json!(endpoint);
    write_json(&tenant.dir.path().join("tenant.json"), &config);
    let out = tenant.run_once("defender-alerts", &[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let host = format!("cannot reach 127.0.0.1:{port}; check DNS, proxy");
    assert!(err.contains(&host), "{err}");
    assert!(err.contains("gave up"), "{err}");
    let row = status_of(&tenant.path("state.db"), "tenant");
    assert_eq!(row["last_error_code"], "network", "{row}");
    assert!(row["last_error"].as_str().unwrap().contains(&host), "{row}");
}

// Item 10 (serve): an instance whose config is refused is never logged as started.
#[test]
fn serve_logs_a_refused_config_without_an_instance_started_line() {
    let sim = GraphSim::start(Behaviour::default());
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("instances");
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = sim.config(1);
    config["backfill_days"] = json!(30);
    write_json(
        &dir.join("bad.json"),
        &json!({"component": support::alerts_wasm(), "config": config}),
    );
    let state = work.path().join("state.db").display().to_string();
    let log = work.path().join("serve.log");
    let mut child = spawn(
        &[
            "serve",
            "--instances",
            &dir.display().to_string(),
            "--state",
            &state,
        ],
        &log,
    );
    wait_until("the refusal", Duration::from_secs(20), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("config refused")
    });
    signal(&child, "TERM");
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("instance started"), "{text}");
    assert_eq!(status_of(&state, "bad")["state"], "refused");
}
