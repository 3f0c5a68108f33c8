//! The normalized (OCSF) form of each event, built in the guest beside the raw record.
//!
//! A connector crate gives each data type a [`Mapping`]: a small function that reads the
//! Graph record's fields and fills an [`Ocsf`] event through the shared builders here
//! ([`builders`] for metadata, finding_info, MITRE attacks, users, devices and the
//! observables; [`tables`] for Graph enums to OCSF ids). The record is parsed once; each
//! field a mapping takes is removed from it, and whatever no mapping took ends in
//! `unmapped`, so nothing of the record is silently dropped.
//!
//! Every value that OCSF constrains (IP and e-mail formats, ids of closed enums, ports) is
//! checked before it is placed; a value that does not fit stays in `unmapped`. The tests
//! validate every normalized event against the JSON Schema of its class, compiled from the
//! pinned OCSF release (`fixtures/ocsf/`).

use serde_json::{Map, Value};

use crate::time::Timestamp;

pub mod builders;
mod event;
pub mod evidence;
pub mod record;
pub mod tables;
#[cfg(test)]
mod tests;

pub use event::{Class, Ocsf};
pub use record::Record;

/// The OCSF release the normalized events follow (`metadata.version`).
pub const OCSF_VERSION: &str = "1.8.0";

/// How one data type's records become OCSF events: the connector's per-type table.
#[derive(Clone, Copy)]
pub struct Mapping {
    /// For `Debug` and equality (a `DataType` is compared whole in tests).
    pub name: &'static str,
    /// Fills the event from the record; an `Err` says why the record could not be
    /// normalized (the event is then delivered without `ocsf`).
    pub map: fn(&mut Record, &mut Ocsf) -> Result<(), String>,
}

impl PartialEq for Mapping {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for Mapping {}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mapping({})", self.name)
    }
}

/// What the mapping knows of an event besides its record.
#[derive(Clone, Copy, Debug)]
pub struct Source<'a> {
    /// The event kind, e.g. `defender.alert`.
    pub kind: &'a str,
    /// The Graph list, e.g. `/v1.0/security/alerts_v2` (`metadata.log_name`).
    pub path: &'a str,
    /// The event's `timestamp` (RFC 3339): OCSF `time`.
    pub timestamp: &'a str,
    /// The record field `timestamp` came from: placed as `time`, so not `unmapped`.
    pub time_field: &'a str,
}

/// The OCSF event of one raw record, as JSON text, or why there is none.
pub fn normalize(mapping: &Mapping, source: Source<'_>, raw: &str) -> Result<String, String> {
    let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(raw) else {
        return Err("the record is not a JSON object".into());
    };
    let time = Timestamp::parse(source.timestamp)
        .map_err(|e| format!("the event time `{}` is not RFC 3339: {e}", source.timestamp))?;
    let mut record = Record::new(fields);
    let mut ocsf = Ocsf::new(source, time);
    (mapping.map)(&mut record, &mut ocsf)?;
    // The event time is `time` and `metadata.original_time` whether or not the mapping
    // read its field too.
    record.discard(source.time_field);
    let event = ocsf.finish(record)?;
    serde_json::to_string(&Value::Object(event)).map_err(|e| e.to_string())
}

/// Normalizes the records of one page, counting those that could not be: they are
/// delivered without `ocsf`, and the page logs how many and the first cause.
#[derive(Default)]
pub struct PageNormalizer {
    pub failed: u32,
    pub first_cause: Option<String>,
}

impl PageNormalizer {
    pub fn event(&mut self, mapping: &Mapping, source: Source<'_>, raw: &str) -> Option<String> {
        match normalize(mapping, source, raw) {
            Ok(text) => Some(text),
            Err(cause) => {
                self.failed += 1;
                self.first_cause.get_or_insert(cause);
                None
            }
        }
    }

    /// The warning for the page's log, when some record could not be normalized.
    pub fn warning(&self, type_name: &str) -> Option<String> {
        let cause = self.first_cause.as_deref()?;
        Some(format!(
            "{type_name}: {} record(s) delivered without their OCSF form (`ocsf`), e.g. because \
             {cause}; the raw payload is complete",
            self.failed
        ))
    }
}

/// A JSON object from `(key, value)` pairs, leaving out nulls, empty strings and empty
/// arrays and objects: OCSF wants an attribute absent rather than empty.
pub fn object<const N: usize>(pairs: [(&str, Value); N]) -> Map<String, Value> {
    let mut m = Map::new();
    for (k, v) in pairs {
        if !is_empty(&v) {
            m.insert(k.to_string(), v);
        }
    }
    m
}

pub(crate) fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}
