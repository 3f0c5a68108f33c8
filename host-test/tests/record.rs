//! `connector-host record` end to end: record from the Graph simulator through the CLI
//! binary, prove that no secret, token, tenant or client ID or redacted value is in the
//! fixture, then replay it and get the same events.

mod support;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::{Value, json};
use support::graph_sim::{self, Behaviour, GraphSim};
use support::{Tenant, component_wasm, read_lines, run_host, text, write_json};

/// `record <connector> --config tenant.json --secrets secrets.json --fixture <fixture>
/// --out <out>` plus `extra`.
fn record(files: &Tenant, connector: &str, fixture: &str, out: &str, extra: &[&str]) -> Output {
    let wasm = component_wasm(connector).display().to_string();
    let (config, secrets) = (files.path("tenant.json"), files.path("secrets.json"));
    let mut args = vec![
        "record",
        &wasm,
        "--config",
        &config,
        "--secrets",
        &secrets,
        "--fixture",
        fixture,
        "--out",
        out,
        "--log-level",
        "trace",
    ];
    args.extend(extra);
    run_host(&args)
}

fn replay(connector: &str, fixture: &str, out: &str) -> Output {
    run_host(&[
        "replay",
        component_wasm(connector).to_str().unwrap(),
        "--fixture",
        fixture,
        "--out",
        out,
    ])
}

/// Every file under `dir`, concatenated.
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            bytes.extend(all_bytes(&path));
        } else {
            bytes.extend(std::fs::read(&path).unwrap());
        }
    }
    bytes
}

/// Nothing of `forbidden` (nor the simulator's secret, tokens, tenant and client IDs), in
/// any case, is in any file of the fixture.
fn assert_scrubbed(fixture: &Path, sim: &GraphSim, forbidden: &[&str]) {
    let text = String::from_utf8_lossy(&all_bytes(fixture)).to_lowercase();
    let tokens = sim.issued_tokens();
    assert!(!tokens.is_empty(), "the recording fetched tokens");
    let fixed = [graph_sim::SECRET, graph_sim::TENANT, graph_sim::CLIENT];
    for value in fixed
        .iter()
        .copied()
        .chain(tokens.iter().map(String::as_str))
        .chain(forbidden.iter().copied())
    {
        assert!(
            !text.contains(&value.to_lowercase()),
            "{value:?} survives in the recorded fixture"
        );
    }
    // Not even the parts of a token (its claims name the tenant).
    for token in &tokens {
        let claims = token.split('.').nth(1).unwrap();
        assert!(
            !text.contains(&claims.to_lowercase()),
            "a token's claims survive"
        );
    }
}

/// (kind, id, version) of each event line, in order.
fn events(out: &Path) -> Vec<(String, String, String)> {
    read_lines(out)
        .iter()
        .map(|l| {
            let s = |k: &str| l[k].as_str().unwrap().to_string();
            (s("kind"), s("id"), s("version"))
        })
        .collect()
}

/// Records `connector` from `sim`, checks the fixture is scrubbed, replays it and checks
/// the replay matched every request and delivered the same events.
fn record_and_replay(
    files: &Tenant,
    sim: &GraphSim,
    connector: &str,
    extra: &[&str],
    forbidden: &[&str],
) -> Value {
    let fixture = files.dir.path().join("fixtures").join("recorded");
    let fixture_s = fixture.to_str().unwrap();
    let recorded = record(
        files,
        connector,
        fixture_s,
        &files.path("recorded.jsonl"),
        extra,
    );
    assert_eq!(
        recorded.status.code(),
        Some(0),
        "{}",
        text(&recorded.stderr)
    );
    support::assert_no_secrets("stderr of record", &recorded.stderr, sim);
    assert_scrubbed(&fixture, sim, forbidden);

    let replayed = replay(connector, fixture_s, &files.path("replayed.jsonl"));
    assert_eq!(
        replayed.status.code(),
        Some(0),
        "{}",
        text(&replayed.stderr)
    );
    let stderr = text(&replayed.stderr);
    assert!(
        !stderr.contains("unexpected request") && !stderr.contains("never requested"),
        "{stderr}"
    );
    let original = events(Path::new(&files.path("recorded.jsonl")));
    assert!(!original.is_empty(), "the recording delivered events");
    assert_eq!(original, events(Path::new(&files.path("replayed.jsonl"))));
    serde_json::from_slice(&std::fs::read(fixture.join("scenario.json")).unwrap()).unwrap()
}

#[test]
fn a_recorded_alerts_run_is_scrubbed_and_replays_the_same_events() {
    // Paging, throttling (Retry-After) and a token revoked mid-run (a second token).
    let sim = GraphSim::start(Behaviour {
        page_max: 7,
        throttle_every: Some(3),
        token_lifetime: Duration::from_millis(400),
        ..Behaviour::default()
    });
    sim.add_alerts("a", 30, Duration::from_secs(20 * 3600));
    let files = Tenant::new(&sim);
    let titles: Vec<String> = read_titles(&sim);
    let forbidden: Vec<&str> = titles.iter().map(String::as_str).collect();
    let scenario = record_and_replay(
        &files,
        &sim,
        "defender-alerts",
        &["--redact-field", "title"],
        &forbidden,
    );

    assert!(sim.issued_tokens().len() >= 2, "a second token was issued");
    assert_eq!(
        scenario["config"]["tenant_id"],
        "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
    );
    assert_eq!(
        scenario["config"]["client_id"],
        "cccccccc-cccc-4ccc-8ccc-cccccccccccc"
    );
    let exchanges = scenario["steps"][0]["exchanges"].as_array().unwrap();
    let throttled: Vec<&Value> = exchanges
        .iter()
        .filter(|e| e["response"]["status"] == 429)
        .collect();
    assert!(!throttled.is_empty(), "throttled responses were recorded");
    assert!(
        throttled
            .iter()
            .all(|e| e["response"]["headers"] == json!({"retry-after": "1"})),
        "with their Retry-After"
    );
    for e in exchanges {
        assert_eq!(
            e["request"].as_object().unwrap().len(),
            2,
            "method and URL only: {e}"
        );
    }
    // Each title got its own placeholder, and a title seen twice (paging overlap) the same.
    let placeholders: std::collections::BTreeMap<String, String> = exchanges
        .iter()
        .filter_map(|e| e["response"]["json"]["value"].as_array())
        .flatten()
        .map(|a| {
            (
                a["id"].as_str().unwrap().into(),
                a["title"].as_str().unwrap().into(),
            )
        })
        .collect();
    let distinct: std::collections::BTreeSet<&String> = placeholders.values().collect();
    assert_eq!(
        distinct.len(),
        30,
        "one placeholder per title: {placeholders:?}"
    );
    assert!(distinct.iter().all(|p| p.starts_with("redacted-title-")));
}

/// The titles the simulator serves (the value of a field the test redacts).
fn read_titles(sim: &GraphSim) -> Vec<String> {
    sim.ids()
        .iter()
        .map(|id| format!("Simulated alert {id}"))
        .collect()
}

#[test]
fn a_recorded_entra_run_with_validation_redacts_user_names_and_replays() {
    let sim = GraphSim::start(Behaviour {
        page_max: 6,
        ..Behaviour::default()
    });
    sim.add_alerts("e", 14, Duration::from_secs(20 * 3600));
    let files = Tenant::with_all_entra_types(&sim);
    let scenario = record_and_replay(
        &files,
        &sim,
        "entra",
        &[
            "--validate",
            "--redact-field",
            "userPrincipalName",
            "--description",
            "Entra, recorded",
        ],
        &["user@contoso.example"],
    );
    // The value was there to be redacted: the recording run's own events carry it.
    let delivered = std::fs::read_to_string(files.path("recorded.jsonl")).unwrap();
    assert!(delivered.contains("user@contoso.example"));
    assert_eq!(scenario["description"], "Entra, recorded");
    let steps = scenario["steps"].as_array().unwrap();
    assert_eq!(
        (steps[0]["action"].as_str(), steps[1]["action"].as_str()),
        (Some("validate"), Some("poll"))
    );
    // The synthetic token keeps the roles that validate reads, and nothing else.
    let token = steps[0]["exchanges"][0]["response"]["json"]["access_token"]
        .as_str()
        .unwrap();
    use base64::Engine as _;
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        claims.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["roles"]
    );
}

#[test]
fn a_failed_validation_is_recorded_alone_and_replays() {
    let sim = GraphSim::start(Behaviour::default());
    let files = Tenant::new(&sim);
    let wrong = "not-the-secret-Z9~x";
    write_json(
        &files.dir.path().join("secrets.json"),
        &json!({"client-secret": wrong}),
    );
    let fixture = files.dir.path().join("refused");
    let fixture_s = fixture.to_str().unwrap();
    let out = record(
        &files,
        "defender-alerts",
        fixture_s,
        &files.path("o.jsonl"),
        &["--validate"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("invalid-secret") && !err.contains(wrong),
        "{err}"
    );
    let bytes = all_bytes(&fixture);
    let fixture_text = String::from_utf8_lossy(&bytes);
    for value in [wrong, graph_sim::TENANT, graph_sim::CLIENT] {
        assert!(
            !fixture_text.contains(value),
            "{value} survives: {fixture_text}"
        );
    }
    let scenario: Value = serde_json::from_slice(&bytes).unwrap();
    let steps = scenario["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 1, "no poll after a failed validation");
    assert_eq!(steps[0]["action"], "validate");
    assert_eq!(steps[0]["exchanges"][0]["response"]["status"], 401);

    let replayed = replay("defender-alerts", fixture_s, &files.path("r.jsonl"));
    assert_eq!(
        replayed.status.code(),
        Some(0),
        "{}",
        text(&replayed.stderr)
    );
    assert!(
        text(&replayed.stderr).contains("invalid-secret"),
        "{}",
        text(&replayed.stderr)
    );
}

#[test]
fn a_fixture_directory_that_is_not_empty_is_refused_unless_forced() {
    let sim = GraphSim::start(Behaviour::default());
    sim.add_alerts("a", 3, Duration::from_secs(3600));
    let files = Tenant::new(&sim);
    let fixture = files.dir.path().join("taken");
    std::fs::create_dir(&fixture).unwrap();
    std::fs::write(fixture.join("notes.txt"), "mine").unwrap();
    let out = files.path("out.jsonl");
    let refused = record(
        &files,
        "defender-alerts",
        fixture.to_str().unwrap(),
        &out,
        &[],
    );
    assert_eq!(refused.status.code(), Some(2));
    let err = text(&refused.stderr);
    assert!(
        err.contains("is not empty") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        sim.with_counters(|c| c.token_requests),
        0,
        "refused before any request"
    );
    assert!(!fixture.join("scenario.json").exists());

    let forced = record(
        &files,
        "defender-alerts",
        fixture.to_str().unwrap(),
        &out,
        &["--force"],
    );
    assert_eq!(forced.status.code(), Some(0), "{}", text(&forced.stderr));
    assert!(fixture.join("scenario.json").exists());
    assert_eq!(
        std::fs::read_to_string(fixture.join("notes.txt")).unwrap(),
        "mine"
    );
}

#[test]
fn an_unwritable_fixture_directory_is_refused_before_recording() {
    let sim = GraphSim::start(Behaviour::default());
    let files = Tenant::new(&sim);
    // A directory below a regular file cannot be created (whoever runs the test).
    std::fs::write(files.dir.path().join("file"), "x").unwrap();
    let fixture = files.dir.path().join("file").join("scenario");
    let out = record(
        &files,
        "defender-alerts",
        fixture.to_str().unwrap(),
        &files.path("o.jsonl"),
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("cannot write the fixture directory"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(sim.with_counters(|c| c.token_requests), 0);
}

#[test]
fn an_endpoint_that_is_down_fails_the_recording_and_writes_nothing() {
    // A port that was just free: connections are refused. The connector retries five
    // times with backoff (about a minute) before the poll fails.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sim = GraphSim::start(Behaviour::default());
    let files = Tenant::new(&sim);
    let base = format!("http://127.0.0.1:{port}");
    let mut config = sim.config(1);
    config["graph_url"] = json!(base);
    config["login_url"] = json!(base);
    write_json(&files.dir.path().join("tenant.json"), &config);
    let fixture = files.dir.path().join("down");
    let out = record(
        &files,
        "defender-alerts",
        fixture.to_str().unwrap(),
        &files.path("o.jsonl"),
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("nothing was recorded") && err.contains("could not connect"),
        "{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains(graph_sim::SECRET),
        "{err}"
    );
    assert!(!fixture.join("scenario.json").exists());
}
