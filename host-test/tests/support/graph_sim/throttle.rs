//! Graph's per-API throttling, per tenant: each family of lists shares one budget, and each
//! answers its 429 the way it was observed to (GRAPH-REALITY.md, "Throttling").

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::records::{ALERTS, DIRECTORY_AUDITS, RISK_DETECTIONS, RISKY_USERS, SIGN_INS};

/// A family of lists sharing one request budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    /// signIns + directoryAudits: 5 requests per 10 s.
    AuditLogs,
    /// riskDetections + riskyUsers: 1 request per second, for all apps, no `Retry-After`.
    IdentityProtection,
    /// security alerts: 150 requests per minute.
    SecurityAlerts,
}

impl Family {
    pub fn of(list: &str) -> Option<Family> {
        match list {
            SIGN_INS | DIRECTORY_AUDITS => Some(Family::AuditLogs),
            RISK_DETECTIONS | RISKY_USERS => Some(Family::IdentityProtection),
            ALERTS => Some(Family::SecurityAlerts),
            _ => None,
        }
    }

    /// (requests, per).
    pub fn budget(self) -> (usize, Duration) {
        match self {
            Family::AuditLogs => (5, Duration::from_secs(10)),
            Family::IdentityProtection => (1, Duration::from_secs(1)),
            Family::SecurityAlerts => (150, Duration::from_secs(60)),
        }
    }

    /// The 429 body, and whether it comes with `Retry-After`.
    fn refusal(self) -> (Value, bool) {
        match self {
            Family::AuditLogs => (
                json!({"error": {"code": "UnknownError", "message": "This request is throttled. Please try again after the value specified in the Retry-After header.", "innerError": {}}}),
                true,
            ),
            Family::IdentityProtection => (
                json!({"error": {"code": "TooManyRequests", "message": "Too many requests."}}),
                false,
            ),
            Family::SecurityAlerts => (
                json!({"error": {"code": "TooManyRequests", "message": "Too many requests.", "innerError": {}}}),
                true,
            ),
        }
    }
}

/// A refused request: the body and the `Retry-After` seconds, if the family sends one.
pub struct Refusal {
    pub body: Value,
    pub retry_after: Option<u64>,
}

/// The requests each family accepted within its period.
#[derive(Default)]
pub struct Limiter {
    accepted: BTreeMap<Family, VecDeque<Instant>>,
}

impl Limiter {
    /// Counts the request against its family's budget, or refuses it (a refused request
    /// does not spend budget).
    pub fn admit(&mut self, family: Family, now: Instant) -> Result<(), Refusal> {
        let (calls, per) = family.budget();
        let q = self.accepted.entry(family).or_default();
        while q.front().is_some_and(|t| now.duration_since(*t) >= per) {
            q.pop_front();
        }
        if q.len() < calls {
            q.push_back(now);
            return Ok(());
        }
        let (body, with_retry_after) = family.refusal();
        // Whole seconds until the oldest accepted request leaves the period.
        let wait = per.saturating_sub(now.duration_since(*q.front().expect("full")));
        Err(Refusal {
            body,
            retry_after: with_retry_after.then(|| wait.as_secs_f64().ceil().max(1.0) as u64),
        })
    }
}
