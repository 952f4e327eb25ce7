//! A fault-injecting TCP proxy the cluster fault tests put between members: it passes
//! traffic, delays it, or drops it, as the test says, while the members run.
//!
//! A peer connection from member i to member j carries i→j Raft messages only (the dialing
//! side sends, the accepting side only reads, see `src/cluster/transport.rs`), so one proxy
//! per ordered pair (a [`Mesh`]) controls each direction on its own: each member is given
//! its own `--initial-cluster` in which its own entry is its real listen address and every
//! other member's entry is the proxy towards that member. Cutting i→j is a one-way
//! partition; cutting every proxy to and from i isolates i.
//!
//! Each mode change closes the connections the proxy holds, so that a connection is handled
//! one way for its whole life (bytes dropped mid-frame would otherwise leave a stream out
//! of step); the member reconnects on its own, into the new mode. [`Mode::Drop`] accepts
//! connections and reads and discards everything, as a network that loses every packet (a
//! sender notices only by its timeouts); [`Mode::Delay`] delivers every chunk after a delay
//! drawn from a range, in order; [`Mode::Corrupt`] flips one byte of each connection.
//! Every thread ends when the proxy is dropped.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::cluster::{new_spec, peer_addr, Cluster, MEMBERS};
use super::faults::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Drop,
    /// Each chunk is delivered between `min` and `max` after it arrived, in order.
    Delay {
        min: Duration,
        max: Duration,
    },
    /// Byte `at` of what the dialing member sends on each connection is flipped: what an
    /// attacker on the path could do to a frame.
    Corrupt {
        at: usize,
    },
}

struct Shared {
    target: SocketAddr,
    mode: Mutex<Mode>,
    /// Both ends of every connection the proxy holds, to close them on a mode change.
    open: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
}

/// One proxy, listening on its own loopback port, towards one `target`.
pub struct FaultProxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl FaultProxy {
    pub fn start(target: SocketAddr, mode: Mode) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a proxy port");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            target,
            mode: Mutex::new(mode),
            open: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let accepting = Arc::clone(&shared);
        std::thread::spawn(move || accept_loop(&listener, &accepting));
        FaultProxy { addr, shared }
    }

    /// Switches mode; the connections open now are closed (see the module comment).
    pub fn set(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
        self.shared.close_all();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.close_all();
    }
}

impl Shared {
    fn close_all(&self) {
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    fn hold(&self, stream: &TcpStream) {
        if let Ok(clone) = stream.try_clone() {
            self.open.lock().unwrap().push(clone);
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        client.set_nonblocking(false).unwrap();
        let mode = *shared.mode.lock().unwrap();
        shared.hold(&client);
        if mode == Mode::Drop {
            std::thread::spawn(move || discard(client));
            continue;
        }
        let Ok(upstream) = TcpStream::connect_timeout(&shared.target, Duration::from_millis(500)) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        shared.hold(&upstream);
        let (min, max) = match mode {
            Mode::Delay { min, max } => (min, max),
            _ => (Duration::ZERO, Duration::ZERO),
        };
        let corrupt = match mode {
            Mode::Corrupt { at } => Some(at),
            _ => None,
        };
        for (from, to, corrupt) in [(&client, &upstream, corrupt), (&upstream, &client, None)] {
            let (from, to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
            std::thread::spawn(move || pump(from, to, min, max, corrupt));
        }
    }
}

/// Reads and forgets everything until the connection is closed.
fn discard(mut stream: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
}

/// Copies `from` to `to`, each chunk delivered `min..max` after it arrived and in order,
/// byte `corrupt` flipped; closes both when either side ends.
fn pump(mut from: TcpStream, to: TcpStream, min: Duration, max: Duration, corrupt: Option<usize>) {
    let (chunks, delivery) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    let mut writer = to.try_clone().unwrap();
    let deliver = std::thread::spawn(move || {
        for (at, chunk) in delivery {
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            if writer.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let mut rng = Rng::new(from.local_addr().map_or(1, |a| u64::from(a.port())));
    let mut last = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    let mut passed = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(n) if n > 0 => n,
            _ => break,
        };
        if let Some(at) = corrupt.filter(|at| (passed..passed + n).contains(at)) {
            buf[at - passed] ^= 0x20;
        }
        passed += n;
        let spread = (max - min).as_micros() as u64;
        let delay = min + Duration::from_micros(rng.range(0, spread + 1));
        last = last.max(Instant::now() + delay);
        if chunks.send((last, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(chunks);
    let _ = deliver.join();
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

/// One proxy per ordered pair of members: `proxies[&(i, j)]` carries i→j.
pub struct Mesh {
    pub proxies: BTreeMap<(u64, u64), FaultProxy>,
}

impl Mesh {
    /// Proxies towards the real peer addresses of `spec`, all in `mode`.
    pub fn new(spec: &str, mode: Mode) -> Mesh {
        let ids = 1..=MEMBERS as u64;
        let proxies = ids
            .clone()
            .flat_map(|i| ids.clone().filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| ((i, j), FaultProxy::start(peer_addr(spec, j), mode)))
            .collect();
        Mesh { proxies }
    }

    /// Member `id`'s `--initial-cluster`: its own real address, a proxy towards each other.
    pub fn spec_of(&self, spec: &str, id: u64) -> String {
        (1..=MEMBERS as u64)
            .map(|j| {
                let addr = if j == id { peer_addr(spec, j) } else { self.proxies[&(id, j)].addr };
                format!("{j}={addr}")
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Sets the link `from`→`to`.
    pub fn set(&self, from: u64, to: u64, mode: Mode) {
        self.proxies[&(from, to)].set(mode);
    }

    /// Sets every link into member `id`.
    pub fn set_into(&self, id: u64, mode: Mode) {
        for (&(_, to), proxy) in &self.proxies {
            if to == id {
                proxy.set(mode);
            }
        }
    }

    /// Sets every link to and from member `id`.
    pub fn set_around(&self, id: u64, mode: Mode) {
        for (&(from, to), proxy) in &self.proxies {
            if from == id || to == id {
                proxy.set(mode);
            }
        }
    }

    /// Every link passes again.
    pub fn heal(&self) {
        for proxy in self.proxies.values() {
            proxy.set(Mode::Pass);
        }
    }
}

/// A cluster whose every peer link runs through a proxy of a [`Mesh`] (in `mode` at
/// first), every member started with `flags`.
pub fn proxied_cluster(mode: Mode, flags: &[&str]) -> (Cluster, Mesh) {
    let spec = new_spec();
    let mesh = Mesh::new(&spec, mode);
    let specs = (1..=MEMBERS as u64).map(|id| mesh.spec_of(&spec, id)).collect();
    let mut cluster = Cluster::new(spec, specs, flags.iter().map(|f| f.to_string()).collect());
    cluster.start_all();
    (cluster, mesh)
}
