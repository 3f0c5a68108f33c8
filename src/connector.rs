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
    /// The time field windows filter on (`ge` and `le`); also the version when `versioned`.
    pub window_field: &'static str,
    /// The time field that becomes the event's `timestamp`.
    pub time_field: &'static str,
    /// Records change after creation: the window field's value is the event `version`,
    /// so each update is delivered again.
    pub versioned: bool,
    /// `$top`: a page size Graph has been seen to accept for this list; 0 sends none
    /// (Graph's default page). A 400 naming a lower limit lowers it for the instance.
    pub page_size: u32,
    /// The endpoint documents `$orderby` on the window field.
    pub order_by_window: bool,
    /// How late Graph shows records of this list: each window reaches back this far
    /// before the previous window's upper bound. Dedup absorbs the overlap.
    pub overlap_secs: i64,
    /// `$count=true` is documented: the first page of a window says how many records it
    /// holds, so a window too deep for paging is split before it is paged, and what was
    /// read is checked against the count.
    pub countable: bool,
    /// Records one window may page through before it is split (0 = no limit). Graph
    /// stops serving `$skip` pages past some depth without saying so.
    pub max_depth: u32,
    /// The API family whose throttling limits this list shares.
    pub family: &'static Family,
    /// The tenant licence the API needs beyond the permission (e.g. `Microsoft Entra ID
    /// P2`), named by `validate` when Graph answers that the tenant lacks it; `None` when
    /// the API needs none.
    pub licence: Option<&'static str>,
    /// How the list's records become OCSF events (the connector's per-type table);
    /// `None` delivers them without `ocsf`.
    pub ocsf: Option<crate::ocsf::Mapping>,
}

/// Lists that Graph throttles together, per app and tenant, and how.
#[derive(Debug, PartialEq, Eq)]
pub struct Family {
    /// Name in KV and logs, e.g. `audit-logs`.
    pub name: &'static str,
    /// The published limits, kept by [`crate::budget`] so the connector waits instead of
    /// drawing 429s.
    pub limits: &'static [crate::budget::Limit],
}

/// A family without a published limit of its own.
pub const UNLIMITED: Family = Family {
    name: "graph",
    limits: &[],
};

impl DataType {
    /// An immutable list, windowed on and timestamped by `time_field`, read newest first
    /// (no `$orderby`), with a 15-minute window overlap. `page_size` 0 sends no `$top`.
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
            overlap_secs: 15 * 60,
            countable: false,
            max_depth: 0,
            family: &UNLIMITED,
            licence: None,
            ocsf: None,
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

    /// The list documents `$count`: windows are counted first, split when they hold more
    /// than `max_depth` records, and checked against the count when paged through.
    pub const fn counted(mut self, max_depth: u32) -> Self {
        self.countable = true;
        self.max_depth = max_depth;
        self
    }

    /// Graph may show records up to `secs` late.
    pub const fn late_by(mut self, secs: i64) -> Self {
        self.overlap_secs = secs;
        self
    }

    /// The list is throttled with the other lists of `family`.
    pub const fn throttled_as(mut self, family: &'static Family) -> Self {
        self.family = family;
        self
    }

    /// Records are also delivered in OCSF form, as `mapping` builds it.
    pub const fn normalized(mut self, mapping: crate::ocsf::Mapping) -> Self {
        self.ocsf = Some(mapping);
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

    /// JSON Schema `properties` of the connector's own config keys.
    fn config_properties() -> Value;

    /// Config keys the connector requires besides `tenant_id` and `client_id`.
    fn required_keys() -> &'static [&'static str] {
        &[]
    }

    /// Reads the connector's own keys and says what to query.
    fn queries(options: &mut Options) -> Result<Vec<Query>, ConfigError>;
}
