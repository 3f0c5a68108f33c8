//! The OCSF mappings fed with the page fuzzer's inputs: every record of a page that reads
//! is normalized by each of the six mappings (the connectors' own files, included by
//! path). A mapping must never panic; what it returns is a schema-valid OCSF event of its
//! class, or a refusal (counted and logged in a real poll: the event then goes without
//! `ocsf`).
#![no_main]

use secops_connector::graph::read_page;
use secops_connector::ocsf::{Mapping, Source, normalize};

#[path = "../../connectors/defender-alerts/src/ocsf.rs"]
mod alerts;
#[path = "../../connectors/entra/src/ocsf/mod.rs"]
mod entra;
#[path = "../../connectors/defender-incidents/src/ocsf.rs"]
mod incidents;
#[path = "../../host-test/tests/support/ocsf.rs"]
mod schema;

const MAPPINGS: [&Mapping; 6] = [
    &alerts::MAPPING,
    &incidents::MAPPING,
    &entra::DIRECTORY_AUDIT,
    &entra::RISKY_SIGN_IN,
    &entra::RISKY_USER,
    &entra::RISK_DETECTION,
];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(page) = read_page(data, ["id", "createdDateTime", "createdDateTime"]) else {
        return;
    };
    for record in &page.records {
        for mapping in MAPPINGS {
            let source = Source {
                kind: "fuzz",
                path: "/fuzz",
                timestamp: "2026-11-20T10:00:00Z",
                time_field: "createdDateTime",
            };
            if let Ok(text) = normalize(mapping, source, record.raw) {
                let event: serde_json::Value = serde_json::from_str(&text).unwrap();
                let errors = schema::errors(&event);
                assert!(errors.is_empty(), "{}: {errors:?}", mapping.name);
            }
        }
    }
});
