//! One OCSF event being built: its class and activity, its attributes, its observables.

use serde_json::{Map, Value, json};

use super::{OCSF_VERSION, Record, Source, is_empty};
use crate::time::Timestamp;

/// An OCSF event class (of the pinned release) with its category.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Class {
    pub uid: u32,
    pub name: &'static str,
    pub category_uid: u32,
    pub category_name: &'static str,
}

impl Class {
    pub const DETECTION_FINDING: Class = Class::findings(2004, "Detection Finding");
    pub const INCIDENT_FINDING: Class = Class::findings(2005, "Incident Finding");
    pub const ACCOUNT_CHANGE: Class = Class::iam(3001, "Account Change");
    pub const AUTHENTICATION: Class = Class::iam(3002, "Authentication");
    pub const ENTITY_MANAGEMENT: Class = Class::iam(3004, "Entity Management");
    pub const GROUP_MANAGEMENT: Class = Class::iam(3006, "Group Management");
    pub const API_ACTIVITY: Class = Class {
        uid: 6003,
        name: "API Activity",
        category_uid: 6,
        category_name: "Application Activity",
    };

    const fn findings(uid: u32, name: &'static str) -> Class {
        Class {
            uid,
            name,
            category_uid: 2,
            category_name: "Findings",
        }
    }

    const fn iam(uid: u32, name: &'static str) -> Class {
        Class {
            uid,
            name,
            category_uid: 3,
            category_name: "Identity & Access Management",
        }
    }
}

/// An OCSF activity: its id in the class and its caption.
pub type Activity = (u32, &'static str);

pub struct Ocsf {
    time: Timestamp,
    class: Option<(Class, Activity)>,
    attributes: Map<String, Value>,
    /// `metadata` beyond what every event has (product, uid, correlation, tenant).
    pub metadata: Map<String, Value>,
    observables: Vec<Value>,
    /// Values a mapping read but could not place (e.g. a malformed technique id).
    kept: Map<String, Value>,
}

impl Ocsf {
    pub(super) fn new(source: Source<'_>, time: Timestamp) -> Self {
        Ocsf {
            time,
            class: None,
            attributes: Map::new(),
            metadata: {
                let mut m = Map::new();
                m.insert("log_name".into(), source.path.into());
                m.insert("log_provider".into(), "Microsoft Graph".into());
                m.insert("original_time".into(), source.timestamp.into());
                m.insert("event_code".into(), source.kind.into());
                m
            },
            observables: Vec::new(),
            kept: Map::new(),
        }
    }

    /// The event's class and activity; every mapping sets it.
    pub fn class(&mut self, class: Class, activity: Activity) {
        self.class = Some((class, activity));
    }

    /// The class chosen so far, for mappings that choose it in steps.
    pub fn chosen(&self) -> Option<Class> {
        self.class.map(|(c, _)| c)
    }

    /// Sets an attribute, unless the value is empty (OCSF wants it absent then).
    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        let value = value.into();
        if !is_empty(&value) {
            self.attributes.insert(key.into(), value);
        }
    }

    /// An attribute already set, for mappings that add to it.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        self.attributes.get_mut(key)
    }

    /// Adds an observable: `name` is the OCSF path of the attribute that holds the value
    /// (e.g. `evidences[0].user.name`), `type_id` an OCSF observable type.
    pub fn observe(&mut self, name: String, type_id: u32, value: &str) {
        if value.trim().is_empty() {
            return;
        }
        let o = json!({"name": name, "type_id": type_id, "value": value});
        if !self
            .observables
            .iter()
            .any(|x| x["type_id"] == o["type_id"] && x["value"] == o["value"])
        {
            self.observables.push(o);
        }
    }

    /// Keeps a Graph field's value that has no valid OCSF place in `unmapped`.
    pub fn keep_unmapped(&mut self, key: &str, value: Value) {
        if !is_empty(&value) {
            self.kept.insert(key.into(), value);
        }
    }

    /// The finished event: the class's fixed attributes, `time`, `metadata`, the
    /// observables, and what of the record no attribute took in `unmapped`.
    pub(super) fn finish(mut self, record: Record) -> Result<Map<String, Value>, String> {
        let (class, (activity_id, activity_name)) = self
            .class
            .ok_or("the mapping chose no OCSF class for the record")?;
        let a = &mut self.attributes;
        a.insert("class_uid".into(), class.uid.into());
        a.insert("class_name".into(), class.name.into());
        a.insert("category_uid".into(), class.category_uid.into());
        a.insert("category_name".into(), class.category_name.into());
        a.insert("activity_id".into(), activity_id.into());
        a.insert("activity_name".into(), activity_name.into());
        a.insert(
            "type_uid".into(),
            (u64::from(class.uid) * 100 + u64::from(activity_id)).into(),
        );
        a.insert(
            "type_name".into(),
            format!("{}: {activity_name}", class.name).into(),
        );
        a.insert("time".into(), self.time.unix_millis().into());
        if !a.contains_key("severity_id") {
            a.insert("severity_id".into(), 0.into());
            a.insert("severity".into(), "Unknown".into());
        }
        let mut metadata = std::mem::take(&mut self.metadata);
        metadata.insert("version".into(), OCSF_VERSION.into());
        metadata
            .entry("product")
            .or_insert_with(|| json!({"name": "Microsoft Graph", "vendor_name": "Microsoft"}));
        a.insert("metadata".into(), Value::Object(metadata));
        if !self.observables.is_empty() {
            a.insert("observables".into(), Value::Array(self.observables));
        }
        let mut unmapped = record.into_unmapped();
        unmapped.extend(self.kept);
        if !unmapped.is_empty() {
            a.insert("unmapped".into(), Value::Object(unmapped));
        }
        Ok(self.attributes)
    }
}
