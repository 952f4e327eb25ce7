//! Listeners, the accept loop, the connection cap and graceful shutdown.
//!
//! Each listener has an accept thread; each accepted connection gets its own named thread
//! (`std::net`, blocking I/O: simple, and fast enough that the disk, not the thread model, is
//! the limit for durable writes). Every listener shares one connection cap and one [`Store`].
//!
//! Shutdown (SIGINT/SIGTERM in `kvserver`, or [`ShutdownHandle::shutdown`]): the accept loops
//! stop, every connection's read side is shut so its thread finishes the requests it already
//! read and exits, then the store drains the writer and fsyncs the log. To reach the sockets,
//! the server keeps a second reference to each (an `Arc<TcpStream>` shared with the
//! connection's thread), not a second descriptor: a connection costs one descriptor.
//!
//! A connection over the cap gets the protocol's "too many connections" reply, delivered
//! even if it sent a request at once ([`refusal`]). If `accept` itself fails because the
//! process ran out of descriptors anyway, the accept loop frees a spare descriptor it keeps
//! for this, accepts and refuses one client with the same reply, takes the spare back and
//! pauses briefly; accept errors are logged at most once per [`LOG_INTERVAL`], with a count.
//!
//! TLS ([`Server::with_tls`]) wraps each accepted stream in a rustls server connection inside
//! the connection's own thread, so a slow or hostile handshake holds up only that thread
//! (bounded by the request deadline, see [`deadline`]), and the shutdown path above still
//! works on the TCP stream underneath. A client that speaks plaintext to a TLS listener fails
//! the handshake and is disconnected.
//!
//! Time limits ([`deadline`]): with `--users` a connection must log in within
//! `--login-timeout` of connecting; a request (or a TLS handshake), once begun, must arrive
//! whole within `--request-timeout`, and a reply must be taken within it; between requests
//! only `--idle-timeout` (off by default) applies. A connection closed by a deadline is told
//! why in its protocol's error line when the protocol has one.
//!
//! [`Store`]: crate::store::Store

pub mod connection;
pub mod deadline;
pub mod descriptors;
pub mod refusal;

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::protocol::line::LineSession;
use crate::protocol::memcache::MemcacheSession;
use crate::protocol::{Context, Session};
use crate::stats::ServerStats;
use deadline::{Clock, Deadlines, Expiry, TimedSocket};
use refusal::Refuser;

/// Which protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Line,
    /// memcached's ASCII protocol (`--memcached`).
    Memcached,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Line => "line protocol",
            Protocol::Memcached => "memcached protocol",
        }
    }

    fn session(self, ctx: &Arc<Context>, peer: Option<SocketAddr>) -> Box<dyn Session> {
        match (self, peer) {
            (Protocol::Line, Some(peer)) => Box::new(LineSession::new(Arc::clone(ctx)).with_peer(peer)),
            (Protocol::Line, None) => Box::new(LineSession::new(Arc::clone(ctx))),
            (Protocol::Memcached, Some(peer)) => {
                Box::new(MemcacheSession::new(Arc::clone(ctx)).with_peer(peer))
            }
            (Protocol::Memcached, None) => Box::new(MemcacheSession::new(Arc::clone(ctx))),
        }
    }

    /// Sent to a connection over the cap before it is closed.
    fn too_many_connections(self) -> &'static [u8] {
        match self {
            Protocol::Line => b"ERROR too many connections\n",
            Protocol::Memcached => b"SERVER_ERROR too many open connections\r\n",
        }
    }

    /// Sent to a connection closed because it missed a deadline.
    fn expired(self, expiry: Expiry) -> &'static [u8] {
        match (self, expiry) {
            (Protocol::Line, Expiry::Login) => b"ERROR login timed out\n",
            (Protocol::Line, Expiry::Request) => b"ERROR request timed out\n",
            (Protocol::Memcached, Expiry::Login) => b"CLIENT_ERROR login timed out\r\n",
            (Protocol::Memcached, Expiry::Request) => b"CLIENT_ERROR request timed out\r\n",
        }
    }
}

/// Connection-level settings.
#[derive(Debug, Clone, Copy)]
pub struct ServerConfig {
    pub max_connections: u64,
    /// Close a connection that sends nothing (or reads nothing) for this long.
    pub idle_timeout: Option<Duration>,
    /// With `--users`, close a connection not logged in this long after it connected.
    pub login_timeout: Option<Duration>,
    /// Close a connection whose request, once begun, is not complete this long after; and
    /// one that reads nothing of its replies for this long.
    pub request_timeout: Option<Duration>,
}

impl Default for ServerConfig {
    /// `kvserver`'s defaults.
    fn default() -> Self {
        ServerConfig {
            max_connections: 1024,
            idle_timeout: None,
            login_timeout: Some(Duration::from_secs(10)),
            request_timeout: Some(Duration::from_secs(30)),
        }
    }
}

/// How long shutdown waits for connections to finish before giving up on them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Repeated warnings about accepting (refusals, accept errors) are logged at most this often.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Pause after `accept` failed for want of descriptors, so the loop does not spin.
const DESCRIPTOR_BACKOFF: Duration = Duration::from_millis(10);

struct State {
    stopping: AtomicBool,
    /// Every open connection's socket, shared with its thread, so shutdown can end its reads.
    conns: Mutex<HashMap<u64, Arc<TcpStream>>>,
    next_id: AtomicU64,
    listen_addrs: Mutex<Vec<SocketAddr>>,
}

/// Stops a running [`Server`] from another thread (a signal handler thread, a test).
#[derive(Clone)]
pub struct ShutdownHandle(Arc<State>);

impl ShutdownHandle {
    pub fn shutdown(&self) {
        if self.0.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        // Wake every accept loop with a connection of our own; it sees `stopping` and exits.
        for addr in self.0.listen_addrs.lock().iter() {
            let mut wake = *addr;
            if wake.ip().is_unspecified() {
                wake.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        }
    }
}

pub struct Server {
    ctx: Arc<Context>,
    config: ServerConfig,
    state: Arc<State>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Server {
    pub fn new(ctx: Arc<Context>, config: ServerConfig) -> Self {
        let state = Arc::new(State {
            stopping: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            listen_addrs: Mutex::new(Vec::new()),
        });
        Server { ctx, config, state, tls: None }
    }

    /// Serves every listener over TLS with this configuration (see [`crate::tls`]).
    pub fn with_tls(mut self, tls: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(tls);
        self
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(Arc::clone(&self.state))
    }

    /// Serves already-bound listeners until shutdown, then drains connections and closes the
    /// store. Taking bound listeners lets callers (and tests) bind port 0.
    pub fn serve(self, listeners: Vec<(TcpListener, Protocol)>) -> io::Result<()> {
        if self.tls.is_some() {
            log::info!("TLS on every listener");
        }
        let refuser = Refuser::start()?;
        let mut accept_threads = Vec::new();
        for (listener, protocol) in listeners {
            let addr = listener.local_addr()?;
            self.state.listen_addrs.lock().push(addr);
            // A shutdown asked for before this address was known (a signal during start-up)
            // could not wake its accept loop: check for it now that it would.
            if self.state.stopping.load(Ordering::SeqCst) {
                break;
            }
            log::info!("listening on {addr} ({})", protocol.name());
            let acceptor = Acceptor {
                listener,
                protocol,
                ctx: Arc::clone(&self.ctx),
                config: self.config,
                state: Arc::clone(&self.state),
                tls: self.tls.clone(),
                refuser: refuser.clone(),
                spare: spare_descriptor(),
                refusals_log: RateLimitedLog::default(),
                errors_log: RateLimitedLog::default(),
            };
            accept_threads.push(
                std::thread::Builder::new()
                    .name(format!("accept-{}", addr.port()))
                    .spawn(move || acceptor.run())?,
            );
        }
        for thread in accept_threads {
            if thread.join().is_err() {
                log::error!("an accept thread panicked");
            }
        }
        self.drain_connections();
        self.ctx.store.shutdown();
        Ok(())
    }

    fn drain_connections(&self) {
        let conns = self.state.conns.lock();
        log::info!("shutting down: finishing {} open connections", conns.len());
        for stream in conns.values() {
            let _ = stream.shutdown(Shutdown::Read);
        }
        drop(conns);
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while ServerStats::read(&self.ctx.stats.curr_connections) > 0 {
            if Instant::now() > deadline {
                log::warn!("shutting down with connections still open");
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A descriptor held only to be given up when `accept` fails with EMFILE, so that one client
/// can still be accepted and told why it is refused.
fn spare_descriptor() -> Option<File> {
    File::open("/dev/null").ok()
}

/// A warning that may repeat many times a second under attack: logged at most once per
/// [`LOG_INTERVAL`], saying how many were left out in between.
#[derive(Default)]
struct RateLimitedLog {
    last: Option<Instant>,
    left_out: u64,
}

impl RateLimitedLog {
    fn warn(&mut self, message: impl FnOnce() -> String) {
        let now = Instant::now();
        if self.last.is_some_and(|last| now.duration_since(last) < LOG_INTERVAL) {
            self.left_out += 1;
            return;
        }
        match std::mem::take(&mut self.left_out) {
            0 => log::warn!("{}", message()),
            n => log::warn!("{} ({n} more like it in the last {} s)", message(), LOG_INTERVAL.as_secs()),
        }
        self.last = Some(now);
    }
}

struct Acceptor {
    listener: TcpListener,
    protocol: Protocol,
    ctx: Arc<Context>,
    config: ServerConfig,
    state: Arc<State>,
    tls: Option<Arc<rustls::ServerConfig>>,
    refuser: Refuser,
    spare: Option<File>,
    refusals_log: RateLimitedLog,
    errors_log: RateLimitedLog,
}

impl Acceptor {
    fn run(mut self) {
        loop {
            let accepted = self.listener.accept();
            if self.state.stopping.load(Ordering::SeqCst) {
                break;
            }
            match accepted {
                Ok((stream, _)) => self.admit(stream),
                Err(e) => self.accept_failed(&e),
            }
        }
    }

    fn accept_failed(&mut self, e: &io::Error) {
        self.errors_log.warn(|| format!("accept failed: {e}"));
        if !matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
            return;
        }
        // Out of descriptors: use the spare one to tell a waiting client why it is refused.
        if self.spare.take().is_some() {
            if let Ok((stream, _)) = self.listener.accept() {
                ServerStats::bump(&self.ctx.stats.rejected_connections);
                refusal::refuse_now(&stream, self.protocol.too_many_connections());
                refusal::drain_arrived(&stream);
            }
            self.spare = spare_descriptor();
        }
        std::thread::sleep(DESCRIPTOR_BACKOFF);
    }

    fn admit(&mut self, stream: TcpStream) {
        let stats = &self.ctx.stats;
        let open = stats.curr_connections.fetch_add(1, Ordering::SeqCst) + 1;
        if open > self.config.max_connections {
            stats.curr_connections.fetch_sub(1, Ordering::SeqCst);
            ServerStats::bump(&stats.rejected_connections);
            self.refusals_log
                .warn(|| format!("refused a connection: {} connections open (--max-connections)", open - 1));
            self.refuser.refuse(stream, self.protocol.too_many_connections());
            return;
        }
        ServerStats::bump(&stats.total_connections);
        let id = self.state.next_id.fetch_add(1, Ordering::Relaxed);
        let connection = Connection {
            id,
            stream: Arc::new(stream),
            protocol: self.protocol,
            ctx: Arc::clone(&self.ctx),
            config: self.config,
            state: Arc::clone(&self.state),
            tls: self.tls.clone(),
        };
        let spawned = std::thread::Builder::new().name(format!("conn-{id}")).spawn(move || connection.run());
        if let Err(e) = spawned {
            stats.curr_connections.fetch_sub(1, Ordering::SeqCst);
            log::error!("could not start a connection thread: {e}");
        }
    }
}

struct Connection {
    id: u64,
    stream: Arc<TcpStream>,
    protocol: Protocol,
    ctx: Arc<Context>,
    config: ServerConfig,
    state: Arc<State>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Connection {
    fn run(mut self) {
        let connected = Instant::now();
        let peer_addr = self.stream.peer_addr().ok();
        let peer = peer_addr.map_or_else(|| "?".to_string(), |a| a.to_string());
        log::debug!("connection {} from {peer} ({})", self.id, self.protocol.name());
        let clock = Clock::default();
        let result = self.serve(peer_addr, connected, &clock);
        if let (Err(_), Some(expiry)) = (&result, clock.expired()) {
            let (what, flag) = match expiry {
                Expiry::Login => ("not logged in", "--login-timeout"),
                Expiry::Request => ("request not complete", "--request-timeout"),
            };
            log::info!(
                "closing connection {} from {peer}: {what} after {} ms ({flag})",
                self.id,
                connected.elapsed().as_millis()
            );
        } else if let Err(e) = result {
            match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    log::info!(
                        "closing connection {} from {peer}: idle or not reading its replies \
                         (--idle-timeout, --request-timeout)",
                        self.id
                    )
                }
                io::ErrorKind::InvalidData if self.tls.is_some() => {
                    // rustls reports a failed handshake (plaintext, a bad client) this way.
                    log::info!("closing connection {} from {peer}: TLS error: {e}", self.id)
                }
                _ => log::debug!("connection {} from {peer} ended: {e}", self.id),
            }
        }
        self.state.conns.lock().remove(&self.id);
        self.ctx.stats.curr_connections.fetch_sub(1, Ordering::SeqCst);
    }

    fn serve(&mut self, peer: Option<SocketAddr>, connected: Instant, clock: &Clock) -> io::Result<()> {
        self.stream.set_nodelay(true)?;
        let config = self.config;
        let mut socket = TimedSocket::new(&self.stream, clock, config.idle_timeout, config.request_timeout)?;
        self.state.conns.lock().insert(self.id, Arc::clone(&self.stream));
        if self.state.stopping.load(Ordering::SeqCst) {
            return Ok(());
        }
        let deadlines = Deadlines {
            clock,
            login_by: config.login_timeout.filter(|_| self.ctx.users.is_some()).map(|t| connected + t),
            request_timeout: config.request_timeout,
        };
        let mut session = self.protocol.session(&self.ctx, peer);
        let Some(tls) = &self.tls else {
            let result = connection::serve(&mut socket, session.as_mut(), &deadlines);
            return self.farewell(result, clock, &mut socket);
        };
        let mut tls = rustls::ServerConnection::new(Arc::clone(tls)).map_err(io::Error::other)?;
        // The handshake counts as a request begun at connection time: a client that dribbles
        // it is closed at the request deadline (or the login deadline, if sooner).
        deadlines.arm(session.logged_in(), Some(connected));
        while tls.is_handshaking() {
            tls.complete_io(&mut socket)?;
        }
        let mut stream = rustls::Stream::new(&mut tls, &mut socket);
        let result = connection::serve(&mut stream, session.as_mut(), &deadlines);
        let result = self.farewell(result, clock, &mut stream);
        if result.is_ok() {
            // Tell the client the stream ended on purpose (not a truncation attack).
            tls.send_close_notify();
            while tls.wants_write() {
                tls.write_tls(&mut socket)?;
            }
        }
        result
    }

    /// After a missed deadline, tells the client why its connection closes.
    fn farewell(&self, result: io::Result<()>, clock: &Clock, stream: &mut impl io::Write) -> io::Result<()> {
        if let (Err(_), Some(expiry)) = (&result, clock.expired()) {
            clock.allow_farewell();
            let _ = stream.write_all(self.protocol.expired(expiry)).and_then(|()| stream.flush());
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Limits;
    use crate::store::{Store, StoreConfig};
    use std::io::{Read, Write};

    /// The EMFILE path on its own (a real EMFILE in an integration test is transient, since
    /// refusals free their descriptors within 0.5 s): the spare descriptor is given up, one
    /// waiting client is accepted and told why, and the spare is taken back.
    #[test]
    fn out_of_descriptors_the_spare_lets_a_waiting_client_read_the_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = Arc::new(Context {
            store: Arc::new(Store::open(StoreConfig::new(dir.path().join("database.txt"))).unwrap()),
            stats: Arc::new(ServerStats::default()),
            limits: Limits { max_value_bytes: 1024, max_line_bytes: 8192 },
            users: None,
            cluster: None,
        });
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut waiting = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        waiting.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        waiting.write_all(b"ping\n").unwrap();
        let mut acceptor = Acceptor {
            listener,
            protocol: Protocol::Line,
            ctx: Arc::clone(&ctx),
            config: ServerConfig::default(),
            state: Server::new(Arc::clone(&ctx), ServerConfig::default()).state,
            tls: None,
            refuser: Refuser::start().unwrap(),
            spare: spare_descriptor(),
            refusals_log: RateLimitedLog::default(),
            errors_log: RateLimitedLog::default(),
        };
        assert!(acceptor.spare.is_some());
        acceptor.accept_failed(&io::Error::from_raw_os_error(libc::EMFILE));
        let mut reply = Vec::new();
        waiting.read_to_end(&mut reply).unwrap();
        assert_eq!(reply, Protocol::Line.too_many_connections());
        assert!(acceptor.spare.is_some(), "the spare is taken back");
        assert_eq!(ServerStats::read(&ctx.stats.rejected_connections), 1);
        ctx.store.shutdown();
    }

    #[test]
    fn a_repeated_warning_is_counted_not_repeated() {
        let mut log = RateLimitedLog::default();
        for _ in 0..100 {
            log.warn(String::new);
        }
        assert_eq!(log.left_out, 99, "one logged, the other 99 counted");
        log.last = log.last.and_then(|last| last.checked_sub(LOG_INTERVAL));
        log.warn(String::new);
        assert_eq!(log.left_out, 0, "after the interval the next one is logged, with the count");
    }
}
