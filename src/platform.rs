//! The seam between the library's logic and the host imports. On wasm the imports are
//! real; natively (unit tests) a fake stands in, so every mechanism is tested without a host.

use crate::time::Timestamp;
use crate::types::{HttpError, KvError, Level, Request, Response};

/// What the library needs from the world.
pub trait Platform {
    fn send(&self, request: &Request) -> Result<Response, HttpError>;
    fn secret(&self, name: &str) -> Option<String>;
    fn kv_get(&self, key: &str) -> Result<Option<String>, KvError>;
    /// Staged: durable with the poll's events and cursor.
    fn kv_set(&self, key: &str, value: &str) -> Result<(), KvError>;
    /// Durable at once, whatever becomes of the poll.
    fn kv_set_now(&self, key: &str, value: &str) -> Result<(), KvError>;
    fn log(&self, level: Level, message: &str);
    fn now(&self) -> Timestamp;
    /// A random number, for backoff jitter.
    fn random(&self) -> u64;
    /// Blocks for a short while: `validate`, which has no later poll to wait for, uses it
    /// to keep a call budget between its probes.
    fn sleep_millis(&self, ms: u64);
    /// The access token the host keeps for this instance (its value and expiry), if any:
    /// a component instance lives for one poll, the token for an hour.
    fn token_cached(&self) -> Option<(String, Timestamp)>;
    fn token_store(&self, value: &str, expires_at: Timestamp);
    /// Forgets the stored token (Graph refused it).
    fn token_forget(&self);
}

/// The host imports of the component.
pub struct Wasi;

impl Platform for Wasi {
    fn send(&self, request: &Request) -> Result<Response, HttpError> {
        crate::wit::secops::connector::http::send(request)
    }
    fn secret(&self, name: &str) -> Option<String> {
        crate::wit::secops::connector::secrets::get(name)
    }
    fn kv_get(&self, key: &str) -> Result<Option<String>, KvError> {
        crate::wit::secops::connector::kv::get(key)
    }
    fn kv_set(&self, key: &str, value: &str) -> Result<(), KvError> {
        crate::wit::secops::connector::kv::set(key, value)
    }
    fn kv_set_now(&self, key: &str, value: &str) -> Result<(), KvError> {
        crate::wit::secops::connector::kv::set_now(key, value)
    }
    fn log(&self, level: Level, message: &str) {
        crate::wit::secops::connector::log::log(level, message)
    }
    fn now(&self) -> Timestamp {
        Timestamp::from_system_time(std::time::SystemTime::now())
    }
    fn random(&self) -> u64 {
        // std seeds RandomState from the host's wasi:random; no extra crate needed.
        use std::hash::{BuildHasher, Hasher};
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    }
    fn sleep_millis(&self, ms: u64) {
        // wasi:clocks/monotonic-clock through std; the host sees a blocking poll.
        std::thread::sleep(std::time::Duration::from_millis(ms))
    }
    fn token_cached(&self) -> Option<(String, Timestamp)> {
        crate::wit::secops::connector::token_cache::get()
            .map(|t| (t.value, Timestamp::from_unix_secs(t.expires_at)))
    }
    fn token_store(&self, value: &str, expires_at: Timestamp) {
        crate::wit::secops::connector::token_cache::set(
            &crate::wit::secops::connector::token_cache::CachedToken {
                value: value.into(),
                expires_at: expires_at.unix_secs(),
            },
        )
    }
    fn token_forget(&self) {
        crate::wit::secops::connector::token_cache::clear()
    }
}
