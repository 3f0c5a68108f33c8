//! The state store's tests, each run against both backends: a SQLite file in a temp dir
//! and a database of a throwaway PostgreSQL server (one server per test process).

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use super::*;

#[path = "../../tests/support/postgres.rs"]
mod pg_server;

use pg_server::PgServer;

fn server() -> &'static PgServer {
    static SERVER: OnceLock<PgServer> = OnceLock::new();
    SERVER.get_or_init(PgServer::start)
}

/// A fresh store of each backend: (what `--state` would say, the store). The temp dir
/// of the SQLite file is kept for the test process's life.
fn backends(test: &str) -> Vec<(PathBuf, StateDb)> {
    let dir = tempfile::tempdir().unwrap().keep();
    let file = dir.join("s.db");
    let url = PathBuf::from(server().database(&format!("t_{test}")));
    vec![
        (file.clone(), StateDb::open(&file).unwrap()),
        (url.clone(), StateDb::open(&url).unwrap()),
    ]
}

/// Takes the instance's lease on PostgreSQL, as a runner does before it commits.
fn hold(db: &mut StateDb, instance: &str) {
    if let Some(pg) = db.postgres() {
        pg.take_lease(instance, "2026-12-01T06:00:00Z").unwrap();
    }
}

fn pg(url: &str) -> PgDb {
    match StateDb::open(std::path::Path::new(url)).unwrap() {
        StateDb::Postgres(db) => *db,
        StateDb::Sqlite(_) => unreachable!("a postgres:// URL opens PostgreSQL"),
    }
}

#[test]
fn a_poll_commits_lines_cursor_and_kv_together_and_delivery_drains_the_outbox() {
    for (store, mut db) in backends("commit") {
        println!("{}", store.display());
        db.ensure_instance("a", "defender-alerts").unwrap();
        hold(&mut db, "a");
        let kv: KvWrites = [("k".to_string(), Some("v".to_string()))].into();
        let seqs = db
            .commit_poll(
                "a",
                2,
                |seq, i| format!("{seq}:{i}"),
                "c1",
                &kv,
                &PollHealth {
                    at: "2026-11-20T12:00:00Z",
                    ok: true,
                    events: 2,
                    requests: 1,
                    throttled: 0,
                    error: None,
                    code: None,
                    newest_event: Some("2026-11-20T11:00:00.000Z"),
                    degraded: None,
                },
            )
            .unwrap();
        assert_eq!(seqs, 1..=2);
        assert_eq!(db.cursor("a").unwrap().as_deref(), Some("c1"));
        assert_eq!(db.kv_get("a", "k").unwrap().as_deref(), Some("v"));
        let health = &db.health().unwrap()[0];
        assert_eq!(
            (health.events, health.failures),
            (2, 0),
            "health commits with the poll"
        );
        assert_eq!(db.undelivered("a").unwrap().len(), 2);
        db.mark_delivered("a", 1).unwrap();
        assert_eq!(db.undelivered("a").unwrap(), vec![(2, "2:1".to_string())]);
        assert_eq!(db.seqs("a").unwrap(), (2, 1));
        let err = db.ensure_instance("a", "entra").unwrap_err();
        assert!(
            err.to_string()
                .contains("was created by defender-alerts; the component is entra"),
            "{err}"
        );
    }
}

#[test]
fn a_committed_poll_replaces_the_degraded_list_and_a_failed_one_keeps_it() {
    for (path, mut db) in backends("degraded") {
        db.ensure_instance("a", "entra").unwrap();
        hold(&mut db, "a");
        let commit = |db: &mut StateDb, degraded: &[Degraded]| {
            db.commit_poll(
                "a",
                0,
                |_, _| unreachable!(),
                "c",
                &KvWrites::new(),
                &poll_health(true, Some(degraded)),
            )
            .unwrap();
        };
        let stored = |db: &mut StateDb| db.health().unwrap()[0].degraded.clone();
        assert!(stored(&mut db).is_empty(), "no poll yet: nothing degraded");

        let throttled = vec![Degraded {
            data_type: "risk_detections".into(),
            code: "throttled".into(),
            message: "429 \"quoted\", waiting 60 s".into(),
        }];
        commit(&mut db, &throttled);
        assert_eq!(stored(&mut db), throttled);

        // A failed poll says nothing about the types: the list stays.
        db.record_poll("a", &poll_health(false, None)).unwrap();
        assert_eq!(stored(&mut db), throttled);

        // It survives a reopen (the column is there, nothing is added twice).
        if let Some(pg) = db.postgres() {
            pg.release_lease("a").unwrap();
        }
        drop(db);
        let mut db = StateDb::open(&path).unwrap();
        hold(&mut db, "a");
        assert_eq!(stored(&mut db), throttled);

        let two = vec![
            Degraded {
                data_type: "incidents".into(),
                code: "fallback".into(),
                message: "without $expand=alerts".into(),
            },
            Degraded {
                data_type: "alerts".into(),
                code: "failing".into(),
                message: "400".into(),
            },
        ];
        commit(&mut db, &two);
        assert_eq!(stored(&mut db), two, "replaced, in the connector's order");
        commit(&mut db, &[]);
        assert!(
            stored(&mut db).is_empty(),
            "a poll reporting none clears it"
        );
    }
}

fn poll_health<'a>(ok: bool, degraded: Option<&'a [Degraded]>) -> PollHealth<'a> {
    PollHealth {
        at: "2026-11-20T12:00:00Z",
        ok,
        events: 0,
        requests: 1,
        throttled: 0,
        error: (!ok).then_some("boom"),
        code: (!ok).then_some("transient"),
        newest_event: None,
        degraded,
    }
}

fn commit(
    db: &mut PgDb,
    instance: &str,
    count: usize,
) -> Result<std::ops::RangeInclusive<u64>, StateError> {
    db.commit_poll(
        instance,
        count,
        |seq, _| format!("line {seq}"),
        "cursor",
        &KvWrites::new(),
        &poll_health(true, None),
    )
}

#[test]
fn sink_state_keeps_the_webhook_batch_and_error_count_until_forget() {
    for (store, mut db) in backends("sink") {
        println!("{}", store.display());
        db.ensure_instance("a", "defender-alerts").unwrap();
        db.ensure_instance("b", "defender-alerts").unwrap();
        hold(&mut db, "a");
        hold(&mut db, "b");
        assert_eq!(db.sink_batch("a").unwrap(), None);
        assert!(db.sink_errors().unwrap().is_empty());

        // The error count and the batch share a row: neither write clears the other.
        db.add_sink_error("a").unwrap();
        db.set_sink_batch("a", 3, 7).unwrap();
        db.add_sink_error("a").unwrap();
        db.set_sink_batch("b", 1, 1).unwrap();
        assert_eq!(db.sink_batch("a").unwrap(), Some((3, 7)));
        db.set_sink_batch("a", 8, 9).unwrap();
        assert_eq!(db.sink_batch("a").unwrap(), Some((8, 9)));
        assert_eq!(db.sink_batch("b").unwrap(), Some((1, 1)));
        assert_eq!(
            db.sink_errors().unwrap(),
            [("a".to_string(), 2)].into(),
            "an instance without errors is absent"
        );

        if let Some(pg) = db.postgres() {
            pg.release_lease("a").unwrap();
        }
        crate::lifecycle::forget(&mut db, "a").unwrap();
        assert_eq!(db.sink_batch("a").unwrap(), None, "forget clears the batch");
        assert!(db.sink_errors().unwrap().is_empty(), "and the error count");
        assert_eq!(
            db.sink_batch("b").unwrap(),
            Some((1, 1)),
            "only of that instance"
        );
    }
}

#[test]
fn a_host_that_lost_its_lease_commits_and_delivers_nothing() {
    let url = server().database("t_fencing");
    let (mut a, mut b) = (pg(&url), pg(&url));
    a.set_lease_ttl(Duration::from_secs(1));
    b.set_lease_ttl(Duration::from_secs(1));
    a.ensure_instance("x", "entra").unwrap();
    a.take_lease("x", "now").unwrap();
    assert_eq!(commit(&mut a, "x", 2).unwrap(), 1..=2);
    let refused = b.take_lease("x", "now").unwrap_err().to_string();
    assert!(
        refused.contains("is leased by") && refused.contains(a.host_id()),
        "{refused}"
    );

    // A stops renewing (a SIGSTOP); its lease expires and B takes the instance over.
    std::thread::sleep(Duration::from_millis(1300));
    b.take_lease("x", "now").unwrap();
    let fenced = commit(&mut a, "x", 5).unwrap_err();
    assert!(matches!(fenced, StateError::Fenced { .. }), "{fenced}");
    assert!(matches!(
        a.mark_delivered("x", 2),
        Err(StateError::Fenced { .. })
    ));
    assert!(matches!(a.check_lease("x"), Err(StateError::Fenced { .. })));
    assert!(
        matches!(a.set_sink_batch("x", 1, 2), Err(StateError::Fenced { .. })),
        "a fenced host must not change the batch its successor re-sends"
    );
    assert_eq!(b.sink_batch("x").unwrap(), None);
    assert_eq!(
        a.renew().unwrap(),
        ["x"],
        "the renewal reports the lease lost"
    );
    assert_eq!(
        b.seqs("x").unwrap(),
        (2, 0),
        "nothing of A's after the takeover"
    );
    assert_eq!(commit(&mut b, "x", 1).unwrap(), 3..=3, "seq goes on at B");
    b.mark_delivered("x", 3).unwrap();

    let leases = b.live_leases().unwrap();
    assert_eq!(leases["x"].owner, b.host_id());
    assert_eq!(leases["x"].token, 2, "the token rose with the takeover");
    // B releases (SIGTERM): A may take it at once, with a higher token.
    b.release_lease("x").unwrap();
    a.take_lease("x", "now").unwrap();
    assert_eq!(a.live_leases().unwrap()["x"].token, 3);
    assert!(matches!(
        b.mark_delivered("x", 3),
        Err(StateError::Fenced { .. })
    ));
}

#[test]
fn releasing_every_lease_at_once_frees_only_this_hosts() {
    let url = server().database("t_release_all");
    let (mut a, mut b) = (pg(&url), pg(&url));
    for i in ["x", "y", "z"] {
        a.ensure_instance(i, "entra").unwrap();
    }
    a.take_lease("x", "now").unwrap();
    a.take_lease("y", "now").unwrap();
    b.take_lease("z", "now").unwrap();
    a.release_all_leases().unwrap();
    let leases = b.live_leases().unwrap();
    assert_eq!(leases.keys().collect::<Vec<_>>(), ["z"], "B keeps its own");
    // B takes A's at once; A's later per-instance release (a runner's drop) is a no-op.
    b.take_lease("x", "now").unwrap();
    a.release_lease("x").unwrap();
    assert_eq!(b.live_leases().unwrap()["x"].owner, b.host_id());
}

#[test]
fn hosts_take_at_most_their_fair_share_and_give_back_the_excess() {
    let url = server().database("t_share");
    let (mut a, mut b) = (pg(&url), pg(&url));
    for db in [&mut a, &mut b] {
        db.set_fleet_size(4);
    }
    a.renew().unwrap();
    // Alone, A may take all four.
    for i in ["i1", "i2", "i3", "i4"] {
        a.take_lease(i, "now").unwrap();
    }
    // B arrives: its share is two, which A holds; A gives back the excess, one at a time.
    b.renew().unwrap();
    assert!(matches!(
        b.take_lease("i1", "now"),
        Err(StateError::Leased { .. })
    ));
    assert!(a.over_share("i1").unwrap());
    assert!(a.over_share("i2").unwrap());
    assert!(!a.over_share("i3").unwrap(), "A keeps its share");
    b.take_lease("i1", "now").unwrap();
    b.take_lease("i2", "now").unwrap();
    // B at its share takes no more, even a free one.
    a.release_lease("i3").unwrap();
    let err = b.take_lease("i3", "now").unwrap_err();
    assert!(
        matches!(
            err,
            StateError::FairShare {
                held: 2,
                hosts: 2,
                ..
            }
        ),
        "{err}"
    );
    // A leaves the fleet: B's share is all four.
    a.leave_fleet().unwrap();
    a.release_lease("i4").unwrap();
    b.take_lease("i3", "now").unwrap();
    b.take_lease("i4", "now").unwrap();
}

#[test]
fn a_password_never_shows_and_an_unreachable_server_names_the_fix() {
    let url = format!(
        "postgres://u:s3cr3t-pw@127.0.0.1:{}/db",
        pg_server_free_port()
    );
    let err = StateDb::open(std::path::Path::new(&url))
        .err()
        .unwrap()
        .to_string();
    assert!(!err.contains("s3cr3t-pw"), "{err}");
    assert!(
        err.contains("u:***@127.0.0.1") && err.contains("check that the server runs"),
        "{err}"
    );
    assert_eq!(
        postgres::redact_url("postgresql://app:pw@db.internal:5432/state?sslmode=disable"),
        "postgresql://app:***@db.internal:5432/state?sslmode=disable"
    );
}

fn pg_server_free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn migrations_are_idempotent_and_a_foreign_database_is_left_alone() {
    let url = server().database("t_migrate");
    let mut first = pg(&url);
    first.ensure_instance("a", "entra").unwrap();
    // A second open (another host starting) migrates nothing and sees the same state.
    let mut second = pg(&url);
    assert_eq!(second.seqs("a").unwrap(), (0, 0));

    let foreign = server().database("t_foreign");
    let mut client = ::postgres::Client::connect(&foreign, ::postgres::NoTls).unwrap();
    client
        .batch_execute("CREATE TABLE instances (id INT)")
        .unwrap();
    let err = StateDb::open(std::path::Path::new(&foreign))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("holds no connector state") && err.contains("\"instances\""),
        "{err}"
    );
}
