//! `secops:connector@0.1.0`, the first released WIT version (`wit/since_v0.1.0/`): its own
//! bindings, and nothing else but conversions onto the latest ones. Imports delegate to
//! the latest implementations in [`crate::imports`]; exports are converted on the way out
//! (a 0.1 batch reports no degraded types, a 0.1 event is never incomplete, the validation
//! codes map one to one).

use super::latest as new;
use crate::imports::HostState;

wasmtime::component::bindgen!({
    path: "../wit/since_v0.1.0",
    world: "connector-world",
});

use exports::secops::connector::connector as old;
use secops::connector::{emit, http, kv, log, secrets, types};

/// The WIT package these bindings implement.
pub const PACKAGE: &str = "secops:connector@0.1.0";

// ---- imports: the same interfaces as 0.2.0, served by the same code ----

impl http::Host for HostState {
    fn send(&mut self, r: http::Request) -> Result<http::Response, http::HttpError> {
        let request = new::secops::connector::http::Request {
            method: r.method,
            url: r.url,
            headers: r.headers,
            body: r.body,
            timeout_ms: r.timeout_ms,
        };
        use new::secops::connector::http::{Host, HttpError as E};
        match Host::send(self, request) {
            Ok(r) => Ok(http::Response {
                status: r.status,
                headers: r.headers,
                body: r.body,
            }),
            Err(e) => Err(match e {
                E::Timeout => http::HttpError::Timeout,
                E::Connection(m) => http::HttpError::Connection(m),
                E::Denied(m) => http::HttpError::Denied(m),
                E::TooLarge(n) => http::HttpError::TooLarge(n),
                E::InvalidRequest(m) => http::HttpError::InvalidRequest(m),
            }),
        }
    }
}

impl secrets::Host for HostState {
    fn get(&mut self, name: String) -> Option<String> {
        new::secops::connector::secrets::Host::get(self, name)
    }
}

fn kv_error(e: new::secops::connector::kv::KvError) -> kv::KvError {
    use new::secops::connector::kv::KvError as E;
    match e {
        E::Storage(m) => kv::KvError::Storage(m),
        E::TooLarge(n) => kv::KvError::TooLarge(n),
    }
}

impl kv::Host for HostState {
    fn get(&mut self, key: String) -> Result<Option<String>, kv::KvError> {
        new::secops::connector::kv::Host::get(self, key).map_err(kv_error)
    }
    fn set(&mut self, key: String, value: String) -> Result<(), kv::KvError> {
        new::secops::connector::kv::Host::set(self, key, value).map_err(kv_error)
    }
    fn delete(&mut self, key: String) -> Result<(), kv::KvError> {
        new::secops::connector::kv::Host::delete(self, key).map_err(kv_error)
    }
    fn set_now(&mut self, key: String, value: String) -> Result<(), kv::KvError> {
        new::secops::connector::kv::Host::set_now(self, key, value).map_err(kv_error)
    }
}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) {
        use new::secops::connector::log::Level as L;
        let level = match level {
            log::Level::Trace => L::Trace,
            log::Level::Debug => L::Debug,
            log::Level::Info => L::Info,
            log::Level::Warn => L::Warn,
            log::Level::Error => L::Error,
        };
        new::secops::connector::log::Host::log(self, level, message)
    }
}

impl emit::Host for HostState {
    fn events(&mut self, events: Vec<types::Event>) {
        let events = events.into_iter().map(event).collect();
        new::secops::connector::emit::Host::events(self, events)
    }
}

impl types::Host for HostState {}

// ---- exports: converted onto the latest types ----

/// A 0.1 event: the record could always be read whole.
fn event(e: types::Event) -> new::Event {
    new::Event {
        id: e.id,
        version: e.version,
        kind: e.kind,
        timestamp: e.timestamp,
        payload: e.payload,
        incomplete: None,
        ocsf: None,
    }
}

/// A 0.1 component cannot name the secrets it reads: the list stays empty.
pub fn metadata(m: old::Metadata) -> new::Metadata {
    new::Metadata {
        name: m.name,
        version: m.version,
        description: m.description,
        event_kinds: m.event_kinds,
        permissions: m.permissions,
        secrets: Vec::new(),
        config_schema: m.config_schema,
        poll_interval_secs: m.poll_interval_secs,
    }
}

pub fn config_error(e: old::ConfigError) -> new::ConfigError {
    new::ConfigError {
        key: e.key,
        message: e.message,
        remedy: e.remedy,
    }
}

pub fn validation_error(e: old::ValidationError) -> new::ValidationError {
    use new::ValidationCode as C;
    let code = match e.code {
        old::ValidationCode::InvalidConfig => C::InvalidConfig,
        old::ValidationCode::TenantNotFound => C::TenantNotFound,
        old::ValidationCode::ClientNotFound => C::ClientNotFound,
        old::ValidationCode::InvalidSecret => C::InvalidSecret,
        old::ValidationCode::SecretIdNotValue => C::SecretIdNotValue,
        old::ValidationCode::SecretExpired => C::SecretExpired,
        old::ValidationCode::NoAdminConsent => C::NoAdminConsent,
        old::ValidationCode::MissingPermission => C::MissingPermission,
        old::ValidationCode::ApiUnavailable => C::ApiUnavailable,
        old::ValidationCode::Network => C::Network,
    };
    new::ValidationError {
        code,
        message: e.message,
        remedy: e.remedy,
    }
}

/// A 0.1 batch has no degraded list: it reports every type as reading normally.
pub fn batch(b: old::Batch) -> new::Batch {
    new::Batch {
        events: b.events.into_iter().map(event).collect(),
        cursor: b.cursor,
        more: b.more,
        wait_secs: b.wait_secs,
        degraded: Vec::new(),
    }
}

pub fn poll_error(e: old::PollError) -> new::PollError {
    let retry = |r: old::Retry| new::Retry {
        after_secs: r.after_secs,
        message: r.message,
    };
    match e {
        old::PollError::Auth(m) => new::PollError::Auth(m),
        old::PollError::RateLimited(r) => new::PollError::RateLimited(retry(r)),
        old::PollError::Transient(r) => new::PollError::Transient(retry(r)),
        old::PollError::Fatal(m) => new::PollError::Fatal(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_0_1_validation_code_keeps_its_name() {
        use old::ValidationCode as C;
        let codes = [
            (C::InvalidConfig, "invalid-config"),
            (C::TenantNotFound, "tenant-not-found"),
            (C::ClientNotFound, "client-not-found"),
            (C::InvalidSecret, "invalid-secret"),
            (C::SecretIdNotValue, "secret-id-not-value"),
            (C::SecretExpired, "secret-expired"),
            (C::NoAdminConsent, "no-admin-consent"),
            (C::MissingPermission, "missing-permission"),
            (C::ApiUnavailable, "api-unavailable"),
            (C::Network, "network"),
        ];
        for (code, name) in codes {
            let e = validation_error(old::ValidationError {
                code,
                message: "m".into(),
                remedy: "r".into(),
            });
            assert_eq!(
                (e.code.as_str(), e.message.as_str(), e.remedy.as_str()),
                (name, "m", "r")
            );
        }
    }

    #[test]
    fn a_0_1_batch_is_complete_and_reports_nothing_degraded() {
        let b = batch(old::Batch {
            events: vec![types::Event {
                id: "a1".into(),
                version: "v1".into(),
                kind: "defender.alert".into(),
                timestamp: "2026-11-20T12:00:00Z".into(),
                payload: "{}".into(),
            }],
            cursor: "c".into(),
            more: true,
            wait_secs: Some(30),
        });
        assert!(b.degraded.is_empty());
        assert_eq!(
            (b.cursor.as_str(), b.more, b.wait_secs),
            ("c", true, Some(30))
        );
        let e = &b.events[0];
        assert_eq!(
            (
                e.id.as_str(),
                e.version.as_str(),
                e.kind.as_str(),
                e.payload.as_str()
            ),
            ("a1", "v1", "defender.alert", "{}")
        );
        assert_eq!(e.incomplete, None);
        match poll_error(old::PollError::RateLimited(old::Retry {
            after_secs: 7,
            message: "429".into(),
        })) {
            new::PollError::RateLimited(r) => {
                assert_eq!((r.after_secs, r.message.as_str()), (7, "429"))
            }
            other => panic!("{other:?}"),
        }
    }
}
