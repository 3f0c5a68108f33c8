//! A call budget per API family with a published quota (Defender incidents: 50 calls a
//! minute and 1,500 an hour per tenant; sign-ins and audits 5 requests per 10 s; the
//! Identity Protection lists 1 request a second). Every Graph call of the instance is recorded in KV with a
//! write that commits at once, so the budget holds across polls, failed polls and restarts.
//! When the next call would break a limit the connector stops and says how long to wait,
//! instead of calling and collecting 429s.

use crate::connector::Family;
use crate::platform::Platform;
use crate::types::Level;

/// At most `calls` calls in any `per_secs` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub calls: u32,
    pub per_secs: u32,
}

impl Limit {
    pub const fn calls_per(calls: u32, per_secs: u32) -> Limit {
        Limit { calls, per_secs }
    }
}

/// Graph's throttling limits per API family, per app and tenant. The connector keeps them
/// itself, so it waits instead of drawing 429s (which some of these lists answer without a
/// `Retry-After`).
pub mod families {
    use super::Limit;
    use crate::connector::Family;

    /// `security/alerts_v2`: 150 requests a minute (documented).
    pub const SECURITY_ALERTS: Family = Family {
        name: "security-alerts",
        limits: &[Limit::calls_per(150, 60)],
    };
    /// `security/incidents`: the Defender XDR incidents quota, 50 calls a minute and 1,500
    /// an hour per tenant (documented for the XDR API; the product promises to keep it).
    pub const INCIDENTS: Family = Family {
        name: "incidents",
        limits: &[Limit::calls_per(50, 60), Limit::calls_per(1500, 3600)],
    };
    /// `auditLogs/signIns` and `auditLogs/directoryAudits`: 5 requests per 10 seconds,
    /// shared (documented; 429s observed by other pollers).
    pub const AUDIT_LOGS: Family = Family {
        name: "audit-logs",
        limits: &[Limit::calls_per(5, 10)],
    };
    /// `identityProtection/riskDetections` and `riskyUsers`: 1 request a second per
    /// tenant for all apps together, and their 429s carry no `Retry-After` (documented).
    pub const IDENTITY_PROTECTION: Family = Family {
        name: "identity-protection",
        limits: &[Limit::calls_per(1, 1)],
    };
}

/// Milliseconds as whole seconds, rounded up: a wait of 1 ms is a wait of 1 s.
pub fn whole_secs(ms: i64) -> u32 {
    u32::try_from((ms.max(0) + 999) / 1000).unwrap_or(u32::MAX)
}

/// The calls made within the longest limit's window (unix milliseconds, oldest first).
pub struct Budget {
    key: String,
    limits: &'static [Limit],
    calls: Vec<i64>,
}

/// Calls recorded by versions that counted whole seconds are below this (year 5138 in
/// seconds, 1973 in milliseconds): they are read as seconds.
const MILLIS_SINCE: i64 = 100_000_000_000;

impl Budget {
    /// The budget of `family`, shared by every data type of the instance in it.
    pub fn load(p: &dyn Platform, family: &Family) -> Budget {
        let key = format!("budget:{}", family.name);
        let calls: Vec<i64> = match p.kv_get(&key) {
            Ok(Some(text)) => serde_json::from_str(&text).unwrap_or_else(|e| {
                // Losing the record only risks a 429, which is honoured: start afresh.
                p.log(
                    Level::Warn,
                    &format!("call budget record unreadable ({e}); starting afresh"),
                );
                Vec::new()
            }),
            Ok(None) => Vec::new(),
            Err(e) => {
                p.log(Level::Warn, &format!("reading the call budget: {e:?}"));
                Vec::new()
            }
        };
        let calls = calls
            .into_iter()
            .map(|t| if t < MILLIS_SINCE { t * 1000 } else { t })
            .collect();
        Budget {
            key,
            limits: family.limits,
            calls,
        }
    }

    /// Milliseconds until one more call fits every limit; 0 when it fits now.
    pub fn wait_millis(&self, now_ms: i64) -> i64 {
        self.limits
            .iter()
            .map(|l| {
                let per = i64::from(l.per_secs) * 1000;
                // A call at `t` counts until `t + per`. Graph's window may be aligned
                // otherwise; the host waits in whole seconds, rounded up, which is the margin.
                let window: Vec<i64> = self
                    .calls
                    .iter()
                    .copied()
                    .filter(|&t| t > now_ms - per)
                    .collect();
                let excess = window.len() as i64 - i64::from(l.calls) + 1;
                if excess <= 0 {
                    0
                } else {
                    // The call that must leave the window first for one more to fit.
                    let t = window[(excess - 1) as usize];
                    (t + per - now_ms).max(1)
                }
            })
            .max()
            .unwrap_or(0)
    }

    /// Records a call made at `now_ms`, durably and at once.
    pub fn spend(&mut self, p: &dyn Platform, now_ms: i64) {
        let horizon = self
            .limits
            .iter()
            .map(|l| i64::from(l.per_secs) * 1000)
            .max()
            .unwrap_or(0);
        self.calls.retain(|&t| t >= now_ms - horizon);
        self.calls.push(now_ms);
        let text = serde_json::to_string(&self.calls).expect("a list of numbers serializes");
        if let Err(e) = p.kv_set_now(&self.key, &text) {
            p.log(
                Level::Warn,
                &format!("could not record a call against the budget: {e:?}"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakePlatform;

    // Small limits of the same shape as a real quota: 5 a minute, 20 an hour.
    const FAMILY: Family = Family {
        name: "test",
        limits: &[Limit::calls_per(5, 60), Limit::calls_per(20, 3600)],
    };

    /// Milliseconds since the epoch, late 2023.
    const T: i64 = 1_700_000_000_000;

    #[test]
    fn the_call_over_the_minute_waits_for_the_first_to_leave_the_window() {
        let p = FakePlatform::new();
        let mut b = Budget::load(&p, &FAMILY);
        for i in 0..5 {
            assert_eq!(b.wait_millis(T + i * 1000), 0);
            b.spend(&p, T + i * 1000);
        }
        assert_eq!(
            b.wait_millis(T + 4000),
            56_000,
            "the first call (at T) leaves at T + 60 s"
        );
        assert_eq!(b.wait_millis(T + 59_999), 1);
        assert_eq!(b.wait_millis(T + 60_000), 0);
        // It holds across instances (restarts): the record is in KV.
        assert_eq!(Budget::load(&p, &FAMILY).wait_millis(T + 30_000), 30_000);
    }

    #[test]
    fn the_hourly_limit_holds_when_every_minute_is_within_its_own() {
        let p = FakePlatform::new();
        let mut b = Budget::load(&p, &FAMILY);
        for minute in 0..4 {
            for _ in 0..5 {
                let now = T + minute * 61_000;
                assert_eq!(b.wait_millis(now), 0);
                b.spend(&p, now);
            }
        }
        assert_eq!(
            b.wait_millis(T + 244_000),
            3_600_000 - 244_000,
            "20 calls: wait for the hour's first to leave"
        );
    }

    #[test]
    fn one_a_second_and_records_in_seconds_from_older_versions() {
        const ONE: Family = Family {
            name: "one",
            limits: &[Limit::calls_per(1, 1)],
        };
        let p = FakePlatform::new();
        let mut b = Budget::load(&p, &ONE);
        b.spend(&p, 1_700_000_000_250);
        assert_eq!(b.wait_millis(1_700_000_000_600), 650);
        assert_eq!(b.wait_millis(1_700_000_001_250), 0);
        // A record written in whole seconds reads as milliseconds.
        p.kv.borrow_mut()
            .insert("budget:one".into(), "[1700000000]".into());
        assert_eq!(Budget::load(&p, &ONE).wait_millis(1_700_000_000_500), 500);
    }
}
