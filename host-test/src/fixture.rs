//! Replay of recorded HTTP exchanges (`fixtures/<connector>/<scenario>/scenario.json`, the
//! format of `docs/fixtures.md`): the real component runs through the real runner, state
//! store and sink, with the network replaced by the recording and time by a virtual clock.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::bindings::secops::connector::http::{HttpError, Request, Response};
use crate::clock::VirtualClock;
use crate::engine::{Limits, LoadedComponent};
use crate::imports::Transport;
use crate::redact::Redactor;
use crate::runner::{PollRecord, RunError, RunSetup, Runner};
use crate::secrets::Secrets;
use crate::sink::Sink;
use crate::state::StateDb;

const DEFAULT_SECRET: &str = "fixture-client-secret";

#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("cannot read the fixture {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("the fixture {path} is not valid ({cause}); see docs/fixtures.md for the format")]
    Parse { path: PathBuf, cause: String },
    #[error("replay of {scenario}, step {step}: {cause}")]
    Run {
        scenario: String,
        step: usize,
        cause: Box<RunError>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub description: String,
    pub config: Value,
    #[serde(default)]
    pub secrets: Option<BTreeMap<String, String>>,
    pub steps: Vec<ScenarioStep>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioStep {
    pub action: Action,
    #[serde(with = "humantime_serde_rfc3339")]
    pub now: SystemTime,
    #[serde(default)]
    pub exchanges: Vec<Exchange>,
}

#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Poll,
    Validate,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Exchange {
    pub request: RecordedRequest,
    pub response: RecordedResponse,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RecordedRequest {
    pub method: String,
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
pub enum RecordedResponse {
    Failure {
        error: RecordedFailure,
        #[serde(default)]
        message: String,
    },
    Reply {
        status: u16,
        #[serde(default)]
        headers: BTreeMap<String, String>,
        #[serde(default)]
        json: Option<Value>,
        #[serde(default)]
        body: Option<String>,
    },
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum RecordedFailure {
    Timeout,
    Connection,
}

mod humantime_serde_rfc3339 {
    use serde::{Deserialize, Deserializer};
    use std::time::SystemTime;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }
}

impl Scenario {
    pub fn load(dir: &Path) -> Result<Scenario, FixtureError> {
        let path = dir.join("scenario.json");
        let text = std::fs::read_to_string(&path).map_err(|cause| FixtureError::Read {
            path: path.clone(),
            cause,
        })?;
        serde_json::from_str(&text).map_err(|e| FixtureError::Parse {
            path,
            cause: e.to_string(),
        })
    }
}

/// Answers requests from one step's exchanges and remembers what did not match.
pub struct ReplayTransport {
    exchanges: Mutex<Vec<(Exchange, bool)>>,
    unexpected: Mutex<Vec<String>>,
}

impl ReplayTransport {
    pub fn new(exchanges: Vec<Exchange>) -> Self {
        ReplayTransport {
            exchanges: Mutex::new(exchanges.into_iter().map(|e| (e, false)).collect()),
            unexpected: Mutex::new(Vec::new()),
        }
    }

    fn unused(&self) -> Vec<String> {
        let exchanges = self.exchanges.lock().unwrap_or_else(|p| p.into_inner());
        exchanges
            .iter()
            .filter(|(_, used)| !used)
            .map(|(e, _)| format!("{} {}", e.request.method, e.request.url))
            .collect()
    }

    /// Requests the component made in this step, answered or not (a `validate` step's
    /// too, which has no poll records to count them).
    fn requests(&self) -> u64 {
        let exchanges = self.exchanges.lock().unwrap_or_else(|p| p.into_inner());
        let used = exchanges.iter().filter(|(_, used)| *used).count();
        (used + self.unexpected().len()) as u64
    }

    fn unexpected(&self) -> Vec<String> {
        self.unexpected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Transport for ReplayTransport {
    fn send(
        &self,
        request: &Request,
        _timeout: Duration,
        body_cap: u64,
    ) -> Result<Response, HttpError> {
        let mut exchanges = self.exchanges.lock().unwrap_or_else(|p| p.into_inner());
        let found = exchanges.iter_mut().find(|(e, used)| {
            !*used
                && e.request.method == request.method
                && e.request.url == request.url
                && e.request.headers.iter().all(|(name, value)| {
                    request
                        .headers
                        .iter()
                        .any(|(n, v)| n.eq_ignore_ascii_case(name) && v == value)
                })
        });
        let Some((exchange, used)) = found else {
            // Only the method and URL: never a header, which would carry the token.
            let what = format!("{} {}", request.method, request.url);
            self.unexpected
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(what.clone());
            return Err(HttpError::Denied(format!(
                "no recorded exchange for {what}"
            )));
        };
        *used = true;
        match &exchange.response {
            RecordedResponse::Failure {
                error: RecordedFailure::Timeout,
                ..
            } => Err(HttpError::Timeout),
            RecordedResponse::Failure {
                error: RecordedFailure::Connection,
                message,
            } => Err(HttpError::Connection(message.clone())),
            RecordedResponse::Reply {
                status,
                headers,
                json,
                body,
            } => {
                let mut headers: Vec<(String, String)> = headers
                    .iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                    .collect();
                let body = match (json, body) {
                    (Some(json), _) => {
                        headers.push(("content-type".into(), "application/json".into()));
                        serde_json::to_vec(json).expect("a JSON value serializes")
                    }
                    (None, Some(text)) => text.clone().into_bytes(),
                    (None, None) => Vec::new(),
                };
                if body.len() as u64 > body_cap {
                    return Err(HttpError::TooLarge(body_cap));
                }
                Ok(Response {
                    status: *status,
                    headers,
                    body,
                })
            }
        }
    }
}

/// One event of a replay, as reports and snapshots show it (the payload is in `--out`).
#[derive(Debug, Serialize, Deserialize)]
pub struct EventSummary {
    pub seq: u64,
    pub kind: String,
    pub id: String,
    pub version: String,
    pub timestamp: String,
}

#[derive(Debug, Serialize)]
pub struct StepReport {
    pub action: Action,
    /// `ok`, a validation code (`error: <code>: ...`), or the error that ended the poll.
    pub outcome: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub polls: Vec<PollRecord>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventSummary>,
    /// Requests the recording had no answer for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unexpected: Vec<String>,
    /// Recorded exchanges the component never asked for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unused: Vec<String>,
    /// HTTP requests the step made (the summary line; the snapshots count exchanges).
    #[serde(skip)]
    pub requests: u64,
}

#[derive(Debug, Serialize)]
pub struct ReplayReport {
    pub scenario: String,
    pub steps: Vec<StepReport>,
}

impl ReplayReport {
    /// Every request matched a recorded exchange and every exchange was used.
    pub fn matched(&self) -> bool {
        self.steps
            .iter()
            .all(|s| s.unexpected.is_empty() && s.unused.is_empty())
    }
}

pub struct ReplayOptions {
    /// Replaces the scenario's config.
    pub config: Option<String>,
    /// The event lines (JSON lines file).
    pub out: PathBuf,
    /// The state database (a fresh one per replay, normally).
    pub state: PathBuf,
    pub limits: Limits,
}

/// Replays every step of the scenario in `dir`.
pub fn replay(
    component: &LoadedComponent,
    dir: &Path,
    options: &ReplayOptions,
) -> Result<ReplayReport, FixtureError> {
    let scenario = Scenario::load(dir)?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let config = options
        .config
        .clone()
        .unwrap_or_else(|| scenario.config.to_string());
    let secrets = Secrets::from_map(
        scenario
            .secrets
            .clone()
            .unwrap_or_else(|| [("client-secret".to_string(), DEFAULT_SECRET.to_string())].into()),
    );
    let redactor = Redactor::default();
    secrets.register(&redactor);
    let run_error = |step, cause| FixtureError::Run {
        scenario: name.clone(),
        step,
        cause: Box::new(cause),
    };
    let state = StateDb::open(&options.state).map_err(|e| run_error(0, e.into()))?;
    let state = Arc::new(Mutex::new(state));
    let clock = VirtualClock::new(SystemTime::UNIX_EPOCH);
    let mut report = ReplayReport {
        scenario: name.clone(),
        steps: Vec::new(),
    };
    let mut lines_seen = 0;
    for (index, step) in scenario.steps.iter().enumerate() {
        let step_no = index + 1;
        clock.set(step.now);
        let transport = Arc::new(ReplayTransport::new(step.exchanges.clone()));
        let setup = RunSetup {
            component: component.clone(),
            instance: name.clone(),
            config: config.clone(),
            secrets: secrets.clone(),
            state: state.clone(),
            transport: transport.clone(),
            clock: Arc::new(clock.clone()),
            redactor: redactor.clone(),
            limits: options.limits.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            seeded_random: true,
            source: None,
            reopen: Default::default(),
            // A step is a run of its own process, as when it was recorded: no token from
            // an earlier step.
            tokens: Default::default(),
            sink_max_lag: crate::runner::DEFAULT_SINK_MAX_LAG,
        };
        let (outcome, polls) = match step.action {
            Action::Poll => {
                let sink = Sink::open(&options.out).map_err(|e| run_error(step_no, e.into()))?;
                let mut runner = Runner::new(setup, sink).map_err(|e| run_error(step_no, e))?;
                runner.records = Some(Vec::new());
                let outcome = match runner.run(true, Duration::ZERO) {
                    Ok(()) => "ok".to_string(),
                    Err(RunError::Connector { message, .. }) => format!("error: {message}"),
                    Err(e) => return Err(run_error(step_no, e)),
                };
                (outcome, runner.records.take().unwrap_or_default())
            }
            Action::Validate => (
                setup.validate().map_err(|e| run_error(step_no, e))?,
                Vec::new(),
            ),
        };
        let events = read_events(&options.out, &mut lines_seen).map_err(|e| {
            run_error(
                step_no,
                RunError::Config(format!("reading {}: {e}", options.out.display())),
            )
        })?;
        report.steps.push(StepReport {
            action: step.action,
            outcome,
            polls,
            events,
            unexpected: transport.unexpected(),
            unused: transport.unused(),
            requests: transport.requests(),
        });
    }
    Ok(report)
}

/// The event lines appended to `out` since the last call.
fn read_events(out: &Path, seen: &mut usize) -> std::io::Result<Vec<EventSummary>> {
    let text = match std::fs::read_to_string(out) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let lines: Vec<&str> = text.lines().collect();
    let new = lines[(*seen).min(lines.len())..]
        .iter()
        .map(|l| serde_json::from_str(l).map_err(std::io::Error::other))
        .collect::<Result<Vec<_>, _>>()?;
    *seen = lines.len();
    Ok(new)
}
