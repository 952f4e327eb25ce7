//! Linearizability of a Raft cluster (issue 12): clients on every member record a
//! concurrent history of get / set / cas over memcached while the leader is killed with
//! SIGKILL and restarted, and `common::linearizability` checks it. The checker is tested
//! first on histories known to be linearizable and known not to be: a checker that cannot
//! fail proves nothing.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::fault_proxy::{proxied_cluster, Mode};
use common::faults::Rng;
use common::linearizability::{check, Event, Op, Outcome, Recorder};

const MS: u64 = 1_000_000;

/// An event of client `client` on key `k`, from `call` to `ret` ms (`None`: no reply).
fn ev(client: usize, op: Op, outcome: Outcome, call: u64, ret: Option<u64>) -> Event {
    Event { client, key: "k".into(), op, outcome, call: call * MS, ret: ret.map(|r| r * MS) }
}
fn set(v: &str) -> Op {
    Op::Set(v.into())
}
fn cas(expected: &str, new: &str) -> Op {
    Op::Cas { expected: expected.into(), new: new.into() }
}
fn read(v: Option<&str>) -> Outcome {
    Outcome::Value(v.map(str::to_string))
}

#[test]
fn the_checker_accepts_linearizable_histories() {
    use Outcome::*;
    let ok = |history: Vec<Event>| {
        if let Err(why) = check(&history) {
            panic!("refused a linearizable history: {why}");
        }
    };
    // Sequential.
    ok(vec![
        ev(0, Op::Get, read(None), 0, Some(1)),
        ev(0, set("a"), Stored, 2, Some(3)),
        ev(1, Op::Get, read(Some("a")), 4, Some(5)),
        ev(1, cas("a", "b"), Stored, 6, Some(7)),
        ev(0, cas("a", "c"), Exists, 8, Some(9)),
        ev(0, Op::Get, read(Some("b")), 10, Some(11)),
    ]);
    // Reads overlapping a write may see either value, the old one first.
    ok(vec![
        ev(0, set("b"), Stored, 0, Some(100)),
        ev(1, Op::Get, read(None), 10, Some(20)),
        ev(2, Op::Get, read(Some("b")), 30, Some(40)),
        ev(1, Op::Get, read(Some("b")), 50, Some(60)),
    ]);
    // Two overlapping cas from the same value: one wins, whichever ordering fits.
    ok(vec![
        ev(0, set("a"), Stored, 0, Some(10)),
        ev(1, cas("a", "b"), Exists, 20, Some(40)),
        ev(2, cas("a", "c"), Stored, 25, Some(35)),
        ev(0, Op::Get, read(Some("c")), 50, Some(60)),
    ]);
    // A write without a reply may have happened (its value is read later)...
    ok(vec![ev(0, set("x"), Unknown, 0, None), ev(1, Op::Get, read(Some("x")), 50, Some(60))]);
    // ...or not (never seen).
    ok(vec![ev(0, set("x"), Unknown, 0, None), ev(1, Op::Get, read(None), 50, Some(60))]);
    // cas on an absent key.
    ok(vec![ev(0, cas("a", "b"), NotFound, 0, Some(1))]);
    // Keys are independent: each is checked on its own.
    let mut other = ev(1, Op::Get, read(None), 5, Some(6));
    other.key = "other".into();
    ok(vec![ev(0, set("a"), Stored, 0, Some(1)), other]);
}

#[test]
fn the_checker_refuses_non_linearizable_histories() {
    use Outcome::*;
    let refused = |name: &str, history: Vec<Event>| {
        let verdict = check(&history);
        assert!(verdict.is_err(), "{name}: accepted a non-linearizable history");
        assert!(verdict.unwrap_err().contains("not linearizable"), "{name}");
    };
    // A stale read: the write had been acknowledged before the read was sent.
    refused(
        "stale read",
        vec![
            ev(0, set("a"), Stored, 0, Some(10)),
            ev(0, set("b"), Stored, 20, Some(30)),
            ev(1, Op::Get, read(Some("a")), 40, Some(50)),
        ],
    );
    // A value that goes back: once b is read, the concurrent write is over.
    refused(
        "non-monotonic reads",
        vec![
            ev(0, set("b"), Stored, 0, Some(100)),
            ev(1, Op::Get, read(Some("b")), 30, Some(40)),
            ev(2, Op::Get, read(None), 50, Some(60)),
        ],
    );
    // Two cas from the same value both succeed: a lost update.
    refused(
        "lost update",
        vec![
            ev(0, set("a"), Stored, 0, Some(10)),
            ev(1, cas("a", "b"), Stored, 20, Some(40)),
            ev(2, cas("a", "c"), Stored, 25, Some(35)),
        ],
    );
    // A value nobody wrote.
    refused("phantom", vec![ev(0, Op::Get, read(Some("z")), 0, Some(1))]);
    // A write without a reply cannot be read before it was sent.
    refused(
        "read from the future",
        vec![ev(1, Op::Get, read(Some("x")), 0, Some(10)), ev(0, set("x"), Unknown, 20, None)],
    );
    // A cas that failed although the key held what it expected, nothing else running.
    refused(
        "false EXISTS",
        vec![ev(0, set("a"), Stored, 0, Some(10)), ev(0, cas("a", "b"), Exists, 20, Some(30))],
    );
}

/// Histories made linearizable by construction (each operation takes effect at a point
/// inside its interval, in the model), with several clients overlapping, are accepted;
/// the same histories with one read answered a value nobody wrote are refused.
#[test]
fn the_checker_accepts_generated_linearizable_histories_and_refuses_them_altered() {
    for seed in 0..20 {
        let mut rng = Rng::new(seed);
        let (clients, per_client) = (5usize, 60u64);
        // Each client's operations take effect at increasing points; intervals around them.
        let mut points: Vec<(u64, usize)> = Vec::new();
        for client in 0..clients {
            let mut t = rng.range(0, 50);
            for _ in 0..per_client {
                t += rng.range(20, 100);
                points.push((t, client));
            }
        }
        points.sort();
        let mut state: Option<String> = None;
        let mut history = Vec::new();
        for (n, &(point, client)) in points.iter().enumerate() {
            let op = match (rng.range(0, 3), &state) {
                (0, _) => Op::Get,
                (1, Some(held)) if rng.chance(70) => cas(held, &format!("v{n}")),
                (1, _) => cas("nobody", &format!("v{n}")),
                _ => set(&format!("v{n}")),
            };
            let outcome = match &op {
                Op::Get => Outcome::Value(state.clone()),
                Op::Set(v) => {
                    state = Some(v.clone());
                    Outcome::Stored
                }
                Op::Cas { expected, new } => match &state {
                    Some(held) if held == expected => {
                        state = Some(new.clone());
                        Outcome::Stored
                    }
                    Some(_) => Outcome::Exists,
                    None => Outcome::NotFound,
                },
            };
            // The interval: up to 10 ms either side of the point (points of one client are
            // 20 ms apart at least, so its operations stay sequential).
            let (call, ret) = (point * MS - rng.range(0, 10 * MS), point * MS + rng.range(1, 10 * MS));
            let ret = (rng.range(0, 100) > 2 || matches!(op, Op::Get)).then_some(ret);
            let outcome = if ret.is_none() { Outcome::Unknown } else { outcome };
            history.push(Event { client, key: "k".into(), op, outcome, call, ret });
        }
        let started = Instant::now();
        if let Err(why) = check(&history) {
            panic!("seed {seed}: refused a linearizable history: {why}");
        }
        assert!(started.elapsed() < Duration::from_secs(10), "seed {seed}: slow check");
        let reads: Vec<usize> = (0..history.len())
            .filter(|&i| history[i].op == Op::Get && history[i].outcome != Outcome::Unknown)
            .collect();
        let altered = reads[rng.range(0, reads.len() as u64) as usize];
        history[altered].outcome = read(Some("never written"));
        assert!(check(&history).is_err(), "seed {seed}: accepted a read of a value never written");
    }
}

/// The fault a history is recorded under.
#[derive(Clone, Copy)]
enum Fault {
    /// SIGKILL of the leader, restarted a second after a new one is elected.
    KillLeader,
    /// The leader's peer links all dropped for 3 s, then healed.
    IsolateLeader,
}

/// Six memcached clients, two per member, get / set / cas three keys for about 5 s while
/// `fault` strikes the leader, on members started with `flags`.
fn history_under(fault: Fault, flags: &[&str]) -> Vec<Event> {
    let (mut cluster, mesh) = match fault {
        Fault::KillLeader => (Cluster::start_with(flags), None),
        Fault::IsolateLeader => {
            let (cluster, mesh) = proxied_cluster(Mode::Pass, flags);
            (cluster, Some(mesh))
        }
    };
    let leader = cluster.wait_for_leader(Duration::from_secs(15)).expect("a leader");
    let targets = Arc::new(Mutex::new(cluster.live().map(|(_, n)| n.listener("memcached")).collect()));
    let seed = Rng::from_env("LINEARIZABILITY_SEED").next_u64();
    let recorder = Recorder::start(6, &targets, &["x", "y", "z"], 3_000, seed);
    std::thread::sleep(Duration::from_millis(1500));
    match (fault, &mesh) {
        (Fault::IsolateLeader, Some(mesh)) => {
            mesh.set_around(leader, Mode::Drop);
            std::thread::sleep(Duration::from_secs(3));
            mesh.heal();
        }
        _ => {
            cluster.nodes[leader as usize - 1].take().expect("the leader runs").kill();
            let new = cluster.wait_for_leader(Duration::from_secs(10)).expect("a new leader");
            assert_ne!(new, leader);
            std::thread::sleep(Duration::from_millis(1000));
            let restarted = cluster.start_node(leader);
            targets.lock().unwrap()[leader as usize - 1] = restarted.listener("memcached");
            cluster.nodes[leader as usize - 1] = Some(restarted);
        }
    }
    std::thread::sleep(Duration::from_millis(2500));
    let history = recorder.finish();

    let count = |f: &dyn Fn(&Event) -> bool| history.iter().filter(|e| f(e)).count();
    let reads = count(&|e| matches!(e.outcome, Outcome::Value(Some(_))));
    let cas_won = count(&|e| matches!(e.op, Op::Cas { .. }) && e.outcome == Outcome::Stored);
    let cas_lost = count(&|e| e.outcome == Outcome::Exists);
    let unknown = count(&|e| e.outcome == Outcome::Unknown);
    eprintln!(
        "{} operations: {reads} reads of a value, {cas_won} cas won, {cas_lost} lost, {unknown} without a reply",
        history.len()
    );
    assert!(reads > 100 && cas_won > 10 && cas_lost > 10, "too little happened to check");
    history
}

fn assert_linearizable(history: &[Event]) {
    let started = Instant::now();
    if let Err(why) = check(history) {
        panic!("the cluster's history is not linearizable: {why}");
    }
    eprintln!("checked in {} ms", started.elapsed().as_millis());
}

#[test]
fn a_history_under_a_leader_kill_and_restart_is_linearizable() {
    assert_linearizable(&history_under(Fault::KillLeader, &[]));
}

/// The cut-off old leader must not answer reads from what it last knew.
#[test]
fn a_history_under_a_leader_cut_off_is_linearizable() {
    assert_linearizable(&history_under(Fault::IsolateLeader, &[]));
}

/// The same with `--read-consistency local`: a follower's reads may be a moment old, and
/// the checker finds it (every one of the runs so far). Not a check — whether a stale read
/// happens depends on timing.
/// `cargo test --test cluster_linearizability local_reads -- --ignored --nocapture`
#[test]
#[ignore = "a demonstration: stale reads depend on timing"]
fn local_reads_are_found_not_linearizable() {
    let history = history_under(Fault::KillLeader, &["--read-consistency", "local"]);
    let verdict = check(&history);
    eprintln!(
        "{}",
        verdict.as_ref().err().map_or("linearizable this time", |why| why.lines().next().unwrap())
    );
    assert!(verdict.is_err(), "no stale read was caught this time");
}
