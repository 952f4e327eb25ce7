//! A Raft cluster of real `kvserver` processes on loopback (issue 12): election, writes
//! through every member, failover after `kill -9` of the leader, catch-up of the restarted
//! node. Every wait is a bounded poll; every process is killed by the test that started it
//! (`common::Server` kills its child on drop).

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::cluster::{free_ports, signal, Cluster, Conn, Writers, MEMBERS};
use common::faults::McConn;
use common::Server;

#[test]
fn three_nodes_elect_one_leader_and_list_every_member() {
    let cluster = Cluster::start();
    let leader = cluster.wait_for_leader(Duration::from_secs(15)).expect("a leader within 15 s");
    for (id, node) in cluster.live() {
        let mut conn = Conn::open(node.addr);
        let listing = conn.ask_listing("cluster");
        assert_eq!(listing.len(), MEMBERS + 1, "node {id}: {listing:?}");
        assert_eq!(listing.last().map(String::as_str), Some("END"));
        for (member, line) in (1..=MEMBERS as u64).zip(&listing) {
            let fields: Vec<&str> = line.split(' ').collect();
            assert_eq!(fields[0], "NODE", "{line}");
            assert_eq!(fields[1], member.to_string(), "{line}");
            assert!(cluster.spec.contains(&format!("{member}={}", fields[2])), "{line}");
            let role = if member == leader { "leader" } else { "follower" };
            assert_eq!(fields[3], role, "node {id}'s view: {line}");
            assert!(fields[4].starts_with("term=") && fields[4] != "term=0", "{line}");
            assert!(fields[5].starts_with("match="), "{line}");
            assert!(fields[6].starts_with("last_contact_ms="), "{line}");
        }
        assert_eq!(conn.stat("cluster_node_id"), Some(id.to_string()));
        assert_eq!(conn.stat("cluster_leader"), Some(leader.to_string()));
        for name in ["cluster_term", "cluster_commit_index", "cluster_applied_index"] {
            let value = conn.stat(name).unwrap_or_else(|| panic!("node {id}: no {name}"));
            assert!(value.parse::<u64>().is_ok(), "{name} {value}");
        }
    }
    // The leader's state records its log; the database sits beside it, untouched by Raft.
    assert!(cluster.db(leader).with_file_name("database.txt.raft").join("raft.log").is_file());
}

#[test]
fn a_single_node_server_has_no_cluster_status() {
    let (_dir, db) = common::temp_db();
    let server = Server::start(&db, &[]);
    let mut conn = Conn::open(server.addr);
    assert_eq!(conn.ask_listing("cluster"), ["ERROR not a cluster node (no --node-id)"]);
    assert_eq!(conn.stat("cluster_role"), None);
    assert!(!db.with_file_name("database.txt.raft").exists());
}

/// memcached clients work unchanged against any member: their writes go through the log
/// like the line protocol's (pipelined ones as one entry), and are read on every member.
#[test]
fn memcached_writes_through_every_node_are_readable_on_every_node() {
    let cluster = Cluster::start();
    cluster.wait_for_leader(Duration::from_secs(15)).expect("a leader");
    for (id, node) in cluster.live() {
        let mut mc = McConn::connect(node.listener("memcached"), Duration::from_secs(20)).unwrap();
        assert_eq!(
            mc.store("set", &format!("mc{id}"), 7, format!("by memcached {id}").as_bytes()).unwrap(),
            b"STORED"
        );
        assert_eq!(mc.store("add", &format!("mc{id}"), 0, b"again").unwrap(), b"NOT_STORED");
        // Pipelined writes of other kinds, answered in order.
        mc.send(
            format!("set n{id} 0 0 1\r\n5\r\nincr n{id} 3\r\ndelete n{id}\r\ndelete n{id}\r\n").as_bytes(),
        )
        .unwrap();
        let replies: Vec<Vec<u8>> = (0..4).map(|_| mc.read_line().unwrap()).collect();
        assert_eq!(replies, [&b"STORED"[..], b"8", b"DELETED", b"NOT_FOUND"], "through node {id}");
        assert_eq!(
            mc.get(&format!("mc{id}")).unwrap().as_deref(),
            Some(format!("by memcached {id}").as_bytes())
        );
        // A delayed flush_all would run on this node alone: refused.
        assert!(mc.call("flush_all 60").unwrap().starts_with(b"SERVER_ERROR"));
    }
    for id in 1..=MEMBERS as u64 {
        cluster.wait_everywhere(&format!("mc{id}"), &format!("by memcached {id}"), Duration::from_secs(10));
    }
}

#[test]
fn writes_through_every_node_are_readable_on_every_node_and_the_databases_agree() {
    let cluster = Cluster::start();
    cluster.wait_for_leader(Duration::from_secs(15)).expect("a leader");
    for (id, node) in cluster.live() {
        let mut conn = Conn::open(node.addr);
        // A pipelined batch: one Raft entry, answered in order.
        let batch = format!("set k{id} from node {id}\nset gone{id} x\ndel gone{id}\ndel never{id}\n");
        conn.writer.write_all(batch.as_bytes()).unwrap();
        let replies: Vec<String> = (0..4).map(|_| conn.line()).collect();
        assert_eq!(replies, ["STORED", "STORED", "DELETED", "NOT_FOUND"], "through node {id}");
        // Acknowledged means applied here: the node that answered reads it at once.
        assert_eq!(conn.ask(&format!("get k{id}")), format!("VALUE from node {id}"));
    }
    for id in 1..=MEMBERS as u64 {
        cluster.wait_everywhere(&format!("k{id}"), &format!("from node {id}"), Duration::from_secs(10));
    }
    // Every member applied the same entries with the same inputs: wait until all report the
    // same applied index, then their databases are the same file.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let applied: Vec<Option<String>> =
            cluster.live().map(|(_, n)| Conn::open(n.addr).stat("cluster_applied_index")).collect();
        if applied.windows(2).all(|w| w[0] == w[1]) {
            break;
        }
        assert!(Instant::now() < deadline, "applied indexes never met: {applied:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let first = std::fs::read(cluster.db(1)).unwrap();
    assert!(String::from_utf8_lossy(&first).contains("set k3 from node 3"));
    for id in 2..=MEMBERS as u64 {
        assert_eq!(std::fs::read(cluster.db(id)).unwrap(), first, "database of node {id}");
    }
}

#[test]
fn after_kill_9_of_the_leader_a_new_one_takes_over_and_no_acknowledged_write_is_lost() {
    let mut cluster = Cluster::start();
    let old = cluster.wait_for_leader(Duration::from_secs(15)).expect("a leader");
    let addrs: Vec<SocketAddr> = cluster.live().map(|(_, n)| n.addr).collect();
    let writers = Writers::start(8, &addrs);
    // Let the writers get going on every node, then kill the leader under them.
    cluster.wait_for_applied(50, Duration::from_secs(15));
    let killed_at = Instant::now();
    cluster.nodes[old as usize - 1].take().expect("leader runs").kill();
    let new = cluster.wait_for_leader(Duration::from_secs(10)).expect("a new leader");
    let election = killed_at.elapsed();
    eprintln!("new leader {new} {} ms after kill -9 of leader {old}", election.as_millis());
    assert_ne!(new, old);
    assert!(election < Duration::from_secs(3), "new leader only after {election:?}");

    // Writes resume through the live nodes.
    let resumed = cluster.applied();
    cluster.wait_for_applied(resumed + 20, Duration::from_secs(10));
    let acknowledged = writers.finish();
    assert!(acknowledged.len() > 50, "only {} writes acknowledged", acknowledged.len());

    // The old leader comes back under its own identity and catches up.
    let restarted = cluster.start_node(old);
    cluster.nodes[old as usize - 1] = Some(restarted);
    cluster.wait_for_all(&acknowledged, Duration::from_secs(20));
    // And it serves writes again, as a follower of the new leader.
    let mut conn = Conn::open(cluster.nodes[old as usize - 1].as_ref().unwrap().addr);
    assert_eq!(conn.ask("set after-restart yes"), "STORED");
    cluster.wait_everywhere("after-restart", "yes", Duration::from_secs(10));
}

/// REPORT's election time: kill -9 the leader 20 times (restarting it each time and letting
/// it catch up) and print the median and worst time to a new leader agreed by the others.
/// `cargo test --release --test cluster election_time -- --ignored --nocapture`
#[test]
#[ignore = "a measurement (about a minute), not a check"]
fn election_time_after_leader_kill() {
    let mut cluster = Cluster::start();
    let mut times = Vec::new();
    for round in 0..20 {
        let leader = cluster.wait_for_leader(Duration::from_secs(15)).expect("a leader");
        let mut conn = Conn::open(cluster.live().find(|(id, _)| *id == leader).unwrap().1.addr);
        assert_eq!(conn.ask(&format!("set round {round}")), "STORED");
        let killed_at = Instant::now();
        cluster.nodes[leader as usize - 1].take().expect("leader runs").kill();
        cluster.wait_for_leader(Duration::from_secs(10)).expect("a new leader");
        times.push(killed_at.elapsed());
        let restarted = cluster.start_node(leader);
        cluster.nodes[leader as usize - 1] = Some(restarted);
        cluster.wait_everywhere("round", &round.to_string(), Duration::from_secs(20));
    }
    times.sort();
    eprintln!(
        "election after kill -9 of the leader, 20 rounds: median {} ms, worst {} ms, best {} ms",
        times[times.len() / 2].as_millis(),
        times[times.len() - 1].as_millis(),
        times[0].as_millis()
    );
}

/// The failure mode of asynchronous replication: a leader cut off from the others (here
/// stopped for 10 s) must not have acknowledged anything the new leader does not have, and
/// what it takes in when it resumes must not overwrite what the others committed meanwhile.
#[test]
fn a_leader_stopped_for_10_s_steps_down_and_loses_no_acknowledged_write() {
    let cluster = Cluster::start();
    let old = cluster.wait_for_leader(Duration::from_secs(15)).expect("a leader");
    let old_node = cluster.live().find(|(id, _)| *id == old).unwrap().1;
    let mut before = Conn::open(old_node.addr);
    assert_eq!(before.ask("set k before"), "STORED");

    signal(old_node, libc::SIGSTOP);
    // A client of the stopped leader: its write waits in the socket until SIGCONT.
    let mut stale = Conn::open(old_node.addr);
    stale.writer.write_all(b"set k from-the-old-leader\n").unwrap();

    let others: Vec<SocketAddr> = cluster.live().filter(|(id, _)| *id != old).map(|(_, n)| n.addr).collect();
    let stopped_at = Instant::now();
    let deadline = stopped_at + Duration::from_secs(10);
    let mut conn = Conn::open(others[0]);
    let mut acknowledged = Vec::new();
    let mut n = 0;
    while Instant::now() < deadline {
        let reply = conn.ask(&format!("set k during-{n}"));
        if reply == "STORED" {
            acknowledged.push(n);
        }
        n += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!acknowledged.is_empty(), "the majority took no write while the leader was stopped");
    let last = format!("during-{}", acknowledged.last().unwrap());
    signal(old_node, libc::SIGCONT);

    // It learns of the new term and follows; the value the others committed last is kept
    // everywhere unless the old leader's queued write went through the new leader after it.
    let stale_reply = stale.line();
    eprintln!("the stopped leader's queued write was answered {stale_reply:?}");
    let expected = if stale_reply == "STORED" { "from-the-old-leader" } else { last.as_str() };
    assert!(stale_reply == "STORED" || stale_reply.starts_with("ERROR"), "{stale_reply}");
    cluster.wait_everywhere("k", expected, Duration::from_secs(15));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut old_conn = Conn::open(old_node.addr);
    while old_conn.stat("cluster_role").as_deref() != Some("follower") {
        assert!(Instant::now() < deadline, "the old leader did not step down");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Nothing it held before the stop was overwritten by a stale log: the new leader's log
    // (which has `before` and every `during-*`) is what every member applied.
    for (_, node) in cluster.live() {
        let db = std::fs::read_to_string(&node.db).unwrap();
        assert!(db.contains("set k before"), "{}", node.db.display());
        for n in &acknowledged {
            assert!(db.contains(&format!("set k during-{n}\n")), "{} lacks during-{n}", node.db.display());
        }
    }
}

#[test]
fn without_a_majority_a_write_is_refused_with_no_leader_never_stored() {
    let (dir, db) = common::temp_db();
    let ports = free_ports(3);
    let spec = format!("1=127.0.0.1:{},2=127.0.0.1:{},3=127.0.0.1:{}", ports[0], ports[1], ports[2]);
    // One member of three: it can never win an election.
    let args = ["--node-id", "1", "--initial-cluster", &spec, "--cluster-timeout", "1"];
    let alone = Server::start(&db, &args);
    let mut conn = Conn::open(alone.addr);
    let asked = Instant::now();
    assert_eq!(conn.ask("set k v"), "ERROR no leader");
    let waited = asked.elapsed();
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(5), "{waited:?}");
    // A linearizable read cannot be confirmed without a leader either.
    assert_eq!(conn.ask("get k"), "ERROR no leader");
    assert_eq!(conn.stat("cluster_leader"), Some("0".into()));
    drop(alone);
    // A local read is served from the node's own state, leader or not.
    let alone = Server::start(&db, &["--node-id", "1", "--read-consistency", "local"]);
    let mut conn = Conn::open(alone.addr);
    let asked = Instant::now();
    assert_eq!(conn.ask("get k"), "NOT_FOUND");
    assert!(asked.elapsed() < Duration::from_millis(500), "{:?}", asked.elapsed());
    drop(alone);

    // Its saved members win over a different list on the next start…
    let other = format!("1=127.0.0.1:{},2=127.0.0.1:{}", ports[0], ports[1]);
    let again = Server::start(&db, &["--node-id", "1", "--initial-cluster", &other]);
    assert!(again.log().contains("--initial-cluster ignored"), "{}", again.log());
    assert_eq!(Conn::open(again.addr).ask_listing("cluster").len(), 4, "still three members");
    drop(again);

    // …and a database with data but no Raft state cannot become a member.
    let single = dir.path().join("single.txt");
    std::fs::write(&single, "set k v\n").unwrap();
    let args = ["--node-id", "1", "--initial-cluster", &spec];
    let exited = Server::try_start(&single, &args).err().expect("refused");
    assert!(exited.log.contains("holds data but this node has no Raft state"), "{}", exited.log);
}

/// Every read sees every write acknowledged before it was sent, whichever member answers
/// it: a write through one node, acknowledged, then a read through another, over both
/// protocols, many times in a row (followers learn of a commit a moment after the leader:
/// without the read fence a follower read right after the acknowledgement is often stale,
/// as `--read-consistency local` shows at once).
fn reads_see_the_writes_acknowledged_before_them(read_consistency: &str) {
    let spec = common::cluster::new_spec();
    let flags = vec!["--read-consistency".to_string(), read_consistency.to_string()];
    let mut cluster = Cluster::new(spec.clone(), vec![spec; MEMBERS], flags);
    cluster.start_all();
    cluster.wait_for_leader(Duration::from_secs(15)).expect("a leader");
    let nodes: Vec<&Server> = cluster.live().map(|(_, n)| n).collect();
    let mut line: Vec<Conn> = nodes.iter().map(|n| Conn::open(n.addr)).collect();
    let mut mc: Vec<McConn> = nodes
        .iter()
        .map(|n| McConn::connect(n.listener("memcached"), Duration::from_secs(20)).unwrap())
        .collect();
    for i in 0..150 {
        let (writer, reader) = (i % MEMBERS, (i + 1) % MEMBERS);
        assert_eq!(line[writer].ask(&format!("set k {i}")), "STORED");
        assert_eq!(line[reader].ask("get k"), format!("VALUE {i}"), "read {i} through node {}", reader + 1);
        let value = format!("m{i}");
        assert_eq!(mc[writer].store("set", "m", 0, value.as_bytes()).unwrap(), b"STORED");
        assert_eq!(mc[reader].get("m").unwrap().as_deref(), Some(value.as_bytes()), "memcached read {i}");
    }
}

#[test]
fn a_linearizable_read_through_any_node_sees_a_write_acknowledged_before_it() {
    reads_see_the_writes_acknowledged_before_them("linearizable");
}

#[test]
fn a_lease_read_through_any_node_sees_a_write_acknowledged_before_it() {
    reads_see_the_writes_acknowledged_before_them("lease");
}

/// Expired items leave every member's memory through the leader's sweep entries
/// (`--expiry-sweep-secs`), at the same point of the log on each: a member never drops one
/// by its own clock (its `keys` count would then go down with no sweep in the log).
#[test]
fn expired_items_leave_every_members_memory_through_the_log() {
    let spec = common::cluster::new_spec();
    let flags = vec!["--expiry-sweep-secs".to_string(), "1".to_string()];
    let mut cluster = Cluster::new(spec.clone(), vec![spec; MEMBERS], flags);
    cluster.start_all();
    cluster.wait_for_leader(Duration::from_secs(15)).expect("a leader");
    let (_, first) = cluster.live().next().unwrap();
    let mut conn = Conn::open(first.addr);
    assert_eq!(conn.ask("set short lived"), "STORED");
    assert_eq!(conn.ask("set long lived"), "STORED");
    assert_eq!(conn.ask("expire short 1"), "OK");
    let deadline = Instant::now() + Duration::from_secs(15);
    for (id, node) in cluster.live() {
        let mut conn = Conn::open(node.addr);
        while conn.stat("keys").as_deref() != Some("1") {
            assert!(Instant::now() < deadline, "node {id} still holds {:?} keys", conn.stat("keys"));
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(conn.ask("get short"), "NOT_FOUND");
        assert_eq!(conn.ask("get long"), "VALUE lived");
    }
}
