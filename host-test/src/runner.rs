//! The poll loop of one instance and its delivery guarantees.
//!
//! Each successful poll's events, cursor and staged KV writes are committed to the state
//! database in one transaction, then delivered from the outbox to the sink. A failed poll
//! commits nothing and the next poll starts from the same cursor. Waits (interval,
//! `Retry-After`, backoff, a spent call budget) go through the [`Clock`], so fixture replay
//! runs them on virtual time.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::value::RawValue;

use crate::bindings::{Batch, ConfigError, Event, PollError};
use crate::clock::{Clock, SystemClock};
use crate::engine::{Limits, LoadedComponent};
use crate::holder::Claim;
use crate::imports::http::NetworkTransport;
use crate::imports::token_cache::{self, TokenCache, TokenContext};
use crate::imports::{AllowList, Transport, Wiring};
use crate::instance::{Instance, InstanceError};
use crate::lifecycle::LifecycleError;
use crate::redact::Redactor;
use crate::secrets::Secrets;
use crate::sink::{EventLine, Sink, SinkError};
use crate::state::{PollHealth, StateDb, StateError};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("invalid config: {0}")]
    Config(String),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Instance(#[from] InstanceError),
    /// The instance's name belongs to another config file (see [`crate::lifecycle`]).
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    /// The connector reported a poll error that waiting will not fix (auth, fatal).
    #[error("instance {instance}: {message}")]
    Connector { instance: String, message: String },
}

impl RunError {
    /// The CLI's exit code: 2 for a config the user must fix, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Config(_) | RunError::Lifecycle(_) => 2,
            RunError::Sink(SinkError::Config { .. }) => 2,
            // Another process holds the instance, or a component swapped under it: a usage
            // error, not the connector's.
            RunError::State(
                StateError::Held { .. }
                | StateError::Leased { .. }
                | StateError::WrongConnector { .. },
            ) => 2,
            _ => 1,
        }
    }
}

pub fn format_config_error(e: &ConfigError) -> String {
    let key = if e.key.is_empty() {
        String::new()
    } else {
        format!("{}: ", e.key)
    };
    format!("{key}{} ({})", e.message, e.remedy)
}

/// Everything a runner needs to create (and re-create) its component instance.
#[derive(Clone)]
pub struct RunSetup {
    pub component: LoadedComponent,
    pub instance: String,
    pub config: String,
    pub secrets: Secrets,
    pub state: Arc<Mutex<StateDb>>,
    pub transport: Arc<dyn Transport>,
    pub clock: Arc<dyn Clock>,
    pub redactor: Redactor,
    pub limits: Limits,
    pub stop: Arc<AtomicBool>,
    /// Seeded randomness in the component (deterministic replay).
    pub seeded_random: bool,
    /// The file the instance is run from (absolute) and whether its name was taken from
    /// that file's name (then an instance of that name created from another file is
    /// refused, see [`crate::lifecycle::bind_source`]).
    pub source: Option<(String, bool)>,
    /// Raised (incremented) to make the runner reopen its `--out` file: SIGHUP, after
    /// the file was rotated away.
    pub reopen: Arc<AtomicU64>,
    /// The access tokens the instance's components store between polls (memory only).
    pub tokens: TokenCache,
    /// While a network sink cannot take events, polls go on until this many wait in the
    /// outbox, then pause until the sink takes them (backpressure, never dropping).
    pub sink_max_lag: u64,
}

/// [`RunSetup::sink_max_lag`] by default: about 100 MB of event lines in the state file.
pub const DEFAULT_SINK_MAX_LAG: u64 = 100_000;

impl RunSetup {
    /// A setup on the network and the system clock, with default limits, whose redactor
    /// masks `secrets`; callers change what differs (limits, transport, stop flag).
    pub fn new(
        component: LoadedComponent,
        instance: String,
        config: String,
        secrets: Secrets,
        state: Arc<Mutex<StateDb>>,
    ) -> Self {
        let redactor = Redactor::default();
        secrets.register(&redactor);
        RunSetup {
            component,
            instance,
            config,
            secrets,
            state,
            transport: Arc::new(NetworkTransport::default()),
            clock: Arc::new(SystemClock),
            redactor,
            limits: Limits::default(),
            stop: Arc::new(AtomicBool::new(false)),
            seeded_random: false,
            source: None,
            reopen: Arc::new(AtomicU64::new(0)),
            tokens: TokenCache::default(),
            sink_max_lag: DEFAULT_SINK_MAX_LAG,
        }
    }

    fn wiring(&self) -> Wiring {
        Wiring {
            instance: self.instance.clone(),
            transport: self.transport.clone(),
            allow: AllowList::from_config(&self.config),
            http_timeout_cap: self.limits.http_timeout,
            http_body_cap: self.limits.http_body_bytes,
            secrets: self.secrets.clone(),
            state: self.state.clone(),
            clock: self.clock.clone(),
            redactor: self.redactor.clone(),
            memory_bytes: self.limits.memory_bytes,
            seeded_random: self.seeded_random,
            tokens: TokenContext {
                cache: self.tokens.clone(),
                scope: token_cache::scope(&self.config, &self.secrets),
            },
        }
    }

    /// The connector's metadata (no config needed).
    pub fn describe(&self) -> Result<crate::bindings::Metadata, RunError> {
        Ok(Instance::new(&self.component, self.wiring(), &self.limits)?.describe()?)
    }

    /// Refuses secrets with a misspelled name for one the connector reads.
    fn check_secret_names(&self, metadata: &crate::bindings::Metadata) -> Result<(), RunError> {
        self.secrets
            .check_names(&metadata.secrets)
            .map_err(|e| RunError::Config(e.to_string()))
    }

    /// A fresh instance with the config applied.
    pub fn configured_instance(&self) -> Result<Instance, RunError> {
        let mut instance = Instance::new(&self.component, self.wiring(), &self.limits)?;
        instance
            .configure(&self.config)?
            .map_err(|e| RunError::Config(self.redactor.redact(&format_config_error(&e))))?;
        Ok(instance)
    }

    /// `validate` on a fresh instance: `ok` or `error: <code>: <message> (<remedy>)`, the
    /// line the CLI prints.
    pub fn validate(&self) -> Result<String, RunError> {
        if let Err(RunError::Config(m)) = self.check_secret_names(&self.describe()?) {
            return Ok(format!("error: invalid-config: {m}"));
        }
        let mut instance = match self.configured_instance() {
            Ok(i) => i,
            Err(RunError::Config(m)) => return Ok(format!("error: invalid-config: {m}")),
            Err(e) => return Err(e),
        };
        Ok(match instance.validate()? {
            Ok(()) => "ok".into(),
            Err(e) => self.redactor.redact(&format!(
                "error: {}: {} ({})",
                e.code.as_str(),
                e.message,
                e.remedy
            )),
        })
    }
}

/// What one poll came to, as reports and tests see it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PollRecord {
    /// `ok`, `rate-limited`, `transient`, `auth`, `fatal` or `trap`.
    pub outcome: &'static str,
    pub events: usize,
    pub more: bool,
    /// The wait that followed, in seconds (interval excluded).
    pub wait_secs: u64,
    pub requests: u64,
    /// The error message, for failed polls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

enum Step {
    Committed { more: bool, wait: Option<u32> },
    Retry { after: u32 },
    Failed { message: String },
}

pub struct Runner {
    setup: RunSetup,
    /// This process's hold on the instance, released when the runner is dropped.
    claim: Option<Claim>,
    /// The host the poll's last request could not reach (a `network` failure).
    network: crate::network::Watch,
    /// The `reopen` generation the sink was opened at.
    sink_generation: u64,
    /// When the last info line about polls was logged: quiet polls log one "up to date"
    /// line per [`QUIET_LOG_EVERY`], not one per poll.
    last_poll_line: Option<std::time::SystemTime>,
    connector: String,
    version: String,
    poll_interval_secs: u32,
    routing: Vec<String>,
    /// The output; a file is closed between turns (see [`Self::release_instance`]) and
    /// opened again from `out` to deliver. A network sink (`out` is `None`) stays open: it
    /// holds connections and, for a webhook, the batch it is filling.
    sink: Option<Sink>,
    out: Option<std::path::PathBuf>,
    /// The sink could not take events when last tried (a transient failure): polls go on
    /// up to `sink_max_lag` waiting events, and each round tries the sink first.
    sink_held: Option<SinkError>,
    /// `run --once`: a sink that cannot take events ends the run (exit 1) instead of
    /// holding the lines for later.
    once: bool,
    /// The component instance, kept from poll to poll until [`Runner::release_instance`]
    /// (`serve`, at the end of each turn: an idle instance holds no store or linear
    /// memory) or a trap. Kept because a window the guest opened itself ends its catch-up
    /// (see the guest's `poll`): with a fresh instance per poll, every window that spans
    /// polls is resumed and followed by another at once, without end whenever the
    /// overlap it reads again holds more than a page. (Components built for WIT 0.1 also
    /// keep their access token in their own memory.)
    instance: Option<Instance>,
    /// Polls made, when recording (fixture replay).
    pub records: Option<Vec<PollRecord>>,
    /// The catch-up display of `run` on a terminal.
    pub progress: Option<crate::progress::Progress>,
}

impl Runner {
    /// Prepares the instance's state, reconciles the sink with the outbox after a crash
    /// and delivers what a previous run committed but did not deliver.
    ///
    /// The causes come in the order an operator can act on them: a component swapped under
    /// the instance first, then the config, then another process holding the instance.
    pub fn new(mut setup: RunSetup, sink: Sink) -> Result<Self, RunError> {
        let routing = routing_of(&setup.config);
        let (transport, network) = crate::network::Watched::wrap(setup.transport.clone());
        setup.transport = transport;
        let sink_generation = setup.reopen.load(Ordering::Relaxed);
        let mut runner = Runner {
            setup,
            claim: None,
            network,
            sink_generation,
            last_poll_line: None,
            connector: String::new(),
            version: String::new(),
            poll_interval_secs: 0,
            routing,
            out: sink.path().map(Path::to_path_buf),
            sink: Some(sink),
            sink_held: None,
            once: false,
            instance: None,
            records: None,
            progress: None,
        };
        let metadata = runner.setup.describe()?;
        runner
            .db()
            .check_owner(&runner.setup.instance, &metadata.name)?;
        runner.setup.check_secret_names(&metadata)?;
        runner.connector = metadata.name;
        runner.version = metadata.version;
        runner.poll_interval_secs = metadata.poll_interval_secs;
        // Refuses a config the component refuses before anything is claimed or created.
        runner.instance = Some(runner.fresh_instance()?);
        let now = runner.now_rfc3339();
        runner.claim = Some(Claim::take(
            &runner.setup.state,
            &runner.setup.instance,
            &now,
        )?);
        if let Some((source, strict)) = &runner.setup.source {
            crate::lifecycle::bind_source(
                &mut runner.db(),
                &runner.setup.instance,
                source,
                *strict,
            )?;
        }
        runner
            .db()
            .ensure_instance(&runner.setup.instance, &runner.connector)?;
        runner.reconcile_sink()?;
        runner.deliver_or_record(true)?;
        Ok(runner)
    }

    /// The component's version, as its `describe` says.
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn connector(&self) -> &str {
        &self.connector
    }

    /// The connector's suggested interval between polls.
    pub fn poll_interval_secs(&self) -> u32 {
        self.poll_interval_secs
    }

    fn db(&self) -> std::sync::MutexGuard<'_, StateDb> {
        self.setup.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fresh_instance(&self) -> Result<Instance, RunError> {
        self.setup.configured_instance()
    }

    /// The output, opened again if it was closed.
    fn sink(&mut self) -> Result<&mut Sink, SinkError> {
        if self.sink.is_none()
            && let Some(path) = &self.out
        {
            self.sink = Some(Sink::open(path)?);
        }
        Ok(self.sink.as_mut().expect("stdout is never closed"))
    }

    /// A crash after the sink's fsync but before the delivered `seq` was recorded leaves
    /// lines in the file that the outbox still holds: skip them.
    fn reconcile_sink(&mut self) -> Result<(), RunError> {
        let name = self.setup.instance.clone();
        let Some(in_file) = self.sink()?.last_seq(&name)? else {
            return Ok(());
        };
        let (last, delivered) = self.db().seqs(&name)?;
        if in_file > last {
            tracing::warn!(instance = %name, in_file, last,
                "the output file holds seq numbers this state database never committed \
                 (another state file wrote to it?); new lines continue from the state's seq");
        } else if in_file > delivered {
            self.db().mark_delivered(&name, in_file)?;
        }
        Ok(())
    }

    /// Moves committed lines from the outbox to the sink, after reopening the sink if
    /// asked to (a rotated `--out` file). Each part the sink acknowledges is recorded as
    /// delivered before the next is sent. `flush`: no poll follows at once, so a sink that
    /// fills batches sends what it has.
    fn deliver(&mut self, flush: bool) -> Result<usize, RunError> {
        let name = self.setup.instance.clone();
        let generation = self.setup.reopen.load(Ordering::Relaxed);
        if generation != self.sink_generation {
            if let Some(path) = &self.out {
                // Opened again below, whether or not it was open: a file closed between
                // turns was still rotated away.
                self.sink = None;
                tracing::info!(instance = %name, out = %path.display(), "output file reopened");
            }
            self.sink_generation = generation;
        }
        let lines = self.db().undelivered(&name)?;
        // A fleet host never sends a line its file already has: a host fenced between its
        // lease check and its write (a stop at exactly that moment) would otherwise repeat
        // lines its successor wrote. Only a file can be read back; a network sink's repeats
        // are what its idempotency keys (webhook) and `seq` headers (Kafka) are for.
        let fleet = self.db().postgres().is_some();
        let skip_to = match lines.last() {
            Some(_) if fleet => {
                self.db().check_lease(&name)?;
                self.sink()?.last_seq(&name)?
            }
            _ => None,
        };
        let last = lines.last().map(|&(s, _)| s);
        let lines: Vec<(u64, String)> = match skip_to {
            Some(written) => lines.into_iter().filter(|(s, _)| *s > written).collect(),
            None => lines,
        };
        let mut rest = &lines[..];
        let mut delivered = 0;
        let state = self.setup.state.clone();
        let stop = self.setup.stop.clone();
        while !rest.is_empty() {
            // A send can outlast a lease (a webhook's retries): each part is sent only
            // while this host still holds the instance.
            self.db().check_lease(&name)?;
            let n = self.sink()?.send(&name, rest, flush, &state, &stop)?;
            if n == 0 {
                break;
            }
            self.db().mark_delivered(&name, rest[n - 1].0)?;
            delivered += n;
            rest = &rest[n..];
        }
        // Every line was already in the file: recorded as delivered without a write.
        if let (Some(last), true) = (last, lines.is_empty()) {
            self.db().mark_delivered(&name, last)?;
        }
        // Only an acknowledgement (or nothing to send) shows the sink works again: lines
        // a batching sink holds back were not tried.
        if (delivered > 0 || lines.is_empty()) && self.sink_held.take().is_some() {
            let sink = self.sink.as_ref().map(Sink::describe).unwrap_or_default();
            tracing::info!(instance = %name, sink, "the sink takes events again");
        }
        Ok(delivered)
    }

    /// [`Self::deliver`], and a failure to deliver is a failure in the health record
    /// (`delivery`, with the count of events waiting), not only an error in the log: the
    /// poll committed, so `status` and the metrics would otherwise show a fresh success.
    /// A network sink that cannot take events now holds the instance's delivery (the
    /// lines wait in the outbox) instead of ending the run, except in `run --once`.
    fn deliver_or_record(&mut self, flush: bool) -> Result<usize, RunError> {
        match self.deliver(flush) {
            Ok(n) => Ok(n),
            Err(e) => {
                let name = self.setup.instance.clone();
                let waiting = self.db().undelivered(&name).map(|l| l.len()).unwrap_or(0);
                let hold = !self.once && matches!(&e, RunError::Sink(s) if s.is_transient());
                let message = if hold {
                    format!(
                        "{waiting} committed events not delivered: {e}; they wait in the state \
                         file and are sent when the sink takes them (polls pause at {})",
                        self.setup.sink_max_lag
                    )
                } else {
                    format!(
                        "{waiting} committed events not delivered: {e}; they are delivered when \
                         the output works again"
                    )
                };
                tracing::error!(instance = %name, "{message}");
                let record = PollRecord {
                    outcome: "delivery",
                    events: 0,
                    more: false,
                    wait_secs: 0,
                    requests: 0,
                    message: Some(message),
                };
                self.write_health(&record, false, 0, false);
                if let Err(e) = self.db().add_sink_error(&name) {
                    tracing::warn!(instance = %name, "cannot count the delivery failure: {e}");
                }
                match e {
                    RunError::Sink(s) if hold => {
                        self.sink_held = Some(s);
                        Ok(0)
                    }
                    e => Err(e),
                }
            }
        }
    }

    /// Before a poll, a held sink is tried again; with `sink_max_lag` events waiting the
    /// poll is skipped and the wait before the next try returned.
    fn pause_for_sink(&mut self, interval: Duration) -> Result<Option<Duration>, RunError> {
        let name = self.setup.instance.clone();
        let lag = |runner: &Self| -> Result<u64, RunError> {
            let (last, delivered) = runner.db().seqs(&name)?;
            Ok(last.saturating_sub(delivered))
        };
        // A batching sink may hold lines back without trying them: at the bound it must
        // try, so the outbox stops there whatever the reason the lines wait.
        if self.sink_held.is_none() && lag(self)? < self.setup.sink_max_lag {
            return Ok(None);
        }
        self.deliver_or_record(true)?;
        let lag = lag(self)?;
        let Some(held) = &self.sink_held else {
            return Ok(None);
        };
        if lag < self.setup.sink_max_lag {
            return Ok(None);
        }
        let asked = match held {
            SinkError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        };
        let wait = asked.unwrap_or(interval.min(Duration::from_secs(30)));
        tracing::warn!(instance = %name, lag, bound = self.setup.sink_max_lag,
            retry_secs = wait.as_secs(), "polls paused: the sink does not take events");
        Ok(Some(wait))
    }

    /// Polls until the component has no `more` (`once`), or until `stop` is raised,
    /// waiting `interval` between rounds.
    pub fn run(&mut self, once: bool, interval: Duration) -> Result<(), RunError> {
        while !self.setup.stop.load(Ordering::Relaxed) {
            let Some(wait) = self.poll_round(once, interval)? else {
                if self.sink_held.is_some() {
                    self.deliver_or_record(true)?;
                }
                return Ok(());
            };
            if !wait.is_zero() {
                self.setup.clock.sleep(wait, &self.setup.stop);
            }
        }
        tracing::info!(instance = %self.setup.instance, "stopped");
        Ok(())
    }

    /// One poll and what it says about the next: the wait before it, or `None` when
    /// `once` and the component has no `more`. `run` sleeps through the wait; `serve`'s
    /// scheduler puts the instance back in its queue for that long.
    pub fn poll_round(
        &mut self,
        once: bool,
        interval: Duration,
    ) -> Result<Option<Duration>, RunError> {
        self.once = once;
        if let Some(wait) = self.pause_for_sink(interval)? {
            if once {
                // `run --once` does not wait on a sink: the held error ends it.
                self.deliver_or_record(true)?;
            }
            self.release_instance();
            if let Some(claim) = &self.claim {
                let next = self.setup.clock.now() + wait;
                claim.set_next_poll(&humantime::format_rfc3339_seconds(next).to_string());
            }
            return Ok(Some(wait));
        }
        let step = self.poll_once()?;
        // Waits the API asked for (Retry-After, backoff, a spent budget), not the schedule.
        let told_to_wait = matches!(
            step,
            Step::Retry { .. }
                | Step::Committed {
                    more: true,
                    wait: Some(_)
                }
        );
        let wait = match step {
            Step::Committed { more: true, wait } => secs(wait.unwrap_or(0)),
            Step::Committed { more: false, .. } if once => return Ok(None),
            Step::Committed { more: false, wait } => interval.max(secs(wait.unwrap_or(0))),
            Step::Retry { after } => secs(after),
            Step::Failed { message } if once => {
                return Err(RunError::Connector {
                    instance: self.setup.instance.clone(),
                    message,
                });
            }
            Step::Failed { .. } => interval,
        };
        if let Some(r) = self.records.as_mut().and_then(|r| r.last_mut()) {
            r.wait_secs = wait.as_secs();
        }
        // `run --once` keeps its instance to the end, waits included; otherwise a wait
        // drops a kept one like the end of a turn in `serve`.
        if !once && !wait.is_zero() {
            self.release_instance();
        }
        if told_to_wait {
            let _ = self.db().add_wait(&self.setup.instance, wait.as_secs());
        }
        if let Some(claim) = &self.claim {
            let next = self.setup.clock.now() + wait;
            claim.set_next_poll(&humantime::format_rfc3339_seconds(next).to_string());
        }
        Ok(Some(wait))
    }

    /// Drops what an idle instance need not hold: a kept component instance (its store
    /// and linear memory) and the open output file. `serve` calls it at the end of each
    /// turn, so 100,000 idle instances hold neither stores nor file descriptors.
    pub fn release_instance(&mut self) {
        self.instance = None;
        if self.out.is_some() {
            self.sink = None;
        }
    }

    fn record(&mut self, record: PollRecord) {
        if let Some(records) = self.records.as_mut() {
            records.push(record);
        }
    }

    fn poll_once(&mut self) -> Result<Step, RunError> {
        let name = self.setup.instance.clone();
        let mut instance = match self.instance.take() {
            Some(i) => i,
            None => self.fresh_instance()?,
        };
        let cursor = self.db().cursor(&name)?;
        self.network.take();
        let result = match instance.poll(cursor.as_deref()) {
            Ok(r) => r,
            Err(e) => {
                // The instance is unusable after a trap; the next poll gets a fresh one.
                tracing::error!("{e}");
                let record = PollRecord {
                    outcome: "trap",
                    events: 0,
                    more: false,
                    wait_secs: 0,
                    requests: 0,
                    message: Some(e.to_string()),
                };
                self.write_health(&record, false, 0, false);
                self.record(record);
                return Ok(Step::Failed {
                    message: e.to_string(),
                });
            }
        };
        self.instance = Some(instance);
        let (requests, throttled) = (result.requests, result.throttled);
        let rate_limited = matches!(result.outcome, Err(PollError::RateLimited(_)));
        // A failure whose last request could not connect is the network's, whatever the
        // component called it: named with the host to check.
        let unreachable = self.network.take().filter(|_| result.outcome.is_err());
        let network = unreachable.is_some();
        let redact = |m: &str| {
            let m = self.setup.redactor.redact(m);
            match &unreachable {
                Some(u) => crate::network::describe(u, &m),
                None => m,
            }
        };
        let (step, record) = match result.outcome {
            Ok(batch) => match self.commit(result.emitted, batch, result.kv, (requests, throttled))
            {
                Ok((events, more, wait)) => {
                    // The commit wrote this poll's health record in its transaction.
                    let record = PollRecord {
                        outcome: "ok",
                        events,
                        more,
                        wait_secs: 0,
                        requests,
                        message: None,
                    };
                    self.record(record);
                    return Ok(Step::Committed { more, wait });
                }
                Err(CommitError::Run(e)) => return Err(e),
                Err(CommitError::BadEvent(message)) => {
                    tracing::error!(instance = %name, "{message}");
                    failed("fatal", message, requests)
                }
            },
            Err(PollError::RateLimited(r)) | Err(PollError::Transient(r)) => {
                let message = redact(&r.message);
                tracing::warn!(instance = %name, after_secs = r.after_secs, "poll will be retried: {message}");
                (
                    Step::Retry {
                        after: r.after_secs,
                    },
                    PollRecord {
                        outcome: "retry",
                        events: 0,
                        more: false,
                        wait_secs: 0,
                        requests,
                        message: Some(message),
                    },
                )
            }
            Err(PollError::Auth(m)) => {
                let message = format!("authentication failed: {}", redact(&m));
                tracing::error!(instance = %name, "{message}");
                failed("auth", message, requests)
            }
            Err(PollError::Fatal(m)) => {
                let message = redact(&m);
                tracing::error!(instance = %name, "poll failed: {message}");
                failed("fatal", message, requests)
            }
        };
        self.write_health(&record, rate_limited, throttled, network);
        self.record(record);
        Ok(step)
    }

    /// Adds a failed poll to the instance's health record (`connector-host status`). A
    /// failure to write it is worth a warning, not a failed poll.
    fn write_health(&self, r: &PollRecord, rate_limited: bool, throttled: u64, network: bool) {
        let at = self.now_rfc3339();
        let code = match r.outcome {
            _ if network => "network",
            "retry" if rate_limited => "throttled",
            "retry" => "transient",
            other => other,
        };
        let health = PollHealth {
            at: &at,
            ok: false,
            events: 0,
            requests: r.requests,
            throttled,
            error: r.message.as_deref(),
            code: Some(code),
            newest_event: None,
            degraded: None,
        };
        if let Err(e) = self.db().record_poll(&self.setup.instance, &health) {
            tracing::warn!(instance = %self.setup.instance, "cannot record the poll's health: {e}");
        }
    }

    fn now_rfc3339(&self) -> String {
        humantime::format_rfc3339_seconds(self.setup.clock.now()).to_string()
    }

    /// Commits a successful poll, with its health record, and delivers it. Returns
    /// (events, more, wait).
    fn commit(
        &mut self,
        emitted: Vec<Event>,
        batch: Batch,
        kv: crate::state::KvWrites,
        (requests, throttled): (u64, u64),
    ) -> Result<(usize, bool, Option<u32>), CommitError> {
        let events: Vec<Event> = emitted.into_iter().chain(batch.events).collect();
        // RFC 3339 with milliseconds: comparable as text in the health record.
        let newest = events
            .iter()
            .filter_map(|e| humantime::parse_rfc3339_weak(&e.timestamp).ok())
            .max()
            .map(|t| humantime::format_rfc3339_millis(t).to_string());
        let payloads = events
            .iter()
            .map(|e| checked_payload(e).map_err(CommitError::BadEvent))
            .collect::<Result<Vec<_>, _>>()?;
        let name = self.setup.instance.clone();
        let connector = self.connector.clone();
        let routing = self.routing.clone();
        let at = self.now_rfc3339();
        let degraded = degraded_of(&batch.degraded, &self.setup.redactor);
        let health = PollHealth {
            at: &at,
            ok: true,
            events: events.len() as u64,
            requests,
            throttled,
            error: None,
            code: None,
            newest_event: newest.as_deref(),
            degraded: Some(&degraded),
        };
        let seqs = self
            .db()
            .commit_poll(
                &name,
                events.len(),
                |seq, i| {
                    let e = &events[i];
                    serde_json::to_string(&EventLine {
                        seq,
                        instance: &name,
                        connector: &connector,
                        kind: &e.kind,
                        id: &e.id,
                        version: &e.version,
                        timestamp: &e.timestamp,
                        routing: &routing,
                        incomplete: e.incomplete.as_deref(),
                        payload: &payloads[i].0,
                        ocsf: payloads[i].1.as_deref(),
                    })
                    .expect("an event line serializes")
                },
                &batch.cursor,
                &kv,
                &health,
            )
            .map_err(|e| CommitError::Run(e.into()))?;
        let now = self.setup.clock.now();
        if !events.is_empty() {
            tracing::info!(instance = %name, events = events.len(), first_seq = seqs.start(),
                last_seq = seqs.end(), more = batch.more, "poll committed");
            self.last_poll_line = Some(now);
        } else if self
            .last_poll_line
            .is_none_or(|t| now.duration_since(t).unwrap_or_default() >= QUIET_LOG_EVERY)
            && !batch.more
        {
            tracing::info!(instance = %name, newest_event = newest_seen(&mut self.db(), &name).as_deref(),
                "up to date: no new events");
            self.last_poll_line = Some(now);
        } else {
            tracing::debug!(instance = %name, more = batch.more, "poll committed, no events");
        }
        // A backfill's next page follows at once: a batching sink may wait for it.
        let flush = !batch.more || batch.wait_secs.is_some();
        self.deliver_or_record(flush).map_err(CommitError::Run)?;
        if let Some(p) = self.progress.as_mut() {
            p.polled(events.len(), batch.more, newest.as_deref());
        }
        Ok((events.len(), batch.more, batch.wait_secs))
    }
}

/// How often a quiet instance (polls that find nothing) says at info that it is up to date.
const QUIET_LOG_EVERY: Duration = Duration::from_secs(15 * 60);

/// The newest event time in the instance's health record, for the "up to date" line.
fn newest_seen(db: &mut StateDb, instance: &str) -> Option<String> {
    db.health()
        .ok()?
        .into_iter()
        .find(|r| r.instance == instance)?
        .newest_event
}

enum CommitError {
    /// The component returned an event the host will not deliver (a connector bug).
    BadEvent(String),
    Run(RunError),
}

fn failed(outcome: &'static str, message: String, requests: u64) -> (Step, PollRecord) {
    (
        Step::Failed {
            message: message.clone(),
        },
        PollRecord {
            outcome,
            events: 0,
            more: false,
            wait_secs: 0,
            requests,
            message: Some(message),
        },
    )
}

/// The batch's degraded types as the health record keeps them (messages redacted, like
/// every other text from the component that the host stores).
fn degraded_of(
    degraded: &[crate::bindings::DegradedType],
    redactor: &crate::redact::Redactor,
) -> Vec<crate::state::Degraded> {
    degraded
        .iter()
        .map(|d| crate::state::Degraded {
            data_type: d.data_type.clone(),
            code: d.code.as_str().into(),
            message: redactor.redact(&d.message),
        })
        .collect()
}

/// The event's payload and OCSF form as they go on its line: both must be JSON objects.
type Checked = (Box<RawValue>, Option<Box<RawValue>>);

fn checked_payload(e: &Event) -> Result<Checked, String> {
    if e.id.is_empty() || e.kind.is_empty() {
        return Err(format!(
            "the connector returned an event without id or kind (kind {:?}, id {:?}); nothing \
             of this poll was committed",
            e.kind, e.id
        ));
    }
    let object = |text: &str, what: &str| match RawValue::from_string(text.to_string()) {
        Ok(raw) if raw.get().trim_start().starts_with('{') => Ok(raw),
        _ => Err(format!(
            "the connector returned event {} whose {what} is not a JSON object; nothing of \
             this poll was committed",
            e.id
        )),
    };
    let payload = object(&e.payload, "payload")?;
    let ocsf = e
        .ocsf
        .as_deref()
        .map(|o| object(o, "OCSF form"))
        .transpose()?;
    Ok((payload, ocsf))
}

fn secs(s: u32) -> Duration {
    Duration::from_secs(s.into())
}

/// `routing` of the config document; the component validates its values in `configure`.
fn routing_of(config: &str) -> Vec<String> {
    secops_connector::config::parse(config)
        .map(|(c, _)| c.routing)
        .unwrap_or_default()
}
