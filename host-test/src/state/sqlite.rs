//! The SQLite backend of the state store: one file shared by any number of instances of
//! one machine, each instance's cursor, KV namespace and outbox of event lines not yet
//! delivered.
//!
//! A poll commits its event lines, its cursor and its staged KV writes in one transaction
//! ([`SqliteDb::commit_poll`]); delivery then moves lines from the outbox to the sink and
//! records the last delivered `seq`. WAL with `synchronous=FULL`: a committed poll survives
//! a power cut, and a crash mid-transaction leaves the previous state.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use super::{HealthRow, KvWrites, PollHealth, StateError, degraded_of};

pub(super) const SCHEMA_VERSION: i64 = 5;

/// The first 16 bytes of every SQLite database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// How long a statement waits for another process's write lock before failing.
pub(super) const BUSY_TIMEOUT_SECS: u64 = 10;

/// Wraps a SQLite error with the state file's path (for use while `conn` is borrowed).
fn sql_error(path: &Path) -> impl Fn(rusqlite::Error) -> StateError + '_ {
    move |cause| StateError::Sql {
        path: path.to_path_buf(),
        cause,
    }
}

pub struct SqliteDb {
    conn: Connection,
    path: PathBuf,
}

impl SqliteDb {
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let corrupt = corrupt_error(path);
        let in_memory = path == Path::new(":memory:");
        if !in_memory {
            check_file(path, false)?;
        }
        let conn = Connection::open(path).map_err(&corrupt)?;
        if !in_memory && conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false) {
            return Err(StateError::ReadOnly {
                path: path.to_path_buf(),
                cause: "the file is read-only".into(),
            });
        }
        conn.busy_timeout(std::time::Duration::from_secs(BUSY_TIMEOUT_SECS))
            .map_err(&corrupt)?;
        // A SQLite database of another program is refused before anything is written.
        if !in_memory {
            refuse_foreign(&conn, path).map_err(|e| match e {
                StateError::Sql { cause, .. } => corrupt(cause),
                other => other,
            })?;
        }
        // The first statement that reads the file tells whether it is a database at all.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(&corrupt)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(&corrupt)?;
        let db = SqliteDb {
            conn,
            path: path.to_path_buf(),
        };
        db.migrate().map_err(|e| match e {
            StateError::Sql { cause, .. } => corrupt(cause),
            other => other,
        })?;
        db.add_degraded_column().map_err(|e| db.sql(e))?;
        Ok(db)
    }

    /// Opens an existing state file for reading only (`status`): nothing is written to
    /// it, so an empty or foreign file stays as it was and a read-only one can be read.
    pub fn open_for_reading(path: &Path) -> Result<Self, StateError> {
        let corrupt = corrupt_error(path);
        check_file(path, true)?;
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(&corrupt)?;
        conn.busy_timeout(std::time::Duration::from_secs(BUSY_TIMEOUT_SECS))
            .map_err(&corrupt)?;
        refuse_foreign(&conn, path).map_err(|e| match e {
            StateError::Sql { cause, .. } => corrupt(cause),
            other => other,
        })?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(&corrupt)?;
        if version > SCHEMA_VERSION {
            return Err(StateError::NewerSchema {
                path: path.to_path_buf(),
                found: version,
                known: SCHEMA_VERSION,
            });
        }
        Ok(SqliteDb {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// The connection, for the modules that keep their own tables in the state file
    /// (instance holders).
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    pub(crate) fn conn_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sql(&self, cause: rusqlite::Error) -> StateError {
        StateError::Sql {
            path: self.path.clone(),
            cause,
        }
    }

    fn migrate(&self) -> Result<(), StateError> {
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| self.sql(e))?;
        if version > SCHEMA_VERSION {
            return Err(StateError::NewerSchema {
                path: self.path.clone(),
                found: version,
                known: SCHEMA_VERSION,
            });
        }
        if version == SCHEMA_VERSION {
            // Nothing to write: a reader such as `status` takes no lock beside a writer.
            return Ok(());
        }
        if version < 3 {
            self.migrate_to_3(version)?;
        }
        if version < 4 {
            self.migrate_to_4_ops()?;
        }
        self.migrate_to_5_sinks()
    }

    /// Schema 3: instances, KV, outbox and health.
    fn migrate_to_3(&self, version: i64) -> Result<(), StateError> {
        // Schema 2 had no error code; 1 had no health table (created below, with it).
        let add_code = if version == 2 {
            "ALTER TABLE health ADD COLUMN last_error_code TEXT;"
        } else {
            ""
        };
        self.conn
            .execute_batch(&format!(
                "BEGIN IMMEDIATE;
                 CREATE TABLE IF NOT EXISTS instances (
                     name TEXT PRIMARY KEY,
                     connector TEXT NOT NULL,
                     cursor TEXT,
                     last_seq INTEGER NOT NULL DEFAULT 0,
                     delivered_seq INTEGER NOT NULL DEFAULT 0,
                     created TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ','now'))
                 );
                 CREATE TABLE IF NOT EXISTS kv (
                     instance TEXT NOT NULL,
                     key TEXT NOT NULL,
                     value TEXT NOT NULL,
                     PRIMARY KEY (instance, key)
                 );
                 CREATE TABLE IF NOT EXISTS outbox (
                     instance TEXT NOT NULL,
                     seq INTEGER NOT NULL,
                     line TEXT NOT NULL,
                     PRIMARY KEY (instance, seq)
                 );
                 CREATE TABLE IF NOT EXISTS health (
                     instance TEXT PRIMARY KEY,
                     last_poll TEXT,
                     last_success TEXT,
                     newest_event TEXT,
                     events INTEGER NOT NULL DEFAULT 0,
                     requests INTEGER NOT NULL DEFAULT 0,
                     throttled INTEGER NOT NULL DEFAULT 0,
                     waited_secs INTEGER NOT NULL DEFAULT 0,
                     failures INTEGER NOT NULL DEFAULT 0,
                     last_error TEXT,
                     last_error_code TEXT
                 );
                 {add_code}
                 PRAGMA user_version = 3;
                 COMMIT;",
            ))
            .map_err(|e| self.sql(e))
    }

    /// Adds `health.degraded` (JSON of [`Degraded`]s, NULL until a poll reports) to a file
    /// that lacks it. A step of its own, keyed on the column rather than on the schema
    /// number, so it composes with any other migration; a no-op read when present.
    ///
    /// Checked and added in one write transaction: processes that open a new file at
    /// once would otherwise both see the column missing and the second fail to add it.
    fn add_degraded_column(&self) -> rusqlite::Result<()> {
        let present = |conn: &Connection| -> rusqlite::Result<bool> {
            conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM pragma_table_info('health') WHERE name = 'degraded')",
                [],
                |r| r.get(0),
            )
        };
        if present(&self.conn)? {
            return Ok(());
        }
        let tx = rusqlite::Transaction::new_unchecked(
            &self.conn,
            rusqlite::TransactionBehavior::Immediate,
        )?;
        if !present(&tx)? {
            tx.execute_batch("ALTER TABLE health ADD COLUMN degraded TEXT;")?;
        }
        tx.commit()
    }

    /// Schema 4, the operations tables: `holders`, the process that runs each instance
    /// now (one at a time, see [`crate::holder`]), with its next poll; `origins`, what
    /// each instance was created from (a `run` config file, a `serve` instance file) and
    /// when its `serve` instance file was removed.
    fn migrate_to_4_ops(&self) -> Result<(), StateError> {
        self.conn
            .execute_batch(
                "BEGIN IMMEDIATE;
                 CREATE TABLE IF NOT EXISTS holders (
                     instance TEXT PRIMARY KEY,
                     pid INTEGER NOT NULL,
                     host TEXT NOT NULL,
                     since TEXT NOT NULL,
                     process TEXT NOT NULL,
                     next_poll TEXT
                 );
                 CREATE TABLE IF NOT EXISTS origins (
                     instance TEXT PRIMARY KEY,
                     source TEXT,
                     removed TEXT
                 );
                 PRAGMA user_version = 4;
                 COMMIT;",
            )
            .map_err(|e| self.sql(e))
    }

    /// Schema 5, what network sinks keep between runs: `sink_progress`, the batch a
    /// webhook sent last and each instance's count of failed deliveries.
    fn migrate_to_5_sinks(&self) -> Result<(), StateError> {
        self.conn
            .execute_batch(
                "BEGIN IMMEDIATE;
                 CREATE TABLE IF NOT EXISTS sink_progress (
                     instance TEXT PRIMARY KEY,
                     batch_first INTEGER,
                     batch_last INTEGER,
                     errors INTEGER NOT NULL DEFAULT 0
                 );
                 PRAGMA user_version = 5;
                 COMMIT;",
            )
            .map_err(|e| self.sql(e))
    }

    /// Refuses a name that belongs to another connector (a component swapped under an
    /// instance); writes nothing.
    pub fn check_owner(&self, instance: &str, connector: &str) -> Result<(), StateError> {
        match self.owner(instance)? {
            Some(owner) if owner != connector => Err(StateError::WrongConnector {
                path: self.path.clone(),
                instance: instance.into(),
                owner,
                connector: connector.into(),
            }),
            _ => Ok(()),
        }
    }

    fn owner(&self, instance: &str) -> Result<Option<String>, StateError> {
        self.conn
            .query_row(
                "SELECT connector FROM instances WHERE name = ?1",
                [instance],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.sql(e))
    }

    /// Registers the instance on first use; refuses a name that belongs to another connector.
    pub fn ensure_instance(&self, instance: &str, connector: &str) -> Result<(), StateError> {
        let owner: Option<String> = self
            .conn
            .query_row(
                "SELECT connector FROM instances WHERE name = ?1",
                [instance],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.sql(e))?;
        match owner {
            Some(owner) if owner != connector => Err(StateError::WrongConnector {
                path: self.path.clone(),
                instance: instance.into(),
                owner,
                connector: connector.into(),
            }),
            Some(_) => Ok(()),
            None => self
                .conn
                .execute(
                    "INSERT INTO instances (name, connector) VALUES (?1, ?2)",
                    [instance, connector],
                )
                .map(drop)
                .map_err(|e| self.sql(e)),
        }
    }

    pub fn cursor(&self, instance: &str) -> Result<Option<String>, StateError> {
        self.conn
            .query_row(
                "SELECT cursor FROM instances WHERE name = ?1",
                [instance],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()
            .map(Option::flatten)
            .map_err(|e| self.sql(e))
    }

    pub fn kv_get(&self, instance: &str, key: &str) -> Result<Option<String>, StateError> {
        self.conn
            .query_row(
                "SELECT value FROM kv WHERE instance = ?1 AND key = ?2",
                [instance, key],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.sql(e))
    }

    /// A write outside any poll transaction (the `set-now` of the KV import).
    pub fn kv_set_now(&self, instance: &str, key: &str, value: &str) -> Result<(), StateError> {
        self.conn
            .execute(
                "INSERT INTO kv (instance, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (instance, key) DO UPDATE SET value = excluded.value",
                [instance, key, value],
            )
            .map(drop)
            .map_err(|e| self.sql(e))
    }

    /// Commits one successful poll: its event lines (numbered after the instance's last
    /// `seq` by `line(seq, index)`), its cursor, its KV writes and its health record, all or
    /// nothing. Returns the seq range given to the lines.
    pub fn commit_poll(
        &mut self,
        instance: &str,
        count: usize,
        mut line: impl FnMut(u64, usize) -> String,
        cursor: &str,
        kv: &KvWrites,
        health: &PollHealth,
    ) -> Result<std::ops::RangeInclusive<u64>, StateError> {
        let sql = sql_error(&self.path);
        let tx = write_transaction(&mut self.conn).map_err(&sql)?;
        let last: u64 = tx
            .query_row(
                "SELECT last_seq FROM instances WHERE name = ?1",
                [instance],
                |r| r.get(0),
            )
            .map_err(&sql)?;
        {
            let mut insert = tx
                .prepare_cached("INSERT INTO outbox (instance, seq, line) VALUES (?1, ?2, ?3)")
                .map_err(&sql)?;
            for i in 0..count {
                let seq = last + 1 + i as u64;
                insert
                    .execute(params![instance, seq, line(seq, i)])
                    .map_err(&sql)?;
            }
            let mut set = tx
                .prepare_cached(
                    "INSERT INTO kv (instance, key, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT (instance, key) DO UPDATE SET value = excluded.value",
                )
                .map_err(&sql)?;
            let mut delete = tx
                .prepare_cached("DELETE FROM kv WHERE instance = ?1 AND key = ?2")
                .map_err(&sql)?;
            for (key, value) in kv {
                match value {
                    Some(v) => set.execute(params![instance, key, v]),
                    None => delete.execute(params![instance, key]),
                }
                .map_err(&sql)?;
            }
        }
        tx.execute(
            "UPDATE instances SET cursor = ?2, last_seq = ?3 WHERE name = ?1",
            params![instance, cursor, last + count as u64],
        )
        .map_err(&sql)?;
        upsert_health(&tx, instance, health).map_err(&sql)?;
        tx.commit().map_err(&sql)?;
        Ok(last + 1..=last + count as u64)
    }

    /// The last seq committed and the last delivered.
    pub fn seqs(&self, instance: &str) -> Result<(u64, u64), StateError> {
        self.conn
            .query_row(
                "SELECT last_seq, delivered_seq FROM instances WHERE name = ?1",
                [instance],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| self.sql(e))
    }

    /// Lines committed but not yet delivered, oldest first.
    pub fn undelivered(&self, instance: &str) -> Result<Vec<(u64, String)>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT o.seq, o.line FROM outbox o JOIN instances i ON i.name = o.instance
                 WHERE o.instance = ?1 AND o.seq > i.delivered_seq ORDER BY o.seq",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([instance], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.sql(e))?;
        Ok(rows)
    }

    /// Adds a poll that committed nothing (a failed one) to the instance's health record.
    pub fn record_poll(&self, instance: &str, h: &PollHealth) -> Result<(), StateError> {
        upsert_health(&self.conn, instance, h).map_err(|e| self.sql(e))
    }

    /// Adds time spent waiting (Retry-After, backoff, a spent budget) to the health record.
    pub fn add_wait(&self, instance: &str, secs: u64) -> Result<(), StateError> {
        self.conn
            .execute(
                "UPDATE health SET waited_secs = waited_secs + ?2 WHERE instance = ?1",
                params![instance, secs],
            )
            .map(drop)
            .map_err(|e| self.sql(e))
    }

    /// Every instance with its health, by name.
    pub fn health(&self) -> Result<Vec<HealthRow>, StateError> {
        // `status` opens files read-only and may read one whose first writer has created the
        // tables but not yet added the `degraded` column: read it as none then.
        let has_degraded: bool = self
            .conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM pragma_table_info('health') WHERE name = 'degraded')",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.sql(e))?;
        let degraded = if has_degraded { "h.degraded" } else { "NULL" };
        let mut stmt = self
            .conn
            .prepare(&format!(
                // FULL JOIN: an instance `serve` could not start has health but no state.
                "SELECT COALESCE(i.name, h.instance), COALESCE(i.connector, '-'), h.last_poll,
                     h.last_success, h.newest_event, COALESCE(h.events, 0),
                     COALESCE(h.requests, 0), COALESCE(h.throttled, 0),
                     COALESCE(h.waited_secs, 0), COALESCE(h.failures, 0), h.last_error,
                     h.last_error_code, {degraded}
                 FROM instances i FULL JOIN health h ON h.instance = i.name
                 ORDER BY 1"
            ))
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(HealthRow {
                    instance: r.get(0)?,
                    connector: r.get(1)?,
                    last_poll: r.get(2)?,
                    last_success: r.get(3)?,
                    newest_event: r.get(4)?,
                    events: r.get(5)?,
                    requests: r.get(6)?,
                    throttled: r.get(7)?,
                    waited_secs: r.get(8)?,
                    failures: r.get(9)?,
                    last_error: r.get(10)?,
                    last_error_code: r.get(11)?,
                    degraded: degraded_of(r.get::<_, Option<String>>(12)?.as_deref()),
                })
            })
            .and_then(|rows| rows.collect())
            .map_err(|e| self.sql(e))?;
        Ok(rows)
    }

    /// Records that every line up to `seq` reached the sink, and drops them from the outbox.
    pub fn mark_delivered(&mut self, instance: &str, seq: u64) -> Result<(), StateError> {
        let sql = sql_error(&self.path);
        let tx = write_transaction(&mut self.conn).map_err(&sql)?;
        tx.execute(
            "UPDATE instances SET delivered_seq = max(delivered_seq, ?2) WHERE name = ?1",
            params![instance, seq],
        )
        .map_err(&sql)?;
        tx.execute(
            "DELETE FROM outbox WHERE instance = ?1 AND seq <= ?2",
            params![instance, seq],
        )
        .map_err(&sql)?;
        tx.commit().map_err(&sql)
    }
}

/// What network sinks keep between runs: the batch a webhook sent last (so a re-send after
/// a crash carries the same lines under the same idempotency key) and a count of failed
/// deliveries (the metric `connector_sink_errors_total`). The table is schema 5's.
impl SqliteDb {
    /// The seq range of the batch last cut for `instance`, if any.
    pub fn sink_batch(&self, instance: &str) -> Result<Option<(u64, u64)>, StateError> {
        let row = self
            .conn
            .query_row(
                "SELECT batch_first, batch_last FROM sink_progress WHERE instance = ?1",
                [instance],
                |r| Ok((r.get::<_, Option<u64>>(0)?, r.get::<_, Option<u64>>(1)?)),
            )
            .optional();
        match row {
            Ok(Some((Some(first), Some(last)))) => Ok(Some((first, last))),
            Ok(_) => Ok(None),
            Err(e) if no_sink_table(&e) => Ok(None),
            Err(e) => Err(self.sql(e)),
        }
    }

    /// Records the batch about to be sent, before it is sent.
    pub fn set_sink_batch(&self, instance: &str, first: u64, last: u64) -> Result<(), StateError> {
        self.conn
            .execute(
                "INSERT INTO sink_progress (instance, batch_first, batch_last)
                 VALUES (?1, ?2, ?3) ON CONFLICT (instance)
                 DO UPDATE SET batch_first = excluded.batch_first,
                               batch_last = excluded.batch_last",
                params![instance, first, last],
            )
            .map(drop)
            .map_err(|e| self.sql(e))
    }

    /// Counts one failed delivery of `instance`.
    pub fn add_sink_error(&self, instance: &str) -> Result<(), StateError> {
        self.conn
            .execute(
                "INSERT INTO sink_progress (instance, errors) VALUES (?1, 1)
                 ON CONFLICT (instance) DO UPDATE SET errors = errors + 1",
                [instance],
            )
            .map(drop)
            .map_err(|e| self.sql(e))
    }

    /// Failed deliveries per instance (instances without any are absent).
    pub fn sink_errors(&self) -> Result<std::collections::BTreeMap<String, u64>, StateError> {
        let rows = self
            .conn
            .prepare("SELECT instance, errors FROM sink_progress WHERE errors > 0")
            .and_then(|mut stmt| {
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()
            });
        match rows {
            Ok(map) => Ok(map),
            Err(e) if no_sink_table(&e) => Ok(Default::default()),
            Err(e) => Err(self.sql(e)),
        }
    }
}

/// A file of schema 4 or older opened for reading only (`status` of a file no newer host
/// has migrated yet): it has no sink state to show.
fn no_sink_table(e: &rusqlite::Error) -> bool {
    e.to_string().contains("no such table: sink_progress")
}

/// Maps an error of opening or first reading the file to its cause.
fn corrupt_error(path: &Path) -> impl Fn(rusqlite::Error) -> StateError + '_ {
    move |cause: rusqlite::Error| match cause.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            StateError::Busy {
                path: path.to_path_buf(),
            }
        }
        Some(
            rusqlite::ErrorCode::ReadOnly
            | rusqlite::ErrorCode::CannotOpen
            | rusqlite::ErrorCode::PermissionDenied,
        ) => StateError::ReadOnly {
            path: path.to_path_buf(),
            cause: cause.to_string(),
        },
        _ => StateError::Corrupt {
            path: path.to_path_buf(),
            cause: cause.to_string(),
        },
    }
}

/// Checks what is at `path` before SQLite opens (and possibly creates) it: a missing
/// directory, a directory, or a file that is not SQLite each get their own message, and
/// a file that is not a state file is never touched. `existing`: the file must exist and
/// hold a database (a reader).
fn check_file(path: &Path, existing: bool) -> Result<(), StateError> {
    let path_buf = || path.to_path_buf();
    let dir = match path.parent() {
        Some(d) if d.as_os_str().is_empty() => Path::new("."),
        Some(d) => d,
        None => Path::new("/"),
    };
    if !dir.is_dir() {
        return Err(StateError::NoDirectory { path: path_buf() });
    }
    if path.is_dir() {
        return Err(StateError::IsDirectory { path: path_buf() });
    }
    let mut start = [0u8; 16];
    let read = match std::fs::File::open(path) {
        Ok(mut f) => std::io::Read::read(&mut f, &mut start).unwrap_or(0),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if existing {
                return Err(StateError::Sql {
                    path: path_buf(),
                    cause: rusqlite::Error::InvalidPath(path_buf()),
                });
            }
            return Ok(());
        }
        Err(e) => {
            return Err(StateError::ReadOnly {
                path: path_buf(),
                cause: e.to_string(),
            });
        }
    };
    if read == 0 {
        // SQLite makes an empty file a new database (a writer is about to, or it is a
        // file for a state not written yet): a reader sees no instances in it.
        return Ok(());
    }
    if read < start.len() || &start != SQLITE_HEADER {
        let text: String = String::from_utf8_lossy(&start[..read])
            .chars()
            .map(|c| if c.is_control() { '.' } else { c })
            .collect();
        return Err(StateError::NotSqlite {
            path: path_buf(),
            start: text,
        });
    }
    Ok(())
}

/// Refuses a SQLite database that holds tables but none of a state file (another
/// program's database, passed by mistake).
fn refuse_foreign(conn: &Connection, path: &Path) -> Result<(), StateError> {
    let sql = sql_error(path);
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(&sql)?;
    if tables.is_empty() || tables.iter().any(|t| t == "instances") {
        return Ok(());
    }
    Err(StateError::Foreign {
        path: path.to_path_buf(),
        tables: tables
            .iter()
            .take(5)
            .map(|t| format!("{t:?}"))
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// A transaction that takes the write lock at once. A deferred one that reads first could
/// not wait for another process's writer when it comes to write: SQLite answers "database
/// is locked" at once instead of applying the busy timeout.
pub(crate) fn write_transaction(
    conn: &mut Connection,
) -> rusqlite::Result<rusqlite::Transaction<'_>> {
    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
}

/// Adds one poll to an instance's health record (inside the poll's transaction, or alone).
fn upsert_health(conn: &Connection, instance: &str, h: &PollHealth) -> rusqlite::Result<()> {
    let degraded = h
        .degraded
        .map(|d| serde_json::to_string(d).expect("degraded types serialize"));
    conn.execute(
        "INSERT INTO health (instance, last_poll, last_success, newest_event, events,
             requests, throttled, failures, last_error, last_error_code, degraded)
         VALUES (?1, ?2, CASE WHEN ?3 THEN ?2 END, ?4, ?5, ?6, ?7,
             CASE WHEN ?3 THEN 0 ELSE 1 END, ?8, ?9, ?10)
         ON CONFLICT (instance) DO UPDATE SET
             last_poll = excluded.last_poll,
             last_success = COALESCE(excluded.last_success, health.last_success),
             newest_event = CASE WHEN health.newest_event IS NULL
                 OR excluded.newest_event > health.newest_event
                 THEN COALESCE(excluded.newest_event, health.newest_event)
                 ELSE health.newest_event END,
             events = health.events + excluded.events,
             requests = health.requests + excluded.requests,
             throttled = health.throttled + excluded.throttled,
             failures = CASE WHEN ?3 THEN 0 ELSE health.failures + 1 END,
             last_error = COALESCE(excluded.last_error, health.last_error),
             last_error_code = COALESCE(excluded.last_error_code, health.last_error_code),
             degraded = COALESCE(excluded.degraded, health.degraded)",
        params![
            instance,
            h.at,
            h.ok,
            h.newest_event,
            h.events,
            h.requests,
            h.throttled,
            h.error,
            h.code,
            degraded
        ],
    )
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_a_database_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        std::fs::write(
            &path,
            b"this is not sqlite, just some text that is long enough",
        )
        .unwrap();
        let err = SqliteDb::open(&path).err().expect("refused").to_string();
        assert!(err.contains("is not a SQLite database"), "{err}");
        assert!(
            !err.contains("delete"),
            "never advise deleting another file: {err}"
        );
        // A SQLite file whose pages are damaged is a state file gone bad: restore or delete.
        let mut bytes = SQLITE_HEADER.to_vec();
        bytes.extend(vec![0xAB; 4096]);
        std::fs::write(&path, bytes).unwrap();
        let err = SqliteDb::open(&path).err().expect("refused").to_string();
        assert!(
            err.contains("not a usable SQLite database") && err.contains("delete it"),
            "{err}"
        );
    }

    #[test]
    fn a_schema_2_file_gains_the_error_code_and_keeps_its_health() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE instances (name TEXT PRIMARY KEY, connector TEXT NOT NULL,
                     cursor TEXT, last_seq INTEGER NOT NULL DEFAULT 0,
                     delivered_seq INTEGER NOT NULL DEFAULT 0, created TEXT);
                 CREATE TABLE health (instance TEXT PRIMARY KEY, last_poll TEXT,
                     last_success TEXT, newest_event TEXT, events INTEGER NOT NULL DEFAULT 0,
                     requests INTEGER NOT NULL DEFAULT 0, throttled INTEGER NOT NULL DEFAULT 0,
                     waited_secs INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0,
                     last_error TEXT);
                 INSERT INTO instances (name, connector) VALUES ('a', 'entra');
                 INSERT INTO health (instance, events, failures, last_error)
                     VALUES ('a', 7, 2, 'boom');
                 PRAGMA user_version = 2;",
            )
            .unwrap();
        }
        let db = SqliteDb::open(&path).unwrap();
        let failure = PollHealth {
            at: "2026-11-20T12:00:00Z",
            ok: false,
            events: 0,
            requests: 0,
            throttled: 0,
            error: Some("no such component"),
            code: Some("host"),
            newest_event: None,
            degraded: None,
        };
        // An instance that never started (no state) still shows, with its error.
        db.record_poll("b", &failure).unwrap();
        let rows = db.health().unwrap();
        let summary: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    r.instance.as_str(),
                    r.connector.as_str(),
                    r.events,
                    r.failures,
                    r.last_error_code.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [("a", "entra", 7, 2, None), ("b", "-", 0, 1, Some("host"))]
        );
    }

    #[test]
    fn a_file_without_the_degraded_column_gains_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        SqliteDb::open(&path).unwrap();
        {
            // What a host before this column wrote: the same schema number, no column.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "ALTER TABLE health DROP COLUMN degraded;
                 INSERT INTO health (instance, events) VALUES ('a', 3);",
            )
            .unwrap();
        }
        let db = SqliteDb::open(&path).unwrap();
        let rows = db.health().unwrap();
        assert_eq!((rows[0].events, rows[0].degraded.len()), (3, 0));
    }
}
