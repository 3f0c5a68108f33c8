//! A loopback server that behaves like the Microsoft identity platform's token endpoint and
//! the Graph lists the connectors read: the security lists (`alerts_v2`, `incidents`) and
//! the Entra ID lists (`directoryAudits`, `signIns`, `riskyUsers`, `riskDetections`), with
//! `$filter` on each type's own time fields, `$top`, `$skip`/`$skiptoken` next links,
//! newest first, bearer tokens that expire, throttling on request, and the incidents quota.
//!
//! Every behaviour real Graph was observed to have (`/work/shared/GRAPH-REALITY.md`) is a
//! field of [`Behaviour`], off by default so the older tests keep their meaning;
//! [`Behaviour::reality`] switches on all of them at once.
//!
//! It records the ground truth: every (list, id, version) it ever made visible, and the
//! current version of each record.

#![allow(dead_code)]

mod page;
mod query;
mod recorder;
mod records;
mod throttle;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

// The list names and record types are for tests that check per list (not every binary).
#[allow(unused_imports)]
pub use records::{
    ALERTS, DIRECTORY_AUDITS, INCIDENTS, LISTS, RISK_DETECTIONS, RISKY_USERS, Record, SIGN_INS,
    Set, Stamp,
};
// Only some test binaries use the recorder or the families.
#[allow(unused_imports)]
pub use recorder::{Recorded, Recorder};
#[allow(unused_imports)]
pub use throttle::Family;

use page::page;
use throttle::Limiter;

pub const TENANT: &str = "8f6b2a4e-0c1d-4e5f-9a7b-3c2d1e0f4a5b";
pub const CLIENT: &str = "2b7c9d1e-3f4a-4b5c-8d6e-7f8a9b0c1d2e";
pub const SECRET: &str = "sim-secret-Q8~do-not-log-me";

/// The header value that makes Graph serve evolvable enum members as themselves.
pub const PREFER_UNKNOWN_ENUMS: &str = "include-unknown-enum-members";

pub struct Behaviour {
    /// Records per page at most, whatever `$top` asks (a server page size that is honest
    /// about it: the next link continues after the last record served).
    pub page_max: usize,
    /// How long issued tokens are accepted. Token responses always say `expires_in`
    /// 3599, so a short lifetime looks like a token revoked early: Graph answers 401 and
    /// the connector must renew it.
    pub token_lifetime: Duration,
    /// Every n-th Graph request is answered 429 with `Retry-After: 1`.
    pub throttle_every: Option<usize>,
    /// Enforce the Defender incidents quota (50 incidents calls in any minute, 1,500 in any
    /// hour): a request over it is answered 429 and counted in `quota_violations`.
    pub incidents_quota: bool,
    /// Every n-th Graph list request (after the token check) meets `fault`.
    pub fault: Option<(usize, Fault)>,
    /// Where next links point (a second listener, to prove no request goes there).
    pub next_link_base: Option<String>,
    /// Per list, the largest `$top` Graph takes: above it a 400 with Graph's message "The
    /// limit of 'N' for Top query has been exceeded" and an empty error code.
    pub top_caps: BTreeMap<&'static str, usize>,
    /// Per list, the most records a page holds whatever `$top` asks, while its next link
    /// still advances `$skip` by the `$top` asked: the records in between are never served
    /// (the silent loss elastic/integrations #20234 describes).
    pub clamp: BTreeMap<&'static str, usize>,
    /// Security lists (`alerts_v2`, `incidents`): a request whose `$skip` is at or past this
    /// answers 200 with no records and no next link, a quiet early end; `@odata.count`
    /// still reports every matching record.
    pub skip_limit: Option<usize>,
    /// `riskyUsers`: a full page that ends the data still carries a next link, and
    /// following it answers `400 {"error":{"code":"BadRequest","message":""}}`.
    pub dangling_next_link: bool,
    /// `riskyUsers`: next links carry this `$top` where the request asked for more (the
    /// server's own rewrite, docs #16332 saw 100 become 2).
    pub next_link_top: Option<usize>,
    /// `signIns`: every other page (the first, third, ...) holds half of what it would,
    /// with a next link, so short pages arrive mid-stream.
    pub short_pages: bool,
    /// `signIns`: of the requests that follow a next link, the 1st, (n+1)-th, (2n+1)-th...
    /// fail once, alternately 400 "Invalid Skip Token" and 503.
    pub skip_token_faults: Option<usize>,
    /// Per-family request budgets per tenant (see [`Family`]), each family's 429 as
    /// observed.
    pub family_throttling: bool,
    /// Time fields carry 0 to 7 fractional digits, differing between the fields of one
    /// record and between records (off: always 3, milliseconds).
    pub mixed_precision: bool,
    /// Some incidents are `awaitingAction` and some alerts come from `microsoftSentinel`:
    /// served as `unknownFutureValue` unless the request sends `Prefer:
    /// include-unknown-enum-members`.
    pub evolvable_enums: bool,
    /// Every incidents request with `$expand=alerts` answers 500 (elastic/integrations
    /// #18144); without `$expand` it works.
    pub expand_fails: bool,
    /// Records carry the nulls real ones do: alerts' triage fields, directory audits'
    /// `initiatedBy.app` null for some records and an object for others.
    pub nulls: bool,
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
            top_caps: BTreeMap::new(),
            clamp: BTreeMap::new(),
            skip_limit: None,
            dangling_next_link: false,
            next_link_top: None,
            short_pages: false,
            skip_token_faults: None,
            family_throttling: false,
            mixed_precision: false,
            evolvable_enums: false,
            expand_fails: false,
            nulls: false,
        }
    }
}

impl Behaviour {
    /// Every behaviour of GRAPH-REALITY.md at once, with the values it gives: `$top` caps
    /// (incidents 50, riskDetections 500), alerts clamped to 1,000 a page, `$skip` ending
    /// quietly at 500 on the security lists, riskyUsers' dangling next link with `$top`
    /// rewritten to 2, signIns' short pages and transient skip-token failures, per-family
    /// throttling and the incidents quota, mixed fractional digits, evolvable enums, a
    /// persistent 500 on `$expand=alerts`, nulls. Pages otherwise hold what `$top` asks.
    pub fn reality() -> Behaviour {
        Behaviour {
            page_max: usize::MAX,
            token_lifetime: Duration::from_secs(3600),
            throttle_every: None,
            incidents_quota: true,
            fault: None,
            next_link_base: None,
            top_caps: BTreeMap::from([(INCIDENTS, 50), (RISK_DETECTIONS, 500)]),
            clamp: BTreeMap::from([(ALERTS, 1000)]),
            skip_limit: Some(500),
            dangling_next_link: true,
            next_link_top: Some(2),
            short_pages: true,
            skip_token_faults: Some(3),
            family_throttling: true,
            mixed_precision: true,
            evolvable_enums: true,
            expand_fails: true,
            nulls: true,
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
    /// Graph requests per list.
    pub by_list: BTreeMap<&'static str, usize>,
    /// 429s sent per throttling family.
    pub family_throttled: BTreeMap<Family, usize>,
    /// 400s for a `$top` over the list's cap.
    pub top_refused: usize,
    /// Pages that held fewer records than asked because of the clamp.
    pub clamped_pages: usize,
    /// Empty pages served for a `$skip` at or past the limit.
    pub deep_skips: usize,
    /// Dangling riskyUsers next links followed (each answered 400).
    pub dangling_followed: usize,
    /// signIns pages served half full mid-stream.
    pub short_pages: usize,
    /// Transient failures of signIns next links.
    pub skip_token_faults: usize,
    /// 500s for `$expand=alerts`.
    pub expand_failures: usize,
    /// Graph requests without `Prefer: include-unknown-enum-members`.
    pub without_prefer: usize,
    /// Graph requests without `Accept: application/json`.
    pub without_accept: usize,
    /// 400s for a `$filter` Graph would refuse.
    pub bad_filters: usize,
}

/// One Graph request as the simulator answered it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub list: &'static str,
    /// Path and query, as sent.
    pub target: String,
    pub status: u16,
    pub prefer_unknown: bool,
    pub accept_json: bool,
}

struct State {
    /// The current version of each record, per set.
    sets: BTreeMap<Set, BTreeMap<String, Record>>,
    /// Ground truth: every version of every record that was visible, in order.
    history: Vec<(Set, Record)>,
    /// The incidents list serves its own set (incident-shaped, numeric ids) once a test
    /// added incidents; before that it serves the shared set, as the older tests expect.
    own_incidents: bool,
    next_incident: u64,
    tokens: HashMap<String, Instant>,
    behaviour: Behaviour,
    counters: Counters,
    next_token: u64,
    /// When each incidents request arrived (for the quota).
    incident_calls: Vec<Instant>,
    limiter: Limiter,
    /// signIns requests that followed a next link.
    next_link_requests: usize,
    seen: Vec<Seen>,
}

pub struct GraphSim {
    pub base: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// RFC 3339 with milliseconds, the simulator's rendering when precision is not mixed.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

impl State {
    fn set_of(&self, list: &str) -> Set {
        if list == INCIDENTS && self.own_incidents {
            Set::Incidents
        } else {
            Set::Shared
        }
    }

    /// How many fractional digits `field` of this version of record `id` carries.
    fn digits(&self, id: &str, field: &str, revision: u32) -> u8 {
        if self.behaviour.mixed_precision {
            (records::hash(&[id, field, &revision.to_string()]) % 8) as u8
        } else {
            3
        }
    }

    /// A new record last updated at `t` (and created then, at its own precision).
    fn insert(&mut self, set: Set, id: String, t: SystemTime) {
        let updated = Stamp::new(t, self.digits(&id, "updated", 0));
        let created = Stamp::new(updated.at, self.digits(&id, "created", 0));
        let evolvable = self.behaviour.evolvable_enums;
        let status = match set {
            Set::Shared => "new",
            Set::Incidents => records::incident_status(&id, 0, evolvable),
        };
        let r = Record {
            source: records::alert_source(&id, evolvable),
            id,
            created,
            updated,
            status,
            revision: 0,
            nulls: self.behaviour.nulls,
        };
        self.history.push((set, r.clone()));
        self.sets.entry(set).or_default().insert(r.id.clone(), r);
    }

    /// A new version of record `id` updated now: its update time moves (and shows a new
    /// version string whatever its precision).
    fn update(&mut self, set: Set, id: &str) {
        let Some(mut r) = self.sets.get(&set).and_then(|s| s.get(id)).cloned() else {
            return;
        };
        r.revision += 1;
        let digits = self.digits(id, "updated", r.revision);
        let mut t = SystemTime::now().max(r.updated.at + Duration::from_millis(1));
        let mut updated = Stamp::new(t, digits);
        while updated.at <= r.updated.at || updated.render() == r.updated.render() {
            t += Duration::from_millis(1);
            updated = Stamp::new(t, digits);
        }
        r.updated = updated;
        r.status = match set {
            Set::Shared => "inProgress",
            Set::Incidents => {
                records::incident_status(id, r.revision, self.behaviour.evolvable_enums)
            }
        };
        self.history.push((set, r.clone()));
        self.sets.entry(set).or_default().insert(id.to_string(), r);
    }

    fn new_incident_ids(&mut self, n: usize) -> Vec<String> {
        self.own_incidents = true;
        (0..n)
            .map(|_| {
                self.next_incident += 1;
                self.next_incident.to_string()
            })
            .collect()
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
            sets: BTreeMap::new(),
            history: Vec::new(),
            own_incidents: false,
            next_incident: 1000,
            tokens: HashMap::new(),
            behaviour,
            counters: Counters::default(),
            next_token: 0,
            incident_calls: Vec::new(),
            limiter: Limiter::default(),
            next_link_requests: 0,
            seen: Vec::new(),
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

    /// Adds `n` records to the shared set (alerts, and every Entra list), created and last
    /// updated within the past `spread`.
    pub fn add_alerts(&self, prefix: &str, n: usize, spread: Duration) {
        let now = SystemTime::now();
        let mut s = self.state.lock().unwrap();
        for i in 0..n {
            let t = now - spread.mul_f64((i as f64 + 0.5) / n as f64);
            s.insert(Set::Shared, format!("{prefix}-{i:05}"), t);
        }
    }

    /// Marks shared records as updated now: Graph moves their lastUpdateDateTime.
    pub fn update_alerts(&self, ids: &[String]) {
        let mut s = self.state.lock().unwrap();
        for id in ids {
            s.update(Set::Shared, id);
        }
    }

    /// Backdated shared records: visible only from now on, though their time fields say
    /// `ago` (Graph's ingestion delay: directory audits and sign-ins up to 15 minutes,
    /// alerts a few).
    pub fn add_late_alerts(&self, prefix: &str, n: usize, ago: Duration) {
        let t = SystemTime::now() - ago;
        let mut s = self.state.lock().unwrap();
        for i in 0..n {
            s.insert(Set::Shared, format!("{prefix}-{i:05}"), t);
        }
    }

    /// Adds `n` incidents (numeric string ids, incident-shaped) within the past `spread`;
    /// from the first call on, `/security/incidents` serves these instead of the shared
    /// set. Returns their ids.
    pub fn add_incidents(&self, n: usize, spread: Duration) -> Vec<String> {
        let now = SystemTime::now();
        let mut s = self.state.lock().unwrap();
        let ids = s.new_incident_ids(n);
        for (i, id) in ids.iter().enumerate() {
            let t = now - spread.mul_f64((i as f64 + 0.5) / n as f64);
            s.insert(Set::Incidents, id.clone(), t);
        }
        ids
    }

    /// Backdated incidents: visible only from now on, though last updated `ago`.
    pub fn add_late_incidents(&self, n: usize, ago: Duration) -> Vec<String> {
        let t = SystemTime::now() - ago;
        let mut s = self.state.lock().unwrap();
        let ids = s.new_incident_ids(n);
        for id in &ids {
            s.insert(Set::Incidents, id.clone(), t);
        }
        ids
    }

    /// Incidents change (status, assignment, classification): each gets a new version.
    pub fn update_incidents(&self, ids: &[String]) {
        let mut s = self.state.lock().unwrap();
        for id in ids {
            s.update(Set::Incidents, id);
        }
    }

    /// Every access token issued so far.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.state.lock().unwrap().tokens.keys().cloned().collect()
    }

    /// Ids of the shared set.
    pub fn ids(&self) -> Vec<String> {
        self.ids_of(Set::Shared)
    }

    pub fn incident_ids(&self) -> Vec<String> {
        self.ids_of(Set::Incidents)
    }

    fn ids_of(&self, set: Set) -> Vec<String> {
        let s = self.state.lock().unwrap();
        s.sets
            .get(&set)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The current version of every shared record (its last-update time): what a
    /// connector of a versioned list must have delivered once it has caught up.
    pub fn latest(&self) -> BTreeSet<(String, String)> {
        let s = self.state.lock().unwrap();
        s.sets
            .get(&Set::Shared)
            .into_iter()
            .flat_map(|m| m.values())
            .map(|r| (r.id.clone(), r.updated.render()))
            .collect()
    }

    /// Every (id, version) of the shared set the simulator has made visible. A version
    /// superseded before the connector read it cannot be delivered; any delivered version
    /// must be in here.
    pub fn ground_truth(&self) -> BTreeSet<(String, String)> {
        let s = self.state.lock().unwrap();
        s.history
            .iter()
            .filter(|(set, _)| *set == Set::Shared)
            .map(|(_, r)| (r.id.clone(), r.updated.render()))
            .collect()
    }

    /// The current (id, version) of every record `list` serves, the version as the list
    /// shows it (empty for the immutable lists).
    pub fn latest_of(&self, list: &str) -> BTreeSet<(String, String)> {
        let s = self.state.lock().unwrap();
        s.sets
            .get(&s.set_of(list))
            .into_iter()
            .flat_map(|m| m.values())
            .map(|r| (r.id.clone(), r.version_in(list)))
            .collect()
    }

    /// Every (id, version) `list` ever made visible, with the record as the list showed it
    /// (every enum member as itself, without `$expand`).
    pub fn truth_of(&self, list: &str) -> BTreeMap<(String, String), Value> {
        let s = self.state.lock().unwrap();
        let set = s.set_of(list);
        s.history
            .iter()
            .filter(|(of, _)| *of == set)
            .map(|(_, r)| {
                (
                    (r.id.clone(), r.version_in(list)),
                    r.json_for(list, set, true, false),
                )
            })
            .collect()
    }

    /// Every Graph request answered so far (after the token check), in order.
    pub fn requests(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    pub fn with_counters<T>(&self, f: impl FnOnce(&Counters) -> T) -> T {
        f(&self.state.lock().unwrap().counters)
    }

    /// Changes the behaviour of the running simulator.
    pub fn with_behaviour(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.state.lock().unwrap().behaviour)
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

/// What the simulator answers a Graph request.
enum Answer {
    Json {
        status: u16,
        body: Value,
        /// `Retry-After` seconds.
        retry_after: Option<u64>,
    },
    /// A broken response ([`Fault::StallMidBody`], `Slow`, `Malformed`, `Huge`).
    Broken(Fault),
}

fn answer(status: u16, body: Value) -> Answer {
    Answer::Json {
        status,
        body,
        retry_after: None,
    }
}

fn list_of(path: &str) -> Option<&'static str> {
    let tail = path.strip_prefix("/v1.0/")?;
    LISTS.into_iter().find(|l| {
        tail == format!("security/{l}")
            || tail == format!("auditLogs/{l}")
            || tail == format!("identityProtection/{l}")
    })
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
    let list = match list_of(url.path()) {
        Some(list) if request.method() == &tiny_http::Method::Get => list,
        _ => {
            drop(s);
            return respond(
                request,
                404,
                graph_error("NotFound", "no such simulated resource"),
                &[],
            );
        }
    };
    let header = |name: &'static str| {
        request
            .headers()
            .iter()
            .find(|h| h.field.equiv(name))
            .map(|h| h.value.as_str().to_string())
    };
    let bearer =
        header("authorization").and_then(|v| v.strip_prefix("Bearer ").map(str::to_string));
    let prefer_unknown = header("prefer").is_some_and(|v| v.contains(PREFER_UNKNOWN_ENUMS));
    let accept_json = header("accept").is_some_and(|v| v.contains("application/json"));
    let reply = graph(&mut s, base, list, &url, bearer, prefer_unknown);
    s.counters
        .by_list
        .entry(list)
        .and_modify(|n| *n += 1)
        .or_insert(1);
    if !prefer_unknown {
        s.counters.without_prefer += 1;
    }
    if !accept_json {
        s.counters.without_accept += 1;
    }
    let status = match &reply {
        Answer::Json { status, .. } => *status,
        Answer::Broken(_) => 200,
    };
    s.seen.push(Seen {
        list,
        target: request.url().to_string(),
        status,
        prefer_unknown,
        accept_json,
    });
    drop(s);
    match reply {
        Answer::Json {
            status,
            body,
            retry_after,
        } => {
            let seconds = retry_after.map(|s| s.to_string());
            let headers: Vec<(&str, &str)> = seconds
                .iter()
                .map(|s| ("retry-after", s.as_str()))
                .collect();
            respond(request, status, body, &headers)
        }
        Answer::Broken(Fault::StallMidBody) => {
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
        }
        Answer::Broken(Fault::Slow(d)) => {
            std::thread::sleep(d);
            respond(request, 200, json!({"value": []}), &[]);
        }
        Answer::Broken(Fault::Malformed) => {
            let response = tiny_http::Response::from_string("{\"value\":[{\"id\":\"trunc")
                .with_status_code(200);
            let _ = request.respond(response);
        }
        Answer::Broken(Fault::Huge(n)) => {
            let filler = "x".repeat(n);
            respond(request, 200, json!({"value": [], "filler": filler}), &[]);
        }
        Answer::Broken(Fault::Status { .. } | Fault::MissingId) => {
            unreachable!("answered as JSON")
        }
    }
}

/// A Graph request after its path was recognised: the token, the quotas and throttling,
/// injected faults, then the list itself.
fn graph(
    s: &mut State,
    base: &str,
    list: &'static str,
    url: &url::Url,
    bearer: Option<String>,
    prefer_unknown: bool,
) -> Answer {
    s.counters.graph_requests += 1;
    match bearer.as_ref().and_then(|t| s.tokens.get(t)) {
        Some(expiry) if *expiry > Instant::now() => {}
        Some(_) => {
            s.counters.expired_tokens += 1;
            return answer(
                401,
                graph_error(
                    "InvalidAuthenticationToken",
                    "Lifetime validation failed, the token is expired.",
                ),
            );
        }
        None => {
            return answer(
                401,
                graph_error(
                    "InvalidAuthenticationToken",
                    "Access token is empty or unknown.",
                ),
            );
        }
    }
    let now = Instant::now();
    if list == INCIDENTS {
        s.incident_calls.push(now);
    }
    if s.behaviour.incidents_quota && list == INCIDENTS {
        let in_last = |d: Duration| {
            s.incident_calls
                .iter()
                .filter(|t| now.duration_since(**t) < d)
                .count()
        };
        if in_last(Duration::from_secs(60)) > 50 || in_last(Duration::from_secs(3600)) > 1500 {
            s.counters.quota_violations += 1;
            return Answer::Json {
                status: 429,
                body: graph_error("TooManyRequests", "Rate limit is exceeded."),
                retry_after: Some(60),
            };
        }
    }
    if s.behaviour.family_throttling
        && let Some(family) = Family::of(list)
        && let Err(refusal) = s.limiter.admit(family, now)
    {
        *s.counters.family_throttled.entry(family).or_default() += 1;
        s.counters.throttled += 1;
        return Answer::Json {
            status: 429,
            body: refusal.body,
            retry_after: refusal.retry_after,
        };
    }
    if let Some(n) = s.behaviour.throttle_every
        && s.counters.graph_requests.is_multiple_of(n)
    {
        s.counters.throttled += 1;
        return Answer::Json {
            status: 429,
            body: graph_error("TooManyRequests", "Too many requests"),
            retry_after: Some(1),
        };
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
        }) => Answer::Json {
            status,
            body: graph_error("ServiceUnavailable", "Simulated failure."),
            retry_after: retry_after.then_some(1),
        },
        Some(Fault::MissingId) => page(s, base, list, url, prefer_unknown, true),
        Some(broken) => Answer::Broken(broken),
        None => page(s, base, list, url, prefer_unknown, false),
    }
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
