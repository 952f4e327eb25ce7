//! One client connection: read → session → write, until the client leaves, times out, or the
//! server shuts down.
//!
//! Everything already buffered is answered before the socket is read again, and the replies
//! of one read go out in one write, so pipelining costs one system call per batch instead of
//! one per request. The input buffer holds at most a session's line limit plus one read; the
//! output buffer is written out whenever it passes [`FLUSH_THRESHOLD`]. A client that stops
//! reading its replies hits the write timeout and is disconnected rather than growing memory.
//!
//! Before each read the loop arms the connection's [`Deadlines`]: the login deadline while
//! the session is not logged in, and the request deadline while unprocessed bytes (the start
//! of a request) wait in the buffer, counted from the read that brought the first of them.
//! A session that consumes bytes as they come (a line too long, a data block too large,
//! both read and discarded) has no bytes waiting, so no request deadline: such a client
//! holds its connection as one that keeps sending small requests would.
//!
//! [`FLUSH_THRESHOLD`]: crate::protocol::FLUSH_THRESHOLD

use std::io::{self, Read, Write};
use std::time::Instant;

use super::deadline::Deadlines;
use crate::protocol::Session;

/// Initial input buffer size, and the least free space offered to each read.
const READ_CHUNK: usize = 64 * 1024;

/// Serves one connection until it ends. Generic over the stream so tests can drive a session
/// with in-memory buffers.
pub fn serve<S: Read + Write>(
    stream: &mut S,
    session: &mut dyn Session,
    deadlines: &Deadlines<'_>,
) -> io::Result<()> {
    // `input[start..end]` is unprocessed; the buffer is zeroed once, not per read.
    let mut input: Vec<u8> = vec![0; READ_CHUNK];
    let (mut start, mut end) = (0, 0);
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    // When the first unprocessed byte arrived, while there is one.
    let mut request_since: Option<Instant> = None;
    loop {
        if input.len() - end < READ_CHUNK / 4 {
            if start > 0 {
                input.copy_within(start..end, 0);
                (start, end) = (0, end - start);
            }
            if input.len() - end < READ_CHUNK / 4 {
                input.resize(input.len() * 2, 0);
            }
        }
        deadlines.arm(session.logged_in(), request_since);
        let read = match stream.read(&mut input[end..]) {
            Ok(0) => return stream.flush(), // end of stream; a partial request is dropped
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let read_at = deadlines.request_timeout.map(|_| Instant::now());
        if start == end {
            request_since = read_at;
        }
        end += read;
        loop {
            let progress = session.process(&input[start..end], &mut out);
            if progress.consumed > 0 {
                // What is left, if anything, began in this read.
                request_since = read_at;
            }
            start += progress.consumed;
            if !out.is_empty() {
                stream.write_all(&out)?;
                out.clear();
            }
            if progress.close {
                return stream.flush();
            }
            if (progress.consumed == 0 || start == end) && !session.has_more() {
                break;
            }
        }
        if start == end {
            (start, end) = (0, 0);
            request_since = None;
            if input.len() > 4 * READ_CHUNK {
                // Give back the memory of a large request once it is done.
                input = vec![0; READ_CHUNK];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Progress, FLUSH_THRESHOLD};
    use crate::server::deadline::Clock;

    /// Echoes each line upper-cased; `bye` closes.
    struct Upper;

    impl Session for Upper {
        fn process(&mut self, input: &[u8], out: &mut Vec<u8>) -> Progress {
            let mut consumed = 0;
            while out.len() < FLUSH_THRESHOLD {
                let Some(i) = input[consumed..].iter().position(|&b| b == b'\n') else { break };
                let line = &input[consumed..consumed + i];
                consumed += i + 1;
                if line == b"bye" {
                    return Progress { consumed, close: true };
                }
                out.extend(line.to_ascii_uppercase());
                out.push(b'\n');
            }
            Progress { consumed, close: false }
        }
    }

    /// A stream that hands out its input a few bytes per read.
    struct Trickle {
        input: Vec<u8>,
        pos: usize,
        per_read: usize,
        output: Vec<u8>,
        writes: usize,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.per_read.min(buf.len()).min(self.input.len() - self.pos);
            buf[..n].copy_from_slice(&self.input[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.writes += 1;
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn run(input: &[u8], per_read: usize) -> Trickle {
        let mut stream = Trickle { input: input.to_vec(), pos: 0, per_read, output: Vec::new(), writes: 0 };
        serve(&mut stream, &mut Upper, &Deadlines::none(&Clock::default())).unwrap();
        stream
    }

    #[test]
    fn requests_split_across_reads_are_reassembled() {
        assert_eq!(run(b"abc\ndef\n", 1).output, b"ABC\nDEF\n");
    }

    #[test]
    fn pipelined_requests_are_answered_with_one_write() {
        let stream = run(b"a\nb\nc\n", 1024);
        assert_eq!(stream.output, b"A\nB\nC\n");
        assert_eq!(stream.writes, 1);
    }

    #[test]
    fn close_stops_before_later_requests() {
        assert_eq!(run(b"a\nbye\nc\n", 1024).output, b"A\n");
    }

    #[test]
    fn large_reply_batches_are_written_in_pieces() {
        let line = [b'x'; 1000];
        let mut input = Vec::new();
        for _ in 0..200 {
            input.extend_from_slice(&line);
            input.push(b'\n');
        }
        let stream = run(&input, 1 << 20);
        assert_eq!(stream.output.len(), 200 * 1001);
        assert!(stream.writes > 1, "a 200 KB reply is not buffered whole");
    }
}
