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

impl CacheCounters {
    /// Every counter with its memcached name, in the order `stats` lists them.
    pub fn named(&self) -> [(&'static str, &AtomicU64); 19] {
        [
            ("cmd_get", &self.cmd_get),
            ("cmd_set", &self.cmd_set),
            ("cmd_flush", &self.cmd_flush),
            ("cmd_touch", &self.cmd_touch),
            ("cmd_meta", &self.cmd_meta),
            ("get_hits", &self.get_hits),
            ("get_misses", &self.get_misses),
            ("delete_misses", &self.delete_misses),
            ("delete_hits", &self.delete_hits),
            ("incr_misses", &self.incr_misses),
            ("incr_hits", &self.incr_hits),
            ("decr_misses", &self.decr_misses),
            ("decr_hits", &self.decr_hits),
            ("cas_misses", &self.cas_misses),
            ("cas_hits", &self.cas_hits),
            ("cas_badval", &self.cas_badval),
            ("touch_hits", &self.touch_hits),
            ("touch_misses", &self.touch_misses),
            ("store_too_large", &self.store_too_large),
        ]
    }

    /// memcached's `stats reset`: every counter back to 0.
    pub fn reset(&self) {
        for (_, counter) in self.named() {
            counter.store(0, Ordering::Relaxed);
        }
    }
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
