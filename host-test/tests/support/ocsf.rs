//! The pinned OCSF release's class schemas (`fixtures/ocsf/1.8.0/`), compiled once per
//! test binary: every event line the host tests read passes through [`assert_valid`].
//! The connector crates' OCSF tests include this file too (`#[path]`), so one loader
//! serves both.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use serde_json::Value;

/// The pinned OCSF version: the folder of `fixtures/ocsf/` the schemas are read from.
pub const VERSION: &str = "1.8.0";

/// Class uid → the file of its schema.
const CLASSES: &[(u64, &str)] = &[
    (2004, "detection_finding"),
    (2005, "incident_finding"),
    (3001, "account_change"),
    (3002, "authentication"),
    (3004, "entity_management"),
    (3006, "group_management"),
    (6003, "api_activity"),
];

fn validators() -> &'static BTreeMap<u64, jsonschema::Validator> {
    static V: OnceLock<BTreeMap<u64, jsonschema::Validator>> = OnceLock::new();
    V.get_or_init(|| {
        let dir = fixtures().join("ocsf").join(VERSION);
        CLASSES
            .iter()
            .map(|(uid, name)| {
                let path = dir.join(format!("{name}.schema.json"));
                let schema: Value = serde_json::from_slice(
                    &std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
                )
                .unwrap();
                let v = jsonschema::validator_for(&schema)
                    .unwrap_or_else(|e| panic!("{} compiles: {e}", path.display()));
                (*uid, v)
            })
            .collect()
    })
}

/// The repository's `fixtures/`, found upwards of the crate under test.
pub fn fixtures() -> PathBuf {
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    while !dir.join("fixtures").join("ocsf").is_dir() {
        assert!(
            dir.pop(),
            "no fixtures/ocsf above {}",
            env!("CARGO_MANIFEST_DIR")
        );
    }
    dir.join("fixtures")
}

/// A Graph reference example record (`fixtures/ocsf/examples/<name>.json`), as text.
pub fn example(name: &str) -> String {
    let path = fixtures()
        .join("ocsf")
        .join("examples")
        .join(format!("{name}.json"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Records derived from `record` the way a changing or broken Graph could send them:
/// each top-level field removed, nulled, or replaced by a value of every other JSON type
/// (including strings that look like the field's neighbours: an IP, a time, an e-mail);
/// and the same one level down in objects and arrays of objects. Deterministic.
pub fn mutations(record: &Value) -> Vec<Value> {
    let odd = [
        Value::Null,
        Value::Bool(true),
        serde_json::json!(-1),
        serde_json::json!(1.5),
        serde_json::json!(""),
        serde_json::json!("not a value"),
        serde_json::json!("999.1.1.1"),
        serde_json::json!("2021-13-45T99:00:00Z"),
        serde_json::json!("a@b"),
        serde_json::json!([]),
        serde_json::json!([1, "x", null]),
        serde_json::json!({}),
        serde_json::json!({"id": 5}),
    ];
    let mut out = Vec::new();
    let Value::Object(fields) = record else {
        return out;
    };
    for (key, value) in fields {
        let mut removed = fields.clone();
        removed.remove(key);
        out.push(Value::Object(removed));
        for v in &odd {
            let mut m = fields.clone();
            m.insert(key.clone(), v.clone());
            out.push(Value::Object(m));
        }
        let nested: Vec<&serde_json::Map<String, Value>> = match value {
            Value::Object(o) => vec![o],
            Value::Array(items) => items.iter().filter_map(Value::as_object).collect(),
            _ => vec![],
        };
        for (i, inner) in nested.into_iter().enumerate() {
            for inner_key in inner.keys() {
                for v in &odd {
                    let mut changed = inner.clone();
                    changed.insert(inner_key.clone(), v.clone());
                    let mut m = fields.clone();
                    match value {
                        Value::Array(items) => {
                            let mut items = items.clone();
                            let at = items
                                .iter()
                                .enumerate()
                                .filter(|(_, x)| x.is_object())
                                .nth(i)
                                .map(|(j, _)| j)
                                .unwrap_or(0);
                            items[at] = Value::Object(changed);
                            m.insert(key.clone(), Value::Array(items));
                        }
                        _ => {
                            m.insert(key.clone(), Value::Object(changed));
                        }
                    }
                    out.push(Value::Object(m));
                }
            }
        }
    }
    out
}

/// The reasons `ocsf` (an event's normalized form) fails its class schema; empty when
/// it validates. A class the project does not use is a failure too.
pub fn errors(ocsf: &Value) -> Vec<String> {
    let Some(class) = ocsf["class_uid"].as_u64() else {
        return vec![format!("no class_uid in {ocsf}")];
    };
    let Some(v) = validators().get(&class) else {
        return vec![format!(
            "class {class} has no schema under fixtures/ocsf/{VERSION}"
        )];
    };
    v.iter_errors(ocsf)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// Panics, naming the event and every reason, when an event line's `ocsf` does not
/// validate against its class schema. Lines without `ocsf` pass (0.1 components, and
/// instances with `"normalize": false`).
pub fn assert_valid(line: &Value) {
    let Some(ocsf) = line.get("ocsf") else { return };
    let errors = errors(ocsf);
    assert!(
        errors.is_empty(),
        "the OCSF form of {} {} does not validate against OCSF {VERSION}:\n  {}\n{}",
        line["kind"],
        line["id"],
        errors.join("\n  "),
        serde_json::to_string_pretty(ocsf).unwrap()
    );
}
