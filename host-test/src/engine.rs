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

use crate::imports::HostState;
use crate::wit::{ConnectorPre, Detected, WitVersion, detect};

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
        "{path} was built for WIT package {found}; this host supports {supported}. \
         Use a connector-host release that supports {found}, or rebuild the connector",
        supported = WitVersion::supported()
    )]
    WitVersion { path: PathBuf, found: String },
    #[error("{path} does not fit this host's imports: {cause:#}")]
    Link {
        path: PathBuf,
        cause: wasmtime::Error,
    },
}

/// How the engine lays out linear memories: what each store in flight costs in address
/// space, and what a poll costs in bounds checks. Measured in `BENCHMARKS.md` (`cargo bench
/// -p connector-host -- memory-layouts`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryLayout {
    /// wasmtime's default on 64-bit hosts: a 4 GiB reservation and a 32 MiB guard per
    /// linear memory, so compiled code needs no bounds checks. Each store in flight
    /// reserves over 4 GiB of address space: the reservations that aborted `serve` at
    /// 6,800 instances (issue 18), and a poll that a `ulimit -v` refuses.
    Reserved,
    /// What `serve` and `run` use: no up-front reservation, a 64 KiB guard and room for
    /// 16 MiB of growth; compiled code checks bounds explicitly. A store reserves about
    /// what its memory uses, so polls in flight fit any address-space limit that fits their
    /// memory, and a memory that cannot be mapped fails that one poll (health code `host`).
    /// The bounds checks did not show against the machine's noise (a 2,000-alert poll:
    /// 44 ms compact, 48 ms reserved), and a poll waits far longer on Graph. 32 stores
    /// in flight: +550 MiB of address space, against +130 GiB reserved.
    Compact,
    /// The pooling allocator with this many slots (the worker pool's size): memories and
    /// instances are reserved once at start and reused; a poll beyond the slots fails to
    /// instantiate (cleanly: "maximum concurrent limit of 32 … reached"). Measured, not
    /// used: no faster here (841 against 880 us per instantiate, 43 against 44 ms per
    /// poll), its reservation (slots x 4 GiB) is taken at start, and every limit (the
    /// largest `memory_mb` of any instance file) must be known when the engine is made.
    Pooling(u32),
}

/// The engine, a linker per WIT version and a ticker thread that drives execution
/// deadlines.
pub struct HostEngine {
    engine: Engine,
    /// One per WIT version: each links its version's import names (`…/http@0.1.0`).
    linkers: Vec<(WitVersion, Linker<HostState>)>,
    cache_dir: Option<PathBuf>,
}

/// A component ready to instantiate (imports resolved once, `InstancePre`).
#[derive(Clone)]
pub struct LoadedComponent {
    pub(crate) engine: Engine,
    pub(crate) pre: ConnectorPre,
    pub path: PathBuf,
}

impl LoadedComponent {
    /// The WIT version the component was built for.
    pub fn wit_version(&self) -> WitVersion {
        self.pre.version()
    }
}

impl HostEngine {
    /// `cache_dir`: where compiled components are kept; `None` compiles every time.
    pub fn new(cache_dir: Option<PathBuf>) -> wasmtime::Result<Self> {
        Self::with_layout(cache_dir, MemoryLayout::Compact)
    }

    pub fn with_layout(cache_dir: Option<PathBuf>, layout: MemoryLayout) -> wasmtime::Result<Self> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        match layout {
            MemoryLayout::Reserved => {}
            MemoryLayout::Compact => {
                config.memory_reservation(0);
                config.memory_guard_size(64 << 10);
                config.memory_reservation_for_growth(16 << 20);
            }
            MemoryLayout::Pooling(slots) => {
                let mut pool = wasmtime::PoolingAllocationConfig::new();
                pool.total_component_instances(slots)
                    .total_core_instances(slots * 8)
                    .total_memories(slots * 2)
                    .total_tables(slots * 8)
                    .max_memory_size(Limits::default().memory_bytes);
                config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
            }
        }
        #[cfg(feature = "profiling")]
        if std::env::var_os("CONNECTOR_HOST_PERFMAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config)?;
        let mut linkers = Vec::new();
        for version in WitVersion::ALL {
            let mut linker = Linker::new(&engine);
            version.add_to_linker(&mut linker)?;
            linkers.push((version, linker));
        }
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
            linkers,
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
        let version = match detect(&self.engine, &component) {
            Detected::Known(v) => v,
            Detected::Unknown(found) => {
                return Err(LoadError::WitVersion {
                    path: path.to_path_buf(),
                    found,
                });
            }
            // Not a connector at all: the latest linker names what is missing.
            Detected::None => *WitVersion::ALL.last().expect("a version"),
        };
        let linker = self
            .linkers
            .iter()
            .find(|(v, _)| *v == version)
            .map(|(_, l)| l)
            .expect("a linker per version");
        let pre = linker
            .instantiate_pre(&component)
            .and_then(|pre| ConnectorPre::new(version, pre))
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
