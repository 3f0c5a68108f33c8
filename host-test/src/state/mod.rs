//! The host's durable state: each instance's cursor, KV namespace, outbox of event lines
//! not yet delivered and health, in one of two stores: a SQLite file (one machine, the
//! default: [`sqlite`]) or a PostgreSQL database shared by a fleet of hosts ([`postgres`]),
//! chosen by the `--state` value (`postgres://…` or `postgresql://…` is PostgreSQL,
//! anything else a file path).
//!
//! Both keep the same meaning: a poll's event lines, cursor, KV writes and health commit
//! in one transaction ([`StateDb::commit_poll`]); delivery moves lines from the outbox to
//! the sink and records the last delivered `seq` ([`StateDb::undelivered`],
//! [`StateDb::mark_delivered`]); the schema is migrated on open, versioned, idempotent.
//! PostgreSQL adds instance leases with fencing tokens (see [`postgres`]).
//!
//! Why an enum and not a trait object: the set of backends is closed (two), the callers
//! hold one `StateDb` behind a mutex and never choose a backend themselves, and
//! [`StateDb::commit_poll`] takes a generic closure, which a `dyn` trait cannot. A `match`
//! per method keeps each backend's SQL in its own module and the dispatch in one place.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod postgres;
pub mod sqlite;

use sqlite::BUSY_TIMEOUT_SECS;
pub(crate) use sqlite::write_transaction;

pub use postgres::PgDb;
pub use sqlite::SqliteDb;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "the directory of the state file {path} does not exist; create it (mkdir -p) or \
         name a state file in an existing directory"
    )]
    NoDirectory { path: PathBuf },
    #[error("the state file {path} is a directory; name a file in it, e.g. {path}/state.db")]
    IsDirectory { path: PathBuf },
    #[error(
        "{path} is not a SQLite database (it begins with {start:?}); --state takes the \
         connector's state database (created if missing), not a config or other file: check \
         the path. The file was left as it is"
    )]
    NotSqlite { path: PathBuf, start: String },
    #[error(
        "{path} is a SQLite database of something else (it holds tables {tables}, not a \
         connector state); name a new file for the state. The file was left as it is"
    )]
    Foreign { path: PathBuf, tables: String },
    #[error(
        "the state file {path} cannot be written ({cause}); run and serve commit every poll \
         to it: make the file and its directory writable for this user, or name another file"
    )]
    ReadOnly { path: PathBuf, cause: String },
    #[error(
        "instance {instance:?} in {path} is held by process {pid} on host {host} since \
         {since}; one process at a time runs an instance: stop that process, or give this \
         one another instance name or state file"
    )]
    Held {
        path: PathBuf,
        instance: String,
        pid: u32,
        host: String,
        since: String,
    },
    #[error(
        "the state file {path} is not a usable SQLite database ({cause}); \
         restore it from a backup, or delete it to start the instance over (a full backfill)"
    )]
    Corrupt { path: PathBuf, cause: String },
    #[error(
        "the state file {path} stayed locked by another process for {BUSY_TIMEOUT_SECS} s; \
         try again, and check that no stuck process holds it"
    )]
    Busy { path: PathBuf },
    #[error(
        "the state store {path} was written by a newer connector-host (schema {found}, this host knows {known}); use that version"
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error(
        "instance {instance:?} in {path} was created by {owner}; the component is \
         {connector}: use the {owner} component for it, or give this instance another \
         name (--instance) or another state file"
    )]
    WrongConnector {
        path: PathBuf,
        instance: String,
        owner: String,
        connector: String,
    },
    #[error("PostgreSQL state store {url}: {cause}; {fix}")]
    Postgres {
        /// The URL without its password.
        url: String,
        cause: String,
        /// What the operator can do about it.
        fix: &'static str,
    },
    #[error(
        "{url} holds no connector state (it has a table {table:?} of something else); name \
         another database or schema for the state. Nothing was written to it"
    )]
    ForeignPostgres { url: String, table: String },
    #[error(
        "instance {instance:?} in {url} is leased by {owner} until {until}; one host of a \
         fleet runs an instance at a time: this host takes it over when that lease ends \
         (released, or not renewed for the lease TTL)"
    )]
    Leased {
        url: String,
        instance: String,
        /// The holder's fleet id, `host:pid:nonce`.
        owner: String,
        until: String,
    },
    #[error(
        "this host holds its fair share of {url}'s instances ({held} of {configured} with \
         {hosts} live host(s)); it takes {instance:?} only if a host leaves or the share grows"
    )]
    FairShare {
        url: String,
        instance: String,
        held: u64,
        configured: u64,
        hosts: u64,
    },
    #[error(
        "this host no longer holds the lease of instance {instance:?} in {url} (it expired \
         while the process was stopped or cut off, or another host took it over); nothing \
         of it was committed or delivered, and the host stops running it"
    )]
    Fenced { url: String, instance: String },
    #[error("state store ({path}): {cause}")]
    Sql {
        path: PathBuf,
        cause: rusqlite::Error,
    },
}

/// What one poll adds to an instance's health record.
pub struct PollHealth<'a> {
    /// RFC 3339, the host's clock.
    pub at: &'a str,
    pub ok: bool,
    pub events: u64,
    pub requests: u64,
    /// Responses that were 429.
    pub throttled: u64,
    pub error: Option<&'a str>,
    /// A short code for the failure (`throttled`, `transient`, `auth`, `fatal`, `trap`,
    /// `config`, `host`, `instance-file`): a metric label, where the message cannot be.
    pub code: Option<&'a str>,
    /// The newest event time of the poll, RFC 3339 with milliseconds (comparable as text).
    pub newest_event: Option<&'a str>,
    /// The data types a committed poll reported as not reading normally: they replace the
    /// stored list (empty clears it). `None` (a failed poll) keeps the previous list.
    pub degraded: Option<&'a [Degraded]>,
}

/// A data type the connector reported as not reading normally (the WIT `degraded-type`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Degraded {
    pub data_type: String,
    /// `throttled`, `transient`, `failing` or `fallback`.
    pub code: String,
    pub message: String,
}

/// An instance's health, as `connector-host status` shows it.
#[derive(Debug)]
pub struct HealthRow {
    pub instance: String,
    pub connector: String,
    pub last_poll: Option<String>,
    pub last_success: Option<String>,
    pub newest_event: Option<String>,
    pub events: u64,
    pub requests: u64,
    pub throttled: u64,
    pub waited_secs: u64,
    pub failures: u64,
    pub last_error: Option<String>,
    pub last_error_code: Option<String>,
    /// As the last committed poll reported them; empty when every type reads normally.
    pub degraded: Vec<Degraded>,
}

/// A staged KV write: `Some(value)` sets, `None` deletes.
pub type KvWrites = BTreeMap<String, Option<String>>;

/// The state store of a process: the SQLite file or the PostgreSQL database.
pub enum StateDb {
    Sqlite(SqliteDb),
    Postgres(Box<PgDb>),
}

/// Whether a `--state` value names a PostgreSQL database rather than a file.
pub fn is_postgres_url(state: &Path) -> bool {
    state
        .to_str()
        .is_some_and(|s| s.starts_with("postgres://") || s.starts_with("postgresql://"))
}

impl StateDb {
    /// Opens (creating and migrating as needed) the store `--state` names.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        if is_postgres_url(path) {
            return Ok(StateDb::Postgres(Box::new(PgDb::open(url_of(path), true)?)));
        }
        SqliteDb::open(path).map(StateDb::Sqlite)
    }

    /// Opens an existing store for reading only (`status`): nothing is written to it.
    pub fn open_for_reading(path: &Path) -> Result<Self, StateError> {
        if is_postgres_url(path) {
            return Ok(StateDb::Postgres(Box::new(PgDb::open(
                url_of(path),
                false,
            )?)));
        }
        SqliteDb::open_for_reading(path).map(StateDb::Sqlite)
    }

    /// The file's path, or the PostgreSQL URL without its password: what messages name.
    pub fn path(&self) -> &Path {
        match self {
            StateDb::Sqlite(db) => db.path(),
            StateDb::Postgres(db) => db.path(),
        }
    }

    pub fn check_owner(&mut self, instance: &str, connector: &str) -> Result<(), StateError> {
        match self {
            StateDb::Sqlite(db) => db.check_owner(instance, connector),
            StateDb::Postgres(db) => db.check_owner(instance, connector),
        }
    }

    pub fn ensure_instance(&mut self, instance: &str, connector: &str) -> Result<(), StateError> {
        match self {
            StateDb::Sqlite(db) => db.ensure_instance(instance, connector),
            StateDb::Postgres(db) => db.ensure_instance(instance, connector),
        }
    }

    pub fn cursor(&mut self, instance: &str) -> Result<Option<String>, StateError> {
        match self {
            StateDb::Sqlite(db) => db.cursor(instance),
            StateDb::Postgres(db) => db.cursor(instance),
        }
    }

    pub fn kv_get(&mut self, instance: &str, key: &str) -> Result<Option<String>, StateError> {
        match self {
            StateDb::Sqlite(db) => db.kv_get(instance, key),
            StateDb::Postgres(db) => db.kv_get(instance, key),
        }
    }

    /// A write outside any poll transaction (the `set-now` of the KV import).
    pub fn kv_set_now(&mut self, instance: &str, key: &str, value: &str) -> Result<(), StateError> {
        match self {
            StateDb::Sqlite(db) => db.kv_set_now(instance, key, value),
            StateDb::Postgres(db) => db.kv_set_now(instance, key, value),
        }
    }

    /// Commits one successful poll: its event lines (numbered after the instance's last
    /// `seq` by `line(seq, index)`), its cursor, its KV writes and its health record, all or
    /// nothing. Returns the seq range given to the lines. On PostgreSQL the instance's
    /// lease is checked inside the same transaction.
    pub fn commit_poll(
        &mut self,
        instance: &str,
        count: usize,
        line: impl FnMut(u64, usize) -> String,
        cursor: &str,
        kv: &KvWrites,
        health: &PollHealth,
    ) -> Result<std::ops::RangeInclusive<u64>, StateError> {
        match self {
            StateDb::Sqlite(db) => db.commit_poll(instance, count, line, cursor, kv, health),
            StateDb::Postgres(db) => db.commit_poll(instance, count, line, cursor, kv, health),
        }
    }

    /// The last seq committed and the last delivered.
    pub fn seqs(&mut self, instance: &str) -> Result<(u64, u64), StateError> {
        match self {
            StateDb::Sqlite(db) => db.seqs(instance),
            StateDb::Postgres(db) => db.seqs(instance),
        }
    }

    /// Lines committed but not yet delivered, oldest first.
    pub fn undelivered(&mut self, instance: &str) -> Result<Vec<(u64, String)>, StateError> {
        match self {
            StateDb::Sqlite(db) => db.undelivered(instance),
            StateDb::Postgres(db) => db.undelivered(instance),
        }
    }

    /// Adds a poll that committed nothing (a failed one) to the instance's health record.
    pub fn record_poll(&mut self, instance: &str, h: &PollHealth) -> Result<(), StateError> {
        match self {
            StateDb::Sqlite(db) => db.record_poll(instance, h),
            StateDb::Postgres(db) => db.record_poll(instance, h),
        }
    }

    /// Adds time spent waiting (Retry-After, backoff, a spent budget) to the health record.
    pub fn add_wait(&mut self, instance: &str, secs: u64) -> Result<(), StateError> {
        match self {
            StateDb::Sqlite(db) => db.add_wait(instance, secs),
            StateDb::Postgres(db) => db.add_wait(instance, secs),
        }
    }

    /// Every instance with its health, by name.
    pub fn health(&mut self) -> Result<Vec<HealthRow>, StateError> {
        match self {
            StateDb::Sqlite(db) => db.health(),
            StateDb::Postgres(db) => db.health(),
        }
    }

    /// Records that every line up to `seq` reached the sink, and drops them from the outbox.
    pub fn mark_delivered(&mut self, instance: &str, seq: u64) -> Result<(), StateError> {
        match self {
            StateDb::Sqlite(db) => db.mark_delivered(instance, seq),
            StateDb::Postgres(db) => db.mark_delivered(instance, seq),
        }
    }

    /// The seq range of the webhook batch last cut for `instance` (see
    /// [`crate::sink::webhook`]): a re-send after a crash repeats it under the same key.
    pub fn sink_batch(&mut self, instance: &str) -> Result<Option<(u64, u64)>, StateError> {
        match self {
            StateDb::Sqlite(db) => db.sink_batch(instance),
            StateDb::Postgres(db) => db.sink_batch(instance),
        }
    }

    /// Records the batch about to be sent, before it is sent.
    pub fn set_sink_batch(
        &mut self,
        instance: &str,
        first: u64,
        last: u64,
    ) -> Result<(), StateError> {
        match self {
            StateDb::Sqlite(db) => db.set_sink_batch(instance, first, last),
            StateDb::Postgres(db) => db.set_sink_batch(instance, first, last),
        }
    }

    /// Counts one failed delivery of `instance` (`connector_sink_errors_total`).
    pub fn add_sink_error(&mut self, instance: &str) -> Result<(), StateError> {
        match self {
            StateDb::Sqlite(db) => db.add_sink_error(instance),
            StateDb::Postgres(db) => db.add_sink_error(instance),
        }
    }

    /// Failed deliveries per instance (instances without any are absent).
    pub fn sink_errors(&mut self) -> Result<BTreeMap<String, u64>, StateError> {
        match self {
            StateDb::Sqlite(db) => db.sink_errors(),
            StateDb::Postgres(db) => db.sink_errors(),
        }
    }

    /// Before lines go to the sink: whether this process may still deliver `instance`'s
    /// lines (on PostgreSQL, that it holds the instance's lease; SQLite's holder is checked
    /// when the instance starts).
    pub fn check_lease(&mut self, instance: &str) -> Result<(), StateError> {
        match self {
            StateDb::Sqlite(_) => Ok(()),
            StateDb::Postgres(db) => db.check_lease(instance),
        }
    }

    /// The PostgreSQL store, when this is one (the fleet's leases live there).
    pub fn postgres(&mut self) -> Option<&mut PgDb> {
        match self {
            StateDb::Postgres(db) => Some(db),
            StateDb::Sqlite(_) => None,
        }
    }

    /// Sets the lease TTL of a fleet (no-op on SQLite).
    pub fn set_lease_ttl(&mut self, ttl: Duration) {
        if let Some(db) = self.postgres() {
            db.set_lease_ttl(ttl);
        }
    }
}

fn url_of(path: &Path) -> &str {
    path.to_str().expect("is_postgres_url checked it is UTF-8")
}

/// The stored degraded list; a value this host cannot read shows as none rather than
/// failing `status`.
pub(crate) fn degraded_of(json: Option<&str>) -> Vec<Degraded> {
    json.and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
