//! The closed loop: each connection sends a batch of `pipeline` requests in one write and
//! reads their replies before sending the next batch. By default every connection has its own
//! thread; with fewer threads (`--threads`), a thread sends one batch on each of its
//! connections and then reads their replies in turn, as event-loop clients (memcaslap,
//! redis-benchmark) do, which costs far fewer context switches on a small machine.
//!
//! Latency of a request is the time from the write of its batch to the parse of its reply, so
//! with a pipeline it includes waiting behind the requests ahead of it (as memtier and
//! redis-benchmark count it). Buffers are allocated once per connection and reused.
//!
//! Writes are partitioned so that the final contents are known: connection `c` of `n` only
//! SETs keys `i` with `i % n == c` and remembers the version it last wrote to each; GETs go
//! to any key. A GET of a key the connection owns (and wrote in this run) is checked against
//! the exact expected value during the run, and the `--verify` pass reads back every key
//! written in this run and compares it with the value of its last version.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::protocol::{Protocol, Reply};
use super::workload::{push_key, Rng, Values};

/// Pipeline depth of the prefill and verify passes (at least; the run's own depth if larger).
const BULK_PIPELINE: usize = 32;

/// Everything that defines a run.
#[derive(Debug, Clone)]
pub struct Spec {
    pub protocol: Protocol,
    pub addr: SocketAddr,
    pub connections: usize,
    /// Threads driving the connections (at most `connections`); each thread sends one batch
    /// on each of its connections, then reads their replies in turn.
    pub threads: usize,
    pub pipeline: usize,
    pub keys: u64,
    pub value_size: usize,
    /// Fraction of requests that are GETs, in [0, 1].
    pub get_ratio: f64,
    /// The measured phase ends after this long…
    pub duration: Duration,
    /// …or after this many requests in total, whichever comes first.
    pub requests: Option<u64>,
    pub seed: u64,
    pub prefill: bool,
    pub verify: bool,
    /// Line protocol only: send `compact` on a separate connection after this long and
    /// report latency during compaction separately; the run ends a second after it finishes.
    pub compact_after: Option<Duration>,
    /// Socket read/write timeout: a server that stops answering fails the run.
    pub timeout: Duration,
}

/// Latency histogram in nanoseconds.
pub type Hist = Histogram<u64>;

pub fn new_hist() -> Hist {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

/// What a run measured.
#[derive(Debug)]
pub struct Outcome {
    pub ops: u64,
    pub gets: u64,
    pub sets: u64,
    /// GETs answered "not found".
    pub misses: u64,
    /// Error replies from the server.
    pub errors: u64,
    pub elapsed: Duration,
    /// Latency of every request of the measured phase (outside compaction, if any).
    pub hist: Hist,
    pub prefill: Option<Duration>,
    /// Keys read back by the verify pass (and during the run, checked GETs of own keys).
    pub verified: u64,
    /// Values that were not what was last written (or missing).
    pub verify_errors: u64,
    /// The first verification failure, for the report.
    pub first_failure: Option<String>,
    pub compaction: Option<Compaction>,
}

#[derive(Debug)]
pub struct Compaction {
    pub took: Duration,
    /// Latency of requests answered while the compaction ran.
    pub hist: Hist,
}

/// Per-connection tallies, merged at the end.
struct Tally {
    ops: u64,
    gets: u64,
    sets: u64,
    misses: u64,
    errors: u64,
    verified: u64,
    verify_errors: u64,
    first_failure: Option<String>,
    /// [outside compaction, during compaction].
    hist: [Hist; 2],
}

impl Tally {
    fn new() -> Tally {
        Tally {
            ops: 0,
            gets: 0,
            sets: 0,
            misses: 0,
            errors: 0,
            verified: 0,
            verify_errors: 0,
            first_failure: None,
            hist: [new_hist(), new_hist()],
        }
    }

    fn fail(&mut self, what: String) {
        self.verify_errors += 1;
        if self.first_failure.is_none() {
            self.first_failure = Some(what);
        }
    }
}

/// One connection with its reused buffers.
pub struct Conn {
    stream: TcpStream,
    protocol: Protocol,
    /// Requests of the current batch.
    pub out: Vec<u8>,
    input: Vec<u8>,
    start: usize,
    end: usize,
}

impl Conn {
    pub fn connect(addr: SocketAddr, protocol: Protocol, timeout: Duration) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Conn {
            stream,
            protocol,
            out: Vec::with_capacity(64 * 1024),
            input: vec![0; 64 * 1024],
            start: 0,
            end: 0,
        })
    }

    /// Writes the batch in `out` with one write call (as far as the kernel takes it).
    pub fn send(&mut self) -> io::Result<()> {
        self.stream.write_all(&self.out)?;
        self.out.clear();
        Ok(())
    }

    /// Reads the next reply; its ranges index into [`Conn::bytes`] until the next call.
    pub fn next_reply(&mut self) -> io::Result<Reply> {
        loop {
            let parsed = self
                .protocol
                .parse_reply(&self.input[self.start..self.end])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if let Some((used, reply)) = parsed {
                let base = self.start;
                self.start += used;
                let shift = |r: std::ops::Range<usize>| r.start + base..r.end + base;
                return Ok(match reply {
                    Reply::Value(r) => Reply::Value(shift(r)),
                    Reply::Error(r) => Reply::Error(shift(r)),
                    other => other,
                });
            }
            if self.start > 0 {
                self.input.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.input.len() {
                let len = self.input.len() * 2;
                self.input.resize(len, 0);
            }
            let n = self.stream.read(&mut self.input[self.end..])?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection"));
            }
            self.end += n;
        }
    }

    pub fn bytes(&self, range: std::ops::Range<usize>) -> &[u8] {
        &self.input[range]
    }
}

/// State shared by the connection threads.
struct Shared {
    spec: Spec,
    values: Values,
    /// Requests left when `--requests` is given.
    budget: Option<AtomicU64>,
    stop: AtomicBool,
    /// 0 outside compaction, 1 during.
    phase: AtomicUsize,
    /// Prefill done everywhere, measured phase starts.
    ready: Barrier,
    /// Measured phase finished everywhere, verify starts (so no GET of the run overlaps it).
    finished: Barrier,
}

/// The next batch size: up to `pipeline`, within the request budget.
fn take_batch(shared: &Shared) -> usize {
    let want = shared.spec.pipeline as u64;
    match &shared.budget {
        None => shared.spec.pipeline,
        Some(budget) => {
            let taken = budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                (left > 0).then(|| left.saturating_sub(want))
            });
            match taken {
                Ok(left) => left.min(want) as usize,
                Err(_) => 0,
            }
        }
    }
}

/// Keys connection `c` of `n` owns: c, c+n, c+2n, …
fn owned_count(keys: u64, c: u64, n: u64) -> usize {
    if c >= keys {
        0
    } else {
        ((keys - c).div_ceil(n)) as usize
    }
}

#[derive(Clone, Copy)]
struct Pending {
    key: u64,
    get: bool,
    /// For GETs of own keys and SETs: the version expected / written (0 = unknown).
    version: u32,
}

/// One connection of a worker thread, with its share of the keys.
struct Lane {
    /// Connection number, 0 ≤ c < connections; it owns the keys `i % connections == c`.
    c: u64,
    conn: Conn,
    /// Version last written by this run to each owned key (index = key / connections).
    versions: Vec<u32>,
    /// The requests of the batch in flight, in order.
    pending: Vec<Pending>,
    sent: Option<Instant>,
}

/// What the lanes of one thread share.
struct Ctx {
    /// Connections in the run.
    n: u64,
    shared: Arc<Shared>,
    scratch: Vec<u8>,
    key: Vec<u8>,
    tally: Tally,
}

impl Ctx {
    fn push_set(&mut self, lane: &mut Lane, key: u64) {
        let slot = (key / self.n) as usize;
        let version = lane.versions[slot].wrapping_add(1).max(1);
        lane.versions[slot] = version;
        self.key.clear();
        push_key(key, &mut self.key);
        let values = &self.shared.values;
        self.shared
            .spec
            .protocol
            .push_set(&self.key, values.size(), &mut lane.conn.out, |out| values.push(key, version, out));
        lane.pending.push(Pending { key, get: false, version });
    }

    fn push_get(&mut self, lane: &mut Lane, key: u64) {
        self.key.clear();
        push_key(key, &mut self.key);
        self.shared.spec.protocol.push_get(&self.key, &mut lane.conn.out);
        let version = if key % self.n == lane.c { lane.versions[(key / self.n) as usize] } else { 0 };
        lane.pending.push(Pending { key, get: true, version });
    }

    /// Reads the replies of the lane's batch, checking each; records latency if `measure`.
    fn collect(&mut self, lane: &mut Lane, measure: bool) -> io::Result<()> {
        for i in 0..lane.pending.len() {
            let p = lane.pending[i];
            let reply = lane.conn.next_reply()?;
            if let (true, Some(sent)) = (measure, lane.sent) {
                let phase = self.shared.phase.load(Ordering::Relaxed);
                self.tally.hist[phase].saturating_record(sent.elapsed().as_nanos() as u64);
            }
            match (reply, p.get) {
                (Reply::Stored, false) => {}
                (Reply::Value(range), true) => {
                    if p.version > 0 {
                        self.tally.verified += 1;
                        let got = lane.conn.bytes(range);
                        if !self.shared.values.matches(p.key, p.version, got, &mut self.scratch) {
                            let shown = String::from_utf8_lossy(&got[..got.len().min(40)]).into_owned();
                            self.tally.fail(format!(
                                "key {}: expected version {}, got {shown:?}",
                                p.key, p.version
                            ));
                        }
                    }
                }
                (Reply::NotFound, true) => {
                    self.tally.misses += 1;
                    if p.version > 0 {
                        self.tally.verified += 1;
                        self.tally.fail(format!("key {}: not found, expected version {}", p.key, p.version));
                    }
                }
                (Reply::Error(range), _) => {
                    self.tally.errors += 1;
                    if self.tally.errors == 1 {
                        eprintln!(
                            "kvbench: server error: {}",
                            String::from_utf8_lossy(lane.conn.bytes(range))
                        );
                    }
                }
                (other, get) => {
                    let op = if get { "GET" } else { "SET" };
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("reply {other:?} does not answer a {op}"),
                    ));
                }
            }
        }
        lane.pending.clear();
        Ok(())
    }

    /// SETs (`write`) or GETs (those written in this run) every key the lane owns,
    /// pipelined, unmeasured.
    fn bulk(&mut self, lane: &mut Lane, write: bool) -> io::Result<()> {
        let depth = self.shared.spec.pipeline.max(BULK_PIPELINE);
        let owned = lane.versions.len();
        let mut slot = 0;
        while slot < owned {
            while slot < owned && lane.pending.len() < depth {
                let key = lane.c + slot as u64 * self.n;
                if write {
                    self.push_set(lane, key);
                } else if lane.versions[slot] > 0 {
                    self.push_get(lane, key);
                }
                slot += 1;
            }
            lane.sent = None;
            lane.conn.send()?;
            self.collect(lane, false)?;
        }
        Ok(())
    }
}

/// One thread: drives its lanes round-robin, one batch in flight on each.
struct Worker {
    id: u64,
    lanes: Vec<Lane>,
    ctx: Ctx,
}

impl Worker {
    fn measured(&mut self, rng: &mut Rng, deadline: Instant) -> io::Result<()> {
        let shared = Arc::clone(&self.ctx.shared);
        let (keys, get_ratio) = (shared.spec.keys, shared.spec.get_ratio);
        while !shared.stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let mut sent_any = false;
            for lane in &mut self.lanes {
                let batch = take_batch(&shared);
                if batch == 0 {
                    break;
                }
                let owned = lane.versions.len() as u64;
                for _ in 0..batch {
                    if owned == 0 || rng.unit() < get_ratio {
                        self.ctx.tally.gets += 1;
                        self.ctx.push_get(lane, rng.below(keys));
                    } else {
                        self.ctx.tally.sets += 1;
                        let key = lane.c + rng.below(owned) * self.ctx.n;
                        self.ctx.push_set(lane, key);
                    }
                }
                lane.sent = Some(Instant::now());
                lane.conn.send()?;
                self.ctx.tally.ops += batch as u64;
                sent_any = true;
            }
            for lane in &mut self.lanes {
                self.ctx.collect(lane, true)?;
            }
            if !sent_any {
                break;
            }
        }
        Ok(())
    }

    fn each_lane(&mut self, write: bool) -> io::Result<()> {
        for lane in &mut self.lanes {
            self.ctx.bulk(lane, write)?;
        }
        Ok(())
    }

    fn run(mut self) -> io::Result<Tally> {
        // Whatever fails, reach both barriers so that no other thread waits forever; a failure
        // stops the other threads early.
        let shared = Arc::clone(&self.ctx.shared);
        let spec = &shared.spec;
        let prefilled = if spec.prefill { self.each_lane(true) } else { Ok(()) };
        if prefilled.is_err() {
            shared.stop.store(true, Ordering::Relaxed);
        }
        shared.ready.wait();
        let deadline = Instant::now() + spec.duration;
        let mut rng = Rng::new(spec.seed ^ (self.id + 1).wrapping_mul(0x1000_0000_01b3));
        let result = prefilled.and_then(|()| self.measured(&mut rng, deadline));
        if result.is_err() {
            shared.stop.store(true, Ordering::Relaxed);
        }
        shared.finished.wait();
        result?;
        if spec.verify {
            self.each_lane(false)?;
        }
        Ok(self.ctx.tally)
    }
}

/// A failed run: the text says which connection and why.
#[derive(Debug)]
pub struct RunError(pub String);

/// Sends `compact` over a line-protocol connection and waits for `OK`.
fn compact(addr: SocketAddr, timeout: Duration) -> io::Result<Duration> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(Duration::from_secs(600)))?;
    let started = Instant::now();
    stream.write_all(b"compact\n")?;
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while reply.last() != Some(&b'\n') {
        if stream.read(&mut byte)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed during compact"));
        }
        reply.push(byte[0]);
    }
    if reply != b"OK\n" {
        return Err(io::Error::other(format!("compact answered {:?}", String::from_utf8_lossy(&reply))));
    }
    Ok(started.elapsed())
}

/// Runs the whole benchmark: connect, prefill, measure, verify.
pub fn run(spec: &Spec) -> Result<Outcome, RunError> {
    let n = spec.connections as u64;
    let threads = spec.threads.clamp(1, spec.connections);
    let shared = Arc::new(Shared {
        spec: spec.clone(),
        values: Values::new(spec.seed, spec.value_size),
        budget: spec.requests.map(AtomicU64::new),
        stop: AtomicBool::new(false),
        phase: AtomicUsize::new(0),
        ready: Barrier::new(threads + 1),
        finished: Barrier::new(threads + 1),
    });
    let mut workers: Vec<Worker> = (0..threads as u64)
        .map(|id| Worker {
            id,
            lanes: Vec::new(),
            ctx: Ctx {
                n,
                shared: Arc::clone(&shared),
                scratch: Vec::with_capacity(spec.value_size),
                key: Vec::with_capacity(32),
                tally: Tally::new(),
            },
        })
        .collect();
    for c in 0..n {
        let conn = Conn::connect(spec.addr, spec.protocol, spec.timeout)
            .map_err(|e| RunError(format!("cannot connect to {}: {e}", spec.addr)))?;
        workers[c as usize % threads].lanes.push(Lane {
            c,
            conn,
            versions: vec![0; owned_count(spec.keys, c, n)],
            pending: Vec::with_capacity(spec.pipeline.max(BULK_PIPELINE)),
            sent: None,
        });
    }
    let started = Instant::now();
    let handles: Vec<_> = workers
        .into_iter()
        .map(|w| {
            std::thread::Builder::new()
                .name(format!("kvbench-{}", w.id))
                .spawn(move || w.run())
                .map_err(|e| RunError(format!("cannot start a thread: {e}")))
        })
        .collect::<Result<_, _>>()?;

    // A failing worker still reaches both barriers, so waiting here cannot hang.
    shared.ready.wait();
    let prefill = spec.prefill.then(|| started.elapsed());
    let measure_start = Instant::now();
    let mut compaction_took = None;
    let mut compact_error = None;
    if let Some(after) = spec.compact_after {
        std::thread::sleep(after.min(spec.duration));
        shared.phase.store(1, Ordering::Relaxed);
        match compact(spec.addr, spec.timeout) {
            Ok(took) => compaction_took = Some(took),
            Err(e) => compact_error = Some(e),
        }
        shared.phase.store(0, Ordering::Relaxed);
        std::thread::sleep(Duration::from_secs(1));
        shared.stop.store(true, Ordering::Relaxed);
    }
    shared.finished.wait();
    let elapsed = measure_start.elapsed();

    let mut total = Tally::new();
    let mut failures = Vec::new();
    for (t, thread) in handles.into_iter().enumerate() {
        match thread.join() {
            Ok(Ok(t)) => {
                total.ops += t.ops;
                total.gets += t.gets;
                total.sets += t.sets;
                total.misses += t.misses;
                total.errors += t.errors;
                total.verified += t.verified;
                total.verify_errors += t.verify_errors;
                if total.first_failure.is_none() {
                    total.first_failure = t.first_failure;
                }
                for (into, from) in total.hist.iter_mut().zip(&t.hist) {
                    into.add(from).expect("same histogram bounds");
                }
            }
            Ok(Err(e)) => failures.push(format!("thread {t}: {e}")),
            Err(_) => failures.push(format!("thread {t}: panicked")),
        }
    }
    if let Some(e) = compact_error {
        failures.push(format!("compact: {e}"));
    }
    if !failures.is_empty() {
        return Err(RunError(failures.join("; ")));
    }
    let [hist, during] = total.hist;
    Ok(Outcome {
        ops: total.ops,
        gets: total.gets,
        sets: total.sets,
        misses: total.misses,
        errors: total.errors,
        elapsed,
        hist,
        prefill,
        verified: total.verified,
        verify_errors: total.verify_errors,
        first_failure: total.first_failure,
        compaction: compaction_took.map(|took| Compaction { took, hist: during }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_covers_every_key_once() {
        for keys in [1u64, 7, 100] {
            for n in 1..=8u64 {
                let total: usize = (0..n).map(|c| owned_count(keys, c, n)).sum();
                assert_eq!(total as u64, keys, "keys {keys} conns {n}");
            }
        }
    }
}
