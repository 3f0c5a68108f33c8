//! The incident mapping on the Graph reference's example incident with its alerts
//! (snapshot, schema-valid, alerts as related findings, their evidence observed) and on
//! mutations of it (never a panic; schema-valid or a counted refusal).

#[path = "../../../host-test/tests/support/ocsf.rs"]
mod schema;

use secops_connector::ocsf::{Source, normalize};
use serde_json::Value;

const SOURCE: Source<'static> = Source {
    kind: "defender.incident",
    path: "/v1.0/security/incidents",
    timestamp: "2021-08-13T08:43:35.5533333Z",
    time_field: "createdDateTime",
};

fn normalized(raw: &str) -> Result<Value, String> {
    normalize(&crate::ocsf::MAPPING, SOURCE, raw).map(|t| serde_json::from_str(&t).unwrap())
}

#[test]
fn the_reference_incident_is_a_valid_incident_finding_with_its_alerts_related() {
    let e = normalized(&schema::example("incident-with-alerts")).unwrap();
    assert_eq!(schema::errors(&e), Vec::<String>::new());
    assert_eq!(e["class_uid"], 2005);
    assert_eq!(e["severity_id"], 3);
    assert_eq!(e["status_id"], 1);
    assert_eq!(e["verdict_id"], 2);
    assert_eq!(e["assignee"]["email_addr"], "KaiC@contoso.onmicrosoft.com");
    let info = &e["finding_info_list"][0];
    assert_eq!(info["uid"], "2972395");
    assert_eq!(
        info["related_events"][0]["uid"],
        "da637551227677560813_-961444813"
    );
    assert_eq!(info["attacks"][0]["sub_technique"]["uid"], "T1564.001");
    let values: Vec<&str> = e["observables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["value"].as_str().unwrap())
        .collect();
    for v in ["tempDns", "1.1.1.1", "MsSense.exe", "SYSTEM"] {
        assert!(values.contains(&v), "{v} not among {values:?}");
    }
    insta::assert_json_snapshot!("reference-incident-with-alerts", e);
}

#[test]
fn an_unassigned_incident_names_the_unassigned_group_as_ocsf_requires() {
    let mut record: Value = serde_json::from_str(&schema::example("incident-with-alerts")).unwrap();
    record["assignedTo"] = Value::Null;
    let e = normalized(&record.to_string()).unwrap();
    assert_eq!(schema::errors(&e), Vec::<String>::new());
    assert_eq!(e["assignee_group"]["name"], "Unassigned");
}

#[test]
fn mutated_incidents_never_panic_and_are_valid_or_refused() {
    let record: Value = serde_json::from_str(&schema::example("incident-with-alerts")).unwrap();
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
    assert!(refused <= 14, "{refused} refused");
}
