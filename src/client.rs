//! Graph requests of an instance: the bearer token, the headers every request carries,
//! the call budget of the list's API family, one token refresh on a 401, and what a
//! failed response means.

use crate::auth::{AuthError, Token, describe_http_error, fetch_token};
use crate::budget::{Budget, whole_secs};
use crate::connector::Family;
use crate::graph::error_text;
use crate::platform::Platform;
use crate::retry::{Class, classify};
use crate::runtime::Instance;
use crate::types::{HttpError, Level, Request, Response};

const GRAPH_TIMEOUT_MS: u32 = 60_000;

/// Why a Graph request failed, before it becomes a [`crate::types::PollError`] or a
/// degraded data type.
#[derive(Debug)]
pub(crate) enum Failure {
    Auth(String),
    /// 429 (or 503/504 with `Retry-After`): the seconds Graph asked for, if it did.
    Throttled(Option<u32>, String),
    Transient(String),
    /// Graph refused the request itself (a 4xx other than 401/403/429): its status and
    /// body, for the caller to learn from (a page-size limit) before giving up.
    Rejected {
        status: u16,
        body: Vec<u8>,
    },
    Fatal(String),
    /// The family's call budget is spent: no call for this many milliseconds.
    Budget(i64),
}

impl Failure {
    pub(crate) fn describe(&self) -> String {
        match self {
            Failure::Auth(m) | Failure::Transient(m) | Failure::Fatal(m) => m.clone(),
            Failure::Throttled(Some(after), m) => format!("{m}; Retry-After {after}s"),
            Failure::Throttled(None, m) => m.clone(),
            Failure::Rejected { status, body } => format!(
                "Graph rejected the request (HTTP {status}: {})",
                error_text(body).unwrap_or_else(|| "no Graph error body".into())
            ),
            Failure::Budget(ms) => format!("call budget spent for {} s", whole_secs(*ms)),
        }
    }
}

/// A GET to Graph with the headers every request carries. `Prefer:
/// include-unknown-enum-members` makes Graph send enum values added after v1.0 was frozen
/// (incident status `awaitingAction`) as themselves instead of `unknownFutureValue`.
pub(crate) fn graph_request(url: &str, bearer: String, timeout_ms: u32) -> Request {
    Request {
        method: "GET".into(),
        url: url.into(),
        headers: vec![
            ("authorization".into(), bearer),
            ("accept".into(), "application/json".into()),
            ("prefer".into(), "include-unknown-enum-members".into()),
        ],
        body: Vec::new(),
        timeout_ms,
    }
}

impl Instance {
    /// A valid token: from memory while it is fresh, else from the host's token cache (an
    /// earlier poll's instance stored it there), else a new one, which is stored there.
    pub(crate) fn token(&mut self, p: &dyn Platform) -> Result<&Token, AuthError> {
        let now = p.now();
        if !self.token.as_ref().is_some_and(|t| t.is_fresh(now)) {
            let cached = p
                .token_cached()
                .map(|(value, expires)| Token::from_cache(value, expires))
                .filter(|t| t.is_fresh(now));
            self.token = Some(match cached {
                Some(t) => t,
                None => {
                    let t = fetch_token(p, &self.config)?;
                    t.store(p);
                    t
                }
            });
        }
        Ok(self.token.as_ref().expect("just set"))
    }

    /// Takes one call from `family`'s budget, or says how many milliseconds until one is
    /// free. Token requests go to the login host and do not count.
    pub(crate) fn take_call(&self, p: &dyn Platform, family: &Family) -> Result<(), i64> {
        if family.limits.is_empty() {
            return Ok(());
        }
        let now = p.now().unix_millis();
        let mut budget = Budget::load(p, family);
        match budget.wait_millis(now) {
            0 => {
                budget.spend(p, now);
                Ok(())
            }
            wait => Err(wait),
        }
    }

    /// Takes one call from `family`'s budget, waiting up to `max_ms` for it. For
    /// `validate`, whose probes come back to back (two Identity Protection lists in one
    /// second draw a 429): if the clock did not move while it waited (fixture replay), the
    /// call is made anyway, as after a real wait.
    pub(crate) fn wait_for_call(
        &self,
        p: &dyn Platform,
        family: &Family,
        max_ms: i64,
    ) -> Result<(), i64> {
        match self.take_call(p, family) {
            Err(wait) if wait <= max_ms => {
                p.sleep_millis(wait as u64);
                if self.take_call(p, family).is_err() {
                    Budget::load(p, family).spend(p, p.now().unix_millis());
                }
                Ok(())
            }
            other => other,
        }
    }

    /// GET with the bearer token; a 401 gets one fresh token and one more try.
    pub(crate) fn get(
        &mut self,
        p: &dyn Platform,
        url: &str,
        family: &Family,
    ) -> Result<Response, Failure> {
        for attempt in 0..2 {
            self.take_call(p, family).map_err(Failure::Budget)?;
            let bearer = self
                .token(p)
                .map_err(|e| match e {
                    AuthError::Network(m) => Failure::Transient(m),
                    refused => Failure::Auth(refused.describe()),
                })?
                .bearer();
            let response = p
                .send(&graph_request(url, bearer, GRAPH_TIMEOUT_MS))
                .map_err(|e| match e {
                    HttpError::Timeout | HttpError::Connection(_) => {
                        Failure::Transient(describe_http_error(&e, "Graph"))
                    }
                    _ => Failure::Fatal(describe_http_error(&e, "Graph")),
                })?;
            let said =
                || error_text(&response.body).unwrap_or_else(|| "no Graph error body".into());
            match classify(&response) {
                Class::Ok => return Ok(response),
                Class::Unauthorized if attempt == 0 => {
                    p.log(
                        Level::Info,
                        "Graph answered 401; getting a fresh token and trying once more",
                    );
                    // The cached copy too, or the next try would take it from there.
                    self.token = None;
                    p.token_forget();
                }
                Class::Unauthorized => {
                    return Err(Failure::Auth(format!(
                        "Graph refused a freshly issued token (401 {})",
                        said()
                    )));
                }
                Class::Forbidden => {
                    return Err(Failure::Auth(format!(
                        "Graph denied access (403 {}); run `validate` to see which permission or licence is missing",
                        said()
                    )));
                }
                Class::Throttled(after) => {
                    return Err(Failure::Throttled(
                        after,
                        format!(
                            "Graph throttled the request (HTTP {}: {})",
                            response.status,
                            said()
                        ),
                    ));
                }
                Class::Transient => {
                    return Err(Failure::Transient(format!(
                        "Graph answered HTTP {} ({})",
                        response.status,
                        said()
                    )));
                }
                Class::Rejected => {
                    return Err(Failure::Rejected {
                        status: response.status,
                        body: response.body,
                    });
                }
            }
        }
        unreachable!("the loop returns on its second pass")
    }
}
