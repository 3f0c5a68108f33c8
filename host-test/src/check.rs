//! `serve --check <dir>` and `validate <instance file>`: whether each instance file of a
//! `serve` directory would start, without starting it: the file's format, its component,
//! its secrets (present, and under the names the connector reads), its network sink's URL
//! (parsed as `serve` parses it, not connected) and its config as the component sees it;
//! with `online`, the component's `validate` against the tenant too.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::engine::{HostEngine, Limits};
use crate::runner::{RunError, RunSetup};
use crate::secrets::Secrets;
use crate::serve::{InstanceFile, instance_name, read_instance_file};
use crate::sink::SinkConfig;
use crate::state::StateDb;

/// What the check of one instance file came to.
pub struct Checked {
    pub name: String,
    pub file: PathBuf,
    /// `Ok(connector and version)` or the first problem found.
    pub outcome: Result<String, Problem>,
}

/// A problem of an instance file: one the operator fixes in the files (`offline`), or one
/// the tenant's `validate` reported.
pub enum Problem {
    File(String),
    Tenant(String),
}

impl Checked {
    /// One line: `ok   <name>  <connector> <version>` or `FAIL <name>  <file>: <why>`.
    pub fn line(&self) -> String {
        match &self.outcome {
            Ok(what) => format!("ok   {:<24} {what}", self.name),
            Err(Problem::File(why) | Problem::Tenant(why)) => {
                format!("FAIL {:<24} {}: {why}", self.name, self.file.display())
            }
        }
    }
}

/// The `*.json` files directly in `dir`, by path.
pub fn instance_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read the instances directory {}: {e}", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    Ok(paths)
}

/// Checks one instance file; paths in it are relative to its directory. `sink`: `serve`'s
/// `--sink`, for a file that names no sink of its own.
pub fn check_file(
    engine: &HostEngine,
    file: &Path,
    limits: &Limits,
    online: bool,
    sink: Option<&str>,
) -> Checked {
    let bytes = std::fs::read(file).unwrap_or_default();
    let stem = file
        .file_stem()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let name = instance_name(file, &bytes).unwrap_or(stem);
    let outcome = check(engine, file, &name, limits, online, sink);
    Checked {
        name,
        file: file.to_path_buf(),
        outcome,
    }
}

fn check(
    engine: &HostEngine,
    file: &Path,
    name: &str,
    limits: &Limits,
    online: bool,
    sink: Option<&str>,
) -> Result<String, Problem> {
    let bytes = std::fs::read(file).map_err(|e| Problem::File(format!("cannot read it: {e}")))?;
    instance_name(file, &bytes).map_err(Problem::File)?;
    let spec: InstanceFile = read_instance_file(file).map_err(|e| Problem::File(e.to_string()))?;
    let base = file.parent().unwrap_or(Path::new("."));
    let component = engine
        .load(&base.join(&spec.component))
        .map_err(|e| Problem::File(e.to_string()))?;
    let secrets = match &spec.secrets {
        Some(path) => {
            Secrets::from_file(&base.join(path)).map_err(|e| Problem::File(e.to_string()))?
        }
        None => Secrets::from_env_for(name),
    };
    // The URL and its options as `serve` would read them (the same parse), its secrets
    // from the instance's; nothing is connected.
    let sink = match spec.sink.as_deref().or(sink) {
        Some(url) => Some(
            SinkConfig::parse(url, &secrets)
                .map_err(|e| Problem::File(e.to_string()))?
                .describe(),
        ),
        None => None,
    };
    let state = StateDb::open(Path::new(":memory:")).map_err(|e| Problem::File(e.to_string()))?;
    let mut setup = RunSetup::new(
        component,
        name.to_string(),
        serde_json::Value::Object(spec.config).to_string(),
        secrets,
        Arc::new(Mutex::new(state)),
    );
    setup.limits = spec.limits.apply(limits.clone());
    let metadata = setup.describe().map_err(|e| Problem::File(e.to_string()))?;
    setup
        .secrets
        .check_names(&metadata.secrets)
        .map_err(|e| Problem::File(e.to_string()))?;
    let missing: Vec<&String> = metadata
        .secrets
        .iter()
        .filter(|s| setup.secrets.get(s).is_none())
        .collect();
    if !missing.is_empty() {
        let env = missing
            .iter()
            .map(|s| {
                format!(
                    "CONNECTOR_SECRET_{}_{}",
                    crate::secrets::env_name(name),
                    crate::secrets::env_name(s)
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        return Err(Problem::File(format!(
            "no secret {missing:?}: name a secrets file (\"secrets\") or set {env}"
        )));
    }
    match setup.configured_instance() {
        Ok(_) => {}
        Err(RunError::Config(m)) => return Err(Problem::File(format!("config refused: {m}"))),
        Err(e) => return Err(Problem::File(e.to_string())),
    }
    let mut what = format!("{} {}", metadata.name, metadata.version);
    if let Some(sink) = sink {
        what = format!("{what}, to {sink}");
    }
    if !online {
        return Ok(what);
    }
    match setup.validate() {
        Ok(line) if line == "ok" => Ok(format!("{what}, validated against the tenant")),
        Ok(line) => Err(Problem::Tenant(line)),
        Err(e) => Err(Problem::Tenant(e.to_string())),
    }
}

/// The exit code of a check of many files: 0 all ok, 2 a file to fix, else 1 (a tenant's
/// `validate` failed).
pub fn exit_code(checked: &[Checked]) -> u8 {
    let file = checked
        .iter()
        .any(|c| matches!(c.outcome, Err(Problem::File(_))));
    let tenant = checked
        .iter()
        .any(|c| matches!(c.outcome, Err(Problem::Tenant(_))));
    match (file, tenant) {
        (true, _) => 2,
        (false, true) => 1,
        _ => 0,
    }
}
