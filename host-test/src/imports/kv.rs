//! `secops:connector/kv`: the instance's KV namespace in the state database. `set` and
//! `delete` are staged and committed with the poll ([`crate::state::StateDb::commit_poll`]);
//! `set-now` writes at once.

use std::sync::{Arc, Mutex};

use crate::bindings::secops::connector::kv::{Host, KvError};
use crate::imports::HostState;
use crate::state::{KvWrites, StateDb};

/// Keys longer than this are refused.
pub const MAX_KEY_BYTES: usize = 1024;
/// Values larger than this are refused (the dedup memory is the largest value).
pub const MAX_VALUE_BYTES: usize = 32 * 1024 * 1024;

pub struct KvContext {
    instance: String,
    state: Arc<Mutex<StateDb>>,
    pub(crate) staged: KvWrites,
}

impl KvContext {
    pub fn new(instance: String, state: Arc<Mutex<StateDb>>) -> Self {
        KvContext {
            instance,
            state,
            staged: KvWrites::new(),
        }
    }

    fn check(key: &str, value: Option<&str>) -> Result<(), KvError> {
        if key.len() > MAX_KEY_BYTES {
            return Err(KvError::TooLarge(MAX_KEY_BYTES as u64));
        }
        if value.is_some_and(|v| v.len() > MAX_VALUE_BYTES) {
            return Err(KvError::TooLarge(MAX_VALUE_BYTES as u64));
        }
        Ok(())
    }

    fn db(&self) -> std::sync::MutexGuard<'_, StateDb> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Host for HostState {
    fn get(&mut self, key: String) -> Result<Option<String>, KvError> {
        if let Some(staged) = self.kv.staged.get(&key) {
            return Ok(staged.clone());
        }
        self.kv
            .db()
            .kv_get(&self.kv.instance, &key)
            .map_err(|e| KvError::Storage(e.to_string()))
    }

    fn set(&mut self, key: String, value: String) -> Result<(), KvError> {
        KvContext::check(&key, Some(&value))?;
        self.kv.staged.insert(key, Some(value));
        Ok(())
    }

    fn delete(&mut self, key: String) -> Result<(), KvError> {
        KvContext::check(&key, None)?;
        self.kv.staged.insert(key, None);
        Ok(())
    }

    fn set_now(&mut self, key: String, value: String) -> Result<(), KvError> {
        KvContext::check(&key, Some(&value))?;
        self.kv
            .db()
            .kv_set_now(&self.kv.instance, &key, &value)
            .map_err(|e| KvError::Storage(e.to_string()))?;
        // A staged write of the same key would otherwise shadow this one.
        self.kv.staged.remove(&key);
        Ok(())
    }
}
