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
    about = "Runs security connector components (WASI 0.2)",
    after_help = EXIT_CODES
)]
struct Cli {
    /// Log filter for stderr: error, warn, info, debug (the host's and the components'
    /// lines; the HTTP and wasmtime libraries stay at warn), trace (everything), or a
    /// tracing filter such as `info,wasmtime=debug`. `RUST_LOG` overrides it.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    /// Log line format on stderr: `text`, or `json` (one JSON object a line, for a log
    /// collector).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Where compiled components are cached (default ~/.cache/connector-host).
    #[arg(long, global = true)]
    cache_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Prints the connector's metadata, the secrets it reads and its config schema as JSON.
    #[command(after_help = example("connector-host describe defender_alerts.wasm"))]
    Describe {
        /// The connector component (`.wasm`).
        component: PathBuf,
    },
    /// Prints a component's name, version and the WIT package version it was built for.
    #[command(after_help = example("connector-host inspect dist/defender-alerts-0.1.0.wasm"))]
    Inspect {
        /// The connector component (`.wasm`).
        component: PathBuf,
    },
    /// Checks the config and credentials against the tenant: prints `ok` or the cause.
    #[command(after_help = example(
        "connector-host validate defender_alerts.wasm --config contoso-alerts.json --secrets \
         secrets.json\n  connector-host validate instances/contoso-alerts.json"
    ))]
    Validate {
        /// The component (`.wasm`) with --config, or a `serve` instance file (`.json`),
        /// which names its component, config and secrets.
        component: PathBuf,
        /// The instance's config file (needed with a component).
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        secrets: SecretArgs,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Polls the tenant and writes events as JSON lines.
    #[command(after_help = example(
        "connector-host run defender_alerts.wasm --config contoso-alerts.json \\\n    \
         --secrets secrets.json --state contoso.db --out alerts.jsonl"
    ))]
    Run {
        /// The connector component (`.wasm`).
        component: PathBuf,
        /// The instance's config file (JSON: tenant_id, client_id, backfill_days, ...).
        #[arg(long)]
        config: PathBuf,
        /// SQLite state file (cursor, KV, outbox), created if missing, or a PostgreSQL URL
        /// (`postgres://user:password@host:port/db`).
        #[arg(long)]
        state: PathBuf,
        #[command(flatten)]
        secrets: SecretArgs,
        /// Output file for event lines, appended to; `-` is stdout.
        #[arg(long, default_value = "-", conflicts_with = "sink")]
        out: PathBuf,
        #[command(flatten)]
        sink: SinkArgs,
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
    #[command(after_help = example(
        "connector-host replay defender_alerts.wasm --fixture fixtures/defender-alerts/throttled"
    ))]
    Replay {
        /// The connector component (`.wasm`).
        component: PathBuf,
        /// The scenario's directory (holding `scenario.json`).
        #[arg(long)]
        fixture: PathBuf,
        /// Replaces the scenario's config.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Output file for event lines, appended to; `-` is stdout.
        #[arg(long, default_value = "-")]
        out: PathBuf,
        /// State file to keep (default: in memory).
        #[arg(long)]
        state: Option<PathBuf>,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Runs every instance described in a directory, each on its own schedule; reloads the
    /// directory every `--rescan-secs` and on SIGHUP (which also reopens the output files).
    #[command(after_help = example(
        "connector-host serve --instances instances --state platform.db --out events \\\n    \
         --metrics 127.0.0.1:9464\n  connector-host serve --instances instances --check --online"
    ))]
    Serve {
        /// A directory of instance files (`<name>.json`: component, config, secrets,
        /// interval_secs).
        #[arg(long)]
        instances: PathBuf,
        /// State store shared by all instances: a SQLite file (created if missing), or a
        /// PostgreSQL database (`postgres://user:password@host:port/db`) shared by a fleet
        /// of hosts.
        #[arg(long, required_unless_present = "check")]
        state: Option<PathBuf>,
        /// Check every instance file (format, component, secrets, sink URL, config) without
        /// serving or connecting: one line per instance, exit 2 if any must be fixed.
        #[arg(long)]
        check: bool,
        /// With --check: also `validate` each instance against its tenant (exit 1 if one
        /// fails there).
        #[arg(long, requires = "check")]
        online: bool,
        /// Directory for event lines, one `<instance>.jsonl` per instance (default, or `-`:
        /// stdout).
        #[arg(long, conflicts_with = "sink")]
        out: Option<PathBuf>,
        /// Every instance's sink, where its instance file names none (`"sink": "…"`).
        #[command(flatten)]
        sink: SinkArgs,
        /// Serve Prometheus metrics (`/metrics`), `/healthz` and `/readyz` on this
        /// loopback address, e.g. 127.0.0.1:9464.
        #[arg(long)]
        metrics: Option<std::net::SocketAddr>,
        /// Allow a --metrics address that is not loopback (e.g. 0.0.0.0:9464): anyone who
        /// can reach it reads instance names, connectors and error codes.
        #[arg(long, requires = "metrics")]
        metrics_public: bool,
        /// Seconds between reads of the instances directory.
        #[arg(long, default_value_t = 5)]
        rescan_secs: u64,
        /// How many instances poll at once. Polls wait on Graph (100 ms up to the HTTP
        /// timeout per call), blocked and using no CPU, so there are more workers than
        /// cores; each poll in flight costs a thread and a component instance, so the
        /// number is bounded whatever the number of instances.
        #[arg(long, default_value_t = crate::serve::DEFAULT_WORKERS as u32, value_parser = clap::value_parser!(u32).range(1..=4096))]
        workers: u32,
        /// With a PostgreSQL --state (a fleet): seconds a host's lease of an instance
        /// lasts unless renewed (every third of it). A host that dies is taken over after
        /// at most this long; a host stalled longer than this loses its instances.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
        lease_ttl: u64,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Runs against the real tenant like `run --once` (from no state) and writes every HTTP
    /// exchange as a fixture scenario that `replay` serves back, with the secret, tokens,
    /// tenant and client IDs and the `--redact-field` values replaced by placeholders.
    #[command(after_help = example(
        "connector-host record entra.wasm --config contoso-entra.json --secrets secrets.json \\\n    \
         --fixture fixtures/entra/contoso --validate --redact-field userPrincipalName"
    ))]
    Record {
        /// The connector component (`.wasm`).
        component: PathBuf,
        /// The instance's config file.
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
    #[command(after_help = example(
        "connector-host status --state platform.db\n  connector-host status --state platform.db --json"
    ))]
    Status {
        /// The state file to read; it is opened read-only and never changed.
        #[arg(long)]
        state: PathBuf,
        /// One JSON array of instances with every field in full (errors unshortened).
        #[arg(long)]
        json: bool,
    },
    /// Deletes one instance's state (cursor, KV, undelivered events, health) from a state
    /// file, leaving the others; its next run starts over with a new backfill.
    #[command(after_help = example(
        "connector-host forget --state platform.db --instance contoso-alerts --yes"
    ))]
    Forget {
        /// The state file.
        #[arg(long)]
        state: PathBuf,
        /// The instance to delete, as `status` names it.
        #[arg(long)]
        instance: String,
        /// Delete without asking: without it, `forget` only says what it would delete.
        #[arg(long)]
        yes: bool,
    },
    /// Replays a bundled fixture scenario through a connector (no cloud account needed).
    #[command(after_help = example(
        "connector-host demo\n  connector-host demo --list\n  connector-host demo --scenario call-budget"
    ))]
    Demo {
        /// The scenario: a directory name under fixtures/<connector>/ (`demo --list`
        /// shows them all).
        #[arg(long, default_value = "incremental")]
        scenario: String,
        /// The connector whose scenario to replay (default: the one that has it, else
        /// defender-alerts).
        #[arg(long)]
        connector: Option<String>,
        /// List the scenarios of every connector with a line on each, then exit.
        #[arg(long)]
        list: bool,
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

/// The exit codes, at the end of `connector-host --help`.
const EXIT_CODES: &str = "Exit codes:
  0  ok
  1  the connector reported an error (authentication, a failed poll, a failed validation,
     a replay that did not match), or a host failure
  2  usage or config error: a bad flag or file, a config the connector refuses, a state
     file that cannot be used, an instance held by another process";

/// The example section of a command's `--help` (`text`: one command a line), with the
/// exit codes.
fn example(text: &str) -> String {
    format!("Examples:\n  {text}\n\n{EXIT_CODES}")
}

/// A failure of the CLI: the message (one line) and the exit code.
/// A network sink instead of `--out`.
#[derive(clap::Args)]
pub(crate) struct SinkArgs {
    /// Deliver to Kafka (`kafka://<broker>:<port>[,…]?topic=…`) or a webhook
    /// (`https://<host>/<path>[#format=ndjson&max_events=…]`; plain `http://` to loopback
    /// only) instead of --out; its secrets (`sink-hmac-secret`, `sink-bearer-token`,
    /// `sink-sasl-password`) come from the instance's secrets. See the README's sinks.
    #[arg(long, value_name = "URL")]
    pub(crate) sink: Option<String>,
    /// While the sink cannot take events, polls go on until this many wait in the state
    /// file, then pause until it takes them again.
    #[arg(long, default_value_t = crate::runner::DEFAULT_SINK_MAX_LAG, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) sink_max_lag: u64,
}

pub(crate) struct Failure(pub(crate) u8, pub(crate) String);

impl Failure {
    pub(crate) fn usage(m: impl std::fmt::Display) -> Self {
        Failure(2, m.to_string())
    }
    fn connector(m: impl std::fmt::Display) -> Self {
        Failure(1, m.to_string())
    }
}

impl From<crate::state::StateError> for Failure {
    fn from(e: crate::state::StateError) -> Self {
        Failure::usage(e)
    }
}

impl From<RunError> for Failure {
    fn from(e: RunError) -> Self {
        Failure(e.exit_code(), e.to_string())
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_level, cli.log_format);
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

fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(log_filter(level)))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(log_filter("info")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| crate::progress::LogWriter)
        .with_target(false);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

/// A plain level applies to this host's lines and the components' (`component` target);
/// the libraries (HTTP, TLS, wasmtime, cranelift) stay at `warn` below `trace`, so `debug`
/// shows what the host does rather than every socket read. Anything else is a tracing
/// filter as given.
fn log_filter(level: &str) -> String {
    match level.to_ascii_lowercase().as_str() {
        "trace" => "trace".into(),
        l @ ("debug" | "info") => format!("warn,connector_host={l},component={l}"),
        l @ ("warn" | "error" | "off") => l.into(),
        _ => level.into(),
    }
}

fn execute(cli: Cli) -> Result<(), Failure> {
    match &cli.command {
        Command::Status { state, json } => return crate::status::print(state, *json),
        Command::Forget {
            state,
            instance,
            yes,
        } => return forget(state, instance, *yes),
        _ => {}
    }
    let cache = cli.cache_dir.or_else(HostEngine::default_cache_dir);
    // `CONNECTOR_HOST_MEMORY_LAYOUT=reserved` runs on wasmtime's default layout (4 GiB per
    // linear memory), for measurements and the test that pushes past an address-space
    // limit; anything else is the compact layout (see `engine::MemoryLayout`).
    let layout = match std::env::var("CONNECTOR_HOST_MEMORY_LAYOUT").as_deref() {
        Ok("reserved") => crate::engine::MemoryLayout::Reserved,
        _ => crate::engine::MemoryLayout::Compact,
    };
    let engine =
        HostEngine::with_layout(cache, layout).map_err(|e| Failure::connector(format!("{e:#}")))?;
    let load = |path: &Path| engine.load(path).map_err(Failure::usage);
    match cli.command {
        Command::Describe { component } => {
            let component = load(&component)?;
            describe(&component)
        }
        Command::Inspect { component } => {
            let loaded = load(&component)?;
            inspect(&component, &loaded)
        }
        Command::Validate {
            component,
            config,
            secrets,
            limits,
        } => {
            if component.extension().is_some_and(|e| e == "json") {
                let checked =
                    crate::check::check_file(&engine, &component, &(&limits).into(), true, None);
                println!("{}", checked.line());
                return match crate::check::exit_code(std::slice::from_ref(&checked)) {
                    0 => Ok(()),
                    code => Err(Failure(code, String::new())),
                };
            }
            let config = config.ok_or_else(|| {
                Failure::usage(
                    "validate needs --config <file> with a component (or give it a serve \
                     instance file instead of the component)",
                )
            })?;
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
            sink,
            once,
            interval,
            instance,
            limits,
        } => {
            if interval == Some(0) {
                return Err(Failure::usage(
                    "--interval 0 would poll Graph without pause; give at least 1 second \
                     (omit it for the connector's suggestion)",
                ));
            }
            let component = load(&component)?;
            let named = instance.is_some();
            let mut setup = setup(
                component,
                &config,
                instance,
                &secrets,
                &state,
                (&limits).into(),
            )?;
            let source = std::path::absolute(&config).unwrap_or_else(|_| config.clone());
            setup.source = Some((source.display().to_string(), !named));
            setup.stop = stop_on_signals()?;
            setup.reopen = reopen_on_sighup()?;
            setup.sink_max_lag = sink.sink_max_lag;
            let (sink, out) = match &sink.sink {
                Some(url) => (
                    Sink::connect(url, &setup.secrets).map_err(Failure::usage)?,
                    PathBuf::from(url),
                ),
                None => (Sink::open(&out).map_err(Failure::usage)?, out),
            };
            let runner_name = setup.instance.clone();
            let mut runner = Runner::new(setup, sink)?;
            runner.progress = crate::progress::Progress::on_terminal();
            let interval = match interval {
                Some(s) => Duration::from_secs(s),
                None => Duration::from_secs(runner.poll_interval_secs().max(1).into()),
            };
            tracing::info!(instance = %runner_name, connector = runner.connector(),
                version = runner.version(), interval_secs = interval.as_secs(), once,
                state = %state.display(), out = %out.display(), "instance started");
            if interval < Duration::from_secs(MIN_QUIET_INTERVAL_SECS) && !once {
                tracing::warn!(
                    "--interval {}: polling Graph more often than every \
                     {MIN_QUIET_INTERVAL_SECS} s spends the tenant's API quota; the connector \
                     suggests {} s",
                    interval.as_secs(),
                    runner.poll_interval_secs()
                );
            }
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
            sink,
            metrics,
            metrics_public,
            rescan_secs,
            workers,
            lease_ttl,
            limits,
            check,
            online,
        } => {
            if check {
                let sink = sink.sink.as_deref();
                return check_instances(&engine, &instances, &(&limits).into(), online, sink);
            }
            let state = state.expect("clap requires --state without --check");
            let mut options = ServeOptions::new(instances, state);
            // `-` is stdout, as for `run` (not a directory named "-").
            options.out = out.filter(|o| o != Path::new("-"));
            options.sink = sink.sink;
            options.sink_max_lag = sink.sink_max_lag;
            options.rescan = Duration::from_secs(rescan_secs.max(1));
            options.workers = workers as usize;
            options.lease_ttl = Duration::from_secs(lease_ttl);
            options.limits = (&limits).into();
            serve(&engine, options, metrics.map(|a| (a, metrics_public)))
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
        Command::Status { .. } | Command::Forget { .. } => {
            unreachable!("handled above: needs no engine")
        }
        Command::Demo {
            scenario,
            connector,
            list,
        } => {
            let scenarios = crate::demo::scenarios().map_err(Failure::usage)?;
            if list {
                print!("{}", crate::demo::listing(&scenarios));
                return Ok(());
            }
            let chosen = crate::demo::choose(&scenarios, &scenario, connector.as_deref())
                .map_err(Failure::usage)?;
            eprintln!(
                "demo: {}/{}: {}",
                chosen.connector, chosen.name, chosen.description
            );
            let component = load(&crate::component_path(&chosen.connector))?;
            let fixture = chosen.dir.clone();
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
    metrics: Option<(std::net::SocketAddr, bool)>,
) -> Result<(), Failure> {
    let shutdown = stop_on_signals()?;
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone())
        .map_err(|e| Failure::connector(format!("installing signal handlers: {e}")))?;
    let loaded = options.loaded.clone();
    let mut server = Server::new(engine, options).map_err(Failure::usage)?;
    let metrics = match metrics {
        Some((addr, public)) => Some(
            crate::metrics::spawn(addr, public, server.state(), loaded, shutdown.clone())
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

/// `sink`: `serve --sink`, checked for every file that names no sink of its own.
fn check_instances(
    engine: &HostEngine,
    dir: &Path,
    limits: &Limits,
    online: bool,
    sink: Option<&str>,
) -> Result<(), Failure> {
    let files = crate::check::instance_files(dir).map_err(Failure::usage)?;
    if files.is_empty() {
        return Err(Failure::usage(format!(
            "{} holds no instance files (*.json)",
            dir.display()
        )));
    }
    let mut checked = Vec::new();
    for file in files {
        let c = crate::check::check_file(engine, &file, limits, online, sink);
        println!("{}", c.line());
        checked.push(c);
    }
    match crate::check::exit_code(&checked) {
        0 => Ok(()),
        code => Err(Failure(code, String::new())),
    }
}

/// Intervals below this are allowed (simulators, tests) but warned about.
const MIN_QUIET_INTERVAL_SECS: u64 = 30;

/// A counter raised by SIGHUP: the runners reopen their `--out` files (log rotation).
fn reopen_on_sighup() -> Result<Arc<std::sync::atomic::AtomicU64>, Failure> {
    let reopen = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let raised = reopen.clone();
    // SAFETY: the handler only increments an atomic, which is async-signal-safe.
    unsafe {
        signal_hook::low_level::register(signal_hook::consts::SIGHUP, move || {
            raised.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })
    }
    .map_err(|e| Failure::connector(format!("installing signal handlers: {e}")))?;
    Ok(reopen)
}

fn forget(state: &Path, instance: &str, yes: bool) -> Result<(), Failure> {
    if !crate::state::is_postgres_url(state) && !state.exists() {
        return Err(Failure::usage(format!(
            "no state file at {}",
            state.display()
        )));
    }
    if !yes {
        let mut db = StateDb::open_for_reading(state).map_err(Failure::usage)?;
        let known = db
            .health()
            .map_err(Failure::usage)?
            .iter()
            .any(|r| r.instance == instance);
        if !known {
            return Err(Failure::usage(format!(
                "{} holds no instance {instance:?}; `connector-host status --state {}` lists them",
                state.display(),
                state.display()
            )));
        }
        return Err(Failure::usage(format!(
            "this deletes instance {instance:?} from {} (its cursor, state, undelivered events \
             and health; its next run starts over with a new backfill); pass --yes to do it",
            state.display()
        )));
    }
    let mut db = StateDb::open(state).map_err(Failure::usage)?;
    let gone = crate::lifecycle::forget(&mut db, instance).map_err(Failure::usage)?;
    println!(
        "forgot instance {instance}: its cursor, {} state keys, {} undelivered events and its health",
        gone.kv_keys, gone.events_undelivered
    );
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

/// `inspect`: what a component file is, with no external tool: its name and version (its
/// own `describe`) and the WIT package version of its imports and export.
fn inspect(path: &Path, component: &LoadedComponent) -> Result<(), Failure> {
    let state = StateDb::open(Path::new(":memory:")).map_err(Failure::usage)?;
    let setup = RunSetup::new(
        component.clone(),
        "inspect".into(),
        "{}".into(),
        Secrets::default(),
        Arc::new(Mutex::new(state)),
    );
    let m = setup.describe()?;
    let bytes =
        std::fs::read(path).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
    let wit = crate::inspect::wit_versions(component);
    println!("name: {}", m.name);
    println!("version: {}", m.version);
    println!(
        "wit: {}",
        if wit.is_empty() {
            "unknown".into()
        } else {
            wit.join(", ")
        }
    );
    println!(
        "sha256: {}",
        sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&bytes))
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
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
    let state = Arc::new(Mutex::new(StateDb::open(state).map_err(Failure::usage)?));
    // On a PostgreSQL store the instance is leased: renewed until the process ends.
    crate::fleet::spawn_renewer(&state, Arc::new(AtomicBool::new(false)))
        .map_err(|e| Failure::connector(format!("cannot start the lease renewal thread: {e}")))?;
    let mut setup = RunSetup::new(component, instance, config, secrets, state);
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
        let requests = step.requests;
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_argument_of_every_command_is_described() {
        let cli = Cli::command();
        let mut undescribed = Vec::new();
        for command in cli.get_subcommands() {
            assert!(
                command.get_after_help().is_some(),
                "{} has no example",
                command.get_name()
            );
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    undescribed.push(format!("{} {id}", command.get_name()));
                }
            }
        }
        assert!(undescribed.is_empty(), "undescribed: {undescribed:?}");
    }

    #[test]
    fn a_plain_level_leaves_the_libraries_at_warn() {
        assert_eq!(
            log_filter("debug"),
            "warn,connector_host=debug,component=debug"
        );
        assert_eq!(log_filter("trace"), "trace");
        assert_eq!(log_filter("info,ureq=debug"), "info,ureq=debug");
    }
}
