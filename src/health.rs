//! What an instance remembers about each data type besides its cursor: consecutive
//! failures and when to try again, the page size Graph allows, and whether the type reads
//! through a fallback query. These facts stay true when a poll fails, so they are written
//! at once (`set-now`), never staged with the poll.

use serde::{Deserialize, Serialize};

use crate::platform::Platform;
use crate::time::Timestamp;
use crate::types::{Degradation, DegradedType, Level};

/// After this many transient failures in a row of a query with `$expand`, the data type
/// reads without it (Graph answered 500 to every `$expand=alerts` of a large tenant).
pub const EXPAND_TRIES: u32 = 3;
/// How long a data type stays on its fallback before the full query is tried again.
pub const FALLBACK_RETRY_SECS: i64 = 15 * 60;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TypeHealth {
    /// Consecutive failed requests; 0 after a success.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failures: u32,
    /// No request before this time (unix ms): `Retry-After`, or a backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_at: Option<i64>,
    /// What the last failure was, for the host's health records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<(Code, String)>,
    /// The largest `$top` Graph accepts for this list, learned from its 400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top: Option<u32>,
    /// Since when (unix ms) the data type reads without `$expand`, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<(i64, String)>,
    /// Graph was seen to ignore the upper bound (`le`) of this list's windows: its windows
    /// are read whole, neither split nor checked against a count, which would not hold.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unbounded: bool,
}

/// A failure as the host's health records name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Code {
    Throttled,
    Transient,
    Failing,
    /// The token endpoint refused the app (wrong or expired secret, app removed): the
    /// host reports it as `auth`, which an operator fixes differently from `failing`.
    Auth,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn key(data_type: &str) -> String {
    format!("health:{data_type}")
}

impl TypeHealth {
    pub fn load(p: &dyn Platform, data_type: &str) -> TypeHealth {
        match p.kv_get(&key(data_type)) {
            Ok(Some(text)) => serde_json::from_str(&text).unwrap_or_else(|e| {
                // Only waits, counts and a learned page size are lost: all are relearned.
                p.log(
                    Level::Warn,
                    &format!("{data_type}: health record unreadable ({e}); starting afresh"),
                );
                TypeHealth::default()
            }),
            Ok(None) => TypeHealth::default(),
            Err(e) => {
                p.log(
                    Level::Warn,
                    &format!("{data_type}: reading its health record: {e:?}"),
                );
                TypeHealth::default()
            }
        }
    }

    /// Writes the record if it differs from `before`.
    pub fn save_if_changed(&self, p: &dyn Platform, data_type: &str, before: &TypeHealth) {
        if self == before {
            return;
        }
        let text = serde_json::to_string(self).expect("a health record serializes");
        if let Err(e) = p.kv_set_now(&key(data_type), &text) {
            p.log(
                Level::Warn,
                &format!("{data_type}: could not save its health record: {e:?}"),
            );
        }
    }

    /// Milliseconds until the data type may call Graph again; 0 when it may now.
    pub fn wait_millis(&self, now: Timestamp) -> i64 {
        self.resume_at.map_or(0, |t| (t - now.unix_millis()).max(0))
    }

    /// The page size to ask for: the list's own, or less when Graph said so.
    pub fn page_size(&self, configured: u32) -> u32 {
        match self.top {
            Some(limit) if configured == 0 || limit < configured => limit,
            _ => configured,
        }
    }

    /// Learns the page size Graph allows from its 400 ("The limit of 'N' for Top query"),
    /// when it is below what this list asks for; returns it.
    pub fn learn_top(&mut self, body: &[u8], configured: u32) -> Option<u32> {
        let asked = self.page_size(configured);
        let limit = crate::graph::top_limit(body).filter(|&n| asked == 0 || n < asked)?;
        self.top = Some(limit);
        Some(limit)
    }

    /// Whether the next window part asks for `$expand`: not while on the fallback, except
    /// every [`FALLBACK_RETRY_SECS`], to find out whether Graph serves it again.
    pub fn expand(&self, now: Timestamp) -> bool {
        self.fallback
            .as_ref()
            .is_none_or(|(since, _)| now.unix_millis() - since >= FALLBACK_RETRY_SECS * 1000)
    }

    /// The last request was throttled: the type has work it could not do yet.
    pub fn throttled(&self) -> bool {
        matches!(self.last, Some((Code::Throttled, _)))
    }

    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.resume_at = None;
        self.last = None;
    }

    /// The failure that keeps this data type waiting out a backoff, if it is waiting for
    /// one (not for Graph's throttling, which is a wait, not a failure).
    pub fn held_by_failure(&self, now: Timestamp) -> Option<&(Code, String)> {
        self.last
            .as_ref()
            .filter(|(code, _)| *code != Code::Throttled && self.wait_millis(now) > 0)
    }

    pub fn failed(&mut self, now: Timestamp, wait_secs: u32, code: Code, message: String) {
        self.resume_at = Some(now.unix_millis() + i64::from(wait_secs) * 1000);
        self.last = Some((code, message));
    }

    /// How the host should show this data type, if it is not reading normally.
    pub fn degraded(&self, data_type: &str) -> Option<DegradedType> {
        if let Some((code, message)) = &self.last {
            let code = match code {
                Code::Throttled => Degradation::Throttled,
                Code::Transient => Degradation::Transient,
                Code::Failing | Code::Auth => Degradation::Failing,
            };
            return Some(DegradedType {
                data_type: data_type.into(),
                code,
                message: format!("{message} ({} failure(s) in a row)", self.failures),
            });
        }
        self.fallback.as_ref().map(|(_, why)| DegradedType {
            data_type: data_type.into(),
            code: Degradation::Fallback,
            message: why.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakePlatform;

    #[test]
    fn round_trips_and_reports_what_is_wrong() {
        let p = FakePlatform::new();
        let now = p.now();
        let mut h = TypeHealth::load(&p, "incidents");
        assert_eq!(h, TypeHealth::default());
        assert!(h.degraded("incidents").is_none());
        let before = h.clone();
        h.failures = 2;
        h.failed(now, 30, Code::Throttled, "Graph throttled".into());
        h.save_if_changed(&p, "incidents", &before);
        let back = TypeHealth::load(&p, "incidents");
        assert_eq!(back, h);
        assert_eq!(back.wait_millis(now), 30_000);
        assert_eq!(back.wait_millis(now.plus_secs(31)), 0);
        let d = back.degraded("incidents").unwrap();
        assert_eq!(d.code, Degradation::Throttled);
        assert!(d.message.contains("2 failure(s)"), "{}", d.message);

        let h = TypeHealth {
            fallback: Some((now.unix_millis(), "without alerts".into())),
            ..TypeHealth::default()
        };
        assert!(!h.expand(now.plus_secs(60)));
        assert!(h.expand(now.plus_secs(FALLBACK_RETRY_SECS)));
        assert_eq!(h.degraded("incidents").unwrap().code, Degradation::Fallback);
    }

    #[test]
    fn a_learned_page_size_only_ever_lowers_the_configured_one() {
        let mut h = TypeHealth::default();
        assert_eq!(h.page_size(100), 100);
        h.top = Some(50);
        assert_eq!(h.page_size(100), 50);
        assert_eq!(h.page_size(20), 20);
        assert_eq!(
            h.page_size(0),
            50,
            "a list sent without $top learns one too"
        );
    }

    #[test]
    fn an_unreadable_record_starts_afresh() {
        let p = FakePlatform::new();
        p.kv.borrow_mut()
            .insert("health:alerts".into(), "{nonsense".into());
        assert_eq!(TypeHealth::load(&p, "alerts"), TypeHealth::default());
    }
}
