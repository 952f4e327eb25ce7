//! Where the writer thread leaves the answers to a caller thread's writes.
//!
//! Each caller thread (one per connection) owns one mailbox and may have many writes in
//! flight (a pipeline); the writer answers in submission order, so answers are simply queued.
//! Waiting parks the thread on a condition variable instead of spinning: with more connection
//! threads than cores, spinning waiters would take the CPU the writer needs to answer them.
//! The writer fills a batch's answers first and wakes each mailbox once, so a caller waiting
//! for a thousand answers wakes up once, not a thousand times.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::{StoreError, WriteOutcome};

pub(crate) type Reply = Result<WriteOutcome, StoreError>;

#[derive(Default)]
pub(crate) struct Mailbox {
    replies: Mutex<VecDeque<Reply>>,
    arrived: Condvar,
}

thread_local! {
    /// The calling thread's mailbox.
    static MAILBOX: Arc<Mailbox> = Arc::default();
}

impl Mailbox {
    /// The calling thread's mailbox.
    pub(crate) fn current() -> Arc<Mailbox> {
        MAILBOX.with(Arc::clone)
    }

    /// Queues an answer without waking the owner (see [`Mailbox::wake`]).
    pub(crate) fn put(&self, reply: Reply) {
        self.replies.lock().push_back(reply);
    }

    pub(crate) fn wake(&self) {
        self.arrived.notify_one();
    }

    /// Waits for the next `count` answers and appends them to `out`. While waiting, checks
    /// `writer_alive` every second: a writer that has died will never answer, and the missing
    /// answers become [`StoreError::Closed`].
    pub(crate) fn take(&self, count: usize, out: &mut Vec<Reply>, writer_alive: impl Fn() -> bool) {
        let mut replies = self.replies.lock();
        while replies.len() < count {
            let timed_out = self.arrived.wait_for(&mut replies, Duration::from_secs(1)).timed_out();
            if timed_out && replies.len() < count && !writer_alive() {
                break;
            }
        }
        let available = replies.len().min(count);
        out.extend(replies.drain(..available));
        out.extend((available..count).map(|_| Err(StoreError::Closed)));
    }
}

/// Wakes each distinct mailbox in `mailboxes` once.
pub(crate) fn wake_all(mailboxes: &mut Vec<Arc<Mailbox>>) {
    mailboxes.sort_unstable_by_key(|m| Arc::as_ptr(m) as usize);
    mailboxes.dedup_by(|a, b| Arc::ptr_eq(a, b));
    for mailbox in mailboxes.drain(..) {
        mailbox.wake();
    }
}
