//! memcached's ASCII protocol over the same [`Store`] as the line protocol, so that every
//! memcached client, tool and proxy works against textkv unchanged. A connection whose first
//! byte is `0x80` speaks the binary protocol instead ([`binary`]).
//!
//! Framing: a request is a line ending in `\r\n` (a bare `\n` is accepted), and the storage
//! commands (`set add replace append prepend cas ms`) are followed by a data block of exactly
//! the announced length plus `\r\n`. The block is found by its length, never by scanning
//! (values may hold `\r\n`), so a request is parsed in two outcomes: *incomplete* (nothing is
//! consumed; the connection reads more) or complete — valid, or invalid with memcached's
//! error reply.
//!
//! Where textkv knowingly differs from memcached 1.6.18 (all choices that keep a pipeline in
//! step or a durable value safe):
//! - A storage line that is wrong but whose `<bytes>` is readable gets its `CLIENT_ERROR` and
//!   its data block is discarded; memcached parses the block as a command and adds `ERROR`.
//! - A data block not followed by `\r\n` gets `CLIENT_ERROR bad data chunk`, and the rest of
//!   that line is dropped too (memcached would answer it as a command, usually `ERROR`).
//! - An item over `--max-value-bytes` gets `SERVER_ERROR object too large for cache`, its
//!   data is read and discarded, and the old value is kept (memcached deletes it: a cache
//!   may forget, a database should not lose a value because a later write was refused).
//! - A line without `\n` within 2048 bytes (or `--max-line-bytes` for `get`/`gets`/`gat`/
//!   `gats`, whose key lists may be long) gets `CLIENT_ERROR line too long` and the
//!   connection is closed; memcached closes without a word.
//! - Keys with control characters are refused (`CLIENT_ERROR bad command line format`), and
//!   flags above 2^32-1 too (memcached silently truncates them).
//! - `stats` has memcached's general counters with real values; `limit_maxbytes` is 0
//!   because textkv has no memory cap (the disk is the limit). The `stats` groups and admin
//!   commands are in [`admin`].
//! - `verbosity` is accepted and does nothing (use `RUST_LOG`).
//!
//! Authentication (`--users`) follows memcached's ASCII convention (its `-Y` auth file), so
//! clients log in without SASL: the first request must be a `set` (any key, flags and
//! exptime) whose data is `<user> <password>`; it is answered `STORED` (even with
//! `noreply`) and stores nothing. Before that, any other request gets
//! `CLIENT_ERROR unauthenticated` and a wrong password `CLIENT_ERROR authentication failure`,
//! and either closes the connection, as memcached does. A command beyond the user's role gets
//! `CLIENT_ERROR permission denied` (memcached has no roles; a `CLIENT_ERROR` is what its
//! clients report as a refusal) and changes nothing; its data block is discarded.
//!
//! Memory per connection stays under the line limit plus `--max-value-bytes`: a data block is
//! buffered whole only when it will be stored; an oversized one is discarded as it arrives.
//! A retrieval naming many keys is answered a part at a time: once the replies pass
//! [`FLUSH_THRESHOLD`] the keys answered so far are consumed and the rest of the line is
//! answered on the next call, after the connection has written the replies out, so
//! `get big big big …` cannot make the server hold keys × value bytes of replies.

mod admin;
pub mod binary;
mod flush;
mod meta;
mod request;

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use super::{push_decimal, Context, Progress, ReadFence, Session, FLUSH_THRESHOLD};
use crate::auth::{Access, Login};
use crate::stats::{CacheCounters, ServerStats};
use crate::store::{unix_now, StoreError, StoreMode, WriteOp, WriteOutcome};
use admin::{Dump, DumpFormat, Registration};
use request::{expires_at, Invalid, Request, StatsGroup, StoreKind};

/// Longest request line other than a retrieval command, as in memcached.
pub const MAX_COMMAND_LINE: usize = 2048;

/// Longest `<user> <password>` data block of the login `set`; a longer one is refused without
/// being buffered.
const MAX_LOGIN_BYTES: usize = 1024;

/// The memcached release whose protocol textkv follows. Clients parse the version as
/// numbers (libmemcached's tools stop with "strtol() failed to parse major version" on
/// anything else, and enable features by it), so it comes first in `version`'s reply and is
/// `stats`'s whole `version` (a STAT value has no spaces); textkv's own version follows it in
/// `version` and is `stats`'s `textkv_version`.
pub const MEMCACHED_VERSION: &str = "1.6.18";

/// The `version` command's reply text.
pub const VERSION: &str = concat!("1.6.18 textkv-", env!("CARGO_PKG_VERSION"));

/// What the session is in the middle of, between calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a request line.
    Ready,
    /// Discarding this many more bytes of a refused data block.
    Swallow(usize),
    /// Discarding up to the next `\n` (after a bad data chunk).
    SkipLine,
    /// Answering a retrieval command whose first keys are answered and consumed: the input
    /// starts with the rest of its key list (a complete line).
    Retrieving { with_cas: bool, touch: Option<i64> },
}

/// Pipelined write commands (storage commands, `delete`, `incr`/`decr`, `touch`, `ms`, `md`,
/// `ma`, each key of `gat`/`gats`) gathered before they are submitted together, so that they
/// share one batch and one fsync (a proxy such as twemproxy multiplexes many clients onto one
/// connection, so this is where group commit pays off); bounded in count, in bytes sent and
/// in the reply bytes `gat` keys are expected to bring.
const MAX_PENDING_WRITES: usize = 1024;
const MAX_PENDING_BYTES: usize = 4 << 20;

/// A write queued for submission (or, for [`Reply::End`], only a reply), with what its reply
/// needs.
struct PendingWrite {
    op: Option<WriteOp>,
    reply: Reply,
}

/// How the reply to a queued write is encoded once its outcome is known.
enum Reply {
    Store {
        mode: StoreMode,
        noreply: bool,
    },
    Delete {
        noreply: bool,
    },
    Arith {
        incr: bool,
        noreply: bool,
    },
    Touch {
        noreply: bool,
    },
    /// One key of `gat`/`gats`: its `VALUE` block on a hit.
    GatValue {
        key: Vec<u8>,
        with_cas: bool,
    },
    /// The `END` after the keys of a `gat`/`gats`.
    End,
    Meta {
        kind: meta::MetaKind,
        key: Vec<u8>,
        flags: meta::MetaFlags,
    },
}

/// memcached-protocol state of one connection.
pub struct MemcacheSession {
    ctx: Arc<Context>,
    state: State,
    /// Consecutive write commands not yet submitted. They are flushed before any other
    /// request runs or any other reply is written, so replies keep request order and reads
    /// see the writes before them.
    pending: Vec<PendingWrite>,
    /// Bytes the queued writes carry plus the reply bytes their `gat` keys are expected to
    /// bring (the values' sizes when they were queued).
    pending_bytes: usize,
    /// Times the queue was flushed, to tell queued replies from an error reply in `process`.
    flushes: u64,
    access: Access,
    /// A listing (`stats cachedump`, `lru_crawler metadump`) not finished yet: it goes on
    /// before any later request is read.
    dump: Option<Dump>,
    /// The last call stopped because its replies reached FLUSH_THRESHOLD with input left.
    output_full: bool,
    /// Whether the connection's first byte has been seen (it decides the protocol).
    negotiated: bool,
    /// Set when the first byte was the binary request magic: the connection speaks binary.
    binary: Option<binary::BinarySession>,
    peer: Option<SocketAddr>,
    registration: Registration,
    fence: ReadFence,
}

impl MemcacheSession {
    pub fn new(ctx: Arc<Context>) -> Self {
        let access = Access::new(ctx.users.is_some(), None).with_max_failures(1);
        MemcacheSession {
            ctx,
            state: State::Ready,
            pending: Vec::new(),
            pending_bytes: 0,
            flushes: 0,
            access,
            dump: None,
            output_full: false,
            negotiated: false,
            binary: None,
            peer: None,
            registration: Registration::new(None),
            fence: ReadFence::default(),
        }
    }

    /// Names the client in the log lines of failed logins and in `stats conns`.
    pub fn with_peer(mut self, peer: SocketAddr) -> Self {
        self.access = Access::new(self.ctx.users.is_some(), Some(peer)).with_max_failures(1);
        self.registration = Registration::new(Some(peer));
        self.peer = Some(peer);
        self
    }

    /// Goes on with an unfinished listing; returns whether one is still unfinished.
    fn resume_dump(&mut self, out: &mut Vec<u8>) -> bool {
        let Some(dump) = &mut self.dump else { return false };
        if dump.resume(&Executor { ctx: &self.ctx }, out) {
            self.dump = None;
            return false;
        }
        true
    }

    /// Handles a request on a connection that has not logged in yet: only the login `set`
    /// is accepted (see the module docs). `request` is None for a line that did not parse.
    fn login(
        &mut self,
        request: Option<&Request>,
        input: &[u8],
        line_end: usize,
        out: &mut Vec<u8>,
    ) -> (usize, bool) {
        let (Some(users), Some(&Request::Store { kind: StoreKind::Set, bytes, .. })) =
            (&self.ctx.users, request)
        else {
            out.extend_from_slice(b"CLIENT_ERROR unauthenticated\r\n");
            return (line_end, true);
        };
        if bytes > MAX_LOGIN_BYTES {
            out.extend_from_slice(b"CLIENT_ERROR unauthenticated\r\n");
            return (line_end, true);
        }
        let block_end = line_end + bytes + 2;
        if input.len() < block_end {
            return (0, false);
        }
        let data = &input[line_end..line_end + bytes];
        let (user, password) = match data.iter().position(|&b| b == b' ') {
            Some(space) => (&data[..space], &data[space + 1..]),
            None => (data, &b""[..]),
        };
        let chunk_ok = &input[block_end - 2..block_end] == b"\r\n";
        match self.access.login(users, user, password) {
            Login::Accepted(_) if chunk_ok => {
                out.extend_from_slice(b"STORED\r\n");
                (block_end, false)
            }
            _ => {
                out.extend_from_slice(b"CLIENT_ERROR authentication failure\r\n");
                (block_end, true)
            }
        }
    }

    /// Queues a write; its reply is appended when the queue is flushed. Flushes at once when
    /// the queue is full. `reply_bytes` is what its reply is expected to add beyond a status.
    fn queue(&mut self, op: WriteOp, reply: Reply, reply_bytes: usize, out: &mut Vec<u8>) {
        self.pending_bytes += op.payload_len() + reply_bytes;
        self.pending.push(PendingWrite { op: Some(op), reply });
        if self.pending.len() >= MAX_PENDING_WRITES
            || self.pending_bytes >= MAX_PENDING_BYTES
            || reply_bytes > 0 && self.pending_bytes >= FLUSH_THRESHOLD
        {
            self.flush_pending(out);
        }
    }

    /// Submits the queued writes together and appends their replies in order.
    fn flush_pending(&mut self, out: &mut Vec<u8>) {
        if self.pending.is_empty() {
            return;
        }
        self.pending_bytes = 0;
        self.flushes += 1;
        let mut pending = std::mem::take(&mut self.pending);
        let mut results =
            self.ctx.write_many(pending.iter_mut().filter_map(|p| p.op.take()).collect()).into_iter();
        let executor = Executor { ctx: &self.ctx };
        // After a store error in a `gat`, the rest of that request is dropped (no `END`).
        let mut failed_retrieval = false;
        for PendingWrite { reply, .. } in pending {
            if let Reply::End = reply {
                if !std::mem::take(&mut failed_retrieval) {
                    out.extend_from_slice(b"END\r\n");
                }
                continue;
            }
            let result = results.next().unwrap_or(Err(StoreError::Closed));
            if failed_retrieval {
                continue;
            }
            let before = out.len();
            let noreply = match reply {
                Reply::Store { mode, noreply } => {
                    executor.store_reply(mode, result, out);
                    noreply
                }
                Reply::Delete { noreply } => {
                    executor.delete_reply(result, out);
                    noreply
                }
                Reply::Arith { incr, noreply } => {
                    executor.arith_reply(incr, result, out);
                    noreply
                }
                Reply::Touch { noreply } => {
                    executor.touch_reply(result, out);
                    noreply
                }
                Reply::GatValue { key, with_cas } => {
                    failed_retrieval = !executor.gat_reply(&key, with_cas, result, out);
                    false
                }
                Reply::Meta { kind, key, flags } => {
                    executor.meta_reply(kind, &key, &flags, result, out);
                    false
                }
                Reply::End => unreachable!("handled above"),
            };
            if noreply {
                // memcached sends nothing at all for a noreply request, errors included.
                out.truncate(before);
            }
        }
    }

    /// The longest line allowed for a line that starts like `rest`.
    fn line_limit(&self, rest: &[u8]) -> usize {
        let start = &rest[rest.iter().take_while(|&&b| b == b' ').count()..];
        let retrieval = [&b"get "[..], b"gets ", b"gat ", b"gats "].iter().any(|p| start.starts_with(p));
        // Before a login, long key lists are of no use: keep such a client to short lines.
        if retrieval && self.access.role().is_some() {
            self.ctx.limits.max_line_bytes.max(MAX_COMMAND_LINE)
        } else {
            MAX_COMMAND_LINE
        }
    }

    /// Handles the request at the start of `input`. Returns the bytes consumed (0: incomplete)
    /// and whether to close.
    fn step(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, bool) {
        let limit = self.line_limit(input);
        let Some(newline) = input.iter().take(limit + 1).position(|&b| b == b'\n') else {
            if input.len() > limit {
                out.extend_from_slice(b"CLIENT_ERROR line too long\r\n");
                log::debug!("closing a memcached connection: no newline within {limit} bytes");
                return (input.len(), true);
            }
            return (0, false);
        };
        let line_end = newline + 1;
        let line = &input[..newline];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let request = match request::parse(line) {
            Ok(request) => request,
            Err(_) if self.access.role().is_none() => return self.login(None, input, line_end, out),
            Err(Invalid::Close) => return (line_end, true),
            Err(Invalid::Reply { error, noreply, swallow }) => {
                if !noreply {
                    out.extend_from_slice(error.as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
                if let Some(bytes) = swallow {
                    self.state = State::Swallow(bytes + 2);
                }
                return (line_end, false);
            }
        };
        let bytes = match &request {
            Request::Store { bytes, .. } => Some(*bytes),
            Request::Meta { kind: meta::MetaKind::Set, bytes, .. } => Some(*bytes),
            _ => None,
        };
        if !self.access.allows(request.role()) {
            if self.access.role().is_none() {
                return self.login(Some(&request), input, line_end, out);
            }
            if !request.noreply() {
                out.extend_from_slice(b"CLIENT_ERROR permission denied\r\n");
            }
            if let Some(bytes) = bytes {
                self.state = State::Swallow(bytes + 2);
            }
            return (line_end, false);
        }
        if let Request::Get { keys, with_cas, touch } = request {
            if touch.is_none() {
                // A read sees the writes before it.
                self.flush_pending(out);
                if let Err(e) = self.fence.pass(&self.ctx) {
                    server_error(&e, out);
                    return (line_end, false);
                }
            }
            ServerStats::bump(&self.ctx.stats.commands);
            // The key list is a slice of `input`.
            let from = keys.as_bytes().as_ptr() as usize - input.as_ptr() as usize;
            return (self.retrieve(input, from, with_cas, touch, out), false);
        }
        let Some(bytes) = bytes else {
            if !request.joins_group_commit() {
                self.flush_pending(out);
            }
            let close = self.execute(&request, &[], out);
            return (line_end, close);
        };
        let noreply = matches!(request, Request::Store { noreply: true, .. });
        if bytes > self.ctx.limits.max_value_bytes {
            ServerStats::bump(&self.ctx.stats.cache.store_too_large);
            if !noreply {
                out.extend_from_slice(b"SERVER_ERROR object too large for cache\r\n");
            }
            self.state = State::Swallow(bytes + 2);
            return (line_end, false);
        }
        let block_end = line_end + bytes + 2;
        if input.len() < block_end {
            return (0, false);
        }
        if &input[block_end - 2..block_end] != b"\r\n" {
            if !noreply {
                out.extend_from_slice(b"CLIENT_ERROR bad data chunk\r\n");
            }
            self.state = State::SkipLine;
            return (line_end + bytes, false);
        }
        let data = &input[line_end..line_end + bytes];
        let close = self.execute(&request, data, out);
        (block_end, close)
    }

    /// Answers the keys of a retrieval line from `input[from..]` (the line is complete in
    /// `input`) until the replies reach [`FLUSH_THRESHOLD`]; returns the bytes consumed: the
    /// whole line once `END` is written, else up to the first key not answered yet, with the
    /// state set to resume there. Always answers at least one key or the `END`.
    fn retrieve(
        &mut self,
        input: &[u8],
        from: usize,
        with_cas: bool,
        touch: Option<i64>,
        out: &mut Vec<u8>,
    ) -> usize {
        let newline = from + input[from..].iter().position(|&b| b == b'\n').expect("a complete line");
        let end = if newline > from && input[newline - 1] == b'\r' { newline - 1 } else { newline };
        let mut pos = from;
        let mut answered = false;
        self.state = State::Ready;
        loop {
            while pos < end && input[pos] == b' ' {
                pos += 1;
            }
            if pos == end {
                match touch {
                    None => out.extend_from_slice(b"END\r\n"),
                    Some(_) => self.pending.push(PendingWrite { op: None, reply: Reply::End }),
                }
                return newline + 1;
            }
            if answered && out.len() >= FLUSH_THRESHOLD {
                self.state = State::Retrieving { with_cas, touch };
                return pos;
            }
            let key_end = input[pos..end].iter().position(|&b| b == b' ').map_or(end, |i| pos + i);
            let key = &input[pos..key_end];
            match touch {
                None => Executor { ctx: &self.ctx }.get_one(key, with_cas, out),
                Some(exptime) => {
                    // A write: it joins the group commit; the reply is expected to be about
                    // the value's size, so the queue is flushed before replies pile up.
                    let (c, now) = (&self.ctx.stats.cache, unix_now());
                    ServerStats::bump(&c.cmd_get);
                    ServerStats::bump(&c.cmd_touch);
                    let op = WriteOp::Touch { key: key.to_vec(), expires_at: expires_at(exptime, now) };
                    let size = self.ctx.store.with_item(key, |item| item.map_or(0, |i| i.value.len()));
                    let reply = Reply::GatValue { key: key.to_vec(), with_cas };
                    self.queue(op, reply, size + key.len() + 64, out);
                }
            }
            answered = true;
            pos = key_end;
        }
    }

    /// Runs one request; `data` is its data block. Returns true to close the connection.
    fn execute(&mut self, request: &Request, data: &[u8], out: &mut Vec<u8>) -> bool {
        ServerStats::bump(&self.ctx.stats.commands);
        if let Some((op, reply)) = self.write_of(request, data) {
            // Answered (or, for noreply, not) when the queue is flushed (see `pending`).
            self.queue(op, reply, 0, out);
            return false;
        }
        let noreply = request.noreply();
        if matches!(request, Request::Meta { .. } | Request::MetaDebug { .. }) {
            if let Err(e) = self.fence.pass(&self.ctx) {
                if !noreply {
                    server_error(&e, out);
                }
                return false;
            }
        }
        let executor = Executor { ctx: &self.ctx };
        let before = out.len();
        match request {
            Request::Get { .. } => unreachable!("retrievals are answered by `retrieve`"),
            Request::FlushAll { delay, .. } => executor.flush_all(*delay, out),
            Request::Stats => executor.stats(out),
            Request::StatsGroup(StatsGroup::CacheDump { class, limit }) => {
                self.dump = Some(Dump::new(DumpFormat::CacheDump, *class, *limit));
                self.resume_dump(out);
            }
            Request::StatsGroup(group) => executor.stats_group(*group, &self.registration, out),
            Request::MetaDump { items } => {
                let class = if *items { 1 } else { 0 };
                self.dump = Some(Dump::new(DumpFormat::MetaDump, class, 0));
                self.resume_dump(out);
            }
            Request::CacheMemlimit { .. } => out.extend_from_slice(b"OK\r\n"),
            Request::MetaDebug { key } => executor.meta_debug(key, out),
            Request::Version => out.extend_from_slice(format!("VERSION {VERSION}\r\n").as_bytes()),
            Request::Verbosity { .. } => out.extend_from_slice(b"OK\r\n"),
            Request::Quit => return true,
            Request::MetaNoop => out.extend_from_slice(b"MN\r\n"),
            Request::Meta { key, flags, .. } => executor.meta_get(key, flags, out),
            Request::Store { .. }
            | Request::Delete { .. }
            | Request::Arith { .. }
            | Request::Touch { .. } => {
                unreachable!("writes are queued")
            }
        }
        if noreply {
            // memcached sends nothing at all for a noreply request, errors included.
            out.truncate(before);
        }
        false
    }
}

impl MemcacheSession {
    /// The store write of a request that joins the group commit (see
    /// [`Request::joins_group_commit`]), with how to answer it; None for any other request.
    fn write_of(&self, request: &Request, data: &[u8]) -> Option<(WriteOp, Reply)> {
        let c = &self.ctx.stats.cache;
        let write = match *request {
            Request::Store { kind, key, flags, exptime, cas, noreply, .. } => {
                ServerStats::bump(&c.cmd_set);
                let mode = kind.mode(cas);
                (store_op(mode, key, flags, exptime, data), Reply::Store { mode, noreply })
            }
            Request::Delete { key, noreply } => {
                (WriteOp::Delete { key: key.to_vec(), cas: None }, Reply::Delete { noreply })
            }
            Request::Arith { key, delta, incr, noreply } => {
                let op = WriteOp::Arith {
                    key: key.to_vec(),
                    delta,
                    incr,
                    cas: None,
                    create: None,
                    expires_at: None,
                };
                (op, Reply::Arith { incr, noreply })
            }
            Request::Touch { key, exptime, noreply } => {
                ServerStats::bump(&c.cmd_touch);
                let op = WriteOp::Touch { key: key.to_vec(), expires_at: expires_at(exptime, unix_now()) };
                (op, Reply::Touch { noreply })
            }
            Request::Meta { kind, key, ref flags, .. } if kind != meta::MetaKind::Get => {
                let op = Executor { ctx: &self.ctx }.meta_write(kind, key, flags, data);
                (op, Reply::Meta { kind, key: key.to_vec(), flags: flags.clone() })
            }
            _ => return None,
        };
        debug_assert!(request.joins_group_commit());
        Some(write)
    }
}

impl Session for MemcacheSession {
    fn logged_in(&self) -> bool {
        self.access.role().is_some()
    }

    fn process(&mut self, input: &[u8], out: &mut Vec<u8>) -> Progress {
        if !self.negotiated && !input.is_empty() {
            self.negotiated = true;
            if input[0] == binary::REQUEST_MAGIC {
                // SASL allows a few attempts on one connection, as for the line protocol.
                let access = Access::new(self.ctx.users.is_some(), self.peer);
                self.binary = Some(binary::BinarySession::new(Arc::clone(&self.ctx), access));
            }
        }
        self.registration.active();
        if let Some(binary) = &mut self.binary {
            return binary.process(input, out, &self.registration);
        }
        self.fence.reset();
        let mut consumed = 0;
        self.output_full = false;
        if self.resume_dump(out) {
            return Progress { consumed, close: false };
        }
        while out.len() < FLUSH_THRESHOLD && consumed < input.len() {
            if self.resume_dump(out) {
                break;
            }
            let rest = &input[consumed..];
            match self.state {
                State::Swallow(left) => {
                    let n = left.min(rest.len());
                    consumed += n;
                    self.state = if n == left { State::Ready } else { State::Swallow(left - n) };
                }
                State::Retrieving { with_cas, touch } => {
                    consumed += self.retrieve(rest, 0, with_cas, touch, out);
                }
                State::SkipLine => match rest.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        consumed += i + 1;
                        self.state = State::Ready;
                    }
                    None => consumed = input.len(),
                },
                State::Ready => {
                    let (mark, flushes) = (out.len(), self.flushes);
                    let (n, close) = self.step(rest, out);
                    if out.len() > mark && !self.pending.is_empty() && self.flushes == flushes {
                        // An error reply written while writes were queued: theirs come first.
                        // (A step that flushed the queue wrote queued replies, not an error.)
                        let error = out.split_off(mark);
                        self.flush_pending(out);
                        out.extend_from_slice(&error);
                    }
                    consumed += n;
                    if close {
                        self.flush_pending(out);
                        return Progress { consumed, close: true };
                    }
                    if n == 0 {
                        break;
                    }
                }
            }
        }
        self.flush_pending(out);
        // Stopped for a full reply buffer, perhaps without consuming anything (a listing that
        // just ended): the requests left in `input` must be offered again without new input.
        self.output_full = out.len() >= FLUSH_THRESHOLD && consumed < input.len();
        Progress { consumed, close: false }
    }

    fn has_more(&self) -> bool {
        self.dump.is_some() || self.output_full
    }
}

/// Runs requests against the store and encodes memcached's replies.
pub(crate) struct Executor<'a> {
    ctx: &'a Context,
}

impl Executor<'_> {
    fn counters(&self) -> &CacheCounters {
        &self.ctx.stats.cache
    }

    /// Sends one write to the store; on a store error answers `SERVER_ERROR` and returns None.
    fn write(&self, op: WriteOp, out: &mut Vec<u8>) -> Option<WriteOutcome> {
        match self.ctx.write_many(vec![op]).pop().unwrap_or(Err(StoreError::Closed)) {
            Ok(outcome) => Some(outcome),
            Err(e) => {
                server_error(&e, out);
                None
            }
        }
    }

    fn too_large(&self, out: &mut Vec<u8>) {
        ServerStats::bump(&self.counters().store_too_large);
        out.extend_from_slice(b"SERVER_ERROR object too large for cache\r\n");
    }

    fn non_numeric(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n");
    }

    fn unexpected(&self, outcome: &WriteOutcome, out: &mut Vec<u8>) {
        log::error!("unexpected store outcome {outcome:?} for a memcached request");
        out.extend_from_slice(b"SERVER_ERROR internal error\r\n");
    }

    fn count_cas(&self, mode: StoreMode, outcome: &WriteOutcome) {
        if let StoreMode::Cas(_) = mode {
            let c = self.counters();
            ServerStats::bump(match outcome {
                WriteOutcome::Stored { .. } => &c.cas_hits,
                WriteOutcome::Exists => &c.cas_badval,
                _ => &c.cas_misses,
            });
        }
    }

    /// The reply to a storage command, as memcached words it.
    fn store_reply(&self, mode: StoreMode, result: Result<WriteOutcome, StoreError>, out: &mut Vec<u8>) {
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(e) => return server_error(&e, out),
        };
        self.count_cas(mode, &outcome);
        let reply: &[u8] = match outcome {
            WriteOutcome::Stored { .. } => b"STORED\r\n",
            WriteOutcome::NotStored => b"NOT_STORED\r\n",
            WriteOutcome::Exists => b"EXISTS\r\n",
            WriteOutcome::NotFound => b"NOT_FOUND\r\n",
            WriteOutcome::TooLarge => return self.too_large(out),
            other => return self.unexpected(&other, out),
        };
        out.extend_from_slice(reply);
    }

    /// One key of a `get`/`gets`: its `VALUE` block on a hit.
    fn get_one(&self, key: &[u8], with_cas: bool, out: &mut Vec<u8>) {
        let c = self.counters();
        ServerStats::bump(&c.cmd_get);
        let hit = self.ctx.store.with_item(key, |item| {
            item.map(|item| value_line(key, item.flags, item.value, with_cas.then_some(item.cas), out))
        });
        ServerStats::bump(if hit.is_some() { &c.get_hits } else { &c.get_misses });
    }

    /// One key of a `gat`/`gats` once its touch is decided: its `VALUE` block on a hit. False
    /// after a store error, with `SERVER_ERROR` written.
    fn gat_reply(
        &self,
        key: &[u8],
        with_cas: bool,
        result: Result<WriteOutcome, StoreError>,
        out: &mut Vec<u8>,
    ) -> bool {
        let c = self.counters();
        match result {
            Ok(WriteOutcome::Touched(item)) => {
                ServerStats::bump(&c.touch_hits);
                ServerStats::bump(&c.get_hits);
                value_line(key, item.flags, &item.value, with_cas.then_some(item.cas), out);
            }
            Ok(_) => {
                ServerStats::bump(&c.touch_misses);
                ServerStats::bump(&c.get_misses);
            }
            Err(e) => {
                server_error(&e, out);
                return false;
            }
        }
        true
    }

    fn delete_reply(&self, result: Result<WriteOutcome, StoreError>, out: &mut Vec<u8>) {
        let c = self.counters();
        match result {
            Err(e) => server_error(&e, out),
            Ok(WriteOutcome::Deleted) => {
                ServerStats::bump(&c.delete_hits);
                out.extend_from_slice(b"DELETED\r\n");
            }
            Ok(WriteOutcome::NotFound) => {
                ServerStats::bump(&c.delete_misses);
                out.extend_from_slice(b"NOT_FOUND\r\n");
            }
            Ok(other) => self.unexpected(&other, out),
        }
    }

    fn arith_reply(&self, incr: bool, result: Result<WriteOutcome, StoreError>, out: &mut Vec<u8>) {
        let c = self.counters();
        let (hits, misses) =
            if incr { (&c.incr_hits, &c.incr_misses) } else { (&c.decr_hits, &c.decr_misses) };
        match result {
            Err(e) => server_error(&e, out),
            Ok(WriteOutcome::Counter { value, .. }) => {
                ServerStats::bump(hits);
                push_decimal(value, out);
                out.extend_from_slice(b"\r\n");
            }
            Ok(WriteOutcome::NotFound) => {
                ServerStats::bump(misses);
                out.extend_from_slice(b"NOT_FOUND\r\n");
            }
            Ok(WriteOutcome::NonNumeric) => self.non_numeric(out),
            Ok(other) => self.unexpected(&other, out),
        }
    }

    fn touch_reply(&self, result: Result<WriteOutcome, StoreError>, out: &mut Vec<u8>) {
        let c = self.counters();
        match result {
            Err(e) => server_error(&e, out),
            Ok(WriteOutcome::Touched(_)) => {
                ServerStats::bump(&c.touch_hits);
                out.extend_from_slice(b"TOUCHED\r\n");
            }
            Ok(WriteOutcome::NotFound) => {
                ServerStats::bump(&c.touch_misses);
                out.extend_from_slice(b"NOT_FOUND\r\n");
            }
            Ok(other) => self.unexpected(&other, out),
        }
    }

    fn flush_all(&self, delay: i64, out: &mut Vec<u8>) {
        match self.flush(delay) {
            Ok(()) => out.extend_from_slice(b"OK\r\n"),
            Err(e) => server_error(&e, out),
        }
    }

    /// `flush_all` in either protocol: now, or after `delay`.
    fn flush(&self, delay: i64) -> Result<(), StoreError> {
        ServerStats::bump(&self.counters().cmd_flush);
        // memcached reads the delay like an exptime: relative, or a Unix time past 30 days. A
        // Unix time not in the future flushes now, like no delay: scheduled with delay 0, the
        // background flush could land after writes this client sends after the `OK`.
        let now = unix_now();
        let delay = if delay > 0 { expires_at(delay, now).saturating_sub(now) } else { 0 };
        if delay > 0 {
            if self.ctx.cluster.is_some() {
                // The timer would run on this node alone, outside the replicated log.
                return Err(StoreError::Unavailable(
                    "flush_all with a delay is not supported on a cluster node".into(),
                ));
            }
            flush::schedule(&self.ctx.store, Some(Duration::from_secs(delay)));
            return Ok(());
        }
        flush::schedule(&self.ctx.store, None);
        self.ctx.write_many(vec![WriteOp::Flush]).pop().unwrap_or(Err(StoreError::Closed)).map(|_| ())
    }

    fn stats(&self, out: &mut Vec<u8>) {
        use std::fmt::Write as _;
        let server = &self.ctx.stats;
        let c = &server.cache;
        let (items, bytes) = self.ctx.store.usage();
        let mut text = String::new();
        let mut stat = |name: &str, value: &dyn fmt::Display| {
            let _ = write!(text, "STAT {name} {value}\r\n");
        };
        let read = |counter: &AtomicU64| ServerStats::read(counter);
        stat("pid", &std::process::id());
        stat("uptime", &server.uptime_secs());
        stat("time", &unix_now());
        stat("version", &MEMCACHED_VERSION);
        stat("textkv_version", &env!("CARGO_PKG_VERSION"));
        stat("pointer_size", &(usize::BITS));
        let curr = read(&server.curr_connections);
        stat("curr_connections", &curr);
        stat("total_connections", &read(&server.total_connections));
        stat("rejected_connections", &read(&server.rejected_connections));
        for (name, counter) in c.named() {
            stat(name, &read(counter));
        }
        stat("limit_maxbytes", &0);
        // One thread per connection: the threads serving requests are the open connections.
        stat("threads", &curr);
        stat("bytes", &bytes);
        stat("curr_items", &items);
        stat("item_size_max", &self.ctx.limits.max_value_bytes);
        stat("db_bytes", &self.ctx.store.stats().file_bytes);
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"END\r\n");
    }
}

/// `VALUE <key> <flags> <bytes>[ <cas>]\r\n<data>\r\n`.
/// The store operation of a storage command.
fn store_op(mode: StoreMode, key: &[u8], flags: u32, exptime: i64, data: &[u8]) -> WriteOp {
    WriteOp::Store {
        key: key.to_vec(),
        value: data.into(),
        flags,
        expires_at: expires_at(exptime, unix_now()),
        mode,
    }
}

/// `SERVER_ERROR` for a write the store could not carry out.
fn server_error(error: &StoreError, out: &mut Vec<u8>) {
    out.extend_from_slice(format!("SERVER_ERROR {error}\r\n").as_bytes());
}

fn value_line(key: &[u8], flags: u32, value: &[u8], cas: Option<u64>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"VALUE ");
    out.extend_from_slice(key);
    out.push(b' ');
    push_decimal(flags.into(), out);
    out.push(b' ');
    push_decimal(value.len() as u64, out);
    if let Some(cas) = cas {
        out.push(b' ');
        push_decimal(cas, out);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Limits;
    use crate::store::{Store, StoreConfig};

    fn new_session(max_value_bytes: usize) -> (tempfile::TempDir, MemcacheSession) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = StoreConfig::new(dir.path().join("database.txt"));
        config.max_value_bytes = max_value_bytes;
        let ctx = Context {
            store: Arc::new(Store::open(config).unwrap()),
            stats: Arc::new(ServerStats::default()),
            limits: Limits { max_value_bytes, max_line_bytes: 4096 },
            users: None,
            cluster: None,
        };
        (dir, MemcacheSession::new(Arc::new(ctx)))
    }

    /// Feeds `input` the way a connection does (unconsumed bytes are offered again with the
    /// next ones), `chunk` bytes at a time, and returns the replies.
    fn feed(session: &mut MemcacheSession, input: &[u8], chunk: usize) -> Vec<u8> {
        let (mut buffer, mut out) = (Vec::new(), Vec::new());
        for piece in input.chunks(chunk) {
            buffer.extend_from_slice(piece);
            loop {
                let progress = session.process(&buffer, &mut out);
                buffer.drain(..progress.consumed);
                if progress.close {
                    return out;
                }
                if progress.consumed == 0 || buffer.is_empty() {
                    break;
                }
            }
        }
        assert!(buffer.is_empty(), "left unconsumed: {:?}", String::from_utf8_lossy(&buffer));
        out
    }

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn incomplete_input_waits_at_every_split_point() {
        let requests: &[(&[u8], &str)] = &[
            (b"set k 1 0 5\r\nab\r\nc\r\n", "STORED\r\n"),
            (b"get k\r\n", "VALUE k 1 5\r\nab\r\nc\r\nEND\r\n"),
            (b"ms m 3 T0 F2\r\nxyz\r\nmg m v f\r\n", "HD\r\nVA 3 f2\r\nxyz\r\n"),
            (b"set big 0 0 9\r\n123456789\r\nmn\r\n", "SERVER_ERROR object too large for cache\r\nMN\r\n"),
            (b"set k 0 0 1\r\nxy\r\nmn\r\n", "CLIENT_ERROR bad data chunk\r\nMN\r\n"),
            (b"set k x 0 2\r\nab\r\nmn\r\n", "CLIENT_ERROR bad command line format\r\nMN\r\n"),
        ];
        for (request, reply) in requests {
            for split in 1..request.len() {
                let (_dir, mut session) = new_session(8);
                if request.starts_with(b"get") {
                    feed(&mut session, b"set k 1 0 5\r\nab\r\nc\r\n", 100);
                }
                let mut out = Vec::new();
                let (head, tail) = request.split_at(split);
                let progress = session.process(head, &mut out);
                let mut rest = head[progress.consumed..].to_vec();
                rest.extend_from_slice(tail);
                out.extend(feed(&mut session, &rest, rest.len()));
                assert_eq!(text(out), *reply, "split {split} of {:?}", String::from_utf8_lossy(request));
            }
        }
    }

    #[test]
    fn byte_at_a_time_equals_all_at_once() {
        let input =
            b"set a 0 0 3\r\n\r\n\n\r\nappend a 0 0 1\r\n!\r\ngets a b\r\nincr a 1\r\ndelete a\r\nmn\r\n";
        let (_d1, mut one) = new_session(1024);
        let (_d2, mut all) = new_session(1024);
        let slow = feed(&mut one, input, 1);
        let fast = feed(&mut all, input, input.len());
        let strip_cas =
            |s: String| s.split_whitespace().filter(|w| w.len() < 10).collect::<Vec<_>>().join(" ");
        assert_eq!(strip_cas(text(slow)), strip_cas(text(fast)));
    }

    #[test]
    fn noreply_suppresses_every_reply() {
        let (_dir, mut session) = new_session(8);
        let input = b"set k 0 0 1 noreply\r\nx\r\nadd k 0 0 1 noreply\r\ny\r\nset k 0 0 1 noreply\r\nxy\r\n\
                      set k 0 0 99 noreply\r\n";
        let mut all = input.to_vec();
        all.extend_from_slice(&[b'z'; 99]);
        all.extend_from_slice(b"\r\nincr k 1 noreply\r\ndelete zz noreply\r\ntouch zz 1 noreply\r\nmn\r\n");
        assert_eq!(text(feed(&mut session, &all, 7)), "MN\r\n");
    }

    #[test]
    fn an_endless_line_is_refused_without_buffering_it() {
        let (_dir, mut session) = new_session(8);
        let mut out = Vec::new();
        let junk = vec![b'x'; MAX_COMMAND_LINE + 1];
        let progress = session.process(&junk, &mut out);
        assert!(progress.close);
        assert_eq!(text(out), "CLIENT_ERROR line too long\r\n");
        // A long multi-get is a legitimate long line, bounded by --max-line-bytes instead.
        let (_dir, mut session) = new_session(8);
        let mut get = b"get".to_vec();
        while get.len() < 3000 {
            get.extend_from_slice(b" key");
        }
        get.extend_from_slice(b"\r\n");
        assert_eq!(text(feed(&mut session, &get, 512)), "END\r\n");
    }

    /// A `get` naming a large value many times is answered a part at a time: no call buffers
    /// much more than FLUSH_THRESHOLD of replies, and the whole reply is complete and in order.
    #[test]
    fn a_long_multi_get_is_answered_a_part_at_a_time() {
        let (_dir, mut session) = new_session(1000);
        let value = vec![b'v'; 1000];
        let mut set = b"set k 3 0 1000\r\n".to_vec();
        set.extend_from_slice(&value);
        set.extend_from_slice(b"\r\n");
        assert_eq!(text(feed(&mut session, &set, set.len())), "STORED\r\n");
        let mut input = b"gets".to_vec();
        for _ in 0..300 {
            input.extend_from_slice(b" k  nokey");
        }
        input.extend_from_slice(b" \r\nmn\r\n");
        let mut rest = &input[..];
        let (mut all, mut calls) = (Vec::new(), 0);
        while !rest.is_empty() {
            let mut out = Vec::new();
            let progress = session.process(rest, &mut out);
            assert!(progress.consumed > 0 && !progress.close);
            assert!(out.len() < FLUSH_THRESHOLD + 2000, "{} bytes of replies in one call", out.len());
            rest = &rest[progress.consumed..];
            all.extend(out);
            calls += 1;
        }
        assert!(calls > 4, "answered in {calls} calls");
        let all = text(all);
        let header = all.lines().next().unwrap().to_string();
        assert!(header.starts_with("VALUE k 3 1000 "));
        let one = format!("{header}\r\n{}\r\n", "v".repeat(1000));
        assert_eq!(all, format!("{}END\r\nMN\r\n", one.repeat(300)));
    }

    /// A listing of every key is answered a part at a time (each call's replies stay near
    /// FLUSH_THRESHOLD), the connection is asked to call again meanwhile (`has_more`), and
    /// the request after it is answered after its `END`.
    #[test]
    fn a_listing_of_many_keys_is_streamed() {
        let (_dir, mut session) = new_session(100);
        let keys = 20_000;
        let mut sets = Vec::new();
        for i in 0..keys {
            sets.extend_from_slice(format!("set key:{i:05} 0 0 10 noreply\r\n0123456789\r\n").as_bytes());
        }
        assert_eq!(text(feed(&mut session, &sets, 1 << 20)), "");
        for (request, line_start) in [
            (&b"lru_crawler metadump all\r\nmn\r\n"[..], "key=key%3A"),
            (b"stats cachedump 1 0\r\nmn\r\n", "ITEM key:"),
        ] {
            // As the connection does: call again while input is consumed or more is to come.
            let (mut rest, mut all, mut calls) = (request, Vec::new(), 0);
            loop {
                let mut out = Vec::new();
                let progress = session.process(rest, &mut out);
                rest = &rest[progress.consumed..];
                assert!(out.len() < FLUSH_THRESHOLD + 16 * 1024, "{} bytes in one call", out.len());
                all.extend(out);
                calls += 1;
                if (progress.consumed == 0 || rest.is_empty()) && !session.has_more() {
                    break;
                }
            }
            assert!(rest.is_empty(), "the request after the listing is answered");
            assert!(calls > 5, "{calls} calls");
            let all = text(all);
            let lines: Vec<&str> = all.lines().collect();
            assert_eq!(lines.len(), keys + 2);
            assert!(lines[..keys].iter().all(|l| l.starts_with(line_start)), "{:?}", &lines[..3]);
            let mut listed: Vec<&str> = lines[..keys].iter().map(|l| &l[line_start.len()..][..5]).collect();
            listed.sort_unstable();
            listed.dedup();
            assert_eq!(listed.len(), keys, "every key once");
            assert_eq!(&lines[keys..], ["END", "MN"]);
        }
        // A limit stops the listing early.
        let limited = text(feed(&mut session, b"stats cachedump 1 3\r\n", 100));
        assert_eq!(limited.lines().count(), 4, "{limited}");
    }

    /// `flush_all <Unix time in the past>` flushes at once, before the requests after it run
    /// (it used to be handed to the background flusher with delay 0, which could then remove
    /// a value stored after the `OK`; found by the memcache_parse fuzz target).
    #[test]
    fn flush_all_with_a_past_unix_time_flushes_before_the_next_request() {
        let (_dir, mut session) = new_session(8);
        let past = unix_now() - 100;
        let input = format!("set a 0 0 1\r\nx\r\nflush_all {past}\r\nset b 0 0 1\r\ny\r\n");
        assert_eq!(text(feed(&mut session, input.as_bytes(), 1000)), "STORED\r\nOK\r\nSTORED\r\n");
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(text(feed(&mut session, b"get a b\r\n", 100)), "VALUE b 0 1\r\ny\r\nEND\r\n");
    }
}
