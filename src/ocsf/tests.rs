//! The shared OCSF builders: value checks, MITRE ids, `unmapped`, and the fallback when a
//! record cannot be normalized. The connectors' mappings are validated against the OCSF
//! schema in host-test (`tests/ocsf.rs`).

use serde_json::{Value, json};

use super::builders::{attacks, valid_email, valid_ip};
use super::{Class, Mapping, Ocsf, PageNormalizer, Record, Source, normalize};

const SOURCE: Source<'static> = Source {
    kind: "test.alert",
    path: "/v1.0/security/alerts_v2",
    timestamp: "2026-11-20T10:00:00.500Z",
    time_field: "createdDateTime",
};

fn minimal(r: &mut Record, o: &mut Ocsf) -> Result<(), String> {
    let id = r.string("id").ok_or("no id")?;
    o.metadata.insert("uid".into(), id.into());
    o.class(Class::DETECTION_FINDING, (1, "Create"));
    Ok(())
}

const MINIMAL: Mapping = Mapping {
    name: "minimal",
    map: minimal,
};

fn run(mapping: &Mapping, raw: &str) -> Result<Value, String> {
    normalize(mapping, SOURCE, raw).map(|t| serde_json::from_str(&t).unwrap())
}

#[test]
fn the_class_activity_time_and_metadata_are_filled_and_the_rest_is_unmapped() {
    let e = run(
        &MINIMAL,
        r#"{"id":"a1","odd":{"x":1},"empty":"","none":null}"#,
    )
    .unwrap();
    assert_eq!(e["class_uid"], 2004);
    assert_eq!(e["category_uid"], 2);
    assert_eq!(e["type_uid"], 200401);
    assert_eq!(e["time"], 1_795_168_800_500_i64);
    assert_eq!(e["severity_id"], 0);
    assert_eq!(e["metadata"]["version"], "1.8.0");
    assert_eq!(e["metadata"]["uid"], "a1");
    assert_eq!(e["metadata"]["original_time"], SOURCE.timestamp);
    assert_eq!(e["unmapped"], json!({"odd": {"x": 1}}));
}

#[test]
fn a_record_that_cannot_be_normalized_is_counted_with_its_cause() {
    let mut n = PageNormalizer::default();
    assert!(n.event(&MINIMAL, SOURCE, "[1,2]").is_none());
    assert!(n.event(&MINIMAL, SOURCE, r#"{"title":"no id"}"#).is_none());
    assert!(n.event(&MINIMAL, SOURCE, r#"{"id":"ok"}"#).is_some());
    assert_eq!(n.failed, 2);
    let warning = n.warning("alerts").unwrap();
    assert!(warning.contains("2 record(s)"), "{warning}");
    assert!(warning.contains("not a JSON object"), "{warning}");
    assert!(PageNormalizer::default().warning("alerts").is_none());
}

#[test]
fn a_mapping_that_chooses_no_class_is_refused() {
    let none = Mapping {
        name: "none",
        map: |_, _| Ok(()),
    };
    let err = run(&none, r#"{"id":"a"}"#).unwrap_err();
    assert!(err.contains("no OCSF class"), "{err}");
}

#[test]
fn emails_and_ips_are_checked_as_ocsf_types_want_them() {
    for ok in ["a@b.c", "first.last+tag@contoso.example", "x@sub-1.a.b"] {
        assert!(valid_email(ok), "{ok}");
    }
    for bad in [
        "", "a", "a@b", "@b.c", "a@.c", "a@b.", "a b@c.d", "a@b@c.d", "ü@b.c",
    ] {
        assert!(!valid_email(bad), "{bad}");
    }
    assert!(valid_ip("203.0.113.5") && valid_ip("2001:db8::1"));
    assert!(!valid_ip("203.0.113") && !valid_ip("host.example") && !valid_ip(""));
}

#[test]
fn mitre_ids_become_attacks_and_anything_else_is_kept_apart() {
    let (a, rejected) = attacks(vec![
        json!("T1059.001"),
        json!("T1566"),
        json!("T1566"),
        json!("Execution"),
        json!(7),
    ]);
    assert_eq!(
        a,
        vec![
            json!({"technique": {"uid": "T1059"}, "sub_technique": {"uid": "T1059.001"}}),
            json!({"technique": {"uid": "T1566"}}),
        ]
    );
    assert_eq!(rejected, vec![json!("Execution"), json!(7)]);
}

#[test]
fn a_field_of_an_unexpected_type_stays_in_unmapped() {
    let mapping = Mapping {
        name: "typed",
        map: |r, o| {
            assert_eq!(r.string("title"), None);
            assert_eq!(r.time("lastUpdateDateTime"), None);
            assert!(r.array("evidence").is_empty());
            minimal(r, o)
        },
    };
    let e = run(
        &mapping,
        r#"{"id":"a","title":5,"lastUpdateDateTime":"yesterday","evidence":{"x":1}}"#,
    )
    .unwrap();
    assert_eq!(
        e["unmapped"],
        json!({"title": 5, "lastUpdateDateTime": "yesterday", "evidence": {"x": 1}})
    );
}
