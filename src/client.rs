//! A small blocking client for the line protocol, used by `kvclient` and the tests.
//!
//! The client knows each command's reply shape: `keys`, `stats` and `help` answer with lines
//! up to `END` (or a single `ERROR` line), blank and comment lines get no reply, `quit` ends
//! the connection, and everything else answers with one line.
//!
//! Over TLS ([`Client::connect_tls`]) the client owns one rustls stream, which cannot be
//! shared between threads, so [`Client::try_clone`] works only on plain connections.

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
        b"keys" | b"stats" | b"help" => ReplyShape::UntilEnd,
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
        Client { stream: BufReader::new(transport), out: Vec::new() }
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
        if reply == b"NOT_FOUND" {
            return Ok(None);
        }
        let value = reply.strip_prefix(b"VALUE ").ok_or_else(|| Self::protocol_error(&reply))?;
        unescape(value).map(Some).map_err(|_| Self::protocol_error(&reply))
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
    }
}
