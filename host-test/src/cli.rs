//! The `connector-host` command line (the CLI contract of DESIGN.md).
//! Exit codes: 0 ok, 1 the connector reported an error, 2 usage or config error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::engine::{HostEngine, Limits, LoadedComponent};
use crate::fixture::{ReplayOptions, ReplayReport, replay};
use crate::record::{RecordOptions, record};
use crate::runner::{RunError, RunSetup, Runner};
use crate::secrets::Secrets;
use crate::serve::{ServeOptions, Server};
use crate::sink::Sink;
use crate::state::StateDb;

#[derive(Parser)]
#[command(
    name = "connector-host",
    version,
    about = "Runs security connector components (WASI 0.2)"
)]
struct Cli {
    /// Log filter for stderr: error, warn, info, debug, trace (or a tracing filter).
    /// `RUST_LOG` overrides it.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    /// Where compiled components are cached (default ~/.cache/connector-host).
    #[arg(long, global = true)]
    cache_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prints the connector's metadata and config schema as JSON.
    Describe { component: PathBuf },
    /// Checks the config and credentials against the tenant: prints `ok` or the cause.
    Validate {
        component: PathBuf,
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        secrets: SecretArgs,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Polls the tenant and writes events as JSON lines.
    Run {
        component: PathBuf,
        #[arg(long)]
        config: PathBuf,
        /// SQLite state file (cursor, KV, outbox); created if missing.
        #[arg(long)]
        state: PathBuf,
        #[command(flatten)]
        secrets: SecretArgs,
        /// Output file for event lines, appended to; `-` is stdout.
        #[arg(long, default_value = "-")]
        out: PathBuf,
        /// Poll until caught up, then exit.
        #[arg(long)]
        once: bool,
        /// Seconds between polls (default: the connector's suggestion).
        #[arg(long)]
        interval: Option<u64>,
        /// The instance's name in the state file and in event lines (default: the config
        /// file's name without extension).
        #[arg(long)]
        instance: Option<String>,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Replays a recorded fixture scenario: no network, virtual time.
    Replay {
        component: PathBuf,
        #[arg(long)]
        fixture: PathBuf,
        /// Replaces the scenario's config.
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, default_value = "-")]
        out: PathBuf,
        /// State file to keep (default: in memory).
        #[arg(long)]
        state: Option<PathBuf>,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Runs every instance described in a directory, each on its own schedule; reloads the
    /// directory every `--rescan-secs` and on SIGHUP.
    Serve {
        /// A directory of instance files (`<name>.json`: component, config, secrets,
        /// interval_secs).
        #[arg(long)]
        instances: PathBuf,
        /// SQLite state file shared by all instances; created if missing.
        #[arg(long)]
        state: PathBuf,
        /// Directory for event lines, one `<instance>.jsonl` per instance (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Serve Prometheus metrics on this loopback address, e.g. 127.0.0.1:9464.
        #[arg(long)]
        metrics: Option<std::net::SocketAddr>,
        /// Seconds between reads of the instances directory.
        #[arg(long, default_value_t = 5)]
        rescan_secs: u64,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Runs against the real tenant like `run --once` (from no state) and writes every HTTP
    /// exchange as a fixture scenario that `replay` serves back, with the secret, tokens,
    /// tenant and client IDs and the `--redact-field` values replaced by placeholders.
    Record {
        component: PathBuf,
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        secrets: SecretArgs,
        /// Directory to write `scenario.json` into; created if missing, refused if not
        /// empty (see --force).
        #[arg(long)]
        fixture: PathBuf,
        /// Replace `scenario.json` in a directory that is not empty.
        #[arg(long)]
        force: bool,
        /// A JSON field of the responses whose values are replaced by placeholders (the
        /// same value, the same placeholder), e.g. userPrincipalName; repeatable.
        #[arg(long = "redact-field", value_name = "NAME")]
        redact_fields: Vec<String>,
        /// Record a `validate` step before the poll (its probes and the token's roles).
        #[arg(long)]
        validate: bool,
        /// The scenario's description (default: when it was recorded).
        #[arg(long)]
        description: Option<String>,
        /// The recording run's events, unredacted (as `run` writes them); `-` is stdout.
        #[arg(long, default_value = "-")]
        out: PathBuf,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Prints each instance of a state file with its health: last success, lag (now minus
    /// the newest event time), events, HTTP calls (tokens included), 429 responses, time
    /// spent waiting on the API, consecutive failures and the last error.
    Status {
        #[arg(long)]
        state: PathBuf,
    },
    /// Runs the Defender Alerts connector on a bundled fixture (no cloud account needed).
    Demo {
        /// Scenario under fixtures/defender-alerts/.
        #[arg(long, default_value = "incremental")]
        scenario: String,
    },
}

#[derive(Args)]
struct SecretArgs {
    /// JSON file `{"client-secret": "..."}`; default: `CONNECTOR_SECRET_<NAME>` variables.
    #[arg(long)]
    secrets: Option<PathBuf>,
}

#[derive(Args)]
struct LimitArgs {
    /// Memory cap per instance, MiB.
    #[arg(long, default_value_t = Limits::default().memory_bytes >> 20)]
    memory_mb: usize,
    /// Execution time per call into the component (host calls excluded), seconds.
    #[arg(long, default_value_t = Limits::default().deadline.as_secs())]
    deadline_secs: u64,
    /// Upper bound for one HTTP exchange, seconds.
    #[arg(long, default_value_t = Limits::default().http_timeout.as_secs())]
    http_timeout_secs: u64,
    /// Largest HTTP response body, MiB.
    #[arg(long, default_value_t = Limits::default().http_body_bytes >> 20)]
    max_body_mb: u64,
}

impl From<&LimitArgs> for Limits {
    fn from(a: &LimitArgs) -> Limits {
        Limits {
            memory_bytes: a.memory_mb << 20,
            deadline: Duration::from_secs(a.deadline_secs),
            http_timeout: Duration::from_secs(a.http_timeout_secs),
            http_body_bytes: a.max_body_mb << 20,
        }
    }
}

/// A failure of the CLI: the message (one line) and the exit code.
struct Failure(u8, String);

impl Failure {
    fn usage(m: impl std::fmt::Display) -> Self {
        Failure(2, m.to_string())
    }
    fn connector(m: impl std::fmt::Display) -> Self {
        Failure(1, m.to_string())
    }
}

impl From<RunError> for Failure {
    fn from(e: RunError) -> Self {
        Failure(e.exit_code(), e.to_string())
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_level);
    match execute(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, message)) => {
            // Empty when the command already printed its own error line.
            if !message.is_empty() {
                eprintln!("error: {message}");
            }
            ExitCode::from(code)
        }
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| crate::progress::LogWriter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn execute(cli: Cli) -> Result<(), Failure> {
    if let Command::Status { state } = &cli.command {
        return status(state);
    }
    let cache = cli.cache_dir.or_else(HostEngine::default_cache_dir);
    let engine = HostEngine::new(cache).map_err(|e| Failure::connector(format!("{e:#}")))?;
    let load = |path: &Path| engine.load(path).map_err(Failure::usage);
    match cli.command {
        Command::Describe { component } => {
            let component = load(&component)?;
            describe(&component)
        }
        Command::Validate {
            component,
            config,
            secrets,
            limits,
        } => {
            let setup = setup(
                load(&component)?,
                &config,
                None,
                &secrets,
                Path::new(":memory:"),
                (&limits).into(),
            )?;
            let line = setup.validate()?;
            println!("{line}");
            match line.as_str() {
                "ok" => Ok(()),
                l if l.starts_with("error: invalid-config") => {
                    Err(Failure(2, "invalid config".into()))
                }
                _ => Err(Failure(1, "validation failed".into())),
            }
        }
        Command::Run {
            component,
            config,
            state,
            secrets,
            out,
            once,
            interval,
            instance,
            limits,
        } => {
            let component = load(&component)?;
            let mut setup = setup(
                component,
                &config,
                instance,
                &secrets,
                &state,
                (&limits).into(),
            )?;
            setup.stop = stop_on_signals()?;
            let sink = Sink::open(&out).map_err(Failure::usage)?;
            let mut runner = Runner::new(setup, sink)?;
            runner.progress = crate::progress::Progress::on_terminal();
            let interval = match interval {
                Some(s) => Duration::from_secs(s),
                None => Duration::from_secs(runner.poll_interval_secs().max(1).into()),
            };
            runner.run(once, interval).map_err(Failure::from)
        }
        Command::Replay {
            component,
            fixture,
            config,
            out,
            state,
            limits,
        } => {
            let component = load(&component)?;
            let config = config.map(|p| read_config(&p)).transpose()?;
            replay_to(&component, &fixture, config, &out, state, (&limits).into())
        }
        Command::Serve {
            instances,
            state,
            out,
            metrics,
            rescan_secs,
            limits,
        } => {
            let mut options = ServeOptions::new(instances, state);
            options.out = out;
            options.rescan = Duration::from_secs(rescan_secs.max(1));
            options.limits = (&limits).into();
            serve(&engine, options, metrics)
        }
        Command::Record {
            component,
            config,
            secrets,
            fixture,
            force,
            redact_fields,
            validate,
            description,
            out,
            limits,
        } => {
            let component = load(&component)?;
            // Named as the replay names it: after the fixture directory.
            let instance = fixture
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "recording".into());
            let base = setup(
                component,
                &config,
                Some(instance),
                &secrets,
                Path::new(":memory:"),
                (&limits).into(),
            )?;
            let options = RecordOptions {
                fixture,
                force,
                redact_fields,
                validate,
                description,
                out,
            };
            let report =
                record(&base, &options).map_err(|e| Failure(e.exit_code(), e.to_string()))?;
            for (action, outcome, exchanges) in &report.steps {
                eprintln!("recorded {action:?}: {outcome} ({exchanges} exchanges)");
            }
            eprintln!("wrote {}", report.path.display());
            match report.steps.last() {
                Some((_, outcome, _)) if outcome != "ok" => {
                    Err(Failure::connector("validation failed"))
                }
                _ => Ok(()),
            }
        }
        Command::Status { .. } => unreachable!("handled above: needs no engine"),
        Command::Demo { scenario } => {
            let component = load(&crate::component_path("defender-alerts"))?;
            let fixture = crate::fixtures_dir()
                .join("defender-alerts")
                .join(&scenario);
            replay_to(
                &component,
                &fixture,
                None,
                Path::new("-"),
                None,
                Limits::default(),
            )
        }
    }
}

fn serve(
    engine: &HostEngine,
    options: ServeOptions,
    metrics: Option<std::net::SocketAddr>,
) -> Result<(), Failure> {
    let shutdown = stop_on_signals()?;
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone())
        .map_err(|e| Failure::connector(format!("installing signal handlers: {e}")))?;
    let mut server = Server::new(engine, options).map_err(Failure::usage)?;
    let metrics = match metrics {
        Some(addr) => Some(
            crate::metrics::spawn(addr, server.state(), shutdown.clone())
                .map_err(Failure::usage)?,
        ),
        None => None,
    };
    server.run(&shutdown, &reload).map_err(Failure::connector)?;
    if let Some(thread) = metrics {
        let _ = thread.join();
    }
    tracing::info!("stopped");
    Ok(())
}

/// A flag raised by SIGINT or SIGTERM; a second signal ends the process at once.
fn stop_on_signals() -> Result<Arc<AtomicBool>, Failure> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, stop.clone())
            .and_then(|_| signal_hook::flag::register(signal, stop.clone()))
            .map_err(|e| Failure::connector(format!("installing signal handlers: {e}")))?;
    }
    Ok(stop)
}

fn status(path: &Path) -> Result<(), Failure> {
    if !path.exists() {
        return Err(Failure::usage(format!(
            "no state file at {}",
            path.display()
        )));
    }
    let rows = StateDb::open(path)
        .and_then(|db| db.health())
        .map_err(Failure::usage)?;
    let now = std::time::SystemTime::now();
    let ago = |t: &Option<String>| -> String {
        t.as_deref()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            .and_then(|t| now.duration_since(t).ok())
            .map(|d| {
                humantime::format_duration(Duration::from_secs(d.as_secs()))
                    .to_string()
                    .replace(' ', "")
            })
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "{:<24} {:<22} {:<21} {:>12} {:>9} {:>8} {:>9} {:>8} {:>8}  LAST ERROR",
        "INSTANCE",
        "CONNECTOR",
        "LAST SUCCESS",
        "LAG",
        "EVENTS",
        "CALLS",
        "THROTTLED",
        "WAITED",
        "FAILURES"
    );
    for r in rows {
        let error = match (&r.last_error_code, &r.last_error) {
            _ if r.failures == 0 => String::new(),
            (Some(code), Some(m)) => format!("[{code}] {m}"),
            (_, m) => m.clone().unwrap_or_default(),
        };
        let line = format!(
            "{:<24} {:<22} {:<21} {:>12} {:>9} {:>8} {:>9} {:>7}s {:>8}  {}",
            r.instance,
            r.connector,
            r.last_success.as_deref().unwrap_or("never"),
            ago(&r.newest_event),
            r.events,
            r.requests,
            r.throttled,
            r.waited_secs,
            r.failures,
            // One line per instance, whatever the error holds.
            error
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .chars()
                .take(160)
                .collect::<String>()
        );
        println!("{}", line.trim_end());
        if !r.degraded.is_empty() {
            println!("{:<24} degraded: {}", "", degraded_summary(&r.degraded));
        }
    }
    Ok(())
}

/// `risk_detections throttled (429 …), incidents fallback (…)`, on one line.
fn degraded_summary(degraded: &[crate::state::Degraded]) -> String {
    degraded
        .iter()
        .map(|d| {
            let message: String = d.message.split_whitespace().collect::<Vec<_>>().join(" ");
            let message: String = message.chars().take(120).collect();
            format!("{} {} ({message})", d.data_type, d.code)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe(component: &LoadedComponent) -> Result<(), Failure> {
    let state = StateDb::open(Path::new(":memory:")).map_err(Failure::usage)?;
    let setup = RunSetup::new(
        component.clone(),
        "describe".into(),
        "{}".into(),
        Secrets::default(),
        Arc::new(Mutex::new(state)),
    );
    let m = setup.describe()?;
    let schema: serde_json::Value = serde_json::from_str(&m.config_schema)
        .unwrap_or(serde_json::Value::String(m.config_schema));
    let doc = serde_json::json!({
        "name": m.name,
        "version": m.version,
        "description": m.description,
        "event_kinds": m.event_kinds,
        "permissions": m.permissions,
        "secrets": m.secrets,
        "wit": component.wit_version().package(),
        "poll_interval_secs": m.poll_interval_secs,
        "config_schema": schema,
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&doc).expect("JSON serializes")
    );
    Ok(())
}

fn read_config(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|e| {
        Failure::usage(format!(
            "cannot read the config file {}: {e}",
            path.display()
        ))
    })
}

fn setup(
    component: LoadedComponent,
    config_path: &Path,
    instance: Option<String>,
    secrets: &SecretArgs,
    state: &Path,
    limits: Limits,
) -> Result<RunSetup, Failure> {
    let config = read_config(config_path)?;
    let secrets = match &secrets.secrets {
        Some(path) => Secrets::from_file(path).map_err(Failure::usage)?,
        None => Secrets::from_env(),
    };
    let instance = match instance {
        Some(name) => name,
        None => config_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                Failure::usage("cannot name the instance after the config file; pass --instance")
            })?,
    };
    let state = StateDb::open(state).map_err(Failure::usage)?;
    let mut setup = RunSetup::new(
        component,
        instance,
        config,
        secrets,
        Arc::new(Mutex::new(state)),
    );
    setup.limits = limits;
    Ok(setup)
}

fn replay_to(
    component: &LoadedComponent,
    fixture: &Path,
    config: Option<String>,
    out: &Path,
    state: Option<PathBuf>,
    limits: Limits,
) -> Result<(), Failure> {
    let to_stdout = out == Path::new("-");
    let out_file = if to_stdout {
        std::env::temp_dir().join(format!(
            "connector-host-replay-{}.jsonl",
            std::process::id()
        ))
    } else {
        out.to_path_buf()
    };
    let options = ReplayOptions {
        config,
        out: out_file.clone(),
        state: state.unwrap_or_else(|| ":memory:".into()),
        limits,
    };
    let result = replay(component, fixture, &options);
    if to_stdout {
        if let Ok(lines) = std::fs::read_to_string(&out_file) {
            print!("{lines}");
        }
        let _ = std::fs::remove_file(&out_file);
    }
    let report = result.map_err(Failure::connector)?;
    print_report(&report);
    if report.matched() {
        Ok(())
    } else {
        Err(Failure::connector(
            "the component's requests did not match the recording (see above)",
        ))
    }
}

fn print_report(report: &ReplayReport) {
    for (i, step) in report.steps.iter().enumerate() {
        let requests: u64 = step.polls.iter().map(|p| p.requests).sum();
        eprintln!(
            "{} step {}: {:?}: {} ({} events, {} polls, {} requests)",
            report.scenario,
            i + 1,
            step.action,
            step.outcome,
            step.events.len(),
            step.polls.len(),
            requests
        );
        for u in &step.unexpected {
            eprintln!("  unexpected request: {u}");
        }
        for u in &step.unused {
            eprintln!("  recorded but never requested: {u}");
        }
    }
}
