//! Server-wide counters behind `stats`, shared by every connection of every listener.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Relaxed atomic counters: each is exact on its own, and `stats` need not be a consistent
/// snapshot across them.
#[derive(Debug)]
pub struct ServerStats {
    pub started: Instant,
    pub curr_connections: AtomicU64,
    pub total_connections: AtomicU64,
    pub rejected_connections: AtomicU64,
    pub commands: AtomicU64,
    /// memcached's per-command counters, reported by the memcached listener's `stats`.
    pub cache: CacheCounters,
}

/// The counters memcached's `stats` reports, with memcached's names and meanings: `cmd_get`
/// counts keys asked for, `cas_badval` CAS mismatches, and so on.
#[derive(Debug, Default)]
pub struct CacheCounters {
    pub cmd_get: AtomicU64,
    pub cmd_set: AtomicU64,
    pub cmd_flush: AtomicU64,
    pub cmd_touch: AtomicU64,
    pub cmd_meta: AtomicU64,
    pub get_hits: AtomicU64,
    pub get_misses: AtomicU64,
    pub delete_hits: AtomicU64,
    pub delete_misses: AtomicU64,
    pub incr_hits: AtomicU64,
    pub incr_misses: AtomicU64,
    pub decr_hits: AtomicU64,
    pub decr_misses: AtomicU64,
    pub cas_hits: AtomicU64,
    pub cas_misses: AtomicU64,
    pub cas_badval: AtomicU64,
    pub touch_hits: AtomicU64,
    pub touch_misses: AtomicU64,
    pub store_too_large: AtomicU64,
}

impl Default for ServerStats {
    fn default() -> Self {
        ServerStats {
            started: Instant::now(),
            curr_connections: AtomicU64::new(0),
            total_connections: AtomicU64::new(0),
            rejected_connections: AtomicU64::new(0),
            commands: AtomicU64::new(0),
            cache: CacheCounters::default(),
        }
    }
}

impl ServerStats {
    pub fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn read(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
