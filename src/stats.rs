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
}

impl Default for ServerStats {
    fn default() -> Self {
        ServerStats {
            started: Instant::now(),
            curr_connections: AtomicU64::new(0),
            total_connections: AtomicU64::new(0),
            rejected_connections: AtomicU64::new(0),
            commands: AtomicU64::new(0),
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
