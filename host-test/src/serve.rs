//! `connector-host serve`: many instances in one process.
//!
//! Each `*.json` file directly in the instances directory is one instance (see
//! [`InstanceFile`]). All instances share one engine, one compiled component per component
//! file and one state database; each has its own thread, store, schedule, limits and call
//! budget, so a throttled, stalled or broken tenant never delays the others.
//!
//! The directory is read again every `rescan` and on SIGHUP: a new file starts an instance,
//! a changed one (its file, its secrets file or its component) restarts it, a removed one
//! stops it. An instance that cannot start (a bad file, a missing component, a config the
//! component refuses, such as a changed `backfill_days`) is not run, and its health record
//! says why; the others are not affected.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;

use crate::clock::{Clock, SystemClock};
use crate::engine::{HostEngine, Limits, LoadedComponent};
use crate::imports::Transport;
use crate::imports::http::NetworkTransport;
use crate::runner::{RunError, RunSetup, Runner};
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
}

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
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
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
        let state = Arc::new(Mutex::new(StateDb::open(&options.state)?));
        Ok(Server {
            engine,
            options,
            state,
            components: HashMap::new(),
            slots: BTreeMap::new(),
            problems: HashMap::new(),
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
        let names: Vec<String> = self.slots.keys().cloned().collect();
        for slot in self.slots.values() {
            if let Some(r) = &slot.running {
                r.stop.store(true, Ordering::Relaxed);
            }
        }
        for name in names {
            self.stop(&name);
        }
        Ok(())
    }

    /// Brings the running instances in line with the directory.
    pub fn reconcile(&mut self) -> Result<(), ServeError> {
        let files = self.scan()?;
        let gone: Vec<String> = self
            .slots
            .keys()
            .filter(|name| !files.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            tracing::info!(instance = %name, "instance file removed: stopping the instance");
            self.stop(&name);
            let at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
            let db = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = crate::lifecycle::mark_removed(&db, &name, &at) {
                tracing::warn!(instance = %name, "cannot record the removal: {e}");
            }
        }
        for (name, (file, fingerprint)) in files {
            let current = self
                .slots
                .get(&name)
                .is_some_and(|s| s.fingerprint == fingerprint && s.file == file);
            if current && !self.panicked(&name) {
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
        for path in paths {
            // Read once per rescan; an unreadable file hashes as empty and is reported when
            // its instance starts.
            let bytes = std::fs::read(&path).unwrap_or_default();
            let fingerprint = fingerprint(dir, &bytes);
            let stem = path.file_stem().unwrap_or_default().to_string_lossy();
            let problem = match instance_name(&path, &bytes) {
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
                problems.insert(path, fingerprint);
            }
        }
        self.problems = problems;
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
        let source = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
        setup.source = Some((source.display().to_string(), false));
        setup.limits = spec.limits.apply(self.options.limits.clone());
        let stop = setup.stop.clone();
        let out = match &self.options.out {
            Some(dir) => dir.join(format!("{name}.jsonl")),
            None => PathBuf::from("-"),
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
        let thread = std::thread::Builder::new()
            .name(format!("instance {name}"))
            .spawn(move || serve_instance(setup, &out, interval, &state_path))
            .map_err(|e| StartError::File(format!("cannot start a thread: {e}")))?;
        Ok(Running { stop, thread })
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

    /// Whether the instance's thread ended in a panic (a host bug): then it is recorded and
    /// the instance started again, as if its file had changed. A thread that ended because
    /// its config was refused waits for the file to change.
    fn panicked(&mut self, name: &str) -> bool {
        let Some(slot) = self.slots.get_mut(name) else {
            return false;
        };
        if !slot
            .running
            .as_ref()
            .is_some_and(|r| r.thread.is_finished())
        {
            return false;
        }
        let running = slot.running.take().expect("checked above");
        let Err(panic) = running.thread.join() else {
            return false;
        };
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let message = format!("the instance's thread panicked ({what}); restarting it");
        tracing::error!(instance = %name, "{message}");
        self.record_failure(name, "host", &message);
        true
    }

    /// Stops an instance after its poll in flight and forgets it.
    fn stop(&mut self, name: &str) {
        let Some(slot) = self.slots.remove(name) else {
            return;
        };
        if let Some(r) = slot.running {
            r.stop.store(true, Ordering::Relaxed);
            if r.thread.join().is_err() {
                tracing::error!(instance = %name, "the instance's thread panicked");
            }
        }
    }

    fn record_failure(&self, name: &str, code: &str, message: &str) {
        record_failure(&self.state, &SystemClock, name, code, message);
    }
}

/// One instance's life: start it, run it on its schedule until stopped; a failure of the
/// host side (state file, output, instance creation) is retried after a pause. A config
/// the component refuses waits for the file to change (the server restarts the instance).
///
/// "instance started" is logged once the instance holds its state and its config was
/// accepted, never before a refusal.
fn serve_instance(setup: RunSetup, out: &Path, interval: Option<Duration>, state_path: &str) {
    let name = setup.instance.clone();
    let state = setup.state.clone();
    let stop = setup.stop.clone();
    let clock = setup.clock.clone();
    let mut pause = Duration::from_secs(1);
    while !stop.load(Ordering::Relaxed) {
        let result = Sink::open(out)
            .map_err(|e| {
                // A runner records its own delivery failures; this one came before it.
                let message = format!("cannot open the output: {e}");
                record_failure(&state, clock.as_ref(), &name, "delivery", &message);
                RunError::from(e)
            })
            .and_then(|sink| Runner::new(setup.clone(), sink))
            .and_then(|mut runner| {
                let every = interval.unwrap_or_else(|| {
                    Duration::from_secs(runner.poll_interval_secs().max(1).into())
                });
                pause = every.min(Duration::from_secs(60));
                tracing::info!(instance = %name, connector = runner.connector(),
                    version = runner.version(), interval_secs = every.as_secs(),
                    state = state_path, out = %out.display(), "instance started");
                runner.run(false, every)
            });
        match result {
            Ok(()) => return,
            Err(RunError::Config(message)) => {
                let message = format!("config refused: {message}");
                tracing::error!(instance = %name, "{message}; fix the instance file");
                record_failure(&state, clock.as_ref(), &name, "config", &message);
                return;
            }
            Err(RunError::State(e @ StateError::Held { .. })) => {
                // The holder's health record is its own: only the log says this one waits.
                tracing::error!(instance = %name, "instance not started: {e}; trying again in {}s",
                    pause.as_secs());
                clock.sleep(pause, &stop);
            }
            Err(e) => {
                let code = match e {
                    RunError::Sink(_) => "delivery",
                    RunError::State(StateError::WrongConnector { .. }) | RunError::Lifecycle(_) => {
                        "config"
                    }
                    _ => "host",
                };
                tracing::error!(instance = %name, "instance failed, restarting in {}s: {e}", pause.as_secs());
                if code != "delivery" {
                    record_failure(&state, clock.as_ref(), &name, code, &e.to_string());
                }
                if code == "config" {
                    return;
                }
                clock.sleep(pause, &stop);
            }
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
    let db = state.lock().unwrap_or_else(|p| p.into_inner());
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

/// What decides whether a running instance is still current: its file (`bytes`), its
/// secrets file (a rotated secret restarts it) and its component file. Unreadable parts
/// hash as absent; starting the instance then reports them.
fn fingerprint(base: &Path, bytes: &[u8]) -> Fingerprint {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    if let Ok(spec) = serde_json::from_slice::<InstanceFile>(bytes) {
        if let Some(secrets) = &spec.secrets {
            std::fs::read(base.join(secrets))
                .unwrap_or_default()
                .hash(&mut h);
        }
        if let Ok(m) = std::fs::metadata(base.join(&spec.component)) {
            (m.len(), m.modified().ok()).hash(&mut h);
        }
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicked_instance_thread_is_recorded_and_restarted_a_refused_one_waits() {
        let dir = tempfile::tempdir().unwrap();
        let engine = HostEngine::new(None).unwrap();
        let options = ServeOptions::new(dir.path().into(), dir.path().join("state.db"));
        let mut server = Server::new(&engine, options).unwrap();
        let slot = |thread: JoinHandle<()>| Slot {
            file: dir.path().join("x.json"),
            fingerprint: 0,
            running: Some(Running {
                stop: Arc::new(AtomicBool::new(false)),
                thread,
            }),
        };
        let panics = std::thread::spawn(|| panic!("boom"));
        let refused = std::thread::spawn(|| {});
        while !(panics.is_finished() && refused.is_finished()) {
            std::thread::sleep(Duration::from_millis(5));
        }
        server.slots.insert("panics".into(), slot(panics));
        server.slots.insert("refused".into(), slot(refused));

        assert!(server.panicked("panics"));
        assert!(!server.panicked("refused"));
        let health = server.state.lock().unwrap().health().unwrap();
        let row = health.iter().find(|r| r.instance == "panics").unwrap();
        assert_eq!(row.last_error_code.as_deref(), Some("host"));
        assert!(row.last_error.as_deref().unwrap().contains("boom"));
        assert!(health.iter().all(|r| r.instance != "refused"));
    }
}
