//! `secops:connector/token-cache` (WIT 0.2): the access token of each instance, kept in the
//! host's memory so that a component instance created for one poll and dropped after it
//! does not request a token each poll. Never written to the state file, a log, an event or
//! a fixture; `status` does not show it. 0.1 components keep their token in their own
//! memory: their linker has no such import.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use crate::bindings::secops::connector::token_cache::{CachedToken, Host};
use crate::imports::HostState;
use crate::secrets::Secrets;

/// The tokens of every instance of a process, by instance name. Shared by the runs of an
/// instance (and by all instances of `serve`); each instance sees only its own entry.
#[derive(Clone, Default)]
pub struct TokenCache(Arc<Mutex<HashMap<String, Entry>>>);

struct Entry {
    /// The config and secrets the token was issued for (see [`scope`]).
    scope: u64,
    value: String,
    expires_at: i64,
}

impl TokenCache {
    /// Forgets an instance's token (its file was removed).
    pub fn forget(&self, instance: &str) {
        self.map().remove(instance);
    }

    /// How many instances have a token stored (tests and metrics).
    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a token belongs to besides the instance's name: its config document and its
/// secrets. A token issued before the config named another tenant or app, or before the
/// secret was rotated, is not handed out again. (A hash in memory only, like the token.)
pub fn scope(config: &str, secrets: &Secrets) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    config.hash(&mut h);
    secrets.hash(&mut h);
    h.finish()
}

/// One instance's view of the cache.
pub struct TokenContext {
    pub cache: TokenCache,
    pub scope: u64,
}

impl Host for HostState {
    fn get(&mut self) -> Option<CachedToken> {
        let now = self.clock.now();
        let now = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let mut map = self.tokens.cache.map();
        match map.get(&self.instance) {
            Some(e) if e.scope == self.tokens.scope && now < e.expires_at => Some(CachedToken {
                value: e.value.clone(),
                expires_at: e.expires_at,
            }),
            Some(_) => {
                // Expired, or issued for another config or secret: of no use to anyone.
                map.remove(&self.instance);
                None
            }
            None => None,
        }
    }

    fn set(&mut self, token: CachedToken) {
        // (The http import already registered the token with the redactor when the token
        // response passed through it.)
        self.tokens.cache.map().insert(
            self.instance.clone(),
            Entry {
                scope: self.tokens.scope,
                value: token.value,
                expires_at: token.expires_at,
            },
        );
    }

    fn clear(&mut self) {
        self.tokens.cache.map().remove(&self.instance);
    }
}
