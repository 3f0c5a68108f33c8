//! A component that misbehaves on purpose, for the host's sandbox tests. Its config says
//! how: `{"mode": "spin" | "grow" | "trap" | "flood" | "ok", "events": N}`.
//! - `spin`: `poll` never returns (the execution deadline must stop it);
//! - `grow`: `poll` allocates without bound (the memory cap must stop it);
//! - `trap`: `poll` panics, which aborts: a trap;
//! - `flood`: `poll` returns `events` events of 1 KiB each in one batch;
//! - `ok`: `poll` returns one event and advances its cursor (`n` → `n+1`);
//! - `degraded`: like `ok`, but its first poll (`n` = 0) reports two degraded data types
//!   and marks its event incomplete; later polls report none;
//! - `fail`: `poll` fails (fatal), keeping the cursor.

use std::cell::RefCell;

use secops_connector::types::{Batch, ConfigError, Metadata, PollError, ValidationError};
use secops_connector::wit::exports::secops::connector::connector::{
    Degradation, DegradedType, Guest,
};
use secops_connector::wit::secops::connector::types::Event;

thread_local! {
    static CONFIG: RefCell<(String, u32)> = const { RefCell::new((String::new(), 0)) };
}

struct Misbehave;

impl Guest for Misbehave {
    fn describe() -> Metadata {
        Metadata {
            name: "misbehaving-connector".into(),
            version: "0.0.0".into(),
            description: "misbehaves on purpose (host tests)".into(),
            event_kinds: vec!["test.event".into()],
            permissions: vec![],
            secrets: vec![],
            config_schema: "{}".into(),
            poll_interval_secs: 1,
        }
    }

    fn configure(config: String) -> Result<(), ConfigError> {
        let doc: serde_json::Value = serde_json::from_str(&config).map_err(|e| ConfigError {
            key: String::new(),
            message: e.to_string(),
            remedy: "write JSON".into(),
        })?;
        let mode = doc["mode"].as_str().unwrap_or("ok").to_string();
        let events = doc["events"].as_u64().unwrap_or(1) as u32;
        CONFIG.with(|c| *c.borrow_mut() = (mode, events));
        Ok(())
    }

    fn validate() -> Result<(), ValidationError> {
        Ok(())
    }

    fn poll(cursor: Option<String>) -> Result<Batch, PollError> {
        let (mode, events) = CONFIG.with(|c| c.borrow().clone());
        let n: u64 = cursor.as_deref().and_then(|c| c.parse().ok()).unwrap_or(0);
        match mode.as_str() {
            "spin" => {
                let mut x: u64 = 1;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            "grow" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "trap" => panic!("misbehaving on purpose"),
            "fail" => Err(PollError::Fatal("failing on purpose".into())),
            _ => {
                let first_degraded = mode == "degraded" && n == 0;
                let payload = format!("{{\"filler\":\"{}\"}}", "x".repeat(1000));
                let batch = (0..events)
                    .map(|i| Event {
                        id: format!("e{n}-{i}"),
                        version: String::new(),
                        kind: "test.event".into(),
                        timestamp: "2026-11-20T12:00:00Z".into(),
                        payload: payload.clone(),
                        incomplete: (first_degraded && i == 0)
                            .then(|| "alerts not read: $expand=alerts keeps failing".into()),
                        // A test component's records have no OCSF class.
                        ocsf: None,
                    })
                    .collect();
                let degraded = if first_degraded {
                    vec![
                        DegradedType {
                            data_type: "risk_detections".into(),
                            code: Degradation::Throttled,
                            message: "429 without Retry-After; polled again in 60 s".into(),
                        },
                        DegradedType {
                            data_type: "incidents".into(),
                            code: Degradation::Fallback,
                            message: "read without $expand=alerts".into(),
                        },
                    ]
                } else {
                    Vec::new()
                };
                Ok(Batch {
                    events: batch,
                    cursor: (n + 1).to_string(),
                    more: false,
                    wait_secs: None,
                    degraded,
                })
            }
        }
    }
}

secops_connector::wit::export_component!(Misbehave with_types_in secops_connector::wit);
