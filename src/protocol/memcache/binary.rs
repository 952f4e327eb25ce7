//! memcached's binary protocol, on the same `--memcached` port as the ASCII one: a connection
//! whose first byte is `0x80` (the request magic) speaks binary for its whole life, as with
//! memcached's `-B auto`.
//!
//! A packet is a 24-byte header and a body of extras, key and value:
//!
//! ```text
//! magic u8 | opcode u8 | key length u16 | extras length u8 | data type u8 |
//! vbucket (request) / status (response) u16 | body length u32 | opaque u32 | CAS u64
//! ```
//!
//! all big-endian. Every opcode memcached 1.6 implements is answered as memcached answers it
//! (status codes, error texts, the opaque echoed, CAS in the header): get, getq, getk, getkq,
//! set, add, replace, append, prepend, delete, incr, decr (with initial value and expiry),
//! touch, gat, gatq, gatk, gatkq, flush, noop, version, stat (with groups), quit, and the
//! quiet forms, which answer only failures (getq/getkq/gatq/gatkq: only hits). Unknown
//! opcodes get `Unknown command` and the connection goes on; a malformed packet (wrong
//! extras or key for its opcode) gets `Invalid arguments` and the connection is closed, and
//! so does `verbosity`, which memcached 1.6 no longer implements (it answers it `Unknown
//! command` and closes). A body over `--max-value-bytes` (plus room for key and extras) gets
//! `Too large.` and is discarded as it arrives, so memory stays bounded as on the ASCII side.
//!
//! Writes are decided by the same store as every other protocol, and a success status is
//! sent only once the write is durable under `--fsync`. Pipelined writes (the quiet forms
//! are made for it) are queued and submitted together, sharing a batch and an fsync; a read
//! or any other request flushes the queue first, so replies keep request order.
//!
//! Authentication (`--users`) is SASL PLAIN, as memcached's `-S`: `SASL list mechs` answers
//! `PLAIN`; `SASL auth` with `\0<user>\0<password>` answers `Authenticated` or `Auth failure.`.
//! Before a login, only SASL, `version`, `noop` and `quit` are answered, the rest get
//! `Auth failure.`; a request beyond the user's role (see [`crate::auth`]) gets `Auth
//! failure.` with the text `Permission denied` and changes nothing. Without `--users` the
//! SASL opcodes are `Unknown command`, as from a memcached started without `-S`.
//!
//! Differences from memcached, each documented in the README: keys follow textkv's key rule
//! (no spaces or control bytes; others get `Invalid arguments`, the connection goes on);
//! append/prepend ignore a CAS; `version` answers memcached's release (`1.6.18`), textkv's
//! own is the `textkv_version` stat; a store error (disk full, I/O) is `Internal error` with
//! the error's text.

use std::sync::Arc;

use super::admin::Registration;
use super::request::{expires_at, parse_stats_group, valid_key, StatsGroup};
use super::{Executor, MEMCACHED_VERSION};
use crate::auth::{Access, Login, Role};
use crate::protocol::{Context, Progress, ReadFence, FLUSH_THRESHOLD};
use crate::stats::ServerStats;
use crate::store::{unix_now, NewCounter, StoreError, StoreMode, WriteOp, WriteOutcome};

pub const REQUEST_MAGIC: u8 = 0x80;
const RESPONSE_MAGIC: u8 = 0x81;
const HEADER_LEN: usize = 24;

/// Room in a body beyond the value: the longest key and the largest extras.
const BODY_OVERHEAD: usize = 250 + 20;

/// Writes queued before they are submitted together (group commit), as on the ASCII side.
const MAX_PENDING_WRITES: usize = 1024;
const MAX_PENDING_BYTES: usize = 4 << 20;

/// The opcodes.
pub mod opcode {
    pub const GET: u8 = 0x00;
    pub const SET: u8 = 0x01;
    pub const ADD: u8 = 0x02;
    pub const REPLACE: u8 = 0x03;
    pub const DELETE: u8 = 0x04;
    pub const INCREMENT: u8 = 0x05;
    pub const DECREMENT: u8 = 0x06;
    pub const QUIT: u8 = 0x07;
    pub const FLUSH: u8 = 0x08;
    pub const GETQ: u8 = 0x09;
    pub const NOOP: u8 = 0x0a;
    pub const VERSION: u8 = 0x0b;
    pub const GETK: u8 = 0x0c;
    pub const GETKQ: u8 = 0x0d;
    pub const APPEND: u8 = 0x0e;
    pub const PREPEND: u8 = 0x0f;
    pub const STAT: u8 = 0x10;
    pub const SETQ: u8 = 0x11;
    pub const ADDQ: u8 = 0x12;
    pub const REPLACEQ: u8 = 0x13;
    pub const DELETEQ: u8 = 0x14;
    pub const INCREMENTQ: u8 = 0x15;
    pub const DECREMENTQ: u8 = 0x16;
    pub const QUITQ: u8 = 0x17;
    pub const FLUSHQ: u8 = 0x18;
    pub const APPENDQ: u8 = 0x19;
    pub const PREPENDQ: u8 = 0x1a;
    pub const VERBOSITY: u8 = 0x1b;
    pub const TOUCH: u8 = 0x1c;
    pub const GAT: u8 = 0x1d;
    pub const GATQ: u8 = 0x1e;
    pub const SASL_LIST_MECHS: u8 = 0x20;
    pub const SASL_AUTH: u8 = 0x21;
    pub const SASL_STEP: u8 = 0x22;
    pub const GATK: u8 = 0x23;
    pub const GATKQ: u8 = 0x24;
}

/// Response status codes, with the text memcached sends for each error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Status {
    Success = 0x00,
    KeyNotFound = 0x01,
    KeyExists = 0x02,
    TooLarge = 0x03,
    InvalidArguments = 0x04,
    NotStored = 0x05,
    NonNumeric = 0x06,
    AuthError = 0x20,
    UnknownCommand = 0x81,
    InternalError = 0x84,
}

impl Status {
    fn text(self) -> &'static [u8] {
        match self {
            Status::Success => b"",
            Status::KeyNotFound => b"Not found",
            Status::KeyExists => b"Data exists for key.",
            Status::TooLarge => b"Too large.",
            Status::InvalidArguments => b"Invalid arguments",
            Status::NotStored => b"Not stored.",
            Status::NonNumeric => b"Non-numeric server-side value for incr or decr",
            Status::AuthError => b"Auth failure.",
            Status::UnknownCommand => b"Unknown command",
            Status::InternalError => b"Internal error",
        }
    }
}

/// A request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub opcode: u8,
    pub key_len: usize,
    pub extras_len: usize,
    pub body_len: usize,
    pub opaque: u32,
    pub cas: u64,
}

impl Header {
    /// Reads a request header; None if the magic is not a request's.
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Option<Header> {
        if bytes[0] != REQUEST_MAGIC {
            return None;
        }
        Some(Header {
            opcode: bytes[1],
            key_len: usize::from(u16::from_be_bytes([bytes[2], bytes[3]])),
            extras_len: usize::from(bytes[4]),
            body_len: u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            opaque: u32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]),
            cas: u64::from_be_bytes(bytes[16..24].try_into().expect("8 bytes")),
        })
    }
}

/// Whom a response answers: the request's opcode and opaque, echoed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub opcode: u8,
    pub opaque: u32,
}

impl Answer {
    /// Appends one response packet.
    pub fn encode(
        self,
        out: &mut Vec<u8>,
        status: Status,
        cas: u64,
        extras: &[u8],
        key: &[u8],
        value: &[u8],
    ) {
        let Answer { opcode, opaque } = self;
        out.reserve(HEADER_LEN + extras.len() + key.len() + value.len());
        out.push(RESPONSE_MAGIC);
        out.push(opcode);
        out.extend_from_slice(&(key.len() as u16).to_be_bytes());
        out.push(extras.len() as u8);
        out.push(0);
        out.extend_from_slice(&(status as u16).to_be_bytes());
        out.extend_from_slice(&((extras.len() + key.len() + value.len()) as u32).to_be_bytes());
        out.extend_from_slice(&opaque.to_be_bytes());
        out.extend_from_slice(&cas.to_be_bytes());
        out.extend_from_slice(extras);
        out.extend_from_slice(key);
        out.extend_from_slice(value);
    }

    /// Appends an error response with memcached's text for `status`.
    fn error(self, out: &mut Vec<u8>, status: Status) {
        self.encode(out, status, 0, &[], &[], status.text());
    }
}

/// One request, borrowed from the input.
struct Packet<'a> {
    header: Header,
    extras: &'a [u8],
    key: &'a [u8],
    value: &'a [u8],
}

impl Packet<'_> {
    fn respond(&self, out: &mut Vec<u8>, status: Status, cas: u64, extras: &[u8], key: &[u8], value: &[u8]) {
        self.answer().encode(out, status, cas, extras, key, value);
    }

    fn error(&self, out: &mut Vec<u8>, status: Status) {
        self.answer().error(out, status);
    }

    fn answer(&self) -> Answer {
        Answer { opcode: self.header.opcode, opaque: self.header.opaque }
    }

    fn extras_u32(&self, at: usize) -> u32 {
        u32::from_be_bytes(self.extras[at..at + 4].try_into().expect("checked length"))
    }

    fn extras_u64(&self, at: usize) -> u64 {
        u64::from_be_bytes(self.extras[at..at + 8].try_into().expect("checked length"))
    }
}

/// What a queued write's reply needs.
struct PendingReply {
    answer: Answer,
    /// For getk-style replies (gatk, gatkq): the key to echo.
    key: Vec<u8>,
    /// A set or replace with a CAS (counted as memcached's `cas_*`).
    compare_and_swap: bool,
}

/// The binary-protocol state of one connection.
pub struct BinarySession {
    ctx: Arc<Context>,
    access: Access,
    /// Bytes of a refused body still to discard.
    swallow: usize,
    pending: Vec<(WriteOp, PendingReply)>,
    pending_bytes: usize,
    fence: ReadFence,
}

/// Whether the opcode is a quiet form (answered only on failure; get/gat: only on a hit).
fn is_quiet(opcode: u8) -> bool {
    use opcode::*;
    matches!(
        opcode,
        GETQ | GETKQ
            | SETQ
            | ADDQ
            | REPLACEQ
            | DELETEQ
            | INCREMENTQ
            | DECREMENTQ
            | QUITQ
            | FLUSHQ
            | APPENDQ
            | PREPENDQ
            | GATQ
            | GATKQ
    )
}

/// The least role that may run the opcode (`--users`).
fn role(opcode: u8, key: &[u8]) -> Role {
    use opcode::*;
    match opcode {
        GET | GETQ | GETK | GETKQ | NOOP | VERSION | QUIT | QUITQ => Role::Read,
        STAT if key != b"reset" => Role::Read,
        FLUSH | FLUSHQ | STAT => Role::Admin,
        _ => Role::Write,
    }
}

/// Whether the extras, key and value lengths fit the opcode, as memcached checks them.
fn well_formed(p: &Packet) -> bool {
    use opcode::*;
    let (extras, key, value) = (p.extras.len(), p.key.len(), p.value.len());
    match p.header.opcode {
        GET | GETQ | GETK | GETKQ | DELETE | DELETEQ => extras == 0 && key > 0 && value == 0,
        SET | SETQ | ADD | ADDQ | REPLACE | REPLACEQ => extras == 8 && key > 0,
        APPEND | APPENDQ | PREPEND | PREPENDQ => extras == 0 && key > 0,
        INCREMENT | INCREMENTQ | DECREMENT | DECREMENTQ => extras == 20 && key > 0 && value == 0,
        TOUCH | GAT | GATQ | GATK | GATKQ => extras == 4 && key > 0 && value == 0,
        FLUSH | FLUSHQ => (extras == 0 || extras == 4) && key == 0 && value == 0,
        NOOP | VERSION | QUIT | QUITQ | SASL_LIST_MECHS => extras == 0 && key == 0 && value == 0,
        STAT => extras == 0 && value == 0,
        _ => true,
    }
}

impl BinarySession {
    pub fn new(ctx: Arc<Context>, access: Access) -> BinarySession {
        BinarySession {
            ctx,
            access,
            swallow: 0,
            pending: Vec::new(),
            pending_bytes: 0,
            fence: ReadFence::default(),
        }
    }

    fn executor(&self) -> Executor<'_> {
        Executor { ctx: &self.ctx }
    }

    /// Handles the complete packets at the start of `input` (see [`crate::protocol::Session`]).
    pub fn process(&mut self, input: &[u8], out: &mut Vec<u8>, registration: &Registration) -> Progress {
        self.fence.reset();
        let mut consumed = 0;
        while out.len() < FLUSH_THRESHOLD && consumed < input.len() {
            let rest = &input[consumed..];
            if self.swallow > 0 {
                let n = self.swallow.min(rest.len());
                self.swallow -= n;
                consumed += n;
                continue;
            }
            let Some(head) = rest.first_chunk::<HEADER_LEN>() else { break };
            let Some(header) = Header::parse(head) else {
                // Not a request packet: the stream is out of step and cannot be resynchronised.
                self.flush_pending(out);
                log::debug!("closing a memcached binary connection: bad magic {:#04x}", head[0]);
                return Progress { consumed, close: true };
            };
            if header.body_len > self.ctx.limits.max_value_bytes + BODY_OVERHEAD {
                self.flush_pending(out);
                ServerStats::bump(&self.ctx.stats.cache.store_too_large);
                let empty = Packet { header, extras: &[], key: &[], value: &[] };
                empty.error(out, Status::TooLarge);
                self.swallow = header.body_len;
                consumed += HEADER_LEN;
                continue;
            }
            let Some(body) = rest.get(HEADER_LEN..HEADER_LEN + header.body_len) else { break };
            consumed += HEADER_LEN + header.body_len;
            if header.extras_len + header.key_len > header.body_len {
                self.flush_pending(out);
                Packet { header, extras: &[], key: &[], value: &[] }.error(out, Status::InvalidArguments);
                return Progress { consumed, close: true };
            }
            let (extras, rest_of_body) = body.split_at(header.extras_len);
            let (key, value) = rest_of_body.split_at(header.key_len);
            let packet = Packet { header, extras, key, value };
            ServerStats::bump(&self.ctx.stats.commands);
            if self.handle(&packet, registration, out) {
                self.flush_pending(out);
                return Progress { consumed, close: true };
            }
        }
        self.flush_pending(out);
        Progress { consumed, close: false }
    }

    /// Runs one request; true to close the connection.
    fn handle(&mut self, p: &Packet, registration: &Registration, out: &mut Vec<u8>) -> bool {
        use opcode::*;
        let op = p.header.opcode;
        if !well_formed(p) {
            self.flush_pending(out);
            p.error(out, Status::InvalidArguments);
            return true;
        }
        if matches!(op, SASL_LIST_MECHS | SASL_AUTH | SASL_STEP) {
            self.flush_pending(out);
            return self.sasl(p, out);
        }
        if !self.access.allows(role(op, p.key)) {
            self.flush_pending(out);
            if self.access.role().is_none() && matches!(op, NOOP | VERSION | QUIT | QUITQ) {
                // Answered before a login, as memcached does.
            } else if self.access.role().is_none() {
                p.error(out, Status::AuthError);
                return false;
            } else {
                p.respond(out, Status::AuthError, 0, &[], &[], b"Permission denied");
                return false;
            }
        }
        if !p.key.is_empty() && op != STAT && !valid_key(p.key) {
            self.flush_pending(out);
            p.error(out, Status::InvalidArguments);
            return false;
        }
        if let Some(write) = self.write_of(p) {
            self.pending_bytes += write.payload_len();
            let key = if matches!(op, GATK | GATKQ) { p.key.to_vec() } else { Vec::new() };
            let compare_and_swap = matches!(write, WriteOp::Store { mode: StoreMode::Cas(_), .. });
            self.pending.push((write, PendingReply { answer: p.answer(), key, compare_and_swap }));
            if self.pending.len() >= MAX_PENDING_WRITES || self.pending_bytes >= MAX_PENDING_BYTES {
                self.flush_pending(out);
            }
            return false;
        }
        self.flush_pending(out);
        let quiet = is_quiet(op);
        match op {
            GET | GETQ | GETK | GETKQ => match self.fence.pass(&self.ctx) {
                Ok(()) => self.get(p, out),
                Err(e) => p.respond(out, Status::InternalError, 0, &[], &[], e.to_string().as_bytes()),
            },
            NOOP => p.respond(out, Status::Success, 0, &[], &[], &[]),
            VERSION => p.respond(out, Status::Success, 0, &[], &[], MEMCACHED_VERSION.as_bytes()),
            QUIT | QUITQ => {
                if !quiet {
                    p.respond(out, Status::Success, 0, &[], &[], &[]);
                }
                return true;
            }
            FLUSH | FLUSHQ => {
                let delay = if p.extras.len() == 4 { i64::from(p.extras_u32(0)) } else { 0 };
                match self.executor().flush(delay) {
                    Ok(()) if quiet => {}
                    Ok(()) => p.respond(out, Status::Success, 0, &[], &[], &[]),
                    Err(e) => store_error(p.answer(), &e, out),
                }
            }
            STAT => self.stat(p, registration, out),
            // memcached 1.6 answers verbosity as an unknown command and closes.
            VERBOSITY => {
                p.error(out, Status::UnknownCommand);
                return true;
            }
            _ => p.error(out, Status::UnknownCommand),
        }
        false
    }

    /// The store write of a write request, or None for any other.
    fn write_of(&self, p: &Packet) -> Option<WriteOp> {
        use opcode::*;
        let c = &self.ctx.stats.cache;
        let now = unix_now();
        let key = p.key.to_vec();
        let cas = (p.header.cas != 0).then_some(p.header.cas);
        let op = match p.header.opcode {
            SET | SETQ | ADD | ADDQ | REPLACE | REPLACEQ | APPEND | APPENDQ | PREPEND | PREPENDQ => {
                ServerStats::bump(&c.cmd_set);
                let (flags, exptime) =
                    if p.extras.len() == 8 { (p.extras_u32(0), i64::from(p.extras_u32(4))) } else { (0, 0) };
                WriteOp::Store {
                    key,
                    value: p.value.into(),
                    flags,
                    expires_at: expires_at(exptime, now),
                    mode: store_mode(p.header.opcode, cas),
                }
            }
            DELETE | DELETEQ => WriteOp::Delete { key, cas },
            INCREMENT | INCREMENTQ | DECREMENT | DECREMENTQ => {
                let exptime = p.extras_u32(16);
                WriteOp::Arith {
                    key,
                    delta: p.extras_u64(0),
                    incr: matches!(p.header.opcode, INCREMENT | INCREMENTQ),
                    cas,
                    // An expiry of 0xffffffff means: do not create a missing counter.
                    create: (exptime != u32::MAX).then(|| NewCounter {
                        initial: p.extras_u64(8),
                        expires_at: expires_at(i64::from(exptime), now),
                    }),
                    expires_at: None,
                }
            }
            TOUCH | GAT | GATQ | GATK | GATKQ => {
                ServerStats::bump(&c.cmd_touch);
                if p.header.opcode != TOUCH {
                    ServerStats::bump(&c.cmd_get);
                }
                WriteOp::Touch { key, expires_at: expires_at(i64::from(p.extras_u32(0)), now) }
            }
            _ => return None,
        };
        Some(op)
    }

    /// Submits the queued writes together and appends their replies in order.
    fn flush_pending(&mut self, out: &mut Vec<u8>) {
        if self.pending.is_empty() {
            return;
        }
        self.pending_bytes = 0;
        let (ops, replies): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending).into_iter().unzip();
        let results = self.ctx.write_many(ops);
        for (reply, result) in replies.into_iter().zip(results) {
            self.write_reply(&reply, result, out);
        }
    }

    /// The response to a write once it is decided (durable).
    fn write_reply(&self, reply: &PendingReply, result: Result<WriteOutcome, StoreError>, out: &mut Vec<u8>) {
        use opcode::*;
        let c = &self.ctx.stats.cache;
        let answer = reply.answer;
        let op = answer.opcode;
        let quiet = is_quiet(op);
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(e) => return store_error(answer, &e, out),
        };
        let fail = |status: Status, out: &mut Vec<u8>| answer.error(out, status);
        match (op, outcome) {
            (_, WriteOutcome::Stored { cas }) => {
                if reply.compare_and_swap {
                    ServerStats::bump(&c.cas_hits);
                }
                if !quiet {
                    answer.encode(out, Status::Success, cas, &[], &[], &[]);
                }
            }
            (ADD | ADDQ, WriteOutcome::NotStored) => fail(Status::KeyExists, out),
            (REPLACE | REPLACEQ, WriteOutcome::NotStored) => fail(Status::KeyNotFound, out),
            (_, WriteOutcome::NotStored) => fail(Status::NotStored, out),
            (_, WriteOutcome::Exists) => {
                if reply.compare_and_swap {
                    ServerStats::bump(&c.cas_badval);
                }
                fail(Status::KeyExists, out)
            }
            (_, WriteOutcome::TooLarge) => {
                ServerStats::bump(&c.store_too_large);
                fail(Status::TooLarge, out)
            }
            (DELETE | DELETEQ, WriteOutcome::Deleted) => {
                ServerStats::bump(&c.delete_hits);
                if !quiet {
                    answer.encode(out, Status::Success, 0, &[], &[], &[]);
                }
            }
            (_, WriteOutcome::Counter { value, cas, .. }) => {
                let incr = matches!(op, INCREMENT | INCREMENTQ);
                ServerStats::bump(if incr { &c.incr_hits } else { &c.decr_hits });
                if !quiet {
                    answer.encode(out, Status::Success, cas, &[], &[], &value.to_be_bytes());
                }
            }
            (_, WriteOutcome::NonNumeric) => fail(Status::NonNumeric, out),
            (TOUCH, WriteOutcome::Touched(item)) => {
                ServerStats::bump(&c.touch_hits);
                answer.encode(out, Status::Success, item.cas, &item.flags.to_be_bytes(), &[], &[]);
            }
            (_, WriteOutcome::Touched(item)) => {
                ServerStats::bump(&c.touch_hits);
                ServerStats::bump(&c.get_hits);
                let flags = item.flags.to_be_bytes();
                answer.encode(out, Status::Success, item.cas, &flags, &reply.key, &item.value);
            }
            (_, WriteOutcome::NotFound) => {
                match op {
                    DELETE | DELETEQ => ServerStats::bump(&c.delete_misses),
                    INCREMENT | INCREMENTQ => ServerStats::bump(&c.incr_misses),
                    DECREMENT | DECREMENTQ => ServerStats::bump(&c.decr_misses),
                    TOUCH | GAT | GATQ | GATK | GATKQ => {
                        ServerStats::bump(&c.touch_misses);
                        if op != TOUCH {
                            ServerStats::bump(&c.get_misses);
                        }
                    }
                    _ if reply.compare_and_swap => ServerStats::bump(&c.cas_misses),
                    _ => {}
                }
                // gatq/gatkq misses are silent, like getq's.
                if !matches!(op, GATQ | GATKQ) {
                    fail(Status::KeyNotFound, out);
                }
            }
            (_, other) => {
                log::error!("unexpected store outcome {other:?} for a memcached binary request");
                fail(Status::InternalError, out)
            }
        }
    }

    fn get(&self, p: &Packet, out: &mut Vec<u8>) {
        use opcode::*;
        let c = &self.ctx.stats.cache;
        ServerStats::bump(&c.cmd_get);
        let with_key = matches!(p.header.opcode, GETK | GETKQ);
        let key: &[u8] = if with_key { p.key } else { &[] };
        let hit = self.ctx.store.with_item(p.key, |item| {
            item.map(|item| {
                p.respond(out, Status::Success, item.cas, &item.flags.to_be_bytes(), key, item.value)
            })
        });
        match hit {
            Some(()) => ServerStats::bump(&c.get_hits),
            None => {
                ServerStats::bump(&c.get_misses);
                match p.header.opcode {
                    GETQ | GETKQ => {}
                    // getk's miss echoes the key instead of a message, as memcached does.
                    GETK => p.respond(out, Status::KeyNotFound, 0, &[], p.key, &[]),
                    _ => p.error(out, Status::KeyNotFound),
                }
            }
        }
    }

    /// `stat [group]`: one response per statistic, then one with an empty key and value.
    /// The groups are the ASCII side's (`stats cachedump` and `detail` are ASCII only: Not
    /// found, as for an unknown group).
    fn stat(&self, p: &Packet, registration: &Registration, out: &mut Vec<u8>) {
        let mut text = Vec::new();
        match p.key {
            b"" => self.executor().stats(&mut text),
            group => match parse_stats_group(&[group]) {
                Ok(StatsGroup::CacheDump { .. }) | Err(_) => return p.error(out, Status::KeyNotFound),
                Ok(group) => self.executor().stats_group(group, registration, &mut text),
            },
        }
        for line in text.split(|&b| b == b'\n') {
            let Some(stat) = line.strip_prefix(b"STAT ") else { continue };
            let stat = stat.strip_suffix(b"\r").unwrap_or(stat);
            let (name, value) = match stat.iter().position(|&b| b == b' ') {
                Some(space) => (&stat[..space], &stat[space + 1..]),
                None => (stat, &b""[..]),
            };
            p.respond(out, Status::Success, 0, &[], name, value);
        }
        p.respond(out, Status::Success, 0, &[], &[], &[]);
    }

    /// SASL: list mechanisms, or a PLAIN login.
    fn sasl(&mut self, p: &Packet, out: &mut Vec<u8>) -> bool {
        let Some(users) = self.ctx.users.clone() else {
            p.error(out, Status::UnknownCommand);
            return false;
        };
        match p.header.opcode {
            opcode::SASL_LIST_MECHS => {
                p.respond(out, Status::Success, 0, &[], &[], b"PLAIN");
                false
            }
            opcode::SASL_AUTH if p.key == b"PLAIN" => {
                // PLAIN's message: [authzid] \0 authcid \0 password.
                let mut parts = p.value.splitn(3, |&b| b == 0);
                let (_authzid, user, password) = (parts.next(), parts.next(), parts.next());
                let (Some(user), Some(password)) = (user, password) else {
                    p.error(out, Status::AuthError);
                    return false;
                };
                match self.access.login(&users, user, password) {
                    Login::Accepted(_) => {
                        p.respond(out, Status::Success, 0, &[], &[], b"Authenticated");
                        false
                    }
                    Login::Refused { close } => {
                        p.error(out, Status::AuthError);
                        close
                    }
                }
            }
            _ => {
                p.error(out, Status::AuthError);
                false
            }
        }
    }
}

/// The store mode of a binary storage opcode; a CAS makes set and replace compare-and-swap
/// (append and prepend ignore it, add never replaces anyway).
fn store_mode(op: u8, cas: Option<u64>) -> StoreMode {
    use opcode::*;
    match (op, cas) {
        (SET | SETQ | REPLACE | REPLACEQ, Some(cas)) => StoreMode::Cas(cas),
        (SET | SETQ, None) => StoreMode::Set,
        (ADD | ADDQ, _) => StoreMode::Add,
        (REPLACE | REPLACEQ, None) => StoreMode::Replace,
        (APPEND | APPENDQ, _) => StoreMode::Append,
        _ => StoreMode::Prepend,
    }
}

/// A write the store could not carry out: `Internal error` with the store's reason.
fn store_error(answer: Answer, error: &StoreError, out: &mut Vec<u8>) {
    answer.encode(out, Status::InternalError, 0, &[], &[], error.to_string().as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_response_has_memcacheds_layout() {
        // memcached 1.6.18's reply to a `get` of k = "hello" with flags 0xdeadbeef, CAS 1.
        let mut out = Vec::new();
        Answer { opcode: opcode::GET, opaque: 10 }.encode(
            &mut out,
            Status::Success,
            1,
            &0xdeadbeef_u32.to_be_bytes(),
            b"",
            b"hello",
        );
        assert_eq!(
            out,
            [
                &[0x81, 0x00, 0, 0, 4, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 10][..],
                &1u64.to_be_bytes(),
                &[0xde, 0xad, 0xbe, 0xef],
                b"hello"
            ]
            .concat()
        );
        out.clear();
        Answer { opcode: opcode::DELETE, opaque: 56 }.error(&mut out, Status::KeyNotFound);
        assert_eq!(&out[6..8], &[0, 1]);
        assert_eq!(&out[24..], b"Not found");
    }

    #[test]
    fn a_header_needs_the_request_magic() {
        let mut bytes = [0u8; HEADER_LEN];
        bytes[0] = RESPONSE_MAGIC;
        assert_eq!(Header::parse(&bytes), None);
    }

    proptest! {
        /// Every header field is read back as a client wrote it.
        #[test]
        fn headers_round_trip(opcode in any::<u8>(), key_len in any::<u16>(), extras_len in any::<u8>(),
                              body_len in any::<u32>(), opaque in any::<u32>(), cas in any::<u64>()) {
            let mut bytes = vec![REQUEST_MAGIC, opcode];
            bytes.extend_from_slice(&key_len.to_be_bytes());
            bytes.extend_from_slice(&[extras_len, 0, 0, 0]);
            bytes.extend_from_slice(&body_len.to_be_bytes());
            bytes.extend_from_slice(&opaque.to_be_bytes());
            bytes.extend_from_slice(&cas.to_be_bytes());
            let header = Header::parse(bytes.as_slice().try_into().unwrap()).unwrap();
            prop_assert_eq!(header, Header {
                opcode,
                key_len: usize::from(key_len),
                extras_len: usize::from(extras_len),
                body_len: body_len as usize,
                opaque,
                cas,
            });
        }
    }
}
