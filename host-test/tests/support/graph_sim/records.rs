//! The simulated records and how each Graph list shows them: the list's own field names,
//! time fields at the precision they were stored with, evolvable enum members, and the
//! nulls real records carry.

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

/// The lists the simulator serves, by the last segment of their path.
pub const ALERTS: &str = "alerts_v2";
pub const INCIDENTS: &str = "incidents";
pub const DIRECTORY_AUDITS: &str = "directoryAudits";
pub const SIGN_INS: &str = "signIns";
pub const RISKY_USERS: &str = "riskyUsers";
pub const RISK_DETECTIONS: &str = "riskDetections";
pub const LISTS: [&str; 6] = [
    ALERTS,
    INCIDENTS,
    DIRECTORY_AUDITS,
    SIGN_INS,
    RISKY_USERS,
    RISK_DETECTIONS,
];

/// Enum members Graph added after `unknownFutureValue`: served as themselves only to a
/// request that sends `Prefer: include-unknown-enum-members`.
const EVOLVABLE: [&str; 2] = ["awaitingAction", "microsoftSentinel"];

/// A time as Graph stores it: already cut to the digits it shows, so filtering on it and
/// reading it back agree to the last digit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp {
    pub at: SystemTime,
    pub digits: u8,
}

impl Stamp {
    /// `t` cut to `digits` fractional digits (0 to 9).
    pub fn new(t: SystemTime, digits: u8) -> Stamp {
        let since = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970");
        let unit = 10u32.pow(9 - u32::from(digits));
        let nanos = since.subsec_nanos() - since.subsec_nanos() % unit;
        Stamp {
            at: SystemTime::UNIX_EPOCH + Duration::new(since.as_secs(), nanos),
            digits,
        }
    }

    /// RFC 3339 UTC with exactly `digits` fractional digits (none and no dot for 0).
    pub fn render(&self) -> String {
        let full = humantime::format_rfc3339_nanos(self.at).to_string();
        // `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`
        let (seconds, fraction) = full.split_at(19);
        match self.digits {
            0 => format!("{seconds}Z"),
            d => format!("{seconds}{}Z", &fraction[..=usize::from(d)]),
        }
    }
}

/// Which record set a list serves: the shared one (alerts, and every Entra list, each
/// showing it under its own field names) or the incidents' own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Set {
    Shared,
    Incidents,
}

/// One version of a simulated record.
#[derive(Clone, Debug)]
pub struct Record {
    pub id: String,
    pub created: Stamp,
    pub updated: Stamp,
    /// Alert status, or incident status, or risk state, as the list names it.
    pub status: &'static str,
    /// Alerts' `serviceSource`.
    pub source: &'static str,
    /// Updates since creation.
    pub revision: u32,
    /// Render the nulls (and null-or-object fields) real records carry.
    pub nulls: bool,
}

/// A small stable hash: what varies between records (digits, nulls) must not vary between
/// renderings of one version.
pub fn hash(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

fn evolvable(value: &'static str, prefer_unknown: bool) -> &'static str {
    if !prefer_unknown && EVOLVABLE.contains(&value) {
        "unknownFutureValue"
    } else {
        value
    }
}

impl Record {
    /// The version string the list shows: its last-update field, or empty where the list
    /// is immutable.
    pub fn version_in(&self, list: &str) -> String {
        match list {
            DIRECTORY_AUDITS | SIGN_INS => String::new(),
            _ => self.updated.render(),
        }
    }

    /// The value of a time field the list's type has (what a `$filter` compares); `None`
    /// where the record leaves it null.
    pub fn time_of(&self, field: &str) -> Option<SystemTime> {
        match field {
            "lastUpdateDateTime" | "lastUpdatedDateTime" | "riskLastUpdatedDateTime" => {
                Some(self.updated.at)
            }
            "resolvedDateTime" => None,
            _ => Some(self.created.at),
        }
    }

    /// The time the list sorts by, newest first (Graph's default order).
    pub fn sort_time(&self, list: &str) -> SystemTime {
        match list {
            DIRECTORY_AUDITS | SIGN_INS => self.created.at,
            _ => self.updated.at,
        }
    }

    /// The record as `list` shows it. The shared set's records look like alerts under the
    /// security lists; `set` says whether this is an incident of the incidents' own set.
    pub fn json_for(&self, list: &str, set: Set, prefer_unknown: bool, expand: bool) -> Value {
        let created = self.created.render();
        let mut v = match (list, set) {
            (DIRECTORY_AUDITS, _) => {
                let mut v = json!({"id": self.id, "activityDateTime": created, "category": "RoleManagement",
                "activityDisplayName": "Add member to role", "result": "success"});
                if self.nulls {
                    // Sometimes null, sometimes an object (wazuh #29522).
                    let app = if hash(&[&self.id, "app"]).is_multiple_of(2) {
                        Value::Null
                    } else {
                        json!({"appId": "5e3ce6c0-2b1f-4285-8d4b-75ee78787346", "displayName": "Simulated app",
                            "servicePrincipalId": "a0c3b5e1-1111-4c4c-9d9d-0123456789ab", "servicePrincipalName": null})
                    };
                    v["initiatedBy"] = json!({"app": app, "user": {"id": "b1d2e3f4-0000-4aaa-8bbb-0123456789ab",
                        "displayName": null, "userPrincipalName": "admin@contoso.example", "ipAddress": null}});
                }
                v
            }
            (SIGN_INS, _) => {
                json!({"id": self.id, "createdDateTime": created, "riskLevelDuringSignIn": "high",
                "riskState": "atRisk", "userPrincipalName": "user@contoso.example"})
            }
            (RISKY_USERS, _) => {
                json!({"id": self.id, "riskLastUpdatedDateTime": self.updated.render(), "riskState": self.status,
                "riskLevel": "high", "userPrincipalName": "user@contoso.example"})
            }
            (RISK_DETECTIONS, _) => {
                json!({"id": self.id, "activityDateTime": created, "lastUpdatedDateTime": self.updated.render(),
                "riskEventType": "unfamiliarFeatures", "riskState": self.status})
            }
            (INCIDENTS, Set::Incidents) => self.incident(prefer_unknown, expand),
            _ => self.alert(prefer_unknown),
        };
        if self.nulls && list == ALERTS {
            for field in ["classification", "determination", "assignedTo"] {
                v[field] = Value::Null;
            }
            v["description"] = json!("");
        }
        v
    }

    fn alert(&self, prefer_unknown: bool) -> Value {
        json!({
            "@odata.type": "#microsoft.graph.security.alert",
            "id": self.id,
            "status": self.status,
            "severity": "medium",
            "serviceSource": evolvable(self.source, prefer_unknown),
            "title": format!("Simulated alert {}", self.id),
            "createdDateTime": self.created.render(),
            "lastUpdateDateTime": self.updated.render(),
        })
    }

    /// An incident: numeric string id, its own fields, most of the triage fields null
    /// until an analyst sets them.
    fn incident(&self, prefer_unknown: bool, expand: bool) -> Value {
        let triaged = self.revision > 0 && hash(&[&self.id, "triaged"]).is_multiple_of(2);
        let (classification, determination, assigned) = if triaged {
            (
                json!("truePositive"),
                json!("malware"),
                json!("analyst@contoso.example"),
            )
        } else {
            (Value::Null, Value::Null, Value::Null)
        };
        let mut v = json!({
            "id": self.id,
            "tenantId": super::TENANT,
            "displayName": format!("Multi-stage incident {} on one endpoint", self.id),
            "description": null,
            "severity": if hash(&[&self.id, "sev"]).is_multiple_of(3) { "high" } else { "medium" },
            "status": evolvable(self.status, prefer_unknown),
            "classification": classification,
            "determination": determination,
            "assignedTo": assigned,
            "incidentWebUrl": format!("https://security.microsoft.com/incidents/{}", self.id),
            "redirectIncidentId": null,
            "customTags": [],
            "systemTags": [],
            "createdDateTime": self.created.render(),
            "lastUpdateDateTime": self.updated.render(),
        });
        if expand {
            v["alerts"] = json!(
                [0, 1]
                    .iter()
                    .map(|k| json!({
                        "@odata.type": "#microsoft.graph.security.alert",
                        "id": format!("da{}_{k}", self.id),
                        "incidentId": self.id,
                        "status": "new",
                        "serviceSource": "microsoftDefenderForEndpoint",
                        "createdDateTime": self.created.render(),
                        "lastUpdateDateTime": self.created.render(),
                    }))
                    .collect::<Vec<_>>()
            );
        }
        v
    }
}

/// Incident status after `revision` updates: `awaitingAction` among them where the
/// simulator serves evolvable members.
pub fn incident_status(id: &str, revision: u32, evolvable_enums: bool) -> &'static str {
    match (revision % 3, evolvable_enums) {
        (0, true) if revision == 0 && hash(&[id, "new"]).is_multiple_of(4) => "awaitingAction",
        (0, _) if revision == 0 => "active",
        (1, true) => "awaitingAction",
        (1, false) | (2, _) => "inProgress",
        _ => "resolved",
    }
}

/// An alert's `serviceSource`: now and then one Graph added after `unknownFutureValue`.
pub fn alert_source(id: &str, evolvable_enums: bool) -> &'static str {
    if evolvable_enums && hash(&[id, "source"]).is_multiple_of(5) {
        "microsoftSentinel"
    } else {
        "microsoftDefenderForEndpoint"
    }
}
