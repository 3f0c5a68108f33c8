//! Every event of every bundled fixture, replayed through the real components, carries an
//! OCSF form that validates against the pinned schema of its class (checked as the lines
//! are read, `support::read_lines`), names every user, device, IP and file of its record
//! among its observables, and leaves `payload` as Graph sent it. `"normalize": false`
//! turns it off.

mod support;

use std::collections::BTreeSet;

use connector_host::engine::Limits;
use connector_host::fixture::{ReplayOptions, replay};
use serde_json::Value;

const CONNECTORS: &[&str] = &["defender-alerts", "defender-incidents", "entra"];

/// The event lines of a replayed fixture (validated against the OCSF schema on reading).
fn replayed(connector: &str, scenario: &std::path::Path, config: Option<String>) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let options = ReplayOptions {
        config,
        out: out.clone(),
        state: dir.path().join("state.db"),
        limits: Limits::default(),
    };
    replay(&support::component(connector), scenario, &options).expect("replay runs");
    support::read_lines(&out)
}

fn scenarios(connector: &str) -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<_> = std::fs::read_dir(connector_host::fixtures_dir().join(connector))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("scenario.json").is_file())
        .collect();
    dirs.sort();
    dirs
}

/// Values the record names that triage pivots on: users, devices, IPs, files, hashes,
/// URLs, mailboxes, wherever they sit in the record.
fn named_values(payload: &Value, out: &mut BTreeSet<String>) {
    const KEYS: &[&str] = &[
        "userPrincipalName",
        "ipAddress",
        "deviceDnsName",
        "mdeDeviceId",
        "fileName",
        "sha1",
        "sha256",
        "url",
        "primaryAddress",
    ];
    match payload {
        Value::Object(m) => {
            for (k, v) in m {
                if let (true, Some(s)) = (KEYS.contains(&k.as_str()), v.as_str()) {
                    let ip_like = k == "ipAddress";
                    if !s.is_empty() && (!ip_like || s.parse::<std::net::IpAddr>().is_ok()) {
                        out.insert(s.to_string());
                    }
                }
                if k == "ipInterfaces" {
                    for ip in v.as_array().into_iter().flatten().filter_map(Value::as_str) {
                        out.insert(ip.to_string());
                    }
                }
                named_values(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| named_values(v, out)),
        _ => {}
    }
}

#[test]
fn every_fixture_event_has_a_schema_valid_ocsf_form_naming_what_its_record_names() {
    let mut events = 0;
    let mut classes = BTreeSet::new();
    for connector in CONNECTORS {
        for scenario in scenarios(connector) {
            for line in replayed(connector, &scenario, None) {
                let what = format!("{connector}/{}: {}", scenario.display(), line["id"]);
                let ocsf = line
                    .get("ocsf")
                    .unwrap_or_else(|| panic!("{what}: no ocsf"));
                events += 1;
                classes.insert(ocsf["class_uid"].as_u64().unwrap());
                assert_eq!(ocsf["metadata"]["uid"], line["id"], "{what}");
                assert_eq!(ocsf["metadata"]["version"], support::ocsf::VERSION);
                let observed: BTreeSet<String> = ocsf["observables"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|o| o["value"].as_str().map(str::to_string))
                    .collect();
                let mut named = BTreeSet::new();
                named_values(&line["payload"], &mut named);
                let missing: Vec<&String> = named.difference(&observed).collect();
                assert!(missing.is_empty(), "{what}: {missing:?} not observed");
            }
        }
    }
    assert!(events > 100, "{events} events");
    // Alerts, incidents, risk and sign-ins, and the audit classes the fixtures hit.
    for class in [2004, 2005, 3002] {
        assert!(
            classes.contains(&class),
            "no event of class {class}: {classes:?}"
        );
    }
}

#[test]
fn the_payload_stays_as_graph_sent_it_beside_the_ocsf_form() {
    let fixture = connector_host::fixtures_dir()
        .join("defender-alerts")
        .join("backfill");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let options = ReplayOptions {
        config: None,
        out: out.clone(),
        state: dir.path().join("state.db"),
        limits: Limits::default(),
    };
    replay(&support::component("defender-alerts"), &fixture, &options).unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    let scenario = std::fs::read_to_string(fixture.join("scenario.json")).unwrap();
    let scenario: Value = serde_json::from_str(&scenario).unwrap();
    let served: Vec<String> = scenario["steps"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["exchanges"].as_array().unwrap().iter())
        .filter_map(|e| e["response"]["json"]["value"].as_array())
        .flatten()
        .map(|r| r.to_string())
        .collect();
    for line in text.lines() {
        // `payload` then `ocsf`: the raw record is the text between them, unchanged.
        let start = line.find(",\"payload\":").unwrap() + ",\"payload\":".len();
        let end = line.find(",\"ocsf\":").unwrap();
        assert!(served.contains(&line[start..end].to_string()), "{line}");
    }
}

#[test]
fn normalize_false_leaves_the_ocsf_form_out() {
    let fixture = connector_host::fixtures_dir()
        .join("defender-alerts")
        .join("backfill");
    let scenario: Value =
        serde_json::from_slice(&std::fs::read(fixture.join("scenario.json")).unwrap()).unwrap();
    let mut config = scenario["config"].clone();
    config["normalize"] = Value::Bool(false);
    let lines = replayed("defender-alerts", &fixture, Some(config.to_string()));
    assert_eq!(lines.len(), 10);
    assert!(lines.iter().all(|l| l.get("ocsf").is_none()));
}
