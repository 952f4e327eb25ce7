//! Refusing a connection so that the client actually reads why.
//!
//! A refused client often sent its request at once. Closing a socket whose received data
//! was never read makes the kernel answer with a reset instead of an orderly close, and a
//! reset can reach the client before it has read the reply, which it then never sees. So a
//! refusal writes the reply, half-closes (the client reads the reply, then end of stream),
//! and reads and discards what the client sends until it closes its side or
//! [`DRAIN_TIMEOUT`] passes; only then is the socket closed.
//!
//! The draining runs on one thread of its own, fed by the accept loops, so a client that
//! never closes holds up neither accepting nor other refusals: refusals arrive in order, so
//! their deadlines are in order too, and each waits at most until its own. At most
//! [`MAX_DRAINING`] wait at once (their descriptors are part of the reserve, see
//! [`super::descriptors`]); past that a refusal drains only what has already arrived.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

/// How long a refused client has to close its side before the server closes anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_millis(500);

/// Refused connections being drained at once.
pub const MAX_DRAINING: usize = 32;

/// Bytes of a refused client's request read (and discarded) in one call.
const DRAIN_CHUNK: usize = 4096;

/// Hands refused connections to the draining thread.
#[derive(Clone)]
pub struct Refuser {
    draining: Sender<(TcpStream, Instant)>,
}

impl Refuser {
    /// Starts the draining thread; it ends once every `Refuser` is dropped.
    pub fn start() -> io::Result<Refuser> {
        let (draining, queue) = crossbeam_channel::bounded(MAX_DRAINING);
        std::thread::Builder::new().name("refusals".into()).spawn(move || drain_all(queue))?;
        Ok(Refuser { draining })
    }

    /// Sends `reply`, half-closes, and leaves the rest to the draining thread.
    pub fn refuse(&self, stream: TcpStream, reply: &[u8]) {
        refuse_now(&stream, reply);
        if let Err(TrySendError::Full((stream, _)) | TrySendError::Disconnected((stream, _))) =
            self.draining.try_send((stream, Instant::now() + DRAIN_TIMEOUT))
        {
            drain_arrived(&stream);
        }
    }
}

/// Writes `reply` without waiting (a fresh socket's send buffer is empty) and half-closes.
pub fn refuse_now(stream: &TcpStream, reply: &[u8]) {
    let _ = stream.set_nonblocking(true);
    let _ = (&*stream).write_all(reply);
    let _ = stream.shutdown(Shutdown::Write);
}

/// Discards what the client has sent so far, without waiting for more.
pub fn drain_arrived(stream: &TcpStream) {
    let _ = stream.set_nonblocking(true);
    let mut buf = [0u8; DRAIN_CHUNK];
    while matches!((&*stream).read(&mut buf), Ok(n) if n > 0) {}
}

fn drain_all(queue: Receiver<(TcpStream, Instant)>) {
    let mut buf = [0u8; DRAIN_CHUNK];
    for (stream, deadline) in queue {
        if stream.set_nonblocking(false).is_err() {
            continue;
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
                drain_arrived(&stream);
                break;
            }
            match (&stream).read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    drain_arrived(&stream);
                    break;
                }
                Err(_) => break,
            }
        }
    }
}
