//! Every bundled Defender Alerts fixture, replayed through the real component, runner,
//! state store and sink. The report (polls, outcomes, events) is snapshotted; the
//! assertions next to each snapshot state the behaviour it must show.

mod support;

use std::path::Path;

use connector_host::engine::Limits;
use connector_host::fixture::{ReplayOptions, ReplayReport, replay};
use serde_json::Value;

struct Replayed {
    report: ReplayReport,
    lines: Vec<Value>,
}

fn replay_scenario(name: &str) -> Replayed {
    replay_of("defender-alerts", name)
}

fn replay_of(connector: &str, name: &str) -> Replayed {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let options = ReplayOptions {
        config: None,
        out: out.clone(),
        state: dir.path().join("state.db"),
        limits: Limits::default(),
    };
    let fixture = connector_host::fixtures_dir().join(connector).join(name);
    let report = replay(&support::component(connector), &fixture, &options).expect("replay runs");
    assert!(
        report.matched(),
        "requests and recording differ: {report:#?}"
    );
    Replayed {
        report,
        lines: support::read_lines(&out),
    }
}

fn snapshot(r: &Replayed) {
    insta::assert_json_snapshot!(r.report.scenario.clone(), r.report);
}

fn snapshot_as(prefix: &str, r: &Replayed) {
    insta::assert_json_snapshot!(format!("{prefix}-{}", r.report.scenario), r.report);
}

/// The records of a fixture's Graph pages, in the order served.
fn served_records(name: &str) -> Vec<Value> {
    served_records_of("defender-alerts", name)
}

fn served_records_of(connector: &str, name: &str) -> Vec<Value> {
    let path = connector_host::fixtures_dir()
        .join(connector)
        .join(name)
        .join("scenario.json");
    let scenario: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let mut records = vec![];
    for step in scenario["steps"].as_array().unwrap() {
        for ex in step["exchanges"].as_array().unwrap() {
            if let Some(values) = ex["response"]["json"]["value"].as_array() {
                records.extend(values.iter().cloned());
            }
        }
    }
    records
}

fn ids(lines: &[Value]) -> Vec<(String, String)> {
    lines
        .iter()
        .map(|l| {
            (
                l["id"].as_str().unwrap().into(),
                l["version"].as_str().unwrap().into(),
            )
        })
        .collect()
}

#[test]
fn backfill_delivers_every_alert_of_every_page_once_with_its_raw_payload() {
    let r = replay_scenario("backfill");
    snapshot(&r);
    let served = served_records("backfill");
    assert_eq!(r.lines.len(), served.len());
    for (line, record) in r.lines.iter().zip(&served) {
        assert_eq!(
            line["payload"], *record,
            "payload is the record as Graph sent it"
        );
        assert_eq!(line["kind"], "defender.alert");
        assert_eq!(line["version"], record["lastUpdateDateTime"]);
        assert_eq!(line["timestamp"], record["createdDateTime"]);
        assert_eq!(line["connector"], "defender-alerts");
        assert_eq!(
            line["routing"],
            serde_json::json!(["workflows", "auto-triage"])
        );
    }
    let seqs: Vec<u64> = r.lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=served.len() as u64).collect::<Vec<_>>(),
        "seq is contiguous from 1"
    );
}

#[test]
fn an_incremental_poll_delivers_new_and_updated_alerts_but_not_unchanged_ones() {
    let r = replay_scenario("incremental");
    snapshot(&r);
    let events = ids(&r.lines);
    let unique: std::collections::BTreeSet<_> = events.iter().collect();
    assert_eq!(
        unique.len(),
        events.len(),
        "no (id, version) twice: {events:?}"
    );
    let second = &r.report.steps[1].events;
    let first_ids: Vec<&str> = r.report.steps[0]
        .events
        .iter()
        .map(|e| e.id.as_str())
        .collect();
    assert!(
        second.iter().any(|e| first_ids.contains(&e.id.as_str())),
        "an updated alert comes again, with its new version"
    );
    assert!(
        second.iter().any(|e| !first_ids.contains(&e.id.as_str())),
        "the new alert is delivered"
    );
}

#[test]
fn throttling_waits_for_retry_after_and_loses_nothing() {
    let r = replay_scenario("throttled");
    snapshot(&r);
    let step = &r.report.steps[0];
    assert_eq!(step.outcome, "ok");
    let waits: Vec<u64> = step
        .polls
        .iter()
        .filter(|p| p.outcome == "retry")
        .map(|p| p.wait_secs)
        .collect();
    assert_eq!(waits, [30, 5], "the Retry-After of the 429 and of the 503");
    assert_eq!(r.lines.len(), served_records("throttled").len());
}

#[test]
fn an_expired_token_is_renewed_once_and_the_backfill_goes_on() {
    let r = replay_scenario("token-expiry");
    snapshot(&r);
    assert_eq!(r.report.steps[0].outcome, "ok");
    assert_eq!(r.lines.len(), served_records("token-expiry").len());
}

#[test]
fn a_next_link_to_a_foreign_host_is_refused_and_no_request_goes_there() {
    let r = replay_scenario("foreign-next-link");
    snapshot(&r);
    let step = &r.report.steps[0];
    assert!(
        step.outcome.contains("outside the configured Graph host"),
        "{}",
        step.outcome
    );
    // `matched()` already holds: no request left for the foreign host (it would be
    // listed as unexpected), so no token was sent there.
    assert!(step.unexpected.is_empty());
}

#[test]
fn a_malformed_page_fails_the_poll_keeps_the_cursor_and_the_retry_completes() {
    let r = replay_scenario("malformed-page");
    snapshot(&r);
    let polls = &r.report.steps[0].polls;
    assert!(
        polls.iter().any(|p| p.outcome == "retry"
            && p.message
                .as_deref()
                .unwrap_or("")
                .contains("not a Graph collection")),
        "{polls:?}"
    );
    // The retried page is the same URL as the malformed one (the recording has it twice and
    // both were used), and nothing was lost or repeated.
    let events = ids(&r.lines);
    let unique: std::collections::BTreeSet<_> = events.iter().collect();
    assert_eq!(unique.len(), events.len());
    let served: std::collections::BTreeSet<String> = served_records("malformed-page")
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    let delivered: std::collections::BTreeSet<String> =
        events.into_iter().map(|(id, _)| id).collect();
    assert_eq!(delivered, served);
}

fn validate_outcome(connector: &str, name: &str) -> String {
    let r = replay_of(connector, name);
    assert_eq!(r.report.steps.len(), 1);
    assert!(r.lines.is_empty());
    r.report.steps[0].outcome.clone()
}

fn validate_all(connector: &str, cases: &[(&str, &str)]) -> serde_json::Map<String, Value> {
    let mut outcomes = serde_json::Map::new();
    for (scenario, prefix) in cases {
        let outcome = validate_outcome(connector, scenario);
        assert!(outcome.starts_with(prefix), "{scenario}: {outcome}");
        outcomes.insert(scenario.to_string(), outcome.into());
    }
    outcomes
}

#[test]
fn validate_names_each_cause() {
    let outcomes = validate_all(
        "defender-alerts",
        &[
            ("validate-ok", "ok"),
            ("validate-tenant-not-found", "error: tenant-not-found: "),
            ("validate-client-not-found", "error: client-not-found: "),
            ("validate-invalid-secret", "error: invalid-secret: "),
            (
                "validate-secret-id-not-value",
                "error: secret-id-not-value: ",
            ),
            ("validate-secret-expired", "error: secret-expired: "),
            ("validate-no-admin-consent", "error: no-admin-consent: "),
            ("validate-missing-permission", "error: missing-permission: "),
            ("validate-api-unavailable", "error: api-unavailable: "),
            ("validate-network", "error: network: "),
            ("validate-app-disabled", "error: app-disabled: "),
            (
                "validate-no-service-principal",
                "error: no-service-principal: ",
            ),
            ("validate-conditional-access", "error: conditional-access: "),
            (
                "validate-missing-permission-403",
                "error: missing-permission: ",
            ),
        ],
    );
    let missing = &outcomes["validate-missing-permission"];
    assert!(
        missing.as_str().unwrap().contains("SecurityAlert.Read.All"),
        "names the permission: {missing}"
    );
    let text = |name: &str| outcomes[name].as_str().unwrap().to_string();
    assert!(
        text("validate-missing-permission-403")
            .contains("lacks an application permission it requires: SecurityAlert.Read.All"),
        "{}",
        text("validate-missing-permission-403")
    );
    assert!(
        text("validate-no-service-principal").contains(
            "https://login.microsoftonline.com/8f6b2a4e-0c1d-4e5f-9a7b-3c2d1e0f4a5b/adminconsent?client_id=2b7c9d1e-3f4a-4b5c-8d6e-7f8a9b0c1d2e"
        ),
        "the remedy links the admin consent: {}",
        text("validate-no-service-principal")
    );
    assert!(
        text("validate-api-unavailable")
            .contains("Defender is not provisioned or not licensed for this tenant"),
        "{}",
        text("validate-api-unavailable")
    );
    insta::assert_json_snapshot!("validate", outcomes);
}

// Defender incidents.

const INCIDENTS: &str = "defender-incidents";

fn assert_each_served_record_once(r: &Replayed, scenario: &str) {
    let served = served_records_of(INCIDENTS, scenario);
    let mut served_ids: Vec<(String, String)> = served
        .iter()
        .map(|v| {
            (
                v["id"].as_str().unwrap().into(),
                v["lastUpdateDateTime"].as_str().unwrap().into(),
            )
        })
        .collect();
    served_ids.sort();
    served_ids.dedup();
    let mut delivered = ids(&r.lines);
    let count = delivered.len();
    delivered.sort();
    delivered.dedup();
    assert_eq!(
        delivered.len(),
        count,
        "an (id, version) was delivered twice"
    );
    assert_eq!(
        delivered, served_ids,
        "every incident version served is delivered"
    );
}

#[test]
fn incidents_backfill_with_alerts_carries_each_incidents_alerts_in_one_event() {
    let r = replay_of(INCIDENTS, "backfill-with-alerts");
    snapshot_as(INCIDENTS, &r);
    assert_each_served_record_once(&r, "backfill-with-alerts");
    for line in &r.lines {
        assert_eq!(line["kind"], "defender.incident");
        assert_eq!(line["connector"], "defender-incidents");
        assert_eq!(
            line["payload"]["alerts"].as_array().map(Vec::len),
            Some(2),
            "{line}"
        );
    }
}

#[test]
fn incidents_backfill_without_alerts_asks_for_no_expansion() {
    let r = replay_of(INCIDENTS, "backfill");
    snapshot_as(INCIDENTS, &r);
    assert_each_served_record_once(&r, "backfill");
    assert!(r.lines.iter().all(|l| l["payload"].get("alerts").is_none()));
}

#[test]
fn an_updated_incident_comes_again_with_its_new_version_and_an_unchanged_one_does_not() {
    let r = replay_of(INCIDENTS, "incremental");
    snapshot_as(INCIDENTS, &r);
    let second = &r.report.steps[1].events;
    assert_eq!(
        second.len(),
        2,
        "the resolved incident and the new one: {second:?}"
    );
    let resolved = r
        .lines
        .iter()
        .rev()
        .find(|l| l["payload"]["status"] == "resolved");
    assert!(
        resolved.is_some(),
        "the status change reaches the workflows"
    );
}

#[test]
fn a_spent_call_budget_pauses_the_poll_instead_of_drawing_429s_and_loses_nothing() {
    let r = replay_of(INCIDENTS, "call-budget");
    snapshot_as(INCIDENTS, &r);
    assert_each_served_record_once(&r, "call-budget");
    let second = &r.report.steps[1];
    let waits: Vec<u64> = second
        .polls
        .iter()
        .map(|p| p.wait_secs)
        .filter(|w| *w > 0)
        .collect();
    assert_eq!(
        waits,
        [40],
        "45 calls at the first poll, 5 more 20 s later, then wait for the minute"
    );
    assert!(
        r.report
            .steps
            .iter()
            .flat_map(|s| &s.polls)
            .all(|p| p.outcome == "ok"),
        "no throttled or failed poll"
    );
    let requests: u64 = r
        .report
        .steps
        .iter()
        .flat_map(|s| &s.polls)
        .map(|p| p.requests)
        .sum();
    assert_eq!(
        requests,
        2 + 45 + 13,
        "two tokens and one call per page, nothing more"
    );
}

#[test]
fn incidents_honour_a_429_that_still_arrives() {
    let r = replay_of(INCIDENTS, "throttled");
    snapshot_as(INCIDENTS, &r);
    assert_each_served_record_once(&r, "throttled");
    let waits: Vec<u64> = r.report.steps[0]
        .polls
        .iter()
        .filter(|p| p.outcome == "retry")
        .map(|p| p.wait_secs)
        .collect();
    assert_eq!(waits, [45]);
}

#[test]
fn incidents_validate_names_the_missing_incident_permission() {
    let outcomes = validate_all(
        INCIDENTS,
        &[
            ("validate-ok", "ok"),
            ("validate-missing-permission", "error: missing-permission: "),
            ("validate-no-admin-consent", "error: no-admin-consent: "),
            ("validate-api-unavailable", "error: api-unavailable: "),
            (
                "validate-missing-permission-403",
                "error: missing-permission: ",
            ),
        ],
    );
    assert!(
        outcomes["validate-missing-permission-403"]
            .as_str()
            .unwrap()
            .contains("requires: SecurityIncident.Read.All,SecurityIncident.ReadWrite.All")
    );
    assert!(
        outcomes["validate-api-unavailable"]
            .as_str()
            .unwrap()
            .contains("Defender is not provisioned or not licensed for this tenant")
    );
    assert!(
        outcomes["validate-missing-permission"]
            .as_str()
            .unwrap()
            .contains("lacks SecurityIncident.Read.All")
    );
    insta::assert_json_snapshot!("defender-incidents-validate", outcomes);
}

// Entra ID.

const ENTRA: &str = "entra";

fn kinds_of(lines: &[Value]) -> std::collections::BTreeMap<String, usize> {
    let mut kinds = std::collections::BTreeMap::new();
    for l in lines {
        *kinds
            .entry(l["kind"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    kinds
}

#[test]
fn entra_backfill_reads_each_selected_type_across_its_pages() {
    let r = replay_of(ENTRA, "backfill");
    snapshot_as(ENTRA, &r);
    let kinds = kinds_of(&r.lines);
    assert_eq!(
        kinds,
        [
            ("entra.directory_audit".to_string(), 5),
            ("entra.risk_detection".to_string(), 4),
            ("entra.risky_sign_in".to_string(), 4),
            ("entra.risky_user".to_string(), 3),
        ]
        .into()
    );
    for l in &r.lines {
        let versioned = matches!(
            l["kind"].as_str(),
            Some("entra.risky_user" | "entra.risk_detection")
        );
        assert_eq!(l["version"].as_str().unwrap().is_empty(), !versioned, "{l}");
    }
    let served = served_records_of(ENTRA, "backfill");
    assert_eq!(
        r.lines.len(),
        served.len(),
        "every record of every page, once"
    );
}

#[test]
fn a_throttled_type_does_not_hold_back_the_others_and_is_read_after_its_wait() {
    let r = replay_of(ENTRA, "one-type-throttled");
    snapshot_as(ENTRA, &r);
    let polls = &r.report.steps[0].polls;
    assert_eq!(polls[0].outcome, "ok");
    assert_eq!(
        polls[0].events, 2,
        "the two audit-log types delivered in the throttled poll"
    );
    assert_eq!(
        polls[0].wait_secs, 1,
        "risk_detections waits a second for the call that risky_users spent"
    );
    assert_eq!(
        (polls[1].events, polls[1].wait_secs),
        (1, 29),
        "risk_detections read, then the rest of the throttled type's Retry-After"
    );
    let kinds = kinds_of(&r.lines);
    assert_eq!(
        kinds.get("entra.risky_user"),
        Some(&1),
        "read after the wait"
    );
    assert_eq!(
        r.lines.len(),
        4,
        "the overlap of the next windows is not repeated"
    );
}

#[test]
fn a_remediated_user_and_a_dismissed_detection_come_again_as_new_versions() {
    let r = replay_of(ENTRA, "risk-updates");
    snapshot_as(ENTRA, &r);
    let second = &r.report.steps[1].events;
    assert_eq!(second.len(), 2);
    let states: Vec<&str> = r.lines[2..]
        .iter()
        .map(|l| l["payload"]["riskState"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["remediated", "dismissed"]);
    assert_eq!(
        r.lines[0]["id"], r.lines[2]["id"],
        "the same user, a new version"
    );
}

#[test]
fn the_us_government_cloud_uses_its_own_login_and_graph_hosts() {
    let r = replay_of(ENTRA, "usgov-cloud");
    snapshot_as(ENTRA, &r);
    // `matched()` holds: every request went to login.microsoftonline.us and
    // graph.microsoft.us as recorded; nothing to the global hosts.
    assert_eq!(r.lines.len(), 2);
}

#[test]
fn entra_validate_names_every_missing_permission_with_its_type() {
    let outcomes = validate_all(
        ENTRA,
        &[
            ("validate-ok", "ok"),
            ("validate-missing-permission", "error: missing-permission: "),
            ("validate-not-licensed", "error: not-licensed: "),
            (
                "validate-missing-permission-403",
                "error: missing-permission: ",
            ),
        ],
    );
    let not_licensed = outcomes["validate-not-licensed"].as_str().unwrap();
    assert!(
        not_licensed.contains("risky_users needs Microsoft Entra ID P2")
            && not_licensed.contains("risky_sign_ins needs Microsoft Entra ID P1 or P2")
            && !not_licensed.contains("directory_audits needs"),
        "names the licence of each selected type that needs one: {not_licensed}"
    );
    assert!(
        outcomes["validate-missing-permission-403"]
            .as_str()
            .unwrap()
            .contains("AuditLog.Read.All")
    );
    let missing = outcomes["validate-missing-permission"].as_str().unwrap();
    assert!(
        missing.contains("IdentityRiskyUser.Read.All (needed for risky_users) and IdentityRiskEvent.Read.All (needed for risk_detections)"),
        "{missing}"
    );
    insta::assert_json_snapshot!("entra-validate", outcomes);
}

// What real Graph does (GRAPH-REALITY.md), replayed: late records, windows too deep to page,
// a query shape that keeps failing, a dangling next link, a page size Graph refuses.

#[test]
fn a_record_graph_shows_late_is_delivered_by_the_next_window() {
    let r = replay_scenario("late-record");
    snapshot(&r);
    assert_eq!(
        r.report.steps[1].events.len(),
        1,
        "the 14-minute-late alert came with the next window, which reaches back 15 minutes"
    );
}

#[test]
fn a_window_too_deep_to_page_is_read_in_parts_by_its_count() {
    let r = replay_scenario("deep-window");
    // 600 events: asserted rather than snapshotted.
    let served: std::collections::BTreeSet<(String, String)> = served_records("deep-window")
        .iter()
        .map(|v| {
            (
                v["id"].as_str().unwrap().into(),
                v["lastUpdateDateTime"].as_str().unwrap().into(),
            )
        })
        .collect();
    let delivered = ids(&r.lines);
    assert_eq!(delivered.len(), 600, "every alert, none twice");
    assert_eq!(
        delivered
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>(),
        served
    );
    let polls = &r.report.steps[0].polls;
    assert_eq!(
        polls.iter().map(|p| p.events).collect::<Vec<_>>(),
        [0, 300, 300],
        "the probe of the too-deep day delivers nothing; each half is one page"
    );
}

#[test]
fn incidents_whose_expansion_keeps_failing_are_delivered_without_it_and_marked() {
    let r = replay_of(INCIDENTS, "expand-failing");
    snapshot_as(INCIDENTS, &r);
    assert_each_served_record_once(&r, "expand-failing");
    let incomplete: Vec<bool> = r
        .lines
        .iter()
        .map(|l| {
            l["incomplete"]
                .as_str()
                .is_some_and(|m| m.contains("$expand=alerts"))
        })
        .collect();
    assert_eq!(
        incomplete,
        [false, false, true, true],
        "the first page came with alerts; the rest were read without"
    );
    assert!(r.lines[0]["payload"]["alerts"].is_array());
    assert!(r.lines[2]["payload"].get("alerts").is_none());
}

#[test]
fn a_dangling_next_link_reads_the_window_again_and_fails_nothing() {
    let r = replay_of(ENTRA, "dangling-next-link");
    snapshot_as(ENTRA, &r);
    assert_eq!(r.report.steps[0].outcome, "ok");
    assert!(r.report.steps[0].polls.iter().all(|p| p.outcome == "ok"));
    assert_eq!(r.lines.len(), 2, "each risky user once");
}

#[test]
fn a_page_size_graph_refuses_is_learned_and_remembered() {
    let r = replay_of(ENTRA, "top-limit");
    snapshot_as(ENTRA, &r);
    assert_eq!(r.lines.len(), 2);
    assert!(r.report.steps.iter().all(|s| s.outcome == "ok"));
}

#[test]
fn every_fixture_scenario_has_a_test() {
    let tested: &[(&str, &[&str])] = &[
        (
            "defender-alerts",
            &[
                "backfill",
                "incremental",
                "throttled",
                "token-expiry",
                "foreign-next-link",
                "malformed-page",
                "validate-ok",
                "validate-tenant-not-found",
                "validate-client-not-found",
                "validate-invalid-secret",
                "validate-secret-id-not-value",
                "validate-secret-expired",
                "validate-no-admin-consent",
                "validate-missing-permission",
                "validate-api-unavailable",
                "validate-network",
                "validate-app-disabled",
                "validate-no-service-principal",
                "validate-conditional-access",
                "validate-missing-permission-403",
                "late-record",
                "deep-window",
            ],
        ),
        (
            INCIDENTS,
            &[
                "expand-failing",
                "backfill-with-alerts",
                "backfill",
                "incremental",
                "call-budget",
                "throttled",
                "validate-ok",
                "validate-missing-permission",
                "validate-no-admin-consent",
                "validate-api-unavailable",
                "validate-missing-permission-403",
            ],
        ),
        (
            ENTRA,
            &[
                "backfill",
                "one-type-throttled",
                "risk-updates",
                "usgov-cloud",
                "dangling-next-link",
                "top-limit",
                "validate-ok",
                "validate-missing-permission",
                "validate-not-licensed",
                "validate-missing-permission-403",
            ],
        ),
    ];
    for (connector, scenarios) in tested {
        let dir = connector_host::fixtures_dir().join(connector);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if Path::new(&dir).join(&name).is_dir() {
                assert!(
                    scenarios.contains(&name.as_str()),
                    "fixture {connector}/{name} is not replayed by a test"
                );
            }
        }
    }
}
