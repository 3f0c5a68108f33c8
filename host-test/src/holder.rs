//! One process at a time per instance of a state file.
//!
//! Two processes polling one instance deliver its events twice (two `run`) or split them
//! between their outputs (two `serve`). So a process claims an instance in the `holders`
//! table before it delivers anything, and a second one is refused, naming the holder.
//!
//! A holder that crashed cannot release its claim; the claim is therefore tied to the
//! process's identity (pid, host, and on Linux the boot and the process's start time, so a
//! reused pid is not taken for the holder) and a claim whose process is gone is taken
//! over. A holder on another host cannot be checked from here and always counts as alive.
//!
//! On a PostgreSQL store the claim is the instance's lease instead (see
//! [`crate::state::postgres`]): it expires unless renewed, so a host that died is taken over
//! after the lease TTL, wherever it ran.

use std::sync::{Arc, Mutex};

use rusqlite::{OptionalExtension, params};

use crate::state::{SqliteDb, StateDb, StateError};

/// A process as the `holders` table records it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    /// When it claimed the instance (RFC 3339).
    pub since: String,
    /// When it polls next (RFC 3339), once it has polled.
    pub next_poll: Option<String>,
    #[serde(skip)]
    process: String,
    /// On PostgreSQL: the lease the process holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
}

/// A fleet host's lease of an instance, as `status --json` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Lease {
    /// The host's id in the fleet (`host:pid:nonce`).
    pub owner: String,
    /// When it ends unless renewed (RFC 3339).
    pub until: Option<String>,
    /// The fencing token: raised at every take.
    pub token: i64,
}

impl Holder {
    /// Whether the process still runs (always true for another host's process).
    pub fn alive(&self) -> bool {
        if self.lease.is_some() || self.host != host_name() {
            return true;
        }
        process_alive(self.pid, &self.process)
    }
}

/// This process's claim on an instance; dropping it releases the claim.
pub struct Claim {
    state: Arc<Mutex<StateDb>>,
    instance: String,
}

impl Claim {
    /// Claims `instance` for this process at `now` (RFC 3339), or names the live process
    /// that holds it.
    pub fn take(
        state: &Arc<Mutex<StateDb>>,
        instance: &str,
        now: &str,
    ) -> Result<Claim, StateError> {
        let mut guard = state.lock().unwrap_or_else(|p| p.into_inner());
        let db = match &mut *guard {
            StateDb::Sqlite(db) => db,
            StateDb::Postgres(db) => {
                db.take_lease(instance, now)?;
                return Ok(Claim {
                    state: state.clone(),
                    instance: instance.into(),
                });
            }
        };
        let path = db.path().to_path_buf();
        let sql = |cause| StateError::Sql {
            path: path.clone(),
            cause,
        };
        let tx = crate::state::write_transaction(db.conn_mut()).map_err(sql)?;
        let current = tx
            .query_row(
                "SELECT pid, host, since, process, next_poll FROM holders WHERE instance = ?1",
                [instance],
                row_holder,
            )
            .optional()
            .map_err(sql)?;
        let me = (
            std::process::id(),
            host_name(),
            process_identity(std::process::id()),
        );
        if let Some(h) = current
            && (h.pid, &h.host, &h.process) != (me.0, &me.1, &me.2)
            && h.alive()
        {
            return Err(StateError::Held {
                path: path.clone(),
                instance: instance.into(),
                pid: h.pid,
                host: h.host,
                since: h.since,
            });
        }
        tx.execute(
            "INSERT OR REPLACE INTO holders (instance, pid, host, since, process, next_poll)
             VALUES (?1, ?2, ?3, ?4, ?5, NULL)",
            params![instance, me.0, me.1, now, me.2],
        )
        .map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok(Claim {
            state: state.clone(),
            instance: instance.into(),
        })
    }

    /// Records when this holder polls next (for `status`); a failure only costs the column.
    pub fn set_next_poll(&self, at: &str) {
        let mut db = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let result = match &mut *db {
            StateDb::Sqlite(db) => db
                .conn()
                .execute(
                    "UPDATE holders SET next_poll = ?2 WHERE instance = ?1 AND pid = ?3",
                    params![self.instance, at, std::process::id()],
                )
                .map(drop)
                .map_err(|e| e.to_string()),
            StateDb::Postgres(db) => db
                .set_next_poll(&self.instance, at)
                .map_err(|e| e.to_string()),
        };
        if let Err(e) = result {
            tracing::debug!(instance = %self.instance, "cannot record the next poll: {e}");
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut db = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let result = match &mut *db {
            StateDb::Sqlite(db) => db
                .conn()
                .execute(
                    "DELETE FROM holders WHERE instance = ?1 AND pid = ?2 AND host = ?3",
                    params![self.instance, std::process::id(), host_name()],
                )
                .map(drop)
                .map_err(|e| e.to_string()),
            // Not released (the store is unreachable): it expires after the lease TTL.
            StateDb::Postgres(db) => db.release_lease(&self.instance).map_err(|e| e.to_string()),
        };
        if let Err(e) = result {
            // The next claim finds this process gone and takes over.
            tracing::debug!(instance = %self.instance, "cannot release the claim: {e}");
        }
    }
}

/// Releases every claim of this process in one write: `serve`'s shutdown, once no poll
/// is in flight. Released one transaction per claim as each runner dropped, 100,000
/// instances took 26 s to stop; the drops that follow find nothing left to delete.
pub fn release_all(state: &Mutex<StateDb>) -> Result<(), StateError> {
    let mut db = state.lock().unwrap_or_else(|p| p.into_inner());
    match &mut *db {
        StateDb::Sqlite(db) => {
            let path = db.path().to_path_buf();
            db.conn()
                .execute(
                    "DELETE FROM holders WHERE pid = ?1 AND host = ?2",
                    params![std::process::id(), host_name()],
                )
                .map(drop)
                .map_err(|cause| StateError::Sql { path, cause })
        }
        StateDb::Postgres(db) => db.release_all_leases(),
    }
}

fn row_holder(r: &rusqlite::Row) -> rusqlite::Result<Holder> {
    Ok(Holder {
        pid: r.get(0)?,
        host: r.get(1)?,
        since: r.get(2)?,
        process: r.get(3)?,
        next_poll: r.get(4)?,
        lease: None,
    })
}

/// The live holders of a state file's instances, by instance (a state file of schema 3
/// has none).
pub fn live_holders(
    db: &mut StateDb,
) -> Result<std::collections::BTreeMap<String, Holder>, StateError> {
    let db = match db {
        StateDb::Sqlite(db) => db,
        StateDb::Postgres(db) => {
            return Ok(db
                .live_leases()?
                .into_iter()
                .map(|(instance, l)| {
                    let holder = Holder {
                        pid: l.pid,
                        host: l.host,
                        since: l.since,
                        next_poll: l.next_poll,
                        process: String::new(),
                        lease: Some(Lease {
                            owner: l.owner,
                            until: l.until,
                            token: l.token,
                        }),
                    };
                    (instance, holder)
                })
                .collect());
        }
    };
    let sql = |cause| StateError::Sql {
        path: db.path().to_path_buf(),
        cause,
    };
    if !has_table(db, "holders").map_err(sql)? {
        return Ok(Default::default());
    }
    let mut stmt = db
        .conn()
        .prepare("SELECT pid, host, since, process, next_poll, instance FROM holders")
        .map_err(sql)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(5)?, row_holder(r)?)))
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(sql)?;
    Ok(rows.into_iter().filter(|(_, h)| h.alive()).collect())
}

pub(crate) fn has_table(db: &SqliteDb, table: &str) -> rusqlite::Result<bool> {
    db.conn()
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [table],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
}

/// This machine's name, as `hostname` prints it.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// What tells this run of process `pid` from a later process with the same pid: on
/// Linux the boot ID and the process's start time; elsewhere nothing beyond the pid.
pub(crate) fn process_identity(pid: u32) -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    match start_time(pid) {
        Some(start) => format!("{}:{start}", boot.trim()),
        None => String::new(),
    }
}

/// Field 22 of `/proc/<pid>/stat`: the start time in clock ticks after boot.
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19).map(str::to_string)
}

pub(crate) fn process_alive(pid: u32, identity: &str) -> bool {
    if std::path::Path::new("/proc/self/stat").exists() {
        return !identity.is_empty() && process_identity(pid) == identity
            || identity.is_empty() && start_time(pid).is_some();
    }
    signal_zero(pid)
}

/// Whether a process with this pid exists (no /proc: macOS, the BSDs).
#[cfg(unix)]
fn signal_zero(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(not(unix))]
fn signal_zero(_pid: u32) -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(dir: &std::path::Path) -> Arc<Mutex<StateDb>> {
        Arc::new(Mutex::new(StateDb::open(&dir.join("s.db")).unwrap()))
    }

    fn sqlite(db: &StateDb) -> &SqliteDb {
        match db {
            StateDb::Sqlite(db) => db,
            StateDb::Postgres(_) => unreachable!("a file path opens SQLite"),
        }
    }

    #[test]
    fn a_live_holder_refuses_a_second_claim_and_a_dead_one_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let state = db(dir.path());
        // A live process that is not this one: a child that sleeps.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let identity = process_identity(pid);
        sqlite(&state.lock().unwrap())
            .conn()
            .execute(
                "INSERT INTO holders (instance, pid, host, since, process) VALUES ('a', ?1, ?2, '2026-12-01T03:00:00Z', ?3)",
                params![pid, host_name(), identity],
            )
            .unwrap();
        let err = Claim::take(&state, "a", "2026-12-01T04:00:00Z")
            .err()
            .expect("held");
        let message = err.to_string();
        assert!(
            message.contains(&format!("process {pid}"))
                && message.contains("since 2026-12-01T03:00:00Z"),
            "{message}"
        );
        assert_eq!(live_holders(&mut state.lock().unwrap()).unwrap().len(), 1);
        child.kill().unwrap();
        child.wait().unwrap();
        // The holder is gone: its claim no longer blocks.
        assert!(live_holders(&mut state.lock().unwrap()).unwrap().is_empty());
        let claim = Claim::take(&state, "a", "2026-12-01T04:00:00Z").expect("taken over");
        let holders = live_holders(&mut state.lock().unwrap()).unwrap();
        assert_eq!(holders["a"].pid, std::process::id());
        // Claiming again from the same process (serve restarting an instance) is allowed.
        drop(Claim::take(&state, "a", "2026-12-01T04:01:00Z").unwrap());
        drop(claim);
        assert!(
            live_holders(&mut state.lock().unwrap()).unwrap().is_empty(),
            "released on drop"
        );
    }

    #[test]
    fn release_all_frees_every_claim_of_this_process_and_only_those() {
        let dir = tempfile::tempdir().unwrap();
        let state = db(dir.path());
        let claims: Vec<Claim> = ["a", "b", "c"]
            .iter()
            .map(|i| Claim::take(&state, i, "2026-12-01T04:00:00Z").unwrap())
            .collect();
        // Another host's claim is not this process's to release.
        sqlite(&state.lock().unwrap())
            .conn()
            .execute(
                "INSERT INTO holders (instance, pid, host, since, process) VALUES ('d', 7, 'elsewhere', 'then', '')",
                [],
            )
            .unwrap();
        assert_eq!(live_holders(&mut state.lock().unwrap()).unwrap().len(), 4);
        release_all(&state).unwrap();
        let left = live_holders(&mut state.lock().unwrap()).unwrap();
        assert_eq!(left.keys().collect::<Vec<_>>(), ["d"]);
        drop(claims);
        assert_eq!(live_holders(&mut state.lock().unwrap()).unwrap().len(), 1);
    }

    #[test]
    fn a_reused_pid_is_not_taken_for_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let state = db(dir.path());
        // This process's pid, but another start: the recorded holder is gone.
        sqlite(&state.lock().unwrap())
            .conn()
            .execute(
                "INSERT INTO holders (instance, pid, host, since, process) VALUES ('a', ?1, ?2, 'then', 'another-boot:1')",
                params![std::process::id(), host_name()],
            )
            .unwrap();
        assert!(live_holders(&mut state.lock().unwrap()).unwrap().is_empty());
    }
}
