//! A Raft cluster of real `kvserver` processes on loopback for the cluster tests: three
//! members in one temporary directory, line-protocol connections with timeouts, bounded
//! polls for a leader / an applied index / a value on every member, and a writer that
//! records what was acknowledged. Every process is killed on drop (`Server`).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{raw_connect, Server};

/// Members in every test.
pub const MEMBERS: usize = 3;

/// A line-protocol connection with a read timeout (from `raw_connect`): a test cannot hang.
pub struct Conn {
    pub reader: BufReader<TcpStream>,
    pub writer: TcpStream,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let stream = raw_connect(addr);
        Conn { writer: stream.try_clone().unwrap(), reader: BufReader::new(stream) }
    }

    pub fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("a reply line");
        assert!(line.ends_with('\n'), "connection closed mid-reply: {line:?}");
        line.trim_end().to_string()
    }

    /// One request, one reply line.
    pub fn ask(&mut self, request: &str) -> String {
        self.writer.write_all(format!("{request}\n").as_bytes()).unwrap();
        self.line()
    }

    /// One request whose reply ends with `END`.
    pub fn ask_listing(&mut self, request: &str) -> Vec<String> {
        self.writer.write_all(format!("{request}\n").as_bytes()).unwrap();
        let mut lines = Vec::new();
        loop {
            let line = self.line();
            if line == "END" || line.starts_with("ERROR") {
                lines.push(line);
                return lines;
            }
            lines.push(line);
        }
    }

    pub fn stat(&mut self, name: &str) -> Option<String> {
        let prefix = format!("STAT {name} ");
        self.ask_listing("stats").iter().find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
    }
}

/// Three members in one temporary directory, each with its own database.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    /// Every member's real peer address, `1=127.0.0.1:port,...`.
    pub spec: String,
    /// Member `id`'s own `--initial-cluster` at `specs[id - 1]`: `spec` unless a test routes
    /// the links to other members through something else (a fault proxy).
    pub specs: Vec<String>,
    /// Flags every start of every member gets (e.g. `--cluster-secret`).
    pub flags: Vec<String>,
    pub nodes: Vec<Option<Server>>,
}

/// Peer ports free right now on loopback, for `--initial-cluster`, which needs them before
/// the servers start. They are taken below Linux's ephemeral range (32768 and up), where
/// neither `bind(:0)` (every client listener of these tests) nor an outgoing connection is
/// ever handed a port, so nothing else takes one between this check and the server's bind
/// or a member's restart; each port is handed out once per test process.
pub fn free_ports(n: usize) -> Vec<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let offset = (std::process::id() % 1_000) * 10;
    let mut ports = Vec::new();
    for _ in 0..10_000 {
        if ports.len() == n {
            return ports;
        }
        let port = (20_000 + (offset + NEXT.fetch_add(1, Ordering::SeqCst)) % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
        }
    }
    panic!("no {n} free ports between 20000 and 32767");
}

/// A fresh `--initial-cluster` of [`MEMBERS`] loopback peer addresses.
pub fn new_spec() -> String {
    free_ports(MEMBERS)
        .iter()
        .enumerate()
        .map(|(i, port)| format!("{}=127.0.0.1:{port}", i + 1))
        .collect::<Vec<_>>()
        .join(",")
}

/// The peer address of member `id` in an `--initial-cluster` list.
pub fn peer_addr(spec: &str, id: u64) -> SocketAddr {
    let prefix = format!("{id}=");
    let entry = spec.split(',').find_map(|e| e.strip_prefix(&prefix)).expect("member in spec");
    entry.parse().expect("a socket address")
}

impl Cluster {
    pub fn start() -> Cluster {
        let spec = new_spec();
        let mut cluster = Cluster::new(spec.clone(), vec![spec; MEMBERS], Vec::new());
        cluster.start_all();
        cluster
    }

    /// A cluster with no member started yet (see the fields for `specs` and `flags`).
    pub fn new(spec: String, specs: Vec<String>, flags: Vec<String>) -> Cluster {
        Cluster { dir: tempfile::tempdir().unwrap(), spec, specs, flags, nodes: Vec::new() }
    }

    /// Starts every member.
    pub fn start_all(&mut self) {
        for id in 1..=MEMBERS as u64 {
            let node = self.start_node(id);
            self.nodes.push(Some(node));
        }
    }

    pub fn db(&self, id: u64) -> PathBuf {
        let dir = self.dir.path().join(format!("n{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("database.txt")
    }

    pub fn start_node(&self, id: u64) -> Server {
        self.start_node_with(id, &[])
    }

    /// Starts member `id` with `extra` flags after the cluster's own.
    pub fn start_node_with(&self, id: u64, extra: &[&str]) -> Server {
        let id_text = id.to_string();
        let mut args = vec![
            "--node-id",
            &id_text,
            "--initial-cluster",
            &self.specs[id as usize - 1],
            "--cluster-timeout",
            "5",
            "--memcached",
            "127.0.0.1:0",
        ];
        args.extend(self.flags.iter().map(String::as_str));
        args.extend_from_slice(extra);
        Server::start(&self.db(id), &args)
    }

    pub fn live(&self) -> impl Iterator<Item = (u64, &Server)> {
        self.nodes.iter().enumerate().filter_map(|(i, n)| n.as_ref().map(|n| (i as u64 + 1, n)))
    }

    /// Polls until every live member names the same leader and that leader says it leads.
    pub fn wait_for_leader(&self, timeout: Duration) -> Option<u64> {
        let live: Vec<u64> = self.live().map(|(id, _)| id).collect();
        self.wait_for_leader_among(&live, timeout)
    }

    /// Polls until the live members `ids` name the same leader and it says it leads.
    pub fn wait_for_leader_among(&self, ids: &[u64], timeout: Duration) -> Option<u64> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let views: Vec<(u64, Option<String>, Option<String>)> = self
                .live()
                .filter(|(id, _)| ids.contains(id))
                .map(|(id, node)| {
                    let mut conn = Conn::open(node.addr);
                    (id, conn.stat("cluster_leader"), conn.stat("cluster_role"))
                })
                .collect();
            let leader = views[0].1.as_deref().and_then(|l| l.parse::<u64>().ok()).unwrap_or(0);
            let agreed =
                leader != 0 && views.iter().all(|(_, l, _)| l.as_deref() == Some(&leader.to_string()));
            let leads = views.iter().any(|(id, _, role)| *id == leader && role.as_deref() == Some("leader"));
            if agreed && leads {
                return Some(leader);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The applied index of the first live member.
    pub fn applied(&self) -> u64 {
        let (id, _) = self.live().next().expect("a live member");
        self.applied_on(id)
    }

    /// The applied index of member `id`.
    pub fn applied_on(&self, id: u64) -> u64 {
        let node = self.nodes[id as usize - 1].as_ref().expect("a live member");
        let applied = Conn::open(node.addr).stat("cluster_applied_index").expect("cluster_applied_index");
        applied.parse().expect("a number")
    }

    /// Polls until member `id` has applied entry `index`.
    pub fn wait_for_applied_on(&self, id: u64, index: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.applied_on(id) < index {
            assert!(Instant::now() < deadline, "node {id}: entry {index} not applied in {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls until the first live member has applied entry `index`.
    pub fn wait_for_applied(&self, index: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.applied() < index {
            assert!(Instant::now() < deadline, "entry {index} not applied in {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls until `key` reads `value` on every live member.
    pub fn wait_everywhere(&self, key: &str, value: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for (id, node) in self.live() {
            let mut conn = Conn::open(node.addr);
            loop {
                let got = conn.ask(&format!("get {key}"));
                if got == format!("VALUE {value}") {
                    break;
                }
                assert!(Instant::now() < deadline, "node {id}: get {key} answered {got:?}, not {value}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A writer that records what the cluster acknowledged: `set` after `set` of its own keys,
/// through whichever live node takes its connection (it moves on when one fails).
pub fn run_writer(
    writer: usize,
    addrs: Vec<SocketAddr>,
    stop: &std::sync::atomic::AtomicBool,
) -> Vec<(String, String)> {
    use std::sync::atomic::Ordering;
    let mut acknowledged = Vec::new();
    let mut target = writer % addrs.len();
    let mut conn: Option<Conn> = None;
    for n in 0..5_000 {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if conn.is_none() {
            match TcpStream::connect_timeout(&addrs[target], Duration::from_secs(1)) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                    conn = Some(Conn { writer: stream.try_clone().unwrap(), reader: BufReader::new(stream) });
                }
                Err(_) => {
                    target = (target + 1) % addrs.len();
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            }
        }
        let (key, value) = (format!("w{writer}-{n}"), format!("value-{writer}-{n}"));
        let c = conn.as_mut().expect("connected");
        let mut reply = String::new();
        let sent = c.writer.write_all(format!("set {key} {value}\n").as_bytes());
        let read = sent.and_then(|()| c.reader.read_line(&mut reply));
        match read {
            Ok(_) if reply.trim_end() == "STORED" => acknowledged.push((key, value)),
            Ok(n) if n > 0 && reply.starts_with("ERROR") => {
                // No leader yet, or not committed in time: not acknowledged; try again later.
                std::thread::sleep(Duration::from_millis(50));
            }
            _ => {
                // The node is gone: move on to the next one.
                conn = None;
                target = (target + 1) % addrs.len();
            }
        }
    }
    acknowledged
}

pub fn signal(server: &Server, signal: i32) {
    // SAFETY: kill(2) on the PID of a child this test started and has not reaped.
    let sent = unsafe { libc::kill(server.pid() as i32, signal) };
    assert_eq!(sent, 0, "kill({}, {signal})", server.pid());
}

impl Cluster {
    /// Three members that all start (and restart) with `flags`.
    pub fn start_with(flags: &[&str]) -> Cluster {
        let spec = new_spec();
        let flags = flags.iter().map(|f| f.to_string()).collect();
        let mut cluster = Cluster::new(spec.clone(), vec![spec; MEMBERS], flags);
        cluster.start_all();
        cluster
    }

    /// Polls until every live member reads every `(key, value)` written (and acknowledged)
    /// by [`run_writer`]: the gets are pipelined, 200 at a time, and repeated while some
    /// still differ (a member catching up, a read refused during an election).
    pub fn wait_for_all(&self, acknowledged: &[(String, String)], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for (id, node) in self.live() {
            let mut missing: Vec<&(String, String)> = acknowledged.iter().collect();
            while !missing.is_empty() {
                let mut conn = Conn::open(node.addr);
                let mut still = Vec::new();
                for chunk in missing.chunks(200) {
                    let gets: String = chunk.iter().map(|(key, _)| format!("get {key}\n")).collect();
                    conn.writer.write_all(gets.as_bytes()).unwrap();
                    for pair in chunk {
                        if conn.line() != format!("VALUE {}", pair.1) {
                            still.push(*pair);
                        }
                    }
                }
                if let (Some((key, value)), true) = (still.first(), Instant::now() >= deadline) {
                    let got = conn.ask(&format!("get {key}"));
                    panic!(
                        "node {id}: {} acknowledged writes missing, e.g. {key}={value} reads {got:?}",
                        still.len()
                    );
                }
                if !still.is_empty() {
                    std::thread::sleep(Duration::from_millis(50));
                }
                missing = still;
            }
        }
    }
}

/// `count` [`run_writer`] threads over `addrs`, until [`Writers::finish`].
pub struct Writers {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Vec<(String, String)>>>,
}

impl Writers {
    pub fn start(count: usize, addrs: &[SocketAddr]) -> Writers {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..count)
            .map(|w| {
                let (addrs, stop) = (addrs.to_vec(), std::sync::Arc::clone(&stop));
                std::thread::spawn(move || run_writer(w, addrs, &stop))
            })
            .collect();
        Writers { stop, threads }
    }

    /// Stops the writers and returns every write they had acknowledged.
    pub fn finish(self) -> Vec<(String, String)> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.threads.into_iter().flat_map(|t| t.join().expect("writer thread")).collect()
    }
}

impl Cluster {
    /// Starts a new node `id` that joins through member `via` (`--join` with a fresh peer
    /// address, the cluster's flags), keeps it in `nodes` and returns its peer address.
    pub fn join_node(&mut self, id: u64, via: u64) -> String {
        let own = format!("127.0.0.1:{}", free_ports(1)[0]);
        let args = self.join_args(id, &own, via);
        let server = Server::start(&self.db(id), &args.iter().map(String::as_str).collect::<Vec<_>>());
        while self.nodes.len() < id as usize {
            self.nodes.push(None);
        }
        self.nodes[id as usize - 1] = Some(server);
        own
    }

    /// The flags of node `id` joining through member `via`, its peer address `own`.
    pub fn join_args(&self, id: u64, own: &str, via: u64) -> Vec<String> {
        let via = peer_addr(&self.spec, via).to_string();
        let mut args = vec!["--node-id", &id.to_string(), "--peer-addr", own, "--join", &via]
            .into_iter()
            .map(str::to_string)
            .collect::<Vec<_>>();
        args.extend(["--cluster-timeout", "5", "--memcached", "127.0.0.1:0"].map(str::to_string));
        args.extend(self.flags.iter().cloned());
        args
    }

    /// Kills member `id` and deletes its data directory (database and Raft state).
    pub fn wipe(&mut self, id: u64) {
        if let Some(node) = self.nodes[id as usize - 1].take() {
            node.kill();
        }
        let dir = self.db(id).parent().expect("a member directory").to_path_buf();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// A server that must stop by itself (a refused member): how it ended and its log, whether
/// it stopped before or after it began listening (bounded wait).
pub fn until_exit(started: Result<Server, super::Exited>) -> super::Exited {
    match started {
        Err(exited) => exited,
        // Signal 0 sends nothing: this only waits for the exit.
        Ok(server) => server.signal_and_wait(0),
    }
}
