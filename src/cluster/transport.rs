//! Peer transport: Raft messages over TCP, one connection per direction and peer.
//!
//! ```text
//! frame = len:u32 BE  protobuf(eraftpb::Message)[len]
//! ```
//!
//! Each node listens on its own peer address; a thread per accepted connection reads frames
//! and hands the messages to the raft thread. For each other member a sender thread owns an
//! outgoing connection, made on demand and made again after a failure (at most every
//! [`RECONNECT_EVERY`]); the raft thread queues to it without blocking, and a message that
//! finds the queue full or the peer unreachable is dropped — Raft resends what matters
//! (heartbeats, appends after a rejection), so losing a message costs time, never safety.
//! Writes to a peer time out ([`WRITE_TIMEOUT`]) so a stopped peer cannot hold its sender.
//!
//!
//! With `--cluster-secret` every connection starts with `peer_auth`'s handshake and the
//! frames travel inside its authenticated records; a connection that fails either is closed
//! and logged (rate-limited). At most [`MAX_HANDSHAKES`] accepted connections may be in
//! their handshake at once, each for at most `peer_auth::HANDSHAKE_TIMEOUT`, so strangers
//! connecting to the peer port cannot pile up threads. Without a secret (allowed on an
//! all-loopback cluster only, see `mod.rs`) the frames go bare.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use protobuf::Message as _;
use raft::eraftpb::Message;

use super::peer_auth::{self, Secret};

/// Messages queued to one peer before more are dropped.
const QUEUE: usize = 4096;
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
const RECONNECT_EVERY: Duration = Duration::from_millis(200);
/// Accepted connections that may be authenticating at once; more are closed at once.
const MAX_HANDSHAKES: usize = 64;

/// The largest frame a node accepts: a batch of values in an entry, or a snapshot.
pub fn max_frame(max_value_bytes: usize) -> usize {
    (64 << 20) + 2 * max_value_bytes
}

/// Where received messages go (the raft thread's inbox).
pub type Inbox = Sender<super::node::Event>;

/// Accepts peer connections on `listener` (authenticated with `secret` if given) and
/// forwards every message to `inbox`.
pub fn serve(
    listener: TcpListener,
    inbox: Inbox,
    max_frame: usize,
    secret: Option<Arc<Secret>>,
) -> io::Result<()> {
    let handshakes = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new().name("peer-accept".into()).spawn(move || {
        for stream in listener.incoming() {
            let stream = match stream {
                Ok(stream) => stream,
                Err(e) => {
                    log::warn!("peer accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            if secret.is_some() && handshakes.load(Ordering::SeqCst) >= MAX_HANDSHAKES {
                let from = stream.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default();
                let why = format!("{MAX_HANDSHAKES} handshakes already under way");
                peer_auth::log_refusal(&format!("connection from {from}"), &why);
                continue;
            }
            let (inbox, secret, handshakes) = (inbox.clone(), secret.clone(), Arc::clone(&handshakes));
            let spawned = std::thread::Builder::new()
                .name("peer-in".into())
                .spawn(move || receive(stream, &inbox, max_frame, secret.as_deref(), &handshakes));
            if let Err(e) = spawned {
                log::warn!("cannot start a peer connection thread: {e}");
            }
        }
    })?;
    Ok(())
}

fn receive(
    stream: TcpStream,
    inbox: &Inbox,
    max_frame: usize,
    secret: Option<&Secret>,
    handshakes: &AtomicUsize,
) {
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    // Refusals are logged per address (the port changes with every attempt).
    let source =
        format!("connection from {}", stream.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default());
    let _ = stream.set_nodelay(true);
    let mut reader: Box<dyn Read> = match secret {
        None => Box::new(BufReader::new(stream)),
        Some(secret) => {
            handshakes.fetch_add(1, Ordering::SeqCst);
            let _ = stream.set_read_timeout(Some(peer_auth::HANDSHAKE_TIMEOUT));
            let _ = stream.set_write_timeout(Some(peer_auth::HANDSHAKE_TIMEOUT));
            let opened = peer_auth::accept(stream, secret);
            handshakes.fetch_sub(1, Ordering::SeqCst);
            match opened {
                Ok(opened) => {
                    let _ = opened.get_ref().set_read_timeout(None);
                    Box::new(opened)
                }
                Err(e) => {
                    peer_auth::log_refusal(&source, &e.to_string());
                    return;
                }
            }
        }
    };
    loop {
        match read_frame(&mut reader, max_frame) {
            Ok(Some(message)) => {
                if inbox.send(super::node::Event::Peer(Box::new(message))).is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                peer_auth::log_refusal(&source, &format!("closed: {e}"));
                return;
            }
            Err(e) => {
                log::debug!("peer connection from {peer} closed: {e}");
                return;
            }
        }
    }
}

/// Reads one frame; `None` at a clean end of stream.
pub fn read_frame(reader: &mut impl Read, max_frame: usize) -> io::Result<Option<Message>> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max_frame {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("peer frame of {len} bytes exceeds the limit of {max_frame}"),
        ));
    }
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload)?;
    Message::parse_from_bytes(&payload)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad peer message: {e}")))
}

pub fn write_frame(writer: &mut impl Write, message: &Message) -> io::Result<()> {
    let payload = message.write_to_bytes().map_err(io::Error::other)?;
    writer.write_all(&(payload.len() as u32).to_be_bytes())?;
    writer.write_all(&payload)
}

/// The sending side towards one peer.
pub struct Peer {
    queue: Sender<Message>,
}

impl Peer {
    /// Starts the sender thread for the member `id` at `addr` (authenticating with
    /// `secret` if given).
    pub fn start(id: u64, addr: SocketAddr, secret: Option<Arc<Secret>>) -> io::Result<Peer> {
        let (queue, rx) = crossbeam_channel::bounded(QUEUE);
        std::thread::Builder::new()
            .name(format!("peer-out-{id}"))
            .spawn(move || send_loop(id, addr, secret.as_deref(), &rx))?;
        Ok(Peer { queue })
    }

    /// Queues `message`; drops it if the queue is full (the peer is slow or gone).
    pub fn send(&self, message: Message) {
        match self.queue.try_send(message) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => log::debug!("peer queue full: a raft message dropped"),
        }
    }
}

fn send_loop(id: u64, addr: SocketAddr, secret: Option<&Secret>, rx: &Receiver<Message>) {
    let mut conn: Option<BufWriter<Box<dyn Write>>> = None;
    let mut next_attempt = Instant::now();
    while let Ok(message) = rx.recv() {
        if conn.is_none() && Instant::now() >= next_attempt {
            next_attempt = Instant::now() + RECONNECT_EVERY;
            conn = match connect(addr, secret) {
                Ok(conn) => Some(conn),
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                    peer_auth::log_refusal(&format!("member {id} at {addr}"), &e.to_string());
                    None
                }
                Err(e) => {
                    log::debug!("cannot reach peer {id} at {addr}: {e}");
                    None
                }
            };
        }
        let Some(writer) = conn.as_mut() else { continue };
        // Send everything queued behind this message in one flush.
        let mut result = write_frame(writer, &message);
        while result.is_ok() {
            match rx.try_recv() {
                Ok(more) => result = write_frame(writer, &more),
                Err(_) => break,
            }
        }
        if let Err(e) = result.and_then(|()| writer.flush()) {
            log::debug!("lost the connection to peer {id} at {addr}: {e}");
            conn = None;
        }
    }
}

fn connect(addr: SocketAddr, secret: Option<&Secret>) -> io::Result<BufWriter<Box<dyn Write>>> {
    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let stream: Box<dyn Write> = match secret {
        None => Box::new(stream),
        Some(secret) => {
            // The only reads on this connection: the other side's half of the handshake.
            stream.set_read_timeout(Some(peer_auth::HANDSHAKE_TIMEOUT))?;
            Box::new(peer_auth::dial(stream, secret)?)
        }
    };
    Ok(BufWriter::with_capacity(peer_auth::RECORD_MAX, stream))
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::MessageType;

    #[test]
    fn frames_round_trip_and_oversized_ones_are_refused() {
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgHeartbeat);
        message.from = 2;
        message.to = 3;
        message.term = 7;
        let mut wire = Vec::new();
        write_frame(&mut wire, &message).unwrap();
        write_frame(&mut wire, &message).unwrap();
        let mut reader = &wire[..];
        assert_eq!(read_frame(&mut reader, 1024).unwrap(), Some(message.clone()));
        assert_eq!(read_frame(&mut reader, 1024).unwrap(), Some(message));
        assert_eq!(read_frame(&mut reader, 1024).unwrap(), None, "clean end");
        let err = read_frame(&mut &wire[..], 2).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(read_frame(&mut &wire[..wire.len() / 2 + 2], 1024).is_ok(), "first frame whole");
        assert!(read_frame(&mut &wire[..6], 1024).is_err(), "a cut frame is an error");
    }
}
