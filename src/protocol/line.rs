//! The human line protocol, for `nc`, telnet, scripts and `kvclient`.
//!
//! One request per line (`\n` or `\r\n`), command names case-insensitive, one reply per
//! request (multi-line replies end with `END`), replies end with `\n`:
//!
//! ```text
//! get <key>                      VALUE <escaped value> | NOT_FOUND
//! set <key> <value>              STORED          (value: rest of the line, escaped)
//! setmeta <key> <flags> <expires-at> <value>     STORED
//! del <key>                      DELETED | NOT_FOUND
//! flush                          OK              (deletes every key)
//! copy <src> <dst> [NX]          OK | NOT_FOUND | EXISTS (NX: dst present)
//! rename <src> <dst> [NX]        OK | NOT_FOUND | EXISTS
//! stat <key>                     ITEM <key> size=… flags=… expires_at=… cas=… mtime=… | NOT_FOUND
//! exists <key>…                  INT <how many of them are present>
//! mget <key>…                    VALUE <value> | NOT_FOUND, per key; END
//! ttl <key>                      INT <seconds left> | INT -1 (no expiry) | INT -2 (no key)
//! expire <key> <seconds>         OK | NOT_FOUND   (0 removes the expiry)
//! incr|decr <key> [<delta>]      INT <new value> | NOT_FOUND | ERROR value is not a decimal number
//! append <key> <value>           STORED          (creates the key when absent)
//! delprefix <prefix>             INT <keys deleted>
//! keys [<pattern>]               KEY <key>… END  (streamed; order below)
//! scan <cursor> [match <pattern>] [count <n>]    CURSOR <next> KEY <key>… END
//! stats                          STAT <name> <value>… END
//! cluster                        NODE <id> <peer-addr> <role> term=<t> match=<i> last_contact_ms=<n>… END
//! cluster add <id> <peer-addr>   OK              (once the member is added; admin)
//! cluster remove <id>            OK              (once the member is removed; admin)
//! compact                        OK              (once the rewrite has finished)
//! ping                           PONG
//! help                           command list… END
//! quit                           (closes the connection)
//! auth <user> <password>         OK | ERROR invalid credentials
//! anything wrong                 ERROR <reason>
//! ```
//!
//! With `--users`, a connection must `auth` before anything but `quit`
//! (`ERROR authentication required`), and a command beyond the user's role gets
//! `ERROR permission denied` and changes nothing: `read` may get, keys, stats, ping, help and
//! the other reads (stat, exists, mget, ttl, scan); `write` also set, setmeta, del and the
//! other changes (copy, rename, expire, incr, decr, append, delprefix); `admin` also flush,
//! compact and `cluster add/remove`. The password is the rest
//! of the `auth` line, so it may contain spaces.
//!
//! Patterns (`keys`, `scan … match`) are globs when they hold `*`, `?` or `[`, else prefixes
//! (see [`super::glob`]). A `scan` answers at most `count` keys (default 100, at most 10,000)
//! and at most about 64 KiB of them, after a `CURSOR` line to pass to the next `scan`; `0`
//! starts and ends a scan, and a key present for the whole scan is returned exactly once
//! (see [`KeyCursor`]). `mget` is answered a part at a time like `keys`.
//!
//! `stat`'s `mtime` is the item's CAS unique read as a clock: CAS uniques are microseconds
//! since the epoch when written (see `store::writer`), so it is the time of the item's last
//! write in this run of the server. The file keeps no times, so an item not written since
//! start-up shows the start-up time. Memory per item is unchanged.
//!
//! `keys` is streamed: its reply is built a part at a time (about [`FLUSH_THRESHOLD`] bytes)
//! while the connection writes the previous part out, so listing a million keys costs a
//! connection one key and one part of the reply, and a client that does not read is timed
//! out as for any other reply. The keys come shard by shard (the shard is picked by the
//! key's hash) and bytewise sorted within a shard: not sorted overall, but the same order
//! for the same keys within one server run (see [`KeyCursor`]).
//!
//! Blank lines and lines starting with `#` get no reply, so a `database.txt` (whose lines are
//! exactly `set`/`setmeta`/`del`/`flush` requests) can be replayed through `nc` as it is.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use super::glob::KeyPattern;
use super::{push_decimal, Context, Progress, ReadFence, Session, FLUSH_THRESHOLD};
use crate::auth::{Access, Login, Role};
use crate::cluster::membership::Change;
use crate::escape::escape_into;
use crate::stats::ServerStats;
use crate::store::format::{self, FormatError, KeyError, KeyText, Record, SetLine};
use crate::store::recovery::{is_comment_or_blank, strip_line_ending};
use crate::store::{unix_now, KeyCursor, StoreMode, Value, WriteOp, WriteOutcome};

/// `help` text: one line per command.
pub const HELP: &[&str] = &[
    "get <key>                                 VALUE <value> or NOT_FOUND",
    "set <key> <value>                         STORED; the value is the rest of the line",
    "setmeta <key> <flags> <expires-at> <value> STORED; flags u32, expiry in Unix seconds (0 = never)",
    "del <key>                                 DELETED or NOT_FOUND",
    "flush                                     OK; deletes every key",
    "copy <src> <dst> [NX]                     OK, NOT_FOUND or EXISTS; one atomic record",
    "rename <src> <dst> [NX]                   OK, NOT_FOUND or EXISTS; one atomic record",
    "stat <key>                                ITEM <key> size= flags= expires_at= cas= mtime=, or NOT_FOUND",
    "exists <key> [<key>...]                   INT <how many are present>",
    "mget <key> [<key>...]                     VALUE <value> or NOT_FOUND per key, then END",
    "ttl <key>                                 INT <seconds left>, -1 without expiry, -2 without the key",
    "expire <key> <seconds>                    OK or NOT_FOUND; 0 removes the expiry",
    "incr <key> [<delta>] / decr ...           INT <new value> or NOT_FOUND",
    "append <key> <value>                      STORED; creates the key when it is absent",
    "delprefix <prefix>                        INT <keys deleted>; one atomic record",
    "keys [<pattern>]                          KEY <key> lines, then END (shard by shard, not sorted)",
    "scan <cursor> [match <pattern>] [count <n>]  CURSOR <next>, KEY <key> lines, END; 0 starts and ends",
    "patterns: * ? [abc] [a-z] [^a] and \\ escapes when any of *?[ is present, else a prefix",
    "stats                                     STAT <name> <value> lines, then END",
    "cluster                                   NODE lines (a cluster node's view of its members), then END",
    "cluster add <id> <peer-addr>              OK once the new member is added (then start it with --join)",
    "cluster remove <id>                       OK once the member is removed",
    "compact                                   OK once the log has been rewritten",
    "ping                                      PONG",
    "help                                      this list, then END",
    "quit                                      close the connection",
    "auth <user> <password>                    OK; log in (needed when the server has --users)",
    "values escape \\\\ \\n \\r \\t and \\xHH; keys are 1-250 bytes without spaces or control characters",
];

/// One parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// A blank or comment line: no reply.
    Nothing,
    Get(&'a [u8]),
    /// A change that is also a `database.txt` record (del, flush, delprefix).
    Write(Record),
    /// Any other change (set, setmeta, copy, rename, expire, incr, decr, append).
    Change(WriteOp),
    /// Reads of several keys; the keys (validated) are the text, space-separated.
    Stat(&'a [u8]),
    Exists(&'a [u8]),
    Mget(&'a [u8]),
    Ttl(&'a [u8]),
    Keys(&'a [u8]),
    Scan {
        cursor: KeyCursor,
        pattern: &'a [u8],
        count: usize,
    },
    Stats,
    /// The members of the cluster as this node sees them (`--node-id`).
    Cluster,
    /// `cluster add <id> <peer-addr>` / `cluster remove <id>`.
    ClusterChange(Change),
    Compact,
    Ping,
    Help,
    Quit,
    Auth {
        user: &'a [u8],
        password: &'a [u8],
    },
}

impl Request<'_> {
    /// The least role that may run this request (`auth` is handled before this matters).
    #[inline]
    pub fn role(&self) -> Role {
        match self {
            Request::Write(Record::Flush) | Request::Compact | Request::ClusterChange(_) => Role::Admin,
            Request::Write(_) | Request::Change(_) => Role::Write,
            _ => Role::Read,
        }
    }

    /// Whether the request reads items (and so passes the session's read fence first).
    fn reads_items(&self) -> bool {
        matches!(
            self,
            Request::Get(_)
                | Request::Stat(_)
                | Request::Exists(_)
                | Request::Mget(_)
                | Request::Ttl(_)
                | Request::Keys(_)
                | Request::Scan { .. }
        )
    }
}

/// Why a request was refused; sent as `ERROR <reason>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineError {
    Format(FormatError),
    ValueTooLarge(usize),
    LineTooLong(usize),
    BadCursor,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineError::Format(e) => e.fmt(f),
            LineError::ValueTooLarge(max) => write!(f, "value too large (max {max} bytes)"),
            LineError::LineTooLong(max) => write!(f, "line too long (max {max} bytes)"),
            LineError::BadCursor => write!(f, "bad cursor (start a scan with 0)"),
        }
    }
}

impl From<FormatError> for LineError {
    fn from(e: FormatError) -> Self {
        LineError::Format(e)
    }
}

fn no_args<'a>(
    rest: Option<&[u8]>,
    request: Request<'a>,
    usage: &'static str,
) -> Result<Request<'a>, LineError> {
    match rest {
        None => Ok(request),
        Some(_) => Err(FormatError::WrongArgs(usage).into()),
    }
}

const CLUSTER_USAGE: &str = "cluster | cluster add <id> <peer-addr> | cluster remove <id>";

/// `cluster`, `cluster add <id> <peer-addr>`, `cluster remove <id>`.
fn parse_cluster<'a>(rest: Option<&[u8]>) -> Result<Request<'a>, LineError> {
    let Some(rest) = rest else { return Ok(Request::Cluster) };
    let usage = || LineError::from(FormatError::WrongArgs(CLUSTER_USAGE));
    let words: Vec<&[u8]> = rest.split(|&b| b == b' ').collect();
    let id = |word: &[u8]| format::parse_number::<u64>(word).filter(|&id| id != 0).ok_or_else(usage);
    match words.as_slice() {
        [verb, id_text, addr] if verb.eq_ignore_ascii_case(b"add") => {
            let addr = std::str::from_utf8(addr).map_err(|_| usage())?.to_string();
            Ok(Request::ClusterChange(Change::Add { id: id(id_text)?, addr }))
        }
        [verb, id_text] if verb.eq_ignore_ascii_case(b"remove") => {
            Ok(Request::ClusterChange(Change::Remove { id: id(id_text)? }))
        }
        _ => Err(usage()),
    }
}

fn single_key<'a>(rest: Option<&'a [u8]>, usage: &'static str) -> Result<&'a [u8], LineError> {
    match rest {
        Some(key) if !key.contains(&b' ') => {
            format::validate_key(key).map_err(FormatError::Key)?;
            Ok(key)
        }
        _ => Err(FormatError::WrongArgs(usage).into()),
    }
}

/// One or more space-separated keys, each checked; returned as the text holding them.
fn key_list<'a>(rest: Option<&'a [u8]>, usage: &'static str) -> Result<&'a [u8], LineError> {
    let keys = rest.ok_or(FormatError::WrongArgs(usage))?;
    for key in keys.split(|&b| b == b' ') {
        format::validate_key(key).map_err(FormatError::Key)?;
    }
    Ok(keys)
}

/// The space-separated arguments of `rest`, `min..=max` of them.
fn args<'a>(
    rest: Option<&'a [u8]>,
    min: usize,
    max: usize,
    usage: &'static str,
) -> Result<Vec<&'a [u8]>, LineError> {
    let args: Vec<&[u8]> = rest.map(|r| r.split(|&b| b == b' ').collect()).unwrap_or_default();
    if args.len() < min || args.len() > max {
        return Err(FormatError::WrongArgs(usage).into());
    }
    Ok(args)
}

fn valid_key(key: &[u8]) -> Result<Vec<u8>, LineError> {
    format::validate_key(key).map_err(FormatError::Key)?;
    Ok(key.to_vec())
}

fn number<T: std::str::FromStr>(text: &[u8], what: &'static str) -> Result<T, LineError> {
    format::parse_number(text).ok_or(FormatError::BadNumber(what).into())
}

/// Longest `keys`/`scan` pattern: a key's length, with room for escapes and classes.
const MAX_PATTERN_BYTES: usize = 4 * format::MAX_KEY_BYTES;

fn pattern(text: &[u8]) -> Result<&[u8], LineError> {
    if text.len() > MAX_PATTERN_BYTES {
        return Err(FormatError::Key(KeyError::TooLong).into());
    }
    Ok(text)
}

/// `scan`'s default and largest `count`.
const SCAN_DEFAULT_COUNT: usize = 100;
const SCAN_MAX_COUNT: usize = 10_000;
const SCAN_USAGE: &str = "scan <cursor> [match <pattern>] [count <n>]";

fn parse_scan(rest: Option<&[u8]>) -> Result<Request<'_>, LineError> {
    let args = args(rest, 1, 5, SCAN_USAGE)?;
    let cursor = KeyCursor::decode(args[0]).ok_or(LineError::BadCursor)?;
    let (mut pattern_text, mut count) = (&b""[..], SCAN_DEFAULT_COUNT);
    for option in args[1..].chunks(2) {
        match option {
            [name, value] if name.eq_ignore_ascii_case(b"match") => pattern_text = pattern(value)?,
            [name, value] if name.eq_ignore_ascii_case(b"count") => {
                count = number::<usize>(value, "count")?.clamp(1, SCAN_MAX_COUNT)
            }
            _ => return Err(FormatError::WrongArgs(SCAN_USAGE).into()),
        }
    }
    Ok(Request::Scan { cursor, pattern: pattern_text, count })
}

fn parse_copy(rest: Option<&[u8]>, remove_source: bool) -> Result<Request<'_>, LineError> {
    let usage = if remove_source { "rename <src> <dst> [NX]" } else { "copy <src> <dst> [NX]" };
    let args = args(rest, 2, 3, usage)?;
    let only_if_absent = match args.get(2) {
        None => false,
        Some(nx) if nx.eq_ignore_ascii_case(b"nx") => true,
        Some(_) => return Err(FormatError::WrongArgs(usage).into()),
    };
    let (src, dst) = (valid_key(args[0])?, valid_key(args[1])?);
    Ok(Request::Change(WriteOp::Copy { src, dst, remove_source, only_if_absent }))
}

fn parse_arith(rest: Option<&[u8]>, incr: bool) -> Result<Request<'_>, LineError> {
    let usage = if incr { "incr <key> [<delta>]" } else { "decr <key> [<delta>]" };
    let args = args(rest, 1, 2, usage)?;
    let delta = match args.get(1) {
        Some(delta) => number(delta, "delta")?,
        None => 1,
    };
    Ok(Request::Change(WriteOp::Arith {
        key: valid_key(args[0])?,
        delta,
        incr,
        cas: None,
        create: None,
        expires_at: None,
    }))
}

fn parse_expire(rest: Option<&[u8]>) -> Result<Request<'_>, LineError> {
    let args = args(rest, 2, 2, "expire <key> <seconds>")?;
    let key = valid_key(args[0])?;
    let seconds: u64 = number(args[1], "seconds")?;
    // 0 removes the expiry; later than 2106 is clamped by the store.
    let expires_at = if seconds == 0 { 0 } else { unix_now().saturating_add(seconds) };
    Ok(Request::Change(WriteOp::Touch { key, expires_at }))
}

/// A request's value: decoded once, its text kept for the log when it is canonical (see
/// [`Value`]).
fn request_value(text: &[u8], max_value_bytes: usize) -> Result<Value, LineError> {
    let value = Value::from_escaped(text).map_err(FormatError::Escape)?;
    if value.len() > max_value_bytes {
        return Err(LineError::ValueTooLarge(max_value_bytes));
    }
    Ok(value)
}

/// `set`/`setmeta`: a store whose value keeps the request's text (the common write path).
fn parse_set(set: SetLine<'_>, max_value_bytes: usize) -> Result<Request<'_>, LineError> {
    let SetLine { key, flags, expires_at, value_text } = set;
    let value = request_value(value_text, max_value_bytes)?;
    Ok(Request::Change(WriteOp::Store {
        key: key.into_owned(),
        value,
        flags,
        expires_at,
        mode: StoreMode::Set,
    }))
}

fn parse_append(rest: Option<&[u8]>, max_value_bytes: usize) -> Result<Request<'_>, LineError> {
    const USAGE: &str = "append <key> <value>";
    let (key, value) = format::split_token(rest.ok_or(FormatError::WrongArgs(USAGE))?);
    let value = request_value(value.ok_or(FormatError::WrongArgs(USAGE))?, max_value_bytes)?;
    let key = valid_key(key)?;
    Ok(Request::Change(WriteOp::Store {
        key,
        value,
        flags: 0,
        expires_at: 0,
        mode: StoreMode::AppendOrCreate,
    }))
}

/// Parses one line (without its line ending).
pub fn parse(line: &[u8], max_value_bytes: usize) -> Result<Request<'_>, LineError> {
    if is_comment_or_blank(line) {
        return Ok(Request::Nothing);
    }
    if let Some(set) = SetLine::parse_as(line, KeyText::Raw) {
        return parse_set(set?, max_value_bytes);
    }
    let (word, rest) = format::split_token(line);
    if format::is_record_command(word) {
        return Ok(Request::Write(Record::parse_request(line)?));
    }
    // Command words are short: lower-case them on the stack, not in a heap copy.
    let mut lower = [0u8; 16];
    let word_lower = match lower.get_mut(..word.len()) {
        Some(slot) => {
            slot.copy_from_slice(word);
            slot.make_ascii_lowercase();
            &*slot
        }
        None => word,
    };
    match word_lower {
        b"get" => single_key(rest, "get <key>").map(Request::Get),
        b"stat" => single_key(rest, "stat <key>").map(Request::Stat),
        b"ttl" => single_key(rest, "ttl <key>").map(Request::Ttl),
        b"exists" => key_list(rest, "exists <key> [<key>...]").map(Request::Exists),
        b"mget" => key_list(rest, "mget <key> [<key>...]").map(Request::Mget),
        b"copy" => parse_copy(rest, false),
        b"rename" => parse_copy(rest, true),
        b"incr" => parse_arith(rest, true),
        b"decr" => parse_arith(rest, false),
        b"expire" => parse_expire(rest),
        b"append" => parse_append(rest, max_value_bytes),
        b"scan" => parse_scan(rest),
        b"keys" => match rest {
            None => Ok(Request::Keys(b"")),
            Some(text) if !text.contains(&b' ') => pattern(text).map(Request::Keys),
            Some(_) => Err(FormatError::WrongArgs("keys [<pattern>]").into()),
        },
        b"stats" => no_args(rest, Request::Stats, "stats"),
        b"cluster" => parse_cluster(rest),
        b"compact" => no_args(rest, Request::Compact, "compact"),
        b"ping" => no_args(rest, Request::Ping, "ping"),
        b"help" => no_args(rest, Request::Help, "help"),
        b"quit" => no_args(rest, Request::Quit, "quit"),
        b"auth" => match rest.map(format::split_token) {
            Some((user, Some(password))) if !user.is_empty() && !password.is_empty() => {
                Ok(Request::Auth { user, password })
            }
            _ => Err(FormatError::WrongArgs("auth <user> <password>").into()),
        },
        _ => Err(FormatError::unknown_command(word).into()),
    }
}

/// Longest line accepted before a login (room for `auth` with a long password).
const UNAUTHENTICATED_LINE_BYTES: usize = 2048;

/// Pipelined writes gathered before they are submitted together: enough to share fsyncs,
/// few enough to bound memory (values can be large).
const MAX_PENDING_WRITES: usize = 1024;
const MAX_PENDING_BYTES: usize = 4 << 20;

/// Line-protocol state of one connection.
pub struct LineSession {
    ctx: Arc<Context>,
    /// Inside a line that was too long: drop bytes up to the next newline.
    skipping: bool,
    /// How many bytes at the start of the unconsumed input are known to hold no newline: a
    /// line of megabytes arrives over many reads, and each read searches only the new bytes.
    searched: usize,
    /// Consecutive writes of the current input, not yet submitted. Replies keep request order
    /// because these are flushed before any other request is answered.
    pending: Vec<WriteOp>,
    pending_bytes: usize,
    access: Access,
    /// A reply being answered a part at a time.
    streaming: Option<Streaming>,
    fence: ReadFence,
}

/// A reply in progress (`keys`, `mget`) and how far it got. Its memory is the pattern and
/// one key, or `mget`'s keys, whatever the number of keys listed or the size of the values.
enum Streaming {
    Keys { pattern: KeyPattern, cursor: KeyCursor },
    Mget { keys: Vec<u8>, next: usize },
}

/// The write a record request stands for. `set` and `setmeta` are parsed as stores of their
/// own (their value keeps its text), `copy` and `rename` too (they take `NX`), so they never
/// arrive here as records.
fn record_op(record: Record) -> Option<WriteOp> {
    Some(match record {
        Record::Del { key } => WriteOp::Delete { key, cas: None },
        Record::Flush => WriteOp::Flush,
        Record::DelPrefix { prefix } => WriteOp::DeletePrefix { prefix },
        Record::Set { .. } | Record::Copy { .. } | Record::Rename { .. } => return None,
    })
}

impl LineSession {
    pub fn new(ctx: Arc<Context>) -> Self {
        let access = Access::new(ctx.users.is_some(), None);
        LineSession {
            ctx,
            skipping: false,
            searched: 0,
            pending: Vec::new(),
            pending_bytes: 0,
            access,
            streaming: None,
            fence: ReadFence::default(),
        }
    }

    /// Names the client in the log lines of failed logins.
    pub fn with_peer(mut self, peer: SocketAddr) -> Self {
        self.access = Access::new(self.ctx.users.is_some(), Some(peer));
        self
    }

    /// Answers `auth`. Returns false when the connection should close.
    fn login(&mut self, user: &[u8], password: &[u8], out: &mut Vec<u8>) -> bool {
        let Some(users) = &self.ctx.users else {
            out.extend_from_slice(b"ERROR authentication is not enabled\n");
            return true;
        };
        match self.access.login(users, user, password) {
            Login::Accepted(_) => out.extend_from_slice(b"OK\n"),
            Login::Refused { close } => {
                out.extend_from_slice(b"ERROR invalid credentials\n");
                return !close;
            }
        }
        true
    }

    /// Runs one line, appending its reply (or queueing it, for a write). Returns false when
    /// the connection should close.
    fn execute(&mut self, line: &[u8], out: &mut Vec<u8>) -> bool {
        let request = match parse(line, self.ctx.limits.max_value_bytes) {
            Ok(Request::Nothing) => return true,
            Ok(request) => request,
            Err(e) => {
                self.flush_writes(out);
                match self.access.role() {
                    Some(_) => error_reply(&e, out),
                    None => out.extend_from_slice(AUTHENTICATION_REQUIRED),
                }
                return true;
            }
        };
        ServerStats::bump(&self.ctx.stats.commands);
        if let Request::Auth { user, password } = request {
            self.flush_writes(out);
            return self.login(user, password, out);
        }
        if !self.access.allows(request.role()) {
            self.flush_writes(out);
            match (request, self.access.role()) {
                (Request::Quit, _) => return false,
                (_, None) => out.extend_from_slice(AUTHENTICATION_REQUIRED),
                (_, Some(_)) => out.extend_from_slice(b"ERROR permission denied\n"),
            }
            return true;
        }
        if log::log_enabled!(log::Level::Debug) {
            log::debug!("line request: {}", String::from_utf8_lossy(&line[..line.len().min(80)]));
        }
        let request = match request {
            Request::Write(record) => {
                match record_op(record) {
                    Some(op) => self.queue_write(op, out),
                    None => {
                        self.flush_writes(out);
                        log::error!("a set, copy or rename request arrived as a record");
                        out.extend_from_slice(b"ERROR internal error\n");
                    }
                }
                return true;
            }
            Request::Change(op) => {
                self.queue_write(op, out);
                return true;
            }
            other => other,
        };
        self.flush_writes(out);
        if request.reads_items() {
            if let Err(e) = self.fence.pass(&self.ctx) {
                error_reply(&e, out);
                return true;
            }
        }
        let store = &self.ctx.store;
        match request {
            Request::Nothing | Request::Write(_) | Request::Change(_) | Request::Auth { .. } => {}
            Request::Get(key) => store.with_item(key, |item| match item {
                Some(item) => {
                    out.extend_from_slice(b"VALUE ");
                    escape_into(item.value, out);
                    out.push(b'\n');
                }
                None => out.extend_from_slice(b"NOT_FOUND\n"),
            }),
            Request::Stat(key) => store.with_item(key, |item| match item {
                Some(item) => {
                    out.extend_from_slice(b"ITEM ");
                    out.extend_from_slice(key);
                    for (name, value) in [
                        (&b" size="[..], item.value.len() as u64),
                        (b" flags=", u64::from(item.flags)),
                        (b" expires_at=", item.expires_at),
                        (b" cas=", item.cas),
                        (b" mtime=", item.cas / 1_000_000),
                    ] {
                        out.extend_from_slice(name);
                        push_decimal(value, out);
                    }
                    out.push(b'\n');
                }
                None => out.extend_from_slice(b"NOT_FOUND\n"),
            }),
            Request::Exists(keys) => {
                let present =
                    keys.split(|&b| b == b' ').filter(|key| store.with_item(key, |i| i.is_some())).count();
                int_reply(present as i64, out);
            }
            Request::Ttl(key) => {
                let now = unix_now();
                let ttl = store.with_item(key, |item| match item {
                    None => -2,
                    Some(item) if item.expires_at == 0 => -1,
                    Some(item) => item.expires_at.saturating_sub(now) as i64,
                });
                int_reply(ttl, out);
            }
            Request::Mget(keys) => {
                self.streaming = Some(Streaming::Mget { keys: keys.to_vec(), next: 0 });
                self.continue_streaming(out);
            }
            Request::Keys(pattern) => {
                self.streaming =
                    Some(Streaming::Keys { pattern: KeyPattern::new(pattern), cursor: KeyCursor::default() });
                self.continue_streaming(out);
            }
            Request::Scan { mut cursor, pattern, count } => {
                let pattern = KeyPattern::new(pattern);
                let keys = store.next_keys(&mut cursor, &|key| pattern.matches(key), count, FLUSH_THRESHOLD);
                out.extend_from_slice(b"CURSOR ");
                cursor.encode_into(out);
                out.push(b'\n');
                for key in keys {
                    key_line(&key, out);
                }
                out.extend_from_slice(b"END\n");
            }
            Request::Stats => self.write_stats(out),
            Request::Cluster => self.write_cluster(out),
            Request::ClusterChange(change) => match &self.ctx.cluster {
                None => out.extend_from_slice(b"ERROR not a cluster node (no --node-id)\n"),
                Some(cluster) => match cluster.change_members(change) {
                    Ok(()) => out.extend_from_slice(b"OK\n"),
                    Err(e) => error_reply(&e, out),
                },
            },
            Request::Compact => match store.compact() {
                Ok(()) => out.extend_from_slice(b"OK\n"),
                Err(e) => error_reply(&e, out),
            },
            Request::Ping => out.extend_from_slice(b"PONG\n"),
            Request::Help => {
                for line in HELP {
                    out.extend_from_slice(line.as_bytes());
                    out.push(b'\n');
                }
                out.extend_from_slice(b"END\n");
            }
            Request::Quit => return false,
        }
        true
    }

    /// Appends the next part of a streamed reply, up to [`FLUSH_THRESHOLD`] bytes of replies
    /// in `out`; ends it with `END` once it is complete.
    fn continue_streaming(&mut self, out: &mut Vec<u8>) {
        let store = &self.ctx.store;
        while out.len() < FLUSH_THRESHOLD {
            match &mut self.streaming {
                None => return,
                Some(Streaming::Keys { pattern, cursor }) => {
                    let budget = FLUSH_THRESHOLD - out.len();
                    for key in store.next_keys(cursor, &|key| pattern.matches(key), usize::MAX, budget) {
                        key_line(&key, out);
                    }
                    if !cursor.is_done() {
                        continue;
                    }
                }
                Some(Streaming::Mget { keys, next }) => {
                    if let Some(key) = keys[*next..].split(|&b| b == b' ').next() {
                        store.with_item(key, |item| match item {
                            Some(item) => {
                                out.extend_from_slice(b"VALUE ");
                                escape_into(item.value, out);
                                out.push(b'\n');
                            }
                            None => out.extend_from_slice(b"NOT_FOUND\n"),
                        });
                        *next += key.len() + 1;
                    }
                    if *next < keys.len() {
                        continue;
                    }
                }
            }
            out.extend_from_slice(b"END\n");
            self.streaming = None;
        }
    }

    /// Queues a write; it is answered, in order, when the queue is submitted (before any
    /// other request is answered, or once the queue is full).
    fn queue_write(&mut self, op: WriteOp, out: &mut Vec<u8>) {
        self.pending_bytes += op.payload_len();
        self.pending.push(op);
        if self.pending.len() >= MAX_PENDING_WRITES || self.pending_bytes >= MAX_PENDING_BYTES {
            self.flush_writes(out);
        }
    }

    /// Submits the queued writes together and appends their replies in order.
    fn flush_writes(&mut self, out: &mut Vec<u8>) {
        if self.pending.is_empty() {
            return;
        }
        self.pending_bytes = 0;
        for result in self.ctx.write_many(self.pending.drain(..).collect()) {
            let reply: &[u8] = match result {
                Ok(WriteOutcome::Stored { .. }) => b"STORED\n",
                Ok(WriteOutcome::Deleted) => b"DELETED\n",
                Ok(WriteOutcome::NotFound) => b"NOT_FOUND\n",
                Ok(WriteOutcome::Flushed | WriteOutcome::Copied | WriteOutcome::Touched(_)) => b"OK\n",
                Ok(WriteOutcome::Exists) => b"EXISTS\n",
                Ok(WriteOutcome::NonNumeric) => b"ERROR value is not a decimal number\n",
                Ok(WriteOutcome::Count(n)) => {
                    int_reply(n as i64, out);
                    continue;
                }
                Ok(WriteOutcome::Counter { value, .. }) => {
                    out.extend_from_slice(b"INT ");
                    push_decimal(value, out);
                    out.push(b'\n');
                    continue;
                }
                Ok(WriteOutcome::TooLarge) => {
                    error_reply(&LineError::ValueTooLarge(self.ctx.limits.max_value_bytes), out);
                    continue;
                }
                Ok(other) => {
                    log::error!("unexpected outcome {other:?} for a line-protocol write");
                    b"ERROR internal error\n"
                }
                Err(e) => {
                    error_reply(&e, out);
                    continue;
                }
            };
            out.extend_from_slice(reply);
        }
    }

    fn write_stats(&self, out: &mut Vec<u8>) {
        use std::fmt::Write as _;
        let s = self.ctx.store.stats();
        let server = &self.ctx.stats;
        let mut text = String::new();
        let mut stat = |name: &str, value: &dyn fmt::Display| {
            let _ = writeln!(text, "STAT {name} {value}");
        };
        stat("pid", &std::process::id());
        stat("version", &env!("CARGO_PKG_VERSION"));
        stat("uptime", &server.uptime_secs());
        stat("keys", &s.keys);
        stat("curr_connections", &ServerStats::read(&server.curr_connections));
        stat("total_connections", &ServerStats::read(&server.total_connections));
        stat("rejected_connections", &ServerStats::read(&server.rejected_connections));
        stat("commands", &ServerStats::read(&server.commands));
        stat("db_bytes", &s.file_bytes);
        stat("db_records", &s.records);
        stat("garbage_ratio", &format_args!("{:.3}", s.garbage_ratio));
        stat("compactions", &s.compactions);
        stat("compacting", &u8::from(s.compacting));
        stat("fsync", &s.fsync);
        stat("write_batches", &s.batches);
        stat("fsyncs", &s.fsyncs);
        stat("write_errors", &s.write_errors);
        stat("load_ms", &s.load_millis);
        stat("max_value_bytes", &self.ctx.limits.max_value_bytes);
        match self.ctx.store.disk_free_bytes() {
            Ok(free) => stat("disk_free_bytes", &free),
            Err(e) => log::warn!("statvfs of the database's directory failed: {e}"),
        }
        if let Some(cluster) = &self.ctx.cluster {
            let c = cluster.status();
            stat("cluster_node_id", &c.id);
            stat("cluster_role", &c.role);
            stat("cluster_leader", &c.leader);
            stat("cluster_term", &c.term);
            stat("cluster_commit_index", &c.commit);
            stat("cluster_applied_index", &c.applied);
        }
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"END\n");
    }

    /// `cluster`: one `NODE` line per member, as this node sees it.
    fn write_cluster(&self, out: &mut Vec<u8>) {
        let Some(cluster) = &self.ctx.cluster else {
            out.extend_from_slice(b"ERROR not a cluster node (no --node-id)\n");
            return;
        };
        let status = cluster.status();
        for m in &status.members {
            let line = format!(
                "NODE {} {} {} term={} match={} last_contact_ms={}\n",
                m.id, m.addr, m.role, status.term, m.matched, m.last_contact_ms
            );
            out.extend_from_slice(line.as_bytes());
        }
        out.extend_from_slice(b"END\n");
    }
}

const AUTHENTICATION_REQUIRED: &[u8] = b"ERROR authentication required\n";

/// `INT <n>`.
fn int_reply(n: i64, out: &mut Vec<u8>) {
    out.extend_from_slice(b"INT ");
    if n < 0 {
        out.push(b'-');
    }
    push_decimal(n.unsigned_abs(), out);
    out.push(b'\n');
}

/// `KEY <key>` (keys hold no spaces or control bytes, so they go out as they are).
fn key_line(key: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"KEY ");
    out.extend_from_slice(key);
    out.push(b'\n');
}

fn error_reply(error: &dyn fmt::Display, out: &mut Vec<u8>) {
    out.extend_from_slice(format!("ERROR {error}\n").as_bytes());
}

impl Session for LineSession {
    fn logged_in(&self) -> bool {
        self.access.role().is_some()
    }

    fn process(&mut self, input: &[u8], out: &mut Vec<u8>) -> Progress {
        // Before a login only `auth` is of use: a client that has not logged in gets short
        // lines, so it cannot make the server buffer --max-line-bytes per connection.
        let max_line = match self.access.role() {
            Some(_) => self.ctx.limits.max_line_bytes,
            None => self.ctx.limits.max_line_bytes.min(UNAUTHENTICATED_LINE_BYTES),
        };
        if self.streaming.is_some() {
            self.continue_streaming(out);
            if self.streaming.is_some() {
                return Progress { consumed: 0, close: false };
            }
        }
        self.fence.reset();
        let mut consumed = 0;
        while out.len() < FLUSH_THRESHOLD && self.streaming.is_none() {
            let rest = &input[consumed..];
            // The input is offered again from its first unconsumed byte, so what an earlier
            // call searched is still at the start of `rest`.
            let from = std::mem::take(&mut self.searched).min(rest.len());
            let Some(newline) = memchr::memchr(b'\n', &rest[from..]).map(|i| from + i) else {
                // No whole line yet. Past the limit, answer now and drop the line's bytes as
                // they come instead of buffering them.
                if rest.len() > max_line {
                    self.flush_writes(out);
                    if !self.skipping {
                        error_reply(&LineError::LineTooLong(max_line), out);
                        self.skipping = true;
                    }
                    consumed = input.len();
                } else {
                    self.searched = rest.len();
                }
                break;
            };
            let line = strip_line_ending(&rest[..=newline]);
            consumed += newline + 1;
            if self.skipping {
                self.skipping = false;
                continue;
            }
            if line.len() > max_line {
                self.flush_writes(out);
                error_reply(&LineError::LineTooLong(max_line), out);
                continue;
            }
            if !self.execute(line, out) {
                return Progress { consumed, close: true };
            }
        }
        self.flush_writes(out);
        Progress { consumed, close: false }
    }

    fn has_more(&self) -> bool {
        self.streaming.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command() {
        assert_eq!(parse(b"GET k", 10), Ok(Request::Get(b"k")));
        assert_eq!(parse(b"keys", 10), Ok(Request::Keys(b"")));
        assert_eq!(parse(b"keys us", 10), Ok(Request::Keys(b"us")));
        assert_eq!(parse(b"Stats", 10), Ok(Request::Stats));
        assert_eq!(parse(b"compact", 10), Ok(Request::Compact));
        assert_eq!(parse(b"cluster", 10), Ok(Request::Cluster));
        let add = Request::ClusterChange(Change::Add { id: 4, addr: "127.0.0.1:7104".into() });
        assert_eq!(parse(b"cluster add 4 127.0.0.1:7104", 10), Ok(add.clone()));
        assert_eq!(add.role(), Role::Admin);
        assert_eq!(parse(b"cluster REMOVE 2", 10), Ok(Request::ClusterChange(Change::Remove { id: 2 })));
        for bad in [&b"cluster add 4"[..], b"cluster remove 0", b"cluster remove x", b"cluster drop 2"] {
            assert!(parse(bad, 10).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse(b"ping", 10), Ok(Request::Ping));
        assert_eq!(parse(b"help", 10), Ok(Request::Help));
        assert_eq!(parse(b"quit", 10), Ok(Request::Quit));
        assert_eq!(parse(b"# note", 10), Ok(Request::Nothing));
        assert_eq!(
            parse(b"AUTH ann pass word", 10),
            Ok(Request::Auth { user: b"ann", password: b"pass word" })
        );
        assert_eq!(parse(b"   ", 10), Ok(Request::Nothing));
        let store = |value: &str, flags, expires_at| {
            Ok(Request::Change(WriteOp::Store {
                key: b"k".to_vec(),
                value: value.into(),
                flags,
                expires_at,
                mode: StoreMode::Set,
            }))
        };
        assert_eq!(parse(b"set k a b", 10), store("a b", 0, 0));
        assert_eq!(
            parse(
                br"SETMETA k 3 9 a
",
                10
            ),
            store("a\n", 3, 9)
        );
    }

    #[test]
    fn parses_the_issue_14_commands_with_their_roles() {
        let copy = |src: &str, dst: &str, remove_source, only_if_absent| {
            Ok(Request::Change(WriteOp::Copy {
                src: src.into(),
                dst: dst.into(),
                remove_source,
                only_if_absent,
            }))
        };
        assert_eq!(parse(b"copy a b", 10), copy("a", "b", false, false));
        assert_eq!(parse(b"COPY a b nx", 10), copy("a", "b", false, true));
        assert_eq!(parse(b"rename a b NX", 10), copy("a", "b", true, true));
        assert_eq!(parse(b"stat k", 10), Ok(Request::Stat(b"k")));
        assert_eq!(parse(b"exists a b a", 10), Ok(Request::Exists(b"a b a")));
        assert_eq!(parse(b"mget a b", 10), Ok(Request::Mget(b"a b")));
        assert_eq!(parse(b"ttl k", 10), Ok(Request::Ttl(b"k")));
        assert_eq!(
            parse(b"decr k 5", 10),
            Ok(Request::Change(WriteOp::Arith {
                key: b"k".to_vec(),
                delta: 5,
                incr: false,
                cas: None,
                create: None,
                expires_at: None
            }))
        );
        assert_eq!(
            parse(b"append k a\\nb", 10),
            Ok(Request::Change(WriteOp::Store {
                key: b"k".to_vec(),
                value: "a\nb".into(),
                flags: 0,
                expires_at: 0,
                mode: StoreMode::AppendOrCreate
            }))
        );
        assert_eq!(
            parse(b"DELPREFIX d/", 10),
            Ok(Request::Write(Record::DelPrefix { prefix: b"d/".to_vec() }))
        );
        assert_eq!(parse(b"keys u*", 10), Ok(Request::Keys(b"u*")));
        assert_eq!(
            parse(b"scan 0 COUNT 20000 match a*", 10),
            Ok(Request::Scan { cursor: KeyCursor::default(), pattern: b"a*", count: SCAN_MAX_COUNT })
        );
        for write in ["copy a b", "rename a b", "expire k 1", "incr k", "decr k", "append k v", "delprefix p"]
        {
            assert_eq!(parse(write.as_bytes(), 10).unwrap().role(), Role::Write, "{write}");
        }
        for read in ["stat k", "exists k", "mget k", "ttl k", "keys", "scan 0"] {
            assert_eq!(parse(read.as_bytes(), 10).unwrap().role(), Role::Read, "{read}");
        }
    }

    #[test]
    fn refuses_bad_requests_with_a_reason() {
        let err = |line: &[u8]| parse(line, 4).unwrap_err().to_string();
        assert_eq!(err(b"get"), "wrong number of arguments, usage: get <key>");
        assert_eq!(err(b"get a b"), "wrong number of arguments, usage: get <key>");
        assert_eq!(err(b"ping now"), "wrong number of arguments, usage: ping");
        assert_eq!(err(b"auth ann"), "wrong number of arguments, usage: auth <user> <password>");
        assert_eq!(err(b"auth ann "), "wrong number of arguments, usage: auth <user> <password>");
        assert_eq!(err(b"frobnicate x"), "unknown command 'frobnicate'");
        assert_eq!(err(b"set k 12345"), "value too large (max 4 bytes)");
        assert!(parse(b"set k 1234", 4).is_ok(), "a value at the limit is accepted");
        assert_eq!(err(b"set k \\x1"), "bad escape: \\x needs two hex digits");
        assert_eq!(err(&[b"get ".as_slice(), &[b'k'; 251]].concat()), "key too long (max 250 bytes)");
    }
}
