//! The alert mapping on the Graph reference's example alert (snapshot, schema-valid, an
//! observable for each thing the evidence names) and on mutations of it (never a panic;
//! schema-valid or a counted refusal).

#[path = "../../../host-test/tests/support/ocsf.rs"]
mod schema;

use secops_connector::ocsf::{Source, normalize};
use serde_json::Value;

const SOURCE: Source<'static> = Source {
    kind: "defender.alert",
    path: "/v1.0/security/alerts_v2",
    timestamp: "2021-04-27T12:19:27.7211305Z",
    time_field: "createdDateTime",
};

fn normalized(raw: &str) -> Result<Value, String> {
    normalize(&crate::ocsf::MAPPING, SOURCE, raw).map(|t| serde_json::from_str(&t).unwrap())
}

fn observed(e: &Value) -> Vec<(u64, String)> {
    e["observables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["type_id"].as_u64().unwrap(),
                o["value"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn the_reference_alert_is_a_valid_detection_finding_naming_its_evidence() {
    let e = normalized(&schema::example("alert")).unwrap();
    assert_eq!(schema::errors(&e), Vec::<String>::new());
    assert_eq!(e["class_uid"], 2004);
    assert_eq!(e["severity_id"], 2);
    assert_eq!(e["status_id"], 1);
    assert_eq!(e["activity_id"], 2, "updated after creation");
    assert_eq!(e["metadata"]["uid"], "da637578995287051192_756343937");
    assert_eq!(
        e["finding_info"]["src_url"],
        "https://security.microsoft.com/alerts/da637578995287051192_756343937?tid=b3c1b5fc-828c-45fa-a1e1-10d74f6d6e9c"
    );
    assert_eq!(
        e["finding_info"]["attacks"][0]["sub_technique"]["uid"],
        "T1564.001"
    );
    let seen = observed(&e);
    for expected in [
        (1, "tempDns"),
        (47, "73e7e2de709dff64ef64b1d0c30e67fab63279db"),
        (2, "1.1.1.1"),
        (7, "MsSense.exe"),
        (
            8,
            "8963a19fb992ad9a76576c5638fd68292cffb9aaac29eb8285f9abf6196a7dec",
        ),
        (8, "5f1e8acedc065031aad553b710838eb366cfee9a"),
        (15, "4780"),
        (13, "\"MsSense.exe\""),
        (4, "SYSTEM"),
        (31, "S-1-5-18"),
    ] {
        assert!(
            seen.contains(&(expected.0, expected.1.to_string())),
            "{expected:?} not among {seen:?}"
        );
    }
    insta::assert_json_snapshot!("reference-alert", e);
}

#[test]
fn mutated_alerts_never_panic_and_are_valid_or_refused() {
    let record: Value = serde_json::from_str(&schema::example("alert")).unwrap();
    let (mut valid, mut refused) = (0, 0);
    for m in schema::mutations(&record) {
        match normalized(&m.to_string()) {
            Ok(e) => {
                let errors = schema::errors(&e);
                assert!(errors.is_empty(), "{errors:?}\nfrom {m}");
                valid += 1;
            }
            Err(_) => refused += 1,
        }
    }
    assert!(valid > 100, "{valid} valid");
    // Only a missing or non-string `id` is refused.
    assert!(refused <= 14, "{refused} refused");
}
