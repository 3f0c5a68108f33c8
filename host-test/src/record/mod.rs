//! `connector-host record`: runs a component against a real tenant, as `run --once` would,
//! and writes what it exchanged as a fixture scenario (`docs/fixtures.md`) that
//! `connector-host replay` serves back, with secrets, tokens, tenant and client IDs and
//! named fields replaced ([`scrub`]). Nothing is written until the whole recording is
//! scrubbed, and nothing at all when the run fails.

pub mod scrub;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value, json};

use crate::bindings::secops::connector::http::{HttpError, Request, Response};
use crate::clock::{Clock, SystemClock, VirtualClock};
use crate::fixture::{Action, Scenario};
use crate::imports::Transport;
use crate::runner::{RunError, RunSetup, Runner};
use crate::sink::Sink;

use self::scrub::Scrubber;

/// Response headers kept: the only one the connectors read. The rest (request ids,
/// cookies of the login host, diagnostics naming data centres) only add noise or leak.
const KEPT_HEADERS: &[&str] = &["retry-after"];

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(
        "the fixture directory {path} is not empty; record into a new directory, or pass \
         --force to replace its scenario.json"
    )]
    NotEmpty { path: PathBuf },
    #[error("cannot write the fixture directory {path}: {cause} (choose a writable directory)")]
    Dir {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Config(String),
    #[error("nothing was recorded: {0}")]
    Run(#[source] Box<RunError>),
    #[error("nothing was recorded: {0}")]
    Unrecordable(String),
    /// A bug of the scrubber: refuse rather than write.
    #[error(
        "nothing was recorded: {0} survived redaction (a bug of connector-host; please report it)"
    )]
    Leak(&'static str),
}

impl RecordError {
    /// The CLI's exit code: 2 for what the user must fix in the command, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            RecordError::NotEmpty { .. } | RecordError::Dir { .. } | RecordError::Config(_) => 2,
            RecordError::Run(e) => e.exit_code(),
            RecordError::Unrecordable(_) | RecordError::Leak(_) => 1,
        }
    }
}

impl From<RunError> for RecordError {
    fn from(e: RunError) -> Self {
        RecordError::Run(Box::new(e))
    }
}

pub struct RecordOptions {
    pub fixture: PathBuf,
    /// Replace `scenario.json` in a directory that holds files already.
    pub force: bool,
    /// JSON field names whose values in response bodies are replaced.
    pub redact_fields: Vec<String>,
    /// Record a `validate` step before the poll.
    pub validate: bool,
    pub description: Option<String>,
    /// Where the recording run's events go (`-` is stdout).
    pub out: PathBuf,
}

/// What was recorded, for the CLI's summary.
pub struct RecordReport {
    pub path: PathBuf,
    /// Per step: action, outcome (`ok` or the validation line), exchanges.
    pub steps: Vec<(Action, String, usize)>,
}

/// Checks the directory before a recording that may take minutes: it must be writable
/// and, unless `force`, empty or absent.
pub fn prepare_dir(dir: &Path, force: bool) -> Result<(), RecordError> {
    let io = |cause| RecordError::Dir {
        path: dir.to_path_buf(),
        cause,
    };
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() && !force {
                return Err(RecordError::NotEmpty {
                    path: dir.to_path_buf(),
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(io)?
        }
        Err(e) => return Err(io(e)),
    }
    let probe = dir.join(".connector-host-record-probe");
    std::fs::write(&probe, b"").map_err(io)?;
    std::fs::remove_file(&probe).map_err(io)
}

/// Passes requests to the network and keeps every exchange, in order.
pub struct RecordingTransport {
    inner: Arc<dyn Transport>,
    captured: Mutex<Vec<Captured>>,
}

struct Captured {
    method: String,
    url: String,
    outcome: Result<Response, HttpError>,
}

impl RecordingTransport {
    pub fn new(inner: Arc<dyn Transport>) -> Self {
        RecordingTransport {
            inner,
            captured: Mutex::new(Vec::new()),
        }
    }

    fn take(&self) -> Vec<Captured> {
        std::mem::take(&mut *self.captured.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Transport for RecordingTransport {
    fn send(
        &self,
        request: &Request,
        timeout: Duration,
        body_cap: u64,
    ) -> Result<Response, HttpError> {
        let outcome = self.inner.send(request, timeout, body_cap);
        self.captured
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Captured {
                method: request.method.clone(),
                url: request.url.clone(),
                outcome: outcome.clone(),
            });
        outcome
    }
}

/// The clock of a recording: the replay's virtual clock, which stands still except when
/// someone waits, started at the real time; a wait also passes for real, since the tenant
/// asked for it. The component then sees the same times in the recording and the replay,
/// so the time windows in its URLs match exactly.
struct RecordingClock(VirtualClock);

impl Clock for RecordingClock {
    fn now(&self) -> SystemTime {
        self.0.now()
    }
    fn sleep(&self, duration: Duration, stop: &AtomicBool) {
        SystemClock.sleep(duration, stop);
        self.0.sleep(duration, stop);
    }
}

/// Runs the instance of `base` (its config, secrets, state, limits) against the network
/// and writes the scenario into `options.fixture`. `base`'s transport and clock are
/// replaced by recording ones; its instance name should be the fixture directory's, as
/// the replay names it.
pub fn record(base: &RunSetup, options: &RecordOptions) -> Result<RecordReport, RecordError> {
    let (config, _) = secops_connector::config::parse(&base.config).map_err(|e| {
        RecordError::Config(
            base.redactor
                .redact(&format!("{}: {} ({})", e.key, e.message, e.remedy)),
        )
    })?;
    prepare_dir(&options.fixture, options.force)?;
    let network = base.transport.clone();
    let clock = VirtualClock::new(SystemTime::UNIX_EPOCH);
    let mut recorded = Vec::new();
    let actions = options
        .validate
        .then_some(Action::Validate)
        .into_iter()
        .chain([Action::Poll]);
    for action in actions {
        // Whole seconds: `now` is written as RFC 3339 without fractions.
        let now = SystemTime::UNIX_EPOCH
            + Duration::from_secs(
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs(),
            );
        clock.set(now);
        let transport = Arc::new(RecordingTransport::new(network.clone()));
        let mut setup = base.clone();
        setup.transport = transport.clone();
        setup.clock = Arc::new(RecordingClock(clock.clone()));
        // As in the replay: the same backoff jitter, the same hash orders.
        setup.seeded_random = true;
        // Each step is a process of its own in the replay: no token from the step before.
        setup.tokens = Default::default();
        let outcome = match action {
            Action::Validate => setup.validate()?,
            Action::Poll => {
                let sink = Sink::open(&options.out).map_err(RunError::from)?;
                let mut runner = Runner::new(setup, sink)?;
                runner.run(true, Duration::ZERO)?;
                "ok".to_string()
            }
        };
        if let Some(cause) = outcome.strip_prefix("error: invalid-config: ") {
            return Err(RecordError::Config(cause.to_string()));
        }
        let failed = outcome != "ok";
        if failed {
            // A poll would fail the same way; the validation's answer is the recording.
            tracing::warn!("validate: {outcome}; the poll is not recorded");
        }
        recorded.push((action, now, outcome, transport.take()));
        if failed {
            break;
        }
    }

    let mut scrubber = Scrubber::new(
        &config.tenant_id,
        &config.client_id,
        base.secrets.iter(),
        options.redact_fields.iter().cloned(),
        &[&config.login_base, &config.graph_base],
    );
    let mut steps = Vec::new();
    for (action, now, _, exchanges) in &recorded {
        let exchanges = exchanges
            .iter()
            .map(|c| exchange_json(c, &mut scrubber))
            .collect::<Result<Vec<_>, _>>()?;
        steps.push(json!({
            "action": action,
            "now": humantime::format_rfc3339_seconds(*now).to_string(),
            "exchanges": exchanges,
        }));
    }
    let config_doc: Value = serde_json::from_str(&base.config)
        .map_err(|e| RecordError::Config(format!("the config is not JSON: {e}")))?;
    let description = options.description.clone().unwrap_or_else(|| {
        format!(
            "Recorded with connector-host record on {}.",
            humantime::format_rfc3339_seconds(SystemTime::now())
        )
    });
    let mut doc = json!({
        "description": description,
        "config": config_doc,
        "secrets": Scrubber::secrets_section(base.secrets.iter()),
        "steps": steps,
    });
    scrubber.replace_all(&mut doc);
    if let Some(what) = scrubber.leftover(&doc) {
        return Err(RecordError::Leak(what));
    }
    let text = serde_json::to_string_pretty(&doc).expect("a JSON value serializes") + "\n";
    if let Err(e) = serde_json::from_str::<Scenario>(&text) {
        return Err(RecordError::Unrecordable(format!(
            "the scenario written would not replay ({e}); a bug of connector-host"
        )));
    }
    let path = options.fixture.join("scenario.json");
    write_atomically(&path, text.as_bytes()).map_err(|cause| RecordError::Dir {
        path: options.fixture.clone(),
        cause,
    })?;
    Ok(RecordReport {
        path,
        steps: recorded
            .into_iter()
            .map(|(action, _, outcome, exchanges)| (action, outcome, exchanges.len()))
            .collect(),
    })
}

fn exchange_json(c: &Captured, scrubber: &mut Scrubber) -> Result<Value, RecordError> {
    let response = match &c.outcome {
        Ok(r) => {
            let mut response = Map::new();
            response.insert("status".into(), r.status.into());
            let headers: Map<String, Value> = r
                .headers
                .iter()
                .filter(|(name, _)| KEPT_HEADERS.contains(&name.to_ascii_lowercase().as_str()))
                .map(|(name, value)| (name.to_ascii_lowercase(), value.clone().into()))
                .collect();
            if !headers.is_empty() {
                response.insert("headers".into(), headers.into());
            }
            if !r.body.is_empty() {
                match serde_json::from_slice::<Value>(&r.body) {
                    Ok(mut body) => {
                        scrubber.scrub_body(&mut body);
                        response.insert("json".into(), body);
                    }
                    Err(_) => {
                        let text = String::from_utf8_lossy(&r.body).into_owned();
                        response.insert("body".into(), text.into());
                    }
                }
            }
            Value::Object(response)
        }
        Err(HttpError::Timeout) => json!({"error": "timeout"}),
        Err(HttpError::Connection(message)) => json!({"error": "connection", "message": message}),
        Err(HttpError::TooLarge(cap)) => {
            return Err(RecordError::Unrecordable(format!(
                "a response from {} was larger than the body cap of {cap} bytes, which a \
                 fixture cannot express; raise --max-body-mb",
                c.method
            )));
        }
        Err(e) => {
            return Err(RecordError::Unrecordable(format!(
                "{} request failed in a way a fixture cannot express: {e:?}",
                c.method
            )));
        }
    };
    Ok(json!({
        "request": {"method": c.method, "url": c.url},
        "response": response,
    }))
}

/// A reader of the directory sees the old scenario or the new one, never half of one.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recording_clock_stands_still_until_a_wait_which_passes_for_real_too() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
        let clock = RecordingClock(VirtualClock::new(start));
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(clock.now(), start, "HTTP time does not move it");
        let real = std::time::Instant::now();
        clock.sleep(Duration::from_millis(150), &AtomicBool::new(false));
        assert!(real.elapsed() >= Duration::from_millis(150));
        assert_eq!(clock.now(), start + Duration::from_millis(150));
    }

    #[test]
    fn the_fixture_directory_must_be_new_or_empty_unless_forced() {
        let tmp = tempfile::tempdir().unwrap();
        let fresh = tmp.path().join("a/b");
        prepare_dir(&fresh, false).unwrap();
        assert!(fresh.is_dir());
        assert_eq!(
            std::fs::read_dir(&fresh).unwrap().count(),
            0,
            "no probe left"
        );
        prepare_dir(&fresh, false).unwrap();
        std::fs::write(fresh.join("scenario.json"), "{}").unwrap();
        assert!(matches!(
            prepare_dir(&fresh, false),
            Err(RecordError::NotEmpty { .. })
        ));
        prepare_dir(&fresh, true).unwrap();
        let below_a_file = fresh.join("scenario.json").join("x");
        let err = prepare_dir(&below_a_file, true).unwrap_err();
        assert!(matches!(err, RecordError::Dir { .. }), "{err}");
        assert_eq!(err.exit_code(), 2);
    }
}
