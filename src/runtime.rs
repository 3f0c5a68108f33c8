//! One configured connector instance: its config, its token, and the three calls the
//! host makes. Lives in the component's memory between calls.

use std::cell::RefCell;

use serde::{Deserialize, Serialize};

use crate::auth::Token;
use crate::budget::whole_secs;
use crate::client::Failure;
use crate::config::{self, Config};
use crate::connector::{Connector, Query};
use crate::cursor::{Cursor, Stream};
use crate::health::{Code, TypeHealth};
use crate::platform::{Platform, Wasi};
use crate::retry::{MAX_ATTEMPTS, backoff_secs};
use crate::time::Timestamp;
use crate::types::{Batch, ConfigError, Level, Metadata, PollError, Retry};

/// KV: what the instance was created with (see [`Origin`]).
const ORIGIN_KEY: &str = "instance";

/// Fixed when the instance first polls: the tenant, app and Graph host it reads, the
/// backfill it was created with and the boundary it set. A data type added later starts
/// at this boundary too. Records of older versions lack the identity: it is added on the
/// next poll.
#[derive(Serialize, Deserialize)]
struct Origin {
    backfill_days: u32,
    origin: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tenant_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    graph: Option<String>,
}

pub struct Instance {
    pub(crate) name: &'static str,
    pub(crate) config: Config,
    pub(crate) queries: Vec<Query>,
    pub(crate) token: Option<Token>,
    /// Data types that opened a window during this component instance's life: see `poll`.
    opened_here: Vec<&'static str>,
    /// The connector's suggested seconds between polls.
    poll_interval_secs: u32,
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
        description: describe_ocsf(C::DESCRIPTION, C::DATA_TYPES),
        event_kinds: C::DATA_TYPES.iter().map(|t| t.kind.to_string()).collect(),
        permissions,
        config_schema: config::schema(C::config_properties(), C::required_keys(), C::CLOUDS)
            .to_string(),
        secrets: vec![crate::auth::CLIENT_SECRET.into()],
        poll_interval_secs: C::POLL_INTERVAL_SECS,
    }
}

/// The description, with the OCSF version and class of each normalized kind, e.g.
/// "Events also carry their OCSF 1.8.0 form (`ocsf`): defender.alert → Detection Finding."
fn describe_ocsf(description: &str, types: &[crate::connector::DataType]) -> String {
    let classes: Vec<&str> = types
        .iter()
        .filter_map(|t| t.ocsf.map(|m| m.name))
        .collect();
    if classes.is_empty() {
        return description.into();
    }
    format!(
        "{}. Events also carry their OCSF {} form (`ocsf`): {}.",
        description.trim_end_matches('.'),
        crate::ocsf::OCSF_VERSION,
        classes.join("; ")
    )
}

impl Instance {
    /// Checks a config document; never touches the network. Reads KV to refuse a
    /// `backfill_days`, tenant, app or Graph host other than the instance was created
    /// with: its cursor and dedup memory belong to those.
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
        if let Some(origin) = origin {
            check_same_instance(&origin, &config)?;
        }
        Ok(Instance {
            name: C::NAME,
            config,
            queries,
            token: None,
            opened_here: Vec::new(),
            poll_interval_secs: C::POLL_INTERVAL_SECS,
        })
    }

    /// One poll: a page of every data type with a window being read, or, when none is,
    /// the first page of a new window for each. Types fail, wait and degrade
    /// independently: one that is throttled or failing does not hold back the others.
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
        let now = p.now();
        let mut health: Vec<TypeHealth> = selected
            .iter()
            .map(|name| TypeHealth::load(p, name))
            .collect();
        // A data type has work pending while it is reading a window, waiting out a
        // throttle, or due for a fresh window (none opened within the poll interval).
        // Meanwhile the host polls again at once (or after a wait), and the other idle
        // types do not open a window at every one of those polls.
        let interval = i64::from(self.poll_interval_secs);
        let opened_lately = |s: &Stream| {
            s.opened_time()
                .ok()
                .flatten()
                .is_some_and(|t| now.unix_secs() - t.unix_secs() < interval)
        };
        let reading = |name: &str, h: &TypeHealth, c: &Cursor| {
            !c.streams[name].is_idle() && h.wait_millis(now) == 0
        };
        let busy = self.queries.iter().zip(&health).any(|(q, h)| {
            let s = &cursor.streams[q.data_type.name];
            !s.is_idle() || !opened_lately(s) || h.throttled()
        });
        // The type whose window opened longest ago goes first, so that types sharing a
        // family's budget (one call a second) take turns instead of the first starving the
        // second.
        let mut order: Vec<usize> = (0..self.queries.len()).collect();
        order.sort_by_key(|&i| {
            cursor.streams[self.queries[i].data_type.name]
                .opened_time()
                .ok()
                .flatten()
        });

        let mut events = Vec::new();
        let mut failures: Vec<(&str, Failure, u32, u32)> = Vec::new();
        // Milliseconds until data types with work to do may call Graph again: a spent
        // budget, or a backoff still running from an earlier poll.
        let mut waits: Vec<i64> = Vec::new();
        let mut budget_spent: Vec<&str> = Vec::new();
        let mut succeeded = 0;
        let mut finished_resumed_window = false;
        let queries = self.queries.clone();
        for i in order {
            let (q, h) = (&queries[i], &mut health[i]);
            let name = q.data_type.name;
            let stream = cursor.streams.get_mut(name).expect("inserted above");
            let idle = stream.is_idle();
            if busy && idle && opened_lately(stream) && !h.throttled() {
                continue;
            }
            let wait = h.wait_millis(now);
            if wait > 0 {
                if !idle || h.throttled() {
                    waits.push(wait);
                }
                continue;
            }
            let before = h.clone();
            match self.read_window(p, q, stream, h, origin) {
                Ok(mut read) => {
                    succeeded += 1;
                    h.succeeded();
                    events.append(&mut read);
                    if idle && !self.opened_here.contains(&name) {
                        self.opened_here.push(name);
                    }
                    finished_resumed_window |=
                        !idle && stream.is_idle() && !self.opened_here.contains(&name);
                }
                Err(Failure::Budget(ms)) => {
                    waits.push(ms);
                    budget_spent.push(name);
                }
                Err(f) => {
                    h.failures += 1;
                    let (code, after) = match &f {
                        Failure::Throttled(Some(after), _) => (Code::Throttled, *after),
                        // No `Retry-After` (the Identity Protection lists never send one):
                        // back off with jitter, so instances throttled together spread out.
                        Failure::Throttled(None, _) => {
                            (Code::Throttled, backoff_secs(h.failures, p.random()))
                        }
                        Failure::Transient(_) => {
                            (Code::Transient, backoff_secs(h.failures, p.random()))
                        }
                        Failure::Auth(_) => (Code::Auth, backoff_secs(h.failures, p.random())),
                        _ => (Code::Failing, backoff_secs(h.failures, p.random())),
                    };
                    h.failed(now, after, code, f.describe());
                    failures.push((name, f, h.failures, after));
                }
            }
            h.save_if_changed(p, name, &before);
        }
        let degraded = selected
            .iter()
            .zip(&health)
            .filter_map(|(name, h)| h.degraded(name))
            .collect();
        if succeeded == 0 && waits.is_empty() && !failures.is_empty() {
            let (name, failure, attempts, after) = failures.remove(0);
            return Err(self.poll_error(p, name, failure, attempts, after));
        }
        // Every data type is waiting out the backoff of a failure (a wrong secret, say):
        // the poll fails with that failure again, so the instance shows failing (its
        // `auth`, its failure count) until a retry succeeds, instead of a success whose
        // every type is degraded.
        if succeeded == 0
            && failures.is_empty()
            && let Some(e) = held_error(&selected, &health, now)
        {
            return Err(e);
        }
        for (name, failure, _, after) in failures {
            if matches!(failure, Failure::Throttled(..)) {
                // It will be served once Graph allows: poll again then.
                waits.push(i64::from(after) * 1000);
            }
            p.log(
                Level::Warn,
                &format!(
                    "{name}: {}; the other data types went on",
                    failure.describe()
                ),
            );
        }
        // A window this component instance did not open (an earlier poll's, or a process's
        // that was stopped or killed while reading it) ends some time before now: what
        // changed since is in the next window, so one more follows at once. Windows opened
        // by this instance end the catch-up when read through: `run --once` keeps one
        // instance to its end, so it stops having delivered everything visible when it
        // started. `serve` keeps an instance for a turn of polls, so there only a window
        // that spans turns is followed by one more at once (a busy tenant is read without
        // the interval's pause, turn by turn).
        let reading_on = cursor.streams.values().any(|s| !s.is_idle());
        let more = reading_on || finished_resumed_window || !waits.is_empty();
        // When no data type can go on at once, ask the host to wait for the first that can.
        let ready = self.queries.iter().zip(&health).any(|(q, h)| {
            reading(q.data_type.name, h, &cursor) && !budget_spent.contains(&q.data_type.name)
        });
        let wait_secs = (!ready && !waits.is_empty()).then(|| {
            let ms = waits.iter().copied().min().unwrap_or(0);
            whole_secs(ms).max(1)
        });
        if let Some(wait) = wait_secs {
            // A second's wait for a shared budget is routine; a longer one is news.
            let level = if wait >= 5 { Level::Info } else { Level::Debug };
            let why = if budget_spent.is_empty() {
                "a throttled data type's wait"
            } else {
                "call budget spent"
            };
            p.log(level, &format!("{why}: next Graph call in {wait} s"));
        }
        Ok(Batch {
            events,
            more,
            cursor: cursor.encode(),
            wait_secs,
            degraded,
        })
    }

    /// The instance's origin, recorded on its first poll.
    fn origin(&self, p: &dyn Platform) -> Result<Timestamp, String> {
        let stored = load_origin(p)?;
        let origin = match &stored {
            Some(o) => Timestamp::parse(&o.origin)
                .map_err(|e| format!("corrupt instance record in KV: {e}"))?,
            None => p
                .now()
                .minus_secs(i64::from(self.config.backfill_days) * 86_400),
        };
        if stored.as_ref().is_none_or(|o| o.tenant_id.is_none()) {
            let record = Origin {
                backfill_days: self.config.backfill_days,
                origin: origin.to_rfc3339(),
                tenant_id: Some(self.config.tenant_id.clone()),
                client_id: Some(self.config.client_id.clone()),
                graph: Some(self.config.graph_base.clone()),
            };
            // Written at once: the backfill boundary is fixed when the instance first
            // polls, and must not drift forward while a failing first poll is retried.
            p.kv_set_now(
                ORIGIN_KEY,
                &serde_json::to_string(&record).expect("serializes"),
            )
            .map_err(|e| format!("saving the instance record: {e:?}"))?;
        }
        Ok(origin)
    }

    /// Turns the failure of every data type into what the host should do; `attempts`
    /// counts the data type's failures in a row (kept in its health record).
    fn poll_error(
        &self,
        p: &dyn Platform,
        name: &str,
        failure: Failure,
        attempts: u32,
        after: u32,
    ) -> PollError {
        match failure {
            Failure::Auth(m) => PollError::Auth(format!("{name}: {m}")),
            f @ (Failure::Fatal(_) | Failure::Rejected { .. }) => {
                PollError::Fatal(format!("{name}: {}", f.describe()))
            }
            Failure::Budget(ms) => PollError::RateLimited(Retry {
                after_secs: whole_secs(ms),
                message: format!("{name}: the API's call budget is spent"),
            }),
            Failure::Throttled(Some(after), m) => PollError::RateLimited(Retry {
                after_secs: after,
                message: format!("{name}: {m}; Retry-After {after}s"),
            }),
            Failure::Throttled(None, m) => PollError::RateLimited(Retry {
                after_secs: after,
                message: format!("{name}: {m}; backing off {after}s"),
            }),
            Failure::Transient(m) if attempts >= MAX_ATTEMPTS => {
                // Counting starts again: the host reports this and polls on schedule.
                let mut h = TypeHealth::load(p, name);
                let before = h.clone();
                h.failures = 0;
                h.save_if_changed(p, name, &before);
                PollError::Fatal(format!(
                    "{name}: gave up after {MAX_ATTEMPTS} attempts: {m}"
                ))
            }
            Failure::Transient(m) => PollError::Transient(Retry {
                after_secs: after,
                message: format!(
                    "{name}: {m} (attempt {attempts} of {MAX_ATTEMPTS}, retrying in {after}s)"
                ),
            }),
        }
    }
}

/// Refuses a config that names another tenant, app or Graph host, or another backfill,
/// than the instance was created with.
fn check_same_instance(origin: &Origin, config: &Config) -> Result<(), ConfigError> {
    if origin.backfill_days != config.backfill_days {
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
    let fields = [
        ("tenant_id", &origin.tenant_id, &config.tenant_id),
        ("client_id", &origin.client_id, &config.client_id),
        ("graph_url", &origin.graph, &config.graph_base),
    ];
    for (key, created, now) in fields {
        if let Some(created) = created
            && !created.eq_ignore_ascii_case(now)
        {
            let what = if key == "graph_url" {
                "Graph host (cloud or graph_url)"
            } else {
                key
            };
            return Err(config::error(
                key,
                format!(
                    "this instance was created for {what} {created} and its state (cursor, \
                     dedup memory) belongs to it; the config now says {now}"
                ),
                format!(
                    "give this tenant its own instance (another instance file or --instance \
                     name), or set {key} back to {created}"
                ),
            ));
        }
    }
    Ok(())
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

/// The error a poll repeats when every data type waits out the backoff of a failure: the
/// first type's, with the time until its next try.
fn held_error(selected: &[&str], health: &[TypeHealth], now: Timestamp) -> Option<PollError> {
    let held: Vec<_> = health.iter().map(|h| h.held_by_failure(now)).collect();
    if held.is_empty() || held.iter().any(Option::is_none) {
        return None;
    }
    let (name, (code, message)) = selected.iter().zip(held.into_iter().flatten()).next()?;
    let after = whole_secs(health.iter().map(|h| h.wait_millis(now)).min()?);
    let message = format!("{name}: {message} (still failing; next try in {after}s)");
    Some(match code {
        Code::Auth => PollError::Auth(message),
        Code::Transient => PollError::Transient(Retry {
            after_secs: after,
            message,
        }),
        Code::Failing | Code::Throttled => PollError::Fatal(message),
    })
}
