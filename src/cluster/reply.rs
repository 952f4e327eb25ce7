//! A one-shot reply from the raft thread to the connection thread that waits for it.
//!
//! A crossbeam channel's receiver spins and then calls `sched_yield` a few times before it
//! sleeps. On a cluster node every write and every linearizable read waits like this, and
//! on a busy core the yields only hand the CPU around the waiting threads instead of to
//! the raft thread that will answer (`strace` of a member under 50 writing connections:
//! 0.7 `sched_yield` per write, most of its system calls). This slot sleeps at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

enum State<T> {
    Waiting,
    Sent(T),
    /// The sending side was dropped without an answer.
    Dropped,
}

struct Slot<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

/// The answering side; dropping it unanswered wakes the waiter with an error.
pub struct Replier<T> {
    slot: Arc<Slot<T>>,
}

/// The waiting side.
pub struct Answer<T> {
    slot: Arc<Slot<T>>,
}

/// A new slot: what the raft thread answers with, and what the asker waits on.
pub fn slot<T>() -> (Replier<T>, Answer<T>) {
    let slot = Arc::new(Slot { state: Mutex::new(State::Waiting), ready: Condvar::new() });
    (Replier { slot: Arc::clone(&slot) }, Answer { slot })
}

impl<T> Replier<T> {
    /// Answers (a waiter that already gave up does not see it).
    pub fn send(&self, value: T) {
        *self.slot.state.lock() = State::Sent(value);
        self.slot.ready.notify_one();
    }
}

impl<T> Drop for Replier<T> {
    fn drop(&mut self) {
        let mut state = self.slot.state.lock();
        if matches!(*state, State::Waiting) {
            *state = State::Dropped;
            self.slot.ready.notify_one();
        }
    }
}

impl<T> Answer<T> {
    /// The answer, or `None` if none came within `timeout` or the replier was dropped.
    pub fn recv_timeout(self, timeout: Duration) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut state = self.slot.state.lock();
        loop {
            match std::mem::replace(&mut *state, State::Waiting) {
                State::Sent(value) => return Some(value),
                State::Dropped => return None,
                State::Waiting => {}
            }
            if self.slot.ready.wait_until(&mut state, deadline).timed_out() {
                return match std::mem::replace(&mut *state, State::Waiting) {
                    State::Sent(value) => Some(value),
                    _ => None,
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_arrives_across_threads_and_a_dropped_replier_ends_the_wait() {
        let (replier, answer) = slot();
        std::thread::spawn(move || replier.send(7));
        assert_eq!(answer.recv_timeout(Duration::from_secs(5)), Some(7));

        let (replier, answer) = slot::<u8>();
        let started = Instant::now();
        std::thread::spawn(move || drop(replier));
        assert_eq!(answer.recv_timeout(Duration::from_secs(5)), None);
        assert!(started.elapsed() < Duration::from_secs(4), "waited for the timeout");

        let (_replier, answer) = slot::<u8>();
        let started = Instant::now();
        assert_eq!(answer.recv_timeout(Duration::from_millis(50)), None);
        assert!(started.elapsed() >= Duration::from_millis(50));
    }
}
