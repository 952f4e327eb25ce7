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
//! keys [<prefix>]                KEY <key>… END  (sorted)
//! stats                          STAT <name> <value>… END
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
//! `ERROR permission denied` and changes nothing: `read` may get, keys, stats, ping and help;
//! `write` also set, setmeta and del; `admin` also flush and compact. The password is the rest
//! of the `auth` line, so it may contain spaces.
//!
//! Blank lines and lines starting with `#` get no reply, so a `database.txt` (whose lines are
//! exactly `set`/`setmeta`/`del`/`flush` requests) can be replayed through `nc` as it is.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use super::{Context, Progress, Session, FLUSH_THRESHOLD};
use crate::auth::{Access, Login, Role};
use crate::escape::escape_into;
use crate::stats::ServerStats;
use crate::store::format::{self, FormatError, KeyError, Record};
use crate::store::recovery::{is_comment_or_blank, strip_line_ending};
use crate::store::{StoreMode, WriteOp, WriteOutcome};

/// `help` text: one line per command.
pub const HELP: &[&str] = &[
    "get <key>                                 VALUE <value> or NOT_FOUND",
    "set <key> <value>                         STORED; the value is the rest of the line",
    "setmeta <key> <flags> <expires-at> <value> STORED; flags u32, expiry in Unix seconds (0 = never)",
    "del <key>                                 DELETED or NOT_FOUND",
    "flush                                     OK; deletes every key",
    "keys [<prefix>]                           KEY <key> lines, sorted, then END",
    "stats                                     STAT <name> <value> lines, then END",
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
    Write(Record),
    Keys(&'a [u8]),
    Stats,
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
            Request::Write(Record::Set { .. } | Record::Del { .. }) => Role::Write,
            Request::Write(Record::Flush) | Request::Compact => Role::Admin,
            _ => Role::Read,
        }
    }
}

/// Why a request was refused; sent as `ERROR <reason>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineError {
    Format(FormatError),
    ValueTooLarge(usize),
    LineTooLong(usize),
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineError::Format(e) => e.fmt(f),
            LineError::ValueTooLarge(max) => write!(f, "value too large (max {max} bytes)"),
            LineError::LineTooLong(max) => write!(f, "line too long (max {max} bytes)"),
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

fn single_key<'a>(rest: Option<&'a [u8]>, usage: &'static str) -> Result<&'a [u8], LineError> {
    match rest {
        Some(key) if !key.contains(&b' ') => {
            format::validate_key(key).map_err(FormatError::Key)?;
            Ok(key)
        }
        _ => Err(FormatError::WrongArgs(usage).into()),
    }
}

/// Parses one line (without its line ending).
pub fn parse(line: &[u8], max_value_bytes: usize) -> Result<Request<'_>, LineError> {
    if is_comment_or_blank(line) {
        return Ok(Request::Nothing);
    }
    let (word, rest) = format::split_token(line);
    if format::is_record_command(word) {
        let record = Record::parse(line)?;
        if let Record::Set { value, .. } = &record {
            if value.len() > max_value_bytes {
                return Err(LineError::ValueTooLarge(max_value_bytes));
            }
        }
        return Ok(Request::Write(record));
    }
    // Command words are short: lower-case them on the stack, not in a heap copy.
    let mut lower = [0u8; 8];
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
        b"keys" => match rest {
            None => Ok(Request::Keys(b"")),
            Some(prefix) if !prefix.contains(&b' ') && prefix.len() <= format::MAX_KEY_BYTES => {
                Ok(Request::Keys(prefix))
            }
            Some(prefix) if prefix.len() > format::MAX_KEY_BYTES => {
                Err(FormatError::Key(KeyError::TooLong).into())
            }
            Some(_) => Err(FormatError::WrongArgs("keys [<prefix>]").into()),
        },
        b"stats" => no_args(rest, Request::Stats, "stats"),
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
    /// Consecutive writes of the current input, not yet submitted. Replies keep request order
    /// because these are flushed before any other request is answered.
    pending: Vec<WriteOp>,
    pending_bytes: usize,
    access: Access,
}

impl LineSession {
    pub fn new(ctx: Arc<Context>) -> Self {
        let access = Access::new(ctx.users.is_some(), None);
        LineSession { ctx, skipping: false, pending: Vec::new(), pending_bytes: 0, access }
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
        if let Request::Write(record) = request {
            let op = match record {
                Record::Set { key, value, flags, expires_at } => {
                    self.pending_bytes += key.len() + value.len();
                    WriteOp::Store { key, value, flags, expires_at, mode: StoreMode::Set }
                }
                Record::Del { key } => WriteOp::Delete { key, cas: None },
                Record::Flush => WriteOp::Flush,
            };
            self.pending.push(op);
            if self.pending.len() >= MAX_PENDING_WRITES || self.pending_bytes >= MAX_PENDING_BYTES {
                self.flush_writes(out);
            }
            return true;
        }
        self.flush_writes(out);
        let store = &self.ctx.store;
        match request {
            Request::Nothing | Request::Write(_) | Request::Auth { .. } => {}
            Request::Get(key) => store.with_item(key, |item| match item {
                Some(item) => {
                    out.extend_from_slice(b"VALUE ");
                    escape_into(item.value, out);
                    out.push(b'\n');
                }
                None => out.extend_from_slice(b"NOT_FOUND\n"),
            }),
            Request::Keys(prefix) => {
                for key in store.keys(prefix) {
                    out.extend_from_slice(b"KEY ");
                    out.extend_from_slice(&key);
                    out.push(b'\n');
                }
                out.extend_from_slice(b"END\n");
            }
            Request::Stats => self.write_stats(out),
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

    /// Submits the queued writes together and appends their replies in order.
    fn flush_writes(&mut self, out: &mut Vec<u8>) {
        if self.pending.is_empty() {
            return;
        }
        self.pending_bytes = 0;
        for result in self.ctx.store.write_many(self.pending.drain(..)) {
            let reply: &[u8] = match result {
                Ok(WriteOutcome::Stored { .. }) => b"STORED\n",
                Ok(WriteOutcome::Deleted) => b"DELETED\n",
                Ok(WriteOutcome::NotFound) => b"NOT_FOUND\n",
                Ok(WriteOutcome::Flushed) => b"OK\n",
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
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"END\n");
    }
}

const AUTHENTICATION_REQUIRED: &[u8] = b"ERROR authentication required\n";

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
        let mut consumed = 0;
        while out.len() < FLUSH_THRESHOLD {
            let rest = &input[consumed..];
            let Some(newline) = rest.iter().position(|&b| b == b'\n') else {
                // No whole line yet. Past the limit, answer now and drop the line's bytes as
                // they come instead of buffering them.
                if rest.len() > max_line {
                    self.flush_writes(out);
                    if !self.skipping {
                        error_reply(&LineError::LineTooLong(max_line), out);
                        self.skipping = true;
                    }
                    consumed = input.len();
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
        assert_eq!(parse(b"ping", 10), Ok(Request::Ping));
        assert_eq!(parse(b"help", 10), Ok(Request::Help));
        assert_eq!(parse(b"quit", 10), Ok(Request::Quit));
        assert_eq!(parse(b"# note", 10), Ok(Request::Nothing));
        assert_eq!(
            parse(b"AUTH ann pass word", 10),
            Ok(Request::Auth { user: b"ann", password: b"pass word" })
        );
        assert_eq!(parse(b"   ", 10), Ok(Request::Nothing));
        assert_eq!(
            parse(b"set k a b", 10),
            Ok(Request::Write(Record::Set {
                key: b"k".to_vec(),
                value: b"a b".to_vec(),
                flags: 0,
                expires_at: 0
            }))
        );
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
