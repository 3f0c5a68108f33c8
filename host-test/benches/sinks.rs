//! Outbox-to-sink throughput: 100,000 event lines committed to a state file, then
//! delivered as the runner delivers them (undelivered lines in `seq` order, each
//! acknowledged part recorded as delivered) to a fsynced file, a loopback webhook receiver
//! and librdkafka's mock Kafka cluster, in one run, with the cost per event as a ratio to
//! the file sink. Run: `cargo bench -p connector-host --bench sinks`.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use connector_host::secrets::Secrets;
use connector_host::sink::Sink;
use connector_host::state::{KvWrites, PollHealth, StateDb};
use rdkafka::mocking::MockCluster;

const EVENTS: usize = 100_000;
/// Lines committed per poll, as a backfill's pages of 500 alerts would be.
const PER_POLL: usize = 500;

/// A state file holding `EVENTS` undelivered lines of instance `bench` (~1 KB each, the
/// size of a Defender alert line).
fn outbox(dir: &std::path::Path, name: &str) -> Arc<Mutex<StateDb>> {
    let mut db = StateDb::open(&dir.join(format!("{name}.db"))).unwrap();
    db.ensure_instance("bench", "defender-alerts").unwrap();
    let payload = "x".repeat(800);
    let health = PollHealth {
        at: "2026-12-01T00:00:00Z",
        ok: true,
        events: PER_POLL as u64,
        requests: 1,
        throttled: 0,
        error: None,
        code: None,
        newest_event: None,
        degraded: None,
    };
    for poll in 0..EVENTS / PER_POLL {
        db.commit_poll(
            "bench",
            PER_POLL,
            |seq, i| {
                format!(
                    "{{\"seq\":{seq},\"instance\":\"bench\",\"connector\":\"defender-alerts\",\"kind\":\"defender.alert\",\"id\":\"da{poll}-{i}\",\"version\":\"2026-11-20T11:05:00.000Z\",\"timestamp\":\"2026-11-20T11:00:00.000Z\",\"routing\":[],\"payload\":{{\"p\":\"{payload}\"}}}}"
                )
            },
            &format!("c{poll}"),
            &KvWrites::new(),
            &health,
        )
        .unwrap();
    }
    Arc::new(Mutex::new(db))
}

/// Delivers the whole outbox to `sink` the way the runner does; returns the time taken.
fn deliver(sink: &mut Sink, state: &Arc<Mutex<StateDb>>) -> Duration {
    let started = Instant::now();
    let lines = state.lock().unwrap().undelivered("bench").unwrap();
    let mut rest = &lines[..];
    while !rest.is_empty() {
        let n = sink
            .send("bench", rest, true, state, &AtomicBool::new(false))
            .unwrap();
        assert!(n > 0);
        state
            .lock()
            .unwrap()
            .mark_delivered("bench", rest[n - 1].0)
            .unwrap();
        rest = &rest[n..];
    }
    let elapsed = started.elapsed();
    assert_eq!(
        state.lock().unwrap().seqs("bench").unwrap(),
        (EVENTS as u64, EVENTS as u64)
    );
    elapsed
}

/// A loopback receiver that reads every body and answers 200; counts the events.
fn receiver() -> (u16, Arc<Mutex<usize>>) {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let port = server.server_addr().to_ip().unwrap().port();
    let events = Arc::new(Mutex::new(0));
    let counted = events.clone();
    std::thread::spawn(move || {
        for mut request in server.incoming_requests() {
            let mut body = Vec::new();
            request.as_reader().read_to_end(&mut body).unwrap();
            *counted.lock().unwrap() += body.iter().filter(|&&b| b == b'\n').count();
            let _ = request.respond(tiny_http::Response::empty(200));
        }
    });
    (port, events)
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    println!("outbox to sink, {EVENTS} events of ~1 KB");
    let mut results = vec![];

    let state = outbox(dir.path(), "file");
    let mut sink = Sink::open(&dir.path().join("out.jsonl")).unwrap();
    results.push(("file (fsync per delivery)", deliver(&mut sink, &state)));

    let (port, received) = receiver();
    for max_events in [500, 5000] {
        let state = outbox(dir.path(), &format!("webhook-{max_events}"));
        let url = format!("http://127.0.0.1:{port}/in#format=ndjson&max_events={max_events}");
        let secrets =
            Secrets::from_map([("sink-hmac-secret".to_string(), "bench".to_string())].into());
        let mut sink = Sink::connect(&url, &secrets).unwrap();
        let name = if max_events == 500 {
            "webhook, 500 events per POST, HMAC-signed"
        } else {
            "webhook, 5000 events per POST, HMAC-signed"
        };
        results.push((name, deliver(&mut sink, &state)));
    }
    assert_eq!(*received.lock().unwrap(), 2 * EVENTS);

    let cluster = MockCluster::new(3).unwrap();
    cluster.create_topic("secops-events", 3, 1).unwrap();
    let state = outbox(dir.path(), "kafka");
    let url = format!("kafka://{}", cluster.bootstrap_servers());
    let mut sink = Sink::connect(&url, &Secrets::default()).unwrap();
    results.push((
        "kafka (mock cluster, 3 brokers, idempotent, acks=all)",
        deliver(&mut sink, &state),
    ));

    let file = results[0].1.as_secs_f64();
    for (name, t) in &results {
        println!(
            "{name}: {:.0} events/s, {:.1} µs per event, {:.2}x the file sink's cost",
            EVENTS as f64 / t.as_secs_f64(),
            t.as_secs_f64() * 1e6 / EVENTS as f64,
            t.as_secs_f64() / file
        );
    }
}
