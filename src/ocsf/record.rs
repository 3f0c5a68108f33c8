//! The raw Graph record while a mapping reads it: each field taken is removed, so what
//! is left at the end is exactly what no OCSF attribute holds (`unmapped`).

use serde_json::{Map, Value};

use crate::time::Timestamp;

pub struct Record {
    fields: Map<String, Value>,
}

impl Record {
    pub fn new(fields: Map<String, Value>) -> Self {
        Record { fields }
    }

    /// Takes a field, whatever its value; `None` when absent or null.
    pub fn take(&mut self, key: &str) -> Option<Value> {
        self.fields.remove(key).filter(|v| !v.is_null())
    }

    /// Takes a non-empty string field. A field of another type stays in the record (and
    /// so in `unmapped`), so that nothing of it is lost.
    pub fn string(&mut self, key: &str) -> Option<String> {
        match self.fields.remove(key)? {
            Value::String(s) if !s.trim().is_empty() => Some(s),
            Value::String(_) | Value::Null => None,
            other => {
                self.fields.insert(key.into(), other);
                None
            }
        }
    }

    /// Reads a string field without taking it (it stays for `unmapped` unless taken).
    pub fn peek(&self, key: &str) -> Option<&str> {
        self.fields
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
    }

    /// Takes an RFC 3339 time field as OCSF milliseconds; a value that does not parse
    /// stays in the record.
    pub fn time(&mut self, key: &str) -> Option<i64> {
        let ms = self
            .peek(key)
            .and_then(|s| Timestamp::parse(s).ok())
            .map(Timestamp::unix_millis)?;
        self.fields.remove(key);
        Some(ms)
    }

    /// Takes an array field; a field of another type stays.
    pub fn array(&mut self, key: &str) -> Vec<Value> {
        match self.fields.remove(key) {
            Some(Value::Array(items)) => items,
            Some(Value::Null) | None => Vec::new(),
            Some(other) => {
                self.fields.insert(key.into(), other);
                Vec::new()
            }
        }
    }

    /// Takes an object field; a field of another type stays.
    pub fn object(&mut self, key: &str) -> Option<Map<String, Value>> {
        match self.fields.remove(key)? {
            Value::Object(o) => Some(o),
            Value::Null => None,
            other => {
                self.fields.insert(key.into(), other);
                None
            }
        }
    }

    /// Drops fields that carry nothing for a consumer (OData annotations such as
    /// `@odata.type`, which the event's class already says).
    pub fn discard(&mut self, key: &str) {
        self.fields.remove(key);
    }

    /// What no mapping took, without empty values.
    pub fn into_unmapped(self) -> Map<String, Value> {
        self.fields
            .into_iter()
            .filter(|(_, v)| !super::is_empty(v))
            .collect()
    }
}

/// Field access on a nested Graph object (evidence, `initiatedBy.user`, `status`), with
/// the same rules as [`Record`] but without taking.
pub fn str_of<'a>(o: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    o.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
}
