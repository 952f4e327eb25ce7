//! Wire protocols. Each one turns bytes into requests, runs them against the [`Store`] and
//! encodes the replies; the connection loop around them (`server::connection`) owns the
//! socket, the buffers and the timeouts.
//!
//! A session is fed everything buffered so far and consumes only whole requests, so pipelined
//! requests are answered in order with one write, and a request split across reads is simply
//! offered again once more bytes have arrived (mini-redis's *incomplete* outcome).
//!
//! [`Store`]: crate::store::Store

pub mod glob;
pub mod line;
pub mod memcache;

/// Reply bytes buffered before a session yields so that the connection writes them out; this
/// bounds a connection's memory when a client pipelines many large reads.
pub const FLUSH_THRESHOLD: usize = 64 * 1024;

/// Appends `n` in decimal: reply and request headers are built without a `format!` String.
pub fn push_decimal(mut n: u64, out: &mut Vec<u8>) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// What a call to [`Session::process`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Input bytes fully handled; the caller drops them from its buffer.
    pub consumed: usize,
    /// The session asks for the connection to be closed once the replies are written.
    pub close: bool,
}

/// One connection's protocol state.
pub trait Session: Send {
    /// Handles the complete requests at the start of `input`, appending replies to `out`.
    /// Stops early once `out` holds [`FLUSH_THRESHOLD`] bytes. A session must never leave
    /// more than its own line limit unconsumed, so the connection's buffer stays bounded.
    fn process(&mut self, input: &[u8], out: &mut Vec<u8>) -> Progress;

    /// Whether the session has more replies to produce for requests it already consumed (a
    /// listing of every key, answered [`FLUSH_THRESHOLD`] bytes at a time): the connection
    /// then writes out what it has and calls [`Session::process`] again, without waiting for
    /// input.
    fn has_more(&self) -> bool {
        false
    }

    /// Whether the connection has logged in, or needs no login (`--users` unset); until it
    /// has, the server holds it to the login deadline (`--login-timeout`).
    fn logged_in(&self) -> bool {
        true
    }
}

use std::sync::Arc;

use crate::auth::Users;
use crate::cluster::Cluster;
use crate::stats::ServerStats;
use crate::store::{Store, StoreError, WriteOp, WriteOutcome};

/// Limits every session enforces; each is a `kvserver` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_value_bytes: usize,
    pub max_line_bytes: usize,
}

/// What every session of every listener shares.
pub struct Context {
    pub store: Arc<Store>,
    pub stats: Arc<ServerStats>,
    pub limits: Limits,
    /// `--users`: when set, every connection must log in, and each user's role limits what
    /// they may do (see [`crate::auth`]).
    pub users: Option<Arc<Users>>,
    /// `--node-id`: this server is a member of a Raft cluster and every write goes through
    /// its log ([`crate::cluster`]); `None` for the single-node server.
    pub cluster: Option<Arc<Cluster>>,
}

impl Context {
    /// Carries out writes: through the cluster's log on a cluster node, else the local
    /// store's write group.
    pub fn write_many(&self, ops: Vec<WriteOp>) -> Vec<Result<WriteOutcome, StoreError>> {
        match &self.cluster {
            Some(cluster) => cluster.write_many(ops),
            None => self.store.write_many(ops),
        }
    }
}

/// The read fence of one session's batch of requests (see [`Cluster::read_fence`]): on a
/// cluster node with linearizable reads, the first read of every call to
/// [`Session::process`] waits for the fence, and the reads after it in that call are
/// covered by it — every request in the buffer was sent before the fence was asked, so any
/// write acknowledged before one of them was sent is committed before the fence. On the
/// single-node server it costs one branch.
#[derive(Debug, Default)]
pub struct ReadFence {
    passed: bool,
}

impl ReadFence {
    /// A new batch of requests begins: the next read needs a fence of its own.
    pub fn reset(&mut self) {
        self.passed = false;
    }

    /// Returns once reads may be served; an error (no leader) is the read's reply.
    pub fn pass(&mut self, ctx: &Context) -> Result<(), StoreError> {
        if self.passed {
            return Ok(());
        }
        if let Some(cluster) = &ctx.cluster {
            cluster.read_fence()?;
        }
        self.passed = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn push_decimal_writes_every_digit() {
        for n in [0, 7, 10, 4_294_967_295, u64::MAX] {
            let mut out = b"x".to_vec();
            super::push_decimal(n, &mut out);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
    }
}
