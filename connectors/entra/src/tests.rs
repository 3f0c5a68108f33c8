//! The four Entra mappings on the Graph reference's example records (snapshots,
//! schema-valid, users and IPs observed), the directory audit table, and mutations of
//! every example (never a panic; schema-valid or a counted refusal).

#[path = "../../../host-test/tests/support/ocsf.rs"]
mod schema;

use secops_connector::ocsf::{Mapping, Source, normalize};
use serde_json::{Value, json};

use crate::ocsf::{DIRECTORY_AUDIT, RISK_DETECTION, RISKY_SIGN_IN, RISKY_USER};

/// Each example with its mapping, kind, list and event time.
type Case = (&'static str, &'static Mapping, Source<'static>);

const fn source(
    kind: &'static str,
    path: &'static str,
    timestamp: &'static str,
    time_field: &'static str,
) -> Source<'static> {
    Source {
        kind,
        path,
        timestamp,
        time_field,
    }
}

const CASES: &[Case] = &[
    (
        "directory-audit",
        &DIRECTORY_AUDIT,
        source(
            "entra.directory_audit",
            "/v1.0/auditLogs/directoryAudits",
            "2018-01-09T21:20:02.7215374Z",
            "activityDateTime",
        ),
    ),
    (
        "sign-in",
        &RISKY_SIGN_IN,
        source(
            "entra.risky_sign_in",
            "/v1.0/auditLogs/signIns",
            "2020-03-13T19:15:41.6195833Z",
            "createdDateTime",
        ),
    ),
    // The page's riskyUser has a placeholder for its time: the event time is made up.
    (
        "risky-user",
        &RISKY_USER,
        source(
            "entra.risky_user",
            "/v1.0/identityProtection/riskyUsers",
            "2024-01-01T00:00:00Z",
            "riskLastUpdatedDateTime",
        ),
    ),
    (
        "risk-detection",
        &RISK_DETECTION,
        source(
            "entra.risk_detection",
            "/v1.0/identityProtection/riskDetections",
            "2018-09-05T00:09:18.7822851Z",
            "activityDateTime",
        ),
    ),
];

fn normalized(case: &str, raw: &str) -> Result<Value, String> {
    let (_, mapping, source) = CASES.iter().find(|c| c.0 == case).unwrap();
    normalize(mapping, *source, raw).map(|t| serde_json::from_str(&t).unwrap())
}

fn example(case: &str) -> Value {
    let e = normalized(case, &schema::example(case)).unwrap();
    assert_eq!(schema::errors(&e), Vec::<String>::new(), "{case}");
    e
}

fn values(e: &Value) -> Vec<String> {
    e["observables"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|o| o["value"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_reference_directory_audit_is_a_group_membership_change() {
    let e = example("directory-audit");
    assert_eq!(e["class_uid"], 3006);
    assert_eq!(e["activity_id"], 3, "Add User");
    assert_eq!(e["group"]["name"], "Example.com");
    assert_eq!(e["user"]["name"], "example@contoso.com");
    assert_eq!(e["actor"]["user"]["name"], "bob@wingtiptoysonline.com");
    assert_eq!(e["status_id"], 1);
    let v = values(&e);
    for x in [
        "127.0.0.1",
        "bob@wingtiptoysonline.com",
        "example@contoso.com",
    ] {
        assert!(v.contains(&x.to_string()), "{x} not among {v:?}");
    }
    insta::assert_json_snapshot!("reference-directory-audit", e);
}

#[test]
fn the_reference_sign_in_is_a_successful_logon_with_its_risk() {
    let e = example("sign-in");
    assert_eq!(e["class_uid"], 3002);
    assert_eq!(e["activity_id"], 1);
    assert_eq!(e["status_id"], 1);
    assert_eq!(e["user"]["uid"], "26be570a-ae82-4189-b4e2-a37c6808512d");
    assert_eq!(e["src_endpoint"]["ip"], "131.107.159.37");
    assert_eq!(e["src_endpoint"]["location"]["city"], "Redmond");
    assert_eq!(e["service"]["name"], "Graph explorer");
    assert_eq!(e["risk_level_id"], 0);
    assert!(values(&e).contains(&"testaccount1@contoso.com".to_string()));
    insta::assert_json_snapshot!("reference-sign-in", e);
}

#[test]
fn the_reference_risky_user_with_placeholder_values_stays_valid() {
    let e = example("risky-user");
    assert_eq!(e["class_uid"], 2004);
    assert_eq!(
        e["resources"][0]["uid"],
        "d1d4a5d4-a5d4-d1d4-d4a5-d4d1d4a5d4d1"
    );
    // "String" is no risk level or state Graph knows: kept as Other.
    assert_eq!(e["severity_id"], 99);
    assert_eq!(e["unmapped"]["isDeleted"], "Boolean");
    insta::assert_json_snapshot!("reference-risky-user", e);
}

#[test]
fn the_reference_risk_detection_is_a_resolved_detection_finding() {
    let e = example("risk-detection");
    assert_eq!(e["class_uid"], 2004);
    assert_eq!(e["status_id"], 4, "remediated");
    assert_eq!(e["severity_id"], 3);
    assert_eq!(e["finding_info"]["title"], "unfamiliarFeatures");
    assert_eq!(e["evidences"][0]["user"]["name"], "olack@adatum.com");
    // The page's IP address is not one: it stays in unmapped.
    assert_eq!(e["unmapped"]["ipAddress"], "123.456.7.89");
    insta::assert_json_snapshot!("reference-risk-detection", e);
}

#[test]
fn directory_audits_take_their_class_from_the_table_and_fall_back_to_api_activity() {
    let audit = |category: &str, activity: &str, operation: &str, targets: Value| {
        let record = json!({
            "id": "Directory_x", "category": category, "activityDisplayName": activity,
            "operationType": operation, "result": "success", "loggedByService": "Core Directory",
            "activityDateTime": "2026-11-20T10:00:00Z",
            "initiatedBy": {"app": {"appId": "a1", "displayName": "Provisioning"}},
            "targetResources": targets,
        });
        let e = normalized("directory-audit", &record.to_string()).unwrap();
        assert_eq!(schema::errors(&e), Vec::<String>::new(), "{e}");
        (
            e["class_uid"].as_u64().unwrap(),
            e["activity_id"].as_u64().unwrap(),
        )
    };
    let user = json!([{"id": "u1", "type": "User", "userPrincipalName": "u@contoso.example"}]);
    let role =
        json!([{"id": "r1", "type": "Role", "displayName": "Global Administrator"}, user[0]]);
    let policy = json!([{"id": "p1", "type": "Policy", "displayName": "Block legacy auth"}]);
    assert_eq!(
        audit(
            "UserManagement",
            "Reset user password",
            "Update",
            user.clone()
        ),
        (3001, 4)
    );
    assert_eq!(
        audit("UserManagement", "Delete user", "Delete", user.clone()),
        (3001, 6)
    );
    assert_eq!(
        audit("RoleManagement", "Add member to role", "Add", role),
        (3006, 3)
    );
    assert_eq!(
        audit(
            "Policy",
            "Update conditional access policy",
            "Update",
            policy.clone()
        ),
        (3004, 3)
    );
    assert_eq!(audit("Policy", "Add policy", "Add", policy), (3004, 1));
    // A table activity whose record lacks what the class requires: the fallback.
    assert_eq!(
        audit("UserManagement", "Reset user password", "Update", json!([])),
        (6003, 3)
    );
    // A category of no directory object: the fallback.
    assert_eq!(
        audit("KerberosDomain", "Something new", "Other", json!([])),
        (6003, 99)
    );
}

#[test]
fn mutated_entra_records_never_panic_and_are_valid_or_refused() {
    for (case, ..) in CASES {
        let record: Value = serde_json::from_str(&schema::example(case)).unwrap();
        let (mut valid, mut refused) = (0, 0);
        for m in schema::mutations(&record) {
            match normalized(case, &m.to_string()) {
                Ok(e) => {
                    let errors = schema::errors(&e);
                    assert!(errors.is_empty(), "{case}: {errors:?}\nfrom {m}");
                    valid += 1;
                }
                Err(_) => refused += 1,
            }
        }
        assert!(valid > 50, "{case}: {valid} valid");
        assert!(refused <= 14, "{case}: {refused} refused");
    }
}
