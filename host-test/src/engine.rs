//! The wasmtime engine shared by every instance, the compiled-component cache, and the
//! limits each instance runs under.
//!
//! Compiling a component takes about a second; a restart should not pay it again, so the
//! compiled artifact is cached on disk, keyed by the component's SHA-256 and the engine's
//! compatibility hash (wasmtime version and settings).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine};

use crate::bindings::{ConnectorWorld, ConnectorWorldPre, WIT_PACKAGE};
use crate::imports::HostState;

/// How often the engine's epoch advances; the granularity of execution deadlines.
pub const TICK: Duration = Duration::from_millis(10);

/// What one instance may use. Each limit is a CLI flag.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Linear memory of the component.
    pub memory_bytes: usize,
    /// Time the component itself may run per call (time in host calls excluded).
    pub deadline: Duration,
    /// Upper bound for any one HTTP exchange, whatever the component asks.
    pub http_timeout: Duration,
    /// Largest HTTP response body.
    pub http_body_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 256 << 20,
            deadline: Duration::from_secs(60),
            http_timeout: Duration::from_secs(120),
            http_body_bytes: 64 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read the component {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "{path} is not a WebAssembly component this host can run: {cause:#}. \
         Build connectors with `cargo build --release --target wasm32-wasip2`"
    )]
    NotAComponent {
        path: PathBuf,
        cause: wasmtime::Error,
    },
    #[error(
        "{path} was built for WIT package {found}; this host supports {WIT_PACKAGE}. \
         Use a connector-host release that supports {found}, or rebuild the connector"
    )]
    WitVersion { path: PathBuf, found: String },
    #[error("{path} does not fit this host's imports: {cause:#}")]
    Link {
        path: PathBuf,
        cause: wasmtime::Error,
    },
}

/// The engine, its linker and a ticker thread that drives execution deadlines.
pub struct HostEngine {
    engine: Engine,
    linker: Linker<HostState>,
    cache_dir: Option<PathBuf>,
}

/// A component ready to instantiate (imports resolved once, `InstancePre`).
#[derive(Clone)]
pub struct LoadedComponent {
    pub(crate) engine: Engine,
    pub(crate) pre: ConnectorWorldPre<HostState>,
    pub path: PathBuf,
}

impl HostEngine {
    /// `cache_dir`: where compiled components are kept; `None` compiles every time.
    pub fn new(cache_dir: Option<PathBuf>) -> wasmtime::Result<Self> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        #[cfg(feature = "profiling")]
        if std::env::var_os("CONNECTOR_HOST_PERFMAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        ConnectorWorld::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(TICK);
                }
            })?;
        Ok(HostEngine {
            engine,
            linker,
            cache_dir,
        })
    }

    /// `$CONNECTOR_HOST_CACHE`, else `$XDG_CACHE_HOME/connector-host`, else
    /// `~/.cache/connector-host`.
    pub fn default_cache_dir() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("CONNECTOR_HOST_CACHE") {
            return Some(dir.into());
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(base.join("connector-host"))
    }

    pub fn load(&self, path: &Path) -> Result<LoadedComponent, LoadError> {
        let bytes = std::fs::read(path).map_err(|cause| LoadError::Read {
            path: path.to_path_buf(),
            cause,
        })?;
        let component = self.compile_cached(path, &bytes)?;
        check_wit_version(&self.engine, path, &component)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .and_then(ConnectorWorldPre::new)
            .map_err(|cause| LoadError::Link {
                path: path.to_path_buf(),
                cause,
            })?;
        Ok(LoadedComponent {
            engine: self.engine.clone(),
            pre,
            path: path.to_path_buf(),
        })
    }

    fn compile_cached(&self, path: &Path, bytes: &[u8]) -> Result<Component, LoadError> {
        let not_a_component = |cause| LoadError::NotAComponent {
            path: path.to_path_buf(),
            cause,
        };
        let Some(dir) = &self.cache_dir else {
            return Component::from_binary(&self.engine, bytes).map_err(not_a_component);
        };
        let mut compat = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut compat);
        let key = format!("{:x}-{:016x}", Sha256::digest(bytes), compat.finish());
        let cached = dir.join(format!("{key}.cwasm"));
        if cached.exists() {
            // SAFETY: the file is one this host wrote from a component it compiled itself
            // (named by that component's hash); wasmtime checks its engine compatibility.
            match unsafe { Component::deserialize_file(&self.engine, &cached) } {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!(file = %cached.display(), "recompiling: cached component unusable: {e:#}")
                }
            }
        }
        let component = Component::from_binary(&self.engine, bytes).map_err(not_a_component)?;
        // The cache is an optimisation: failing to write it is worth a warning only.
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(dir)?;
            let serialized = component.serialize().map_err(std::io::Error::other)?;
            let tmp = dir.join(format!("{key}.{}.tmp", std::process::id()));
            std::fs::write(&tmp, serialized)?;
            std::fs::rename(&tmp, &cached)
        };
        if let Err(e) = write() {
            tracing::warn!(dir = %dir.display(), "cannot cache the compiled component: {e}");
        }
        Ok(component)
    }
}

/// Refuses a component built against another major/minor of the WIT package, with both
/// versions named (instead of the linker's "no matching implementation").
fn check_wit_version(engine: &Engine, path: &Path, component: &Component) -> Result<(), LoadError> {
    let supported = WIT_PACKAGE.rsplit_once('@').map(|(_, v)| v).unwrap_or("");
    let major_minor = |v: &str| v.splitn(3, '.').take(2).collect::<Vec<_>>().join(".");
    let ty = component.component_type();
    for (name, _) in ty.imports(engine) {
        let Some(rest) = name.strip_prefix("secops:connector/") else {
            continue;
        };
        let version = rest.rsplit_once('@').map(|(_, v)| v).unwrap_or("");
        if major_minor(version) != major_minor(supported) {
            return Err(LoadError::WitVersion {
                path: path.to_path_buf(),
                found: format!("secops:connector@{version}"),
            });
        }
    }
    Ok(())
}
