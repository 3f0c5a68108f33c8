//! The PostgreSQL backend of the state store, shared by a fleet of `serve` hosts.
//!
//! Same tables and meaning as the SQLite file, plus two: `leases`, one row per instance
//! (the host that runs it, until when, and a fencing token raised at every take), and
//! `hosts`, each live host's heartbeat (to share the instances fairly). A host commits,
//! delivers and records health for an instance only while it holds the instance's lease
//! with the token it took: every such write locks the lease row and checks owner, token
//! and expiry in its own transaction, so a host that was stopped past its lease (SIGSTOP,
//! a stall, a partition) and wakes up writes nothing.
//!
//! One connection per process, behind the state's mutex like the SQLite connection: a
//! poll's writes are a few milliseconds against minutes of waiting on Graph, so the poll workers
//! share it without queueing in practice, and a fleet of N hosts costs the database N
//! connections, not N × workers. A lost connection is dropped and made again on the next
//! use, no sooner than a backoff (0.25 s doubling to 30 s) after the last failed attempt.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use postgres::{Client, NoTls, Transaction};

use super::{HealthRow, KvWrites, PollHealth, StateError, degraded_of};

/// The schema this host writes; each step of [`MIGRATIONS`] raises it by one.
pub(super) const SCHEMA_VERSION: i64 = 2;

/// The schema steps, in order; step `n` takes the schema from `n` to `n + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the SQLite file's tables of schema 4 (with health.degraded), and the fleet's.
    "CREATE TABLE instances (
         name TEXT PRIMARY KEY,
         connector TEXT NOT NULL,
         cursor TEXT,
         last_seq BIGINT NOT NULL DEFAULT 0,
         delivered_seq BIGINT NOT NULL DEFAULT 0,
         created TIMESTAMPTZ NOT NULL DEFAULT now()
     );
     CREATE TABLE kv (
         instance TEXT NOT NULL,
         key TEXT NOT NULL,
         value TEXT NOT NULL,
         PRIMARY KEY (instance, key)
     );
     CREATE TABLE outbox (
         instance TEXT NOT NULL,
         seq BIGINT NOT NULL,
         line TEXT NOT NULL,
         PRIMARY KEY (instance, seq)
     );
     CREATE TABLE health (
         instance TEXT PRIMARY KEY,
         last_poll TEXT,
         last_success TEXT,
         newest_event TEXT,
         events BIGINT NOT NULL DEFAULT 0,
         requests BIGINT NOT NULL DEFAULT 0,
         throttled BIGINT NOT NULL DEFAULT 0,
         waited_secs BIGINT NOT NULL DEFAULT 0,
         failures BIGINT NOT NULL DEFAULT 0,
         last_error TEXT,
         last_error_code TEXT,
         degraded TEXT
     );
     CREATE TABLE origins (
         instance TEXT PRIMARY KEY,
         source TEXT,
         removed TEXT
     );
     CREATE TABLE leases (
         instance TEXT PRIMARY KEY,
         owner TEXT,
         host TEXT,
         pid BIGINT,
         process TEXT,
         since TEXT,
         expires TIMESTAMPTZ,
         token BIGINT NOT NULL DEFAULT 0,
         next_poll TEXT
     );
     CREATE TABLE hosts (
         id TEXT PRIMARY KEY,
         heartbeat TIMESTAMPTZ NOT NULL
     );",
    // 2: what network sinks keep between runs (the SQLite file's schema 5).
    "CREATE TABLE sink_progress (
         instance TEXT PRIMARY KEY,
         batch_first BIGINT,
         batch_last BIGINT,
         errors BIGINT NOT NULL DEFAULT 0
     );",
];

/// Advisory lock keys: one serializes migrations, one the takes of leases (so that the
/// fair-share count a take reads is not changed under it by another host's take).
const MIGRATION_LOCK: i64 = 0x0063_6f6e_6e6d_6967;
const LEASE_LOCK: i64 = 0x0063_6f6e_6e6c_6561;

/// The lease TTL when none is set (`serve --lease-ttl`).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

const FIX_CONNECT: &str = "check that the server runs and accepts connections from this \
     host, and the URL's host, port, user, password and database; the host tries again \
     on the next use";

/// A lease this process holds: the token it took it with.
type Token = i64;

pub struct PgDb {
    config: postgres::Config,
    /// The URL without its password, for every message.
    shown: PathBuf,
    client: Option<Client>,
    /// No connection attempt before this instant (after a failed one), and the wait after
    /// the next failure.
    retry_at: Option<Instant>,
    backoff: Duration,
    last_connect_error: String,
    /// This process in the `leases` and `hosts` tables.
    host_id: String,
    lease_ttl: Duration,
    /// The instances this process runs, by the instance: their configured count caps the
    /// leases it takes (see [`PgDb::take_lease`]); `None` (`run`): no cap.
    fleet_size: Option<u64>,
    held: HashMap<String, Token>,
}

/// A failure inside a transaction: the database's, or the host's verdict (fenced, held).
enum Fail {
    Pg(postgres::Error),
    State(StateError),
}

impl From<postgres::Error> for Fail {
    fn from(e: postgres::Error) -> Self {
        Fail::Pg(e)
    }
}

impl From<StateError> for Fail {
    fn from(e: StateError) -> Self {
        Fail::State(e)
    }
}

/// `url` with its password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        // Unparsable: show the scheme only, the rest may hold a password.
        Err(_) => format!("{}://…", url.split("://").next().unwrap_or("postgres")),
    }
}

impl PgDb {
    /// Connects to `url` and, with `write`, migrates the schema. The first connection must
    /// succeed: a wrong URL is a usage error at start, not a retry loop.
    pub fn open(url: &str, write: bool) -> Result<Self, StateError> {
        let shown = redact_url(url);
        let mut config: postgres::Config =
            url.parse()
                .map_err(|e: postgres::Error| StateError::Postgres {
                    url: shown.clone(),
                    cause: format!("not a PostgreSQL URL ({e})"),
                    fix: "write it as postgres://user:password@host:port/database",
                })?;
        config.connect_timeout(CONNECT_TIMEOUT);
        config.application_name("connector-host");
        let mut db = PgDb {
            config,
            shown: PathBuf::from(&shown),
            client: None,
            retry_at: None,
            backoff: FIRST_BACKOFF,
            last_connect_error: String::new(),
            host_id: format!(
                "{}:{}:{:x}",
                crate::holder::host_name(),
                std::process::id(),
                std::collections::hash_map::RandomState::new().hash_one(0u8) & 0xffff_ffff
            ),
            lease_ttl: DEFAULT_LEASE_TTL,
            fleet_size: None,
            held: HashMap::new(),
        };
        db.apply_session_settings();
        db.client()?;
        if write {
            db.migrate()?;
        } else {
            db.check_version()?;
        }
        Ok(db)
    }

    /// A transaction left open by a stopped process would hold its lease row locked:
    /// the server ends such a session after the lease TTL, so the fleet goes on.
    fn apply_session_settings(&mut self) {
        let ms = self.lease_ttl.as_millis().max(1000);
        self.config.options(&format!(
            "-c idle_in_transaction_session_timeout={ms} -c lock_timeout={ms}"
        ));
    }

    pub fn path(&self) -> &Path {
        &self.shown
    }

    fn url(&self) -> String {
        self.shown.display().to_string()
    }

    /// This process's id in the fleet (`host:pid:nonce`).
    pub fn host_id(&self) -> &str {
        &self.host_id
    }

    pub fn set_lease_ttl(&mut self, ttl: Duration) {
        self.lease_ttl = ttl.max(Duration::from_secs(1));
        self.apply_session_settings();
        // Takes effect with the next connection.
        self.client = None;
    }

    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }

    /// How many instances this host is configured with (the fleet reads one directory).
    pub fn set_fleet_size(&mut self, instances: usize) {
        self.fleet_size = Some(instances as u64);
    }

    fn client(&mut self) -> Result<&mut Client, StateError> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
        }
        if self.client.is_none() {
            if let Some(at) = self.retry_at
                && Instant::now() < at
            {
                return Err(StateError::Postgres {
                    url: self.url(),
                    cause: format!(
                        "cannot connect ({}); next attempt in {} ms",
                        self.last_connect_error,
                        (at - Instant::now()).as_millis()
                    ),
                    fix: FIX_CONNECT,
                });
            }
            match self.config.connect(NoTls) {
                Ok(c) => {
                    self.client = Some(c);
                    self.retry_at = None;
                    self.backoff = FIRST_BACKOFF;
                }
                Err(e) => {
                    self.last_connect_error = describe(&e);
                    self.retry_at = Some(Instant::now() + self.backoff);
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    return Err(StateError::Postgres {
                        url: self.url(),
                        cause: format!("cannot connect ({})", self.last_connect_error),
                        fix: FIX_CONNECT,
                    });
                }
            }
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    /// Runs `f` in one transaction, committed if it returns `Ok`. A connection that broke
    /// is dropped, to be made again on the next use.
    fn tx<T>(
        &mut self,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T, Fail>,
    ) -> Result<T, StateError> {
        let url = self.url();
        let client = self.client()?;
        let result = (|| {
            let mut tx = client.transaction()?;
            let value = f(&mut tx)?;
            tx.commit()?;
            Ok(value)
        })();
        match result {
            Ok(v) => Ok(v),
            Err(Fail::State(e)) => Err(e),
            Err(Fail::Pg(e)) => {
                if is_connection_loss(&e) {
                    self.client = None;
                }
                Err(pg_error(&url, &e))
            }
        }
    }

    fn check_version(&mut self) -> Result<(), StateError> {
        let url = self.url();
        let found: Option<i64> = self.tx(|tx| {
            let exists: bool = tx
                .query_one("SELECT to_regclass('connector_schema') IS NOT NULL", &[])?
                .get(0);
            if !exists {
                return Ok(None);
            }
            Ok(tx
                .query_one("SELECT max(version)::BIGINT FROM connector_schema", &[])?
                .get(0))
        })?;
        match found {
            Some(v) if v > SCHEMA_VERSION => Err(StateError::NewerSchema {
                path: url.into(),
                found: v,
                known: SCHEMA_VERSION,
            }),
            _ => Ok(()),
        }
    }

    /// Brings the schema to [`SCHEMA_VERSION`], one step per transaction-held lock so two
    /// hosts starting together migrate once. A database with an `instances` table but no
    /// schema record belongs to something else and is left alone.
    fn migrate(&mut self) -> Result<(), StateError> {
        let url = self.url();
        self.tx(|tx| {
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
            let ours: bool = tx
                .query_one("SELECT to_regclass('connector_schema') IS NOT NULL", &[])?
                .get(0);
            if !ours {
                for table in ["instances", "outbox", "leases"] {
                    let taken: bool = tx
                        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])?
                        .get(0);
                    if taken {
                        return Err(StateError::ForeignPostgres {
                            url: url.clone(),
                            table: table.into(),
                        }
                        .into());
                    }
                }
                tx.batch_execute("CREATE TABLE connector_schema (version BIGINT NOT NULL)")?;
            }
            let version: i64 = tx
                .query_one(
                    "SELECT COALESCE(max(version), 0)::BIGINT FROM connector_schema",
                    &[],
                )?
                .get(0);
            if version > SCHEMA_VERSION {
                return Err(StateError::NewerSchema {
                    path: url.clone().into(),
                    found: version,
                    known: SCHEMA_VERSION,
                }
                .into());
            }
            for (step, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
                tx.batch_execute(sql)?;
                tx.execute(
                    "INSERT INTO connector_schema (version) VALUES ($1)",
                    &[&(step as i64 + 1)],
                )?;
            }
            Ok(())
        })
    }

    pub fn ensure_instance(&mut self, instance: &str, connector: &str) -> Result<(), StateError> {
        let url = self.url();
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO instances (name, connector) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&instance, &connector],
            )?;
            let owner: String = tx
                .query_one(
                    "SELECT connector FROM instances WHERE name = $1",
                    &[&instance],
                )?
                .get(0);
            if owner != connector {
                return Err(StateError::WrongConnector {
                    path: url.into(),
                    instance: instance.into(),
                    owner,
                    connector: connector.into(),
                }
                .into());
            }
            Ok(())
        })
    }

    /// Refuses a name created by another connector, before anything is written.
    pub fn check_owner(&mut self, instance: &str, connector: &str) -> Result<(), StateError> {
        let url = self.url();
        self.tx(|tx| {
            let owner: Option<String> = tx
                .query_opt(
                    "SELECT connector FROM instances WHERE name = $1",
                    &[&instance],
                )?
                .map(|r| r.get(0));
            match owner {
                Some(owner) if owner != connector => Err(StateError::WrongConnector {
                    path: url.into(),
                    instance: instance.into(),
                    owner,
                    connector: connector.into(),
                }
                .into()),
                _ => Ok(()),
            }
        })
    }

    pub fn cursor(&mut self, instance: &str) -> Result<Option<String>, StateError> {
        self.tx(|tx| {
            Ok(tx
                .query_opt("SELECT cursor FROM instances WHERE name = $1", &[&instance])?
                .and_then(|r| r.get(0)))
        })
    }

    pub fn kv_get(&mut self, instance: &str, key: &str) -> Result<Option<String>, StateError> {
        self.tx(|tx| {
            Ok(tx
                .query_opt(
                    "SELECT value FROM kv WHERE instance = $1 AND key = $2",
                    &[&instance, &key],
                )?
                .map(|r| r.get(0)))
        })
    }

    pub fn kv_set_now(&mut self, instance: &str, key: &str, value: &str) -> Result<(), StateError> {
        let fence = self.fence_of(instance);
        self.tx(|tx| {
            fence.check(tx)?;
            tx.execute(
                "INSERT INTO kv (instance, key, value) VALUES ($1, $2, $3)
                 ON CONFLICT (instance, key) DO UPDATE SET value = excluded.value",
                &[&instance, &key, &value],
            )?;
            Ok(())
        })
    }

    pub fn commit_poll(
        &mut self,
        instance: &str,
        count: usize,
        mut line: impl FnMut(u64, usize) -> String,
        cursor: &str,
        kv: &KvWrites,
        health: &PollHealth,
    ) -> Result<std::ops::RangeInclusive<u64>, StateError> {
        let fence = self.fence_of(instance);
        self.tx(|tx| {
            fence.check(tx)?;
            let last: i64 = tx
                .query_one(
                    "SELECT last_seq FROM instances WHERE name = $1 FOR UPDATE",
                    &[&instance],
                )?
                .get(0);
            let last = last as u64;
            if count > 0 {
                let insert =
                    tx.prepare("INSERT INTO outbox (instance, seq, line) VALUES ($1, $2, $3)")?;
                for i in 0..count {
                    let seq = last + 1 + i as u64;
                    tx.execute(&insert, &[&instance, &(seq as i64), &line(seq, i)])?;
                }
            }
            for (key, value) in kv {
                match value {
                    Some(v) => tx.execute(
                        "INSERT INTO kv (instance, key, value) VALUES ($1, $2, $3)
                         ON CONFLICT (instance, key) DO UPDATE SET value = excluded.value",
                        &[&instance, key, v],
                    )?,
                    None => tx.execute(
                        "DELETE FROM kv WHERE instance = $1 AND key = $2",
                        &[&instance, key],
                    )?,
                };
            }
            tx.execute(
                "UPDATE instances SET cursor = $2, last_seq = $3 WHERE name = $1",
                &[&instance, &cursor, &((last + count as u64) as i64)],
            )?;
            upsert_health(tx, instance, health)?;
            Ok(last + 1..=last + count as u64)
        })
    }

    pub fn seqs(&mut self, instance: &str) -> Result<(u64, u64), StateError> {
        let url = self.url();
        self.tx(|tx| {
            let row = tx
                .query_opt(
                    "SELECT last_seq, delivered_seq FROM instances WHERE name = $1",
                    &[&instance],
                )?
                .ok_or_else(|| StateError::Postgres {
                    url,
                    cause: format!("instance {instance:?} has no state"),
                    fix: "it was forgotten while running; restart the instance",
                })?;
            Ok((row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64))
        })
    }

    pub fn undelivered(&mut self, instance: &str) -> Result<Vec<(u64, String)>, StateError> {
        self.tx(|tx| {
            Ok(tx
                .query(
                    "SELECT o.seq, o.line FROM outbox o JOIN instances i ON i.name = o.instance
                     WHERE o.instance = $1 AND o.seq > i.delivered_seq ORDER BY o.seq",
                    &[&instance],
                )?
                .iter()
                .map(|r| (r.get::<_, i64>(0) as u64, r.get(1)))
                .collect())
        })
    }

    /// A failed poll's health. An instance this process holds is fenced; one it does not
    /// hold (its file cannot start here) is recorded unless another live host holds it,
    /// whose health record it is.
    pub fn record_poll(&mut self, instance: &str, h: &PollHealth) -> Result<(), StateError> {
        let fence = self.fence_of(instance);
        self.tx(|tx| {
            if !fence.check_or_unheld(tx)? {
                return Ok(());
            }
            upsert_health(tx, instance, h)?;
            Ok(())
        })
    }

    pub fn add_wait(&mut self, instance: &str, secs: u64) -> Result<(), StateError> {
        let fence = self.fence_of(instance);
        self.tx(|tx| {
            if !fence.check_or_unheld(tx)? {
                return Ok(());
            }
            tx.execute(
                "UPDATE health SET waited_secs = waited_secs + $2 WHERE instance = $1",
                &[&instance, &(secs as i64)],
            )?;
            Ok(())
        })
    }

    pub fn health(&mut self) -> Result<Vec<HealthRow>, StateError> {
        if !self.has_schema()? {
            return Ok(Vec::new());
        }
        self.tx(|tx| {
            let rows = tx.query(
                "SELECT COALESCE(i.name, h.instance), COALESCE(i.connector, '-'), h.last_poll,
                     h.last_success, h.newest_event, COALESCE(h.events, 0),
                     COALESCE(h.requests, 0), COALESCE(h.throttled, 0),
                     COALESCE(h.waited_secs, 0), COALESCE(h.failures, 0), h.last_error,
                     h.last_error_code, h.degraded
                 FROM instances i FULL JOIN health h ON h.instance = i.name
                 ORDER BY COALESCE(i.name, h.instance) COLLATE \"C\"",
                &[],
            )?;
            Ok(rows
                .iter()
                .map(|r| HealthRow {
                    instance: r.get(0),
                    connector: r.get(1),
                    last_poll: r.get(2),
                    last_success: r.get(3),
                    newest_event: r.get(4),
                    events: r.get::<_, i64>(5) as u64,
                    requests: r.get::<_, i64>(6) as u64,
                    throttled: r.get::<_, i64>(7) as u64,
                    waited_secs: r.get::<_, i64>(8) as u64,
                    failures: r.get::<_, i64>(9) as u64,
                    last_error: r.get(10),
                    last_error_code: r.get(11),
                    degraded: degraded_of(r.get::<_, Option<String>>(12).as_deref()),
                })
                .collect())
        })
    }

    pub fn mark_delivered(&mut self, instance: &str, seq: u64) -> Result<(), StateError> {
        let fence = self.fence_of(instance);
        self.tx(|tx| {
            fence.check(tx)?;
            tx.execute(
                "UPDATE instances SET delivered_seq = greatest(delivered_seq, $2) WHERE name = $1",
                &[&instance, &(seq as i64)],
            )?;
            tx.execute(
                "DELETE FROM outbox WHERE instance = $1 AND seq <= $2",
                &[&instance, &(seq as i64)],
            )?;
            Ok(())
        })
    }

    /// The seq range of the webhook batch last cut for `instance`, if any.
    pub fn sink_batch(&mut self, instance: &str) -> Result<Option<(u64, u64)>, StateError> {
        self.tx(|tx| {
            let row = tx.query_opt(
                "SELECT batch_first, batch_last FROM sink_progress WHERE instance = $1",
                &[&instance],
            )?;
            Ok(row.and_then(|r| {
                let first: Option<i64> = r.get(0);
                let last: Option<i64> = r.get(1);
                Some((first? as u64, last? as u64))
            }))
        })
    }

    /// Records the batch about to be sent, before it is sent. Fenced like delivery: a
    /// host that lost the lease must not change the batch its successor re-sends.
    pub fn set_sink_batch(
        &mut self,
        instance: &str,
        first: u64,
        last: u64,
    ) -> Result<(), StateError> {
        let fence = self.fence_of(instance);
        self.tx(|tx| {
            fence.check(tx)?;
            tx.execute(
                "INSERT INTO sink_progress (instance, batch_first, batch_last)
                 VALUES ($1, $2, $3) ON CONFLICT (instance)
                 DO UPDATE SET batch_first = excluded.batch_first,
                               batch_last = excluded.batch_last",
                &[&instance, &(first as i64), &(last as i64)],
            )?;
            Ok(())
        })
    }

    /// Counts one failed delivery of `instance`: health, so written like the poll's
    /// health record (checked if held, else unless another live host holds it).
    pub fn add_sink_error(&mut self, instance: &str) -> Result<(), StateError> {
        let fence = self.fence_of(instance);
        self.tx(|tx| {
            if !fence.check_or_unheld(tx)? {
                return Ok(());
            }
            tx.execute(
                "INSERT INTO sink_progress (instance, errors) VALUES ($1, 1)
                 ON CONFLICT (instance) DO UPDATE SET errors = sink_progress.errors + 1",
                &[&instance],
            )?;
            Ok(())
        })
    }

    /// Failed deliveries per instance (instances without any are absent).
    pub fn sink_errors(&mut self) -> Result<BTreeMap<String, u64>, StateError> {
        if !self.has_schema()? {
            return Ok(BTreeMap::new());
        }
        self.tx(|tx| {
            // A database of schema 1 read by `status` before any newer host migrated it.
            let present: bool = tx
                .query_one("SELECT to_regclass('sink_progress') IS NOT NULL", &[])?
                .get(0);
            if !present {
                return Ok(BTreeMap::new());
            }
            let rows = tx.query(
                "SELECT instance, errors FROM sink_progress WHERE errors > 0",
                &[],
            )?;
            Ok(rows
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64))
                .collect())
        })
    }

    /// Whether this process still holds `instance`'s lease (before it delivers).
    pub fn check_lease(&mut self, instance: &str) -> Result<(), StateError> {
        let fence = self.fence_of(instance);
        self.tx(|tx| fence.check(tx))
    }

    fn has_schema(&mut self) -> Result<bool, StateError> {
        self.tx(|tx| {
            Ok(tx
                .query_one("SELECT to_regclass('connector_schema') IS NOT NULL", &[])?
                .get(0))
        })
    }

    fn fence_of(&self, instance: &str) -> Fence {
        Fence {
            url: self.url(),
            instance: instance.to_string(),
            owner: self.host_id.clone(),
            token: self.held.get(instance).copied(),
        }
    }

    // --- Leases -------------------------------------------------------------------------

    /// Takes `instance`'s lease for this process (raising its fencing token), if it is
    /// free, expired or already this process's, and this host holds less than its fair
    /// share: ceil(configured instances / live hosts), so hosts that start together split
    /// the instances instead of the first taking all.
    pub fn take_lease(&mut self, instance: &str, since: &str) -> Result<(), StateError> {
        let url = self.url();
        let me = self.host_id.clone();
        let ttl = self.lease_ttl.as_secs_f64();
        let fleet_size = self.fleet_size;
        let (host, pid) = (crate::holder::host_name(), std::process::id() as i64);
        let process = crate::holder::process_identity(std::process::id());
        let token = self.tx(|tx| {
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LEASE_LOCK])?;
            tx.execute(
                "INSERT INTO leases (instance) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&instance],
            )?;
            let row = tx.query_one(
                "SELECT owner, COALESCE(host, ''), COALESCE(pid, 0), to_char(expires AT TIME
                     ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                     COALESCE(expires > now(), false), COALESCE(process, '')
                 FROM leases WHERE instance = $1 FOR UPDATE",
                &[&instance],
            )?;
            let owner: Option<String> = row.get(0);
            let live = row.get::<_, bool>(4)
                && !gone_here(
                    &row.get::<_, String>(1),
                    row.get(2),
                    &row.get::<_, String>(5),
                );
            if let Some(owner) = owner.filter(|o| live && *o != me) {
                return Err(StateError::Leased {
                    url: url.clone(),
                    instance: instance.into(),
                    owner,
                    until: row.get::<_, Option<String>>(3).unwrap_or_default(),
                }
                .into());
            }
            if let Some(configured) = fleet_size {
                let (held, hosts) = share(tx, &me, ttl)?;
                if held >= configured.div_ceil(hosts) {
                    return Err(StateError::FairShare {
                        url: url.clone(),
                        instance: instance.into(),
                        held,
                        configured,
                        hosts,
                    }
                    .into());
                }
            }
            let token: i64 = tx
                .query_one(
                    "UPDATE leases SET owner = $2, host = $3, pid = $4, since = $5,
                         expires = now() + make_interval(secs => $6::float8), token = token + 1,
                         next_poll = NULL, process = $7
                     WHERE instance = $1 RETURNING token",
                    &[&instance, &me, &host, &pid, &since, &ttl, &process],
                )?
                .get(0);
            Ok(token)
        })?;
        self.held.insert(instance.to_string(), token);
        tracing::debug!(instance, token, "lease taken");
        Ok(())
    }

    /// Whether this process holds `instance`'s lease (as of its last renewal).
    pub fn holds(&self, instance: &str) -> bool {
        self.held.contains_key(instance)
    }

    /// Whether [`PgDb::take_lease`] would take `instance` now, without taking it: a cheap
    /// check before starting an instance (which instantiates its component).
    pub fn may_take(&mut self, instance: &str) -> Result<(), StateError> {
        if self.holds(instance) {
            return Ok(());
        }
        let url = self.url();
        let me = self.host_id.clone();
        let ttl = self.lease_ttl.as_secs_f64();
        let fleet_size = self.fleet_size;
        self.tx(|tx| {
            let row = tx.query_opt(
                "SELECT owner, COALESCE(host, ''), COALESCE(pid, 0), to_char(expires AT TIME
                     ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), COALESCE(process, '')
                 FROM leases WHERE instance = $1 AND owner IS NOT NULL AND owner <> $2
                     AND expires > now()",
                &[&instance, &me],
            )?;
            if let Some(r) =
                row.filter(|r| !gone_here(&r.get::<_, String>(1), r.get(2), &r.get::<_, String>(4)))
            {
                return Err(StateError::Leased {
                    url: url.clone(),
                    instance: instance.into(),
                    owner: r.get(0),
                    until: r.get(3),
                }
                .into());
            }
            if let Some(configured) = fleet_size {
                let (held, hosts) = share(tx, &me, ttl)?;
                if held >= configured.div_ceil(hosts) {
                    return Err(StateError::FairShare {
                        url,
                        instance: instance.into(),
                        held,
                        configured,
                        hosts,
                    }
                    .into());
                }
            }
            Ok(())
        })
    }

    /// Gives `instance`'s lease up (its runner stopped): another host may take it at once.
    pub fn release_lease(&mut self, instance: &str) -> Result<(), StateError> {
        let Some(token) = self.held.remove(instance) else {
            return Ok(());
        };
        let me = self.host_id.clone();
        self.tx(|tx| {
            tx.execute(
                "UPDATE leases SET owner = NULL, expires = NULL, next_poll = NULL
                 WHERE instance = $1 AND owner = $2 AND token = $3",
                &[&instance, &me, &token],
            )?;
            Ok(())
        })
    }

    /// Gives up every lease this host holds, in one statement (shutdown, once no poll is in
    /// flight): the runners' drops that follow find nothing left to release.
    pub fn release_all_leases(&mut self) -> Result<(), StateError> {
        if self.held.is_empty() {
            return Ok(());
        }
        let me = self.host_id.clone();
        self.tx(|tx| {
            tx.execute(
                "UPDATE leases SET owner = NULL, expires = NULL, next_poll = NULL
                 WHERE owner = $1",
                &[&me],
            )?;
            Ok(())
        })?;
        self.held.clear();
        Ok(())
    }

    /// Whether this process holds more than its fair share, counting live hosts now: then
    /// the caller releases `instance` so a newer host gets work. Decided under the lease
    /// lock, so several instances of one host do not all give up at once.
    pub fn over_share(&mut self, instance: &str) -> Result<bool, StateError> {
        let Some(configured) = self.fleet_size else {
            return Ok(false);
        };
        if !self.held.contains_key(instance) {
            return Ok(false);
        }
        let me = self.host_id.clone();
        let ttl = self.lease_ttl.as_secs_f64();
        let token = self.held[instance];
        let over = self.tx(|tx| {
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LEASE_LOCK])?;
            let (held, hosts) = share(tx, &me, ttl)?;
            if held <= configured.div_ceil(hosts) {
                return Ok(false);
            }
            // Released here, under the lock, so the next count sees it.
            tx.execute(
                "UPDATE leases SET owner = NULL, expires = NULL, next_poll = NULL
                 WHERE instance = $1 AND owner = $2 AND token = $3",
                &[&instance, &me, &token],
            )?;
            Ok(true)
        })?;
        if over {
            self.held.remove(instance);
        }
        Ok(over)
    }

    /// The heartbeat of this host and the renewal of its leases (every third of the TTL).
    /// A lease found expired or taken is dropped from the held set: its instance's next
    /// write is fenced. Returns the instances lost.
    pub fn renew(&mut self) -> Result<Vec<String>, StateError> {
        let me = self.host_id.clone();
        let ttl = self.lease_ttl.as_secs_f64();
        let renewed: Vec<(String, i64)> = self.tx(|tx| {
            tx.execute(
                "INSERT INTO hosts (id, heartbeat) VALUES ($1, now())
                 ON CONFLICT (id) DO UPDATE SET heartbeat = now()",
                &[&me],
            )?;
            // Hosts gone for ten TTLs leave the table (their leases expired long ago).
            tx.execute(
                "DELETE FROM hosts WHERE heartbeat < now() - make_interval(secs => $1::float8 * 10)",
                &[&ttl],
            )?;
            Ok(tx
                .query(
                    "UPDATE leases SET expires = now() + make_interval(secs => $2::float8)
                     WHERE owner = $1 AND expires > now() RETURNING instance, token",
                    &[&me, &ttl],
                )?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect())
        })?;
        let renewed: HashMap<String, i64> = renewed.into_iter().collect();
        let lost: Vec<String> = self
            .held
            .iter()
            .filter(|(i, t)| renewed.get(*i) != Some(t))
            .map(|(i, _)| i.clone())
            .collect();
        for instance in &lost {
            self.held.remove(instance);
        }
        Ok(lost)
    }

    /// Leaves the fleet (SIGTERM): the host's heartbeat goes first, so that the others
    /// count one host fewer and take its instances as soon as their leases are released.
    pub fn leave_fleet(&mut self) -> Result<(), StateError> {
        let me = self.host_id.clone();
        self.tx(|tx| {
            tx.execute("DELETE FROM hosts WHERE id = $1", &[&me])?;
            Ok(())
        })
    }

    pub fn set_next_poll(&mut self, instance: &str, at: &str) -> Result<(), StateError> {
        let me = self.host_id.clone();
        self.tx(|tx| {
            tx.execute(
                "UPDATE leases SET next_poll = $2 WHERE instance = $1 AND owner = $3",
                &[&instance, &at, &me],
            )?;
            Ok(())
        })
    }

    /// The live leases, by instance: (owner, host, pid, since, until, token, next poll).
    pub fn live_leases(&mut self) -> Result<BTreeMap<String, LeaseRow>, StateError> {
        if !self.has_schema()? {
            return Ok(BTreeMap::new());
        }
        self.tx(|tx| {
            Ok(tx
                .query(
                    "SELECT instance, owner, COALESCE(host, ''), COALESCE(pid, 0),
                         COALESCE(since, ''), to_char(expires AT TIME ZONE 'UTC',
                         'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), token, next_poll
                     FROM leases WHERE owner IS NOT NULL AND expires > now()",
                    &[],
                )?
                .iter()
                .map(|r| {
                    (
                        r.get(0),
                        LeaseRow {
                            owner: r.get(1),
                            host: r.get(2),
                            pid: r.get::<_, i64>(3) as u32,
                            since: r.get(4),
                            until: r.get(5),
                            token: r.get(6),
                            next_poll: r.get(7),
                        },
                    )
                })
                .collect())
        })
    }

    // --- What `lifecycle` keeps -----------------------------------------------------------

    /// The source recorded for `instance` (`Some(None)`: a row without one).
    pub fn origin(&mut self, instance: &str) -> Result<Option<Option<String>>, StateError> {
        self.tx(|tx| {
            Ok(tx
                .query_opt(
                    "SELECT source FROM origins WHERE instance = $1",
                    &[&instance],
                )?
                .map(|r| r.get(0)))
        })
    }

    pub fn set_origin(&mut self, instance: &str, source: &str) -> Result<(), StateError> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO origins (instance, source, removed) VALUES ($1, $2, NULL)
                 ON CONFLICT (instance) DO UPDATE SET source = excluded.source, removed = NULL",
                &[&instance, &source],
            )?;
            Ok(())
        })
    }

    pub fn mark_removed(&mut self, instance: &str, at: &str) -> Result<(), StateError> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO origins (instance, source, removed) VALUES ($1, NULL, $2)
                 ON CONFLICT (instance) DO UPDATE SET removed = excluded.removed",
                &[&instance, &at],
            )?;
            Ok(())
        })
    }

    pub fn removed(&mut self) -> Result<BTreeMap<String, String>, StateError> {
        if !self.has_schema()? {
            return Ok(BTreeMap::new());
        }
        self.tx(|tx| {
            Ok(tx
                .query(
                    "SELECT instance, removed FROM origins WHERE removed IS NOT NULL",
                    &[],
                )?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect())
        })
    }

    pub fn undelivered_counts(&mut self) -> Result<BTreeMap<String, u64>, StateError> {
        if !self.has_schema()? {
            return Ok(BTreeMap::new());
        }
        self.tx(|tx| {
            Ok(tx
                .query(
                    "SELECT o.instance, count(*) FROM outbox o
                     JOIN instances i ON i.name = o.instance
                     WHERE o.seq > i.delivered_seq GROUP BY o.instance",
                    &[],
                )?
                .iter()
                .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
                .collect())
        })
    }

    /// Deletes everything of `instance`, refused while a live lease holds it. Returns
    /// (known, undelivered events, KV keys).
    pub fn forget(&mut self, instance: &str) -> Result<(bool, u64, u64), StateError> {
        let url = self.url();
        self.tx(|tx| {
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LEASE_LOCK])?;
            let lease = tx.query_opt(
                "SELECT owner, COALESCE(host, ''), COALESCE(pid, 0), to_char(expires AT TIME
                     ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
                 FROM leases WHERE instance = $1 AND owner IS NOT NULL AND expires > now()",
                &[&instance],
            )?;
            if let Some(r) = lease {
                return Err(StateError::Leased {
                    url,
                    instance: instance.into(),
                    owner: r.get(0),
                    until: r.get(3),
                }
                .into());
            }
            let count = |tx: &mut Transaction, q: &str| -> Result<u64, postgres::Error> {
                Ok(tx.query_one(q, &[&instance])?.get::<_, i64>(0) as u64)
            };
            let known = count(tx, "SELECT count(*) FROM instances WHERE name = $1")?
                + count(tx, "SELECT count(*) FROM health WHERE instance = $1")?
                + count(tx, "SELECT count(*) FROM origins WHERE instance = $1")?;
            if known == 0 {
                return Ok((false, 0, 0));
            }
            let undelivered = count(
                tx,
                "SELECT count(*) FROM outbox o JOIN instances i ON i.name = o.instance
                 WHERE o.instance = $1 AND o.seq > i.delivered_seq",
            )?;
            let keys = count(tx, "SELECT count(*) FROM kv WHERE instance = $1")?;
            for q in [
                "DELETE FROM instances WHERE name = $1",
                "DELETE FROM kv WHERE instance = $1",
                "DELETE FROM outbox WHERE instance = $1",
                "DELETE FROM health WHERE instance = $1",
                "DELETE FROM origins WHERE instance = $1",
                "DELETE FROM leases WHERE instance = $1",
                "DELETE FROM sink_progress WHERE instance = $1",
            ] {
                tx.execute(q, &[&instance])?;
            }
            Ok((true, undelivered, keys))
        })
    }
}

/// A live lease as `status` shows it.
#[derive(Debug, Clone)]
pub struct LeaseRow {
    pub owner: String,
    pub host: String,
    pub pid: u32,
    pub since: String,
    pub until: Option<String>,
    pub token: i64,
    pub next_poll: Option<String>,
}

/// The check a write makes inside its transaction: this process holds the instance's
/// lease, with the token it took it with, and the lease has not expired.
struct Fence {
    url: String,
    instance: String,
    owner: String,
    token: Option<Token>,
}

impl Fence {
    fn fenced(&self) -> Fail {
        Fail::State(StateError::Fenced {
            url: self.url.clone(),
            instance: self.instance.clone(),
        })
    }

    fn check(&self, tx: &mut Transaction) -> Result<(), Fail> {
        let Some(token) = self.token else {
            return Err(self.fenced());
        };
        let valid: Option<bool> = tx
            .query_opt(
                "SELECT owner = $2 AND token = $3 AND expires > now()
                 FROM leases WHERE instance = $1 FOR UPDATE",
                &[&self.instance, &self.owner, &token],
            )?
            .and_then(|r| r.get(0));
        if valid == Some(true) {
            Ok(())
        } else {
            Err(self.fenced())
        }
    }

    /// For writes about an instance this process may not run (its health when it could not
    /// start): checked if held; else true unless another live host holds it.
    fn check_or_unheld(&self, tx: &mut Transaction) -> Result<bool, Fail> {
        if self.token.is_some() {
            return self.check(tx).map(|()| true);
        }
        let taken = tx
            .query_opt(
                "SELECT 1 FROM leases WHERE instance = $1 AND owner IS NOT NULL
                     AND owner <> $2 AND expires > now()",
                &[&self.instance, &self.owner],
            )?
            .is_some();
        Ok(!taken)
    }
}

/// Whether a lease's holder ran on this machine and is gone (killed, crashed): its lease
/// is taken at once rather than after the TTL, as the SQLite holders are. A holder on
/// another machine cannot be checked from here: its lease runs out.
fn gone_here(host: &str, pid: i64, process: &str) -> bool {
    host == crate::holder::host_name()
        && u32::try_from(pid).is_ok_and(|pid| !crate::holder::process_alive(pid, process))
}

/// (leases this host holds, live hosts counted from their heartbeats, at least 1).
fn share(tx: &mut Transaction, me: &str, ttl: f64) -> Result<(u64, u64), postgres::Error> {
    let held: i64 = tx
        .query_one(
            "SELECT count(*) FROM leases WHERE owner = $1 AND expires > now()",
            &[&me],
        )?
        .get(0);
    let hosts: i64 = tx
        .query_one(
            "SELECT count(*) FROM hosts
             WHERE id = $1 OR heartbeat > now() - make_interval(secs => $2::float8)",
            &[&me, &ttl],
        )?
        .get(0);
    Ok((held as u64, (hosts as u64).max(1)))
}

fn upsert_health(tx: &mut Transaction, instance: &str, h: &PollHealth) -> Result<(), Fail> {
    let degraded = h
        .degraded
        .map(|d| serde_json::to_string(d).expect("degraded types serialize"));
    tx.execute(
        "INSERT INTO health (instance, last_poll, last_success, newest_event, events,
             requests, throttled, failures, last_error, last_error_code, degraded)
         VALUES ($1, $2, CASE WHEN $3 THEN $2 END, $4, $5, $6, $7,
             CASE WHEN $3 THEN 0 ELSE 1 END, $8, $9, $10)
         ON CONFLICT (instance) DO UPDATE SET
             last_poll = excluded.last_poll,
             last_success = COALESCE(excluded.last_success, health.last_success),
             newest_event = CASE WHEN health.newest_event IS NULL
                 OR excluded.newest_event COLLATE \"C\" > health.newest_event COLLATE \"C\"
                 THEN COALESCE(excluded.newest_event, health.newest_event)
                 ELSE health.newest_event END,
             events = health.events + excluded.events,
             requests = health.requests + excluded.requests,
             throttled = health.throttled + excluded.throttled,
             failures = CASE WHEN $3 THEN 0 ELSE health.failures + 1 END,
             last_error = COALESCE(excluded.last_error, health.last_error),
             last_error_code = COALESCE(excluded.last_error_code, health.last_error_code),
             degraded = COALESCE(excluded.degraded, health.degraded)",
        &[
            &instance,
            &h.at,
            &h.ok,
            &h.newest_event,
            &(h.events as i64),
            &(h.requests as i64),
            &(h.throttled as i64),
            &h.error,
            &h.code,
            &degraded,
        ],
    )?;
    Ok(())
}

/// Connection classes (08: connection exception, 57: operator intervention such as a
/// server shutting down): the session is gone, a new one is needed.
/// An I/O error under the client's, or a closed connection, is the same.
fn is_connection_loss(e: &postgres::Error) -> bool {
    e.is_closed()
        || e.code()
            .is_some_and(|c| c.code().starts_with("08") || c.code().starts_with("57"))
        || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
}

/// The error's cause in one line: the server's message where it sent one.
fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}

fn pg_error(url: &str, e: &postgres::Error) -> StateError {
    let lost = is_connection_loss(e);
    StateError::Postgres {
        url: url.to_string(),
        cause: describe(e),
        fix: if lost {
            FIX_CONNECT
        } else {
            "a query of the state store failed: check the server's log and that this \
             user may read and write the database's connector tables (a host bug if the \
             cause is not the database's)"
        },
    }
}
