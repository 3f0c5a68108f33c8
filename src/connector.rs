//! What a connector crate declares: its Graph data types and how its config selects them.

use serde_json::Value;

use crate::cloud::Cloud;
use crate::config::Options;
use crate::types::ConfigError;

/// One Graph list a connector reads, described once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataType {
    /// Name in the config and in the cursor, e.g. `alerts`, `directory_audits`.
    pub name: &'static str,
    /// Event kind, e.g. `defender.alert`.
    pub kind: &'static str,
    /// Path under the Graph base, e.g. `/v1.0/security/alerts_v2`.
    pub path: &'static str,
    /// Application permissions that grant read access; any one is enough. The first is
    /// the least privileged, the one to ask for.
    pub permissions: &'static [&'static str],
    /// The time field windows filter on (`ge`); also the version when `versioned`.
    pub window_field: &'static str,
    /// The time field that becomes the event's `timestamp`.
    pub time_field: &'static str,
    /// Records change after creation: the window field's value is the event `version`,
    /// so each update is delivered again.
    pub versioned: bool,
    /// `$top`: the endpoint's documented maximum page size; 0 where none is documented
    /// (no `$top`: Graph's default page size, a guess could be refused).
    pub page_size: u32,
    /// The endpoint documents `$orderby` on the window field.
    pub order_by_window: bool,
    /// How far each window reaches back before the newest record seen, so records Graph
    /// shows late are not missed. Dedup absorbs the overlap.
    pub overlap_secs: i64,
    /// The tenant licence the API needs beyond the permission (e.g. `Microsoft Entra ID
    /// P2`), named by `validate` when Graph answers that the tenant lacks it; `None` when
    /// the API needs none.
    pub licence: Option<&'static str>,
}

impl DataType {
    /// An immutable list, windowed on and timestamped by `time_field`, read newest first
    /// (no `$orderby`), with a 10-minute window overlap. `page_size` 0 sends no `$top`.
    pub const fn new(
        name: &'static str,
        kind: &'static str,
        path: &'static str,
        permissions: &'static [&'static str],
        time_field: &'static str,
        page_size: u32,
    ) -> Self {
        DataType {
            name,
            kind,
            path,
            permissions,
            window_field: time_field,
            time_field,
            versioned: false,
            page_size,
            order_by_window: false,
            overlap_secs: 600,
            licence: None,
        }
    }

    /// Records change: windows go by `field` (their last-update time), which is also the
    /// event `version`, so every update is delivered again.
    pub const fn versioned_by(mut self, field: &'static str) -> Self {
        self.window_field = field;
        self.versioned = true;
        self
    }

    /// The endpoint documents `$orderby` on the window field: read oldest first.
    pub const fn ordered(mut self) -> Self {
        self.order_by_window = true;
        self
    }

    /// The API needs this tenant licence, e.g. `Microsoft Entra ID P2`.
    pub const fn licensed(mut self, licence: &'static str) -> Self {
        self.licence = Some(licence);
        self
    }
}

/// A data type as a config selected it, with its filters.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub data_type: &'static DataType,
    /// An OData condition ANDed to the window filter.
    pub filter: Option<String>,
    pub expand: Option<&'static str>,
}

impl Query {
    pub fn plain(data_type: &'static DataType) -> Self {
        Query {
            data_type,
            filter: None,
            expand: None,
        }
    }
}

/// A connector: the few facts specific to it. The library does the rest (OAuth, paging,
/// retries, cursor, dedup, validation).
pub trait Connector {
    /// e.g. `defender-alerts`.
    const NAME: &'static str;
    /// The crate version: `env!("CARGO_PKG_VERSION")`.
    const VERSION: &'static str;
    const DESCRIPTION: &'static str;
    const POLL_INTERVAL_SECS: u32;
    /// Every data type the connector can read.
    const DATA_TYPES: &'static [DataType];
    /// The national clouds whose Graph offers every API the connector reads, per the API
    /// pages' national cloud availability; `configure` refuses the others. The Defender and
    /// Entra ID lists used so far are documented for the global and US Government clouds.
    const CLOUDS: &'static [Cloud] = &[Cloud::Global, Cloud::UsGov, Cloud::UsGovDod];
    /// The API's published call quota per tenant, kept by [`crate::budget`]; none by default.
    const CALL_LIMITS: &'static [crate::budget::Limit] = &[];

    /// JSON Schema `properties` of the connector's own config keys.
    fn config_properties() -> Value;

    /// Config keys the connector requires besides `tenant_id` and `client_id`.
    fn required_keys() -> &'static [&'static str] {
        &[]
    }

    /// Reads the connector's own keys and says what to query.
    fn queries(options: &mut Options) -> Result<Vec<Query>, ConfigError>;
}
