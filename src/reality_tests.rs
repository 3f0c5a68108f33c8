//! The guest against what real Graph does (GRAPH-REALITY.md), on a scripted host: page
//! size limits learned from Graph's 400, windows too deep to page split by `$count`, parts
//! served short read again, a next link Graph refuses, per-family budgets, throttling
//! without `Retry-After`, a query shape that keeps failing, late records, odd timestamps
//! and the `Prefer` header.

use serde_json::{Value, json};

use crate::budget::Limit;
use crate::connector::{DataType, Family};
use crate::cursor::Cursor;
use crate::runtime::Instance;
use crate::testing::{CLIENT, FakePlatform, TENANT, poll, token_ok};
use crate::types::{Degradation, PollError};

const ONE_A_SECOND: Family = Family {
    name: "test-1s",
    limits: &[Limit::calls_per(1, 1)],
};

const INCIDENTS: DataType = DataType::new(
    "incidents",
    "test.incident",
    "/v1.0/security/incidents",
    &["SecurityIncident.Read.All"],
    "createdDateTime",
    100,
)
.versioned_by("lastUpdateDateTime")
.counted(10);

const RISKY: DataType = DataType::new(
    "risky",
    "test.risky",
    "/v1.0/identityProtection/riskyUsers",
    &["IdentityRiskyUser.Read.All"],
    "riskLastUpdatedDateTime",
    5,
)
.versioned_by("riskLastUpdatedDateTime")
.throttled_as(&ONE_A_SECOND);

const DETECTIONS: DataType = DataType::new(
    "detections",
    "test.detection",
    "/v1.0/identityProtection/riskDetections",
    &["IdentityRiskEvent.Read.All"],
    "activityDateTime",
    5,
)
.versioned_by("lastUpdatedDateTime")
.throttled_as(&ONE_A_SECOND);

crate::testing::test_connector!(
    Test,
    "reality",
    &[INCIDENTS, RISKY, DETECTIONS],
    default & ["incidents"]
);

const ROLES: &[&str] = &[
    "SecurityIncident.Read.All",
    "IdentityRiskyUser.Read.All",
    "IdentityRiskEvent.Read.All",
];

fn instance(p: &FakePlatform, extra: &str) -> Instance {
    let doc =
        format!(r#"{{"tenant_id":"{TENANT}","client_id":"{CLIENT}","backfill_days":1{extra}}}"#);
    Instance::configure::<Test>(p, &doc).unwrap()
}

fn incident(id: u32, updated: &str) -> Value {
    json!({"id": id.to_string(), "createdDateTime": "2026-11-19T00:00:00Z", "lastUpdateDateTime": updated, "status": "active"})
}

fn page(records: Vec<Value>, count: Option<u64>, next: Option<&str>) -> Value {
    let mut page = json!({"value": records});
    if let Some(c) = count {
        page["@odata.count"] = json!(c);
    }
    if let Some(n) = next {
        page["@odata.nextLink"] = json!(n);
    }
    page
}

fn filter_of(url: &str) -> String {
    let q = url.split_once("$filter=").unwrap().1;
    let f = q.split('&').next().unwrap();
    percent_encoding::percent_decode_str(f)
        .decode_utf8()
        .unwrap()
        .into_owned()
}

#[test]
fn the_page_size_graph_allows_is_learned_once_and_kept() {
    let p = FakePlatform::new();
    let mut i = instance(&p, "");
    p.respond_json(200, token_ok(ROLES));
    p.respond_json(
        400,
        json!({"error": {"code": "", "message": "The query specified in the URI is not valid. The limit of '50' for Top query has been exceeded. The value from the incoming request is '100'.", "details": [], "innerError": {}}}),
    );
    p.respond_json(
        200,
        page(vec![incident(1, "2026-11-20T11:00:00Z")], Some(1), None),
    );
    let b = poll(&mut i, &p, None).unwrap();
    assert_eq!(b.events.len(), 1, "the same poll retried at 50");
    let urls = p.urls();
    assert!(
        urls[1].contains("$top=100") && urls[2].contains("$top=50"),
        "{urls:?}"
    );
    let warned = p
        .logs
        .borrow()
        .iter()
        .filter(|(_, m)| m.contains("at most 50"))
        .count();
    assert_eq!(warned, 1, "logged once");

    // A restarted instance remembers it: no second 400.
    p.restart();
    let mut again = instance(&p, "");
    p.respond_json(200, token_ok(ROLES));
    p.respond_json(200, page(vec![], Some(0), None));
    poll(&mut again, &p, Some(&b.cursor)).unwrap();
    assert!(p.urls().last().unwrap().contains("$top=50"));
    assert!(b.degraded.is_empty());
}

#[test]
fn a_window_too_deep_to_page_is_split_by_its_count_and_nothing_is_lost() {
    let p = FakePlatform::new();
    let mut i = instance(&p, "");
    p.respond_json(200, token_ok(ROLES));
    // 40 incidents in the day: deeper than the 10 records a part may page through.
    p.respond_json(
        200,
        page(
            vec![incident(99, "2026-11-20T11:59:00Z")],
            Some(40),
            Some("https://graph.microsoft.com/v1.0/security/incidents?$skip=1"),
        ),
    );
    let first = poll(&mut i, &p, None).unwrap();
    assert!(
        first.events.is_empty(),
        "the probe of a too-deep part delivers nothing"
    );
    assert!(first.more);
    let c = Cursor::decode(&first.cursor, "reality").unwrap();
    let s = &c.streams["incidents"];
    assert_eq!(
        s.from, "2026-11-19T12:00:00.000000000Z",
        "the watermark holds"
    );
    // 3/4 of the depth (7.5 records) at 40 a day: 16,200 s.
    assert_eq!(s.step, Some(16_200));
    assert_eq!(s.end.as_deref(), Some("2026-11-20T12:00:00.000000000Z"));

    // The first part: few enough to page; it is read and the next part is wider.
    p.respond_json(
        200,
        page(vec![incident(1, "2026-11-19T13:00:00Z")], Some(1), None),
    );
    let second = poll(&mut i, &p, Some(&first.cursor)).unwrap();
    assert_eq!(second.events.len(), 1);
    assert_eq!(
        filter_of(p.urls().last().unwrap()),
        "lastUpdateDateTime ge 2026-11-19T12:00:00Z and lastUpdateDateTime le 2026-11-19T16:30:00Z"
    );
    let c = Cursor::decode(&second.cursor, "reality").unwrap();
    let s = &c.streams["incidents"];
    assert_eq!(
        s.from, "2026-11-19T16:30:00.000000000Z",
        "moved past the part read whole"
    );
    assert_eq!(
        s.step,
        Some(32_400),
        "a light part lets the next be twice as wide"
    );
    assert!(second.more);
}

#[test]
fn a_part_served_short_is_read_again_narrower_before_the_watermark_moves() {
    let p = FakePlatform::new();
    let mut i = instance(&p, "");
    p.respond_json(200, token_ok(ROLES));
    // Graph counts 6 but serves 2 and ends the chain: a deep page came back empty.
    p.respond_json(
        200,
        page(
            vec![
                incident(1, "2026-11-20T11:00:00Z"),
                incident(2, "2026-11-20T10:00:00Z"),
            ],
            Some(6),
            Some("https://graph.microsoft.com/v1.0/security/incidents?$skip=2"),
        ),
    );
    p.respond_json(200, page(vec![], Some(6), None));
    let first = poll(&mut i, &p, None).unwrap();
    let second = poll(&mut i, &p, Some(&first.cursor)).unwrap();
    assert_eq!(first.events.len(), 2);
    assert!(second.events.is_empty() && second.more);
    assert!(
        p.logs
            .borrow()
            .iter()
            .any(|(_, m)| m.contains("read 2 of the 6")),
        "{:?}",
        p.logs.borrow()
    );
    let c = Cursor::decode(&second.cursor, "reality").unwrap();
    let s = &c.streams["incidents"];
    assert_eq!(
        s.from, "2026-11-19T12:00:00.000000000Z",
        "the watermark holds"
    );
    assert_eq!(s.step, Some(43_200), "half the part");
    assert!(s.next.is_none() && s.read == 0);
}

#[test]
fn a_next_link_graph_refuses_reads_the_part_again_and_loses_nothing() {
    let p = FakePlatform::new();
    let mut i = instance(&p, r#","types":["risky"]"#);
    p.respond_json(200, token_ok(ROLES));
    let next = "https://graph.microsoft.com/v1.0/identityProtection/riskyUsers?$top=2&$skiptoken=x";
    p.respond_json(
        200,
        page(
            vec![json!({"id": "u1", "riskLastUpdatedDateTime": "2026-11-20T11:00:00.1234567Z"})],
            None,
            Some(next),
        ),
    );
    let first = poll(&mut i, &p, None).unwrap();
    assert_eq!(first.events.len(), 1);
    // riskyUsers' dangling next link: 400 with an empty message.
    p.now.set(p.now.get().plus_secs(2));
    p.respond_json(400, json!({"error": {"code": "BadRequest", "message": ""}}));
    let second = poll(&mut i, &p, Some(&first.cursor)).unwrap();
    assert!(
        second.events.is_empty() && second.more,
        "not a failure of the instance"
    );
    assert!(second.degraded.is_empty());
    let c = Cursor::decode(&second.cursor, "reality").unwrap();
    assert_eq!(
        c.streams["risky"].step,
        Some(43_200),
        "read again in halves"
    );
    // The half is read; the record seen before is not delivered twice.
    p.now.set(p.now.get().plus_secs(2));
    p.respond_json(
        200,
        page(
            vec![json!({"id": "u1", "riskLastUpdatedDateTime": "2026-11-20T11:00:00.1234567Z"})],
            None,
            None,
        ),
    );
    let third = poll(&mut i, &p, Some(&second.cursor)).unwrap();
    assert!(third.events.is_empty(), "dedup absorbs the repeat");
}

#[test]
fn data_types_of_one_family_share_its_budget_and_throttling_backs_off_with_jitter() {
    let p = FakePlatform::new();
    let mut i = instance(&p, r#","types":["risky","detections"]"#);
    p.respond_json(200, token_ok(ROLES));
    p.respond_json(200, page(vec![], None, None));
    let first = poll(&mut i, &p, None).unwrap();
    assert_eq!(
        p.urls().len(),
        2,
        "one call a second: the second type waits"
    );
    assert!(first.more && first.wait_secs == Some(1), "{first:?}");

    // The waiting type goes first now (its window is the oldest): a 429 without
    // Retry-After (these lists never send one). It backs off on its own with jitter; the
    // other type has read its window lately and leaves the call to it.
    p.now.set(p.now.get().plus_secs(1));
    p.respond_json(
        429,
        json!({"error": {"code": "TooManyRequests", "message": "Too many requests."}}),
    );
    match poll(&mut i, &p, Some(&first.cursor)) {
        Err(PollError::RateLimited(r)) => assert!((1..=2).contains(&r.after_secs), "{r:?}"),
        other => panic!("{other:?}"),
    }
    assert!(p.urls().last().unwrap().contains("riskDetections"));
    // Polled again within the backoff: nothing to do but wait, and the health says why.
    let calls = p.urls().len();
    p.now.set(p.now.get().plus_secs(1));
    let early = poll(&mut i, &p, Some(&first.cursor)).unwrap();
    assert_eq!(
        p.urls().len(),
        calls,
        "nothing to do before the backoff is over"
    );
    assert_eq!(early.wait_secs, Some(1));
    assert!(early.more);
    assert_eq!(early.degraded.len(), 1);
    assert_eq!(early.degraded[0].data_type, "detections");
    assert_eq!(early.degraded[0].code, Degradation::Throttled);
    p.now.set(p.now.get().plus_secs(1));
    p.respond_json(200, page(vec![], None, None));
    let third = poll(&mut i, &p, Some(&early.cursor)).unwrap();
    assert!(p.urls().last().unwrap().contains("riskDetections"));
    assert!(third.degraded.is_empty(), "{third:?}");
    assert!(!third.more);
    for r in p.requests().iter().filter(|r| r.method == "GET") {
        assert!(
            r.headers
                .iter()
                .any(|(n, v)| n == "prefer" && v == "include-unknown-enum-members"),
            "every Graph request asks for evolvable enum members as themselves"
        );
    }
}

#[test]
fn a_query_that_keeps_failing_falls_back_and_its_events_say_what_is_missing() {
    let p = FakePlatform::new();
    let mut i = instance(&p, r#","expand":true"#);
    p.respond_json(200, token_ok(ROLES));
    let mut cursor: Option<String> = None;
    for attempt in 1..=2 {
        p.respond_json(
            500,
            json!({"error": {"code": "InternalServerError", "message": "boom"}}),
        );
        match poll(&mut i, &p, cursor.as_deref()) {
            Err(PollError::Transient(r)) => {
                p.now.set(p.now.get().plus_secs(i64::from(r.after_secs)))
            }
            other => panic!("attempt {attempt}: {other:?}"),
        }
    }
    p.respond_json(
        500,
        json!({"error": {"code": "InternalServerError", "message": "boom"}}),
    );
    let switched = poll(&mut i, &p, cursor.as_deref()).unwrap();
    assert!(switched.more);
    assert_eq!(switched.degraded.len(), 1);
    assert_eq!(switched.degraded[0].code, Degradation::Fallback);
    cursor = Some(switched.cursor);
    p.respond_json(
        200,
        page(vec![incident(7, "2026-11-20T11:00:00Z")], Some(1), None),
    );
    let read = poll(&mut i, &p, cursor.as_deref()).unwrap();
    let urls = p.urls();
    assert!(urls[urls.len() - 2].contains("$expand=alerts"));
    assert!(!urls.last().unwrap().contains("expand"), "{urls:?}");
    assert_eq!(read.events.len(), 1);
    let incomplete = read.events[0].incomplete.as_deref().unwrap();
    assert!(incomplete.contains("$expand=alerts"), "{incomplete}");
    assert_eq!(read.degraded[0].code, Degradation::Fallback);

    // 15 minutes on, the full query is tried again; it works: back to normal.
    p.now.set(p.now.get().plus_secs(15 * 60));
    p.respond_json(
        200,
        page(
            vec![json!({"id": "7", "lastUpdateDateTime": "2026-11-20T12:10:00Z", "alerts": []})],
            Some(1),
            None,
        ),
    );
    let recovered = poll(&mut i, &p, Some(&read.cursor)).unwrap();
    assert!(p.urls().last().unwrap().contains("$expand=alerts"));
    assert!(recovered.events[0].incomplete.is_none());
    assert!(recovered.degraded.is_empty());
}

#[test]
fn records_up_to_the_lateness_are_delivered_and_the_user_can_widen_it() {
    let p = FakePlatform::new();
    let mut i = instance(&p, "");
    p.respond_json(200, token_ok(ROLES));
    p.respond_json(200, page(vec![], Some(0), None));
    let first = poll(&mut i, &p, None).unwrap();
    // Five minutes on, a record 14 minutes old appears: the window reaches back 15.
    p.now.set(p.now.get().plus_secs(300));
    p.respond_json(
        200,
        page(vec![incident(3, "2026-11-20T11:51:00.5Z")], Some(1), None),
    );
    let second = poll(&mut i, &p, Some(&first.cursor)).unwrap();
    assert_eq!(second.events.len(), 1);
    assert!(
        filter_of(p.urls().last().unwrap())
            .starts_with("lastUpdateDateTime ge 2026-11-20T11:45:00Z")
    );

    let p = FakePlatform::new();
    let mut i = instance(&p, r#","late_arrival_minutes":60"#);
    p.respond_json(200, token_ok(ROLES));
    p.respond_json(200, page(vec![], Some(0), None));
    let first = poll(&mut i, &p, None).unwrap();
    p.respond_json(200, page(vec![], Some(0), None));
    poll(&mut i, &p, Some(&first.cursor)).unwrap();
    assert!(
        filter_of(p.urls().last().unwrap())
            .starts_with("lastUpdateDateTime ge 2026-11-20T11:00:00Z")
    );
}

#[test]
fn an_instance_is_bound_to_its_tenant_app_and_graph_host() {
    let p = FakePlatform::new();
    let mut i = instance(&p, "");
    p.respond_json(200, token_ok(ROLES));
    p.respond_json(200, page(vec![], Some(0), None));
    poll(&mut i, &p, None).unwrap();
    for (extra, key) in [
        (r#","tenant_id":"contoso.example""#, "tenant_id"),
        (
            r#","client_id":"00000000-0000-0000-0000-000000000001""#,
            "client_id",
        ),
        (r#","cloud":"usgov""#, "graph_url"),
    ] {
        let doc = format!(
            r#"{{"tenant_id":"{TENANT}","client_id":"{CLIENT}","backfill_days":1{extra}}}"#
        )
        .replacen(
            &format!(r#""tenant_id":"{TENANT}","#),
            "",
            usize::from(key == "tenant_id"),
        )
        .replacen(
            &format!(r#""client_id":"{CLIENT}","#),
            "",
            usize::from(key == "client_id"),
        );
        let e = Instance::configure::<Test>(&p, &doc)
            .err()
            .unwrap_or_else(|| panic!("{doc}"));
        assert_eq!(e.key, key, "{e:?}");
        assert!(e.message.contains("was created for"), "{}", e.message);
    }
    assert!(
        Instance::configure::<Test>(
            &p,
            &format!(
                r#"{{"tenant_id":"{}","client_id":"{CLIENT}","backfill_days":1}}"#,
                TENANT.to_uppercase()
            )
        )
        .is_ok(),
        "GUIDs compare without case"
    );
}

#[test]
fn a_cursor_of_the_previous_format_is_read_where_it_stood() {
    let p = FakePlatform::new();
    let mut i = instance(&p, "");
    p.respond_json(200, token_ok(ROLES));
    p.respond_json(
        200,
        page(vec![incident(1, "2026-11-20T11:00:00Z")], Some(1), None),
    );
    let v1 = r#"{"v":1,"connector":"reality","streams":{"incidents":{"from":"2026-11-20T10:00:00Z","seen_max":"2026-11-20T11:00:00Z","next":"https://graph.microsoft.com/v1.0/security/incidents?$skip=100"}}}"#;
    let b = poll(&mut i, &p, Some(v1)).unwrap();
    assert_eq!(b.events.len(), 1);
    assert!(
        filter_of(p.urls().last().unwrap())
            .starts_with("lastUpdateDateTime ge 2026-11-20T10:00:00Z and")
    );
}

#[test]
fn a_list_whose_upper_bound_graph_ignores_is_read_whole_not_split_forever() {
    let p = FakePlatform::new();
    let mut i = instance(&p, "");
    p.respond_json(200, token_ok(ROLES));
    // 40 counted, so the day is split; the part's page then holds a record newer than the
    // part's upper bound: Graph ignored `le`.
    p.respond_json(
        200,
        page(vec![incident(99, "2026-11-20T11:59:00Z")], Some(40), None),
    );
    let first = poll(&mut i, &p, None).unwrap();
    p.respond_json(
        200,
        page(
            vec![
                incident(99, "2026-11-20T11:59:00Z"),
                incident(1, "2026-11-19T13:00:00Z"),
            ],
            Some(40),
            None,
        ),
    );
    let second = poll(&mut i, &p, Some(&first.cursor)).unwrap();
    assert_eq!(second.events.len(), 2, "delivered all the same");
    assert!(
        p.logs
            .borrow()
            .iter()
            .any(|(_, m)| m.contains("ignores `le`"))
    );
    // From now on the rest of the window is one part, and the count does not hold it back.
    p.respond_json(
        200,
        page(vec![incident(99, "2026-11-20T11:59:00Z")], Some(40), None),
    );
    let third = poll(&mut i, &p, Some(&second.cursor)).unwrap();
    assert!(!third.more, "{third:?}");
    assert!(filter_of(p.urls().last().unwrap()).ends_with("le 2026-11-20T12:00:00Z"));
}

#[test]
fn validate_probes_with_the_polls_shape_learns_the_page_size_and_accepts_the_fallback() {
    let p = FakePlatform::new();
    let mut i = instance(&p, r#","expand":true"#);
    p.respond_json(200, token_ok(ROLES));
    p.respond_json(
        400,
        json!({"error": {"code": "", "message": "The query specified in the URI is not valid. The limit of '50' for Top query has been exceeded. The value from the incoming request is '100'."}}),
    );
    p.respond_json(
        500,
        json!({"error": {"code": "InternalServerError", "message": "boom"}}),
    );
    p.respond_json(200, page(vec![], Some(0), None));
    i.validate(&p).unwrap();
    let urls = p.urls();
    assert_eq!(urls.len(), 4);
    for (url, top, expand) in [
        (&urls[1], 100, true),
        (&urls[2], 50, true),
        (&urls[3], 50, false),
    ] {
        let f = filter_of(url);
        assert!(f.starts_with("lastUpdateDateTime ge 2026-11-20T11:55:00Z and lastUpdateDateTime le 2026-11-20T12:00:00Z"), "{f}");
        assert!(url.contains(&format!("$top={top}&$count=true")), "{url}");
        assert_eq!(url.contains("$expand=alerts"), expand, "{url}");
    }
    assert!(p.requests()[1].headers.iter().any(|(n, _)| n == "prefer"));
    // The first poll asks for what Graph allows at once.
    p.respond_json(200, page(vec![], Some(0), None));
    poll(&mut i, &p, None).unwrap();
    assert!(p.urls().last().unwrap().contains("$top=50"));
    // Without $expand failing too, the 500 is the answer.
    let p = FakePlatform::new();
    let mut i = instance(&p, r#","expand":true"#);
    p.respond_json(200, token_ok(ROLES));
    p.respond_json(
        500,
        json!({"error": {"code": "InternalServerError", "message": "boom"}}),
    );
    p.respond_json(
        503,
        json!({"error": {"code": "ServiceUnavailable", "message": "down"}}),
    );
    let e = i.validate(&p).unwrap_err();
    assert_eq!(e.code, crate::types::ValidationCode::ApiUnavailable);
}

#[test]
fn a_part_whose_pages_repeat_a_record_and_skip_another_is_read_again() {
    // The list changed while it was paged: one record moved up a page (read twice),
    // another was skipped. Three records read, as Graph counted, but only two distinct.
    let p = FakePlatform::new();
    let mut i = instance(&p, "");
    p.respond_json(200, token_ok(ROLES));
    p.respond_json(
        200,
        page(
            vec![
                incident(1, "2026-11-20T11:00:00Z"),
                incident(2, "2026-11-20T10:00:00Z"),
            ],
            Some(3),
            Some("https://graph.microsoft.com/v1.0/security/incidents?$skip=2"),
        ),
    );
    p.respond_json(
        200,
        page(vec![incident(2, "2026-11-20T10:00:00Z")], Some(3), None),
    );
    let first = poll(&mut i, &p, None).unwrap();
    let second = poll(&mut i, &p, Some(&first.cursor)).unwrap();
    assert!(second.more, "read again, not done");
    assert!(
        p.logs
            .borrow()
            .iter()
            .any(|(_, m)| m.contains("read 2 of the 3")),
        "{:?}",
        p.logs.borrow()
    );
    let c = Cursor::decode(&second.cursor, "reality").unwrap();
    let s = &c.streams["incidents"];
    assert_eq!(
        s.from, "2026-11-19T12:00:00.000000000Z",
        "the watermark holds"
    );
    assert!(s.seen.is_empty() && s.next.is_none());
}
