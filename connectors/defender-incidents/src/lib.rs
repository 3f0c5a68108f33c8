//! Microsoft Defender XDR incidents (`/security/incidents`): the correlated view SOC
//! workflows act on, re-delivered whenever status, severity, assignment or classification
//! change, optionally with their alerts, within the API's quota of 50 calls a minute and
//! 1,500 an hour per tenant.

use secops_connector::budget::Limit;
use secops_connector::types::ConfigError;
use secops_connector::{Connector, DataType, Options, Query, json, register_connector};

// The Graph reference gives no maximum $top for incidents; the Defender XDR list incidents
// API it fronts documents a maximum page size of 100.
const INCIDENTS: DataType = DataType::new(
    "incidents",
    "defender.incident",
    "/v1.0/security/incidents",
    &[
        "SecurityIncident.Read.All",
        "SecurityIncident.ReadWrite.All",
    ],
    "createdDateTime",
    100,
)
.versioned_by("lastUpdateDateTime");

struct DefenderIncidents;

impl Connector for DefenderIncidents {
    const NAME: &'static str = "defender-incidents";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "Microsoft Defender XDR incidents from Microsoft Graph (/security/incidents), \
        re-delivered on every update, optionally with their alerts. The API allows 50 calls a minute and 1,500 an \
        hour per tenant, 100 incidents a call: a backfill reads at most 5,000 incidents a minute and 150,000 an hour.";
    const POLL_INTERVAL_SECS: u32 = 60;
    const DATA_TYPES: &'static [DataType] = &[INCIDENTS];
    const CALL_LIMITS: &'static [Limit] = &[Limit::calls_per(50, 60), Limit::calls_per(1500, 3600)];

    fn config_properties() -> serde_json::Value {
        json!({
            "include_alerts": {
                "type": "boolean",
                "default": false,
                "description": "Expand each incident's alerts ($expand=alerts), so a workflow gets the incident with its alerts in one event"
            }
        })
    }

    fn queries(options: &mut Options) -> Result<Vec<Query>, ConfigError> {
        let expand = options
            .bool("include_alerts")?
            .unwrap_or(false)
            .then_some("alerts");
        Ok(vec![Query {
            expand,
            ..Query::plain(&INCIDENTS)
        }])
    }
}

register_connector!(DefenderIncidents);
