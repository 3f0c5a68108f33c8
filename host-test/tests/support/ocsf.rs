//! The pinned OCSF release's class schemas (`fixtures/ocsf/1.8.0/`), compiled once per
//! test binary: every event line the tests read passes through [`assert_valid`].

use std::collections::BTreeMap;
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
        let dir = connector_host::fixtures_dir().join("ocsf").join(VERSION);
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

/// The reasons `ocsf` (an event's normalized form) fails its class schema; empty when
/// it validates. A class the project does not use is a failure too.
pub fn errors(ocsf: &Value) -> Vec<String> {
    let Some(class) = ocsf["class_uid"].as_u64() else {
        return vec![format!("no class_uid in {ocsf}")];
    };
    let Some(v) = validators().get(&class) else {
        return vec![format!("class {class} has no schema under fixtures/ocsf/{VERSION}")];
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
