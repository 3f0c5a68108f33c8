//! `connector-host serve`: many instances in one process.
//!
//! Each `*.json` file directly in the instances directory is one instance (see
//! [`InstanceFile`]). All instances share one engine, one compiled component per component
//! file and one state database; each has its own schedule, limits and call budget. A
//! bounded pool of workers polls the instances that are due ([`crate::scheduler`]), each
//! poll on a component instance of its own that is dropped after it, so an idle instance
//! costs a queue entry, not a thread or a store, and a throttled, stalled or broken tenant
//! holds at most one worker, never the others.
//!
//! The directory is read again every `rescan` and on SIGHUP: a new file starts an instance,
//! a changed one (its file, its secrets file or its component) restarts it, a removed one
//! stops it. An instance that cannot start (a bad file, a missing component, a config the
//! component refuses, such as a changed `backfill_days`) is not run, and its health record
//! says why; the others are not affected.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;

use crate::clock::{Clock, SystemClock};
use crate::engine::{HostEngine, Limits, LoadedComponent};
use crate::imports::Transport;
use crate::imports::http::NetworkTransport;
use crate::imports::token_cache::TokenCache;
use crate::runner::{RunError, RunSetup, Runner};
use crate::scheduler::{Job, Scheduler, Turn};
use crate::secrets::Secrets;
use crate::sink::Sink;
use crate::state::{PollHealth, StateDb, StateError};

/// One instance file. Paths are relative to the instances directory.
///
/// ```json
/// {"component": "components/defender_alerts.wasm",
///  "config": {"tenant_id": "…", "client_id": "…", "backfill_days": 7},
///  "secrets": "secrets/contoso.json", "interval_secs": 300}
/// ```
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceFile {
    /// Default: the file's name without `.json`.
    pub name: Option<String>,
    pub component: PathBuf,
    /// The connector's config document (DESIGN.md's config keys).
    pub config: serde_json::Map<String, serde_json::Value>,
    /// A JSON file `{"client-secret": "…"}`; default: `CONNECTOR_SECRET_<NAME>` variables.
    pub secrets: Option<PathBuf>,
    /// Seconds between polls; default: the connector's suggestion.
    pub interval_secs: Option<u64>,
    /// This instance's limits, where they differ from `serve`'s flags.
    #[serde(default)]
    pub limits: LimitOverrides,
    /// Where this instance's events go instead of `serve`'s `--out`/`--sink`: a
    /// `kafka://…` or `https://…` URL (see [`crate::sink`]).
    pub sink: Option<String>,
}

/// Per-instance limits; each unset one is `serve`'s (its `--memory-mb` and so on).
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    pub memory_mb: Option<usize>,
    pub deadline_secs: Option<u64>,
    pub http_timeout_secs: Option<u64>,
    pub max_body_mb: Option<u64>,
}

impl LimitOverrides {
    pub(crate) fn apply(&self, mut limits: Limits) -> Limits {
        if let Some(mb) = self.memory_mb {
            limits.memory_bytes = mb << 20;
        }
        if let Some(s) = self.deadline_secs {
            limits.deadline = Duration::from_secs(s);
        }
        if let Some(s) = self.http_timeout_secs {
            limits.http_timeout = Duration::from_secs(s);
        }
        if let Some(mb) = self.max_body_mb {
            limits.http_body_bytes = mb << 20;
        }
        limits
    }
}

pub struct ServeOptions {
    pub instances: PathBuf,
    pub state: PathBuf,
    /// A directory for `<instance>.jsonl` files; `None` is stdout.
    pub out: Option<PathBuf>,
    pub rescan: Duration,
    pub limits: Limits,
    /// The HTTP transport of every instance (tests may substitute one).
    pub transport: Arc<dyn Transport>,
    /// Raised with every reload (SIGHUP): the instances reopen their output files.
    pub reopen: Arc<AtomicU64>,
    /// Set once the instances directory was read and its instances started (`/readyz`).
    pub loaded: Arc<AtomicBool>,
    /// The poll workers: how many instances poll at once (see [`DEFAULT_WORKERS`]).
    pub workers: usize,
    /// The network sink of instances whose file names none (`--sink`); `None`: `out`.
    pub sink: Option<String>,
    /// See [`RunSetup::sink_max_lag`].
    pub sink_max_lag: u64,
    /// With a PostgreSQL store: how long a lease lasts unless renewed, the time a fleet
    /// takes to notice a dead host.
    pub lease_ttl: Duration,
}

/// Workers of `serve` by default. A poll mostly waits on Graph (100 ms to the HTTP
/// timeout per call) and a worker waits with it, blocked, using no CPU. Measured
/// (`BENCHMARKS.md`, freshness): 10,000 tenants polling every minute with one in ten
/// hanging to the 30 s timeout keep p99 freshness within the interval on 128 workers,
/// the hanging ones holding at most half of them; 32 leave the others 16, fewer than
/// the 30-odd worker-seconds a second their polls need. Each poll in flight costs a
/// thread, a store and its linear memory (RSS 190 MiB at 10,000 instances).
pub const DEFAULT_WORKERS: usize = 128;

/// The first polls of instances started together are spread over this long (or their
/// interval, if shorter).
const FIRST_POLL_SPREAD: Duration = Duration::from_secs(5);

impl ServeOptions {
    pub fn new(instances: PathBuf, state: PathBuf) -> Self {
        ServeOptions {
            instances,
            state,
            out: None,
            rescan: Duration::from_secs(5),
            limits: Limits::default(),
            transport: Arc::new(NetworkTransport::default()),
            reopen: Arc::new(AtomicU64::new(0)),
            loaded: Arc::new(AtomicBool::new(false)),
            workers: DEFAULT_WORKERS,
            sink: None,
            sink_max_lag: crate::runner::DEFAULT_SINK_MAX_LAG,
            lease_ttl: crate::state::postgres::DEFAULT_LEASE_TTL,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot read the instances directory {path}: {cause}")]
    Instances {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("cannot create the output directory {path}: {cause}")]
    Out {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(
        "cannot start a poll worker thread: {0}; lower --workers or raise the process's thread limit"
    )]
    Workers(std::io::Error),
}

/// Why an instance file could not become a running instance.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error("{0}")]
    File(String),
    #[error(transparent)]
    Load(#[from] crate::engine::LoadError),
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretsError),
}

/// The serving process: the shared engine and state, and the instances it runs.
pub struct Server<'a> {
    engine: &'a HostEngine,
    options: ServeOptions,
    state: Arc<Mutex<StateDb>>,
    components: HashMap<PathBuf, (Stamp, LoadedComponent)>,
    slots: BTreeMap<String, Slot>,
    /// Files that cannot become instances, as last reported.
    problems: HashMap<PathBuf, Fingerprint>,
    /// What each instance file was at the last rescan, so an unchanged file is not read
    /// again: with 100,000 instance files, reading and hashing each at every rescan was
    /// the process's whole idle CPU.
    read: HashMap<PathBuf, ReadFile>,
    /// Runs the instances' polls; taken at shutdown.
    scheduler: Option<Scheduler>,
    /// The access tokens of the instances, in memory only (see [`crate::imports::token_cache`]).
    tokens: TokenCache,
    /// A fleet's lease renewal (PostgreSQL only), and what stops it.
    renewer: Option<std::thread::JoinHandle<()>>,
    stop_renewer: Arc<AtomicBool>,
}

/// What a file was when an instance was started from it: a change restarts the instance.
type Fingerprint = u64;

/// A component file's identity on disk, to reload it when it is replaced.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp(u64, Option<SystemTime>);

struct Slot {
    file: PathBuf,
    fingerprint: Fingerprint,
    /// `None` when the instance could not start; its health record says why.
    running: Option<Running>,
}

struct Running {
    /// Raised to end the instance's turn in flight after its current poll.
    stop: Arc<AtomicBool>,
}

impl<'a> Server<'a> {
    pub fn new(engine: &'a HostEngine, options: ServeOptions) -> Result<Self, ServeError> {
        std::fs::read_dir(&options.instances).map_err(|cause| ServeError::Instances {
            path: options.instances.clone(),
            cause,
        })?;
        if let Some(dir) = &options.out {
            std::fs::create_dir_all(dir).map_err(|cause| ServeError::Out {
                path: dir.clone(),
                cause,
            })?;
        }
        let mut db = StateDb::open(&options.state)?;
        db.set_lease_ttl(options.lease_ttl);
        let state = Arc::new(Mutex::new(db));
        let scheduler = Scheduler::new(options.workers).map_err(ServeError::Workers)?;
        let stop_renewer = Arc::new(AtomicBool::new(false));
        let renewer = crate::fleet::spawn_renewer(&state, stop_renewer.clone())
            .map_err(ServeError::Workers)?;
        Ok(Server {
            renewer,
            stop_renewer,
            scheduler: Some(scheduler),
            tokens: TokenCache::default(),
            engine,
            options,
            state,
            components: HashMap::new(),
            slots: BTreeMap::new(),
            problems: HashMap::new(),
            read: HashMap::new(),
        })
    }

    pub fn state(&self) -> Arc<Mutex<StateDb>> {
        self.state.clone()
    }

    /// Serves until `shutdown` is raised, reading the directory again every `rescan` or
    /// when `reload` is raised. On shutdown, every instance finishes its poll in flight.
    /// A directory that cannot be read at start is an error; later, the instances keep
    /// running as they are until it can be read again.
    pub fn run(&mut self, shutdown: &AtomicBool, reload: &AtomicBool) -> Result<(), ServeError> {
        self.reconcile()?;
        self.options.loaded.store(true, Ordering::Relaxed);
        let mut next_scan = Instant::now() + self.options.rescan;
        while !shutdown.load(Ordering::Relaxed) {
            let reloading = reload.swap(false, Ordering::Relaxed);
            if reloading {
                // SIGHUP also reopens every `--out` file (after a rotation).
                self.options.reopen.fetch_add(1, Ordering::Relaxed);
            }
            if reloading || Instant::now() >= next_scan {
                if let Err(e) = self.reconcile() {
                    tracing::warn!("{e}; the instances go on as they are");
                }
                next_scan = Instant::now() + self.options.rescan;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        tracing::info!(
            instances = self.slots.len(),
            "stopping: finishing polls in flight"
        );
        for slot in self.slots.values() {
            if let Some(r) = &slot.running {
                r.stop.store(true, Ordering::Relaxed);
            }
        }
        // A fleet host leaves first, so the others count it gone and take each of its
        // instances the moment its poll in flight ends and its lease is released.
        if let Some(pg) = self.lock_state().postgres()
            && let Err(e) = pg.leave_fleet()
        {
            tracing::warn!("cannot leave the fleet: {e}; the others take over after the lease TTL");
        }
        if let Some(scheduler) = self.scheduler.take() {
            let jobs = scheduler.shutdown();
            if let Err(e) = crate::holder::release_all(&self.state) {
                tracing::warn!("cannot release the instances' claims at once: {e}");
            }
            drop(jobs);
        }
        self.slots.clear();
        self.stop_renewer.store(true, Ordering::Relaxed);
        if let Some(renewer) = self.renewer.take() {
            let _ = renewer.join();
        }
        Ok(())
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, StateDb> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Brings the running instances in line with the directory.
    pub fn reconcile(&mut self) -> Result<(), ServeError> {
        let files = self.scan()?;
        // Every host of a fleet reads the same directory: its count sets each one's share.
        if let Some(pg) = self.lock_state().postgres() {
            pg.set_fleet_size(files.len());
        }
        let gone: Vec<String> = self
            .slots
            .keys()
            .filter(|name| !files.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            tracing::info!(instance = %name, "instance file removed: stopping the instance");
            self.stop(&name);
            self.tokens.forget(&name);
            let at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
            let mut db = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = crate::lifecycle::mark_removed(&mut db, &name, &at) {
                tracing::warn!(instance = %name, "cannot record the removal: {e}");
            }
        }
        for (name, (file, fingerprint)) in files {
            let current = self
                .slots
                .get(&name)
                .is_some_and(|s| s.fingerprint == fingerprint && s.file == file);
            if current {
                continue;
            }
            if self.slots.contains_key(&name) {
                if !current {
                    tracing::info!(instance = %name, file = %file.display(), "instance changed: restarting it");
                }
                self.stop(&name);
            }
            let running = match self.start(&name, &file) {
                Ok(r) => Some(r),
                Err(e) => {
                    let message = format!("{}: {e}", file.display());
                    tracing::error!(instance = %name, "instance not started: {message}");
                    self.record_failure(&name, "instance-file", &message);
                    None
                }
            };
            self.slots.insert(
                name,
                Slot {
                    file,
                    fingerprint,
                    running,
                },
            );
        }
        Ok(())
    }

    /// The instance files by instance name, with their fingerprints. A second file that
    /// claims a name already taken is reported and skipped.
    fn scan(&mut self) -> Result<BTreeMap<String, (PathBuf, Fingerprint)>, ServeError> {
        let dir = &self.options.instances;
        let read_dir = |cause| ServeError::Instances {
            path: dir.clone(),
            cause,
        };
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(read_dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "json"))
            .collect();
        paths.sort();
        let mut files: BTreeMap<String, (PathBuf, Fingerprint)> = BTreeMap::new();
        let reported = std::mem::take(&mut self.problems);
        let mut problems = HashMap::new();
        let mut read = HashMap::with_capacity(paths.len());
        for path in paths {
            let known = self.read.remove(&path).filter(ReadFile::unchanged);
            let file = known.unwrap_or_else(|| ReadFile::read(dir, &path));
            let fingerprint = file.fingerprint;
            let stem = path.file_stem().unwrap_or_default().to_string_lossy();
            let problem = match file.name.clone() {
                Err(message) => Some((stem.into_owned(), message)),
                Ok(name) => match files.get(&name) {
                    Some((other, _)) => Some((
                        name.clone(),
                        format!(
                            "{} names instance {name:?}, which {} already names; give it \
                             another name",
                            path.display(),
                            other.display()
                        ),
                    )),
                    None => {
                        files.insert(name, (path.clone(), fingerprint));
                        None
                    }
                },
            };
            // Reported once per version of the file, not at every rescan.
            if let Some((name, message)) = problem {
                if reported.get(&path) != Some(&fingerprint) {
                    tracing::error!(file = %path.display(), "{message}");
                    self.record_failure(&name, "instance-file", &message);
                }
                problems.insert(path.clone(), fingerprint);
            }
            read.insert(path, file);
        }
        self.problems = problems;
        self.read = read;
        Ok(files)
    }

    fn start(&mut self, name: &str, file: &Path) -> Result<Running, StartError> {
        let spec = read_instance_file(file)?;
        let base = self.options.instances.clone();
        let component = self.component(&base.join(&spec.component))?;
        let secrets = match &spec.secrets {
            Some(path) => Secrets::from_file(&base.join(path))?,
            // Per instance: one secret in the environment must not serve every tenant.
            None => Secrets::from_env_for(name),
        };
        let mut setup = RunSetup::new(
            component,
            name.to_string(),
            serde_json::Value::Object(spec.config).to_string(),
            secrets,
            self.state.clone(),
        );
        setup.transport = self.options.transport.clone();
        setup.reopen = self.options.reopen.clone();
        setup.tokens = self.tokens.clone();
        let source = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
        setup.source = Some((source.display().to_string(), false));
        setup.limits = spec.limits.apply(self.options.limits.clone());
        let stop = setup.stop.clone();
        setup.sink_max_lag = self.options.sink_max_lag;
        let out = match (&spec.sink, &self.options.sink, &self.options.out) {
            (Some(url), _, _) | (None, Some(url), _) => Output::Sink(url.clone()),
            (None, None, Some(dir)) => Output::File(dir.join(format!("{name}.jsonl"))),
            (None, None, None) => Output::File(PathBuf::from("-")),
        };
        let interval = spec.interval_secs.map(Duration::from_secs);
        if interval == Some(Duration::ZERO) {
            return Err(StartError::File(
                "interval_secs 0 would poll Graph without pause; give at least 1 (or leave it \
                 out for the connector's suggestion)"
                    .into(),
            ));
        }
        let state_path = self.options.state.display().to_string();
        // The first poll somewhere in the next few seconds, not all at once: the state
        // file and Graph see the start spread out, and so do the later polls, which
        // follow each instance's own.
        let spread = FIRST_POLL_SPREAD.min(interval.unwrap_or(FIRST_POLL_SPREAD));
        let jitter = spread.mul_f64(
            (std::collections::hash_map::RandomState::new().hash_one(name) % 10_000) as f64
                / 10_000.0,
        );
        let job = InstanceJob::new(setup, out, interval, state_path);
        if let Some(scheduler) = &self.scheduler {
            scheduler.add(name, Box::new(job), jitter);
        }
        Ok(Running { stop })
    }

    /// The compiled component at `path`, loaded once and again when the file changes.
    fn component(&mut self, path: &Path) -> Result<LoadedComponent, StartError> {
        let stamp = std::fs::metadata(path)
            .map(|m| Stamp(m.len(), m.modified().ok()))
            .unwrap_or(Stamp(0, None));
        if let Some((s, c)) = self.components.get(path)
            && *s == stamp
        {
            return Ok(c.clone());
        }
        let loaded = self.engine.load(path)?;
        self.components
            .insert(path.to_path_buf(), (stamp, loaded.clone()));
        Ok(loaded)
    }

    /// Stops an instance after its poll in flight and forgets it.
    fn stop(&mut self, name: &str) {
        let Some(slot) = self.slots.remove(name) else {
            return;
        };
        if let Some(r) = slot.running {
            r.stop.store(true, Ordering::Relaxed);
            if let Some(scheduler) = &self.scheduler {
                drop(scheduler.remove(name));
            }
        }
    }

    fn record_failure(&self, name: &str, code: &str, message: &str) {
        record_failure(&self.state, &SystemClock, name, code, message);
    }
}

/// At most this many polls in one turn of an instance whose polls say `more` with no
/// wait (a backfill): then it goes back in the queue behind the instances due before it,
/// so one tenant's backlog cannot hold a worker for good.
const POLLS_PER_TURN: usize = 8;

/// One instance's life on the scheduler: started (its claim, its output, its config
/// checked) on its first turn, then polled turn after turn. A failure of the host side
/// (state file, output, instance creation: a resource limit) fails that turn with health
/// code `host` and is retried after a pause. A config the component refuses waits for the
/// file to change (the server replaces the instance).
///
/// "instance started" is logged once the instance holds its state and its config was
/// accepted, never before a refusal.
struct InstanceJob {
    setup: RunSetup,
    out: Output,
    interval: Option<Duration>,
    state_path: String,
    runner: Option<Runner>,
    every: Duration,
    /// The wait after a failure of the host side.
    pause: Duration,
}

impl InstanceJob {
    fn new(setup: RunSetup, out: Output, interval: Option<Duration>, state_path: String) -> Self {
        InstanceJob {
            setup,
            out,
            interval,
            state_path,
            runner: None,
            every: Duration::from_secs(60),
            pause: Duration::from_secs(1),
        }
    }

    fn start(&mut self) -> Result<Runner, RunError> {
        let (name, state, clock) = (&self.setup.instance, &self.setup.state, &self.setup.clock);
        let sink = match &self.out {
            Output::File(path) => Sink::open(path),
            Output::Sink(url) => Sink::connect(url, &self.setup.secrets),
        };
        let sink = sink.map_err(|e| {
            // A runner records its own delivery failures; this one came before it.
            let message = format!("cannot open the output: {e}");
            record_failure(state, clock.as_ref(), name, "delivery", &message);
            RunError::from(e)
        })?;
        let runner = Runner::new(self.setup.clone(), sink)?;
        self.every = self
            .interval
            .unwrap_or_else(|| Duration::from_secs(runner.poll_interval_secs().max(1).into()));
        self.pause = self.every.min(Duration::from_secs(60));
        tracing::info!(instance = %name, connector = runner.connector(),
            version = runner.version(), interval_secs = self.every.as_secs(),
            state = self.state_path, out = %self.out, "instance started");
        Ok(runner)
    }

    /// On a fleet's store, before a turn: an instance whose lease this host lost is
    /// dropped, and one this host may not take now (another host leases it, or this host
    /// has its share) is not started (which would cost a component instance) but looked
    /// at again shortly. `None`: go on with the turn.
    fn lease_check(&mut self) -> Option<Turn> {
        let mut db = self.setup.state.lock().unwrap_or_else(|p| p.into_inner());
        let pg = db.postgres()?;
        let name = &self.setup.instance;
        if self.runner.is_some() {
            if pg.holds(name) {
                return None;
            }
            drop(db);
            tracing::warn!(instance = %name, "lease lost: the instance stops here");
            self.runner = None;
            return Some(Turn::After(crate::fleet::LEASE_RETRY));
        }
        match pg.may_take(name) {
            Ok(()) => None,
            Err(e @ (StateError::Leased { .. } | StateError::FairShare { .. })) => {
                tracing::debug!(instance = %name, "not taken: {e}");
                Some(Turn::After(crate::fleet::LEASE_RETRY))
            }
            // The store is unreachable: starting reports it (health, log) and pauses.
            Err(_) => None,
        }
    }

    /// After a turn on a fleet's store: whether this host gave the instance up because
    /// it holds more than its share (a host joined).
    fn over_share(&mut self) -> bool {
        let mut db = self.setup.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(pg) = db.postgres() else {
            return false;
        };
        match pg.over_share(&self.setup.instance) {
            Ok(over) => over,
            Err(e) => {
                tracing::debug!(instance = %self.setup.instance, "cannot count the share: {e}");
                false
            }
        }
    }

    fn polls(&mut self, runner: &mut Runner) -> Result<Duration, RunError> {
        for _ in 0..POLLS_PER_TURN {
            let wait = runner
                .poll_round(false, self.every)?
                .expect("a poll of serve always has a next one");
            if !wait.is_zero() || self.setup.stop.load(Ordering::Relaxed) {
                return Ok(wait);
            }
        }
        Ok(Duration::ZERO)
    }

    /// What a failed turn means: the wait before the next, or the end (a config the user
    /// must fix). The runner is dropped: the next turn starts the instance again.
    fn failed(&mut self, e: RunError) -> Turn {
        let name = self.setup.instance.clone();
        let (state, clock) = (&self.setup.state, self.setup.clock.as_ref());
        let pause = self.pause;
        match e {
            RunError::Config(message) => {
                let message = format!("config refused: {message}");
                tracing::error!(instance = %name, "{message}; fix the instance file");
                record_failure(state, clock, &name, "config", &message);
                Turn::Done
            }
            RunError::State(e @ (StateError::Leased { .. } | StateError::FairShare { .. })) => {
                // Taken by another host between the check and the take: not this one's.
                tracing::debug!(instance = %name, "not taken: {e}");
                Turn::After(crate::fleet::LEASE_RETRY)
            }
            RunError::State(e @ StateError::Fenced { .. }) => {
                tracing::warn!(instance = %name, "{e}");
                Turn::After(crate::fleet::LEASE_RETRY)
            }
            RunError::State(e @ StateError::Held { .. }) => {
                // The holder's health record is its own: only the log says this one waits.
                tracing::error!(instance = %name, "instance not started: {e}; trying again in {}s",
                    pause.as_secs());
                Turn::After(pause)
            }
            e => {
                let code = match e {
                    RunError::Sink(crate::sink::SinkError::Config { .. }) => "config",
                    RunError::Sink(_) => "delivery",
                    // A store that could not be reached while the instance started is
                    // the host's failure (retried), not a config to fix.
                    RunError::State(StateError::WrongConnector { .. }) => "config",
                    RunError::Lifecycle(crate::lifecycle::LifecycleError::State(_)) => "host",
                    RunError::Lifecycle(_) => "config",
                    _ => "host",
                };
                tracing::error!(instance = %name, "instance failed, restarting in {}s: {e}", pause.as_secs());
                if code != "delivery" {
                    record_failure(state, clock, &name, code, &e.to_string());
                }
                if code == "config" {
                    return Turn::Done;
                }
                Turn::After(pause)
            }
        }
    }
}

impl Job for InstanceJob {
    fn turn(&mut self) -> Turn {
        if self.setup.stop.load(Ordering::Relaxed) {
            return Turn::Done;
        }
        if let Some(retry) = self.lease_check() {
            return retry;
        }
        let mut runner = match self.runner.take() {
            Some(r) => r,
            None => match self.start() {
                Ok(r) => r,
                Err(e) => return self.failed(e),
            },
        };
        match self.polls(&mut runner) {
            Ok(wait) => {
                // Between turns the instance holds no component instance, whatever its wait.
                runner.release_instance();
                if self.over_share() {
                    tracing::info!(instance = %self.setup.instance,
                        "handing the instance over: this host holds more than its share");
                    drop(runner);
                    return Turn::After(crate::fleet::LEASE_RETRY);
                }
                self.runner = Some(runner);
                Turn::After(wait)
            }
            Err(e) => {
                drop(runner);
                self.failed(e)
            }
        }
    }

    fn after_panic(&mut self, what: String) -> Turn {
        // The runner may be half-way through anything: drop it and start afresh.
        self.runner = None;
        let name = &self.setup.instance;
        let message = format!("the instance's poll panicked ({what}); restarting it");
        tracing::error!(instance = %name, "{message}");
        record_failure(
            &self.setup.state,
            self.setup.clock.as_ref(),
            name,
            "host",
            &message,
        );
        Turn::After(self.pause)
    }
}

/// Where an instance's events go.
enum Output {
    /// A `<instance>.jsonl` file in `--out`, or `-` (stdout).
    File(PathBuf),
    /// A network sink's URL (the instance file's `sink`, else `--sink`).
    Sink(String),
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Output::File(path) => write!(f, "{}", path.display()),
            Output::Sink(url) => f.write_str(url),
        }
    }
}

fn record_failure(
    state: &Mutex<StateDb>,
    clock: &dyn Clock,
    name: &str,
    code: &str,
    message: &str,
) {
    let at = humantime::format_rfc3339_seconds(clock.now()).to_string();
    let health = PollHealth {
        at: &at,
        ok: false,
        events: 0,
        requests: 0,
        throttled: 0,
        error: Some(message),
        code: Some(code),
        newest_event: None,
        degraded: None,
    };
    let mut db = state.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(e) = db.record_poll(name, &health) {
        tracing::warn!(instance = %name, "cannot record the instance's health: {e}");
    }
}

pub(crate) fn read_instance_file(path: &Path) -> Result<InstanceFile, StartError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| StartError::File(format!("cannot read it: {e}")))?;
    serde_json::from_str(&text).map_err(|e| {
        StartError::File(format!(
            "not a valid instance file ({e}); expected {{\"component\": \"<file.wasm>\", \
             \"config\": {{...}}, \"secrets\": \"<file>\", \"interval_secs\": N}}"
        ))
    })
}

/// The instance's name: the file's `name`, else its stem. Names become file names under
/// `--out`, so they are kept to letters, digits, `.`, `_` and `-`.
pub(crate) fn instance_name(path: &Path, bytes: &[u8]) -> Result<String, String> {
    #[derive(Deserialize)]
    struct Named {
        name: Option<String>,
    }
    let named = serde_json::from_slice::<Named>(bytes)
        .ok()
        .and_then(|n| n.name);
    let name = named.unwrap_or_else(|| {
        path.file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    });
    let valid = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(name)
    } else {
        Err(format!(
            "{}: instance name {name:?} may hold only letters, digits, '.', '_' and '-'",
            path.display()
        ))
    }
}

/// An instance file as the last rescan read it.
struct ReadFile {
    /// The files its fingerprint depends on, with what `stat` said of each then.
    stamps: Vec<(PathBuf, Option<FileStamp>)>,
    fingerprint: Fingerprint,
    name: Result<String, String>,
}

/// What `stat` says of a file that changes when it is rewritten or replaced (a renamed-in
/// file or a ConfigMap's swapped link is another inode).
#[derive(PartialEq, Eq, Hash)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    #[cfg(unix)]
    inode: (u64, u64, i64, i64),
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        len: m.len(),
        modified: m.modified().ok(),
        #[cfg(unix)]
        inode: {
            use std::os::unix::fs::MetadataExt;
            (m.dev(), m.ino(), m.ctime(), m.ctime_nsec())
        },
    })
}

impl ReadFile {
    /// What decides whether a running instance is still current: its file, its secrets
    /// file (a rotated secret restarts it) and its component file. Unreadable parts hash
    /// as absent; starting the instance then reports them.
    fn read(base: &Path, path: &Path) -> ReadFile {
        let mut stamps = vec![(path.to_path_buf(), stamp(path))];
        let bytes = std::fs::read(path).unwrap_or_default();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut h);
        if let Ok(spec) = serde_json::from_slice::<InstanceFile>(&bytes) {
            if let Some(secrets) = &spec.secrets {
                let secrets = base.join(secrets);
                stamps.push((secrets.clone(), stamp(&secrets)));
                std::fs::read(&secrets).unwrap_or_default().hash(&mut h);
            }
            let component = base.join(&spec.component);
            let s = stamp(&component);
            s.as_ref().map(|s| (s.len, s.modified)).hash(&mut h);
            stamps.push((component, s));
        }
        ReadFile {
            stamps,
            fingerprint: h.finish(),
            name: instance_name(path, &bytes),
        }
    }

    fn unchanged(&self) -> bool {
        self.stamps.iter().all(|(path, s)| stamp(path) == *s)
    }
}
