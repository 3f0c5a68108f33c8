//! An instance's life in a state file beyond its polls: what it was created from (so a
//! second config file with the same default name is not handed another tenant's cursor),
//! its removal from `serve`'s directory, and `forget`, which deletes its state.

use rusqlite::{OptionalExtension, params};

use crate::holder::{has_table, live_holders};
use crate::state::{SqliteDb, StateDb, StateError};

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(
        "instance {instance:?} in {state} was created from {recorded}, not from {file}: a \
         second config file with the same name would continue another instance's cursor \
         (another tenant's, perhaps). Name this one with --instance <name>, or pass \
         --instance {instance} if {file} replaces {recorded}"
    )]
    OtherSource {
        state: String,
        instance: String,
        recorded: String,
        file: String,
    },
    #[error(
        "{state} holds no instance {instance:?}; `connector-host status --state {state}` lists them"
    )]
    Unknown { state: String, instance: String },
    #[error(transparent)]
    State(#[from] StateError),
}

fn sql(db: &SqliteDb) -> impl Fn(rusqlite::Error) -> StateError + '_ {
    |cause| StateError::Sql {
        path: db.path().to_path_buf(),
        cause,
    }
}

/// Records that `instance` runs from `source` (an absolute path). With `strict` (the name
/// was not given but taken from the file's name), an instance created from another file
/// is refused; otherwise the new source is recorded. A removed mark is cleared.
pub fn bind_source(
    db: &mut StateDb,
    instance: &str,
    source: &str,
    strict: bool,
) -> Result<(), LifecycleError> {
    let recorded: Option<Option<String>> = match db {
        StateDb::Sqlite(db) => db
            .conn()
            .query_row(
                "SELECT source FROM origins WHERE instance = ?1",
                [instance],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql(db))?,
        StateDb::Postgres(db) => db.origin(instance)?,
    };
    // An instance with state from before this table was kept has no recorded source: it is
    // adopted by its first file.
    if let Some(Some(recorded)) = &recorded
        && strict
        && recorded != source
    {
        return Err(LifecycleError::OtherSource {
            state: db.path().display().to_string(),
            instance: instance.into(),
            recorded: recorded.clone(),
            file: source.into(),
        });
    }
    match db {
        StateDb::Sqlite(db) => db
            .conn()
            .execute(
                "INSERT INTO origins (instance, source, removed) VALUES (?1, ?2, NULL)
                 ON CONFLICT (instance) DO UPDATE SET source = excluded.source, removed = NULL",
                params![instance, source],
            )
            .map(drop)
            .map_err(sql(db))?,
        StateDb::Postgres(db) => db.set_origin(instance, source)?,
    }
    Ok(())
}

/// Marks an instance whose `serve` file was removed: `status` shows it as removed and the
/// metrics leave it out, until it comes back or is forgotten.
pub fn mark_removed(db: &mut StateDb, instance: &str, at: &str) -> Result<(), StateError> {
    let db = match db {
        StateDb::Sqlite(db) => db,
        StateDb::Postgres(db) => return db.mark_removed(instance, at),
    };
    db.conn()
        .execute(
            "INSERT INTO origins (instance, source, removed) VALUES (?1, NULL, ?2)
             ON CONFLICT (instance) DO UPDATE SET removed = excluded.removed",
            params![instance, at],
        )
        .map(drop)
        .map_err(sql(db))
}

/// When each removed instance was removed, by instance (none in a schema-3 file).
pub fn removed(db: &mut StateDb) -> Result<std::collections::BTreeMap<String, String>, StateError> {
    let db = match db {
        StateDb::Sqlite(db) => db,
        StateDb::Postgres(db) => return db.removed(),
    };
    if !has_table(db, "origins").map_err(sql(db))? {
        return Ok(Default::default());
    }
    let mut stmt = db
        .conn()
        .prepare("SELECT instance, removed FROM origins WHERE removed IS NOT NULL")
        .map_err(sql(db))?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .and_then(|rows| rows.collect())
        .map_err(sql(db))?;
    Ok(rows)
}

/// Events committed but not yet delivered, by instance (instances with none are left out).
pub fn undelivered_counts(
    db: &mut StateDb,
) -> Result<std::collections::BTreeMap<String, u64>, StateError> {
    let db = match db {
        StateDb::Sqlite(db) => db,
        StateDb::Postgres(db) => return db.undelivered_counts(),
    };
    let mut stmt = db
        .conn()
        .prepare(
            "SELECT o.instance, count(*) FROM outbox o JOIN instances i ON i.name = o.instance
             WHERE o.seq > i.delivered_seq GROUP BY o.instance",
        )
        .map_err(sql(db))?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .and_then(|rows| rows.collect())
        .map_err(sql(db))?;
    Ok(rows)
}

/// What `forget` deleted: rows per table.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Forgotten {
    pub events_undelivered: u64,
    pub kv_keys: u64,
}

/// Deletes everything the state file holds of `instance` (cursor, KV, outbox, health,
/// origin), in one transaction. Refused while a live process holds the instance.
pub fn forget(db: &mut StateDb, instance: &str) -> Result<Forgotten, LifecycleError> {
    if let StateDb::Postgres(pg) = db {
        let (known, events_undelivered, kv_keys) = pg.forget(instance)?;
        if !known {
            return Err(LifecycleError::Unknown {
                state: pg.path().display().to_string(),
                instance: instance.into(),
            });
        }
        return Ok(Forgotten {
            events_undelivered,
            kv_keys,
        });
    }
    if let Some(h) = live_holders(db)?.remove(instance) {
        return Err(StateError::Held {
            path: db.path().to_path_buf(),
            instance: instance.into(),
            pid: h.pid,
            host: h.host,
            since: h.since,
        }
        .into());
    }
    let StateDb::Sqlite(db) = db else {
        unreachable!("PostgreSQL returned above")
    };
    let path = db.path().to_path_buf();
    let sql = |cause| StateError::Sql {
        path: path.clone(),
        cause,
    };
    let tx = crate::state::write_transaction(db.conn_mut()).map_err(sql)?;
    let count = |q: &str| -> Result<u64, StateError> {
        tx.query_row(q, [instance], |r| r.get(0)).map_err(sql)
    };
    let known = count("SELECT count(*) FROM instances WHERE name = ?1")?
        + count("SELECT count(*) FROM health WHERE instance = ?1")?
        + count("SELECT count(*) FROM origins WHERE instance = ?1")?;
    if known == 0 {
        return Err(LifecycleError::Unknown {
            state: path.display().to_string(),
            instance: instance.into(),
        });
    }
    let forgotten = Forgotten {
        events_undelivered: count(
            "SELECT count(*) FROM outbox o JOIN instances i ON i.name = o.instance
             WHERE o.instance = ?1 AND o.seq > i.delivered_seq",
        )?,
        kv_keys: count("SELECT count(*) FROM kv WHERE instance = ?1")?,
    };
    for table in [
        "DELETE FROM instances WHERE name = ?1",
        "DELETE FROM kv WHERE instance = ?1",
        "DELETE FROM outbox WHERE instance = ?1",
        "DELETE FROM health WHERE instance = ?1",
        "DELETE FROM origins WHERE instance = ?1",
        "DELETE FROM holders WHERE instance = ?1",
        "DELETE FROM sink_progress WHERE instance = ?1",
    ] {
        tx.execute(table, [instance]).map_err(sql)?;
    }
    tx.commit().map_err(sql)?;
    Ok(forgotten)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_file_with_the_same_default_name_is_refused_and_forget_clears_one_instance() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = StateDb::open(&dir.path().join("s.db")).unwrap();
        db.ensure_instance("alerts", "defender-alerts").unwrap();
        db.ensure_instance("other", "defender-alerts").unwrap();
        bind_source(&mut db, "alerts", "/t/acme/alerts.json", true).unwrap();
        bind_source(&mut db, "alerts", "/t/acme/alerts.json", true).unwrap();
        let err = bind_source(&mut db, "alerts", "/t/globex/alerts.json", true).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("/t/acme/alerts.json") && message.contains("--instance"),
            "{message}"
        );
        // Named explicitly: the file replaces the old one.
        bind_source(&mut db, "alerts", "/t/globex/alerts.json", false).unwrap();

        mark_removed(&mut db, "alerts", "2026-12-01T04:00:00Z").unwrap();
        assert_eq!(removed(&mut db).unwrap().len(), 1);
        forget(&mut db, "alerts").unwrap();
        assert!(removed(&mut db).unwrap().is_empty());
        assert_eq!(db.cursor("alerts").unwrap(), None);
        assert!(db.ensure_instance("other", "defender-alerts").is_ok());
        let names: Vec<_> = db
            .health()
            .unwrap()
            .into_iter()
            .map(|r| r.instance)
            .collect();
        assert_eq!(names, ["other"], "the other instance is untouched");
        assert!(matches!(
            forget(&mut db, "alerts"),
            Err(LifecycleError::Unknown { .. })
        ));
    }
}
