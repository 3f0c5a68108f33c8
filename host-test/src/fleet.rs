//! What a host of a fleet (a PostgreSQL state store) runs beside its instances: the
//! renewal of its leases and its heartbeat, every third of the lease TTL, so that a lease
//! outlives a missed renewal or two and expires within one TTL of the host's death.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::state::StateDb;

/// How soon an instance another host leases (or beyond this host's share) is tried again:
/// the bound on how long a released lease stays unowned.
pub const LEASE_RETRY: Duration = Duration::from_secs(1);

/// Starts the renewal thread of a PostgreSQL store (none for SQLite); it renews once at
/// once, so the host counts as live before it takes any lease, and ends when `stop` is
/// raised.
pub fn spawn_renewer(
    state: &Arc<Mutex<StateDb>>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<Option<JoinHandle<()>>> {
    let ttl = {
        let mut db = state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(pg) = db.postgres() else {
            return Ok(None);
        };
        renew(pg);
        pg.lease_ttl()
    };
    let state = state.clone();
    let every = ttl / 3;
    std::thread::Builder::new()
        .name("lease renewal".into())
        .spawn(move || {
            let mut next = Instant::now() + every;
            while !stop.load(Ordering::Relaxed) {
                if Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(50).min(every));
                    continue;
                }
                next = Instant::now() + every;
                let mut db = state.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(pg) = db.postgres() {
                    renew(pg);
                }
            }
        })
        .map(Some)
}

fn renew(pg: &mut crate::state::PgDb) {
    match pg.renew() {
        Ok(lost) => {
            for instance in lost {
                tracing::warn!(instance = %instance,
                    "lease lost (expired or taken over by another host): this host commits \
                     and delivers nothing more of it");
            }
        }
        Err(e) => tracing::warn!("cannot renew this host's leases: {e}"),
    }
}
