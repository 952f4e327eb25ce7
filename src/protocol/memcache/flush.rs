//! `flush_all <delay>`: flush the store once the delay has passed.
//!
//! memcached marks every item stored before the deadline invalid when the deadline comes,
//! and keeps only one deadline: a later `flush_all` replaces a pending one. textkv does the
//! same by writing a plain flush at the deadline (which removes exactly the items stored
//! before it). One background thread serves every store in the process; it is started by the
//! first delayed flush and then sleeps on a condition variable. A pending delayed flush lives
//! in memory only: a restart before its deadline forgets it.

use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::store::{Store, WriteOp};

struct Pending {
    store: Weak<Store>,
    at: Instant,
}

#[derive(Default)]
struct Scheduler {
    pending: Mutex<Vec<Pending>>,
    wake: Condvar,
}

fn scheduler() -> &'static Scheduler {
    static SCHEDULER: OnceLock<&'static Scheduler> = OnceLock::new();
    SCHEDULER.get_or_init(|| {
        let scheduler: &'static Scheduler = Box::leak(Box::default());
        let spawned = std::thread::Builder::new().name("delayed-flush".into()).spawn(move || scheduler.run());
        if let Err(e) = spawned {
            log::error!("cannot start the delayed flush thread, delayed flush_all will not run: {e}");
        }
        scheduler
    })
}

/// Cancels any delayed flush pending for `store` and, with a delay, schedules a new one.
pub fn schedule(store: &Arc<Store>, delay: Option<Duration>) {
    let scheduler = scheduler();
    let mut pending = scheduler.pending.lock();
    pending.retain(|p| !std::ptr::eq(p.store.as_ptr(), Arc::as_ptr(store)) && p.store.strong_count() > 0);
    if let Some(delay) = delay {
        pending.push(Pending { store: Arc::downgrade(store), at: Instant::now() + delay });
        scheduler.wake.notify_one();
    }
}

impl Scheduler {
    fn run(&self) {
        let mut pending = self.pending.lock();
        loop {
            let now = Instant::now();
            let (due, waiting): (Vec<Pending>, Vec<Pending>) = pending.drain(..).partition(|p| p.at <= now);
            *pending = waiting;
            if !due.is_empty() {
                // Flush without the lock, so new flush_all requests are not held up.
                drop(pending);
                for store in due.iter().filter_map(|p| p.store.upgrade()) {
                    match store.write(WriteOp::Flush) {
                        Ok(_) => log::info!("delayed flush_all done"),
                        Err(e) => log::error!("delayed flush_all failed: {e}"),
                    }
                }
                pending = self.pending.lock();
                continue;
            }
            let wait = pending.iter().map(|p| p.at - now).min().unwrap_or(Duration::from_secs(3600));
            self.wake.wait_for(&mut pending, wait);
        }
    }
}
