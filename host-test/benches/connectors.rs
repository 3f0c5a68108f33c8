//! Benchmarks of the connectors and the host. Prints each figure with what produced it;
//! `BENCHMARKS.md` records a run. Run: `cargo bench -p connector-host --bench connectors`.
//!
//! Absolute times on shared machines are noisy, so the per-event cost is reported as the
//! ratio of the same library code path run inside the component (through the host) and
//! natively, measured side by side in one run.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use connector_host::bindings::secops::connector::http as host_http;
use connector_host::clock::SystemClock;
use connector_host::engine::{HostEngine, Limits, LoadedComponent, MemoryLayout};
use connector_host::imports::http::AllowList;
use connector_host::imports::token_cache::{TokenCache, TokenContext};
use connector_host::imports::{Transport, Wiring};
use connector_host::instance::Instance as HostInstance;
use connector_host::redact::Redactor;
use connector_host::runner::{RunSetup, Runner};
use connector_host::secrets::Secrets;
use connector_host::sink::Sink;
use connector_host::state::StateDb;
use secops_connector::platform::Platform;
use secops_connector::runtime::Instance as NativeInstance;
use secops_connector::time::Timestamp;
use secops_connector::types as guest;
use secops_connector::{Connector, DataType, Options, Query};
use serde_json::{Value, json};

const TENANT: &str = "8f6b2a4e-0c1d-4e5f-9a7b-3c2d1e0f4a5b";
const CLIENT: &str = "2b7c9d1e-3f4a-4b5c-8d6e-7f8a9b0c1d2e";

fn config(extra: Value) -> String {
    let mut c = json!({"tenant_id": TENANT, "client_id": CLIENT, "backfill_days": 1});
    if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    c.to_string()
}

fn token_body() -> Vec<u8> {
    use base64::Engine as _;
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let jwt = format!(
        "{}.{}.x",
        b64(json!({"alg": "none"})),
        b64(json!({"roles": ["SecurityAlert.Read.All", "SecurityIncident.Read.All"]}))
    );
    json!({"token_type": "Bearer", "expires_in": 3599, "access_token": jwt})
        .to_string()
        .into_bytes()
}

/// A JSON object with its keys in the given order (serde_json's map would sort them).
fn ordered(pairs: Vec<(&str, Value)>) -> Value {
    let text = pairs
        .iter()
        .map(|(k, v)| format!("{}:{v}", Value::from(*k)))
        .collect::<Vec<_>>()
        .join(",");
    serde_json::from_str::<Box<serde_json::value::RawValue>>(&format!("{{{text}}}"))
        .map(|raw| Value::String(raw.get().to_string()))
        .expect("valid JSON")
}

/// A synthetic alert shaped like a real one, with its fields in Graph's order (ids and
/// times first, evidence last), as raw JSON text.
fn alert_json(i: usize) -> String {
    let t = format!(
        "2026-11-20T{:02}:{:02}:{:02}.000Z",
        11 - (i / 3600) % 10,
        (i / 60) % 60,
        i % 60
    );
    let id = format!("da6386{i:014}_-961444813");
    let fields = vec![
        ("@odata.type", json!("#microsoft.graph.security.alert")),
        ("id", json!(id)),
        ("providerAlertId", json!(id)),
        ("incidentId", json!(format!("{}", 4100 + i / 2))),
        ("status", json!("new")),
        ("severity", json!("medium")),
        ("classification", Value::Null),
        ("determination", Value::Null),
        ("serviceSource", json!("microsoftDefenderForEndpoint")),
        ("detectionSource", json!("antivirus")),
        ("tenantId", json!(TENANT)),
        ("title", json!("Suspicious PowerShell command line")),
        (
            "description",
            json!(
                "A suspicious PowerShell command line was observed on the device; it may be part of an attack."
            ),
        ),
        ("category", json!("Execution")),
        ("assignedTo", Value::Null),
        (
            "alertWebUrl",
            json!(format!(
                "https://security.microsoft.com/alerts/{id}?tid={TENANT}"
            )),
        ),
        ("mitreTechniques", json!(["T1059.001"])),
        ("createdDateTime", json!(t)),
        ("lastUpdateDateTime", json!(t)),
        ("firstActivityDateTime", json!(t)),
        ("lastActivityDateTime", json!(t)),
        ("comments", json!([])),
        (
            "evidence",
            json!([{"@odata.type": "#microsoft.graph.security.deviceEvidence", "createdDateTime": t,
            "verdict": "suspicious", "remediationStatus": "none", "deviceDnsName": format!("ws-{i}.contoso.example"),
            "osPlatform": "Windows11", "roles": [], "tags": []},
            {"@odata.type": "#microsoft.graph.security.processEvidence", "createdDateTime": t, "verdict": "suspicious",
            "processCommandLine": "powershell.exe -enc SQBFAFgAIAAoAE4AZQB3AC0ATwBiAGoAZQBjAHQAIABOAGUAdAAuAFcAZQBiAEMAbABpAGUAbgB0ACkA",
            "processId": 4242, "roles": [], "tags": []}]),
        ),
    ];
    match ordered(fields) {
        Value::String(text) => text,
        _ => unreachable!(),
    }
}

fn page_of(context: &str, records: Vec<String>) -> Vec<u8> {
    format!("{{\"@odata.context\":\"https://graph.microsoft.com/v1.0/$metadata#{context}\",\"value\":[{}]}}", records.join(","))
        .into_bytes()
}

fn alerts_page(n: usize) -> Vec<u8> {
    page_of("security/alerts_v2", (0..n).map(alert_json).collect())
}

fn incidents_page(n: usize) -> Vec<u8> {
    let records = (0..n)
        .map(|i| {
            let t = format!("2026-11-20T11:{:02}:{:02}.000Z", (i / 60) % 60, i % 60);
            let fields = vec![
                ("@odata.type", json!("#microsoft.graph.security.incident")),
                ("id", json!(format!("{}", 4100 + i))),
                (
                    "displayName",
                    json!("Multi-stage incident involving Execution"),
                ),
                ("createdDateTime", json!(t)),
                ("lastUpdateDateTime", json!(t)),
                ("assignedTo", Value::Null),
                ("classification", json!("unknown")),
                ("determination", json!("unknown")),
                ("status", json!("active")),
                ("severity", json!("high")),
                ("customTags", json!([])),
                ("systemTags", json!([])),
                ("comments", json!([])),
            ];
            let head = match ordered(fields) {
                Value::String(text) => text,
                _ => unreachable!(),
            };
            format!(
                "{},\"alerts\":[{},{}]}}",
                head.trim_end_matches('}'),
                alert_json(2 * i),
                alert_json(2 * i + 1)
            )
        })
        .collect();
    page_of("security/incidents", records)
}

// ---- native: the shared library's code path with an in-memory platform ----

const ALERTS: DataType = DataType::new(
    "alerts",
    "defender.alert",
    "/v1.0/security/alerts_v2",
    &["SecurityAlert.Read.All"],
    "createdDateTime",
    2000,
)
.versioned_by("lastUpdateDateTime");

const INCIDENTS: DataType = DataType::new(
    "incidents",
    "defender.incident",
    "/v1.0/security/incidents",
    &["SecurityIncident.Read.All"],
    "createdDateTime",
    100,
)
.versioned_by("lastUpdateDateTime");

struct NativeAlerts;
impl Connector for NativeAlerts {
    const NAME: &'static str = "defender-alerts";
    const VERSION: &'static str = "bench";
    const DESCRIPTION: &'static str = "bench";
    const POLL_INTERVAL_SECS: u32 = 60;
    const DATA_TYPES: &'static [DataType] = &[ALERTS];
    fn config_properties() -> Value {
        json!({})
    }
    fn queries(_: &mut Options) -> Result<Vec<Query>, guest::ConfigError> {
        Ok(vec![Query::plain(&ALERTS)])
    }
}

struct NativeIncidents;
impl Connector for NativeIncidents {
    const NAME: &'static str = "defender-incidents";
    const VERSION: &'static str = "bench";
    const DESCRIPTION: &'static str = "bench";
    const POLL_INTERVAL_SECS: u32 = 60;
    const DATA_TYPES: &'static [DataType] = &[INCIDENTS];
    fn config_properties() -> Value {
        json!({})
    }
    fn queries(_: &mut Options) -> Result<Vec<Query>, guest::ConfigError> {
        Ok(vec![Query {
            expand: Some("alerts"),
            ..Query::plain(&INCIDENTS)
        }])
    }
}

/// Answers the token endpoint and serves one page to any Graph request; KV in memory.
struct NativePlatform {
    page: Vec<u8>,
    kv: RefCell<BTreeMap<String, String>>,
}

impl Platform for NativePlatform {
    fn send(&self, r: &guest::Request) -> Result<guest::Response, guest::HttpError> {
        let body = if r.method == "POST" {
            token_body()
        } else {
            self.page.clone()
        };
        Ok(guest::Response {
            status: 200,
            headers: vec![],
            body,
        })
    }
    fn secret(&self, _: &str) -> Option<String> {
        Some("bench-secret-value".into())
    }
    fn kv_get(&self, key: &str) -> Result<Option<String>, guest::KvError> {
        Ok(self.kv.borrow().get(key).cloned())
    }
    fn kv_set(&self, _: &str, _: &str) -> Result<(), guest::KvError> {
        Ok(()) // staged writes are dropped, as the host drops them when it does not commit
    }
    fn kv_set_now(&self, key: &str, value: &str) -> Result<(), guest::KvError> {
        self.kv.borrow_mut().insert(key.into(), value.into());
        Ok(())
    }
    fn log(&self, _: guest::Level, _: &str) {}
    fn now(&self) -> Timestamp {
        Timestamp::parse("2026-11-20T12:00:00Z").unwrap()
    }
    fn random(&self) -> u64 {
        4
    }
    fn sleep_millis(&self, _ms: u64) {
        // The native side of the benchmark never waits for a budget.
    }
    fn token_cached(&self) -> Option<(String, Timestamp)> {
        None // as a fresh process: the native side requests its token like the wasm one
    }
    fn token_store(&self, _: &str, _: Timestamp) {}
    fn token_forget(&self) {}
}

fn native_poll<C: Connector>(page: &[u8], iterations: u32) -> (Duration, usize) {
    let p = NativePlatform {
        page: page.to_vec(),
        kv: RefCell::default(),
    };
    let mut i = NativeInstance::configure::<C>(&p, &config(json!({}))).expect("configure");
    let mut events = 0;
    let started = Instant::now();
    for _ in 0..iterations {
        events = i.poll(&p, None).expect("poll").events.len();
    }
    (started.elapsed() / iterations, events)
}

// ---- wasm: the same path inside the component, through the host ----

struct PageTransport(Vec<u8>);

impl Transport for PageTransport {
    fn send(
        &self,
        r: &host_http::Request,
        _: Duration,
        _: u64,
    ) -> Result<host_http::Response, host_http::HttpError> {
        let body = if r.method == "POST" {
            token_body()
        } else {
            self.0.clone()
        };
        Ok(host_http::Response {
            status: 200,
            headers: vec![],
            body,
        })
    }
}

fn wiring(instance: &str, page: &[u8], state: Arc<Mutex<StateDb>>, config: &str) -> Wiring {
    Wiring {
        instance: instance.into(),
        transport: Arc::new(PageTransport(page.to_vec())),
        allow: AllowList::from_config(config),
        http_timeout_cap: Duration::from_secs(60),
        http_body_cap: 256 << 20,
        secrets: Secrets::from_map(
            [(
                "client-secret".to_string(),
                "bench-secret-value".to_string(),
            )]
            .into(),
        ),
        state,
        // The synthetic records' day: a window opened at the system's date would start
        // after them, and a poll would deliver none of them.
        clock: Arc::new(connector_host::clock::VirtualClock::new(
            humantime::parse_rfc3339("2026-11-20T12:00:00Z").unwrap(),
        )),
        redactor: Redactor::default(),
        memory_bytes: 512 << 20,
        seeded_random: true,
        tokens: TokenContext {
            cache: TokenCache::default(),
            scope: 0,
        },
    }
}

fn memory_db() -> Arc<Mutex<StateDb>> {
    Arc::new(Mutex::new(StateDb::open(Path::new(":memory:")).unwrap()))
}

fn wasm_poll(
    component: &LoadedComponent,
    page: &[u8],
    extra: Value,
    iterations: u32,
) -> (Duration, usize) {
    let config = config(extra);
    let limits = Limits {
        memory_bytes: 512 << 20,
        ..Limits::default()
    };
    let mut i = HostInstance::new(
        component,
        wiring("bench", page, memory_db(), &config),
        &limits,
    )
    .unwrap();
    i.configure(&config).unwrap().unwrap();
    let mut events = 0;
    let started = Instant::now();
    for _ in 0..iterations {
        let r = i.poll(None).unwrap();
        events = r
            .outcome
            .map_err(|e| format!("{e:?}"))
            .unwrap()
            .events
            .len();
    }
    (started.elapsed() / iterations, events)
}

fn per_event_cost(
    component: &LoadedComponent,
    label: &str,
    page: &[u8],
    extra: Value,
    native: fn(&[u8], u32) -> (Duration, usize),
) {
    let iterations = 20;
    // Warm up both, then measure side by side.
    let _ = native(page, 2);
    let _ = wasm_poll(component, page, extra.clone(), 2);
    let (n, events) = native(page, iterations);
    let (w, wasm_events) = wasm_poll(component, page, extra, iterations);
    assert_eq!(events, wasm_events);
    println!(
        "per-event, {label} ({events} records, {} KiB page): native {:.1} us/event, wasm {:.1} us/event, wasm/native {:.2}x (budget <= 1.3x)",
        page.len() / 1024,
        n.as_secs_f64() * 1e6 / events as f64,
        w.as_secs_f64() * 1e6 / events as f64,
        w.as_secs_f64() / n.as_secs_f64()
    );
}

/// What the OCSF form costs per event: the same component and page polled with
/// normalization on (the default) and off (`"normalize": false`, the raw path), side by
/// side, and the ratio.
fn normalization_cost(component: &LoadedComponent, label: &str, page: &[u8], extra: Value) {
    let iterations = 20;
    let mut off = extra.clone();
    off["normalize"] = json!(false);
    let _ = wasm_poll(component, page, off.clone(), 2);
    let _ = wasm_poll(component, page, extra.clone(), 2);
    let (raw, events) = wasm_poll(component, page, off, iterations);
    let (normalized, n) = wasm_poll(component, page, extra, iterations);
    assert_eq!(events, n);
    println!(
        "OCSF normalization, {label} ({events} records): raw {:.1} us/event, with ocsf {:.1} us/event, ratio {:.2}x",
        raw.as_secs_f64() * 1e6 / events as f64,
        normalized.as_secs_f64() * 1e6 / events as f64,
        normalized.as_secs_f64() / raw.as_secs_f64()
    );
}

fn end_to_end(component: &LoadedComponent) {
    let page = alerts_page(2000);
    let dir = std::env::temp_dir().join(format!("connector-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let state = Arc::new(Mutex::new(StateDb::open(&dir.join("state.db")).unwrap()));
    let mut times = vec![];
    for round in 0..10 {
        let setup = RunSetup {
            component: component.clone(),
            instance: format!("tenant-{round}"), // a fresh namespace: every poll delivers 2,000
            config: config(json!({})),
            secrets: Secrets::from_map(
                [(
                    "client-secret".to_string(),
                    "bench-secret-value".to_string(),
                )]
                .into(),
            ),
            state: state.clone(),
            transport: Arc::new(PageTransport(page.clone())),
            clock: Arc::new(SystemClock),
            redactor: Redactor::default(),
            limits: Limits::default(),
            stop: Arc::new(AtomicBool::new(false)),
            seeded_random: true,
            source: None,
            reopen: Default::default(),
            tokens: Default::default(),
            sink_max_lag: connector_host::runner::DEFAULT_SINK_MAX_LAG,
        };
        let sink = Sink::open(&dir.join("out.jsonl")).unwrap();
        let mut runner = Runner::new(setup, sink).unwrap();
        let started = Instant::now();
        runner.run(true, Duration::ZERO).unwrap();
        times.push(started.elapsed());
    }
    times.sort();
    let lines = std::fs::read_to_string(dir.join("out.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(lines, 20_000);
    println!(
        "end-to-end poll of a 2,000-alert page (component + SQLite commit + fsynced --out): median {:.1} ms, min {:.1} ms (budget <= 50 ms); {:.0} events/s",
        times[5].as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        2000.0 / times[5].as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(|l| l.to_string())
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn cold_start_and_memory(engine: &HostEngine, path: &Path) {
    let started = Instant::now();
    let component = engine.load(path).unwrap();
    println!(
        "load a cached precompiled component: {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    let config = config(json!({}));
    let limits = Limits::default();
    let state = memory_db();
    let before = rss_kib();
    let started = Instant::now();
    let mut instances = Vec::with_capacity(1000);
    for n in 0..1000 {
        let mut i = HostInstance::new(
            &component,
            wiring(&format!("t{n}"), b"{}", state.clone(), &config),
            &limits,
        )
        .unwrap();
        i.configure(&config).unwrap().unwrap();
        instances.push(i);
    }
    let elapsed = started.elapsed();
    let after = rss_kib();
    println!(
        "instantiate + configure from InstancePre: {:.0} us per instance (budget <= 1 ms)",
        elapsed.as_secs_f64() * 1e6 / 1000.0
    );
    println!(
        "1,000 configured instances: RSS +{} MiB ({} KiB per instance; process {} MiB; budget <= 2 GiB)",
        (after - before) / 1024,
        (after - before) / 1000,
        after / 1024
    );
}

/// The built components, or those in `$BENCH_COMPONENT_DIR` (to compare build settings).
fn component_path(name: &str) -> std::path::PathBuf {
    match std::env::var_os("BENCH_COMPONENT_DIR") {
        Some(dir) => Path::new(&dir).join(format!("{}.wasm", name.replace('-', "_"))),
        None => connector_host::component_path(name),
    }
}

fn main() {
    // `cargo bench` passes `--bench`. `-- wasm-only` runs just the wasm side of the
    // 2,000-alert page, for a profiler (e.g. `valgrind --tool=callgrind`); `-- native-only`
    // the native side, to compare instruction counts.
    if std::env::args().any(|a| a == "native-only") {
        let (t, n) = native_poll::<NativeAlerts>(&alerts_page(2000), 3);
        println!("native poll of {n} alerts: {:.1} ms", t.as_secs_f64() * 1e3);
        return;
    }
    if std::env::args().any(|a| a == "wasm-only") {
        let cache = std::env::temp_dir().join("connector-bench-cache");
        let engine = HostEngine::new(Some(cache)).unwrap();
        let alerts = engine.load(&component_path("defender-alerts")).unwrap();
        let (t, n) = wasm_poll(&alerts, &alerts_page(2000), json!({}), 3);
        println!("wasm poll of {n} alerts: {:.1} ms", t.as_secs_f64() * 1e3);
        return;
    }
    if std::env::args().any(|a| a == "ocsf-only") {
        // Just the cost of the OCSF form (`-- ocsf-only`), and the component sizes.
        let engine =
            HostEngine::new(Some(std::env::temp_dir().join("connector-bench-cache"))).unwrap();
        for name in ["defender-alerts", "defender-incidents", "entra"] {
            let size = std::fs::metadata(component_path(name))
                .map(|m| m.len())
                .unwrap_or(0);
            println!("component size, {name}: {size} bytes");
        }
        let alerts = engine.load(&component_path("defender-alerts")).unwrap();
        let incidents = engine.load(&component_path("defender-incidents")).unwrap();
        normalization_cost(
            &alerts,
            "alerts page of 2,000",
            &alerts_page(2000),
            json!({}),
        );
        normalization_cost(
            &incidents,
            "incidents page of 50 with 2 alerts each",
            &incidents_page(50),
            json!({"include_alerts": true}),
        );
        return;
    }
    if std::env::args().any(|a| a == "memory-layouts") {
        memory_layouts();
        return;
    }
    let cache = std::env::temp_dir().join("connector-bench-cache");
    let engine = HostEngine::new(Some(cache)).unwrap();
    println!(
        "connector-host benchmarks ({}), {}",
        env!("CARGO_PKG_VERSION"),
        humantime::format_rfc3339_seconds(SystemTime::now())
    );
    for name in ["defender-alerts", "defender-incidents", "entra"] {
        let path = component_path(name);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        println!("component size, {name}: {size} bytes (budget <= 1 MiB)");
    }
    let alerts = engine.load(&component_path("defender-alerts")).unwrap();
    let incidents = engine.load(&component_path("defender-incidents")).unwrap();
    per_event_cost(
        &alerts,
        "alerts page of 100",
        &alerts_page(100),
        json!({}),
        native_poll::<NativeAlerts>,
    );
    per_event_cost(
        &alerts,
        "alerts page of 2,000",
        &alerts_page(2000),
        json!({}),
        native_poll::<NativeAlerts>,
    );
    per_event_cost(
        &incidents,
        "incidents page of 50 with 2 alerts each",
        &incidents_page(50),
        json!({"include_alerts": true}),
        native_poll::<NativeIncidents>,
    );
    normalization_cost(
        &alerts,
        "alerts page of 2,000",
        &alerts_page(2000),
        json!({}),
    );
    normalization_cost(
        &incidents,
        "incidents page of 50 with 2 alerts each",
        &incidents_page(50),
        json!({"include_alerts": true}),
    );
    end_to_end(&alerts);
    cold_start_and_memory(&engine, &component_path("defender-alerts"));
}

/// The engine's memory layouts side by side (`-- memory-layouts`): what `serve` pays per
/// poll (instantiate, configure, drop), for a 2,000-alert page, and in address space for
/// 32 stores in flight (a full worker pool).
fn memory_layouts() {
    let page = alerts_page(2000);
    for layout in [
        MemoryLayout::Reserved,
        MemoryLayout::Compact,
        MemoryLayout::Pooling(32),
    ] {
        let cache = std::env::temp_dir().join("connector-bench-cache");
        let engine = HostEngine::with_layout(Some(cache), layout).unwrap();
        let alerts = engine.load(&component_path("defender-alerts")).unwrap();
        let config = config(json!({}));
        let limits = Limits::default();
        let state = memory_db();
        let instance = |n: usize| {
            let mut i = HostInstance::new(
                &alerts,
                wiring(&format!("t{n}"), b"{}", state.clone(), &config),
                &limits,
            )?;
            i.configure(&config)?.map_err(|e| anyhow_like(&e.message))?;
            Ok::<_, wasmtime::Error>(i)
        };
        let started = Instant::now();
        for n in 0..1000 {
            drop(instance(n).unwrap());
        }
        let per_poll = started.elapsed().as_secs_f64() * 1e6 / 1000.0;
        let vsz_before = status_kib("VmSize:");
        let live: Vec<_> = (0..32).map(|n| instance(n).unwrap()).collect();
        let vsz = status_kib("VmSize:").saturating_sub(vsz_before);
        let beyond = instance(32).err().map(|e| format!("{e:#}"));
        drop(live);
        let _ = wasm_poll(&alerts, &page, json!({}), 2);
        let (t, _) = wasm_poll(&alerts, &page, json!({}), 10);
        println!(
            "{layout:?}: instantiate + configure + drop {per_poll:.0} us; 2,000-alert poll \
             {:.1} ms; 32 live stores: +{} MiB address space; a 33rd: {}",
            t.as_secs_f64() * 1e3,
            vsz / 1024,
            beyond.unwrap_or_else(|| "ok".into())
        );
    }
}

fn anyhow_like(m: &str) -> wasmtime::Error {
    wasmtime::Error::msg(m.to_string())
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}
