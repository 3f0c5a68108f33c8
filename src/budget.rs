//! A call budget for APIs with a published quota (Defender incidents: 50 calls a minute and
//! 1,500 an hour per tenant). Every Graph call of the instance is recorded in KV with a
//! write that commits at once, so the budget holds across polls, failed polls and restarts.
//! When the next call would break a limit the connector stops and says how long to wait,
//! instead of calling and collecting 429s.

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

const KEY: &str = "budget:calls";

/// The calls made within the longest limit's window (unix seconds, oldest first).
pub struct Budget {
    limits: &'static [Limit],
    calls: Vec<i64>,
}

impl Budget {
    pub fn load(p: &dyn Platform, limits: &'static [Limit]) -> Budget {
        let calls = match p.kv_get(KEY) {
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
        Budget { limits, calls }
    }

    /// Seconds until one more call fits every limit; 0 when it fits now.
    pub fn wait_secs(&self, now: i64) -> u32 {
        self.limits
            .iter()
            .map(|l| {
                let window: Vec<i64> = self
                    .calls
                    .iter()
                    .copied()
                    // Whole seconds: a call made at second `t` may have been late in it, so
                    // it is counted through second `t + per_secs` inclusive.
                    .filter(|&t| t >= now - i64::from(l.per_secs))
                    .collect();
                let excess = window.len() as i64 - i64::from(l.calls) + 1;
                if excess <= 0 {
                    0
                } else {
                    // The call that must leave the window first for one more to fit.
                    let t = window[(excess - 1) as usize];
                    (t + i64::from(l.per_secs) + 1 - now).max(1) as u32
                }
            })
            .max()
            .unwrap_or(0)
    }

    /// Records a call made at `now`, durably and at once.
    pub fn spend(&mut self, p: &dyn Platform, now: i64) {
        let horizon = self
            .limits
            .iter()
            .map(|l| i64::from(l.per_secs))
            .max()
            .unwrap_or(0);
        self.calls.retain(|&t| t >= now - horizon);
        self.calls.push(now);
        let text = serde_json::to_string(&self.calls).expect("a list of numbers serializes");
        if let Err(e) = p.kv_set_now(KEY, &text) {
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
    const LIMITS: &[Limit] = &[Limit::calls_per(5, 60), Limit::calls_per(20, 3600)];

    #[test]
    fn the_call_over_the_minute_waits_for_the_first_to_leave_the_window() {
        let p = FakePlatform::new();
        let mut b = Budget::load(&p, LIMITS);
        for i in 0..5 {
            assert_eq!(b.wait_secs(1000 + i), 0);
            b.spend(&p, 1000 + i);
        }
        assert_eq!(
            b.wait_secs(1004),
            57,
            "the first call (second 1000) leaves after 1060"
        );
        assert_eq!(b.wait_secs(1060), 1);
        assert_eq!(b.wait_secs(1061), 0);
        // It holds across instances (restarts): the record is in KV.
        assert_eq!(Budget::load(&p, LIMITS).wait_secs(1030), 31);
    }

    #[test]
    fn the_hourly_limit_holds_when_every_minute_is_within_its_own() {
        let p = FakePlatform::new();
        let mut b = Budget::load(&p, LIMITS);
        for minute in 0..4 {
            for _ in 0..5 {
                assert_eq!(b.wait_secs(minute * 61), 0);
                b.spend(&p, minute * 61);
            }
        }
        assert_eq!(
            b.wait_secs(244),
            3357,
            "20 calls: wait for the hour's first to leave"
        );
    }
}
