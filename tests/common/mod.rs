//! Test harness: run the real `kvserver` binary on a free loopback port and stop it when the
//! test ends, whatever happens.
//!
//! The server is started with `--listen 127.0.0.1:0`; its log line `listening on ADDR (…)`
//! tells which port it got, so there is no port race and no sleep: a test waits for exactly
//! that line.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use textkv::client::Client;

pub mod cluster;
pub mod fault_proxy;
pub mod faults;
pub mod linearizability;

pub const KVSERVER: &str = env!("CARGO_BIN_EXE_kvserver");
pub const KVCLIENT: &str = env!("CARGO_BIN_EXE_kvclient");

/// How long a server may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `kvserver`, killed (and reaped) on drop.
pub struct Server {
    child: Child,
    /// The line-protocol address.
    pub addr: SocketAddr,
    /// Every `listening on` address with its protocol name, e.g. `("line protocol", addr)`.
    pub listeners: Vec<(String, SocketAddr)>,
    pub db: PathBuf,
    log: Arc<Mutex<String>>,
    /// The thread copying the server's stderr into `log`; it ends when the server exits.
    log_reader: Option<std::thread::JoinHandle<()>>,
}

/// Output of a server that exited by itself (e.g. refused to start).
pub struct Exited {
    pub status: ExitStatus,
    pub log: String,
}

fn base_command(db: &Path, args: &[&str]) -> Command {
    wrapped_command(&[], db, args)
}

/// `kvserver --db <db> --listen 127.0.0.1:0 <args>` run under `wrapper` (e.g. `strace -f`),
/// or directly when `wrapper` is empty.
pub fn wrapped_command(wrapper: &[&str], db: &Path, args: &[&str]) -> Command {
    let mut command = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut command = Command::new(program);
            command.args(rest).arg(KVSERVER);
            command
        }
        None => Command::new(KVSERVER),
    };
    command
        .arg("--db")
        .arg(db)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

impl Server {
    /// Starts `kvserver --db <db> --listen 127.0.0.1:0 <args>` and waits until it listens.
    pub fn start(db: &Path, args: &[&str]) -> Server {
        match Server::try_start(db, args) {
            Ok(server) => server,
            Err(exited) => panic!("kvserver exited with {}:\n{}", exited.status, exited.log),
        }
    }

    /// Like [`Server::start`], with a hook to adjust the command (e.g. resource limits).
    pub fn start_command(command: Command, db: &Path) -> Result<Server, Exited> {
        Server::spawn(command, db)
    }

    pub fn command(db: &Path, args: &[&str]) -> Command {
        base_command(db, args)
    }

    /// Starts the server; if it exits before listening, returns its status and log.
    pub fn try_start(db: &Path, args: &[&str]) -> Result<Server, Exited> {
        Server::spawn(base_command(db, args), db)
    }

    fn spawn(mut command: Command, db: &Path) -> Result<Server, Exited> {
        let mut child = command.spawn().expect("spawn kvserver");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel::<(String, SocketAddr)>();
        let log_writer = Arc::clone(&log);
        let log_reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(found) = parse_listening(&line) {
                    let _ = ready_tx.send(found);
                }
                let mut log = log_writer.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let mut listeners = Vec::new();
        loop {
            if let Ok(found) = ready_rx.recv_timeout(Duration::from_millis(20)) {
                listeners.push(found);
                // Listeners are announced together; take any that follow right away.
                while let Ok(more) = ready_rx.recv_timeout(Duration::from_millis(50)) {
                    listeners.push(more);
                }
                break;
            }
            if let Some(status) = child.try_wait().expect("try_wait") {
                // The process is gone, so its stderr ends: wait for the last lines.
                let _ = log_reader.join();
                return Err(Exited { status, log: log.lock().unwrap().clone() });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("kvserver did not start listening in time:\n{}", log.lock().unwrap());
            }
        }
        let addr = listeners
            .iter()
            .find(|(protocol, _)| protocol == "line protocol")
            .map(|(_, addr)| *addr)
            .unwrap_or(listeners[0].1);
        Ok(Server { child, addr, listeners, db: db.to_path_buf(), log, log_reader: Some(log_reader) })
    }

    /// Starts the server with a memcached listener too (`--memcached 127.0.0.1:0`) and
    /// returns it with that listener's address.
    pub fn start_memcached(db: &Path, extra: &[&str]) -> (Server, SocketAddr) {
        let mut args = vec!["--memcached", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let server = Server::start(db, &args);
        let addr = server.listener("memcached");
        (server, addr)
    }

    /// The address of the listener whose protocol name contains `protocol`.
    pub fn listener(&self, protocol: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(name, _)| name.contains(protocol))
            .unwrap_or_else(|| panic!("no {protocol} listener in {:?}", self.listeners))
            .1
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.addr.to_string()).expect("connect to kvserver")
    }

    /// A raw TCP connection to the line listener, with a read timeout so a test cannot hang.
    pub fn raw(&self) -> TcpStream {
        raw_connect(self.addr)
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`, up to `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// SIGKILL: the process dies at once, as in a crash.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` and waits (bounded) for the server to exit.
    pub fn signal_and_wait(mut self, signal: i32) -> Exited {
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                if let Some(reader) = self.log_reader.take() {
                    let _ = reader.join();
                }
                return Exited { status, log: self.log() };
            }
            if Instant::now() > deadline {
                panic!("kvserver did not exit after signal {signal}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_listening(line: &str) -> Option<(String, SocketAddr)> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let (addr, rest) = rest.split_once(" (")?;
    let protocol = rest.strip_suffix(')')?;
    Some((protocol.to_string(), addr.parse().ok()?))
}

pub fn raw_connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Sends `request` on a fresh connection, half-closes it, and returns everything the server
/// sent back until it closed. A server that closes early (refusal, `quit`) may reset the
/// connection: the bytes received before that are still returned.
pub fn transcript(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = raw_connect(addr);
    let _ = stream.write_all(request);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    reply
}

/// Reads from `stream` until `expected.len()` bytes have arrived, and returns them.
pub fn read_exact_reply(stream: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut reply = vec![0; len];
    stream.read_exact(&mut reply).expect("read reply");
    reply
}

/// A fresh temporary directory with a database path inside it.
pub fn temp_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("database.txt");
    (dir, db)
}

/// What [`dribble`] saw.
#[derive(Debug)]
pub struct Dribbled {
    /// From the first byte sent to the server closing the connection; None if it never did.
    pub closed_after: Option<Duration>,
    /// Everything the server sent.
    pub reply: Vec<u8>,
}

/// A slow-loris client: sends `bytes` one at a time, then keeps quiet, until the server
/// closes the connection or `limit` has passed since the first byte. The pace is one byte
/// per read timeout of the socket underneath (which the caller sets).
pub fn dribble(stream: &mut (impl Read + Write), bytes: &[u8], limit: Duration) -> Dribbled {
    let started = Instant::now();
    let mut reply = Vec::new();
    let mut next = bytes.iter();
    let mut buf = [0u8; 256];
    while started.elapsed() < limit {
        if let Some(byte) = next.next() {
            if stream.write_all(&[*byte]).and_then(|()| stream.flush()).is_err() {
                return Dribbled { closed_after: Some(started.elapsed()), reply };
            }
        }
        match stream.read(&mut buf) {
            Ok(0) => return Dribbled { closed_after: Some(started.elapsed()), reply },
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return Dribbled { closed_after: Some(started.elapsed()), reply },
        }
    }
    Dribbled { closed_after: None, reply }
}

/// The key [`write_numbered_keys`] gives item `i`: `key:` and `i` zero-padded to
/// `key_bytes` bytes (at least 11).
pub fn numbered_key(i: u64, key_bytes: usize) -> String {
    format!("key:{i:0width$}", width = key_bytes.max(11) - 4)
}

/// Writes a `database.txt` holding `count` items (`numbered_key(i, key_bytes)`, one-byte
/// values), faster than loading them through a server: for tests that need a million keys.
pub fn write_numbered_keys(db: &Path, count: u64, key_bytes: usize) {
    let mut text = Vec::with_capacity(count as usize * (key_bytes + 7));
    for i in 0..count {
        writeln!(text, "set {} v", numbered_key(i, key_bytes)).unwrap();
    }
    std::fs::write(db, text).expect("write the database");
}
