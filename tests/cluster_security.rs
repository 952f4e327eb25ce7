//! Peer authentication of a Raft cluster (`--cluster-secret`, issue 12): members with the
//! secret form a cluster; a member with another secret, or a stranger on the peer port,
//! is refused and logged while the others go on; a byte changed on the path breaks only
//! that connection; a peer address off loopback needs a secret.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::cluster::{new_spec, peer_addr, Cluster, Conn, MEMBERS};
use common::fault_proxy::{proxied_cluster, Mode};
use common::faults::assert_no_panic;
use common::Server;

/// A secret file only its owner may read, as kvserver demands.
fn secret_file(dir: &Path, name: &str, secret: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[test]
fn members_with_the_secret_replicate_and_a_wrong_secret_or_a_stranger_is_refused() {
    let secrets = tempfile::tempdir().unwrap();
    let good = secret_file(secrets.path(), "good", "the secret of this cluster, 41 bytes long");
    let wrong = secret_file(secrets.path(), "wrong", "a different secret, also long enough");
    let (good, wrong) = (good.to_str().unwrap(), wrong.to_str().unwrap());
    let spec = new_spec();
    let mut cluster = Cluster::new(spec.clone(), vec![spec.clone(); MEMBERS], Vec::new());
    for id in 1..=2 {
        let node = cluster.start_node_with(id, &["--cluster-secret", good]);
        cluster.nodes.push(Some(node));
    }
    assert!(cluster.nodes[0].as_ref().unwrap().log().contains("peer traffic authenticated"));
    // Two of three members are a majority: they elect a leader and take writes.
    cluster.wait_for_leader_among(&[1, 2], Duration::from_secs(15)).expect("a leader of 1 and 2");
    let node1 = cluster.nodes[0].as_ref().unwrap();
    assert_eq!(Conn::open(node1.addr).ask("set k v"), "STORED");
    cluster.wait_everywhere("k", "v", Duration::from_secs(10));

    // A stranger on node 1's peer port sends a bare Raft frame (what a member without a
    // secret sends): refused and logged, and node 1 goes on.
    let mut stranger = TcpStream::connect(peer_addr(&spec, 1)).unwrap();
    let mut frame = vec![0, 0, 0, 36];
    frame.extend_from_slice(&[0; 36]);
    stranger.write_all(&frame).unwrap();
    assert!(node1.wait_for_log("no authentication handshake", Duration::from_secs(10)), "{}", node1.log());
    drop(stranger);
    assert_eq!(Conn::open(node1.addr).ask("set k2 v2"), "STORED");

    // Node 3 with another secret: it cannot prove the secret, and it hears nobody.
    let started3 = Instant::now();
    // (Its reads are local: they show what it holds, not wait for a leader it cannot find.)
    let flags = ["--cluster-secret", wrong, "--read-consistency", "local"];
    cluster.nodes.push(Some(cluster.start_node_with(3, &flags)));
    let node3 = cluster.nodes[2].as_ref().unwrap();
    let refused =
        |server: &Server| server.wait_for_log("did not prove the cluster secret", Duration::from_secs(15));
    assert!(refused(node3), "node 3 logged no refusal:\n{}", node3.log());
    let refused_by_a_member =
        refused(cluster.nodes[0].as_ref().unwrap()) || refused(cluster.nodes[1].as_ref().unwrap());
    assert!(refused_by_a_member, "neither member logged node 3's refusal");
    let mut conn3 = Conn::open(node3.addr);
    assert_eq!(conn3.ask("get k"), "NOT_FOUND", "node 3 received the log");
    assert_eq!(conn3.stat("cluster_leader").as_deref(), Some("0"));
    let asked = Instant::now();
    assert_eq!(conn3.ask("set through3 x"), "ERROR no leader");
    assert!(asked.elapsed() >= Duration::from_secs(4), "answered before --cluster-timeout");
    // The refusals are rate-limited: each of the three sources (members 1 and 2 as it dials
    // them, their connections to it) retries every 200 ms, yet has a line every 5 s at
    // most, counting the ones left out.
    assert!(node3.wait_for_log("more refusals since the last report", Duration::from_secs(10)));
    let (lines, alive) = (node3.log().matches("peer refused").count(), started3.elapsed().as_secs());
    assert!(lines as u64 <= 3 * (alive / 5 + 1), "{lines} refusal lines in {alive} s:\n{}", node3.log());

    // Restarted with the cluster's secret, node 3 catches up.
    drop(conn3);
    cluster.nodes[2].take().unwrap().kill();
    cluster.nodes[2] = Some(cluster.start_node_with(3, &["--cluster-secret", good]));
    cluster.wait_everywhere("k2", "v2", Duration::from_secs(15));
    cluster.wait_for_leader(Duration::from_secs(10)).expect("all three agree on a leader");
    for (id, node) in cluster.live() {
        let db = std::fs::read_to_string(&node.db).unwrap();
        assert!(db.contains("set k v\n") && !db.contains("through3"), "node {id}: {db}");
    }
}

#[test]
fn a_peer_address_off_loopback_needs_a_secret_and_the_secret_file_must_be_private() {
    let (dir, db) = common::temp_db();
    let own = peer_addr(&new_spec(), 1);
    // TEST-NET addresses: never routed, resolved without DNS.
    let spec = format!("1={own},2=192.0.2.1:7102,3=192.0.2.2:7103");
    let exited =
        Server::try_start(&db, &["--node-id", "1", "--initial-cluster", &spec]).err().expect("refused");
    assert!(!exited.status.success());
    assert!(
        exited.log.contains("member 2: peer address 192.0.2.1:7102 is not loopback")
            && exited.log.contains("--cluster-secret <file>"),
        "{}",
        exited.log
    );

    let secret = secret_file(dir.path(), "secret", "a secret of more than sixteen bytes");
    let secret_arg = secret.to_str().unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let args = ["--node-id", "1", "--initial-cluster", &spec, "--cluster-secret", secret_arg];
    let exited = Server::try_start(&db, &args).err().expect("a readable secret is refused");
    assert!(exited.log.contains("chmod 600"), "{}", exited.log);

    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let server = Server::start(&db, &args);
    assert!(server.log().contains("peer traffic authenticated with --cluster-secret"), "{}", server.log());
    assert_eq!(Conn::open(server.addr).stat("cluster_node_id").as_deref(), Some("1"));
}

/// An attacker on the path between two members changes one byte of the leader's stream to
/// a follower after the handshake: the follower refuses that connection (logged) instead of
/// taking the changed frame, and the cluster goes on with nothing lost.
#[test]
fn a_byte_changed_on_the_path_breaks_the_connection_not_the_cluster() {
    let secrets = tempfile::tempdir().unwrap();
    let secret = secret_file(secrets.path(), "secret", "the secret of this cluster, 41 bytes long");
    let (cluster, mesh) = proxied_cluster(Mode::Pass, &["--cluster-secret", secret.to_str().unwrap()]);
    let leader = cluster.wait_for_leader(Duration::from_secs(15)).expect("a leader");
    let follower = (1..=MEMBERS as u64).find(|&id| id != leader).unwrap();
    let node = |id: u64| cluster.nodes[id as usize - 1].as_ref().unwrap();
    let mut conn = Conn::open(node(leader).addr);
    assert_eq!(conn.ask("set before x"), "STORED");

    // Past the handshake (72 bytes from the dialer), inside some record of the stream.
    mesh.set(leader, follower, Mode::Corrupt { at: 200 });
    let value = "v".repeat(4096);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut n = 0;
    while !node(follower).log().contains("failed its authentication check")
        && !node(follower).log().contains("a stream not sealed by a member")
    {
        assert!(Instant::now() < deadline, "the follower took a changed stream:\n{}", node(follower).log());
        assert_eq!(conn.ask(&format!("set big{n} {value}")), "STORED", "a write during the attack");
        n += 1;
    }
    mesh.heal();
    assert_eq!(conn.ask("set after x"), "STORED");
    cluster.wait_everywhere("after", "x", Duration::from_secs(15));
    cluster.wait_everywhere("big0", &value, Duration::from_secs(15));
    assert_no_panic(&node(follower).log());
}

/// `--join` goes through the same authentication: a node with the secret joins and gets
/// the data; one with another secret never becomes a member, and says why.
#[test]
fn a_node_joins_with_the_secret_and_not_without_it() {
    let secrets = tempfile::tempdir().unwrap();
    let good = secret_file(secrets.path(), "good", "the secret of this cluster, 41 bytes long");
    let wrong = secret_file(secrets.path(), "wrong", "a different secret, also long enough");
    let mut cluster = Cluster::start_with(&["--cluster-secret", good.to_str().unwrap()]);
    let leader = cluster.wait_for_leader(Duration::from_secs(15)).expect("a leader");
    let leader_addr = cluster.nodes[leader as usize - 1].as_ref().unwrap().addr;
    assert_eq!(Conn::open(leader_addr).ask("set k v"), "STORED");
    let members = || Conn::open(leader_addr).ask_listing("cluster").len() - 1;

    // Another secret: the join request cannot even be delivered.
    let own = format!("127.0.0.1:{}", common::cluster::free_ports(1)[0]);
    let mut args = cluster.join_args(5, &own, leader);
    let at = args.iter().position(|a| a == "--cluster-secret").unwrap();
    args[at + 1] = wrong.to_str().unwrap().to_string();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let outsider = Server::try_start(&cluster.db(5), &args);
    let outsider_log = match &outsider {
        Ok(server) => {
            assert!(server.wait_for_log("did not prove the cluster secret", Duration::from_secs(15)));
            server.log()
        }
        Err(exited) => exited.log.clone(),
    };
    assert!(outsider_log.contains("did not prove the cluster secret"), "{outsider_log}");
    assert_eq!(members(), MEMBERS, "the outsider became a member");
    drop(outsider);

    // The secret: it joins and has the data.
    cluster.join_node(4, leader);
    let deadline = Instant::now() + Duration::from_secs(20);
    while members() != MEMBERS + 1 {
        assert!(Instant::now() < deadline, "node 4 never joined");
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.wait_everywhere("k", "v", Duration::from_secs(20));
}
