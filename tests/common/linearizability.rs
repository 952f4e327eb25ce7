//! A linearizability checker for a history of get / set / cas on a few keys (Wing & Gong's
//! search, with Lowe's memoization of visited configurations), and a recorder of such a
//! history against real members.
//!
//! The model is one register per key: absent at first, `set` stores a value, `cas` stores
//! its new value if the key holds `expected` (else `EXISTS`, or `NOT_FOUND` if absent), `get`
//! returns the value. Linearizability is local (Herlihy & Wing), so each key's operations are
//! checked on their own. memcached's `cas` compares CAS uniques, not values; every value
//! the recorder writes is unique, so "holds the unique read with `expected`" and "holds
//! `expected`" are the same test, and the model compares values.
//!
//! An operation whose reply did not come (a timeout, a dropped connection, an `ERROR`)
//! may or may not have taken effect: its return is at +infinity and its result is not
//! checked; the search may place it anywhere after its call, or nowhere. A read without a
//! reply constrains nothing and is left out. The search is bounded ([`SEARCH_BUDGET`]
//! configurations): running out is reported as a failure, never as a pass.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::faults::{McConn, Rng};

/// Most configurations the search may visit for one key before it gives up (a failure).
pub const SEARCH_BUDGET: usize = 2_000_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    Get,
    Set(String),
    Cas { expected: String, new: String },
}

/// What an operation returned: `Value` for a get, the other three for a set or cas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Value(Option<String>),
    Stored,
    Exists,
    NotFound,
    /// No reply: it may or may not have happened.
    Unknown,
}

/// One operation of the history, its times in any one clock (nanoseconds since a start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub client: usize,
    pub key: String,
    pub op: Op,
    pub outcome: Outcome,
    pub call: u64,
    /// `None`: no reply (+infinity).
    pub ret: Option<u64>,
}

/// The register's answer to `op` in `state`, and its state after.
fn step(state: &Option<String>, op: &Op) -> (Option<String>, Outcome) {
    match op {
        Op::Get => (state.clone(), Outcome::Value(state.clone())),
        Op::Set(value) => (Some(value.clone()), Outcome::Stored),
        Op::Cas { expected, new } => match state {
            Some(held) if held == expected => (Some(new.clone()), Outcome::Stored),
            Some(_) => (state.clone(), Outcome::Exists),
            None => (None, Outcome::NotFound),
        },
    }
}

/// Checks the whole history key by key; the error names the key, says how far the search
/// got and lists that key's operations.
pub fn check(history: &[Event]) -> Result<(), String> {
    let mut keys: Vec<&str> = history.iter().map(|e| e.key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    for key in keys {
        let ops: Vec<&Event> = history.iter().filter(|e| e.key == key).collect();
        check_key(&ops).map_err(|why| format!("key {key}: {why}"))?;
    }
    Ok(())
}

struct Search<'a> {
    /// Sorted by call time.
    ops: Vec<&'a Event>,
    visited: HashSet<(Vec<u64>, Option<String>)>,
    /// The most operations linearized on any path, for the report.
    deepest: usize,
}

fn check_key(ops: &[&Event]) -> Result<(), String> {
    // A read that got no reply constrains nothing.
    let mut ops: Vec<&Event> =
        ops.iter().copied().filter(|e| !(e.op == Op::Get && e.outcome == Outcome::Unknown)).collect();
    ops.sort_by_key(|e| e.call);
    let known = ops.iter().filter(|e| e.ret.is_some()).count();
    let mut search = Search { ops, visited: HashSet::new(), deepest: 0 };
    let words = search.ops.len().div_ceil(64);
    let mut done = vec![0u64; words];
    // The search recurses once per operation placed: give it a deep stack.
    let found = std::thread::scope(|scope| {
        let search = &mut search;
        std::thread::Builder::new()
            .stack_size(256 << 20)
            .spawn_scoped(scope, move || search.extend(&mut done, None, known, 0))
            .expect("spawn the search")
            .join()
            .expect("the search")
    });
    match found {
        Some(true) => Ok(()),
        Some(false) => Err(format!(
            "not linearizable: at most {} of its {} operations can be ordered; they are:\n{}",
            search.deepest,
            search.ops.len(),
            describe(&search.ops)
        )),
        None => Err(format!("undecided: the search visited {SEARCH_BUDGET} configurations")),
    }
}

impl Search<'_> {
    /// Can the operations not in `done` be linearized after those in it, from `state`?
    /// `None` once the budget is spent.
    fn extend(
        &mut self,
        done: &mut [u64],
        state: Option<String>,
        known_left: usize,
        depth: usize,
    ) -> Option<bool> {
        if known_left == 0 {
            return Some(true); // what is left had no reply: it may never have happened
        }
        if !self.visited.insert((done.to_vec(), state.clone())) {
            return Some(false);
        }
        if self.visited.len() > SEARCH_BUDGET {
            return None;
        }
        self.deepest = self.deepest.max(depth);
        let is_done = |done: &[u64], i: usize| done[i / 64] & (1 << (i % 64)) != 0;
        // An operation can come next only if no pending one returned before it was called.
        let first_return = (0..self.ops.len())
            .filter(|&i| !is_done(done, i))
            .filter_map(|i| self.ops[i].ret)
            .min()
            .unwrap_or(u64::MAX);
        for i in 0..self.ops.len() {
            let op = self.ops[i];
            if op.call > first_return {
                break; // sorted by call: every later one is called later still
            }
            if is_done(done, i) {
                continue;
            }
            let (next, outcome) = step(&state, &op.op);
            if op.outcome != Outcome::Unknown && op.outcome != outcome {
                continue;
            }
            done[i / 64] |= 1 << (i % 64);
            let left = known_left - usize::from(op.ret.is_some());
            let found = self.extend(done, next, left, depth + 1);
            done[i / 64] &= !(1 << (i % 64));
            if found != Some(false) {
                return found;
            }
        }
        Some(false)
    }
}

fn describe(ops: &[&Event]) -> String {
    let ms = |t: u64| format!("{:.1}", t as f64 / 1e6);
    ops.iter()
        .take(200)
        .map(|e| {
            let ret = e.ret.map_or("∞".to_string(), ms);
            format!("  client {} [{} .. {}] ms {:?} -> {:?}", e.client, ms(e.call), ret, e.op, e.outcome)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The client listeners (memcached) of the members, by member: a test replaces an entry
/// when it restarts that member (its port changes).
pub type Targets = Arc<Mutex<Vec<SocketAddr>>>;

/// Clients recording a history against the members of [`Targets`] until [`Recorder::finish`].
pub struct Recorder {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Vec<Event>>>,
}

/// How long a client waits for a reply: longer than the servers' --cluster-timeout, so a
/// write without a leader is answered (as unknown) rather than cut off.
const REPLY_TIMEOUT: Duration = Duration::from_secs(8);
/// A pause between two operations of one client, so a history of a few seconds stays small
/// enough to check quickly.
const PACE: Duration = Duration::from_millis(5);

impl Recorder {
    /// `clients` threads, client i starting on member i modulo their number and moving to
    /// the next one after an error, each doing at most `max_ops` gets / sets / cas on
    /// `keys` (chosen by `seed`). Every value written is unique.
    pub fn start(clients: usize, targets: &Targets, keys: &[&str], max_ops: usize, seed: u64) -> Recorder {
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        let threads = (0..clients)
            .map(|client| {
                let (targets, stop, keys) = (Arc::clone(targets), Arc::clone(&stop), keys.clone());
                let rng = Rng::new(seed.wrapping_add(client as u64 * 7919));
                std::thread::spawn(move || run_client(client, &targets, &keys, max_ops, start, &stop, rng))
            })
            .collect();
        Recorder { stop, threads }
    }

    /// Stops the clients and returns the whole history.
    pub fn finish(self) -> Vec<Event> {
        self.stop.store(true, Ordering::SeqCst);
        self.threads.into_iter().flat_map(|t| t.join().expect("client thread")).collect()
    }
}

fn run_client(
    client: usize,
    targets: &Targets,
    keys: &[String],
    max_ops: usize,
    start: Instant,
    stop: &AtomicBool,
    mut rng: Rng,
) -> Vec<Event> {
    let mut history = Vec::new();
    let mut target = client;
    let mut conn: Option<McConn> = None;
    // The value and CAS unique this client last read of each key, for its next cas.
    let mut seen: HashMap<String, (String, u64)> = HashMap::new();
    let now = || start.elapsed().as_nanos() as u64;
    for n in 0..max_ops {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Some(c) = conn.as_mut() else {
            let addr = {
                let targets = targets.lock().unwrap();
                targets[target % targets.len()]
            };
            match McConn::connect(addr, REPLY_TIMEOUT) {
                Ok(c) => conn = Some(c),
                Err(_) => {
                    target += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            continue;
        };
        let key = &keys[rng.range(0, keys.len() as u64) as usize];
        let value = format!("c{client}-{n}");
        let roll = rng.range(0, 100);
        let op = match seen.get(key) {
            Some((expected, _)) if roll >= 65 => Op::Cas { expected: expected.clone(), new: value.clone() },
            _ if roll >= 35 => Op::Set(value.clone()),
            _ => Op::Get,
        };
        let call = now();
        let outcome = match &op {
            Op::Get => match c.gets(key) {
                Ok(Some((read, unique))) => {
                    let read = String::from_utf8_lossy(&read).into_owned();
                    seen.insert(key.clone(), (read.clone(), unique));
                    Outcome::Value(Some(read))
                }
                Ok(None) => {
                    seen.remove(key);
                    Outcome::Value(None)
                }
                Err(_) => Outcome::Unknown,
            },
            Op::Set(value) => match c.store("set", key, 0, value.as_bytes()) {
                Ok(reply) if reply == b"STORED" => Outcome::Stored,
                _ => Outcome::Unknown,
            },
            Op::Cas { new, .. } => match c.cas(key, new.as_bytes(), seen[key].1) {
                Ok(reply) if reply == b"STORED" => Outcome::Stored,
                Ok(reply) if reply == b"EXISTS" => Outcome::Exists,
                Ok(reply) if reply == b"NOT_FOUND" => Outcome::NotFound,
                _ => Outcome::Unknown,
            },
        };
        let ret = (outcome != Outcome::Unknown).then(now);
        if outcome == Outcome::Unknown {
            // A refusal, a timeout or a dead member: start afresh on the next one.
            conn = None;
            target += 1;
        }
        history.push(Event { client, key: key.clone(), op, outcome, call, ret });
        std::thread::sleep(PACE);
    }
    history
}
