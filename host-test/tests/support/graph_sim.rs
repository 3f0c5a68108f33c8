//! A loopback server that behaves like the Microsoft identity platform's token endpoint and
//! Graph's security lists (`/security/alerts_v2`, `/security/incidents`, one record set
//! served under both): `$filter=lastUpdateDateTime ge`, `$top` capped by a server page
//! size, `$skip` next links, newest first, bearer tokens that expire, throttling on
//! request, and the incidents quota. It records the ground truth: every (id, version) it
//! ever served.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

pub const TENANT: &str = "8f6b2a4e-0c1d-4e5f-9a7b-3c2d1e0f4a5b";
pub const CLIENT: &str = "2b7c9d1e-3f4a-4b5c-8d6e-7f8a9b0c1d2e";
pub const SECRET: &str = "sim-secret-Q8~do-not-log-me";

#[derive(Clone, Debug)]
pub struct Alert {
    pub id: String,
    pub created: SystemTime,
    pub updated: SystemTime,
    pub status: &'static str,
}

pub struct Behaviour {
    /// Records per page at most, whatever `$top` asks.
    pub page_max: usize,
    /// How long issued tokens are accepted. Token responses always say `expires_in`
    /// 3599, so a short lifetime looks like a token revoked early: Graph answers 401 and
    /// the connector must renew it.
    pub token_lifetime: Duration,
    /// Every n-th Graph request is answered 429 with `Retry-After: 1`.
    pub throttle_every: Option<usize>,
    /// Enforce the Defender incidents quota (50 calls in any minute, 1,500 in any hour):
    /// a request over it is answered 429 and counted in `quota_violations`.
    pub incidents_quota: bool,
    /// Every n-th Graph list request (after the token check) meets `fault`.
    pub fault: Option<(usize, Fault)>,
    /// Where next links point (a second listener, to prove no request goes there).
    pub next_link_base: Option<String>,
}

/// What a faulty Graph response looks like.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// This status with a Graph error body, and `Retry-After: 1` when `retry_after`.
    Status { status: u16, retry_after: bool },
    /// The response stops in the middle of its body (5,000 bytes promised, a few sent) and
    /// the connection stalls: the client's timeout must end it.
    StallMidBody,
    /// The response comes after this long (past the host's HTTP timeout).
    Slow(Duration),
    /// A 200 whose JSON is cut off.
    Malformed,
    /// The page carries one extra record without an `id` (not part of the ground truth).
    MissingId,
    /// A 200 with a body of this many bytes (past the host's body cap).
    Huge(usize),
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            page_max: 7,
            token_lifetime: Duration::from_secs(3600),
            throttle_every: None,
            incidents_quota: false,
            fault: None,
            next_link_base: None,
        }
    }
}

#[derive(Default)]
pub struct Counters {
    pub token_requests: usize,
    pub graph_requests: usize,
    pub throttled: usize,
    pub expired_tokens: usize,
    /// Requests that broke the incidents quota.
    pub quota_violations: usize,
    /// Responses that carried a fault.
    pub faults: usize,
}

struct State {
    alerts: BTreeMap<String, Alert>,
    /// Ground truth: every (id, version) that was visible.
    versions: BTreeSet<(String, String)>,
    tokens: HashMap<String, Instant>,
    behaviour: Behaviour,
    counters: Counters,
    next_token: u64,
    /// When each Graph request arrived (for the quota).
    calls: Vec<Instant>,
}

pub struct GraphSim {
    pub base: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

impl Alert {
    fn version(&self) -> String {
        rfc3339(self.updated)
    }

    /// The record as the list `entity` shows it: Entra lists carry the same simulated
    /// record under their own field names (immutable lists use the creation time).
    fn json_for(&self, entity: &str) -> Value {
        let created = rfc3339(self.created);
        match entity {
            "directoryAudits" => {
                json!({"id": self.id, "activityDateTime": created, "category": "RoleManagement",
                "activityDisplayName": "Add member to role", "result": "success"})
            }
            "signIns" => {
                json!({"id": self.id, "createdDateTime": created, "riskLevelDuringSignIn": "high",
                "riskState": "atRisk", "userPrincipalName": "user@contoso.example"})
            }
            "riskyUsers" => {
                json!({"id": self.id, "riskLastUpdatedDateTime": self.version(), "riskState": self.status,
                "riskLevel": "high", "userPrincipalName": "user@contoso.example"})
            }
            "riskDetections" => {
                json!({"id": self.id, "activityDateTime": created, "lastUpdatedDateTime": self.version(),
                "riskEventType": "unfamiliarFeatures", "riskState": self.status})
            }
            _ => self.json(),
        }
    }

    fn json(&self) -> Value {
        json!({
            "@odata.type": "#microsoft.graph.security.alert",
            "id": self.id,
            "status": self.status,
            "severity": "medium",
            "serviceSource": "microsoftDefenderForEndpoint",
            "title": format!("Simulated alert {}", self.id),
            "createdDateTime": rfc3339(self.created),
            "lastUpdateDateTime": self.version(),
        })
    }
}

impl GraphSim {
    pub fn start(behaviour: Behaviour) -> Self {
        let server = tiny_http::Server::http("127.0.0.1:0").expect("bind loopback");
        let base = format!(
            "http://{}",
            server.server_addr().to_ip().expect("ip listener")
        );
        let state = Arc::new(Mutex::new(State {
            alerts: BTreeMap::new(),
            versions: BTreeSet::new(),
            tokens: HashMap::new(),
            behaviour,
            counters: Counters::default(),
            next_token: 0,
            calls: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop, base) = (state.clone(), stop.clone(), base.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(Some(request)) = server.recv_timeout(Duration::from_millis(50)) {
                        handle(&state, &base, request);
                    }
                }
            })
        };
        GraphSim {
            base,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// Adds `n` alerts created and last updated within the past `spread`.
    pub fn add_alerts(&self, prefix: &str, n: usize, spread: Duration) {
        let now = SystemTime::now();
        let mut s = self.state.lock().unwrap();
        for i in 0..n {
            let t = now - spread.mul_f64((i as f64 + 0.5) / n as f64);
            let a = Alert {
                id: format!("{prefix}-{i:05}"),
                created: t,
                updated: t,
                status: "new",
            };
            s.versions.insert((a.id.clone(), a.version()));
            s.alerts.insert(a.id.clone(), a);
        }
    }

    /// Marks alerts as updated now: Graph moves their lastUpdateDateTime.
    pub fn update_alerts(&self, ids: &[String]) {
        let mut s = self.state.lock().unwrap();
        let now = SystemTime::now();
        for id in ids {
            if let Some(a) = s.alerts.get_mut(id) {
                a.updated = now.max(a.updated + Duration::from_millis(1));
                a.status = "inProgress";
                let v = (a.id.clone(), a.version());
                s.versions.insert(v);
            }
        }
    }

    /// Backdated alerts: visible only now, though last updated `ago` (ingestion delay).
    pub fn add_late_alerts(&self, prefix: &str, n: usize, ago: Duration) {
        let t = SystemTime::now() - ago;
        let mut s = self.state.lock().unwrap();
        for i in 0..n {
            let a = Alert {
                id: format!("{prefix}-{i:05}"),
                created: t,
                updated: t,
                status: "new",
            };
            s.versions.insert((a.id.clone(), a.version()));
            s.alerts.insert(a.id.clone(), a);
        }
    }

    /// Every access token issued so far.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.state.lock().unwrap().tokens.keys().cloned().collect()
    }

    pub fn ids(&self) -> Vec<String> {
        self.state.lock().unwrap().alerts.keys().cloned().collect()
    }

    /// The current version of every alert: what a connector must have delivered once it
    /// has caught up.
    pub fn latest(&self) -> BTreeSet<(String, String)> {
        let s = self.state.lock().unwrap();
        s.alerts
            .values()
            .map(|a| (a.id.clone(), a.version()))
            .collect()
    }

    /// Every (id, version) the simulator has made visible. A version superseded before
    /// the connector read it cannot be delivered; any delivered version must be in here.
    pub fn ground_truth(&self) -> BTreeSet<(String, String)> {
        self.state.lock().unwrap().versions.clone()
    }

    pub fn with_counters<T>(&self, f: impl FnOnce(&Counters) -> T) -> T {
        f(&self.state.lock().unwrap().counters)
    }

    pub fn set_throttle_every(&self, n: Option<usize>) {
        self.state.lock().unwrap().behaviour.throttle_every = n;
    }

    pub fn config(&self, backfill_days: u32) -> Value {
        json!({
            "tenant_id": TENANT,
            "client_id": CLIENT,
            "backfill_days": backfill_days,
            "graph_url": self.base,
            "login_url": self.base,
        })
    }
}

impl Drop for GraphSim {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn respond(request: tiny_http::Request, status: u16, body: Value, headers: &[(&str, &str)]) {
    let mut response = tiny_http::Response::from_string(body.to_string()).with_status_code(status);
    for (n, v) in [("content-type", "application/json")].iter().chain(headers) {
        response.add_header(tiny_http::Header::from_bytes(n.as_bytes(), v.as_bytes()).unwrap());
    }
    let _ = request.respond(response);
}

fn graph_error(code: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message, "innerError": {}}})
}

fn handle(state: &Mutex<State>, base: &str, mut request: tiny_http::Request) {
    let url = url::Url::parse(&format!("http://sim{}", request.url())).expect("request target");
    let mut s = state.lock().unwrap();
    if request.method() == &tiny_http::Method::Post
        && url.path() == format!("/{TENANT}/oauth2/v2.0/token")
    {
        s.counters.token_requests += 1;
        let mut body = String::new();
        let _ = request.as_reader().read_to_string(&mut body);
        let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
        if form.get("client_secret").map(String::as_str) != Some(SECRET)
            || form.get("client_id").map(String::as_str) != Some(CLIENT)
        {
            drop(s);
            return respond(
                request,
                401,
                json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided.", "error_codes": [7000215]}),
                &[],
            );
        }
        s.next_token += 1;
        let token = jwt(s.next_token);
        let lifetime = s.behaviour.token_lifetime;
        s.tokens.insert(token.clone(), Instant::now() + lifetime);
        drop(s);
        return respond(
            request,
            200,
            json!({"token_type": "Bearer", "expires_in": 3599, "access_token": token}),
            &[],
        );
    }
    let entity = match url.path() {
        "/v1.0/security/alerts_v2" => "alerts_v2",
        "/v1.0/security/incidents" => "incidents",
        "/v1.0/auditLogs/directoryAudits" => "directoryAudits",
        "/v1.0/auditLogs/signIns" => "signIns",
        "/v1.0/identityProtection/riskyUsers" => "riskyUsers",
        "/v1.0/identityProtection/riskDetections" => "riskDetections",
        _ => "",
    };
    // Immutable lists filter (and sort) on the creation time, the others on the update.
    let immutable = matches!(entity, "directoryAudits" | "signIns");
    if request.method() != &tiny_http::Method::Get || entity.is_empty() {
        drop(s);
        return respond(
            request,
            404,
            graph_error("NotFound", "no such simulated resource"),
            &[],
        );
    }
    s.counters.graph_requests += 1;
    let bearer = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("authorization"))
        .and_then(|h| h.value.as_str().strip_prefix("Bearer "))
        .map(str::to_string);
    match bearer.as_ref().and_then(|t| s.tokens.get(t)) {
        Some(expiry) if *expiry > Instant::now() => {}
        Some(_) => {
            s.counters.expired_tokens += 1;
            drop(s);
            return respond(
                request,
                401,
                graph_error(
                    "InvalidAuthenticationToken",
                    "Lifetime validation failed, the token is expired.",
                ),
                &[],
            );
        }
        None => {
            drop(s);
            return respond(
                request,
                401,
                graph_error(
                    "InvalidAuthenticationToken",
                    "Access token is empty or unknown.",
                ),
                &[],
            );
        }
    }
    let now = Instant::now();
    s.calls.push(now);
    if s.behaviour.incidents_quota {
        let in_last = |s: &State, d: Duration| {
            s.calls
                .iter()
                .filter(|t| now.duration_since(**t) < d)
                .count()
        };
        if in_last(&s, Duration::from_secs(60)) > 50
            || in_last(&s, Duration::from_secs(3600)) > 1500
        {
            s.counters.quota_violations += 1;
            drop(s);
            return respond(
                request,
                429,
                graph_error("TooManyRequests", "Rate limit is exceeded."),
                &[("retry-after", "60")],
            );
        }
    }
    if let Some(n) = s.behaviour.throttle_every
        && s.counters.graph_requests.is_multiple_of(n)
    {
        s.counters.throttled += 1;
        drop(s);
        return respond(
            request,
            429,
            graph_error("TooManyRequests", "Too many requests"),
            &[("retry-after", "1")],
        );
    }
    let fault = match s.behaviour.fault {
        Some((n, f)) if s.counters.graph_requests.is_multiple_of(n) => {
            s.counters.faults += 1;
            Some(f)
        }
        _ => None,
    };
    match fault {
        Some(Fault::Status {
            status,
            retry_after,
        }) => {
            drop(s);
            let headers: &[(&str, &str)] = if retry_after {
                &[("retry-after", "1")]
            } else {
                &[]
            };
            return respond(
                request,
                status,
                graph_error("ServiceUnavailable", "Simulated failure."),
                headers,
            );
        }
        Some(Fault::StallMidBody) => {
            drop(s);
            // Promise 5,000 bytes, send a few, then fail writing.
            let response = tiny_http::Response::new(
                tiny_http::StatusCode(200),
                vec![
                    tiny_http::Header::from_bytes("content-type", "application/json").unwrap(),
                    tiny_http::Header::from_bytes("connection", "close").unwrap(),
                ],
                BreaksAfter(b"{\"value\":[".to_vec()),
                Some(5000),
                None,
            );
            let _ = request.respond(response);
            return;
        }
        Some(Fault::Slow(d)) => {
            drop(s);
            std::thread::sleep(d);
            return respond(request, 200, json!({"value": []}), &[]);
        }
        Some(Fault::Malformed) => {
            drop(s);
            let response = tiny_http::Response::from_string("{\"value\":[{\"id\":\"trunc")
                .with_status_code(200);
            let _ = request.respond(response);
            return;
        }
        Some(Fault::Huge(n)) => {
            drop(s);
            let filler = "x".repeat(n);
            return respond(request, 200, json!({"value": [], "filler": filler}), &[]);
        }
        Some(Fault::MissingId) | None => {}
    }
    let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
    // Without `$filter` (the connector's validation probe): every alert.
    let since = match q.get("$filter") {
        None => SystemTime::UNIX_EPOCH,
        // `<time field> ge <time>[ and (...)]`: the connectors' window filter.
        Some(f) => match f
            .split_once(" ge ")
            .and_then(|(_, t)| humantime::parse_rfc3339(t.split(' ').next().unwrap_or(t)).ok())
        {
            Some(t) => t,
            None => {
                drop(s);
                return respond(
                    request,
                    400,
                    graph_error("BadRequest", "Invalid filter clause"),
                    &[],
                );
            }
        },
    };
    let top: usize = q.get("$top").and_then(|t| t.parse().ok()).unwrap_or(100);
    let skip: usize = q.get("$skip").and_then(|t| t.parse().ok()).unwrap_or(0);
    let time = |a: &Alert| if immutable { a.created } else { a.updated };
    let mut matching: Vec<&Alert> = s.alerts.values().filter(|a| time(a) >= since).collect();
    matching.sort_by(|a, b| time(b).cmp(&time(a)).then(a.id.cmp(&b.id)));
    if q.get("$orderby").is_some_and(|o| o.ends_with(" asc")) {
        matching.reverse();
    }
    let take = top.min(s.behaviour.page_max);
    let records: Vec<Value> = matching
        .iter()
        .skip(skip)
        .take(take)
        .map(|a| a.json_for(entity))
        .collect();
    let mut records = records;
    if matches!(fault, Some(Fault::MissingId)) {
        records.insert(0, json!({"createdDateTime": rfc3339(SystemTime::now()), "lastUpdateDateTime": rfc3339(SystemTime::now()), "title": "no id"}));
    }
    let mut body = json!({"@odata.context": format!("{base}/v1.0/$metadata#{}", url.path().trim_start_matches("/v1.0/")), "value": records});
    if skip + take < matching.len() {
        // A request without `$filter` (a validation probe) pages all records.
        let filter = q.get("$filter").map_or(String::new(), |f| {
            let enc: String = url::form_urlencoded::byte_serialize(f.as_bytes())
                .collect::<String>()
                .replace('+', "%20");
            format!("$filter={enc}&")
        });
        let orderby = q
            .get("$orderby")
            .map(|o| format!("&$orderby={}", o.replace(' ', "%20")))
            .unwrap_or_default();
        let link_base = s
            .behaviour
            .next_link_base
            .clone()
            .unwrap_or_else(|| base.to_string());
        body["@odata.nextLink"] = json!(format!(
            "{link_base}{}?{filter}$top={top}{orderby}&$skip={}",
            url.path(),
            skip + take
        ));
    }
    drop(s);
    respond(request, 200, body, &[]);
}

/// An unsigned JWT that grants every permission the connectors use; unique per issue.
fn jwt(n: u64) -> String {
    use base64::Engine as _;
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.sim",
        b64(json!({"alg": "none"})),
        b64(
            json!({"tid": TENANT, "roles": ["SecurityAlert.Read.All", "SecurityIncident.Read.All", "AuditLog.Read.All",
            "IdentityRiskyUser.Read.All", "IdentityRiskEvent.Read.All"], "n": n})
        )
    )
}

/// A body that yields its bytes and then breaks, like a connection reset mid-response.
struct BreaksAfter(Vec<u8>);

impl std::io::Read for BreaksAfter {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.0.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "simulated reset",
            ));
        }
        let n = buf.len().min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0.drain(..n);
        Ok(n)
    }
}

/// A request as the recorder saw it: target and headers.
pub type Recorded = (String, Vec<(String, String)>);

/// A second loopback listener that answers 200 to anything and records what it got:
/// the target of a foreign next link, to prove that nothing (and no token) reaches it.
pub struct Recorder {
    pub base: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Recorder {
    pub fn start() -> Self {
        let server = tiny_http::Server::http("127.0.0.1:0").expect("bind loopback");
        let base = format!(
            "http://{}",
            server.server_addr().to_ip().expect("ip listener")
        );
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (requests, stop) = (requests.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(Some(r)) = server.recv_timeout(Duration::from_millis(50)) {
                        let headers = r
                            .headers()
                            .iter()
                            .map(|h| (h.field.to_string(), h.value.to_string()))
                            .collect();
                        requests
                            .lock()
                            .unwrap()
                            .push((r.url().to_string(), headers));
                        let _ = r.respond(tiny_http::Response::from_string("{\"value\":[]}"));
                    }
                }
            })
        };
        Recorder {
            base,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    /// What reached this listener: (target, headers).
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
