//! One configured connector instance: its config, its token, and the three calls the
//! host makes. Lives in the component's memory between calls.

use std::cell::RefCell;

use serde::{Deserialize, Serialize};

use crate::auth::{AuthError, Token, describe_http_error, fetch_token};
use crate::budget::{Budget, Limit};
use crate::config::{self, Config};
use crate::connector::{Connector, Query};
use crate::cursor::{Cursor, Stream};
use crate::dedup::Dedup;
use crate::graph::{check_next_link, error_text, list_url, read_page};
use crate::platform::{Platform, Wasi};
use crate::retry::{Class, MAX_ATTEMPTS, backoff_secs, classify};
use crate::time::Timestamp;
use crate::types::{
    Batch, ConfigError, Event, HttpError, Level, Metadata, PollError, Request, Response, Retry,
};

const GRAPH_TIMEOUT_MS: u32 = 60_000;
/// KV: what the instance was created with (see [`Origin`]).
const ORIGIN_KEY: &str = "instance";
/// KV: consecutive transient failures, kept across failed polls.
const ATTEMPTS_KEY: &str = "retry:attempts";

/// Fixed when the instance first polls: the backfill it was created with and the
/// boundary it set. A data type added later starts at this boundary too.
#[derive(Serialize, Deserialize)]
struct Origin {
    backfill_days: u32,
    origin: String,
}

/// Why a Graph request failed, before it becomes a [`PollError`].
#[derive(Debug)]
pub(crate) enum Failure {
    Auth(String),
    Throttled(Option<u32>, String),
    Transient(String),
    Fatal(String),
    /// The call budget is spent: no call before this many seconds.
    Budget(u32),
}

impl Failure {
    fn describe(&self) -> String {
        match self {
            Failure::Auth(m) | Failure::Transient(m) | Failure::Fatal(m) => m.clone(),
            Failure::Throttled(Some(after), m) => format!("{m}; Retry-After {after}s"),
            Failure::Throttled(None, m) => m.clone(),
            Failure::Budget(wait) => format!("call budget spent for {wait} s"),
        }
    }
}

pub struct Instance {
    pub(crate) name: &'static str,
    pub(crate) config: Config,
    pub(crate) queries: Vec<Query>,
    token: Option<Token>,
    /// Data types that opened a window during this instance's life. A window resumed from
    /// a cursor was opened by an earlier process, maybe long ago: see `poll`.
    opened_here: Vec<&'static str>,
    /// The API's call quota ([`Connector::CALL_LIMITS`]); empty = none.
    call_limits: &'static [Limit],
}

pub fn describe<C: Connector>() -> Metadata {
    let mut permissions: Vec<String> = Vec::new();
    for t in C::DATA_TYPES {
        if !permissions.iter().any(|p| p == t.permissions[0]) {
            permissions.push(t.permissions[0].into());
        }
    }
    Metadata {
        name: C::NAME.into(),
        version: C::VERSION.into(),
        description: C::DESCRIPTION.into(),
        event_kinds: C::DATA_TYPES.iter().map(|t| t.kind.to_string()).collect(),
        permissions,
        config_schema: config::schema(C::config_properties(), C::required_keys(), C::CLOUDS)
            .to_string(),
        secrets: vec![crate::auth::CLIENT_SECRET.into()],
        poll_interval_secs: C::POLL_INTERVAL_SECS,
    }
}

impl Instance {
    /// Checks a config document; never touches the network. Reads KV to refuse a
    /// `backfill_days` other than the one the instance was created with.
    pub fn configure<C: Connector>(p: &dyn Platform, document: &str) -> Result<Self, ConfigError> {
        let (config, mut options) = config::parse(document)?;
        let queries = C::queries(&mut options)?;
        options.finish(C::NAME)?;
        if !C::CLOUDS.contains(&config.cloud) {
            let offered: Vec<&str> = C::CLOUDS.iter().map(|c| c.name()).collect();
            return Err(config::error(
                "cloud",
                format!(
                    "Microsoft does not offer the Graph APIs {} reads in the {} cloud",
                    C::NAME,
                    config.cloud.name()
                ),
                format!(
                    "use one of: {} (the tenant must live in that cloud)",
                    offered.join(", ")
                ),
            ));
        }
        let origin =
            load_origin(p).map_err(|m| config::error("", m, "check the host's state store"))?;
        if let Some(origin) = origin.filter(|o| o.backfill_days != config.backfill_days) {
            return Err(config::error(
                "backfill_days",
                format!(
                    "this instance was created with backfill_days {} and has state; the backfill \
                     cannot change afterwards (config says {})",
                    origin.backfill_days, config.backfill_days
                ),
                format!(
                    "set backfill_days back to {}, or delete the instance (its state) and create it anew",
                    origin.backfill_days
                ),
            ));
        }
        Ok(Instance {
            name: C::NAME,
            config,
            queries,
            token: None,
            opened_here: Vec::new(),
            call_limits: C::CALL_LIMITS,
        })
    }

    /// A valid token, from memory while it is fresh.
    pub(crate) fn token(&mut self, p: &dyn Platform) -> Result<&Token, AuthError> {
        let now = p.now();
        if !self.token.as_ref().is_some_and(|t| t.is_fresh(now)) {
            self.token = Some(fetch_token(p, &self.config)?);
        }
        Ok(self.token.as_ref().expect("just set"))
    }

    /// Takes one call from the budget, or says how long until one is free. Token requests
    /// go to the login host and do not count against Graph's quota.
    pub(crate) fn take_call(&self, p: &dyn Platform) -> Result<(), u32> {
        if self.call_limits.is_empty() {
            return Ok(());
        }
        let now = p.now().unix_secs();
        let mut budget = Budget::load(p, self.call_limits);
        match budget.wait_secs(now) {
            0 => {
                budget.spend(p, now);
                Ok(())
            }
            wait => Err(wait),
        }
    }

    /// GET with the bearer token; a 401 gets one fresh token and one more try.
    pub(crate) fn get(&mut self, p: &dyn Platform, url: &str) -> Result<Response, Failure> {
        for attempt in 0..2 {
            self.take_call(p).map_err(Failure::Budget)?;
            let bearer = self
                .token(p)
                .map_err(|e| match e {
                    AuthError::Network(m) => Failure::Transient(m),
                    refused => Failure::Auth(refused.describe()),
                })?
                .bearer();
            let request = Request {
                method: "GET".into(),
                url: url.into(),
                headers: vec![
                    ("authorization".into(), bearer),
                    ("accept".into(), "application/json".into()),
                ],
                body: Vec::new(),
                timeout_ms: GRAPH_TIMEOUT_MS,
            };
            let response = p.send(&request).map_err(|e| match e {
                HttpError::Timeout | HttpError::Connection(_) => {
                    Failure::Transient(describe_http_error(&e, "Graph"))
                }
                _ => Failure::Fatal(describe_http_error(&e, "Graph")),
            })?;
            let said =
                || error_text(&response.body).unwrap_or_else(|| "no Graph error body".into());
            match classify(&response) {
                Class::Ok => return Ok(response),
                Class::Unauthorized if attempt == 0 => {
                    p.log(
                        Level::Info,
                        "Graph answered 401; getting a fresh token and trying once more",
                    );
                    self.token = None;
                }
                Class::Unauthorized => {
                    return Err(Failure::Auth(format!(
                        "Graph refused a freshly issued token (401 {})",
                        said()
                    )));
                }
                Class::Forbidden => {
                    return Err(Failure::Auth(format!(
                        "Graph denied access (403 {}); run `validate` to see which permission or licence is missing",
                        said()
                    )));
                }
                Class::Throttled(after) => {
                    return Err(Failure::Throttled(
                        after,
                        format!("Graph throttled the request (HTTP {})", response.status),
                    ));
                }
                Class::Transient => {
                    return Err(Failure::Transient(format!(
                        "Graph answered HTTP {} ({})",
                        response.status,
                        said()
                    )));
                }
                Class::Rejected => {
                    return Err(Failure::Fatal(format!(
                        "Graph rejected the request (HTTP {}: {})",
                        response.status,
                        said()
                    )));
                }
            }
        }
        unreachable!("the loop returns on its second pass")
    }

    /// One poll: a page of every data type with a window being paged, or, when none is,
    /// the first page of a new window for each. Types fail independently.
    pub fn poll(&mut self, p: &dyn Platform, cursor: Option<&str>) -> Result<Batch, PollError> {
        let mut cursor = match cursor {
            None => Cursor::new(self.name),
            Some(text) => Cursor::decode(text, self.name).map_err(PollError::Fatal)?,
        };
        let origin = self.origin(p).map_err(|m| {
            PollError::Transient(Retry {
                after_secs: 5,
                message: m,
            })
        })?;
        let selected: Vec<&str> = self.queries.iter().map(|q| q.data_type.name).collect();
        cursor
            .streams
            .retain(|name, _| selected.contains(&name.as_str()));
        for name in &selected {
            cursor
                .streams
                .entry(name.to_string())
                .or_insert_with(|| Stream::starting_at(origin));
        }
        let paging = cursor.streams.values().any(|s| s.next.is_some());

        let mut events = Vec::new();
        let mut failures = Vec::new();
        let mut succeeded = 0;
        let mut finished_resumed_window = false;
        let mut budget_wait = None;
        for q in self.queries.clone() {
            let name = q.data_type.name;
            let stream = cursor.streams.get_mut(name).expect("inserted above");
            if paging && stream.next.is_none() {
                continue;
            }
            let was_paging = stream.next.is_some();
            match self.poll_stream(p, &q, stream) {
                Ok(mut e) => {
                    succeeded += 1;
                    events.append(&mut e);
                    if !was_paging && !self.opened_here.contains(&name) {
                        self.opened_here.push(name);
                    }
                    finished_resumed_window |=
                        was_paging && stream.next.is_none() && !self.opened_here.contains(&name);
                }
                Err(Failure::Budget(wait)) => budget_wait = budget_wait.max(Some(wait)),
                Err(f) => failures.push((q.data_type.name, f)),
            }
        }
        if let Some(wait) = budget_wait {
            // Commit what this poll has; the backlog goes on once the budget allows.
            p.log(
                Level::Info,
                &format!("call budget spent: next Graph call in {wait} s"),
            );
            for (name, failure) in failures {
                p.log(Level::Warn, &format!("{name}: {}", failure.describe()));
            }
            return Ok(Batch {
                events,
                cursor: cursor.encode(),
                more: true,
                wait_secs: Some(wait),
                degraded: Vec::new(),
            });
        }
        if succeeded == 0 && !failures.is_empty() {
            let (name, failure) = failures.remove(0);
            return Err(self.poll_error(p, name, failure));
        }
        // Some types failed, others advanced. A throttled type is polled again once Graph
        // allows (the others open new windows meanwhile; dedup absorbs the overlap); a type
        // failing for another reason waits for the next scheduled poll.
        let mut throttled_wait: Option<u32> = None;
        for (name, failure) in failures {
            if let Failure::Throttled(after, _) = &failure {
                let wait = after.unwrap_or_else(|| backoff_secs(1, p.random()));
                throttled_wait = throttled_wait.max(Some(wait));
            }
            p.log(
                Level::Warn,
                &format!(
                    "{name}: {}; the other data types went on",
                    failure.describe()
                ),
            );
        }
        self.reset_attempts(p);
        // A window resumed from a cursor was opened by an earlier process (one that was
        // stopped or crashed); what changed since then is in the next window, so finish
        // with one window of our own: `run --once` then delivers everything visible when
        // it started. Windows opened here end the catch-up when paged through.
        let more = throttled_wait.is_some()
            || finished_resumed_window
            || cursor.streams.values().any(|s| s.next.is_some());
        Ok(Batch {
            events,
            more,
            cursor: cursor.encode(),
            wait_secs: throttled_wait,
            degraded: Vec::new(),
        })
    }

    /// Fetches one page of one data type and advances its stream; leaves the stream as it
    /// was when the page cannot be had.
    fn poll_stream(
        &mut self,
        p: &dyn Platform,
        q: &Query,
        stream: &mut Stream,
    ) -> Result<Vec<Event>, Failure> {
        let t = q.data_type;
        let from = stream.from_time().map_err(Failure::Fatal)?;
        let url = match &stream.next {
            Some(link) => {
                check_next_link(link, &self.config.graph_base).map_err(Failure::Fatal)?;
                link.clone()
            }
            None => list_url(&self.config.graph_base, q, from),
        };
        let response = self.get(p, &url)?;
        let page = read_page(&response.body, ["id", t.window_field, t.time_field])
            .map_err(Failure::Transient)?;
        if let Some(next) = &page.next_link {
            check_next_link(next, &self.config.graph_base).map_err(Failure::Fatal)?;
        }

        let dedup_key = Dedup::key(t.name);
        let mut dedup = match p.kv_get(&dedup_key) {
            Ok(None) => Dedup::default(),
            Ok(Some(text)) => Dedup::decode(&text).unwrap_or_else(|e| {
                p.log(
                    Level::Warn,
                    &format!(
                        "{}: {e}; starting an empty one (duplicates possible)",
                        t.name
                    ),
                );
                Dedup::default()
            }),
            Err(e) => return Err(Failure::Transient(format!("reading dedup memory: {e:?}"))),
        };
        let mut seen_max = stream.seen_max_time().map_err(Failure::Fatal)?;
        let (mut events, mut skipped, mut repeated) =
            (Vec::with_capacity(page.records.len()), 0, 0);
        for record in page.records {
            let Some([id, window, time]) = record.fields else {
                skipped += 1;
                continue;
            };
            let window_time = window.as_deref().map(Timestamp::parse);
            let (Some(id), Some(window), Some(Ok(window_time))) = (id, window, window_time) else {
                skipped += 1;
                continue;
            };
            seen_max = seen_max.max(Some(window_time));
            let version = if t.versioned {
                window.to_string()
            } else {
                String::new()
            };
            if !dedup.insert(t.kind, &id, &version, window_time.unix_secs()) {
                repeated += 1;
                continue;
            }
            // When the time field is the window field, the reader fills only one of them.
            let timestamp = time.unwrap_or(window).into_owned();
            events.push(Event {
                id: id.into_owned(),
                version,
                kind: t.kind.into(),
                timestamp,
                payload: record.raw.to_string(),
                incomplete: None,
            });
        }
        if skipped > 0 {
            p.log(
                Level::Warn,
                &format!(
                    "{}: skipped {skipped} record(s) without an `id` or a valid `{}`",
                    t.name, t.window_field
                ),
            );
        }
        if repeated > 0 {
            p.log(
                Level::Debug,
                &format!(
                    "{}: {repeated} record(s) already delivered (window overlap)",
                    t.name
                ),
            );
        }

        let advanced = match page.next_link {
            Some(next) => Stream {
                next: Some(next),
                seen_max: seen_max.map(Timestamp::to_rfc3339),
                ..stream.clone()
            },
            None => {
                // The whole window is read: only now may the watermark move (lists come
                // newest first). It trails the newest record by the overlap margin.
                let next_from = seen_max.map_or(from, |m| m.minus_secs(t.overlap_secs).max(from));
                dedup.prune(next_from.unix_secs());
                Stream::starting_at(next_from)
            }
        };
        p.kv_set(&dedup_key, &dedup.encode())
            .map_err(|e| Failure::Transient(format!("saving dedup memory: {e:?}")))?;
        *stream = advanced;
        Ok(events)
    }

    /// The instance's origin, recorded on its first poll.
    fn origin(&self, p: &dyn Platform) -> Result<Timestamp, String> {
        if let Some(o) = load_origin(p)? {
            return Timestamp::parse(&o.origin)
                .map_err(|e| format!("corrupt instance record in KV: {e}"));
        }
        let origin = p
            .now()
            .minus_secs(i64::from(self.config.backfill_days) * 86_400);
        let record = Origin {
            backfill_days: self.config.backfill_days,
            origin: origin.to_rfc3339(),
        };
        // Written at once: the backfill boundary is fixed when the instance first polls,
        // and must not drift forward while a failing first poll is retried.
        p.kv_set_now(
            ORIGIN_KEY,
            &serde_json::to_string(&record).expect("serializes"),
        )
        .map_err(|e| format!("saving the instance record: {e:?}"))?;
        Ok(origin)
    }

    /// Turns a failure into what the host should do, counting transient failures across
    /// polls (a failed poll keeps its cursor, so the count lives in KV, written at once).
    fn poll_error(&self, p: &dyn Platform, name: &str, failure: Failure) -> PollError {
        let attempts = p
            .kv_get(ATTEMPTS_KEY)
            .ok()
            .flatten()
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
            + 1;
        let count = |n: u32| {
            if let Err(e) = p.kv_set_now(ATTEMPTS_KEY, &n.to_string()) {
                p.log(
                    Level::Warn,
                    &format!("could not record the retry count: {e:?}"),
                );
            }
        };
        match failure {
            Failure::Auth(m) => PollError::Auth(format!("{name}: {m}")),
            Failure::Fatal(m) => PollError::Fatal(format!("{name}: {m}")),
            Failure::Budget(after) => PollError::RateLimited(Retry {
                after_secs: after,
                message: format!("{name}: the API's call budget is spent"),
            }),
            Failure::Throttled(Some(after), m) => PollError::RateLimited(Retry {
                after_secs: after,
                message: format!("{name}: {m}; Retry-After {after}s"),
            }),
            Failure::Throttled(None, m) => {
                count(attempts);
                let after = backoff_secs(attempts, p.random());
                PollError::RateLimited(Retry {
                    after_secs: after,
                    message: format!("{name}: {m}; backing off {after}s"),
                })
            }
            Failure::Transient(m) if attempts > MAX_ATTEMPTS => {
                count(0);
                PollError::Fatal(format!(
                    "{name}: gave up after {MAX_ATTEMPTS} attempts: {m}"
                ))
            }
            Failure::Transient(m) => {
                count(attempts);
                let after = backoff_secs(attempts, p.random());
                PollError::Transient(Retry {
                    after_secs: after,
                    message: format!(
                        "{name}: {m} (attempt {attempts} of {MAX_ATTEMPTS}, retrying in {after}s)"
                    ),
                })
            }
        }
    }

    fn reset_attempts(&self, p: &dyn Platform) {
        if p.kv_get(ATTEMPTS_KEY)
            .ok()
            .flatten()
            .is_some_and(|v| v != "0")
        {
            let _ = p.kv_set_now(ATTEMPTS_KEY, "0");
        }
    }
}

fn load_origin(p: &dyn Platform) -> Result<Option<Origin>, String> {
    match p.kv_get(ORIGIN_KEY) {
        Ok(None) => Ok(None),
        Ok(Some(text)) => serde_json::from_str(&text).map(Some).map_err(|e| {
            format!("corrupt instance record in KV: {e}; delete the instance's state to start over")
        }),
        Err(e) => Err(format!("reading the instance record: {e:?}")),
    }
}

// The component's single instance, between host calls.
thread_local! {
    static INSTANCE: RefCell<Option<Instance>> = const { RefCell::new(None) };
}

#[doc(hidden)]
pub fn export_configure<C: Connector>(document: &str) -> Result<(), ConfigError> {
    let instance = Instance::configure::<C>(&Wasi, document)?;
    INSTANCE.with(|i| *i.borrow_mut() = Some(instance));
    Ok(())
}

fn with_instance<T>(missing: impl FnOnce(String) -> T, f: impl FnOnce(&mut Instance) -> T) -> T {
    INSTANCE.with(|i| match i.borrow_mut().as_mut() {
        Some(instance) => f(instance),
        None => missing("the host called the connector before `configure`".into()),
    })
}

#[doc(hidden)]
pub fn export_validate() -> Result<(), crate::types::ValidationError> {
    with_instance(
        |m| {
            Err(crate::types::ValidationError {
                code: crate::types::ValidationCode::InvalidConfig,
                message: m,
                remedy: "configure the instance first".into(),
            })
        },
        |i| i.validate(&Wasi),
    )
}

#[doc(hidden)]
pub fn export_poll(cursor: Option<String>) -> Result<Batch, PollError> {
    with_instance(
        |m| Err(PollError::Fatal(m)),
        |i| i.poll(&Wasi, cursor.as_deref()),
    )
}
