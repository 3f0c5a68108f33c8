//! Shared by the end-to-end tests: the built component (compiled once per test binary),
//! the CLI binary, and the Graph simulator.

#![allow(dead_code)]

pub mod graph_sim;
pub mod ocsf;
pub mod postgres;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

use connector_host::engine::{HostEngine, LoadedComponent};

/// A built connector component, compiled once per test binary (and cached on disk for
/// the other test binaries and the CLI runs).
pub fn component(connector: &str) -> LoadedComponent {
    static ENGINE: OnceLock<HostEngine> = OnceLock::new();
    static LOADED: Mutex<BTreeMap<String, LoadedComponent>> = Mutex::new(BTreeMap::new());
    let engine = ENGINE.get_or_init(|| HostEngine::new(Some(cache_dir())).expect("engine"));
    let mut loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    loaded
        .entry(connector.to_string())
        .or_insert_with(|| {
            engine
                .load(&connector_host::component_path(connector))
                .unwrap_or_else(|e| panic!("the built {connector} component loads: {e}"))
        })
        .clone()
}

/// One compiled-component cache for all tests of this build.
pub fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("component-cache")
}

pub fn alerts_wasm() -> PathBuf {
    component_wasm("defender-alerts")
}

pub fn component_wasm(connector: &str) -> PathBuf {
    connector_host::component_path(connector)
}

/// `connector-host <args>` with the test cache and a fixed environment.
pub fn host(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_connector-host"));
    cmd.args(args)
        .env("CONNECTOR_HOST_CACHE", cache_dir())
        .env_remove("RUST_LOG");
    cmd
}

pub fn run_host(args: &[&str]) -> Output {
    host(args).output().expect("run connector-host")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn write_json(path: &Path, value: &serde_json::Value) {
    std::fs::write(path, serde_json::to_vec_pretty(value).unwrap()).unwrap();
}

/// Event lines of an `--out` file, parsed; each line's OCSF form is validated against
/// its class schema on the way.
pub fn read_lines(path: &Path) -> Vec<serde_json::Value> {
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect();
    lines.iter().for_each(ocsf::assert_valid);
    lines
}

/// Asserts `out` holds the current version of every alert, no (id, version) twice, no
/// version the simulator never served, and `seq` contiguous from 1.
pub fn assert_exactly_once(out: &Path, sim: &graph_sim::GraphSim) {
    let lines = read_lines(out);
    let delivered: Vec<(String, String)> = lines
        .iter()
        .map(|l| {
            (
                l["id"].as_str().unwrap().into(),
                l["version"].as_str().unwrap().into(),
            )
        })
        .collect();
    let unique: BTreeSet<_> = delivered.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        delivered.len(),
        "an (id, version) was delivered twice"
    );
    let missing: Vec<_> = sim.latest().difference(&unique).cloned().collect();
    assert!(missing.is_empty(), "current versions missing: {missing:?}");
    let extra: Vec<_> = unique.difference(&sim.ground_truth()).cloned().collect();
    assert!(extra.is_empty(), "never served: {extra:?}");
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=lines.len() as u64).collect::<Vec<_>>(),
        "seq contiguous"
    );
}

/// Neither the client secret nor any access token is in `haystack`.
pub fn assert_no_secrets(what: &str, haystack: &[u8], sim: &graph_sim::GraphSim) {
    let text = String::from_utf8_lossy(haystack);
    assert!(
        !text.contains(graph_sim::SECRET),
        "the client secret appears in {what}"
    );
    for token in sim.issued_tokens() {
        assert!(!text.contains(&token), "an access token appears in {what}");
    }
}

/// A tenant's files for CLI runs against a simulator: `tenant.json` (the simulator's
/// config), `secrets.json` (its secret), and the paths of `state.db` and `out.jsonl`.
pub struct Tenant {
    pub dir: tempfile::TempDir,
}

impl Tenant {
    pub fn new(sim: &graph_sim::GraphSim) -> Tenant {
        let dir = tempfile::tempdir().unwrap();
        write_json(&dir.path().join("tenant.json"), &sim.config(1));
        write_json(
            &dir.path().join("secrets.json"),
            &serde_json::json!({"client-secret": graph_sim::SECRET}),
        );
        Tenant { dir }
    }

    /// A tenant whose config selects all four Entra ID data types.
    pub fn with_all_entra_types(sim: &graph_sim::GraphSim) -> Tenant {
        let tenant = Tenant::new(sim);
        let mut config = sim.config(1);
        config["event_types"] = serde_json::json!([
            "directory_audits",
            "risky_sign_ins",
            "risky_users",
            "risk_detections"
        ]);
        write_json(&tenant.dir.path().join("tenant.json"), &config);
        tenant
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// `run <connector> --config --secrets --state --out [--once] <extra>`.
    pub fn run_args(&self, connector: &str, once: bool, extra: &[&str]) -> Vec<String> {
        let once: &[&str] = if once { &["--once"] } else { &[] };
        self.run_args_with(connector, &[], &[once, extra].concat())
    }

    /// `run <connector>` with this tenant's files, except where `files` names another file
    /// (in this tenant's directory, or an absolute path) for one of `--config`,
    /// `--secrets`, `--state` or `--out`; then `extra`.
    pub fn run_args_with(
        &self,
        connector: &str,
        files: &[(&str, &str)],
        extra: &[&str],
    ) -> Vec<String> {
        let mut args = vec![
            "run".to_string(),
            component_wasm(connector).display().to_string(),
        ];
        for (flag, default) in [
            ("--config", "tenant.json"),
            ("--secrets", "secrets.json"),
            ("--state", "state.db"),
            ("--out", "out.jsonl"),
        ] {
            let file = files
                .iter()
                .find(|(f, _)| *f == flag)
                .map_or(default, |(_, file)| *file);
            args.extend([flag.to_string(), self.path(file)]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// `run --once` of `connector` on this tenant's files; `extra` flags go last.
    pub fn run_once(&self, connector: &str, extra: &[&str]) -> Output {
        let args = self.run_args(connector, true, extra);
        run_host(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }
}

/// What of the client secret and the access tokens appears in `haystack`: "the client
/// secret", "an access token"; empty when nothing does.
pub fn secrets_in(haystack: &[u8], sim: &graph_sim::GraphSim) -> Vec<String> {
    let text = String::from_utf8_lossy(haystack);
    let mut found = vec![];
    if text.contains(graph_sim::SECRET) {
        found.push("the client secret".to_string());
    }
    if sim
        .issued_tokens()
        .iter()
        .any(|t| text.contains(t.as_str()))
    {
        found.push("an access token".to_string());
    }
    found
}

/// Kills a spawned host when the test ends, whatever way it ends: a failed assertion must
/// not leave a `serve` polling in the background for good.
pub struct KillOnDrop(pub u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // Exited and reaped already: the pid is gone (a reuse within a test is unlikely).
        unsafe {
            libc::kill(self.0 as i32, libc::SIGKILL);
        }
    }
}

/// The tenant changes between kills: three of its alerts (picked by `rng`) are updated
/// and two new ones, named after `tag`, arrive.
pub fn change_alerts(sim: &graph_sim::GraphSim, rng: &mut Rng, tag: &str) {
    let ids = sim.ids();
    let picked: Vec<String> = (0..3)
        .map(|_| ids[rng.below(ids.len() as u64) as usize].clone())
        .collect();
    sim.update_alerts(&picked);
    sim.add_alerts(tag, 2, std::time::Duration::from_secs(30));
}

/// A small xorshift generator for kill schedules: seeded from `var` when it is set (to
/// replay a failure), else from the clock; the seed is printed either way.
pub struct Rng(u64);

impl Rng {
    pub fn seeded(var: &str, what: &str) -> Rng {
        let seed = std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("{what}: {var}={seed}");
        Rng(seed)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// `args` (a tenant's `run` arguments) with their `--state` replaced by `state` when
/// given (a PostgreSQL URL), else as they are (the tenant's SQLite file).
pub fn with_state(mut args: Vec<String>, state: Option<&str>) -> Vec<String> {
    if let Some(url) = state {
        let at = args.iter().position(|a| a == "--state").unwrap() + 1;
        args[at] = url.to_string();
    }
    args
}

/// A host process that is killed and reaped when the test ends, a failed assertion
/// included, so no test leaves one running.
pub struct Running(pub std::process::Child);

impl Running {
    /// SIGTERM, then waits for the process to end; its exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        self.0.wait().expect("wait for the host process")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
