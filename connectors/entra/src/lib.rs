//! Microsoft Entra ID: directory audit logs (role assignments, policy and app changes),
//! sign-ins Identity Protection flagged as risky, risky users and risk detections. One
//! instance reads whichever the user selects in `event_types`, each with its own window.

use secops_connector::budget::families;
use secops_connector::types::ConfigError;
use secops_connector::{Connector, DataType, Options, Query, json, register_connector};

mod ocsf;
#[cfg(test)]
mod tests;

// Audit records never change (`version` empty). No `$top`, as Splunk's add-on sends none
// (pages of 1,000 observed); the only list here that documents `$orderby`. Audit records
// appear typically within 15 minutes (Microsoft): windows reach back 20.
// Needs no licence beyond the permission.
const DIRECTORY_AUDITS: DataType = DataType::new(
    "directory_audits",
    "entra.directory_audit",
    "/v1.0/auditLogs/directoryAudits",
    &["AuditLog.Read.All", "Directory.Read.All"],
    "activityDateTime",
    0,
)
.ordered()
.late_by(20 * 60)
.throttled_as(&families::AUDIT_LOGS)
.normalized(ocsf::DIRECTORY_AUDIT);

// 1,000 is the documented default and maximum page size. Sign-ins appear about 15 minutes
// late (Wazuh, Splunk users): windows reach back 20.
// Sign-in logs need Entra ID P1 or P2; the risk fields this type filters on read `hidden`
// without P2.
const RISKY_SIGN_INS: DataType = DataType::new(
    "risky_sign_ins",
    "entra.risky_sign_in",
    "/v1.0/auditLogs/signIns",
    &["AuditLog.Read.All"],
    "createdDateTime",
    1000,
)
.late_by(20 * 60)
.throttled_as(&families::AUDIT_LOGS)
.licensed("Microsoft Entra ID P1 or P2 for sign-in logs, P2 for their risk fields")
.normalized(ocsf::RISKY_SIGN_IN);

/// Sign-ins Identity Protection assessed as risky. The reference documents `eq` on
/// `riskLevelDuringSignIn`; the clauses are joined with `or`. The risk fields need Entra ID
/// P2: without it they read `hidden` and nothing matches.
const RISKY_SIGN_IN_FILTER: &str = "riskLevelDuringSignIn eq 'low' or riskLevelDuringSignIn eq 'medium' or riskLevelDuringSignIn eq 'high'";

// A user's risk changes (raised, remediated, dismissed): each change is a new version.
// No maximum page size is known: 500 is asked, and a 400 naming a lower limit is learned.
const RISKY_USERS: DataType = DataType::new(
    "risky_users",
    "entra.risky_user",
    "/v1.0/identityProtection/riskyUsers",
    &["IdentityRiskyUser.Read.All"],
    "riskLastUpdatedDateTime",
    500,
)
.versioned_by("riskLastUpdatedDateTime")
.throttled_as(&families::IDENTITY_PROTECTION)
.licensed("Microsoft Entra ID P2")
.normalized(ocsf::RISKY_USER);

// Windowed on the last update so a detection whose state changes comes again; the event
// time is the risky activity's. 500 is the maximum page size (501 fails).
const RISK_DETECTIONS: DataType = DataType::new(
    "risk_detections",
    "entra.risk_detection",
    "/v1.0/identityProtection/riskDetections",
    &["IdentityRiskEvent.Read.All"],
    "activityDateTime",
    500,
)
.versioned_by("lastUpdatedDateTime")
.throttled_as(&families::IDENTITY_PROTECTION)
.licensed("Microsoft Entra ID P1 or P2")
.normalized(ocsf::RISK_DETECTION);

const TYPES: &[DataType] = &[
    DIRECTORY_AUDITS,
    RISKY_SIGN_INS,
    RISKY_USERS,
    RISK_DETECTIONS,
];

struct Entra;

impl Connector for Entra {
    const NAME: &'static str = "entra";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "Microsoft Entra ID directory audits, risky sign-ins, risky users and risk \
        detections from Microsoft Graph, in the global and national clouds";
    const POLL_INTERVAL_SECS: u32 = 300;
    const DATA_TYPES: &'static [DataType] = TYPES;

    fn config_properties() -> serde_json::Value {
        let names: Vec<&str> = TYPES.iter().map(|t| t.name).collect();
        json!({
            "event_types": {
                "type": "array",
                "items": {"enum": names},
                "minItems": 1,
                "uniqueItems": true,
                "description": "Which Entra ID records to collect"
            }
        })
    }

    fn required_keys() -> &'static [&'static str] {
        &["event_types"]
    }

    fn queries(options: &mut Options) -> Result<Vec<Query>, ConfigError> {
        let names: Vec<&str> = TYPES.iter().map(|t| t.name).collect();
        let selected = options
            .choices("event_types", &names, "an Entra event type")?
            .unwrap_or_default();
        if selected.is_empty() {
            return Err(ConfigError {
                key: "event_types".into(),
                message: "no event type selected".into(),
                remedy: format!("list at least one of {}", names.join(", ")),
            });
        }
        Ok(TYPES
            .iter()
            .filter(|t| selected.iter().any(|s| s == t.name))
            .map(|t| Query {
                filter: (t.name == RISKY_SIGN_INS.name).then(|| RISKY_SIGN_IN_FILTER.to_string()),
                ..Query::plain(t)
            })
            .collect())
    }
}

register_connector!(Entra);
