//! Wire protocols. Each one turns bytes into requests, runs them against the [`Store`] and
//! encodes the replies; the connection loop around them (`server::connection`) owns the
//! socket, the buffers and the timeouts.
//!
//! A session is fed everything buffered so far and consumes only whole requests, so pipelined
//! requests are answered in order with one write, and a request split across reads is simply
//! offered again once more bytes have arrived (mini-redis's *incomplete* outcome).
//!
//! [`Store`]: crate::store::Store

pub mod line;
pub mod memcache;

/// Reply bytes buffered before a session yields so that the connection writes them out; this
/// bounds a connection's memory when a client pipelines many large reads.
pub const FLUSH_THRESHOLD: usize = 64 * 1024;

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
}

use std::sync::Arc;

use crate::auth::Users;
use crate::stats::ServerStats;
use crate::store::Store;

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
}
