//! Network and process faults between the members of a Raft cluster (issue 12): every peer
//! link runs through a fault proxy the test controls (`common::fault_proxy`), and writers
//! record what the cluster acknowledged, to check afterwards that every member has it.
//! Every wait is bounded; every process and proxy is stopped when its test ends.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::cluster::{signal, Cluster, Conn, Writers, MEMBERS};
use common::fault_proxy::{proxied_cluster, Mode};

/// Polls member `id`'s own view until its role is not `leader`.
fn wait_until_not_leader(cluster: &Cluster, id: u64, timeout: Duration) -> Duration {
    let started = Instant::now();
    let node = cluster.nodes[id as usize - 1].as_ref().unwrap();
    let mut conn = Conn::open(node.addr);
    while conn.stat("cluster_role").as_deref() == Some("leader") {
        assert!(started.elapsed() < timeout, "node {id} still leads after {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

fn others(id: u64) -> Vec<u64> {
    (1..=MEMBERS as u64).filter(|&other| other != id).collect()
}

fn addrs(cluster: &Cluster, ids: &[u64]) -> Vec<SocketAddr> {
    ids.iter().map(|&id| cluster.nodes[id as usize - 1].as_ref().unwrap().addr).collect()
}

/// Cuts the leader off from both others and checks: a new leader among them, writes go on,
/// the old one steps down by itself, and after healing it follows and every acknowledged
/// write — including any it acknowledged before the cut — is on every member.
#[test]
fn a_leader_cut_off_both_ways_is_replaced_and_nothing_acknowledged_is_lost() {
    let (cluster, mesh) = proxied_cluster(Mode::Pass, &[]);
    let old = cluster.wait_for_leader(Duration::from_secs(15)).expect("a leader");
    let rest = others(old);
    // Writers on every member, the old leader included (its writes then fail or wait).
    let writers = Writers::start(6, &addrs(&cluster, &[1, 2, 3]));
    cluster.wait_for_applied_on(rest[0], 30, Duration::from_secs(15));

    mesh.set_around(old, Mode::Drop);
    let cut = Instant::now();
    let new = cluster.wait_for_leader_among(&rest, Duration::from_secs(10)).expect("a new leader");
    eprintln!("new leader {new} {} ms after cutting off leader {old}", cut.elapsed().as_millis());
    assert_ne!(new, old);
    // check_quorum: a leader that hears from no majority steps down on its own.
    let stepped_down = wait_until_not_leader(&cluster, old, Duration::from_secs(5));
    eprintln!("the old leader stepped down {} ms after the cut", stepped_down.as_millis());
    let before = cluster.applied_on(new);
    cluster.wait_for_applied_on(new, before + 30, Duration::from_secs(10));
    // The cut-off member takes no write meanwhile (no false STORED): a write through it
    // waits for --cluster-timeout and is refused.
    let cut_off = cluster.nodes[old as usize - 1].as_ref().unwrap();
    let reply = Conn::open(cut_off.addr).ask("set through-the-cut-off x");
    assert!(reply.starts_with("ERROR"), "the cut-off member answered {reply:?}");

    mesh.heal();
    let acknowledged = writers.finish();
    eprintln!("{} writes acknowledged", acknowledged.len());
    assert!(acknowledged.len() > 60, "only {} writes acknowledged", acknowledged.len());
    cluster.wait_for_all(&acknowledged, Duration::from_secs(20));
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).expect("one leader after healing");
    assert_ne!(leader, old, "pre-vote: the healed member cannot depose the leader that served");
}

/// A one-way partition: nothing reaches the leader (its heartbeats still go out). It
/// cannot hear acknowledgements, so it steps down (check_quorum); the others, no longer
/// hearing it, elect one of them; writes go on; after healing nothing acknowledged is lost.
#[test]
fn a_leader_that_can_send_but_not_hear_steps_down_and_the_others_go_on() {
    let (cluster, mesh) = proxied_cluster(Mode::Pass, &[]);
    let old = cluster.wait_for_leader(Duration::from_secs(15)).expect("a leader");
    let rest = others(old);
    let writers = Writers::start(4, &addrs(&cluster, &rest));
    cluster.wait_for_applied_on(rest[0], 30, Duration::from_secs(15));

    mesh.set_into(old, Mode::Drop);
    wait_until_not_leader(&cluster, old, Duration::from_secs(5));
    let new = cluster.wait_for_leader_among(&rest, Duration::from_secs(10)).expect("a new leader");
    assert_ne!(new, old);
    let before = cluster.applied_on(new);
    cluster.wait_for_applied_on(new, before + 30, Duration::from_secs(10));
    // It still sends: its pre-votes reach the others, yet cannot unseat the new leader.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(cluster.wait_for_leader_among(&rest, Duration::from_secs(5)), Some(new));

    mesh.heal();
    let acknowledged = writers.finish();
    assert!(acknowledged.len() > 60, "only {} writes acknowledged", acknowledged.len());
    cluster.wait_for_all(&acknowledged, Duration::from_secs(20));
    cluster.wait_for_leader(Duration::from_secs(10)).expect("one leader after healing");
}

/// A one-way partition the other way: the leader's messages to one follower are lost,
/// while that follower can still send. It stops hearing the leader and pre-votes, but the
/// other follower still hears the leader and refuses: the leader keeps its place (pre-vote
/// makes the cut-off member harmless), writes go on, and the follower catches up after.
#[test]
fn a_follower_that_cannot_hear_the_leader_does_not_unseat_it() {
    let (cluster, mesh) = proxied_cluster(Mode::Pass, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(15)).expect("a leader");
    let deaf = others(leader)[0];
    let writers = Writers::start(4, &addrs(&cluster, &others(deaf)));
    cluster.wait_for_applied_on(leader, 30, Duration::from_secs(15));
    let term =
        |id: u64| Conn::open(cluster.nodes[id as usize - 1].as_ref().unwrap().addr).stat("cluster_term");
    let term_before = term(leader);

    mesh.set(leader, deaf, Mode::Drop);
    let before = cluster.applied_on(leader);
    cluster.wait_for_applied_on(leader, before + 30, Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(3)); // several election timeouts of the deaf one
    let others_agree = cluster.wait_for_leader_among(&others(deaf), Duration::from_secs(5));
    assert_eq!(others_agree, Some(leader), "the leader was unseated");
    assert_eq!(term(leader), term_before, "a new term began");

    mesh.heal();
    let acknowledged = writers.finish();
    assert!(acknowledged.len() > 60, "only {} writes acknowledged", acknowledged.len());
    cluster.wait_for_all(&acknowledged, Duration::from_secs(20));
    assert_eq!(cluster.wait_for_leader(Duration::from_secs(10)), Some(leader));
}

/// Every peer link delays each chunk by 100–200 ms (a round trip of 200–400 ms, near the
/// election timeout of 500–1,000 ms): the cluster elects, takes writes through every member,
/// and every member ends with every acknowledged write.
#[test]
fn peer_delays_of_100_to_200_ms_keep_the_cluster_correct() {
    let delay = Mode::Delay { min: Duration::from_millis(100), max: Duration::from_millis(200) };
    let (cluster, _mesh) = proxied_cluster(delay, &[]);
    cluster.wait_for_leader(Duration::from_secs(20)).expect("a leader despite the delays");
    let writers = Writers::start(6, &addrs(&cluster, &[1, 2, 3]));
    let started = Instant::now();
    cluster.wait_for_applied_on(1, 20, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(4).saturating_sub(started.elapsed()));
    let acknowledged = writers.finish();
    eprintln!("{} writes acknowledged in {} ms", acknowledged.len(), started.elapsed().as_millis());
    assert!(acknowledged.len() > 20, "only {} writes acknowledged", acknowledged.len());
    cluster.wait_for_all(&acknowledged, Duration::from_secs(20));
}

/// A follower stopped (SIGSTOP) for 10 s while the other two take writes catches up after
/// SIGCONT: it ends with every acknowledged write and reaches the leader's applied index.
#[test]
fn a_follower_stopped_for_10_s_catches_up_after_sigcont() {
    let cluster = Cluster::start();
    let leader = cluster.wait_for_leader(Duration::from_secs(15)).expect("a leader");
    let follower = others(leader)[0];
    let writing = others(follower);
    let writers = Writers::start(4, &addrs(&cluster, &writing));
    cluster.wait_for_applied_on(follower, 20, Duration::from_secs(15));
    let stopped = cluster.nodes[follower as usize - 1].as_ref().unwrap();
    signal(stopped, libc::SIGSTOP);
    let at_stop = cluster.applied_on(leader);
    std::thread::sleep(Duration::from_secs(10));
    let at_cont = cluster.applied_on(leader);
    assert!(at_cont > at_stop + 50, "the majority applied only {at_stop}..{at_cont} meanwhile");
    signal(stopped, libc::SIGCONT);
    std::thread::sleep(Duration::from_millis(500));
    let acknowledged = writers.finish();
    let target = cluster.applied_on(leader);
    cluster.wait_for_applied_on(follower, target, Duration::from_secs(15));
    cluster.wait_for_all(&acknowledged, Duration::from_secs(15));
    // Its own file has them too (what a restart or an operator reads).
    let db = std::fs::read_to_string(&stopped.db).unwrap();
    for (key, value) in &acknowledged {
        assert!(db.contains(&format!("set {key} {value}\n")), "{} lacks {key}", stopped.db.display());
    }
}
