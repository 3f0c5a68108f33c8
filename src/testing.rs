//! A scripted stand-in for the host imports, for native unit tests.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::config::Config;
use crate::platform::Platform;
use crate::time::Timestamp;
use crate::types::{HttpError, KvError, Level, Request, Response};

pub const TENANT: &str = "11111111-2222-3333-4444-555555555555";
pub const CLIENT: &str = "66666666-7777-8888-9999-000000000000";

pub struct FakePlatform {
    responses: RefCell<VecDeque<Result<Response, HttpError>>>,
    requests: RefCell<Vec<Request>>,
    /// Durable KV (what a committed poll or `set-now` left).
    pub kv: RefCell<BTreeMap<String, String>>,
    /// Writes staged by the current poll.
    pub staged: RefCell<BTreeMap<String, String>>,
    secret: Option<String>,
    pub now: Cell<Timestamp>,
    pub logs: RefCell<Vec<(Level, String)>>,
    /// What the host's token cache holds.
    pub token_cache: RefCell<Option<(String, Timestamp)>>,
}

impl FakePlatform {
    pub fn new() -> Self {
        FakePlatform {
            responses: RefCell::default(),
            requests: RefCell::default(),
            kv: RefCell::default(),
            staged: RefCell::default(),
            secret: Some("s3cr3t~value".into()),
            now: Cell::new(Timestamp::parse("2026-11-20T12:00:00Z").unwrap()),
            logs: RefCell::default(),
            token_cache: RefCell::default(),
        }
    }

    pub fn with_secret(mut self, s: &str) -> Self {
        self.secret = Some(s.into());
        self
    }

    pub fn without_secret(mut self) -> Self {
        self.secret = None;
        self
    }

    pub fn respond(&self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        self.responses.borrow_mut().push_back(Ok(Response {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: body.to_vec(),
        }));
    }

    pub fn respond_json(&self, status: u16, body: Value) {
        self.respond(
            status,
            &[("content-type", "application/json")],
            body.to_string().as_bytes(),
        );
    }

    pub fn respond_err(&self, e: HttpError) {
        self.responses.borrow_mut().push_back(Err(e));
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.borrow().clone()
    }

    pub fn urls(&self) -> Vec<String> {
        self.requests
            .borrow()
            .iter()
            .map(|r| r.url.clone())
            .collect()
    }

    /// What the host does when a poll succeeds: staged writes become durable.
    pub fn commit(&self) {
        let staged = std::mem::take(&mut *self.staged.borrow_mut());
        self.kv.borrow_mut().extend(staged);
    }

    /// What the host does when a poll fails.
    pub fn rollback(&self) {
        self.staged.borrow_mut().clear();
    }

    /// What another process sees: the same KV, but an empty token cache (the host keeps
    /// tokens in memory only).
    pub fn restart(&self) {
        *self.token_cache.borrow_mut() = None;
    }

    pub fn unused_responses(&self) -> usize {
        self.responses.borrow().len()
    }
}

impl Platform for FakePlatform {
    fn send(&self, request: &Request) -> Result<Response, HttpError> {
        self.requests.borrow_mut().push(request.clone());
        self.responses.borrow_mut().pop_front().unwrap_or_else(|| {
            Err(HttpError::Denied(format!(
                "no scripted response for {}",
                request.url
            )))
        })
    }
    fn secret(&self, name: &str) -> Option<String> {
        (name == "client-secret")
            .then(|| self.secret.clone())
            .flatten()
    }
    fn kv_get(&self, key: &str) -> Result<Option<String>, KvError> {
        Ok(self
            .staged
            .borrow()
            .get(key)
            .or(self.kv.borrow().get(key))
            .cloned())
    }
    fn kv_set(&self, key: &str, value: &str) -> Result<(), KvError> {
        self.staged.borrow_mut().insert(key.into(), value.into());
        Ok(())
    }
    fn kv_set_now(&self, key: &str, value: &str) -> Result<(), KvError> {
        self.kv.borrow_mut().insert(key.into(), value.into());
        self.staged.borrow_mut().remove(key);
        Ok(())
    }
    fn log(&self, level: Level, message: &str) {
        self.logs.borrow_mut().push((level, message.into()));
    }
    fn now(&self) -> Timestamp {
        self.now.get()
    }
    fn random(&self) -> u64 {
        999
    }
    fn sleep_millis(&self, ms: u64) {
        self.now.set(self.now.get().plus_millis(ms as i64));
    }
    fn token_cached(&self) -> Option<(String, Timestamp)> {
        // As the host: an expired token is not handed out.
        self.token_cache
            .borrow()
            .clone()
            .filter(|(_, expires)| self.now.get() < *expires)
    }
    fn token_store(&self, value: &str, expires_at: Timestamp) {
        *self.token_cache.borrow_mut() = Some((value.into(), expires_at));
    }
    fn token_forget(&self) {
        *self.token_cache.borrow_mut() = None;
    }
}

pub fn config() -> Config {
    crate::config::parse(&format!(
        r#"{{"tenant_id":"{TENANT}","client_id":"{CLIENT}"}}"#
    ))
    .unwrap()
    .0
}

/// An unsigned JWT with the given `roles` (none: no `roles` claim at all).
pub fn jwt(roles: &[&str]) -> String {
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let claims = if roles.is_empty() {
        json!({"tid": TENANT})
    } else {
        json!({"tid": TENANT, "roles": roles})
    };
    format!(
        "{}.{}.fake-signature",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(claims)
    )
}

pub fn token_ok(roles: &[&str]) -> Value {
    json!({"token_type": "Bearer", "expires_in": 3599, "access_token": jwt(roles)})
}

pub fn token_error(aadsts: u64) -> Value {
    // The OAuth `error` each code comes with (GRAPH-REALITY.md, "Errors a user must be
    // told apart"); AADSTS53003's client-credentials form is unknown.
    let error = match aadsts {
        7000215 | 7000222 | 7000229 => "invalid_client",
        700016 | 7000112 => "unauthorized_client",
        53003 => "access_denied",
        _ => "invalid_request",
    };
    json!({
        "error": error,
        "error_description": format!("AADSTS{aadsts}: synthetic description.\r\nTrace ID: 0000\r\nCorrelation ID: 0000"),
        "error_codes": [aadsts]
    })
}

/// The data types of `all` that the config's `types` list names (`default` without one);
/// with `"expand": true`, the incidents list asks for `$expand=alerts`.
pub fn queries(
    options: &mut crate::config::Options,
    all: &'static [crate::connector::DataType],
    default: &[&str],
) -> Result<Vec<crate::connector::Query>, crate::types::ConfigError> {
    let types = options
        .string_list("types")?
        .unwrap_or_else(|| default.iter().map(|t| t.to_string()).collect());
    let expand = options.bool("expand")?.unwrap_or(false).then_some("alerts");
    Ok(all
        .iter()
        .filter(|t| types.iter().any(|n| n == t.name))
        .map(|t| crate::connector::Query {
            expand: expand.filter(|_| t.path.ends_with("/incidents")),
            ..crate::connector::Query::plain(t)
        })
        .collect())
}

/// A connector for tests: `$name` (the type) reads the data types `$types` as
/// [`queries`] selects them.
macro_rules! test_connector {
    ($name:ident, $connector:literal, $types:expr, default $default:expr) => {
        struct $name;

        impl $crate::connector::Connector for $name {
            const NAME: &'static str = $connector;
            const VERSION: &'static str = "0.0.1";
            const DESCRIPTION: &'static str = "test connector";
            const POLL_INTERVAL_SECS: u32 = 60;
            const DATA_TYPES: &'static [$crate::connector::DataType] = $types;

            fn config_properties() -> serde_json::Value {
                serde_json::json!({"types": {"type": "array"}, "expand": {"type": "boolean"}})
            }

            fn queries(
                options: &mut $crate::config::Options,
            ) -> Result<Vec<$crate::connector::Query>, $crate::types::ConfigError> {
                $crate::testing::queries(options, Self::DATA_TYPES, $default)
            }
        }
    };
}
pub(crate) use test_connector;

/// Polls like the host: commit on success, roll back on failure.
pub fn poll(
    i: &mut crate::runtime::Instance,
    p: &FakePlatform,
    cursor: Option<&str>,
) -> Result<crate::types::Batch, crate::types::PollError> {
    let r = i.poll(p, cursor);
    if r.is_ok() {
        p.commit()
    } else {
        p.rollback()
    }
    r
}
