//! A Raft cluster's snapshots and members (issue 12): the Raft log truncated behind
//! snapshots, a restart restored from the snapshot with the same CAS uniques, a member too
//! far behind sent the snapshot. Real `kvserver` processes on loopback (tests/common/cluster.rs);
//! every wait is a bounded poll and every process is killed by the test that started it.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, Conn};
use common::faults::McConn;
use common::Server;

/// Values long enough that the Raft log's size shows how many entries it keeps.
const VALUE_BYTES: usize = 200;

fn value_of(key: &str) -> String {
    format!("{key}-{}", "v".repeat(VALUE_BYTES))
}

/// `set`s `keys` one request (one Raft entry) each through `addr`.
fn set_keys(addr: SocketAddr, keys: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut conn = Conn::open(addr);
    keys.into_iter()
        .inspect(|key| assert_eq!(conn.ask(&format!("set {key} {}", value_of(key))), "STORED", "set {key}"))
        .collect()
}

/// The CAS unique of every key, read with memcached's `gets` on `node`.
fn cas_uniques(node: &Server, keys: &[String]) -> BTreeMap<String, u64> {
    let mut mc = McConn::connect(node.listener("memcached"), Duration::from_secs(10)).unwrap();
    keys.iter()
        .map(|key| (key.clone(), mc.cas_of(key).unwrap().unwrap_or_else(|| panic!("no {key}"))))
        .collect()
}

/// Polls until `node` reads every key's value (it may still be catching up).
fn wait_for_keys(node: &Server, keys: &[String], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut conn = Conn::open(node.addr);
    for key in keys {
        loop {
            let got = conn.ask(&format!("get {key}"));
            if got == format!("VALUE {}", value_of(key)) {
                break;
            }
            assert!(Instant::now() < deadline, "{}: get {key} answered {got:?}", node.db.display());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn assert_database_holds(node: &Server, keys: &[String]) {
    let text = std::fs::read_to_string(&node.db).unwrap();
    for key in keys {
        assert!(
            text.contains(&format!("set {key} {}\n", value_of(key))),
            "{} lacks {key}",
            node.db.display()
        );
    }
}

fn raft_file(cluster: &Cluster, id: u64, name: &str) -> std::path::PathBuf {
    cluster.db(id).with_file_name("database.txt.raft").join(name)
}

fn node(cluster: &Cluster, id: u64) -> &Server {
    cluster.nodes[id as usize - 1].as_ref().expect("the member runs")
}

#[test]
fn the_raft_log_is_truncated_behind_snapshots_and_a_restart_keeps_every_key_and_cas() {
    const SNAPSHOT_ENTRIES: usize = 20;
    let mut cluster = Cluster::start_with(&["--snapshot-entries", "20"]);
    let leader = cluster.wait_for_leader(Duration::from_secs(15)).expect("a leader");
    let addr = node(&cluster, leader).addr;
    let keys = set_keys(addr, (0..300).map(|i| format!("k{i}")));
    cluster.wait_for_applied(cluster.applied().max(300), Duration::from_secs(15));

    // Each entry is a little more than its value; the log keeps at most two snapshots'
    // worth of entries, where 300 entries would take far more.
    let entry_bytes = (VALUE_BYTES + 150) as u64;
    let bound = 2 * SNAPSHOT_ENTRIES as u64 * entry_bytes + 8192;
    assert!(300 * VALUE_BYTES as u64 > 2 * bound, "the check could not fail");
    for id in 1..=3 {
        let log = std::fs::metadata(raft_file(&cluster, id, "raft.log")).unwrap().len();
        assert!(log < bound, "node {id}: raft.log is {log} bytes after 300 writes (bound {bound})");
        assert!(raft_file(&cluster, id, "snapshot").is_file(), "node {id} has no snapshot");
    }

    // CAS uniques are in the snapshot, not in database.txt: after a restart of every member
    // (each from its snapshot plus the entries after it) they are the same.
    let before = cas_uniques(node(&cluster, leader), &keys);
    for id in 1..=3u64 {
        assert_eq!(cas_uniques(node(&cluster, id), &keys), before, "node {id} before the restart");
    }
    for slot in cluster.nodes.iter_mut() {
        slot.take().expect("runs").kill();
    }
    for id in 1..=3u64 {
        let restarted = cluster.start_node(id);
        assert!(
            restarted.wait_for_log("restored from the snapshot", Duration::from_secs(10)),
            "{}",
            restarted.log()
        );
        cluster.nodes[id as usize - 1] = Some(restarted);
    }
    cluster.wait_for_leader(Duration::from_secs(15)).expect("a leader after the restart");
    for id in 1..=3u64 {
        wait_for_keys(node(&cluster, id), &keys, Duration::from_secs(15));
        assert_eq!(cas_uniques(node(&cluster, id), &keys), before, "node {id} after the restart");
        assert_database_holds(node(&cluster, id), &keys);
    }
}

#[test]
fn a_member_too_far_behind_for_the_log_is_sent_the_snapshot() {
    let mut cluster = Cluster::start_with(&["--snapshot-entries", "20"]);
    let leader = cluster.wait_for_leader(Duration::from_secs(15)).expect("a leader");
    let behind = (1..=3).find(|&id| id != leader).unwrap();
    let early = set_keys(node(&cluster, leader).addr, (0..5).map(|i| format!("early{i}")));
    wait_for_keys(node(&cluster, behind), &early, Duration::from_secs(10));
    cluster.nodes[behind as usize - 1].take().unwrap().kill();

    // Far more entries than the leader's log keeps (two snapshots' worth) while it is down.
    let late = set_keys(node(&cluster, leader).addr, (0..120).map(|i| format!("late{i}")));
    let leader_node = node(&cluster, leader);
    assert!(
        leader_node.wait_for_log("Raft log compacted up to entry", Duration::from_secs(5)),
        "no compaction"
    );

    let restarted = cluster.start_node(behind);
    assert!(
        restarted.wait_for_log("installed the snapshot of entry", Duration::from_secs(20)),
        "{}",
        restarted.log()
    );
    assert!(
        leader_node.log().contains(&format!("sending member {behind} the snapshot")),
        "{}",
        leader_node.log()
    );
    cluster.nodes[behind as usize - 1] = Some(restarted);
    let keys: Vec<String> = early.into_iter().chain(late).collect();
    let caught_up = node(&cluster, behind);
    wait_for_keys(caught_up, &keys, Duration::from_secs(15));
    assert_database_holds(caught_up, &keys);
    assert_eq!(cas_uniques(caught_up, &keys), cas_uniques(node(&cluster, leader), &keys));
    // It goes on from the log after the snapshot.
    let after = set_keys(node(&cluster, leader).addr, ["after".to_string()]);
    wait_for_keys(node(&cluster, behind), &after, Duration::from_secs(10));
}
