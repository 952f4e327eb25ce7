//! Scale-out: three kvserver instances behind twemproxy (nutcracker), the memcached proxy.
//!
//! The pool uses ketama over named servers with `auto_eject_hosts: false`, the setup README
//! recommends for a database: a key always maps to the same instance, so when one is down its
//! keys fail loudly instead of being re-routed (which would split the data). The test checks
//! the share each instance gets, that the survivors keep serving while one is down, and that
//! nothing is lost once it is back on the same database file.
//!
//! nutcracker comes from Debian's `nutcracker` package, which `.ci/run` installs. Without it
//! the test fails when `CI=true` and is skipped otherwise.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{temp_db, transcript, Server};

const KEYS: usize = 10_000;
/// Requests written before their replies are read.
const PIPELINE: usize = 500;
const INSTANCES: usize = 3;

/// nutcracker's path; `None` (the test is skipped) if it is not installed, which fails the
/// test under `CI=true`.
fn nutcracker_or_skip() -> Option<PathBuf> {
    let found =
        ["/usr/sbin/nutcracker", "/usr/bin/nutcracker"].iter().map(PathBuf::from).find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "nutcracker is not installed, and CI must run this test (.ci/run installs it)"
        );
        eprintln!("skipping: nutcracker is not installed (apt-get install nutcracker)");
    }
    found
}

/// A port that was free a moment ago (bound to port 0, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running nutcracker, killed by its PID when the test ends, however it ends.
struct Proxy {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    fn start(binary: &Path, dir: &Path, servers: &[(u16, &str)]) -> Proxy {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut config = format!(
            "textkv:\n  listen: {addr}\n  hash: fnv1a_64\n  distribution: ketama\n  timeout: 2000\n  \
             auto_eject_hosts: false\n  servers:\n"
        );
        for (port, name) in servers {
            config.push_str(&format!("    - 127.0.0.1:{port}:1 {name}\n"));
        }
        let conf = dir.join("nutcracker.yml");
        std::fs::write(&conf, config).unwrap();
        let log = dir.join("nutcracker.log");
        let child = Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .arg("-o")
            .arg(&log)
            .arg("-p")
            .arg(dir.join("nutcracker.pid"))
            .args(["-a", "127.0.0.1", "-s", &free_port().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nutcracker");
        let proxy = Proxy { child, addr, log };
        // Ready once a request goes through (nutcracker connects to servers lazily).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(stream) = TcpStream::connect(addr) {
                stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                if request(&stream, b"get readiness-probe\r\n", 1) == vec![Reply::Miss] {
                    return proxy;
                }
            }
            assert!(Instant::now() < deadline, "nutcracker not ready:\n{}", proxy.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream
    }
}

/// One reply to a `set` or single-key `get`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Stored,
    Value(Vec<u8>),
    Miss,
    Error(String),
}

/// Writes `requests` (already encoded) at once and parses `count` replies.
fn request(mut stream: &TcpStream, requests: &[u8], count: usize) -> Vec<Reply> {
    if stream.write_all(requests).is_err() {
        return vec![Reply::Error("write failed".into()); count];
    }
    let mut buf = Vec::new();
    let mut replies = Vec::with_capacity(count);
    let mut pos = 0;
    let mut chunk = [0u8; 65536];
    while replies.len() < count {
        // Parse what is buffered; read more only when a reply is incomplete.
        match parse_reply(&buf[pos..]) {
            Some((reply, used)) => {
                replies.push(reply);
                pos += used;
            }
            None => match stream.read(&mut chunk) {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => {
                    while replies.len() < count {
                        replies.push(Reply::Error("connection closed".into()));
                    }
                }
            },
        }
    }
    replies
}

fn parse_reply(buf: &[u8]) -> Option<(Reply, usize)> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&buf[..line_end]).unwrap_or("<binary>");
    if line == "STORED" {
        return Some((Reply::Stored, line_end + 2));
    }
    if line == "END" {
        return Some((Reply::Miss, line_end + 2));
    }
    if let Some(header) = line.strip_prefix("VALUE ") {
        let bytes: usize = header.rsplit(' ').next()?.parse().ok()?;
        let data_start = line_end + 2;
        let end = data_start + bytes + 2 + 5; // data, \r\n, END\r\n
        if buf.len() < end {
            return None;
        }
        assert_eq!(&buf[data_start + bytes..end], b"\r\nEND\r\n", "one value per single-key get");
        return Some((Reply::Value(buf[data_start..data_start + bytes].to_vec()), end));
    }
    Some((Reply::Error(line.to_string()), line_end + 2))
}

fn key(i: usize) -> String {
    format!("user:{i}")
}

fn value(i: usize) -> Vec<u8> {
    format!("value {i} \r\n with a line break").into_bytes()
}

/// Sets every key through the proxy, `PIPELINE` requests per write.
fn write_all(proxy: &Proxy) {
    let stream = proxy.connect();
    for batch in (0..KEYS).collect::<Vec<_>>().chunks(PIPELINE) {
        let mut requests = Vec::new();
        for &i in batch {
            let v = value(i);
            requests.extend_from_slice(format!("set {} {i} 0 {}\r\n", key(i), v.len()).as_bytes());
            requests.extend_from_slice(&v);
            requests.extend_from_slice(b"\r\n");
        }
        let replies = request(&stream, &requests, batch.len());
        assert!(replies.iter().all(|r| *r == Reply::Stored), "set through the proxy: {:?}", &replies[..3]);
    }
}

/// Gets every key through the proxy with single-key gets, pipelined.
fn read_all(proxy: &Proxy) -> Vec<Reply> {
    let stream = proxy.connect();
    let mut replies = Vec::with_capacity(KEYS);
    for batch in (0..KEYS).collect::<Vec<_>>().chunks(PIPELINE) {
        let mut requests = Vec::new();
        for &i in batch {
            requests.extend_from_slice(format!("get {}\r\n", key(i)).as_bytes());
        }
        replies.extend(request(&stream, &requests, batch.len()));
    }
    replies
}

/// The keys an instance holds, via its line protocol's `keys`.
fn keys_on(server: &Server) -> HashSet<String> {
    let reply = String::from_utf8(transcript(server.addr, b"keys\n")).unwrap();
    reply.lines().filter_map(|l| l.strip_prefix("KEY ")).map(str::to_string).collect()
}

#[test]
fn three_instances_behind_twemproxy_share_keys_and_survive_an_outage() {
    let Some(binary) = nutcracker_or_skip() else { return };
    let started = Instant::now();
    let dirs: Vec<(tempfile::TempDir, PathBuf)> = (0..INSTANCES).map(|_| temp_db()).collect();
    let ports: Vec<u16> = (0..INSTANCES).map(|_| free_port()).collect();
    let names = ["kv1", "kv2", "kv3"];
    let start_instance = |i: usize| {
        let addr = format!("127.0.0.1:{}", ports[i]);
        Server::start(&dirs[i].1, &["--memcached", &addr])
    };
    let mut servers: Vec<Option<Server>> = (0..INSTANCES).map(|i| Some(start_instance(i))).collect();
    let proxy_dir = tempfile::tempdir().unwrap();
    let pool: Vec<(u16, &str)> = ports.iter().copied().zip(names).collect();
    let proxy = Proxy::start(&binary, proxy_dir.path(), &pool);

    write_all(&proxy);
    let holdings: Vec<HashSet<String>> = servers.iter().flatten().map(keys_on).collect();
    let total: usize = holdings.iter().map(HashSet::len).sum();
    assert_eq!(total, KEYS, "every key is on exactly one instance");
    for (name, keys) in names.iter().zip(&holdings) {
        assert!(keys.len() * 5 >= KEYS, "{name} holds only {} of {KEYS} keys", keys.len());
    }
    eprintln!("shares: {:?}", holdings.iter().map(HashSet::len).collect::<Vec<_>>());
    let expected: Vec<Reply> = (0..KEYS).map(|i| Reply::Value(value(i))).collect();
    assert!(read_all(&proxy) == expected, "every key reads back through the proxy");

    // SIGKILL one instance: its keys fail with an error, the others are still served.
    let down = 1;
    servers[down].take().unwrap().kill();
    let owner: HashMap<&str, usize> =
        holdings.iter().enumerate().flat_map(|(n, keys)| keys.iter().map(move |k| (k.as_str(), n))).collect();
    let replies = read_all(&proxy);
    eprintln!("with {} down: {:?}", names[down], replies.iter().find(|r| matches!(r, Reply::Error(_))));
    for (i, reply) in replies.iter().enumerate() {
        if owner[key(i).as_str()] == down {
            assert!(matches!(reply, Reply::Error(_)), "{} on the stopped instance gave {reply:?}", key(i));
        } else {
            assert_eq!(*reply, expected[i], "{} on a live instance", key(i));
        }
    }

    // Restarted on the same database file and port: every key is served again.
    servers[down] = Some(start_instance(down));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let replies = read_all(&proxy);
        if replies == expected {
            break;
        }
        let wrong = replies.iter().zip(&expected).filter(|(r, e)| r != e).count();
        assert!(
            Instant::now() < deadline,
            "{wrong} keys still not served after the restart:\n{}",
            proxy.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
}

/// twemproxy in front of two 3-node clusters, one shard each (README "Cluster, Redis
/// replication and twemproxy sharding"): the proxy spreads the keys over the clusters, each
/// cluster replicates its share on its three members, and a shard keeps serving reads and
/// writes through the proxy when one of its members (not the one the proxy names) is
/// killed.
#[test]
fn twemproxy_in_front_of_two_clusters_shards_and_each_cluster_replicates() {
    use common::cluster::Cluster;
    let Some(binary) = nutcracker_or_skip() else { return };
    let mut clusters = [Cluster::start(), Cluster::start()];
    for cluster in &clusters {
        cluster.wait_for_leader(Duration::from_secs(15)).expect("a leader");
    }
    // Member 1 of each cluster is that shard's server in the proxy's list.
    let listed: Vec<u16> =
        clusters.iter().map(|c| c.nodes[0].as_ref().unwrap().listener("memcached").port()).collect();
    let proxy_dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&binary, proxy_dir.path(), &[(listed[0], "shard-a"), (listed[1], "shard-b")]);

    write_all(&proxy);
    let expected: Vec<Reply> = (0..KEYS).map(|i| Reply::Value(value(i))).collect();
    assert!(read_all(&proxy) == expected, "every key reads back through the proxy");
    // Each shard's keys are on all three of its members (once each has applied them), and
    // on no member of the other cluster.
    let mut shares = Vec::new();
    for cluster in &clusters {
        let deadline = Instant::now() + Duration::from_secs(20);
        let share = loop {
            let held: Vec<HashSet<String>> = cluster.live().map(|(_, n)| keys_on(n)).collect();
            if held.windows(2).all(|w| w[0] == w[1]) {
                break held[0].clone();
            }
            assert!(Instant::now() < deadline, "the members of a cluster never agreed on their keys");
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(share.len() * 5 >= KEYS, "a shard holds only {} of {KEYS} keys", share.len());
        shares.push(share);
    }
    assert!(shares[0].is_disjoint(&shares[1]), "a key is on both shards");
    assert_eq!(shares[0].len() + shares[1].len(), KEYS, "every key is on one shard");

    // kill -9 of a member the proxy does not name, in each cluster: both shards go on.
    for cluster in &mut clusters {
        cluster.nodes[2].take().expect("member 3 runs").kill();
    }
    assert!(read_all(&proxy) == expected, "every key still reads back through the proxy");
    let stream = proxy.connect();
    let replies = request(&stream, b"set after-kill 0 0 3\r\nyes\r\nget after-kill\r\n", 2);
    assert_eq!(replies, [Reply::Stored, Reply::Value(b"yes".to_vec())], "a write after the kills");
}
