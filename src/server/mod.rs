//! Listeners, the accept loop, the connection cap and graceful shutdown.
//!
//! Each listener has an accept thread; each accepted connection gets its own named thread
//! (`std::net`, blocking I/O: simple, and fast enough that the disk, not the thread model, is
//! the limit for durable writes). Every listener shares one connection cap and one [`Store`].
//!
//! Shutdown (SIGINT/SIGTERM in `kvserver`, or [`ShutdownHandle::shutdown`]): the accept loops
//! stop, every connection's read side is shut so its thread finishes the requests it already
//! read and exits, then the store drains the writer and fsyncs the log.
//!
//! TLS ([`Server::with_tls`]) wraps each accepted stream in a rustls server connection inside
//! the connection's own thread, so a slow or hostile handshake holds up only that thread
//! (bounded by the idle timeout), and the shutdown path above still works on the TCP stream
//! underneath. A client that speaks plaintext to a TLS listener fails the handshake and is
//! disconnected.
//!
//! [`Store`]: crate::store::Store

pub mod connection;

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::protocol::line::LineSession;
use crate::protocol::memcache::MemcacheSession;
use crate::protocol::{Context, Session};
use crate::stats::ServerStats;

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
}

/// Connection-level settings.
#[derive(Debug, Clone, Copy)]
pub struct ServerConfig {
    pub max_connections: u64,
    /// Close a connection that sends nothing (or reads nothing) for this long.
    pub idle_timeout: Option<Duration>,
}

/// How long shutdown waits for connections to finish before giving up on them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

struct State {
    stopping: AtomicBool,
    /// A clone of every open connection, so shutdown can end their reads.
    conns: Mutex<HashMap<u64, TcpStream>>,
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
        let open: Vec<TcpStream> =
            self.state.conns.lock().values().filter_map(|s| s.try_clone().ok()).collect();
        log::info!("shutting down: finishing {} open connections", open.len());
        for stream in open {
            let _ = stream.shutdown(Shutdown::Read);
        }
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

struct Acceptor {
    listener: TcpListener,
    protocol: Protocol,
    ctx: Arc<Context>,
    config: ServerConfig,
    state: Arc<State>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Acceptor {
    fn run(self) {
        for stream in self.listener.incoming() {
            if self.state.stopping.load(Ordering::SeqCst) {
                break;
            }
            match stream {
                Ok(stream) => self.admit(stream),
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning; the listener stays open.
                    log::warn!("accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    fn admit(&self, mut stream: TcpStream) {
        let stats = &self.ctx.stats;
        let open = stats.curr_connections.fetch_add(1, Ordering::SeqCst) + 1;
        if open > self.config.max_connections {
            stats.curr_connections.fetch_sub(1, Ordering::SeqCst);
            ServerStats::bump(&stats.rejected_connections);
            log::warn!("refused a connection: {} connections open (--max-connections)", open - 1);
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = stream.write_all(self.protocol.too_many_connections());
            return;
        }
        ServerStats::bump(&stats.total_connections);
        let id = self.state.next_id.fetch_add(1, Ordering::Relaxed);
        let connection = Connection {
            id,
            stream,
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
    stream: TcpStream,
    protocol: Protocol,
    ctx: Arc<Context>,
    config: ServerConfig,
    state: Arc<State>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Connection {
    fn run(mut self) {
        let peer_addr = self.stream.peer_addr().ok();
        let peer = peer_addr.map_or_else(|| "?".to_string(), |a| a.to_string());
        log::debug!("connection {} from {peer} ({})", self.id, self.protocol.name());
        if let Err(e) = self.serve(peer_addr) {
            match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    log::info!(
                        "closing connection {} from {peer}: idle or not reading (--idle-timeout)",
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

    fn serve(&mut self, peer: Option<SocketAddr>) -> io::Result<()> {
        self.stream.set_nodelay(true)?;
        self.stream.set_read_timeout(self.config.idle_timeout)?;
        self.stream.set_write_timeout(self.config.idle_timeout)?;
        self.state.conns.lock().insert(self.id, self.stream.try_clone()?);
        if self.state.stopping.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut session = self.protocol.session(&self.ctx, peer);
        let Some(tls) = &self.tls else {
            return connection::serve(&mut self.stream, session.as_mut());
        };
        let mut tls = rustls::ServerConnection::new(Arc::clone(tls)).map_err(io::Error::other)?;
        let result =
            connection::serve(&mut rustls::Stream::new(&mut tls, &mut self.stream), session.as_mut());
        if result.is_ok() {
            // Tell the client the stream ended on purpose (not a truncation attack).
            tls.send_close_notify();
            while tls.wants_write() {
                tls.write_tls(&mut self.stream)?;
            }
        }
        result
    }
}
