//! Deadlines on a connection's socket: the login deadline (`--login-timeout`), the request
//! deadline (`--request-timeout`) and the idle timeout (`--idle-timeout`).
//!
//! A deadline is a point in time by which the connection must have got somewhere: logged
//! in, or finished sending the request it began. The connection loop sets the nearest one on
//! a [`Clock`]; a [`TimedSocket`] checks it before every read and write system call and
//! bounds each call with `SO_RCVTIMEO` / `SO_SNDTIMEO` set to the time left. Checking per
//! system call, not per request, matters: rustls reads the socket many times inside one
//! `read` while a handshake is under way, so a client that dribbles a TLS handshake one byte
//! a second would otherwise never meet a deadline checked between requests.
//!
//! The socket options are set only when the time allowed changes, so between requests of a
//! logged-in connection (no deadline, only the idle timeout, if any) the loop makes no
//! extra system call.
//!
//! The idle timeout bounds each call, not the whole: a connection that makes progress before
//! it runs out keeps going. Writes are bounded by the idle timeout and the request timeout,
//! whichever is shorter, so a client that stops reading its replies is closed even when no
//! idle timeout is set.

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Which deadline closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Not logged in by `--login-timeout` after connecting.
    Login,
    /// A request begun but not complete `--request-timeout` after its first byte.
    Request,
}

/// How long the farewell line sent after a deadline may take to write.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(1);

/// The deadline the connection loop currently holds its socket to. Shared by reference
/// between the loop and the [`TimedSocket`] it reads through (one thread).
#[derive(Debug, Default)]
pub struct Clock {
    deadline: Cell<Option<(Instant, Expiry)>>,
    expired: Cell<Option<Expiry>>,
}

impl Clock {
    pub fn set(&self, deadline: Option<(Instant, Expiry)>) {
        self.deadline.set(deadline);
    }

    /// The deadline that made a read or write fail, if one did.
    pub fn expired(&self) -> Option<Expiry> {
        self.expired.get()
    }

    /// Gives a last write (the reply saying why the connection closes) a short bound of its
    /// own, the deadline that closed the connection having passed.
    pub fn allow_farewell(&self) {
        self.deadline.set(Some((Instant::now() + FAREWELL_TIMEOUT, Expiry::Request)));
    }

    /// The time a system call may block: the time left before the deadline, capped by
    /// `limit`; an error once the deadline has passed.
    fn allowance(&self, limit: Option<Duration>) -> io::Result<Option<Duration>> {
        let Some((at, why)) = self.deadline.get() else { return Ok(limit) };
        let left = at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            self.expired.set(Some(why));
            return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
        }
        Ok(Some(limit.map_or(left, |limit| limit.min(left))))
    }

    fn note_timeout(&self, e: &io::Error) {
        let timed_out = matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut);
        if let (true, Some((at, why))) = (timed_out, self.deadline.get()) {
            if Instant::now() >= at {
                self.expired.set(Some(why));
            }
        }
    }
}

/// The deadlines of one connection; the connection loop asks [`Deadlines::next`] before
/// each read which one applies.
#[derive(Debug)]
pub struct Deadlines<'a> {
    pub clock: &'a Clock,
    /// Connected at + `--login-timeout`, when logging in is required.
    pub login_by: Option<Instant>,
    pub request_timeout: Option<Duration>,
}

impl Deadlines<'_> {
    /// No deadline at all (tests, and connections with every timeout off).
    pub fn none(clock: &Clock) -> Deadlines<'_> {
        Deadlines { clock, login_by: None, request_timeout: None }
    }

    /// Sets the clock to the nearest deadline: logging in, while not logged in; finishing
    /// the request whose first byte arrived at `request_since`, while one is incomplete.
    pub fn arm(&self, logged_in: bool, request_since: Option<Instant>) {
        let login = self.login_by.filter(|_| !logged_in).map(|at| (at, Expiry::Login));
        let request = request_since
            .zip(self.request_timeout)
            .map(|(since, timeout)| (since + timeout, Expiry::Request));
        let nearest = match (login, request) {
            (Some(login), Some(request)) => Some(if request.0 < login.0 { request } else { login }),
            (login, request) => login.or(request),
        };
        self.clock.set(nearest);
    }
}

/// A connection's socket, read and written under the [`Clock`]'s deadline.
pub struct TimedSocket<'a> {
    stream: &'a TcpStream,
    clock: &'a Clock,
    idle: Option<Duration>,
    write_limit: Option<Duration>,
    /// What `SO_RCVTIMEO` / `SO_SNDTIMEO` are set to now.
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
}

impl<'a> TimedSocket<'a> {
    /// `idle` bounds every read and write, `request` every write too.
    pub fn new(
        stream: &'a TcpStream,
        clock: &'a Clock,
        idle: Option<Duration>,
        request: Option<Duration>,
    ) -> io::Result<TimedSocket<'a>> {
        let write_limit = match (idle, request) {
            (Some(idle), Some(request)) => Some(idle.min(request)),
            (idle, request) => idle.or(request),
        };
        stream.set_read_timeout(idle)?;
        stream.set_write_timeout(write_limit)?;
        Ok(TimedSocket { stream, clock, idle, write_limit, read_timeout: idle, write_timeout: write_limit })
    }
}

impl Read for TimedSocket<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let allowed = self.clock.allowance(self.idle)?;
        if allowed != self.read_timeout {
            self.stream.set_read_timeout(allowed)?;
            self.read_timeout = allowed;
        }
        let mut stream = self.stream;
        stream.read(buf).inspect_err(|e| self.clock.note_timeout(e))
    }
}

impl Write for TimedSocket<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let allowed = self.clock.allowance(self.write_limit)?;
        if allowed != self.write_timeout {
            self.stream.set_write_timeout(allowed)?;
            self.write_timeout = allowed;
        }
        let mut stream = self.stream;
        stream.write(buf).inspect_err(|e| self.clock.note_timeout(e))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        (listener.accept().unwrap().0, client)
    }

    #[test]
    fn a_read_fails_at_the_deadline_even_while_bytes_trickle_in() {
        let (server, mut client) = pair();
        let clock = Clock::default();
        let mut socket = TimedSocket::new(&server, &clock, None, None).unwrap();
        let started = Instant::now();
        clock.set(Some((started + Duration::from_millis(300), Expiry::Login)));
        let dribbler = std::thread::spawn(move || {
            for _ in 0..100 {
                if client.write_all(b"x").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let mut buf = [0u8; 16];
        let error = loop {
            match socket.read(&mut buf) {
                Ok(n) => assert!(n > 0),
                Err(e) => break e,
            }
        };
        // TimedOut from the check before a read, or WouldBlock from SO_RCVTIMEO if no byte
        // came in the last moments (a loaded machine): the deadline either way.
        assert!(matches!(error.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock), "{error}");
        assert_eq!(clock.expired(), Some(Expiry::Login));
        let elapsed = started.elapsed();
        // The bytes go on for 5 s; only the deadline can have stopped the reads (the upper
        // bound is loose for a loaded machine).
        assert!(elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(3), "{elapsed:?}");
        drop(server);
        dribbler.join().unwrap();
    }

    #[test]
    fn a_silent_peer_times_out_at_the_deadline_and_not_before() {
        let (server, _client) = pair();
        let clock = Clock::default();
        let mut socket = TimedSocket::new(&server, &clock, Some(Duration::from_secs(30)), None).unwrap();
        let started = Instant::now();
        clock.set(Some((started + Duration::from_millis(200), Expiry::Request)));
        let error = socket.read(&mut [0u8; 4]).unwrap_err();
        assert!(matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut));
        assert_eq!(clock.expired(), Some(Expiry::Request));
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[test]
    fn without_a_deadline_only_the_idle_timeout_applies() {
        let (server, _client) = pair();
        let clock = Clock::default();
        let mut socket = TimedSocket::new(&server, &clock, Some(Duration::from_millis(100)), None).unwrap();
        let error = socket.read(&mut [0u8; 4]).unwrap_err();
        assert!(matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut));
        assert_eq!(clock.expired(), None, "an idle timeout is not a deadline");
    }
}
