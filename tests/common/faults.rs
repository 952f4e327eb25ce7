//! Helpers for the fault tests (crash, full disk, floods): a seeded RNG, resource limits for
//! the spawned server, its memory use, and line-protocol and memcached connections with timeouts.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// SplitMix64: small, seedable, good enough to pick keys and kill moments.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// A seed from `var` if set (to replay a failure), else from the clock; printed either way.
    pub fn from_env(var: &str) -> Rng {
        let seed = std::env::var(var).ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
        });
        eprintln!("{var}={seed}");
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.range(0, 100) < percent
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// A number from the environment, or `default`.
pub fn env_or(var: &str, default: u64) -> u64 {
    std::env::var(var).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// Makes the spawned process start with `resource` limited to `soft`/`hard`.
pub fn with_rlimit(command: &mut Command, resource: libc::__rlimit_resource_t, soft: u64, hard: u64) {
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit { rlim_cur: soft, rlim_max: hard };
            if libc::setrlimit(resource, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Raises this process's soft limit on open files to at least `want` (up to the hard limit)
/// and returns the soft limit now in force.
pub fn raise_nofile(want: u64) -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        if limit.rlim_cur < want {
            limit.rlim_cur = want.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
    limit.rlim_cur
}

/// A field of /proc/<pid>/status in KiB (`VmRSS`: resident now, `VmHWM`: peak resident).
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// A TCP connection whose every read and write times out, split into a buffered reader and
/// a writer.
fn connect_with_timeouts(
    addr: SocketAddr,
    timeout: Duration,
) -> std::io::Result<(BufReader<TcpStream>, TcpStream)> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    Ok((BufReader::new(stream.try_clone()?), stream))
}

/// A line-protocol connection that never blocks a test for long: every read and write has a
/// timeout, and every failure is an error, not a panic (the server may have been killed).
pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    pub fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<Conn> {
        let (reader, writer) = connect_with_timeouts(addr, timeout)?;
        Ok(Conn { reader, writer })
    }

    /// Sends one request line and returns the one-line reply (without its newline).
    pub fn call(&mut self, request: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut line = Vec::with_capacity(request.len() + 1);
        line.extend_from_slice(request);
        line.push(b'\n');
        self.writer.write_all(&line)?;
        self.read_line()
    }

    pub fn read_line(&mut self) -> std::io::Result<Vec<u8>> {
        let mut reply = Vec::new();
        self.reader.read_until(b'\n', &mut reply)?;
        if reply.pop() != Some(b'\n') {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        Ok(reply)
    }

    /// Lines up to and including `END`.
    pub fn call_until_end(&mut self, request: &[u8]) -> std::io::Result<Vec<Vec<u8>>> {
        let mut lines = vec![self.call(request)?];
        while lines.last().map(Vec::as_slice) != Some(b"END") {
            lines.push(self.read_line()?);
        }
        Ok(lines)
    }

    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.writer
    }
}

/// `set <key> <escaped value>`.
pub fn set_request(key: &str, value: &[u8]) -> Vec<u8> {
    let mut line = format!("set {key} ").into_bytes();
    textkv::escape::escape_into(value, &mut line);
    line
}

/// Decodes a `get` reply: `Some(value)` for `VALUE …`, `None` for `NOT_FOUND`.
pub fn decode_get(reply: &[u8]) -> Option<Vec<u8>> {
    if reply == b"NOT_FOUND" {
        return None;
    }
    let escaped = reply.strip_prefix(b"VALUE ").unwrap_or_else(|| {
        panic!("unexpected get reply: {}", String::from_utf8_lossy(reply));
    });
    Some(textkv::escape::unescape(escaped).expect("a VALUE reply is validly escaped"))
}

/// Asserts the server logged no panic.
pub fn assert_no_panic(log: &str) {
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");
}

/// A memcached-protocol connection with timeouts; like [`Conn`], failures are errors.
pub struct McConn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl McConn {
    pub fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<McConn> {
        let (reader, writer) = connect_with_timeouts(addr, timeout)?;
        Ok(McConn { reader, writer })
    }

    /// One reply line, without its `\r\n`.
    pub fn read_line(&mut self) -> std::io::Result<Vec<u8>> {
        let mut reply = Vec::new();
        self.reader.read_until(b'\n', &mut reply)?;
        if !reply.ends_with(b"\r\n") {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        reply.truncate(reply.len() - 2);
        Ok(reply)
    }

    /// Sends raw bytes.
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes)
    }

    /// Sends a command line (`\r\n` added) and returns the one-line reply.
    pub fn call(&mut self, line: &str) -> std::io::Result<Vec<u8>> {
        self.send(format!("{line}\r\n").as_bytes())?;
        self.read_line()
    }

    /// `<command> <key> <flags> 0 <bytes>` with `value` as the data block; the reply line.
    pub fn store(&mut self, command: &str, key: &str, flags: u32, value: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut request = format!("{command} {key} {flags} 0 {}\r\n", value.len()).into_bytes();
        request.extend_from_slice(value);
        request.extend_from_slice(b"\r\n");
        self.send(&request)?;
        self.read_line()
    }

    /// `get` of several keys: the hits as key → (flags, value).
    pub fn get_many(&mut self, keys: &[&str]) -> std::io::Result<Vec<(String, u32, Vec<u8>)>> {
        self.send(format!("get {}\r\n", keys.join(" ")).as_bytes())?;
        self.read_values()
    }

    /// `VALUE` blocks up to `END`.
    pub fn read_values(&mut self) -> std::io::Result<Vec<(String, u32, Vec<u8>)>> {
        let mut hits = Vec::new();
        loop {
            let line = self.read_line()?;
            if line == b"END" {
                return Ok(hits);
            }
            let text = String::from_utf8_lossy(&line).into_owned();
            let words: Vec<&str> = text.split(' ').collect();
            let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad reply {text:?}"));
            if words.len() < 4 || words[0] != "VALUE" {
                return Err(bad());
            }
            let flags = words[2].parse().map_err(|_| bad())?;
            let len: usize = words[3].parse().map_err(|_| bad())?;
            let mut data = vec![0; len + 2];
            self.reader.read_exact(&mut data)?;
            if !data.ends_with(b"\r\n") {
                return Err(bad());
            }
            data.truncate(len);
            hits.push((words[1].to_string(), flags, data));
        }
    }

    /// `get` of one key: its value, or None on a miss.
    pub fn get(&mut self, key: &str) -> std::io::Result<Option<Vec<u8>>> {
        Ok(self.get_many(&[key])?.pop().map(|(_, _, value)| value))
    }

    /// The CAS unique of `key` (via `gets`), or None on a miss.
    pub fn cas_of(&mut self, key: &str) -> std::io::Result<Option<u64>> {
        Ok(self.gets(key)?.map(|(_, cas)| cas))
    }

    /// `gets` of one key: its value and CAS unique, or None on a miss.
    pub fn gets(&mut self, key: &str) -> std::io::Result<Option<(Vec<u8>, u64)>> {
        self.send(format!("gets {key}\r\n").as_bytes())?;
        let line = self.read_line()?;
        if line == b"END" {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&line).into_owned();
        let words: Vec<&str> = text.split(' ').collect();
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad reply {text:?}"));
        let (len, cas): (usize, u64) = match words[..] {
            ["VALUE", _, _, len, cas] => (len.parse().map_err(|_| bad())?, cas.parse().map_err(|_| bad())?),
            _ => return Err(bad()),
        };
        let mut data = vec![0; len + 2];
        self.reader.read_exact(&mut data)?;
        if self.read_line()? != b"END" {
            return Err(bad());
        }
        data.truncate(len);
        Ok(Some((data, cas)))
    }

    /// `cas <key> 0 0 <bytes> <unique>` with `value`: the reply line.
    pub fn cas(&mut self, key: &str, value: &[u8], unique: u64) -> std::io::Result<Vec<u8>> {
        let mut request = format!("cas {key} 0 0 {} {unique}\r\n", value.len()).into_bytes();
        request.extend_from_slice(value);
        request.extend_from_slice(b"\r\n");
        self.send(&request)?;
        self.read_line()
    }

    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.writer
    }
}
