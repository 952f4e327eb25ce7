//! Peer authentication (`--cluster-secret <file>`): a mutual challenge–response when a peer
//! connection opens, then an HMAC on every record of the stream.
//!
//! Every member reads the same secret (a file of at least [`MIN_SECRET_BYTES`] bytes,
//! trailing whitespace ignored, readable by its owner only). With `K` that secret,
//! HMAC-SHA256 (ring's, the crypto rustls already uses here), and `D` / `A` the side that
//! dials / accepts:
//!
//! ```text
//! D → A  "TKVAUTH1" nonce_d[32]
//! A → D  nonce_a[32] HMAC(K, "textkv acceptor" nonce_d nonce_a)
//! D → A  HMAC(K, "textkv dialer" nonce_a nonce_d)
//!        session key S = HMAC(K, "textkv session" nonce_d nonce_a)
//! then D → A, the whole stream as records:
//! record = len:u32 BE (1..=RECORD_MAX)  data[len]  HMAC(S, seq:u64 BE  len:u32 BE  data)
//! ```
//!
//! Both nonces are fresh random bytes, so a recorded handshake cannot be replayed; the three
//! labels differ (and so do the message lengths), so no proof can be reflected as another.
//! `seq` counts records from 0 on each connection, so a record cannot be dropped, repeated
//! or reordered without the next check failing. Either side that sees a wrong proof or tag
//! closes the connection; the refusal is logged at most every [`REFUSAL_LOG_EVERY`]
//! ([`log_refusal`], with the count of those left unsaid).
//!
//! What this protects: only holders of the secret can send Raft messages to a member, and
//! bytes an on-path attacker injects, drops or replays after the handshake break the
//! connection instead of reaching Raft. What it does not: traffic is not encrypted (values
//! cross the network in the clear), every holder of the secret may claim any member id, and
//! an attacker can still cut connections (Raft then waits or elects, as after any network
//! fault). The client listeners are not covered: they have `--users` and `--tls-cert`.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

const MAGIC: &[u8; 8] = b"TKVAUTH1";
const NONCE_BYTES: usize = 32;
const TAG_BYTES: usize = 32;
/// Largest record: what a receiver buffers before it can check a tag.
pub const RECORD_MAX: usize = 64 * 1024;
pub const MIN_SECRET_BYTES: usize = 16;
/// How long either side waits for the other's half of the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(5);
/// Sources of refusals rate-limited one by one.
const REFUSAL_SOURCES: usize = 64;

/// `seq` and `len` before a record's data: what its tag covers besides the data.
const RECORD_HEADER: usize = 8 + 4;

/// The cluster secret, ready to key HMACs.
pub struct Secret(hmac::Key);

impl Secret {
    pub fn new(bytes: &[u8]) -> Result<Secret, String> {
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "the cluster secret has {} bytes; at least {MIN_SECRET_BYTES} are needed (e.g. \
                 `head -c 32 /dev/urandom | base64 > secret`)",
                bytes.len()
            ));
        }
        Ok(Secret(hmac::Key::new(hmac::HMAC_SHA256, bytes)))
    }

    /// Reads `--cluster-secret`: a regular file only its owner may read (it is the key
    /// itself), trailing whitespace (a final newline) not part of the secret.
    pub fn load(path: &Path) -> Result<Secret, String> {
        use std::os::unix::fs::PermissionsExt;
        let bytes = crate::tls::read_regular_file(path)?;
        let mode = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mode = mode.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "--cluster-secret {} may be read or changed by group or others (mode {mode:o}): \
                 chmod 600 it",
                path.display()
            ));
        }
        let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |at| at + 1);
        Secret::new(&bytes[..end]).map_err(|e| format!("--cluster-secret {}: {e}", path.display()))
    }

    fn proof(&self, label: &[u8], first: &[u8], second: &[u8]) -> hmac::Tag {
        let mut context = hmac::Context::with_key(&self.0);
        for part in [label, first, second] {
            context.update(part);
        }
        context.sign()
    }

    fn check(&self, label: &[u8], first: &[u8], second: &[u8], tag: &[u8]) -> bool {
        let mut message = Vec::with_capacity(label.len() + first.len() + second.len());
        for part in [label, first, second] {
            message.extend_from_slice(part);
        }
        hmac::verify(&self.0, &message, tag).is_ok()
    }

    fn session(&self, nonce_d: &[u8], nonce_a: &[u8]) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, self.proof(b"textkv session", nonce_d, nonce_a).as_ref())
    }
}

fn nonce() -> io::Result<[u8; NONCE_BYTES]> {
    let mut nonce = [0u8; NONCE_BYTES];
    SystemRandom::new().fill(&mut nonce).map_err(|_| io::Error::other("no random bytes for a nonce"))?;
    Ok(nonce)
}

fn refused(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, why.to_string())
}

/// The dialing side's handshake on `stream`; the caller bounds it with socket timeouts.
/// Fails with `PermissionDenied` if the other side does not prove the secret.
pub fn dial<S: Read + Write>(mut stream: S, secret: &Secret) -> io::Result<Sealed<S>> {
    let nonce_d = nonce()?;
    let mut hello = MAGIC.to_vec();
    hello.extend_from_slice(&nonce_d);
    stream.write_all(&hello)?;
    stream.flush()?;
    let mut answer = [0u8; NONCE_BYTES + TAG_BYTES];
    stream.read_exact(&mut answer)?;
    let (nonce_a, proof_a) = answer.split_at(NONCE_BYTES);
    if !secret.check(b"textkv acceptor", &nonce_d, nonce_a, proof_a) {
        return Err(refused("it did not prove the cluster secret (a different --cluster-secret?)"));
    }
    stream.write_all(secret.proof(b"textkv dialer", nonce_a, &nonce_d).as_ref())?;
    Ok(Sealed::new(stream, secret.session(&nonce_d, nonce_a)))
}

/// The accepting side's handshake on `stream`; the caller bounds it with socket timeouts.
/// Fails with `PermissionDenied` if the dialer does not prove the secret or sends no
/// handshake at all.
pub fn accept<S: Read + Write>(mut stream: S, secret: &Secret) -> io::Result<Opened<S>> {
    let mut hello = [0u8; MAGIC.len() + NONCE_BYTES];
    stream.read_exact(&mut hello)?;
    let (magic, nonce_d) = hello.split_at(MAGIC.len());
    if magic != MAGIC {
        return Err(refused("it sent no authentication handshake (a member without --cluster-secret?)"));
    }
    let nonce_a = nonce()?;
    let mut answer = nonce_a.to_vec();
    answer.extend_from_slice(secret.proof(b"textkv acceptor", nonce_d, &nonce_a).as_ref());
    stream.write_all(&answer)?;
    stream.flush()?;
    let mut proof_d = [0u8; TAG_BYTES];
    stream.read_exact(&mut proof_d).map_err(|e| match e.kind() {
        // A dialer with another secret hangs up here, having checked this side's proof.
        io::ErrorKind::UnexpectedEof => refused("it hung up instead of proving the cluster secret"),
        _ => e,
    })?;
    if !secret.check(b"textkv dialer", &nonce_a, nonce_d, &proof_d) {
        return Err(refused("it did not prove the cluster secret (a different --cluster-secret?)"));
    }
    Ok(Opened::new(stream, secret.session(nonce_d, &nonce_a)))
}

/// The sending half after the handshake: every `write` becomes one authenticated record of
/// at most [`RECORD_MAX`] bytes (put a `BufWriter` in front to make records large).
pub struct Sealed<W> {
    inner: W,
    key: hmac::Key,
    seq: u64,
    /// `seq len data tag`, reused; `len data tag` is what goes out.
    record: Vec<u8>,
}

impl<W> Sealed<W> {
    fn new(inner: W, key: hmac::Key) -> Sealed<W> {
        Sealed { inner, key, seq: 0, record: Vec::new() }
    }
}

impl<W: Write> Write for Sealed<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        let data = &data[..data.len().min(RECORD_MAX)];
        self.record.clear();
        self.record.extend_from_slice(&self.seq.to_be_bytes());
        self.record.extend_from_slice(&(data.len() as u32).to_be_bytes());
        self.record.extend_from_slice(data);
        let tag = hmac::sign(&self.key, &self.record);
        self.record.extend_from_slice(tag.as_ref());
        self.inner.write_all(&self.record[8..])?;
        self.seq += 1;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The receiving half after the handshake: reads records, checks each tag, and yields their
/// data. A wrong tag is a `PermissionDenied` error; the stream is then unusable.
pub struct Opened<R> {
    inner: R,
    key: hmac::Key,
    seq: u64,
    /// `seq len data` of the current record.
    record: Vec<u8>,
    /// Where the unread data of `record` starts.
    at: usize,
}

impl<R> Opened<R> {
    fn new(inner: R, key: hmac::Key) -> Opened<R> {
        Opened { inner, key, seq: 0, record: Vec::new(), at: 0 }
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }
}

impl<R: Read> Opened<R> {
    /// Reads and checks the next record; false at a clean end of stream.
    fn next_record(&mut self) -> io::Result<bool> {
        let mut len = [0u8; 4];
        match self.inner.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(e),
        }
        let data_len = u32::from_be_bytes(len) as usize;
        if data_len == 0 || data_len > RECORD_MAX {
            return Err(refused(&format!("a record of {data_len} bytes (a stream not sealed by a member)")));
        }
        self.record.clear();
        self.record.extend_from_slice(&self.seq.to_be_bytes());
        self.record.extend_from_slice(&len);
        self.record.resize(RECORD_HEADER + data_len + TAG_BYTES, 0);
        self.inner.read_exact(&mut self.record[RECORD_HEADER..])?;
        let tag_at = RECORD_HEADER + data_len;
        let (message, tag) = self.record.split_at(tag_at);
        if hmac::verify(&self.key, message, tag).is_err() {
            return Err(refused(&format!("record {} failed its authentication check", self.seq)));
        }
        self.record.truncate(tag_at);
        self.at = RECORD_HEADER;
        self.seq += 1;
        Ok(true)
    }
}

impl<R: Read> Read for Opened<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at >= self.record.len() && !self.next_record()? {
            return Ok(0);
        }
        let available = &self.record[self.at..];
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.at += n;
        Ok(n)
    }
}

/// Logs a refused peer at warn level: `who` (`member 3 at ADDR`, or the IP address a
/// connection came from) and `why`. At most one line per `who` every
/// [`REFUSAL_LOG_EVERY`], counting those left out, so a peer retrying every few hundred
/// milliseconds, or a flood of bad connections, cannot fill the log; past
/// [`REFUSAL_SOURCES`] sources at once, the others share one allowance.
pub fn log_refusal(who: &str, why: &str) {
    /// Per source: when a line was last logged, and how many were left out since.
    type Sources = HashMap<String, (Option<Instant>, u64)>;
    static SOURCES: Mutex<Option<Sources>> = Mutex::new(None);
    let mut guard = SOURCES.lock();
    let sources = guard.get_or_insert_with(HashMap::new);
    let now = Instant::now();
    let recent = |last: &Option<Instant>| last.is_some_and(|at| now.duration_since(at) < REFUSAL_LOG_EVERY);
    if !sources.contains_key(who) && sources.len() >= REFUSAL_SOURCES {
        sources.retain(|_, (last, _)| recent(last));
    }
    let key = if sources.contains_key(who) || sources.len() < REFUSAL_SOURCES { who } else { "others" };
    let (last, unsaid) = sources.entry(key.to_string()).or_insert((None, 0));
    if recent(last) {
        *unsaid += 1;
        return;
    }
    let more = match std::mem::take(unsaid) {
        0 => String::new(),
        n => format!(" ({n} more refusals since the last report)"),
    };
    *last = Some(now);
    log::warn!("peer refused: {who}: {why}{more}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    const SECRET: &[u8] = b"sixteen bytes at least, shared";

    /// Runs both handshakes over a socket pair; the results of dial and accept.
    fn handshake(
        dialer: &[u8],
        acceptor: &[u8],
    ) -> (io::Result<Sealed<UnixStream>>, io::Result<Opened<UnixStream>>) {
        let (d, a) = UnixStream::pair().unwrap();
        for side in [&d, &a] {
            side.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        let acceptor = Secret::new(acceptor).unwrap();
        let accepting = std::thread::spawn(move || accept(a, &acceptor));
        let dialed = dial(d, &Secret::new(dialer).unwrap());
        (dialed, accepting.join().unwrap())
    }

    #[test]
    fn the_same_secret_opens_a_stream_whose_bytes_arrive_whole() {
        let (sealed, opened) = handshake(SECRET, SECRET);
        let (mut sealed, mut opened) = (sealed.unwrap(), opened.unwrap());
        let big: Vec<u8> = (0..RECORD_MAX * 2 + 17).map(|i| i as u8).collect();
        let writer = std::thread::spawn(move || {
            sealed.write_all(b"hello").unwrap();
            sealed.write_all(&big).unwrap();
            sealed.flush().unwrap();
            drop(sealed); // a clean end
            big
        });
        let mut got = Vec::new();
        opened.read_to_end(&mut got).unwrap();
        let big = writer.join().unwrap();
        assert_eq!(&got[..5], b"hello");
        assert_eq!(&got[5..], &big[..]);
    }

    #[test]
    fn a_wrong_secret_is_refused_by_both_sides() {
        let (dialed, accepted) = handshake(b"another secret, also long", SECRET);
        let err = dialed.err().expect("the dialer sees the acceptor's proof is wrong");
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
        // The dialer gave up before proving anything: the acceptor sees the stream end.
        assert!(accepted.is_err());

        // A dialer that fakes the acceptor check still cannot prove the secret.
        let (d, a) = UnixStream::pair().unwrap();
        a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let accepting = std::thread::spawn(move || accept(a, &Secret::new(SECRET).unwrap()));
        let mut d = d;
        let mut hello = MAGIC.to_vec();
        hello.extend_from_slice(&[7u8; NONCE_BYTES]);
        d.write_all(&hello).unwrap();
        let mut answer = [0u8; NONCE_BYTES + TAG_BYTES];
        d.read_exact(&mut answer).unwrap();
        // Replaying the acceptor's own proof (a reflection) is not the dialer's proof.
        d.write_all(&answer[NONCE_BYTES..]).unwrap();
        let err = accepting.join().unwrap().err().expect("refused");
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
    }

    #[test]
    fn a_peer_without_the_handshake_is_refused() {
        let (mut d, a) = UnixStream::pair().unwrap();
        a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let accepting = std::thread::spawn(move || accept(a, &Secret::new(SECRET).unwrap()));
        // What a member without --cluster-secret sends: a plain length-prefixed frame.
        d.write_all(&[0, 0, 0, 36]).unwrap();
        d.write_all(&[0u8; 36]).unwrap();
        let err = accepting.join().unwrap().err().expect("refused");
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("no authentication handshake"), "{err}");
    }

    /// Seals `records` with a session key and returns the wire bytes and that key.
    fn sealed_wire(records: &[&[u8]]) -> (Vec<u8>, hmac::Key) {
        let key = Secret::new(SECRET).unwrap().session(&[1; 32], &[2; 32]);
        let mut sealed = Sealed::new(Vec::new(), key.clone());
        for record in records {
            sealed.write_all(record).unwrap();
        }
        (sealed.inner, key)
    }

    fn open_all(wire: &[u8], key: hmac::Key) -> io::Result<Vec<u8>> {
        let mut got = Vec::new();
        Opened::new(wire, key).read_to_end(&mut got)?;
        Ok(got)
    }

    #[test]
    fn injected_changed_replayed_or_dropped_records_are_refused() {
        let (wire, key) = sealed_wire(&[b"first", b"second"]);
        assert_eq!(open_all(&wire, key.clone()).unwrap(), b"firstsecond");
        let first_len = 4 + 5 + TAG_BYTES;

        let mut changed = wire.clone();
        changed[6] ^= 1; // a data byte of the first record
        let denied = |r: io::Result<Vec<u8>>| r.unwrap_err().kind() == io::ErrorKind::PermissionDenied;
        assert!(denied(open_all(&changed, key.clone())));
        // The second record alone: its sequence number is not the expected first one.
        assert!(denied(open_all(&wire[first_len..], key.clone())));
        // The first record twice: the repeat is refused.
        let mut replayed = wire[..first_len].to_vec();
        replayed.extend_from_slice(&wire[..first_len]);
        assert!(denied(open_all(&replayed, key.clone())));
        // A record made with another key (an attacker without the session key).
        let other = Secret::new(SECRET).unwrap().session(&[9; 32], &[2; 32]);
        let mut injected = Sealed::new(Vec::new(), other);
        injected.write_all(b"forged").unwrap();
        let mut spliced = wire[..first_len].to_vec();
        spliced.extend_from_slice(&injected.inner);
        assert!(denied(open_all(&spliced, key.clone())));
        // A length beyond RECORD_MAX is refused before anything is buffered.
        assert!(denied(open_all(&[0xff, 0xff, 0xff, 0xff], key.clone())));
        // A cut record is an error, not a clean end.
        assert!(open_all(&wire[..first_len - 1], key.clone()).is_err());
    }

    #[test]
    fn secret_files_must_be_private_and_long_enough() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, b"0123456789abcdef\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Secret::load(&path).is_ok(), "16 bytes and a newline");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Secret::load(&path).err().unwrap().contains("chmod 600"));
        std::fs::write(&path, b"too short  \n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(Secret::load(&path).err().unwrap().contains("at least 16"));
        assert!(Secret::load(&dir.path().join("missing")).err().unwrap().contains("cannot read"));
    }
}
