//! Peer transport: Raft messages over TCP, one connection per direction and peer.
//!
//! ```text
//! frame = len:u32 BE  protobuf(eraftpb::Message)[len]       a Raft message
//!       | 0xFFFFFFFF  len:u32 BE  text[len]                  a control frame (`membership`):
//!                                                            hello, join or refused
//! ```
//!
//! Every connection a node opens starts with a `hello` (its id and incarnation); the
//! receiving side asks the raft thread whether it accepts that identity before it passes on
//! anything else from the connection. `join` and `refused` go on a connection of their own
//! ([`Dialer::send_once`]): a new node asking a member to be added, a member telling a node
//! it may not take part.
//!
//! Each node listens on its own peer address; a thread per accepted connection reads frames
//! and hands the messages to the raft thread. For each other member a sender thread owns an
//! outgoing connection, made on demand and made again after a failure (at most every
//! [`RECONNECT_EVERY`]); the raft thread queues to it without blocking, and a message that
//! finds the queue full or the peer unreachable is dropped — Raft resends what matters
//! (heartbeats, appends after a rejection), so losing a message costs time, never safety.
//! Writes to a peer time out ([`WRITE_TIMEOUT`]) so a stopped peer cannot hold its sender.
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

use super::membership::Control;
use super::node::Event;
use super::peer_auth::{self, Secret};

/// Messages queued to one peer before more are dropped.
const QUEUE: usize = 4096;
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
const RECONNECT_EVERY: Duration = Duration::from_millis(200);
/// Accepted connections that may be authenticating at once; more are closed at once.
const MAX_HANDSHAKES: usize = 64;

/// The largest frame a node accepts: a batch of values in an entry (64 MiB plus two
/// values), or a snapshot of up to `max_snapshot_bytes` with room for its message's fields.
pub fn max_frame(max_value_bytes: usize, max_snapshot_bytes: usize) -> usize {
    ((64 << 20) + 2 * max_value_bytes).max(max_snapshot_bytes + SNAPSHOT_FRAME_MARGIN)
}

/// Room in a peer frame for a snapshot message's own fields besides its data.
pub const SNAPSHOT_FRAME_MARGIN: usize = 64 << 10;

/// What a frame's buffer is given before its bytes arrive: a frame's memory grows with
/// what the peer actually sends, not with the length it announces.
const FRAME_PREALLOCATION: usize = 1 << 20;

/// Where received messages go (the raft thread's inbox).
pub type Inbox = Sender<Event>;

/// The length that marks a control frame (no Raft frame is that long).
const CONTROL: u32 = u32::MAX;
/// Longest control frame text.
const MAX_CONTROL: usize = 4096;
/// How long a connection waits for the raft thread's verdict on its `hello`.
const VERDICT_TIMEOUT: Duration = Duration::from_secs(5);

/// One frame read from a peer.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Raft(Message),
    Control(Control),
}

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
            Ok(Some(Frame::Raft(message))) => {
                if inbox.send(Event::Peer(Box::new(message))).is_err() {
                    return;
                }
            }
            Ok(Some(Frame::Control(control))) => {
                // Nothing more is read from the connection until the raft thread has taken
                // it: after a refused `hello`, nothing of that peer reaches Raft.
                let (verdict, answer) = crossbeam_channel::bounded(1);
                if inbox.send(Event::Control(control, verdict)).is_err() {
                    return;
                }
                if answer.recv_timeout(VERDICT_TIMEOUT) != Ok(true) {
                    log::debug!("peer connection from {peer} closed: its identity was not accepted");
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
pub fn read_frame(reader: &mut impl Read, max_frame: usize) -> io::Result<Option<Frame>> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let control = u32::from_be_bytes(len) == CONTROL;
    if control {
        reader.read_exact(&mut len)?;
    }
    let len = u32::from_be_bytes(len) as usize;
    let limit = if control { MAX_CONTROL } else { max_frame };
    if len > limit {
        return Err(bad(format!("peer frame of {len} bytes exceeds the limit of {limit}")));
    }
    let mut payload = Vec::with_capacity(len.min(FRAME_PREALLOCATION));
    reader.take(len as u64).read_to_end(&mut payload)?;
    if payload.len() < len {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "peer frame cut short"));
    }
    if control {
        return match Control::decode(&payload) {
            Some(control) => Ok(Some(Frame::Control(control))),
            None => Err(bad("bad peer control frame".into())),
        };
    }
    Message::parse_from_bytes(&payload)
        .map(|message| Some(Frame::Raft(message)))
        .map_err(|e| bad(format!("bad peer message: {e}")))
}

pub fn write_frame(writer: &mut impl Write, message: &Message) -> io::Result<()> {
    let payload = message.write_to_bytes().map_err(io::Error::other)?;
    writer.write_all(&(payload.len() as u32).to_be_bytes())?;
    writer.write_all(&payload)
}

pub fn write_control(writer: &mut impl Write, control: &Control) -> io::Result<()> {
    let payload = control.encode();
    writer.write_all(&CONTROL.to_be_bytes())?;
    writer.write_all(&(payload.len() as u32).to_be_bytes())?;
    writer.write_all(&payload)
}

/// How this node opens connections to peers: the cluster secret, and the `hello` that
/// starts each connection.
#[derive(Clone)]
pub struct Dialer {
    pub secret: Option<Arc<Secret>>,
    pub hello: Control,
}

impl Dialer {
    /// Starts the sender thread for the member `id` at `addr`.
    pub fn start(&self, id: u64, addr: SocketAddr) -> io::Result<Peer> {
        Peer::start(id, addr, self.clone())
    }

    /// Sends one control frame to `addr` on a connection of its own, from another thread
    /// (best effort: a failure is logged at debug level).
    pub fn send_once(&self, addr: SocketAddr, control: Control) {
        let secret = self.secret.clone();
        let sent = std::thread::Builder::new().name("peer-once".into()).spawn(move || {
            let result = connect(addr, secret.as_deref())
                .and_then(|mut writer| write_control(&mut writer, &control).and_then(|()| writer.flush()));
            match result {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                    peer_auth::log_refusal(&format!("the member at {addr}"), &e.to_string());
                }
                Err(e) => log::debug!("cannot send {control:?} to {addr}: {e}"),
            }
        });
        if let Err(e) = sent {
            log::warn!("cannot start a thread to reach {addr}: {e}");
        }
    }
}

/// The sending side towards one peer.
pub struct Peer {
    queue: Sender<Message>,
}

impl Peer {
    /// Starts the sender thread for the member `id` at `addr` (authenticating with the
    /// dialer's secret if given). It ends when the `Peer` is dropped.
    fn start(id: u64, addr: SocketAddr, dialer: Dialer) -> io::Result<Peer> {
        let (queue, rx) = crossbeam_channel::bounded(QUEUE);
        std::thread::Builder::new()
            .name(format!("peer-out-{id}"))
            .spawn(move || send_loop(id, addr, &dialer, &rx))?;
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

fn send_loop(id: u64, addr: SocketAddr, dialer: &Dialer, rx: &Receiver<Message>) {
    let mut conn: Option<BufWriter<Box<dyn Write>>> = None;
    let mut next_attempt = Instant::now();
    while let Ok(message) = rx.recv() {
        if conn.is_none() && Instant::now() >= next_attempt {
            next_attempt = Instant::now() + RECONNECT_EVERY;
            conn = match connect(addr, dialer.secret.as_deref()) {
                Ok(mut conn) => write_control(&mut conn, &dialer.hello).is_ok().then_some(conn),
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
        assert_eq!(read_frame(&mut reader, 1024).unwrap(), Some(Frame::Raft(message.clone())));
        assert_eq!(read_frame(&mut reader, 1024).unwrap(), Some(Frame::Raft(message)));
        assert_eq!(read_frame(&mut reader, 1024).unwrap(), None, "clean end");
        let err = read_frame(&mut &wire[..], 2).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(read_frame(&mut &wire[..wire.len() / 2 + 2], 1024).is_ok(), "first frame whole");
        assert!(read_frame(&mut &wire[..6], 1024).is_err(), "a cut frame is an error");

        // Control frames travel beside Raft's, told apart by their marker.
        let hello = Control::Hello { id: 2, incarnation: 9, addr: "127.0.0.1:7102".into() };
        let mut wire = Vec::new();
        write_control(&mut wire, &hello).unwrap();
        write_frame(&mut wire, &message_for_test()).unwrap();
        let mut reader = &wire[..];
        assert_eq!(read_frame(&mut reader, 1024).unwrap(), Some(Frame::Control(hello)));
        assert_eq!(read_frame(&mut reader, 1024).unwrap(), Some(Frame::Raft(message_for_test())));
        let mut junk = CONTROL.to_be_bytes().to_vec();
        junk.extend_from_slice(&3u32.to_be_bytes());
        junk.extend_from_slice(b"bye");
        assert!(read_frame(&mut &junk[..], 1024).is_err(), "an unknown control frame is an error");
    }

    fn message_for_test() -> Message {
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgHeartbeat);
        message.from = 1;
        message
    }
}
