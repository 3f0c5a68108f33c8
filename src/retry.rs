//! What to do after a failed Graph request: honour `Retry-After` on throttling, back off
//! exponentially with jitter on other transient failures, give up after a bound.

use crate::types::Response;

/// Consecutive transient failures after which a poll is reported as failed.
pub const MAX_ATTEMPTS: u32 = 5;
const BASE_SECS: u32 = 2;
const CAP_SECS: u32 = 300;

/// How a response is to be treated.
#[derive(Debug, PartialEq, Eq)]
pub enum Class {
    Ok,
    /// 401: the token expired or was revoked; refresh it once.
    Unauthorized,
    /// 403: the app lacks a permission or the tenant a licence.
    Forbidden,
    /// 429, or 503/504 with `Retry-After`: wait as told (when told).
    Throttled(Option<u32>),
    /// 5xx and 408: try again after a backoff.
    Transient,
    /// Any other status: the request itself is wrong; retrying will not help.
    Rejected,
}

pub fn classify(r: &Response) -> Class {
    let after = retry_after(r);
    match r.status {
        200..=299 => Class::Ok,
        401 => Class::Unauthorized,
        403 => Class::Forbidden,
        429 => Class::Throttled(after),
        503 | 504 if after.is_some() => Class::Throttled(after),
        408 | 500..=599 => Class::Transient,
        _ => Class::Rejected,
    }
}

/// `Retry-After` in seconds (Graph sends seconds; an HTTP date is ignored and the
/// backoff applies instead).
pub fn retry_after(r: &Response) -> Option<u32> {
    r.headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("retry-after"))
        .and_then(|(_, v)| v.trim().parse::<u32>().ok())
}

/// Seconds to wait before attempt `attempt + 1` (`attempt` >= 1): 2, 4, 8, ... capped at
/// five minutes, each scaled by a random factor in [0.5, 1] so instances that failed
/// together do not retry together.
pub fn backoff_secs(attempt: u32, random: u64) -> u32 {
    let full = BASE_SECS
        .saturating_mul(1u32 << attempt.clamp(1, 16).saturating_sub(1))
        .min(CAP_SECS);
    let fraction = 0.5 + (random % 1000) as f64 / 2000.0;
    ((full as f64 * fraction).round() as u32).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, headers: &[(&str, &str)]) -> Response {
        Response {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: Vec::new(),
        }
    }

    #[test]
    fn statuses_are_classified() {
        assert_eq!(classify(&resp(200, &[])), Class::Ok);
        assert_eq!(classify(&resp(401, &[])), Class::Unauthorized);
        assert_eq!(classify(&resp(403, &[])), Class::Forbidden);
        assert_eq!(
            classify(&resp(429, &[("Retry-After", "30")])),
            Class::Throttled(Some(30))
        );
        assert_eq!(classify(&resp(429, &[])), Class::Throttled(None));
        assert_eq!(
            classify(&resp(503, &[("retry-after", " 7 ")])),
            Class::Throttled(Some(7))
        );
        assert_eq!(classify(&resp(503, &[])), Class::Transient);
        assert_eq!(
            classify(&resp(
                504,
                &[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]
            )),
            Class::Transient
        );
        assert_eq!(classify(&resp(500, &[])), Class::Transient);
        assert_eq!(classify(&resp(400, &[])), Class::Rejected);
        assert_eq!(classify(&resp(404, &[])), Class::Rejected);
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        for attempt in 1..=20 {
            for random in [0, 499, 999, u64::MAX] {
                let full = (2u32 << (attempt.min(17) - 1)).min(300);
                let b = backoff_secs(attempt, random);
                assert!(
                    b >= full / 2 && b <= full,
                    "attempt {attempt}: {b} not in [{}, {full}]",
                    full / 2
                );
            }
        }
        assert_eq!(backoff_secs(1, 999), 2);
        assert_eq!(backoff_secs(3, 999), 8);
        assert_eq!(backoff_secs(30, 999), 300);
        assert_ne!(backoff_secs(6, 0), backoff_secs(6, 999));
    }
}
