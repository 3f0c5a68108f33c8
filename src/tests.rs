//! Behaviour of a connector instance against a scripted host: windows and paging,
//! dedup across overlapping windows, token refresh, throttling, bounded retries,
//! refused next links, the backfill lock and every validation cause.

use serde_json::{Value, json};

use crate::connector::DataType;
use crate::cursor::Cursor;
use crate::runtime::Instance;
use crate::testing::{CLIENT, FakePlatform, TENANT, poll, token_error, token_ok};
use crate::time::Timestamp;
use crate::types::{Batch, HttpError, PollError, ValidationCode};

const ALERTS: DataType = DataType::new(
    "alerts",
    "test.alert",
    "/v1.0/security/alerts_v2",
    &["SecurityAlert.Read.All", "SecurityAlert.ReadWrite.All"],
    "createdDateTime",
    2,
)
.versioned_by("lastUpdateDateTime");

const AUDITS: DataType = DataType::new(
    "audits",
    "test.audit",
    "/v1.0/auditLogs/directoryAudits",
    &["AuditLog.Read.All"],
    "activityDateTime",
    2,
)
.ordered();

crate::testing::test_connector!(Test, "test", &[ALERTS, AUDITS], default & ["alerts"]);

const GRAPH: &str = "https://graph.microsoft.com";

fn instance(p: &FakePlatform, extra: &str) -> Instance {
    let doc =
        format!(r#"{{"tenant_id":"{TENANT}","client_id":"{CLIENT}","backfill_days":1{extra}}}"#);
    Instance::configure::<Test>(p, &doc).unwrap()
}

fn alert(id: &str, updated: &str) -> Value {
    json!({"id": id, "createdDateTime": "2026-11-19T00:00:00Z", "lastUpdateDateTime": updated, "title": "t"})
}

fn page(records: Vec<Value>, next: Option<&str>) -> Value {
    match next {
        Some(n) => json!({"value": records, "@odata.nextLink": n}),
        None => json!({"value": records}),
    }
}

fn ids(b: &Batch) -> Vec<(String, String)> {
    b.events
        .iter()
        .map(|e| (e.id.clone(), e.version.clone()))
        .collect()
}

#[test]
fn backfill_pages_the_whole_window_before_moving_the_watermark() {
    let p = FakePlatform::new();
    let mut i = instance(&p, "");
    p.respond_json(200, token_ok(&["SecurityAlert.Read.All"]));
    let next = format!("{GRAPH}/v1.0/security/alerts_v2?$skip=2");
    p.respond_json(
        200,
        page(
            vec![
                alert("a3", "2026-11-20T11:00:00Z"),
                alert("a2", "2026-11-20T10:00:00Z"),
            ],
            Some(&next),
        ),
    );
    let first = poll(&mut i, &p, None).unwrap();
    assert!(first.more, "a next page is pending");
    assert_eq!(
        ids(&first),
        [
            ("a3".into(), "2026-11-20T11:00:00Z".into()),
            ("a2".into(), "2026-11-20T10:00:00Z".into())
        ]
    );
    let e = &first.events[0];
    assert_eq!(
        (e.kind.as_str(), e.timestamp.as_str()),
        ("test.alert", "2026-11-19T00:00:00Z")
    );
    assert_eq!(
        serde_json::from_str::<Value>(&e.payload).unwrap(),
        alert("a3", "2026-11-20T11:00:00Z")
    );
    assert_eq!(
        p.urls()[1],
        format!(
            "{GRAPH}/v1.0/security/alerts_v2?$filter=lastUpdateDateTime%20ge%202026-11-19T12%3A00%3A00Z%20and%20lastUpdateDateTime%20le%202026-11-20T12%3A00%3A00Z&$top=2"
        ),
        "the first window starts backfill_days before now and ends now"
    );
    let c = Cursor::decode(&first.cursor, "test").unwrap();
    assert_eq!(
        c.streams["alerts"].from, "2026-11-19T12:00:00.000000000Z",
        "watermark holds while paging"
    );

    p.respond_json(200, page(vec![alert("a1", "2026-11-19T13:00:00Z")], None));
    let second = poll(&mut i, &p, Some(&first.cursor)).unwrap();
    assert!(
        !second.more,
        "the window this instance opened is paged through"
    );
    assert_eq!(ids(&second), [("a1".into(), "2026-11-19T13:00:00Z".into())]);
    assert_eq!(p.urls()[2], next, "the next link is followed as given");
    let c = Cursor::decode(&second.cursor, "test").unwrap();
    assert_eq!(
        c.streams["alerts"].from, "2026-11-20T11:45:00.000000000Z",
        "the window's end minus the overlap"
    );
    assert_eq!(p.requests().len(), 3, "one token for the whole backfill");

    // A fresh component instance (`serve` makes one per poll) finishing the window an
    // earlier one opened: one more window follows at once, with the token the host cached.
    let mut fresh = instance(&p, "");
    p.respond_json(200, page(vec![alert("a1", "2026-11-19T13:00:00Z")], None));
    let resumed = poll(&mut fresh, &p, Some(&first.cursor)).unwrap();
    assert!(resumed.more, "a resumed window is followed by a fresh one");
    p.respond_json(200, page(vec![], None));
    let caught_up = poll(&mut fresh, &p, Some(&resumed.cursor)).unwrap();
    assert!(!caught_up.more, "the window it opened ends the catch-up");
}

#[test]
fn overlapping_windows_deliver_each_version_once() {
    let p = FakePlatform::new();
    let mut i = instance(&p, "");
    p.respond_json(200, token_ok(&["SecurityAlert.Read.All"]));
    p.respond_json(
        200,
        page(
            vec![
                alert("a1", "2026-11-20T11:55:00Z"),
                alert("a0", "2026-11-20T11:00:00Z"),
            ],
            None,
        ),
    );
    let first = poll(&mut i, &p, None).unwrap();
    assert_eq!(first.events.len(), 2);

    // The next window reaches back 10 minutes: a1 comes again unchanged, a0 updated, a2 new.
    p.now.set(p.now.get().plus_secs(120));
    p.respond_json(
        200,
        page(
            vec![
                alert("a2", "2026-11-20T12:01:00Z"),
                alert("a0", "2026-11-20T11:58:00Z"),
                alert("a1", "2026-11-20T11:55:00Z"),
            ],
            None,
        ),
    );
    let second = poll(&mut i, &p, Some(&first.cursor)).unwrap();
    assert_eq!(
        ids(&second),
        [
            ("a2".into(), "2026-11-20T12:01:00Z".into()),
            ("a0".into(), "2026-11-20T11:58:00Z".into())
        ]
    );
    assert!(
        p.urls()[2].contains("ge%202026-11-20T11%3A45%3A00Z"),
        "{}",
        p.urls()[2]
    );

    // A restart (new instance, same KV and cursor) still remembers what was delivered.
    p.restart();
    let mut restarted = instance(&p, "");
    p.respond_json(200, token_ok(&["SecurityAlert.Read.All"]));
    p.respond_json(200, page(vec![alert("a2", "2026-11-20T12:01:00Z")], None));
    assert!(
        poll(&mut restarted, &p, Some(&second.cursor))
            .unwrap()
            .events
            .is_empty()
    );
}

#[test]
fn an_expired_token_is_refreshed_once() {
    let p = FakePlatform::new();
    let mut i = instance(&p, "");
    p.respond_json(200, token_ok(&["SecurityAlert.Read.All"]));
    p.respond_json(401, json!({"error": {"code": "InvalidAuthenticationToken", "message": "Lifetime validation failed"}}));
    p.respond_json(200, token_ok(&["SecurityAlert.Read.All"]));
    p.respond_json(200, page(vec![alert("a1", "2026-11-20T11:00:00Z")], None));
    let b = poll(&mut i, &p, None).unwrap();
    assert_eq!(b.events.len(), 1);
    let methods: Vec<String> = p.requests().iter().map(|r| r.method.clone()).collect();
    assert_eq!(
        methods,
        ["POST", "GET", "POST", "GET"],
        "one refresh, one retry"
    );

    p.respond_json(
        401,
        json!({"error": {"code": "InvalidAuthenticationToken", "message": "x"}}),
    );
    p.respond_json(200, token_ok(&["SecurityAlert.Read.All"]));
    p.respond_json(
        401,
        json!({"error": {"code": "InvalidAuthenticationToken", "message": "still"}}),
    );
    match poll(&mut i, &p, Some(&b.cursor)) {
        Err(PollError::Auth(m)) => assert!(m.contains("401") && m.contains("still"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_new_instance_takes_the_token_from_the_host_cache_with_its_roles_and_a_401_clears_it() {
    let p = FakePlatform::new();
    let mut first = instance(&p, "");
    p.respond_json(200, token_ok(&["SecurityAlert.Read.All"]));
    p.respond_json(200, page(vec![], None));
    let cursor = poll(&mut first, &p, None).unwrap().cursor;
    assert!(p.token_cache.borrow().is_some(), "the token was stored");

    // The next poll's instance: no token request, and the roles come with the token.
    let mut second = instance(&p, "");
    p.respond_json(200, page(vec![], None));
    poll(&mut second, &p, Some(&cursor)).unwrap();
    assert_eq!(
        p.requests().iter().filter(|r| r.method == "POST").count(),
        1
    );
    assert_eq!(
        second.token(&p).unwrap().roles,
        ["SecurityAlert.Read.All"],
        "roles read from the cached token"
    );

    // Graph refuses it: the cached copy goes too, and the new token replaces it.
    let expires = p.token_cache.borrow().clone().unwrap().1;
    *p.token_cache.borrow_mut() = Some(("refused.token.value".into(), expires));
    let refused = "refused.token.value".to_string();
    let mut third = instance(&p, "");
    p.respond_json(
        401,
        json!({"error": {"code": "InvalidAuthenticationToken", "message": "x"}}),
    );
    p.respond_json(200, token_ok(&["SecurityAlert.Read.All"]));
    p.respond_json(200, page(vec![], None));
    poll(&mut third, &p, Some(&cursor)).unwrap();
    assert_eq!(
        p.requests().iter().filter(|r| r.method == "POST").count(),
        2
    );
    let stored = p.token_cache.borrow().clone().unwrap().0;
    assert_ne!(stored, refused, "the refused token is no longer cached");
}

#[test]
fn the_token_is_reused_until_shortly_before_expiry() {
    let p = FakePlatform::new();
    let mut i = instance(&p, "");
    p.respond_json(200, token_ok(&["SecurityAlert.Read.All"]));
    let mut cursor = None;
    for minute in [0, 30, 54] {
        p.now.set(
            Timestamp::parse("2026-11-20T12:00:00Z")
                .unwrap()
                .plus_secs(minute * 60),
        );
        p.respond_json(200, page(vec![], None));
        cursor = Some(poll(&mut i, &p, cursor.as_deref()).unwrap().cursor);
    }
    assert_eq!(
        p.requests().iter().filter(|r| r.method == "POST").count(),
        1
    );
    p.now.set(p.now.get().plus_secs(60));
    p.respond_json(200, token_ok(&["SecurityAlert.Read.All"]));
    p.respond_json(200, page(vec![], None));
    poll(&mut i, &p, cursor.as_deref()).unwrap();
    assert_eq!(
        p.requests().iter().filter(|r| r.method == "POST").count(),
        2,
        "renewed 5 minutes before expiry"
    );
}

#[test]
fn throttling_is_honoured_and_keeps_the_cursor() {
    let p = FakePlatform::new();
    let mut i = instance(&p, "");
    p.respond_json(200, token_ok(&["SecurityAlert.Read.All"]));
    p.respond(429, &[("retry-after", "30")], b"{}");
    match poll(&mut i, &p, None) {
        Err(PollError::RateLimited(r)) => assert_eq!(r.after_secs, 30),
        other => panic!("{other:?}"),
    }
    assert!(
        p.kv.borrow()
            .keys()
            .all(|k| k == "instance" || k == "health:alerts"),
        "a failed poll leaves only the instance's origin (fixed at the first attempt) and the type's health"
    );
    p.now.set(p.now.get().plus_secs(30));
    p.respond(429, &[], b"{}");
    match poll(&mut i, &p, None) {
        Err(PollError::RateLimited(r)) => assert!(
            (2..=4).contains(&r.after_secs),
            "backoff when not told (the second failure in a row): {r:?}"
        ),
        other => panic!("{other:?}"),
    }
    // Polled again before the backoff is over: it asks the host to wait instead of calling
    // Graph.
    let early = poll(&mut i, &p, None).unwrap();
    assert!(early.events.is_empty() && early.more, "{early:?}");
    assert!(matches!(early.wait_secs, Some(2..=4)), "{early:?}");
    assert_eq!(early.degraded.len(), 1, "{:?}", early.degraded);
    p.now.set(p.now.get().plus_secs(4));
    p.respond_json(200, page(vec![alert("a1", "2026-11-20T11:00:00Z")], None));
    let ok = poll(&mut i, &p, None).unwrap();
    assert_eq!(ok.events.len(), 1);
    assert!(ok.degraded.is_empty(), "success clears the health record");
    assert_eq!(
        p.kv.borrow()["health:alerts"],
        "{}",
        "success resets the count"
    );
}

#[test]
fn transient_failures_back_off_then_give_up() {
    let p = FakePlatform::new();
    let mut i = instance(&p, "");
    p.respond_json(200, token_ok(&["SecurityAlert.Read.All"]));
    let mut waits = Vec::new();
    for n in 0..4 {
        if n % 2 == 0 {
            p.respond(502, &[], b"bad gateway")
        } else {
            p.respond_err(HttpError::Connection("reset".into()))
        }
        match poll(&mut i, &p, None) {
            Err(PollError::Transient(r)) => waits.push(r.after_secs),
            other => panic!("{other:?}"),
        }
        // The host waits as told before it polls again.
        p.now
            .set(p.now.get().plus_secs(i64::from(*waits.last().unwrap())));
    }
    assert_eq!(waits, [2, 4, 8, 16]);
    p.respond_err(HttpError::Timeout);
    match poll(&mut i, &p, None) {
        Err(PollError::Fatal(m)) => assert!(
            m.contains("gave up after 5 attempts") && m.contains("did not answer in time"),
            "{m}"
        ),
        other => panic!("{other:?}"),
    }
    p.now.set(p.now.get().plus_secs(64));
    p.respond(500, &[], b"");
    assert!(
        matches!(poll(&mut i, &p, None), Err(PollError::Transient(r)) if r.after_secs == 2),
        "count starts over"
    );
}

#[test]
fn a_malformed_page_fails_the_poll_without_moving_anything() {
    let p = FakePlatform::new();
    let mut i = instance(&p, "");
    p.respond_json(200, token_ok(&["SecurityAlert.Read.All"]));
    p.respond(200, &[], b"{\"value\": [{\"id\": \"a1\"");
    match poll(&mut i, &p, None) {
        Err(PollError::Transient(r)) => assert!(
            r.message.contains("not a Graph collection"),
            "{}",
            r.message
        ),
        other => panic!("{other:?}"),
    }
    assert!(
        p.kv.borrow()
            .keys()
            .all(|k| k == "instance" || k == "health:alerts")
    );
}

#[test]
fn records_without_id_or_time_are_skipped_with_a_warning() {
    let p = FakePlatform::new();
    let mut i = instance(&p, "");
    p.respond_json(200, token_ok(&["SecurityAlert.Read.All"]));
    p.respond_json(
        200,
        page(
            vec![
                json!({"title": "no id"}),
                json!({"id": "x", "lastUpdateDateTime": "soon"}),
                json!(7),
                alert("a1", "2026-11-20T11:00:00Z"),
            ],
            None,
        ),
    );
    assert_eq!(
        ids(&poll(&mut i, &p, None).unwrap()),
        [("a1".into(), "2026-11-20T11:00:00Z".into())]
    );
    assert!(
        p.logs
            .borrow()
            .iter()
            .any(|(_, m)| m.contains("skipped 3 record(s)"))
    );
}

#[test]
fn a_foreign_next_link_is_refused_and_gets_no_token() {
    let p = FakePlatform::new();
    let mut i = instance(&p, "");
    p.respond_json(200, token_ok(&["SecurityAlert.Read.All"]));
    p.respond_json(
        200,
        page(
            vec![alert("a1", "2026-11-20T11:00:00Z")],
            Some("https://collector.evil.example/v1.0/security/alerts_v2?$skip=2"),
        ),
    );
    match poll(&mut i, &p, None) {
        Err(PollError::Fatal(m)) => assert!(
            m.contains("collector.evil.example") && m.contains("not sent"),
            "{m}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(p.urls().iter().all(|u| !u.contains("evil")));
    // Even a cursor tampered to point elsewhere is not followed.
    p.now.set(p.now.get().plus_secs(3600));
    let tampered = r#"{"v":2,"connector":"test","streams":{"alerts":{"from":"2026-11-19T12:00:00Z","to":"2026-11-20T12:00:00Z","end":"2026-11-20T12:00:00Z","next":"https://graph.microsoft.com.evil.example/x"}}}"#;
    assert!(matches!(
        poll(&mut i, &p, Some(tampered)),
        Err(PollError::Fatal(_))
    ));
    assert_eq!(p.requests().len(), 2);
}

#[test]
fn a_corrupt_or_foreign_cursor_is_a_clear_error() {
    let p = FakePlatform::new();
    let mut i = instance(&p, "");
    for bad in ["garbage", r#"{"v":1,"connector":"other","streams":{}}"#] {
        match poll(&mut i, &p, Some(bad)) {
            Err(PollError::Fatal(m)) => assert!(m.contains("cursor"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
    assert!(p.requests().is_empty());
}

#[test]
fn backfill_days_is_fixed_once_the_instance_has_state() {
    let p = FakePlatform::new();
    let mut i = instance(&p, "");
    p.respond_json(200, token_ok(&["SecurityAlert.Read.All"]));
    p.respond_json(200, page(vec![], None));
    poll(&mut i, &p, None).unwrap();
    let doc = |days: u32| {
        format!(r#"{{"tenant_id":"{TENANT}","client_id":"{CLIENT}","backfill_days":{days}}}"#)
    };
    assert!(Instance::configure::<Test>(&p, &doc(1)).is_ok());
    let e = Instance::configure::<Test>(&p, &doc(14)).err().unwrap();
    assert_eq!(e.key, "backfill_days");
    assert!(
        e.message.contains("created with backfill_days 1")
            && e.remedy.contains("delete the instance"),
        "{e:?}"
    );
}

#[test]
fn a_cloud_that_does_not_offer_the_apis_is_refused_naming_the_ones_that_do() {
    let p = FakePlatform::new();
    let doc = |cloud: &str| {
        format!(r#"{{"tenant_id":"{TENANT}","client_id":"{CLIENT}","cloud":"{cloud}"}}"#)
    };
    for cloud in ["global", "usgov", "usgov-dod"] {
        assert!(
            Instance::configure::<Test>(&p, &doc(cloud)).is_ok(),
            "{cloud}"
        );
    }
    let e = Instance::configure::<Test>(&p, &doc("china"))
        .err()
        .unwrap();
    assert_eq!(e.key, "cloud");
    assert!(
        e.message.contains("china") && e.remedy.contains("global, usgov, usgov-dod"),
        "{e:?}"
    );
}

#[test]
fn data_types_advance_independently_and_new_ones_start_at_the_origin() {
    let p = FakePlatform::new();
    let mut i = instance(&p, "");
    p.respond_json(
        200,
        token_ok(&["SecurityAlert.Read.All", "AuditLog.Read.All"]),
    );
    p.respond_json(200, page(vec![alert("a1", "2026-11-20T11:00:00Z")], None));
    let first = poll(&mut i, &p, None).unwrap();

    // A day later the user adds audits: they start at the original boundary, not at now.
    p.now.set(p.now.get().plus_secs(86_400));
    let mut both = instance(&p, r#","types":["alerts","audits"]"#);
    p.respond_json(
        200,
        token_ok(&["SecurityAlert.Read.All", "AuditLog.Read.All"]),
    );
    // The type that never read a window goes first.
    p.respond_json(
        200,
        page(
            vec![json!({"id": "d1", "activityDateTime": "2026-11-20T00:00:00Z"})],
            None,
        ),
    );
    p.respond(503, &[], b"");
    let second = poll(&mut both, &p, Some(&first.cursor)).unwrap();
    assert_eq!(ids(&second), [("d1".into(), String::new())]);
    assert!(p.urls()[p.urls().len() - 2].contains(
        "activityDateTime%20ge%202026-11-19T12%3A00%3A00Z%20and%20activityDateTime%20le%202026-11-21T12%3A00%3A00Z&$top=2&$orderby=activityDateTime%20asc"
    ));
    let c = Cursor::decode(&second.cursor, "test").unwrap();
    assert_eq!(
        c.streams["alerts"].from,
        Cursor::decode(&first.cursor, "test").unwrap().streams["alerts"].from,
        "the failed type kept its place"
    );
    assert!(
        p.logs
            .borrow()
            .iter()
            .any(|(_, m)| m.starts_with("alerts:")),
        "the failure names its type"
    );
    assert!(
        !second.more,
        "a 503 without Retry-After waits for the next scheduled poll"
    );

    // A throttled type with others advancing: poll again after its Retry-After.
    p.now.set(p.now.get().plus_secs(60));
    p.respond(429, &[("retry-after", "30")], b"{}");
    p.respond_json(200, page(vec![], None));
    let third = poll(&mut both, &p, Some(&second.cursor)).unwrap();
    assert!(third.more);
    assert_eq!(third.wait_secs, Some(30));
}

fn validate_with(
    roles: &[&str],
    probe: Option<(u16, Value)>,
    extra: &str,
) -> Result<(), crate::types::ValidationError> {
    let p = FakePlatform::new();
    let mut i = instance(&p, extra);
    p.respond_json(200, token_ok(roles));
    if let Some((status, body)) = probe {
        p.respond_json(status, body);
    }
    let r = i.validate(&p);
    assert_eq!(p.unused_responses(), 0);
    r
}

#[test]
fn validate_names_each_cause() {
    assert!(
        validate_with(
            &["SecurityAlert.Read.All"],
            Some((200, json!({"value": []}))),
            ""
        )
        .is_ok()
    );
    assert!(
        validate_with(
            &["SecurityAlert.ReadWrite.All"],
            Some((200, json!({"value": []}))),
            ""
        )
        .is_ok(),
        "a higher privilege also works"
    );

    let e = validate_with(&[], None, "").unwrap_err();
    assert_eq!(e.code, ValidationCode::NoAdminConsent);
    assert!(
        e.remedy.contains("SecurityAlert.Read.All") && e.remedy.contains("Grant admin consent")
    );

    let e = validate_with(
        &["SecurityIncident.Read.All"],
        None,
        r#","types":["alerts","audits"]"#,
    )
    .unwrap_err();
    assert_eq!(e.code, ValidationCode::MissingPermission);
    assert!(
        e.message.contains(
            "SecurityAlert.Read.All (needed for alerts) and AuditLog.Read.All (needed for audits)"
        ),
        "{}",
        e.message
    );
    assert!(e.message.contains("it has SecurityIncident.Read.All"));

    let e = validate_with(
        &["SecurityAlert.Read.All"],
        Some((
            403,
            json!({"error": {"code": "Forbidden", "message": "no licence"}}),
        )),
        "",
    )
    .unwrap_err();
    assert_eq!(e.code, ValidationCode::ApiUnavailable);
    assert!(e.message.contains("no licence") && e.remedy.contains("licence"));

    for (aadsts, code) in [
        (90002, ValidationCode::TenantNotFound),
        (700016, ValidationCode::ClientNotFound),
        (7000215, ValidationCode::InvalidSecret),
        (7000222, ValidationCode::SecretExpired),
    ] {
        let p = FakePlatform::new();
        let mut i = instance(&p, "");
        p.respond_json(400, token_error(aadsts));
        assert_eq!(i.validate(&p).unwrap_err().code, code);
    }
    let p = FakePlatform::new();
    let mut i = instance(&p, "");
    p.respond_err(HttpError::Connection("dns".into()));
    assert_eq!(i.validate(&p).unwrap_err().code, ValidationCode::Network);
}

/// Robustness against hostile input: random and mutated bytes fed to every parser that
/// reads something from outside (cursor, Graph page, config, time). Not coverage-guided
/// (no nightly toolchain here for cargo-fuzz); it asserts that nothing panics.
#[test]
fn parsers_never_panic_on_random_or_mutated_input() {
    let seeds: [&[u8]; 4] = [
        br#"{"v":1,"connector":"test","streams":{"alerts":{"from":"2026-11-19T12:00:00.000000000Z","next":"https://graph.microsoft.com/v1.0/x?$skip=2"}}}"#,
        br#"{"@odata.context":"x","value":[{"id":"a1","createdDateTime":"2026-11-19T00:00:00Z","lastUpdateDateTime":"2026-11-20T11:00:00Z"}],"@odata.nextLink":"https://graph.microsoft.com/v1.0/y"}"#,
        br#"{"tenant_id":"contoso.onmicrosoft.com","client_id":"2b7c9d1e-3f4a-4b5c-8d6e-7f8a9b0c1d2e","backfill_days":3,"cloud":"usgov","routing":["workflows"]}"#,
        b"2026-11-19T12:00:00.123456789Z",
    ];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..100_000 {
        let seed = seeds[round % seeds.len()];
        let mut bytes = seed.to_vec();
        for _ in 0..(next() % 8 + 1) {
            let at = (next() as usize) % bytes.len().max(1);
            match next() % 4 {
                0 => {
                    let v = next() as u8;
                    if let Some(b) = bytes.get_mut(at) {
                        *b = v;
                    }
                }
                1 => bytes.truncate(at),
                2 => {
                    let alphabet = b"{}[]\",:\\09eZ.-";
                    bytes.insert(at, alphabet[(next() % alphabet.len() as u64) as usize])
                }
                _ => {
                    let end = (at + (next() % 16) as usize).min(bytes.len());
                    let chunk = bytes[at..end].to_vec();
                    bytes.splice(at..at, chunk);
                }
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        let _ = Cursor::decode(&text, "test");
        let _ = crate::graph::parse_page(&bytes);
        let names = ["id", "createdDateTime", "lastUpdateDateTime"];
        assert_eq!(
            crate::graph::read_page(&bytes, names),
            crate::graph::read_page_serde(&bytes, names),
            "{text}"
        );
        let _ = crate::config::parse(&text);
        let _ = Timestamp::parse(&text);
    }
}

#[test]
fn a_wrong_secret_fails_every_poll_until_a_retry_succeeds() {
    let p = FakePlatform::new();
    let mut i = instance(&p, "");
    p.respond_json(401, token_error(7000215));
    let first = poll(&mut i, &p, None).unwrap_err();
    assert!(matches!(first, PollError::Auth(_)), "{first:?}");
    let calls = p.requests().len();

    // Polled again within the backoff: no request, and the same failure (not a success
    // whose every data type is degraded, which would show the instance as up).
    let mut fresh = instance(&p, "");
    match poll(&mut fresh, &p, None).unwrap_err() {
        PollError::Auth(m) => assert!(m.contains("secret") && m.contains("still failing"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(p.requests().len(), calls, "the backoff is kept");

    // After the backoff the secret works again: the poll succeeds.
    p.now.set(p.now.get().plus_millis(3_600_000));
    p.respond_json(200, token_ok(&["SecurityAlert.Read.All"]));
    p.respond_json(200, page(vec![], None));
    let ok = poll(&mut fresh, &p, None).unwrap();
    assert!(ok.degraded.is_empty(), "{:?}", ok.degraded);
}

#[test]
fn validate_waits_out_one_429_and_names_a_second() {
    let p = FakePlatform::new();
    let mut i = instance(&p, "");
    p.respond_json(200, token_ok(&["SecurityAlert.Read.All"]));
    let throttled = json!({"error": {"code": "TooManyRequests", "message": "Too many requests."}});
    p.respond(
        429,
        &[("Retry-After", "2")],
        throttled.to_string().as_bytes(),
    );
    p.respond_json(200, page(vec![], None));
    let before = p.now.get();
    if let Err(e) = i.validate(&p) {
        panic!("one 429 fails validate: {e:?}");
    }
    assert!(
        p.now.get().unix_secs() - before.unix_secs() >= 2,
        "Retry-After waited"
    );

    let p = FakePlatform::new();
    let mut i = instance(&p, "");
    p.respond_json(200, token_ok(&["SecurityAlert.Read.All"]));
    for _ in 0..2 {
        p.respond(429, &[], throttled.to_string().as_bytes());
    }
    let e = i.validate(&p).unwrap_err();
    assert_eq!(e.code, ValidationCode::ApiUnavailable);
    assert!(e.message.contains("Too many requests"), "{}", e.message);
}
