//! Network sinks against protocol peers started by the tests: a loopback HTTP receiver
//! that fails some requests (429 with Retry-After, 500, a batch taken but answered 503 as
//! if the answer were lost, a connection dropped) and librdkafka's mock Kafka cluster. The host is killed with
//! SIGKILL at random moments during delivery; afterwards every event is there at least
//! once and every repeat is recognisable (the same idempotency key and body; the same
//! key, value and `seq` header). A sink that is down holds delivery and shows in `status`
//! and the metrics; bad credentials stop delivery with a clear error, nothing marked
//! delivered.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use serde_json::{Value, json};
use sha2::Sha256;
use support::graph_sim::{Behaviour, GraphSim, SECRET};
use support::{Rng, Running, Tenant, host, text, with_state, write_json};

const HMAC_SECRET: &str = "whsec-test-9f3e1c";
const BEARER: &str = "bearer-test-77a1";

/// One POST the receiver read: its idempotency key, body and whether it answered 2xx.
#[derive(Clone)]
struct Post {
    key: String,
    body: Vec<u8>,
    acknowledged: bool,
}

/// How a [`Receiver`] answers a request with the right signature and token.
#[derive(Clone, Copy, PartialEq)]
enum Answers {
    /// 200, the batch taken.
    Ok,
    /// Fails requests by their number: every 5th gets 429 with `Retry-After: 1`, every 7th
    /// 500, every 9th is taken but answered 503 (the endpoint processed it, the answer was
    /// lost), every 11th is taken and its connection dropped without an answer.
    Faulty,
    /// This status to every request, nothing taken.
    Always(u16),
}

/// A loopback webhook receiver. It checks the signature and bearer token of every request
/// (a wrong one is answered 401), then answers as its [`Answers`] say.
struct Receiver {
    port: u16,
    posts: Arc<Mutex<Vec<Post>>>,
    requests: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start(port: u16, answers: Answers) -> Receiver {
        let faults = answers == Answers::Faulty;
        let server = tiny_http::Server::http(("127.0.0.1", port)).expect("receiver listens");
        let port = server.server_addr().to_ip().unwrap().port();
        let posts = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let requests = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (p, s, r) = (posts.clone(), stop.clone(), requests.clone());
        let thread = std::thread::spawn(move || {
            let mut n = 0u64;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(Some(mut request)) = server.recv_timeout(Duration::from_millis(50)) else {
                    continue;
                };
                n += 1;
                r.store(n, std::sync::atomic::Ordering::Relaxed);
                let header = |name: &'static str| {
                    request
                        .headers()
                        .iter()
                        .find(|h| h.field.equiv(name))
                        .map(|h| h.value.as_str().to_string())
                };
                let key = header("Idempotency-Key").unwrap_or_default();
                let signature = header("X-Signature-256").unwrap_or_default();
                let auth = header("Authorization").unwrap_or_default();
                let mut body = Vec::new();
                request.as_reader().read_to_end(&mut body).unwrap();
                let mut mac = Hmac::<Sha256>::new_from_slice(HMAC_SECRET.as_bytes()).unwrap();
                mac.update(&body);
                let expected: String = mac
                    .finalize()
                    .into_bytes()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                let (status, taken) = if auth != format!("Bearer {BEARER}")
                    || signature != format!("sha256={expected}")
                {
                    (401, false)
                } else if let Answers::Always(status) = answers {
                    (status, false)
                } else if faults && n.is_multiple_of(5) {
                    (429, false)
                } else if faults && n.is_multiple_of(7) {
                    (500, false)
                } else if faults && n.is_multiple_of(9) {
                    (503, true)
                } else if faults && n.is_multiple_of(11) {
                    // Taken, then the connection dropped without an answer.
                    p.lock().unwrap().push(Post {
                        key,
                        body,
                        acknowledged: false,
                    });
                    drop(request.into_writer());
                    continue;
                } else {
                    (200, true)
                };
                if taken {
                    p.lock().unwrap().push(Post {
                        key,
                        body,
                        acknowledged: status == 200,
                    });
                }
                let mut response = tiny_http::Response::from_string("").with_status_code(status);
                if status == 429 {
                    response.add_header(tiny_http::Header::from_bytes("Retry-After", "1").unwrap());
                }
                let _ = request.respond(response);
            }
        });
        Receiver {
            port,
            posts,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self, options: &str) -> String {
        format!("http://127.0.0.1:{}/ingest#{options}", self.port)
    }

    fn posts(&self) -> Vec<Post> {
        self.posts.lock().unwrap().clone()
    }

    /// Requests answered so far, taken or not.
    fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A sink's lines by `seq`, checked: each `seq` always the same line (a repeat is
/// recognisable), and the set of acknowledged ones `1..=n` without a gap.
fn check_lines(lines: &[(bool, String)]) -> BTreeMap<u64, Value> {
    let mut by_seq: BTreeMap<u64, String> = BTreeMap::new();
    let mut acknowledged = BTreeSet::new();
    for (acked, line) in lines {
        let v: Value = serde_json::from_str(line).unwrap();
        let seq = v["seq"].as_u64().unwrap();
        if let Some(before) = by_seq.insert(seq, line.clone()) {
            assert_eq!(&before, line, "seq {seq} repeated with another line");
        }
        if *acked {
            acknowledged.insert(seq);
        }
    }
    let n = *by_seq.keys().last().unwrap_or(&0);
    assert_eq!(
        acknowledged,
        (1..=n).collect::<BTreeSet<_>>(),
        "every committed seq acknowledged at least once"
    );
    by_seq
        .into_iter()
        .map(|(s, l)| (s, serde_json::from_str(&l).unwrap()))
        .collect()
}

/// Every alert's current version is among the lines and none the simulator never served.
fn check_against_tenant(lines: &BTreeMap<u64, Value>, sim: &GraphSim) {
    let got: BTreeSet<(String, String)> = lines
        .values()
        .map(|l| {
            (
                l["id"].as_str().unwrap().into(),
                l["version"].as_str().unwrap().into(),
            )
        })
        .collect();
    let missing: Vec<_> = sim.latest().difference(&got).cloned().collect();
    assert!(missing.is_empty(), "current versions missing: {missing:?}");
    let extra: Vec<_> = got.difference(&sim.ground_truth()).cloned().collect();
    assert!(extra.is_empty(), "never served: {extra:?}");
}

/// A tenant's secrets: the simulator's client secret and the webhook's signing secret and
/// bearer token.
fn sink_secrets(bearer: &str) -> Value {
    json!({"client-secret": SECRET, "sink-hmac-secret": HMAC_SECRET, "sink-bearer-token": bearer})
}

fn tenant_with_sink_secrets(sim: &GraphSim, bearer: &str) -> Tenant {
    let tenant = Tenant::new(sim);
    write_json(
        &tenant.dir.path().join("secrets.json"),
        &sink_secrets(bearer),
    );
    tenant
}

/// A `serve` instance file `<dir>/<name>.json`: the alerts component polling `sim` every
/// second, its secrets (client and webhook) in `secrets/<name>.json`, and `sink` as the
/// file's own sink, if given (else `serve`'s `--sink` or `--out`).
fn write_instance(dir: &Path, name: &str, sim: &GraphSim, sink: Option<&str>) {
    std::fs::create_dir_all(dir.join("secrets")).unwrap();
    let secrets = format!("secrets/{name}.json");
    write_json(&dir.join(&secrets), &sink_secrets(BEARER));
    let mut file = json!({
        "component": support::alerts_wasm(),
        "config": sim.config(1),
        "secrets": secrets,
        "interval_secs": 1,
    });
    if let Some(sink) = sink {
        file["sink"] = json!(sink);
    }
    write_json(&dir.join(format!("{name}.json")), &file);
}

/// `serve --instances <dir> --state <state> <extra>`.
fn serve_args(instances: &Path, state: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["serve", "--instances", &instances.display().to_string()]
        .into_iter()
        .map(String::from)
        .collect();
    args.extend(["--state".to_string(), state.to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// `run` with `--sink` instead of `--out`.
fn run_args(tenant: &Tenant, sink: &str, once: bool, extra: &[&str]) -> Vec<String> {
    let mut args = tenant.run_args("defender-alerts", once, extra);
    let at = args.iter().position(|a| a == "--out").unwrap();
    args.splice(at..at + 2, ["--sink".to_string(), sink.to_string()]);
    args
}

/// Runs `args` (`run` or `serve`) and kills the host with SIGKILL at a random moment
/// `from_ms..to_ms` after its start, `kills` times. Every 4th kill, each tenant changes:
/// 3 alerts updated, 2 new ones.
fn kill_repeatedly(
    args: &[String],
    kills: usize,
    (from_ms, to_ms): (u64, u64),
    rng: &mut Rng,
    sims: &[&GraphSim],
) {
    for k in 0..kills {
        let child = Running(
            host(&args.iter().map(String::as_str).collect::<Vec<_>>())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start connector-host"),
        );
        std::thread::sleep(Duration::from_millis(from_ms + rng.below(to_ms - from_ms)));
        drop(child); // SIGKILL (std's kill), then wait
        if k % 4 == 3 {
            for sim in sims {
                support::change_alerts(sim, rng, &format!("k{k}"));
            }
        }
    }
}

/// Kill moments of `run`: it delivers within a few hundred milliseconds of its start.
const RUN_KILLS_MS: (u64, u64) = (100, 500);
/// Kill moments of `serve`: its instances' first polls are spread over their first
/// second (`interval_secs` 1), so it is given longer to reach delivery.
const SERVE_KILLS_MS: (u64, u64) = (300, 1500);

/// Starts `serve` with `args` and waits until every one of `instances` instances has
/// nothing undelivered and `delivered` (given `status --json`) holds; returns the process
/// and its log.
fn serve_until(
    args: &[String],
    state: &str,
    instances: usize,
    mut delivered: impl FnMut(&[Value]) -> bool,
) -> (Running, tempfile::NamedTempFile) {
    let log = tempfile::NamedTempFile::new().unwrap();
    let serve = Running(
        host(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("start connector-host serve"),
    );
    let start = Instant::now();
    loop {
        let rows = status_if_any(state);
        let empty = rows.len() == instances && rows.iter().all(|r| r["undelivered"] == 0);
        if empty && delivered(&rows) {
            return (serve, log);
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "serve did not deliver everything: {rows:?}\n{}",
            std::fs::read_to_string(log.path()).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// [`serve_until`], then SIGTERM: `serve` must exit 0.
fn serve_to_end(
    args: &[String],
    state: &str,
    instances: usize,
    delivered: impl FnMut(&[Value]) -> bool,
) {
    let (serve, log) = serve_until(args, state, instances, delivered);
    let status = serve.stop();
    assert!(
        status.success(),
        "serve stops cleanly on SIGTERM: {status}\n{}",
        std::fs::read_to_string(log.path()).unwrap_or_default()
    );
}

fn run_to_end(args: &[String]) {
    let out = host(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the state left by the kills is usable: {}",
        text(&out.stderr)
    );
}

fn status_json(state: &str) -> Vec<Value> {
    let out = support::run_host(&["status", "--state", state, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `status --json`, or nothing while the state file does not exist yet.
fn status_if_any(state: &str) -> Vec<Value> {
    if !Path::new(state).exists() {
        return vec![];
    }
    status_json(state)
}

fn sim_with_alerts() -> GraphSim {
    sim_with(120, 4)
}

/// `alerts` alerts over the past 20 hours, served at most `page_max` a page.
fn sim_with(alerts: usize, page_max: usize) -> GraphSim {
    let sim = GraphSim::start(Behaviour {
        page_max,
        ..Behaviour::default()
    });
    sim.add_alerts("a", alerts, Duration::from_secs(20 * 3600));
    sim
}

#[test]
fn webhook_kill_9_at_random_moments_loses_nothing_and_repeats_are_recognisable() {
    webhook_kill_test(None);
}

/// The same on a PostgreSQL store: the webhook batch being sent is recorded there (under
/// the lease's fencing token), so a run after a kill re-sends it under the same key.
#[test]
fn webhook_kill_9_on_postgresql_loses_nothing_and_repeats_are_recognisable() {
    let server = support::postgres::PgServer::start();
    webhook_kill_test(Some(server.database("webhook_kills")));
}

/// `state`: a PostgreSQL URL, or the tenant's SQLite file.
fn webhook_kill_test(state: Option<String>) {
    let mut rng = Rng::seeded("SINKS_SEED", "webhook kills");
    let sim = sim_with_alerts();
    let receiver = Receiver::start(0, Answers::Faulty);
    let tenant = tenant_with_sink_secrets(&sim, BEARER);
    let with_state = |args| with_state(args, state.as_deref());
    let sink = receiver.url("max_events=7&max_wait_ms=50&retry_secs=3&timeout_secs=2");
    let args = with_state(run_args(
        &tenant,
        &sink,
        false,
        &["--log-level", "warn", "--interval", "1"],
    ));
    kill_repeatedly(&args, 20, RUN_KILLS_MS, &mut rng, &[&sim]);
    // `run --once` does not hold lines for a sink that fails: a longer retry budget lets
    // it outlast the receiver's faults.
    let patient = receiver.url("max_events=7&max_wait_ms=50&retry_secs=60&timeout_secs=2");
    run_to_end(&with_state(run_args(
        &tenant,
        &patient,
        true,
        &["--log-level", "warn"],
    )));

    let posts = receiver.posts();
    assert!(
        posts.iter().any(|p| !p.acknowledged),
        "the receiver lost some answers (the test exercises repeats)"
    );
    let by_instance = webhook_lines(&posts, 7);
    assert_eq!(by_instance.keys().collect::<Vec<_>>(), ["tenant"]);
    check_against_tenant(&check_lines(&by_instance["tenant"]), &sim);
    let rows = status_json(state.as_deref().unwrap_or(&tenant.path("state.db")));
    assert_eq!(rows[0]["undelivered"], 0, "{rows:?}");
}

/// A sink's lines by instance, each with whether the peer acknowledged it.
type ByInstance = BTreeMap<String, Vec<(bool, String)>>;

/// The lines of the receiver's JSON-array posts by instance, each with whether its post
/// was acknowledged; checked on the way: a batch sent again is the same batch (one body
/// per idempotency key), the key is `<instance>:<first seq>-<last seq>` of its body, and
/// no batch holds more than `max_events`.
fn webhook_lines(posts: &[Post], max_events: usize) -> ByInstance {
    let mut bodies: BTreeMap<&str, &[u8]> = BTreeMap::new();
    let mut lines = ByInstance::new();
    for p in posts {
        if let Some(before) = bodies.insert(&p.key, &p.body) {
            assert_eq!(before, &p.body[..], "key {} sent with another body", p.key);
        }
        let batch: Vec<Value> = serde_json::from_slice(&p.body).unwrap();
        assert!(batch.len() <= max_events, "max_events holds");
        let instance = batch[0]["instance"].as_str().unwrap();
        let (first, last) = (
            batch[0]["seq"].as_u64().unwrap(),
            batch.last().unwrap()["seq"].as_u64().unwrap(),
        );
        assert_eq!(
            p.key,
            format!("{instance}:{first}-{last}"),
            "key names the instance and the seq range"
        );
        let of = lines.entry(instance.to_string()).or_default();
        for v in &batch {
            assert_eq!(
                v["instance"], instance,
                "a batch holds one instance's lines"
            );
            of.push((p.acknowledged, v.to_string()));
        }
    }
    lines
}

/// Whether the acknowledged ones of `lines` hold every current version of `sim`'s alerts
/// (the condition to stop waiting; [`check_against_tenant`] then says what is wrong).
fn holds_every_current_version(lines: Option<&Vec<(bool, String)>>, sim: &GraphSim) -> bool {
    let arrived: BTreeSet<(String, String)> = lines
        .into_iter()
        .flatten()
        .filter(|(acked, _)| *acked)
        .map(|(_, l)| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["id"].as_str().unwrap().to_string(),
                v["version"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    sim.latest().is_subset(&arrived)
}

/// Tenants of the `serve` kill tests: one simulator each, every one serving its own alerts.
const SERVED: [&str; 3] = ["contoso", "fabrikam", "tailspin"];

/// The `serve` kill test of one sink: an instances directory of the [`SERVED`] tenants,
/// one per simulator of `sims` (`file_sink`: each file's own `sink`; otherwise
/// `serve_flags` name it), `serve` killed with SIGKILL 20 times at random moments while
/// the tenants change, then served until every tenant's current versions arrived and
/// stopped with SIGTERM. `read` reads the sink's lines by instance. Checks every
/// instance's lines ([`check_lines`], [`check_against_tenant`]) and returns the lines read
/// while the host was being killed, and at the end.
fn serve_kill_test(
    seed_name: &str,
    sims: &[GraphSim],
    file_sink: Option<&str>,
    serve_flags: &[&str],
    read: impl Fn() -> ByInstance,
) -> (ByInstance, ByInstance) {
    let mut rng = Rng::seeded("SINKS_SEED", seed_name);
    let dir = tempfile::tempdir().unwrap();
    let instances = dir.path().join("instances");
    for (name, sim) in SERVED.iter().zip(sims) {
        write_instance(&instances, name, sim, file_sink);
    }
    let state = dir.path().join("state.db").display().to_string();
    let args = serve_args(
        &instances,
        &state,
        &[&["--log-level", "warn"], serve_flags].concat(),
    );
    let tenants: Vec<&GraphSim> = sims.iter().collect();
    kill_repeatedly(&args, 20, SERVE_KILLS_MS, &mut rng, &tenants);
    let during = read();
    assert!(
        !during.is_empty(),
        "nothing reached the sink while serve was being killed: the kills missed delivery"
    );
    serve_to_end(&args, &state, SERVED.len(), |_| {
        let lines = read();
        SERVED
            .iter()
            .zip(sims)
            .all(|(name, sim)| holds_every_current_version(lines.get(*name), sim))
    });
    let end = read();
    assert_eq!(end.keys().collect::<Vec<_>>(), SERVED);
    for (name, sim) in SERVED.iter().zip(sims) {
        check_against_tenant(&check_lines(&end[*name]), sim);
    }
    (during, end)
}

/// Lines (repeats included) and distinct `seq`s of every instance.
fn counts(lines: &ByInstance) -> (usize, usize) {
    let all = lines.values().map(Vec::len).sum();
    let distinct = lines
        .values()
        .map(|l| {
            l.iter()
                .map(|(_, line)| serde_json::from_str::<Value>(line).unwrap()["seq"].clone())
                .map(|s| s.as_u64().unwrap())
                .collect::<BTreeSet<_>>()
                .len()
        })
        .sum();
    (all, distinct)
}

#[test]
fn serve_webhook_kill_9_at_random_moments_loses_nothing_and_repeats_are_recognisable() {
    // Pages hold a tenant's last 15 minutes (what each poll reads again for late records,
    // the changes of the kills included) in one request: see `serve_kafka_kill_9_…`.
    let sims: Vec<GraphSim> = SERVED.iter().map(|_| sim_with(120, 30)).collect();
    let receiver = Receiver::start(0, Answers::Faulty);
    // Each instance file names the sink itself (the `sink` key).
    let sink = receiver.url("max_events=7&max_wait_ms=50&retry_secs=3&timeout_secs=2");
    let (during, end) = serve_kill_test("serve webhook kills", &sims, Some(&sink), &[], || {
        webhook_lines(&receiver.posts(), 7)
    });
    let posts = receiver.posts();
    assert!(
        posts.iter().any(|p| !p.acknowledged),
        "the receiver lost some answers (the test exercises repeats)"
    );
    eprintln!(
        "serve webhook: {} posts; (lines, seqs) {:?} during the kills, {:?} in all",
        posts.len(),
        counts(&during),
        counts(&end)
    );
}

#[test]
fn a_webhook_that_is_down_holds_delivery_pauses_polls_and_loses_nothing() {
    let sim = sim_with_alerts();
    // A port with nothing listening: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let instances = dir.path().join("instances");
    write_instance(
        &instances,
        "down",
        &sim,
        Some(&format!(
            "http://127.0.0.1:{port}/ingest#format=ndjson&retry_secs=1"
        )),
    );
    let state = dir.path().join("state.db").display().to_string();
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = dir.path().join("serve.log");
    let args = serve_args(
        &instances,
        &state,
        &[
            "--sink-max-lag",
            "20",
            "--metrics",
            &format!("127.0.0.1:{metrics_port}"),
        ],
    );
    let serve = Running(
        host(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let wait_for = |what: &str, timeout: Duration, mut done: Box<dyn FnMut() -> bool + '_>| {
        let start = Instant::now();
        while !done() {
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for {what}; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    // Down: the outbox grows to the bound, polls pause there, status and metrics say so.
    wait_for(
        "the outbox to reach the bound",
        Duration::from_secs(30),
        Box::new(|| {
            status_if_any(&state)
                .first()
                .is_some_and(|r| r["undelivered"].as_u64().unwrap_or(0) >= 20)
        }),
    );
    let requests_at_bound = sim.requests().len();
    std::thread::sleep(Duration::from_secs(3));
    let row = status_json(&state).remove(0);
    assert_eq!(row["last_error_code"], "delivery", "{row}");
    assert!(
        row["last_error"]
            .as_str()
            .unwrap()
            .contains("does not take events now"),
        "{row}"
    );
    let held = row["undelivered"].as_u64().unwrap();
    assert!(held < 20 + 8, "polls paused near the bound: {held} waiting");
    assert!(
        sim.requests().len() <= requests_at_bound + 2,
        "no polls while paused"
    );
    let scrape = metrics(metrics_port);
    assert!(
        scrape.contains(&format!(
            "connector_sink_lag_events{{instance=\"down\",connector=\"defender-alerts\"}} {held}"
        )),
        "{scrape}"
    );
    let errors_line = scrape
        .lines()
        .find(|l| l.starts_with("connector_sink_errors_total{instance=\"down\""))
        .unwrap_or_else(|| panic!("{scrape}"));
    assert!(!errors_line.ends_with(" 0.0"), "{errors_line}");
    assert!(
        !std::fs::read_to_string(&log).unwrap().contains(HMAC_SECRET),
        "no sink secret in the log"
    );

    // Up again: everything arrives, in order, and the backfill resumes.
    let receiver = Receiver::start(port, Answers::Ok);
    wait_for(
        "every event to be delivered",
        Duration::from_secs(60),
        Box::new(|| {
            let rows = status_json(&state);
            let events = receiver
                .posts()
                .iter()
                .map(|p| p.body.iter().filter(|&&b| b == b'\n').count())
                .sum::<usize>();
            rows[0]["undelivered"] == 0 && events >= 120
        }),
    );
    serve.stop();
    let lines: Vec<(bool, String)> = receiver
        .posts()
        .iter()
        .flat_map(|p| {
            String::from_utf8(p.body.clone())
                .unwrap()
                .lines()
                .map(|l| (true, l.to_string()))
                .collect::<Vec<_>>()
        })
        .collect();
    check_against_tenant(&check_lines(&lines), &sim);
}

/// A loopback endpoint that takes connections and never answers.
struct Hanging {
    port: u16,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
}

impl Hanging {
    fn start() -> Hanging {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        // Ends with the test process; the connections stay open, unanswered, till then.
        std::thread::spawn(move || {
            let mut held = vec![];
            for stream in listener.incoming().flatten() {
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                held.push(stream);
            }
        });
        Hanging { port, accepted }
    }
}

/// SIGTERM, then the exit status and how long the process took to exit; fails (killing
/// it) past `limit`.
fn stop_within(mut process: Running, limit: Duration) -> (std::process::ExitStatus, Duration) {
    let start = Instant::now();
    unsafe { libc::kill(process.0.id() as i32, libc::SIGTERM) };
    loop {
        if let Some(status) = process.0.try_wait().unwrap() {
            return (status, start.elapsed());
        }
        assert!(
            start.elapsed() < limit,
            "still running {limit:?} after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_is_not_delayed_by_a_webhook_that_keeps_failing_or_hangs() {
    let sim = sim_with_alerts();
    let failing = Receiver::start(0, Answers::Always(503));
    let hanging = Hanging::start();
    let dir = tempfile::tempdir().unwrap();
    let instances = dir.path().join("instances");
    // Retries and requests that could go on for an hour.
    let patient = "retry_secs=3600&timeout_secs=3600";
    write_instance(&instances, "failing", &sim, Some(&failing.url(patient)));
    let hangs = format!("http://127.0.0.1:{}/ingest#{patient}", hanging.port);
    write_instance(&instances, "hanging", &sim, Some(&hangs));
    let state = dir.path().join("state.db").display().to_string();
    let log = dir.path().join("serve.log");
    let serve = Running(
        host(
            &serve_args(&instances, &state, &[])
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap(),
    );
    let start = Instant::now();
    // Both deliveries under way: the failing one sent again at least once, the hanging
    // one's request taken, events committed for both.
    while failing.requests() < 2
        || hanging.accepted.load(std::sync::atomic::Ordering::Relaxed) == 0
        || status_if_any(&state)
            .iter()
            .filter(|r| r["undelivered"].as_u64() > Some(0))
            .count()
            < 2
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the deliveries did not start:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (status, took) = stop_within(serve, Duration::from_secs(10));
    let logged = std::fs::read_to_string(&log).unwrap();
    eprintln!("serve exited {took:?} after SIGTERM");
    assert!(status.success(), "{status}\n{logged}");
    assert!(
        took < Duration::from_secs(3),
        "SIGTERM took {took:?}\n{logged}"
    );
    // Nothing marked delivered: every committed event still waits for the next run.
    for row in status_json(&state) {
        assert!(row["undelivered"].as_u64().unwrap() > 0, "{row}");
        assert_eq!(row["undelivered"], row["events"], "{row}");
    }
    assert!(
        logged.contains("stopping, so not sent again now"),
        "{logged}"
    );
}

fn metrics(port: u16) -> String {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics listener");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn a_webhook_refusing_the_credentials_stops_with_the_cause_and_marks_nothing_delivered() {
    let sim = sim_with_alerts();
    let receiver = Receiver::start(0, Answers::Ok);
    let tenant = tenant_with_sink_secrets(&sim, "a-wrong-token");
    let args = run_args(&tenant, &receiver.url(""), true, &[]);
    let out = host(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refused the events: HTTP 401"), "{stderr}");
    assert!(stderr.contains("sink-bearer-token"), "{stderr}");
    assert!(
        !stderr.contains("a-wrong-token") && !stderr.contains(HMAC_SECRET),
        "{stderr}"
    );
    assert!(receiver.posts().is_empty());
    let rows = status_json(&tenant.path("state.db"));
    assert!(rows[0]["undelivered"].as_u64().unwrap() > 0, "{rows:?}");
    assert_eq!(rows[0]["last_error_code"], "delivery", "{rows:?}");
}

/// Every record of `topic` on the mock cluster: (key, value, seq header, instance header).
fn consume(bootstrap: &str, topic: &str) -> Vec<(String, String, String, String)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "sinks-test")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    // Partitions assigned from the beginning: no group rebalance to wait for.
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut assignment = rdkafka::TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        assignment
            .add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut records = vec![];
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(2) {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let header = |name: &str| {
                    m.headers()
                        .and_then(|h| h.iter().find(|x| x.key == name))
                        .and_then(|x| x.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default()
                };
                records.push((
                    String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                    header("seq"),
                    header("instance"),
                ));
                quiet_since = Instant::now();
            }
            Some(Err(e)) => panic!("consumer: {e}"),
            None => {}
        }
    }
    records
}

#[test]
fn kafka_kill_9_at_random_moments_loses_nothing_and_repeats_are_recognisable() {
    let mut rng = Rng::seeded("SINKS_SEED", "kafka kills");
    let cluster = MockCluster::new(3).unwrap();
    cluster.create_topic("secops.defender.alert", 3, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let sim = sim_with_alerts();
    let tenant = Tenant::new(&sim);
    let sink = format!("kafka://{bootstrap}?topic=secops.{{kind}}");
    let args = run_args(
        &tenant,
        &sink,
        false,
        &["--log-level", "warn", "--interval", "1"],
    );
    kill_repeatedly(&args, 20, RUN_KILLS_MS, &mut rng, &[&sim]);
    run_to_end(&run_args(&tenant, &sink, true, &["--log-level", "warn"]));

    let records = consume(&bootstrap, "secops.defender.alert");
    let by_instance = kafka_lines(&records);
    assert_eq!(by_instance.keys().collect::<Vec<_>>(), ["tenant"]);
    let lines = check_lines(&by_instance["tenant"]);
    check_against_tenant(&lines, &sim);
    eprintln!("kafka: {} records for {} lines", records.len(), lines.len());
    let rows = status_json(&tenant.path("state.db"));
    assert_eq!(rows[0]["undelivered"], 0, "{rows:?}");
}

/// The values of `records` by their `instance` header (each acknowledged: the broker
/// holds it), checked on the way: the `seq` header is the line's `seq`, the `instance`
/// header its instance and the key `<instance>/<kind>/<id>`, the record's identity.
fn kafka_lines(records: &[(String, String, String, String)]) -> ByInstance {
    let mut lines = ByInstance::new();
    for (key, value, seq, instance) in records {
        let v: Value = serde_json::from_str(value).unwrap();
        assert_eq!(seq, &v["seq"].to_string(), "seq header is the line's seq");
        assert_eq!(instance, v["instance"].as_str().unwrap(), "instance header");
        assert_eq!(
            key,
            &format!(
                "{instance}/{}/{}",
                v["kind"].as_str().unwrap(),
                v["id"].as_str().unwrap()
            ),
            "key is the record's identity"
        );
        lines
            .entry(instance.clone())
            .or_default()
            .push((true, value.clone()));
    }
    lines
}

#[test]
fn serve_kafka_kill_9_at_random_moments_loses_nothing_and_repeats_are_recognisable() {
    let cluster = MockCluster::new(3).unwrap();
    let topic = "secops.defender.alert";
    cluster.create_topic(topic, 3, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    // Enough alerts that the first kills fall in each tenant's backfill, in pages that
    // hold a tenant's last 15 minutes (each poll reads them again for late records, the
    // kills' changes included) in one request. When that window takes more than one
    // page, `serve` reads it again at every poll of a turn, spends the alerts call budget
    // (150 a minute) within seconds and then waits up to a minute for it.
    let sims: Vec<GraphSim> = SERVED.iter().map(|_| sim_with(600, 40)).collect();
    // The instance files name no sink: `serve --sink` is every instance's.
    let sink = format!("kafka://{bootstrap}?topic=secops.{{kind}}");
    let (during, end) =
        serve_kill_test("serve kafka kills", &sims, None, &["--sink", &sink], || {
            kafka_lines(&consume(&bootstrap, topic))
        });
    eprintln!(
        "serve kafka: (records, seqs) {:?} during the kills, {:?} in all",
        counts(&during),
        counts(&end)
    );
}

#[test]
fn kafka_refusing_the_topic_stops_with_the_cause_and_marks_nothing_delivered() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("secops-events", 1, 1).unwrap();
    cluster
        .topic_error(
            "secops-events",
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        )
        .unwrap();
    let sim = sim_with_alerts();
    let tenant = Tenant::new(&sim);
    let sink = format!(
        "kafka://{}?message.timeout.ms=5000",
        cluster.bootstrap_servers()
    );
    let out = host(
        &run_args(&tenant, &sink, true, &[])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )
    .output()
    .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refused the events"), "{stderr}");
    assert!(stderr.contains("ACLs"), "{stderr}");
    let rows = status_json(&tenant.path("state.db"));
    assert!(rows[0]["undelivered"].as_u64().unwrap() > 0, "{rows:?}");
}

/// The cluster is "down" by refusing every produce request with a retriable error
/// (NOT_ENOUGH_REPLICAS: too few in-sync replicas to take writes) until the errors are
/// cleared. (Stopping and restarting a mock broker instead rebinds its port, which aborts
/// the whole test process when a parallel test took that port meanwhile.)
#[test]
fn a_kafka_cluster_that_is_down_holds_delivery_and_loses_nothing() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("secops-events", 1, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 100_000],
    );
    let sim = sim_with_alerts();
    let tenant = Tenant::new(&sim);
    let sink = format!("kafka://{bootstrap}?message.timeout.ms=2000");
    let args = run_args(
        &tenant,
        &sink,
        false,
        &["--interval", "1", "--sink-max-lag", "12"],
    );
    let log = tenant.dir.path().join("run.log");
    let run = Running(
        host(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let state = tenant.path("state.db");
    let start = Instant::now();
    loop {
        let rows = status_if_any(&state);
        if rows.first().is_some_and(|r| {
            r["last_error_code"] == "delivery" && r["undelivered"].as_u64().unwrap_or(0) >= 12
        }) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "the outbox did not grow to the bound: {rows:?}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    cluster.clear_request_errors(RDKafkaApiKey::Produce);
    let start = Instant::now();
    while status_json(&state)[0]["undelivered"] != 0
        || consume(&bootstrap, "secops-events").len() < sim.latest().len()
    {
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "not delivered after the broker came back:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    run.stop();
    let lines: Vec<(bool, String)> = consume(&bootstrap, "secops-events")
        .into_iter()
        .map(|(_, v, _, _)| (true, v))
        .collect();
    check_against_tenant(&check_lines(&lines), &sim);
}

/// Every instance of a `serve` that sends to one cluster shares one producer: librdkafka's
/// threads (named `rdk:…`, a few per broker per producer) do not grow with the instances.
#[test]
fn serve_instances_on_one_kafka_cluster_share_one_producer() {
    const INSTANCES: usize = 16;
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("secops-events", 1, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let sim = sim_with_alerts();
    let dir = tempfile::tempdir().unwrap();
    let instances = dir.path().join("instances");
    let sink = format!("kafka://{bootstrap}?message.timeout.ms=5000");
    for i in 0..INSTANCES {
        write_instance(&instances, &format!("t{i:02}"), &sim, Some(&sink));
    }
    let state = dir.path().join("state.db").display().to_string();
    let args = serve_args(
        &instances,
        &state,
        &["--workers", "4", "--log-level", "warn"],
    );
    let alerts = sim.latest().len() as u64;
    let (serve, _log) = serve_until(&args, &state, INSTANCES, |rows| {
        rows.iter().all(|r| r["events"].as_u64() >= Some(alerts))
    });
    let tasks = std::fs::read_dir(format!("/proc/{}/task", serve.0.id())).unwrap();
    let librdkafka = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("rdk:"))
        .count();
    // One producer on one broker: rdk:main, the internal and bootstrap broker threads, and
    // the broker's own; one producer per instance would be INSTANCES times that.
    assert!(
        (1..=6).contains(&librdkafka),
        "{librdkafka} librdkafka threads for {INSTANCES} instances on one cluster"
    );
    eprintln!("{librdkafka} librdkafka threads for {INSTANCES} instances on one cluster");
    serve.stop();
    let records = consume(&bootstrap, "secops-events");
    assert!(
        records.len() >= INSTANCES * sim.latest().len(),
        "{}",
        records.len()
    );
}
