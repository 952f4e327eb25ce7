//! A small blocking client for the line protocol, used by `kvclient` and the tests.
//!
//! The client knows each command's reply shape: `keys`, `scan`, `mget`, `stats` and `help`
//! answer with lines up to `END` (or a single `ERROR` line), blank and comment lines get no
//! reply, `quit` ends the connection, and everything else answers with one line.
//!
//! Besides raw requests ([`Client::request`], or [`Client::send`] + [`Client::read_reply`] for
//! pipelining), it has typed calls for the commands kvclient builds on: get/set/del,
//! `exists`, `mget`, `stat`, `copy`, `rename`, `delprefix`, `scan` and `stats`.
//!
//! Over TLS ([`Client::connect_tls`]) the client owns one rustls stream, which cannot be
//! shared between threads, so [`Client::try_clone`] works only on plain connections.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

use crate::escape::{escape_into, unescape};
use crate::store::format::split_token;
use crate::store::recovery::is_comment_or_blank;

/// How the server answers a request line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyShape {
    None,
    Line,
    UntilEnd,
    Closes,
}

/// The reply shape of a request line.
pub fn reply_shape(line: &[u8]) -> ReplyShape {
    if is_comment_or_blank(line) {
        return ReplyShape::None;
    }
    let word = split_token(line).0.to_ascii_lowercase();
    match word.as_slice() {
        b"keys" | b"scan" | b"mget" | b"stats" | b"help" | b"cluster" => ReplyShape::UntilEnd,
        b"quit" if split_token(line).1.is_none() => ReplyShape::Closes,
        _ => ReplyShape::Line,
    }
}

#[derive(Debug)]
pub enum ClientError {
    Connect {
        addr: String,
        error: io::Error,
    },
    Io(io::Error),
    /// The server answered `ERROR <reason>`.
    Server(String),
    /// The server answered something this client does not understand.
    Protocol(String),
    /// The client could not be set up (a CA file, a password), before any request.
    Setup(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect { addr, error } if error.kind() == io::ErrorKind::ConnectionRefused => {
                write!(f, "cannot connect to {addr}: connection refused (is kvserver running?)")
            }
            ClientError::Connect { addr, error } => write!(f, "cannot connect to {addr}: {error}"),
            ClientError::Io(e) => write!(f, "connection failed: {e}"),
            ClientError::Server(reason) => write!(f, "server error: {reason}"),
            ClientError::Protocol(reply) => write!(f, "unexpected reply: {reply}"),
            ClientError::Setup(reason) => f.write_str(reason),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

/// The connection under a [`Client`].
enum Transport {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(stream) => stream.read(buf),
            Transport::Tls(stream) => stream.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(stream) => stream.write(buf),
            Transport::Tls(stream) => stream.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(stream) => stream.flush(),
            Transport::Tls(stream) => stream.flush(),
        }
    }
}

/// Requests buffered before [`Client::send`] writes them out by itself.
const SEND_BUFFER: usize = 64 * 1024;

/// Replies read per system call: a file's chunk arrives as one line of megabytes, which an
/// 8 KiB buffer would read in hundreds of calls.
const RECEIVE_BUFFER: usize = 256 * 1024;

pub struct Client {
    stream: BufReader<Transport>,
    /// Requests not yet written (see [`Client::flush`]).
    out: Vec<u8>,
}

impl Client {
    pub fn connect(addr: &str) -> Result<Client, ClientError> {
        Ok(Client::new(Transport::Plain(tcp_connect(addr)?)))
    }

    /// Connects over TLS, checking the server's certificate against `config`'s roots and the
    /// host part of `addr` (a name or an IP address). The handshake happens here, so a
    /// certificate problem is reported as a connection error.
    pub fn connect_tls(addr: &str, config: Arc<rustls::ClientConfig>) -> Result<Client, ClientError> {
        let connect_error = |error| ClientError::Connect { addr: addr.to_string(), error };
        let host = addr.rsplit_once(':').map_or(addr, |(host, _port)| host);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| connect_error(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        let mut socket = tcp_connect(addr)?;
        let mut tls =
            rustls::ClientConnection::new(config, name).map_err(|e| connect_error(io::Error::other(e)))?;
        while tls.is_handshaking() {
            tls.complete_io(&mut socket).map_err(connect_error)?;
        }
        Ok(Client::new(Transport::Tls(Box::new(rustls::StreamOwned::new(tls, socket)))))
    }

    fn new(transport: Transport) -> Client {
        Client { stream: BufReader::with_capacity(RECEIVE_BUFFER, transport), out: Vec::new() }
    }

    /// Logs in (`auth`); a refusal is [`ClientError::Server`].
    pub fn auth(&mut self, user: &str, password: &str) -> Result<(), ClientError> {
        match self.single(format!("auth {user} {password}").as_bytes())?.as_slice() {
            b"OK" => Ok(()),
            other => Err(Self::protocol_error(other)),
        }
    }

    /// A second handle on the same connection, so one thread can send while another reads.
    /// Plain connections only: a TLS session has one owner.
    pub fn try_clone(&self) -> io::Result<Client> {
        match self.stream.get_ref() {
            Transport::Plain(stream) => Ok(Client::new(Transport::Plain(stream.try_clone()?))),
            Transport::Tls(_) => {
                Err(io::Error::new(io::ErrorKind::Unsupported, "a TLS connection cannot be shared"))
            }
        }
    }

    /// Has the server closed this (idle) connection — restarted, or timed out an idle client?
    /// Looks without blocking and without consuming anything, so a prompt can reconnect
    /// before sending a request instead of losing it.
    pub fn peer_closed(&self) -> bool {
        if !self.stream.buffer().is_empty() {
            return false;
        }
        let socket = match self.stream.get_ref() {
            Transport::Plain(stream) => stream,
            Transport::Tls(stream) => stream.get_ref(),
        };
        if socket.set_nonblocking(true).is_err() {
            return true;
        }
        let closed = match socket.peek(&mut [0u8; 1]) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
        };
        closed || socket.set_nonblocking(false).is_err()
    }

    /// Sends one raw request line without waiting for its reply (for pipelining).
    pub fn send(&mut self, line: &[u8]) -> io::Result<()> {
        self.out.extend_from_slice(line);
        self.out.push(b'\n');
        if self.out.len() >= SEND_BUFFER {
            self.flush()?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        let stream = self.stream.get_mut();
        stream.write_all(&self.out)?;
        self.out.clear();
        stream.flush()
    }

    /// Reads the reply to a request of the given shape: its lines without line endings (the
    /// final `END` included). `Closes` reads to the end of the stream.
    pub fn read_reply(&mut self, shape: ReplyShape) -> io::Result<Vec<Vec<u8>>> {
        let mut lines = Vec::new();
        match shape {
            ReplyShape::None => {}
            ReplyShape::Line => lines.push(self.read_line()?),
            ReplyShape::UntilEnd => loop {
                let line = self.read_line()?;
                let done = line == b"END" || (lines.is_empty() && line.starts_with(b"ERROR"));
                lines.push(line);
                if done {
                    break;
                }
            },
            ReplyShape::Closes => {
                let mut rest = Vec::new();
                if let Err(e) = self.stream.read_to_end(&mut rest) {
                    // A TLS peer that closes without close_notify reports UnexpectedEof.
                    if e.kind() != io::ErrorKind::UnexpectedEof {
                        return Err(e);
                    }
                }
            }
        }
        Ok(lines)
    }

    fn read_line(&mut self) -> io::Result<Vec<u8>> {
        let mut line = Vec::new();
        if self.stream.read_until(b'\n', &mut line)? == 0 || line.last() != Some(&b'\n') {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection"));
        }
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Ok(line)
    }

    /// Sends a raw request line and reads its whole reply.
    pub fn request(&mut self, line: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        self.send(line)?;
        self.flush()?;
        self.read_reply(reply_shape(line))
    }

    fn single(&mut self, line: &[u8]) -> Result<Vec<u8>, ClientError> {
        let reply = self.request(line)?.pop().unwrap_or_default();
        match reply.strip_prefix(b"ERROR ") {
            Some(reason) => Err(ClientError::Server(String::from_utf8_lossy(reason).into_owned())),
            None => Ok(reply),
        }
    }

    fn protocol_error(reply: &[u8]) -> ClientError {
        ClientError::Protocol(String::from_utf8_lossy(reply).into_owned())
    }

    /// The value under `key`, unescaped.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        let reply = self.single(&[b"get ", key].concat())?;
        parse_value(&reply).ok_or_else(|| Self::protocol_error(&reply))
    }

    /// Stores `value` (any bytes; escaped for the wire) under `key`.
    pub fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), ClientError> {
        let mut line = Vec::with_capacity(key.len() + value.len() + 8);
        line.extend_from_slice(b"set ");
        line.extend_from_slice(key);
        line.push(b' ');
        escape_into(value, &mut line);
        match self.single(&line)?.as_slice() {
            b"STORED" => Ok(()),
            other => Err(Self::protocol_error(other)),
        }
    }

    /// Deletes `key`; `false` if it was absent.
    pub fn del(&mut self, key: &[u8]) -> Result<bool, ClientError> {
        match self.single(&[b"del ", key].concat())?.as_slice() {
            b"DELETED" => Ok(true),
            b"NOT_FOUND" => Ok(false),
            other => Err(Self::protocol_error(other)),
        }
    }

    /// Sends `requests` with at most `window` of them awaiting a reply, and calls `each` with
    /// the index and reply of every request, in order. Pipelining saves a round trip per
    /// request; the window keeps both sides' buffers, and this client's memory, bounded.
    /// After a failure (of a request, of `each`) the replies still on their way are read and
    /// dropped, so the connection stays usable.
    pub fn pipelined(
        &mut self,
        requests: impl IntoIterator<Item = Result<Vec<u8>, ClientError>>,
        window: usize,
        mut each: impl FnMut(usize, Vec<Vec<u8>>) -> Result<(), ClientError>,
    ) -> Result<(), ClientError> {
        let mut in_flight = VecDeque::new();
        let mut answered = 0;
        let mut failure = None;
        for request in requests {
            let line = match request {
                Ok(line) => line,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            in_flight.push_back(reply_shape(&line));
            self.send(&line)?;
            if in_flight.len() >= window.max(1) {
                self.flush()?;
                let shape = in_flight.pop_front().unwrap_or(ReplyShape::Line);
                if let Err(e) = each(answered, self.read_reply(shape)?) {
                    failure = Some(e);
                    break;
                }
                answered += 1;
            }
        }
        self.flush()?;
        while let Some(shape) = in_flight.pop_front() {
            let reply = self.read_reply(shape)?;
            if failure.is_none() {
                if let Err(e) = each(answered, reply) {
                    failure = Some(e);
                }
                answered += 1;
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// How many of `keys` exist (a key given twice counts twice).
    pub fn exists(&mut self, keys: &[&[u8]]) -> Result<u64, ClientError> {
        let reply = self.single(&join_request(b"exists", keys))?;
        parse_int(&reply).ok_or_else(|| Self::protocol_error(&reply))
    }

    /// The values of `keys`, in order (`None` for a missing key), unescaped.
    pub fn mget(&mut self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, ClientError> {
        let lines = self.listing(&join_request(b"mget", keys))?;
        lines.iter().map(|line| parse_value(line).ok_or_else(|| Self::protocol_error(line))).collect()
    }

    /// The server's `stat` of `key`, or `None` when it is missing.
    pub fn stat(&mut self, key: &[u8]) -> Result<Option<ItemStat>, ClientError> {
        let reply = self.single(&[b"stat ", key].concat())?;
        parse_stat(&reply).ok_or_else(|| Self::protocol_error(&reply))
    }

    /// `copy` (`rename` when `remove_source`) `src` to `dst`; with `no_overwrite` (`NX`) an
    /// existing `dst` is left alone and [`Transfer::DestinationExists`] returned.
    pub fn copy_or_rename(
        &mut self,
        src: &[u8],
        dst: &[u8],
        remove_source: bool,
        no_overwrite: bool,
    ) -> Result<Transfer, ClientError> {
        let word: &[u8] = if remove_source { b"rename" } else { b"copy" };
        let mut line = join_request(word, &[src, dst]);
        if no_overwrite {
            line.extend_from_slice(b" NX");
        }
        match self.single(&line)?.as_slice() {
            b"OK" => Ok(Transfer::Done),
            b"NOT_FOUND" => Ok(Transfer::SourceMissing),
            b"EXISTS" => Ok(Transfer::DestinationExists),
            other => Err(Self::protocol_error(other)),
        }
    }

    /// Deletes every key starting with `prefix` (one atomic record); returns how many.
    pub fn delprefix(&mut self, prefix: &[u8]) -> Result<u64, ClientError> {
        let reply = self.single(&[b"delprefix ", prefix].concat())?;
        parse_int(&reply).ok_or_else(|| Self::protocol_error(&reply))
    }

    /// One page of `scan`: the next cursor (`0` when done) and the keys of this page.
    pub fn scan(
        &mut self,
        cursor: &[u8],
        pattern: Option<&[u8]>,
        count: usize,
    ) -> Result<(Vec<u8>, Vec<Vec<u8>>), ClientError> {
        let mut line = [b"scan ", cursor].concat();
        if let Some(pattern) = pattern {
            line.extend_from_slice(b" match ");
            line.extend_from_slice(pattern);
        }
        line.extend_from_slice(format!(" count {count}").as_bytes());
        let mut lines = self.listing(&line)?.into_iter();
        let first = lines.next().unwrap_or_default();
        let next = first.strip_prefix(b"CURSOR ").ok_or_else(|| Self::protocol_error(&first))?.to_vec();
        let keys = lines
            .map(|line| match line.strip_prefix(b"KEY ") {
                Some(key) => Ok(key.to_vec()),
                None => Err(Self::protocol_error(&line)),
            })
            .collect::<Result<_, _>>()?;
        Ok((next, keys))
    }

    /// Calls `each` with every key matching the glob `pattern` (all keys when `None`), a page
    /// at a time, so memory stays bounded by one page whatever the number of keys.
    pub fn scan_all(
        &mut self,
        pattern: Option<&[u8]>,
        mut each: impl FnMut(&mut Client, Vec<u8>) -> Result<(), ClientError>,
    ) -> Result<(), ClientError> {
        let mut cursor = b"0".to_vec();
        loop {
            let (next, keys) = self.scan(&cursor, pattern, SCAN_PAGE)?;
            for key in keys {
                each(self, key)?;
            }
            if next == b"0" {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// The keys starting with `prefix`, from `keys`: a plain prefix when it has no glob
    /// metacharacter (understood by every server version), else escaped as a glob. For small
    /// families of keys; [`Client::scan_all`] pages through any number.
    pub fn keys_with_prefix(&mut self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, ClientError> {
        let pattern = if prefix.iter().any(|b| matches!(b, b'*' | b'?' | b'[')) {
            let mut glob = glob_escape(prefix);
            glob.push(b'*');
            glob
        } else {
            prefix.to_vec()
        };
        let line = if pattern.is_empty() { b"keys".to_vec() } else { join_request(b"keys", &[&pattern]) };
        self.listing(&line)?
            .into_iter()
            .map(|line| match line.strip_prefix(b"KEY ") {
                Some(key) => Ok(key.to_vec()),
                None => Err(Self::protocol_error(&line)),
            })
            .collect()
    }

    /// The `stats` reply as (name, value) pairs.
    pub fn stats(&mut self) -> Result<Vec<(String, String)>, ClientError> {
        let lines = self.listing(b"stats")?;
        Ok(lines
            .iter()
            .filter_map(|line| line.strip_prefix(b"STAT "))
            .map(|stat| {
                let text = String::from_utf8_lossy(stat);
                match text.split_once(' ') {
                    Some((name, value)) => (name.to_string(), value.to_string()),
                    None => (text.into_owned(), String::new()),
                }
            })
            .collect())
    }

    /// The lines of a multi-line reply without the final `END`; an `ERROR` reply is
    /// [`ClientError::Server`].
    fn listing(&mut self, line: &[u8]) -> Result<Vec<Vec<u8>>, ClientError> {
        let mut lines = self.request(line)?;
        if let Some(reason) = lines.first().and_then(|first| first.strip_prefix(b"ERROR ")) {
            return Err(ClientError::Server(String::from_utf8_lossy(reason).into_owned()));
        }
        if lines.pop().as_deref() != Some(b"END") {
            return Err(ClientError::Protocol("reply did not end with END".into()));
        }
        Ok(lines)
    }
}

/// Keys asked for per `scan` page by [`Client::scan_all`].
const SCAN_PAGE: usize = 1000;

/// What `copy`/`rename` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    Done,
    SourceMissing,
    DestinationExists,
}

/// The fields of a `stat` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemStat {
    pub size: u64,
    pub flags: u32,
    /// Unix seconds; 0 = never.
    pub expires_at: u64,
    pub cas: u64,
    /// Unix seconds of the last write.
    pub mtime: u64,
}

/// `<word> <arg> <arg>…` as one request line.
fn join_request(word: &[u8], args: &[&[u8]]) -> Vec<u8> {
    let mut line = word.to_vec();
    for arg in args {
        line.push(b' ');
        line.extend_from_slice(arg);
    }
    line
}

/// `INT <n>` → n.
fn parse_int(reply: &[u8]) -> Option<u64> {
    std::str::from_utf8(reply.strip_prefix(b"INT ")?).ok()?.parse().ok()
}

/// `VALUE <escaped>` → the value, `NOT_FOUND` → `None`; anything else is not a value reply.
pub fn parse_value(reply: &[u8]) -> Option<Option<Vec<u8>>> {
    if reply == b"NOT_FOUND" {
        return Some(None);
    }
    unescape(reply.strip_prefix(b"VALUE ")?).ok().map(Some)
}

/// `ITEM <key> size=… flags=… expires_at=… cas=… mtime=…` → its fields; `NOT_FOUND` → `None`.
/// Unknown fields are ignored, so the server may add more.
pub fn parse_stat(reply: &[u8]) -> Option<Option<ItemStat>> {
    if reply == b"NOT_FOUND" {
        return Some(None);
    }
    let text = std::str::from_utf8(reply.strip_prefix(b"ITEM ")?).ok()?;
    let mut fields = text.split(' ');
    fields.next()?; // the key
    let mut stat = ItemStat { size: 0, flags: 0, expires_at: 0, cas: 0, mtime: 0 };
    let mut seen_size = false;
    for field in fields {
        let (name, value) = field.split_once('=')?;
        match name {
            "size" => {
                stat.size = value.parse().ok()?;
                seen_size = true;
            }
            "flags" => stat.flags = value.parse().ok()?,
            "expires_at" => stat.expires_at = value.parse().ok()?,
            "cas" => stat.cas = value.parse().ok()?,
            "mtime" => stat.mtime = value.parse().ok()?,
            _ => {}
        }
    }
    seen_size.then_some(Some(stat))
}

/// `text` with the glob metacharacters of `scan match` / `keys` (`* ? [ ] \`) escaped, so it
/// matches itself literally; `glob_escape(prefix) + "*"` matches every key with that prefix.
pub fn glob_escape(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 1);
    for &b in text {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

fn tcp_connect(addr: &str) -> Result<TcpStream, ClientError> {
    let connect_error = |error| ClientError::Connect { addr: addr.to_string(), error };
    let addrs = addr.to_socket_addrs().map_err(connect_error)?;
    let mut last = io::Error::new(io::ErrorKind::NotFound, "address resolves to nothing");
    for candidate in addrs {
        match TcpStream::connect_timeout(&candidate, Duration::from_secs(5)) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(connect_error(last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_shapes_follow_the_command() {
        assert_eq!(reply_shape(b"KEYS user:"), ReplyShape::UntilEnd);
        assert_eq!(reply_shape(b"stats"), ReplyShape::UntilEnd);
        assert_eq!(reply_shape(b"get k"), ReplyShape::Line);
        assert_eq!(reply_shape(b"# comment"), ReplyShape::None);
        assert_eq!(reply_shape(b""), ReplyShape::None);
        assert_eq!(reply_shape(b"quit"), ReplyShape::Closes);
        assert_eq!(reply_shape(b"quit now"), ReplyShape::Line);
        assert_eq!(reply_shape(b"scan 0 match a*"), ReplyShape::UntilEnd);
        assert_eq!(reply_shape(b"mget a b"), ReplyShape::UntilEnd);
        assert_eq!(reply_shape(b"stat a"), ReplyShape::Line);
    }

    #[test]
    fn stat_replies_parse_and_tolerate_new_fields() {
        let stat = parse_stat(b"ITEM a/b size=12 flags=3 expires_at=0 cas=7 mtime=1700000000 new=1");
        assert_eq!(
            stat,
            Some(Some(ItemStat { size: 12, flags: 3, expires_at: 0, cas: 7, mtime: 1_700_000_000 }))
        );
        assert_eq!(parse_stat(b"NOT_FOUND"), Some(None));
        assert_eq!(parse_stat(b"ITEM a flags=3"), None, "size is required");
        assert_eq!(parse_stat(b"VALUE x"), None);
    }

    #[test]
    fn values_unescape_and_misses_are_none() {
        assert_eq!(parse_value(b"VALUE a\\\\b\\x00"), Some(Some(b"a\\b\0".to_vec())));
        assert_eq!(parse_value(b"NOT_FOUND"), Some(None));
        assert_eq!(parse_value(br"VALUE bad\q"), None);
    }

    #[test]
    fn glob_escape_makes_metacharacters_literal() {
        assert_eq!(glob_escape(b"a*b?[c]\\d/e"), b"a\\*b\\?\\[c\\]\\\\d/e".to_vec());
        assert_eq!(glob_escape(b"plain/dir/"), b"plain/dir/".to_vec());
    }
}
