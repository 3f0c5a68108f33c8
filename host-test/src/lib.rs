//! The wasmtime host for the security connector components.
//!
//! - [`engine`]: the wasmtime engine, the compiled-component cache and per-instance limits;
//!   [`instance`]: one live component instance and the calls into it.
//! - [`imports`]: one module per imported WIT interface (`http`, `secrets`, `kv`, `emit`, `log`);
//!   [`wit`]: one module per WIT version (0.1, 0.2), older ones converted onto the latest.
//! - [`state`]: SQLite state (cursor, KV, outbox) and [`sink`]: delivery of event lines;
//!   [`holder`]: one process at a time per instance; [`lifecycle`]: where an instance came
//!   from, its removal and `forget`.
//! - [`runner`]: the poll loop and its delivery guarantees; [`fixture`]: replay of recorded
//!   HTTP exchanges, [`record`]: recording them from a real tenant, scrubbed; [`serve`]: many
//!   instances in one process, [`check`] its `--check` of instance files, [`metrics`] their
//!   Prometheus text; [`progress`]: `run`'s
//!   progress line; [`status`]: the `status` table; [`cli`]: the `connector-host` command line.

pub mod bindings;
pub mod check;
pub mod cli;
pub mod clock;
pub mod demo;
pub mod engine;
pub mod fixture;
pub mod fleet;
pub mod holder;
pub mod imports;
pub mod inspect;
pub mod instance;
pub mod lifecycle;
pub mod metrics;
pub mod network;
pub mod progress;
pub mod record;
pub mod redact;
pub mod runner;
pub mod scheduler;
pub mod secrets;
pub mod serve;
pub mod sink;
pub mod state;
pub mod status;
pub mod wit;

use std::path::PathBuf;

/// Where the build script put the release components of this workspace.
pub fn component_path(connector: &str) -> PathBuf {
    PathBuf::from(env!("COMPONENT_DIR")).join(format!("{}.wasm", connector.replace('-', "_")))
}

/// The bundled fixtures (`fixtures/` at the workspace root).
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}
