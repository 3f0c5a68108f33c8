//! Timestamps as Graph writes them (RFC 3339, UTC, up to 7 fractional digits).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch. Ordered, so watermarks compare correctly whatever
/// the number of fractional digits Graph printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

const NANOS: i64 = 1_000_000_000;

impl Timestamp {
    pub fn from_system_time(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp(d.as_nanos() as i64),
            Err(e) => Timestamp(-(e.duration().as_nanos() as i64)),
        }
    }

    pub fn from_unix_secs(secs: i64) -> Self {
        Timestamp(secs * NANOS)
    }

    pub fn unix_secs(self) -> i64 {
        self.0.div_euclid(NANOS)
    }

    pub fn unix_millis(self) -> i64 {
        self.0.div_euclid(1_000_000)
    }

    /// Rounded down to the whole second: windows are bounded in whole seconds, the
    /// precision of a `$filter`.
    pub fn floor_secs(self) -> Self {
        Self::from_unix_secs(self.unix_secs())
    }

    /// Rounded up to the whole second.
    pub fn ceil_secs(self) -> Self {
        let floor = self.floor_secs();
        if floor == self {
            floor
        } else {
            floor.plus_secs(1)
        }
    }

    /// Parses RFC 3339 in UTC (`Z` or `+00:00`), as Graph sends it.
    pub fn parse(s: &str) -> Result<Self, String> {
        let utc = s.strip_suffix("+00:00").map(|p| format!("{p}Z"));
        let text = utc.as_deref().unwrap_or(s);
        humantime::parse_rfc3339(text)
            .map(Self::from_system_time)
            .map_err(|e| format!("`{s}` is not an RFC 3339 UTC time: {e}"))
    }

    fn to_system_time(self) -> SystemTime {
        if self.0 >= 0 {
            UNIX_EPOCH + Duration::from_nanos(self.0 as u64)
        } else {
            UNIX_EPOCH - Duration::from_nanos(self.0.unsigned_abs())
        }
    }

    /// Full precision, for cursors.
    pub fn to_rfc3339(self) -> String {
        humantime::format_rfc3339_nanos(self.to_system_time()).to_string()
    }

    /// Whole seconds, rounded down: the form used in `$filter`. Rounding down widens a
    /// `ge` window slightly; dedup absorbs the extra records.
    pub fn to_filter(self) -> String {
        humantime::format_rfc3339_seconds(Self::from_unix_secs(self.unix_secs()).to_system_time())
            .to_string()
    }

    pub fn minus_secs(self, secs: i64) -> Self {
        Timestamp(self.0.saturating_sub(secs.saturating_mul(NANOS)))
    }

    pub fn plus_millis(self, ms: i64) -> Self {
        Timestamp(self.0.saturating_add(ms.saturating_mul(1_000_000)))
    }

    pub fn plus_secs(self, secs: i64) -> Self {
        Timestamp(self.0.saturating_add(secs.saturating_mul(NANOS)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_graph_precision_and_orders_by_instant() {
        let a = Timestamp::parse("2021-05-02T14:19:01.3266667Z").unwrap();
        let b = Timestamp::parse("2021-05-02T14:19:01.33Z").unwrap();
        assert!(a < b, "7 digits vs 2 digits must compare as instants");
        assert_eq!(a.to_rfc3339(), "2021-05-02T14:19:01.326666700Z");
        assert_eq!(
            Timestamp::parse("2021-05-02T14:19:01+00:00")
                .unwrap()
                .to_filter(),
            "2021-05-02T14:19:01Z"
        );
    }

    #[test]
    fn filter_form_rounds_down_to_seconds() {
        let t = Timestamp::parse("2026-11-20T12:00:00.999Z").unwrap();
        assert_eq!(t.to_filter(), "2026-11-20T12:00:00Z");
        assert_eq!(t.minus_secs(86_400).to_filter(), "2026-11-19T12:00:00Z");
    }

    #[test]
    fn rejects_non_utc_and_garbage() {
        assert!(Timestamp::parse("2026-11-20T12:00:00+02:00").is_err());
        assert!(Timestamp::parse("yesterday").is_err());
        assert!(Timestamp::parse("").is_err());
    }
}
