//! Freshness at scale: how long a record takes from appearing in Graph to its line leaving
//! `connector-host serve`, with many tenants on one host and some of them hanging.
//!
//! A simulated Graph on loopback answers every list request after 100 ms; the Graph calls
//! of one tenant in ten hang past the host's HTTP timeout. `serve` (this profile's binary)
//! runs one alerts instance per tenant, polling every `interval` seconds, writing to
//! stdout, which this bench reads and timestamps. After every instance has polled once,
//! each healthy tenant gets one new alert at a random moment of the measured minutes.
//!
//! ```text
//! cargo bench -p connector-host --bench freshness -- [instances] [interval_secs] [minutes] [workers]
//! ```
//! (defaults 10000, 60, 3 and serve's own default). Prints the freshness percentiles, the
//! records missing, token requests per tenant, and serve's RSS and threads.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use serde_json::{Value, json};

const CLIENT: &str = "2b7c9d1e-3f4a-4b5c-8d6e-7f8a9b0c1d2e";
const SECRET: &str = "bench-secret-not-real";
/// What a healthy Graph call takes.
const LATENCY: Duration = Duration::from_millis(100);
/// serve's HTTP timeout here; a hanging tenant's calls outlast it.
const HTTP_TIMEOUT_SECS: u64 = 30;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let arg = |i: usize, default: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (instances, interval, minutes) = (arg(0, 10_000), arg(1, 60), arg(2, 3));
    let workers = args.get(3).cloned();

    let graph = Graph::start();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("instances");
    std::fs::create_dir_all(&dir).unwrap();
    let secret = work.path().join("secret.json");
    std::fs::write(&secret, json!({"client-secret": SECRET}).to_string()).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let wasm = connector_host::component_path("defender-alerts");
    let tenants: Vec<String> = (0..instances).map(tenant_id).collect();
    for (n, tenant) in tenants.iter().enumerate() {
        let file = json!({
            "component": wasm,
            "secrets": secret,
            "interval_secs": interval,
            "config": {"tenant_id": tenant, "client_id": CLIENT, "backfill_days": 1,
                       "login_url": graph.base, "graph_url": graph.base},
        });
        std::fs::write(dir.join(format!("t{n}.json")), file.to_string()).unwrap();
    }

    let mut serve = Command::new(env!("CARGO_BIN_EXE_connector-host"));
    serve.args(["serve", "--instances"]).arg(&dir);
    serve.arg("--state").arg(work.path().join("state.db"));
    serve.args(["--out", "-", "--log-level", "warn", "--rescan-secs", "3600"]);
    serve.args(["--http-timeout-secs", &HTTP_TIMEOUT_SECS.to_string()]);
    if let Some(w) = &workers {
        serve.args(["--workers", w]);
    }
    let log = work.path().join("serve.log");
    let mut child = serve
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start serve");
    let started = Instant::now();

    // Every line, timestamped as it arrives.
    let arrivals: Arc<Mutex<Vec<(String, SystemTime)>>> = Arc::default();
    let reader = {
        let arrivals = arrivals.clone();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let at = SystemTime::now();
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && let Some(id) = v["id"].as_str()
                {
                    arrivals.lock().unwrap().push((id.to_string(), at));
                }
            }
        })
    };

    // Every healthy tenant has polled once (a slow one has at least called).
    let healthy: Vec<&String> = tenants.iter().filter(|t| !is_slow(t)).collect();
    loop {
        let polled = graph.polled_tenants();
        eprintln!(
            "{:>5.0} s: {polled} of {} tenants polled",
            started.elapsed().as_secs_f64(),
            tenants.len()
        );
        if polled >= tenants.len() {
            break;
        }
        std::thread::sleep(Duration::from_secs(5));
    }
    let all_polled = started.elapsed();

    // One alert per healthy tenant at a random moment of the measured minutes.
    let span = Duration::from_secs(minutes * 60);
    let mut plan: Vec<(Duration, &String)> = healthy
        .iter()
        .enumerate()
        .map(|(i, t)| (span.mul_f64(unit(i as u64)), *t))
        .collect();
    plan.sort();
    let begin = Instant::now();
    for (n, (at, tenant)) in plan.iter().enumerate() {
        if let Some(wait) = at.checked_sub(begin.elapsed()) {
            std::thread::sleep(wait);
        }
        graph.add_alert(tenant, &format!("alert-{n}"));
    }
    // Long enough for the last alert's tenant to poll, plus the hanging tenants' timeouts.
    std::thread::sleep(Duration::from_secs(interval + HTTP_TIMEOUT_SECS + 5));

    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let (rss, peak, threads) = (field("VmRSS:"), field("VmHWM:"), field("Threads:"));
    terminate(child.id());
    let _ = child.wait();
    let _ = reader.join();

    let appeared = graph.appeared();
    let arrivals = arrivals.lock().unwrap();
    let mut first: HashMap<&str, SystemTime> = HashMap::new();
    for (id, at) in arrivals.iter() {
        first.entry(id.as_str()).or_insert(*at);
    }
    let mut lags: Vec<f64> = appeared
        .iter()
        .filter_map(|(id, t)| {
            Some(
                first
                    .get(id.as_str())?
                    .duration_since(*t)
                    .ok()?
                    .as_secs_f64(),
            )
        })
        .collect();
    lags.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lags.get(((lags.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let missing = appeared.len() - lags.len();
    let tokens = graph.token_requests.lock().unwrap();
    let most_tokens = tokens.values().max().copied().unwrap_or(0);
    println!(
        "instances {instances} ({} hanging), interval {interval} s, workers {}, HTTP timeout {HTTP_TIMEOUT_SECS} s",
        tenants.len() - healthy.len(),
        workers.as_deref().unwrap_or("default")
    );
    println!(
        "every instance polled once after {:.1} s",
        all_polled.as_secs_f64()
    );
    println!(
        "freshness of {} alerts: p50 {:.1} s, p99 {:.1} s, max {:.1} s; missing {missing}; lines {}",
        lags.len(),
        pct(0.5),
        pct(0.99),
        lags.last().copied().unwrap_or(f64::NAN),
        arrivals.len()
    );
    println!(
        "token requests: {} in all, at most {most_tokens} for one tenant; Graph list calls {}",
        tokens.values().sum::<u64>(),
        graph.list_calls.load(Ordering::Relaxed)
    );
    println!("serve: RSS {rss} (peak {peak}), threads {threads}");
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .collect();
    println!(
        "serve's log: {} lines, {} warnings and errors",
        log.lines().count(),
        errors.len()
    );
    for line in errors.iter().take(5) {
        println!("  {line}");
    }
    graph.stop.store(true, Ordering::Relaxed);
}

fn tenant_id(n: u64) -> String {
    format!("{n:08x}-0000-4000-8000-{n:012x}")
}

/// One tenant in ten hangs.
fn is_slow(tenant: &str) -> bool {
    u64::from_str_radix(&tenant[..8], 16)
        .unwrap_or(0)
        .is_multiple_of(10)
}

/// A fixed pseudo-random number in [0, 1) for `n` (the plan is the same every run).
fn unit(n: u64) -> f64 {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

fn terminate(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

/// The simulated Graph: a token endpoint for any tenant, and `alerts_v2` filtered by
/// `lastUpdateDateTime` with `$count`, per tenant (the tenant read back from the token).
struct Graph {
    base: String,
    alerts: Mutex<HashMap<String, Vec<(String, SystemTime)>>>,
    polled: Mutex<std::collections::HashSet<String>>,
    token_requests: Mutex<HashMap<String, u64>>,
    list_calls: AtomicU64,
    stop: AtomicBool,
}

impl Graph {
    fn start() -> Arc<Graph> {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let graph = Arc::new(Graph {
            base: format!("http://{}", server.server_addr().to_ip().unwrap()),
            alerts: Mutex::default(),
            polled: Mutex::default(),
            token_requests: Mutex::default(),
            list_calls: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        // Enough threads for every call in flight: the host's workers bound them.
        for _ in 0..512 {
            let (server, graph) = (server.clone(), graph.clone());
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    while !graph.stop.load(Ordering::Relaxed) {
                        if let Ok(Some(request)) = server.recv_timeout(Duration::from_millis(200)) {
                            graph.handle(request);
                        }
                    }
                })
                .unwrap();
        }
        graph
    }

    fn polled_tenants(&self) -> usize {
        self.polled.lock().unwrap().len()
    }

    fn add_alert(&self, tenant: &str, id: &str) {
        let mut alerts = self.alerts.lock().unwrap();
        alerts
            .entry(tenant.to_string())
            .or_default()
            .push((id.to_string(), SystemTime::now()));
    }

    fn appeared(&self) -> Vec<(String, SystemTime)> {
        self.alerts
            .lock()
            .unwrap()
            .values()
            .flatten()
            .cloned()
            .collect()
    }

    fn handle(&self, mut request: tiny_http::Request) {
        let url = request.url().to_string();
        if url.ends_with("/oauth2/v2.0/token") {
            let tenant = url
                .trim_start_matches('/')
                .split('/')
                .next()
                .unwrap_or_default()
                .to_string();
            let mut body = String::new();
            let _ = request.as_reader().read_to_string(&mut body);
            if !body.contains(SECRET) {
                return respond(request, 401, json!({"error": "invalid_client"}));
            }
            *self
                .token_requests
                .lock()
                .unwrap()
                .entry(tenant.clone())
                .or_default() += 1;
            let token = token_for(&tenant);
            return respond(
                request,
                200,
                json!({"token_type": "Bearer", "expires_in": 3599, "access_token": token}),
            );
        }
        let tenant = request
            .headers()
            .iter()
            .find(|h| h.field.equiv("Authorization"))
            .and_then(|h| tenant_of(h.value.as_str()))
            .unwrap_or_default();
        self.list_calls.fetch_add(1, Ordering::Relaxed);
        self.polled.lock().unwrap().insert(tenant.clone());
        if is_slow(&tenant) {
            std::thread::sleep(Duration::from_secs(HTTP_TIMEOUT_SECS + 2));
            return respond(
                request,
                503,
                json!({"error": {"code": "ServiceUnavailable"}}),
            );
        }
        std::thread::sleep(LATENCY);
        let query = url::Url::parse(&format!("http://graph{url}")).unwrap();
        let filter = query
            .query_pairs()
            .find(|(k, _)| k == "$filter")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        let bound = |op: &str| {
            filter
                .split(&format!("lastUpdateDateTime {op} "))
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        };
        let (from, to) = (bound("ge").unwrap_or(SystemTime::UNIX_EPOCH), bound("le"));
        let alerts = self.alerts.lock().unwrap();
        let records: Vec<Value> = alerts
            .get(&tenant)
            .into_iter()
            .flatten()
            .filter(|(_, t)| *t >= from && to.is_none_or(|to| *t <= to))
            .map(|(id, t)| {
                let at = humantime::format_rfc3339_millis(*t).to_string();
                json!({"id": id, "title": "bench alert", "severity": "high",
                       "createdDateTime": at, "lastUpdateDateTime": at})
            })
            .collect();
        drop(alerts);
        respond(
            request,
            200,
            json!({"@odata.count": records.len(), "value": records}),
        );
    }
}

fn token_for(tenant: &str) -> String {
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.sig",
        b64(json!({"alg": "none"})),
        b64(json!({"tid": tenant, "roles": ["SecurityAlert.Read.All"]}))
    )
}

fn tenant_of(authorization: &str) -> Option<String> {
    let token = authorization.strip_prefix("Bearer ")?;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    Some(v["tid"].as_str()?.to_string())
}

fn respond(request: tiny_http::Request, status: u16, body: Value) {
    let header = tiny_http::Header::from_bytes("Content-Type", "application/json").unwrap();
    let response = tiny_http::Response::from_string(body.to_string())
        .with_status_code(status)
        .with_header(header);
    let _ = request.respond(response);
}
