//! Wall time as the host and the components see it: the system clock in production, a
//! virtual clock in fixture replay, where waits advance time instead of sleeping.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

pub trait Clock: Send + Sync {
    fn now(&self) -> SystemTime;
    /// Waits `duration`, or less if `stop` is raised meanwhile.
    fn sleep(&self, duration: Duration, stop: &AtomicBool);
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
    fn sleep(&self, duration: Duration, stop: &AtomicBool) {
        // Short slices so SIGINT/SIGTERM end a long wait promptly.
        let slice = Duration::from_millis(100);
        let mut left = duration;
        while !left.is_zero() && !stop.load(Ordering::Relaxed) {
            let step = left.min(slice);
            std::thread::sleep(step);
            left -= step;
        }
    }
}

/// A clock that only moves when told to, or when someone sleeps on it.
#[derive(Clone)]
pub struct VirtualClock(Arc<Mutex<SystemTime>>);

impl VirtualClock {
    pub fn new(start: SystemTime) -> Self {
        VirtualClock(Arc::new(Mutex::new(start)))
    }
    pub fn set(&self, t: SystemTime) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = t;
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn sleep(&self, duration: Duration, _stop: &AtomicBool) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) += duration;
    }
}

/// The component's `wasi:clocks/wall-clock`, backed by the host's clock.
pub struct WasiWallClock(pub Arc<dyn Clock>);

impl wasmtime_wasi::HostWallClock for WasiWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_micros(1)
    }
    fn now(&self) -> Duration {
        self.0
            .now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
    }
}
