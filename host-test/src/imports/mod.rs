//! The host side of each imported WIT interface, one module each, and the per-instance
//! state they share ([`HostState`], the data of a wasmtime `Store`).

pub mod emit;
pub mod http;
pub mod kv;
pub mod log;
pub mod secrets;
pub mod token_cache;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings::Event;
use crate::clock::{Clock, WasiWallClock};
use crate::redact::Redactor;
use crate::secrets::Secrets;
use crate::state::StateDb;

pub use self::http::{AllowList, Transport};

/// What one instance's imports work with.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: Limiter,
    /// The instance's name: its state namespace and its name in logs and errors.
    pub instance: String,
    pub http: http::HttpContext,
    pub secrets: Secrets,
    pub kv: kv::KvContext,
    /// Events handed over through `emit` during the current call.
    pub emitted: Vec<Event>,
    pub redactor: Redactor,
    /// Time spent in host calls during the current export call: it does not count
    /// against the component's execution deadline.
    pub host_time: Duration,
    /// When the current export call started.
    pub call_started: Instant,
    /// The instance's entry in the process's token cache.
    pub tokens: token_cache::TokenContext,
    /// The host's time (virtual in fixture replay): the token cache's expiry.
    pub clock: Arc<dyn Clock>,
}

/// The memory cap of an instance. Growing past it traps (rather than failing the
/// allocation inside the component) so that the host can name the cause.
pub struct Limiter {
    pub memory_bytes: usize,
    pub hit: bool,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.hit = true;
            wasmtime::bail!("memory limit of {} MiB reached", self.memory_bytes >> 20);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// Everything an instance's imports are wired to.
pub struct Wiring {
    pub instance: String,
    pub transport: Arc<dyn Transport>,
    pub allow: AllowList,
    pub http_timeout_cap: Duration,
    pub http_body_cap: u64,
    pub secrets: Secrets,
    pub state: Arc<Mutex<StateDb>>,
    pub clock: Arc<dyn Clock>,
    pub redactor: Redactor,
    pub memory_bytes: usize,
    /// Seeded randomness (fixture replay: the same backoff jitter on every run).
    pub seeded_random: bool,
    pub tokens: token_cache::TokenContext,
}

impl HostState {
    pub fn new(w: Wiring) -> Self {
        // WASI for Rust's std only: no files, no environment, no sockets, no stdio. Time is
        // the host's (virtual in fixture replay).
        let mut wasi = WasiCtxBuilder::new();
        wasi.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .wall_clock(WasiWallClock(w.clock.clone()));
        let clock = w.clock.clone();
        if w.seeded_random {
            use rand::SeedableRng;
            wasi.secure_random(rand::rngs::StdRng::seed_from_u64(1))
                .insecure_random(rand::rngs::StdRng::seed_from_u64(2))
                .insecure_random_seed(3);
        }
        let wasi = wasi.build();
        HostState {
            wasi,
            table: ResourceTable::new(),
            limiter: Limiter {
                memory_bytes: w.memory_bytes,
                hit: false,
            },
            instance: w.instance.clone(),
            http: http::HttpContext {
                transport: w.transport,
                allow: w.allow,
                timeout_cap: w.http_timeout_cap,
                body_cap: w.http_body_cap,
                requests: 0,
                throttled: 0,
            },
            secrets: w.secrets,
            kv: kv::KvContext::new(w.instance, w.state),
            emitted: Vec::new(),
            redactor: w.redactor,
            host_time: Duration::ZERO,
            call_started: Instant::now(),
            tokens: w.tokens,
            clock,
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
