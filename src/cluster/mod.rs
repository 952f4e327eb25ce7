//! Replication over Raft: `kvserver --node-id N --initial-cluster 1=ADDR,2=ADDR,...`.
//!
//! Every member holds the whole database. Writes go through one Raft log, driven by
//! raft-rs (TiKV's consensus module: synchronous, no async runtime, so it fits the server's
//! thread-per-connection shape; it owns elections, log matching and commitment, and this
//! module owns storage, transport and applying): a connection that writes hands its batch
//! to the raft thread (`node`), which proposes it (Raft forwards a follower's proposal to the
//! leader), and answers once the entry is committed — on a majority of members' disks — and
//! applied to this node's store. Reads are linearizable by default: before a session serves
//! the reads of a batch of requests it passes a read fence ([`Cluster::read_fence`]), for
//! which the raft thread asks Raft's ReadIndex (the leader confirms with a majority that it
//! still leads, and at which commit index; fences that arrive meanwhile share the round)
//! and answers once this node has applied that index. `--read-consistency local` skips it.
//!
//! Applying is deterministic (see `store::decide`): the entry carries the leader's clock
//! and the CAS uniques come from the entry's index, through [`Store::apply_committed`], so
//! every member's `database.txt` describes the same items with the same CAS uniques.
//!
//! Where state lives: `<db>.raft/` (`storage`) holds the Raft log and hard state
//! (`raft.log`) and the latest snapshot (`snapshot`). `database.txt` stays the node's
//! readable, replayable state, but CAS uniques are not in it, so a restarted node rebuilds
//! its store from its Raft state: from the latest snapshot (every item with its CAS unique,
//! `snapshot`) and then the committed entries after it, or, before its first snapshot, from
//! an empty store and the whole log. The Raft log and the snapshots being the durable
//! record, the store writes `database.txt` without fsyncs. The first start of a member
//! writes `--initial-cluster` into its state; later starts use the saved members and ignore
//! the flag.
//!
//! Snapshots and truncation: every `--snapshot-entries` applied entries (default 10,000),
//! or every as many entries as the store has keys if that is more, the raft thread exports the store at the applied index, saves it durably (fsync of the file
//! and the directory: the store's own file is not synced) and only then compacts the Raft
//! log up to the *previous* snapshot, so the log holds one to two snapshots' worth of
//! entries and a follower a little behind catches up from it. A follower further behind
//! (or a new one) is sent the snapshot by raft-rs (`MsgSnapshot`): it saves it, replaces
//! its log and its whole store with it, and goes on from the log. A snapshot travels in one
//! peer frame, at most `--max-snapshot-bytes`.
//!
//! Peer traffic is authenticated with `--cluster-secret` (`peer_auth`: a challenge–response
//! per connection, then an HMAC per record), required as soon as a peer address is not
//! loopback. A write is checked against `--users` roles on the node that receives it; the
//! proposal forwarded to the leader carries no user (the leader trusts its authenticated
//! peers).
//!
//! Members come and go through Raft configuration changes (`membership`): `cluster
//! add/remove` on any node, or a new node started with `--join` (it asks a member over the
//! peer port, is added, is sent a snapshot and goes on from the log). A node whose Raft
//! state was wiped is refused under its old id (its peers know its old incarnation, and a
//! leader's heartbeat shows the entries it lost); it rejoins with a new id.
//!
//! Not built yet (issue 12): a delayed `flush_all` on the memcached listener (refused: its
//! timer would run outside the log); snapshots sent in chunks (see `snapshot`).

pub mod membership;
mod node;
mod peer_auth;
pub mod proposal;
mod reply;
pub mod snapshot;
pub mod storage;
mod transport;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use raft::{RawNode, StateRole};

use crate::store::decide::Inputs;
use crate::store::{unix_now, FsyncPolicy, Store, StoreError, WriteOp};
use membership::{Change, Control};
use node::{Event, Node, Reply};
use peer_auth::Secret;
use storage::DiskStorage;
use transport::Dialer;

/// Most ops in one entry (their CAS uniques must fit below the next entry's).
const MAX_ENTRY_OPS: usize = (1 << node::CAS_SHIFT) - 1;

/// What `kvserver` needs to start a member.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub node_id: u64,
    /// `--initial-cluster` as given (needed on a member's first start only).
    pub initial_cluster: Option<String>,
    /// `--cluster-timeout`: how long a write waits for a leader and its commit.
    pub timeout: Duration,
    pub db: std::path::PathBuf,
    pub fsync: FsyncPolicy,
    pub max_value_bytes: usize,
    /// `--read-consistency`.
    pub read_consistency: ReadConsistency,
    /// `--cluster-secret`: the file of the secret that authenticates peer traffic.
    pub secret: Option<std::path::PathBuf>,
    /// `--snapshot-entries`: entries applied between two snapshots.
    pub snapshot_entries: u64,
    /// `--max-snapshot-bytes`: the largest snapshot sent to or taken from a peer.
    pub max_snapshot_bytes: usize,
    /// `--expiry-sweep-secs`: how often the leader proposes an expiry sweep.
    pub sweep_every: Duration,
    /// `--join`: the peer address of a member to ask to be added (a new node's first start).
    pub join: Option<String>,
    /// `--peer-addr`: this node's own peer address, with `--join`.
    pub peer_addr: Option<String>,
}

/// How often a joining node asks again until it is a member.
const JOIN_RETRY: Duration = Duration::from_secs(1);

/// What a read on a cluster node may see (`--read-consistency`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ReadConsistency {
    /// Every read sees every write acknowledged before it was sent, whichever node answers
    /// it: before serving, the node confirms through Raft's ReadIndex (one heartbeat round
    /// of the leader, shared by all reads that arrive meanwhile) that it has applied all
    /// that was committed.
    #[default]
    Linearizable,
    /// As `Linearizable`, but the leader answers the read index from its lease instead of a
    /// heartbeat round: it has heard from a majority within the election timeout, so no
    /// other leader can have been elected yet. Cheaper; relies on bounded clock drift and
    /// on the leader not being paused longer than the lease (a leader resumed from SIGSTOP
    /// may answer from a lost lease before it notices).
    Lease,
    /// Reads are served from this node's own state at once: fast, but a follower may be a
    /// moment behind, and an isolated old leader may answer with what it last knew.
    Local,
}

impl fmt::Display for ReadConsistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReadConsistency::Linearizable => "linearizable",
            ReadConsistency::Lease => "lease",
            ReadConsistency::Local => "local",
        })
    }
}

/// Parses `1=127.0.0.1:7101,2=127.0.0.1:7102`: member ids (non-zero, distinct) and peer
/// addresses, sorted by id.
pub fn parse_members(text: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut members = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("--initial-cluster: '{part}' is not <id>=<host:port>"))?;
        let id: u64 = id
            .trim()
            .parse()
            .ok()
            .filter(|&id| id != 0)
            .ok_or_else(|| format!("--initial-cluster: member id '{id}' is not a positive number"))?;
        if members.insert(id, addr.trim().to_string()).is_some() {
            return Err(format!("--initial-cluster: member {id} is listed twice"));
        }
    }
    if members.is_empty() {
        return Err("--initial-cluster lists no member".into());
    }
    Ok(members)
}

/// Members as `--initial-cluster` spells them (and the Raft state saves them).
pub fn format_members(members: &BTreeMap<u64, String>) -> String {
    members.iter().map(|(id, addr)| format!("{id}={addr}")).collect::<Vec<_>>().join(",")
}

/// Resolves member `id`'s peer address. Peer traffic crossing a network must be
/// authenticated: an address that is not loopback needs `--cluster-secret` (`authenticated`).
fn resolve_peer(id: u64, addr: &str, authenticated: bool) -> Result<SocketAddr, String> {
    let resolved = addr
        .to_socket_addrs()
        .map_err(|e| format!("member {id}: cannot resolve peer address {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("member {id}: peer address {addr} resolves to nothing"))?;
    if !resolved.ip().is_loopback() && !authenticated {
        return Err(format!(
            "member {id}: peer address {addr} is not loopback, so peer traffic must be authenticated: \
             start every member with --cluster-secret <file> (README, Cluster)"
        ));
    }
    Ok(resolved)
}

/// Sends `join` to the member at `target` every [`JOIN_RETRY`] until this node has been
/// sent the cluster's state (its applied index moves), the node the request reaches
/// proposing the change (or refusing it: the node then stops, see `node`).
fn ask_to_join(dialer: &Dialer, target: SocketAddr, join: Control, status: &Mutex<Status>) {
    for attempt in 1u64.. {
        if status.lock().applied > 0 {
            log::info!("joined the cluster");
            return;
        }
        if attempt % 30 == 0 {
            log::warn!("still not added to the cluster after {attempt} requests to {target}");
        }
        dialer.send_once(target, join.clone());
        std::thread::sleep(JOIN_RETRY);
    }
}

/// Rebuilds the store of a member that restarts: from its latest snapshot (which holds the
/// CAS uniques `database.txt` lacks) if it has one, else from nothing (the whole log is
/// applied again). Returns the index the store then holds: Raft hands over the committed
/// entries after it.
fn restore(config: &ClusterConfig, storage: &DiskStorage, store: &Store) -> Result<u64, String> {
    let started = Instant::now();
    let snapshot =
        storage.read_snapshot().map_err(|e| format!("cannot read the snapshot of this node: {e}"))?;
    let Some(snapshot) = snapshot else {
        if store.stats().keys > 0 {
            let inputs = Inputs { now: unix_now(), first_cas: 1, max_value_bytes: config.max_value_bytes };
            store
                .apply_committed(&[WriteOp::Flush], inputs)
                .map_err(|e| format!("cannot reset the store to rebuild it from the Raft log: {e}"))?;
        }
        log::info!(
            "node {}: Raft state loaded: {} entries, rebuilding the database from them",
            config.node_id,
            storage.last_index()
        );
        return Ok(0);
    };
    let index = snapshot.get_metadata().index;
    let (_, items) =
        snapshot::decode(&snapshot.data).map_err(|e| format!("the snapshot of this node: {e}"))?;
    store.replace_all(items).map_err(|e| format!("cannot restore the database from the snapshot: {e}"))?;
    log::info!(
        "node {}: database restored from the snapshot of entry {index} ({} keys, {} ms); \
         applying the {} entries after it",
        config.node_id,
        store.stats().keys,
        started.elapsed().as_millis(),
        storage.last_index().saturating_sub(index)
    );
    Ok(index)
}

/// A member's role as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    Leader,
    #[default]
    Follower,
    Candidate,
}

impl Role {
    fn of(state: StateRole) -> Role {
        match state {
            StateRole::Leader => Role::Leader,
            StateRole::Follower => Role::Follower,
            StateRole::Candidate | StateRole::PreCandidate => Role::Candidate,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
        })
    }
}

/// One member in the `cluster` listing, as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    pub id: u64,
    pub addr: String,
    pub role: Role,
    /// The last log index known to be on that member: the leader's view of its followers,
    /// every node's own last index for itself, 0 for others on a follower.
    pub matched: u64,
    /// Since a message from that member last arrived (since start if none did yet; 0 for
    /// this node itself).
    pub last_contact_ms: u64,
}

/// This node's Raft state, refreshed by the raft thread after every step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub id: u64,
    pub role: Role,
    /// 0 if none is known.
    pub leader: u64,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub members: Vec<MemberStatus>,
}

/// A running member: what the protocol sessions use to write and to report.
pub struct Cluster {
    inbox: crossbeam_channel::Sender<Event>,
    status: Arc<Mutex<Status>>,
    timeout: Duration,
    read_consistency: ReadConsistency,
}

impl Cluster {
    /// Opens the Raft state beside the database, prepares the store, binds the peer address
    /// and starts the transport and the raft thread.
    pub fn start(config: ClusterConfig, store: Arc<Store>) -> Result<Arc<Cluster>, String> {
        let mut storage = DiskStorage::open(&config.db, config.fsync)
            .map_err(|e| format!("cannot open the Raft state of {}: {e}", config.db.display()))?;
        let given = config.initial_cluster.as_deref().map(parse_members).transpose()?;
        let joining = !storage.initialized() && config.join.is_some();
        let members = match (storage.members(), given) {
            _ if joining => {
                let own = config
                    .peer_addr
                    .clone()
                    .ok_or("--join needs --peer-addr (this node's own peer address)")?;
                BTreeMap::from([(config.node_id, own)])
            }
            (Some(saved), given) => {
                let saved = parse_members(saved)?;
                if given.is_some_and(|given| given != saved) {
                    log::warn!("--initial-cluster ignored: this node was formed with {saved:?}");
                }
                if config.join.is_some() {
                    log::info!("--join ignored: this node is a member already");
                }
                saved
            }
            (None, Some(given)) => given,
            (None, None) => {
                return Err(
                    "--node-id needs --initial-cluster (forming a cluster) or --join (joining one) on a \
                            member's first start"
                        .into(),
                )
            }
        };
        if !members.contains_key(&config.node_id) {
            return Err(format!("--node-id {} is not a member of {members:?}", config.node_id));
        }
        let secret = config.secret.as_deref().map(Secret::load).transpose()?.map(Arc::new);
        let addrs: Vec<(u64, SocketAddr)> = members
            .iter()
            .map(|(&id, addr)| resolve_peer(id, addr, secret.is_some()).map(|a| (id, a)))
            .collect::<Result<_, _>>()?;
        let applied = if storage.initialized() {
            restore(&config, &storage, &store)?
        } else if joining {
            if store.stats().keys > 0 {
                return Err(format!(
                    "{} holds data but this node has no Raft state: a joining node starts from an empty \
                     database (the cluster's snapshot replaces it)",
                    config.db.display()
                ));
            }
            log::info!(
                "node {}: asking the member at {} to be added",
                config.node_id,
                config.join.as_deref().unwrap_or("")
            );
            0
        } else {
            if store.stats().keys > 0 {
                return Err(format!(
                    "{} holds data but this node has no Raft state: a new member starts from an empty \
                     database (importing one is not built yet)",
                    config.db.display()
                ));
            }
            let text = format_members(&members);
            storage
                .initialize(&text, members.keys().copied().collect())
                .map_err(|e| format!("cannot write the Raft state: {e}"))?;
            log::info!("node {}: forming a new cluster of {}", config.node_id, text);
            0
        };

        let own = addrs.iter().find(|(id, _)| *id == config.node_id).map(|(_, a)| *a).expect("checked");
        let listener =
            TcpListener::bind(own).map_err(|e| format!("cannot listen for peers on {own}: {e}"))?;
        let auth = if secret.is_some() { "authenticated with --cluster-secret" } else { "not authenticated" };
        log::info!("node {}: peer listener on {own} (peer traffic {auth})", config.node_id);

        let raft_config = raft::Config {
            id: config.node_id,
            election_tick: node::ELECTION_TICKS,
            heartbeat_tick: node::HEARTBEAT_TICKS,
            applied,
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            read_only_option: match config.read_consistency {
                ReadConsistency::Lease => raft::ReadOnlyOption::LeaseBased,
                ReadConsistency::Linearizable | ReadConsistency::Local => raft::ReadOnlyOption::Safe,
            },
            ..Default::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let max_frame = transport::max_frame(config.max_value_bytes, config.max_snapshot_bytes);
        storage.set_max_snapshot_bytes(config.max_snapshot_bytes);
        let incarnation = storage.incarnation().map_err(|e| format!("cannot write the Raft state: {e}"))?;
        let dialer = Dialer {
            secret: secret.clone(),
            hello: Control::Hello { id: config.node_id, incarnation, addr: own.to_string() },
        };
        let raw = RawNode::new(&raft_config, storage, &logger).map_err(|e| format!("raft: {e}"))?;

        let (inbox, events) = crossbeam_channel::unbounded();
        transport::serve(listener, inbox.clone(), max_frame, secret.clone()).map_err(|e| e.to_string())?;
        let mut peers = HashMap::new();
        for &(id, addr) in addrs.iter().filter(|(id, _)| *id != config.node_id) {
            peers.insert(id, dialer.start(id, addr).map_err(|e| e.to_string())?);
        }
        let status = Arc::new(Mutex::new(Status { id: config.node_id, ..Status::default() }));
        let node = Node::new(
            raw,
            config.node_id,
            store,
            peers,
            members,
            events,
            Arc::clone(&status),
            node::Settings {
                fsync: config.fsync,
                max_value_bytes: config.max_value_bytes,
                snapshot_entries: config.snapshot_entries,
                sweep_every: config.sweep_every,
                applied,
                dialer: dialer.clone(),
                inbox: inbox.clone(),
            },
        );
        node.publish_status();
        std::thread::Builder::new()
            .name("raft".into())
            .spawn(move || {
                if let Err(e) = node.run() {
                    log::error!("cannot write the Raft state ({e}): stopping this node");
                    std::process::exit(1);
                }
            })
            .map_err(|e| e.to_string())?;
        if joining {
            let target = config.join.as_deref().unwrap_or_default();
            let target = resolve_peer(0, target, secret.is_some())?;
            let join = Control::Join { id: config.node_id, addr: own.to_string(), incarnation };
            let status = Arc::clone(&status);
            std::thread::Builder::new()
                .name("join".into())
                .spawn(move || ask_to_join(&dialer, target, join, &status))
                .map_err(|e| e.to_string())?;
        }
        Ok(Arc::new(Cluster {
            inbox,
            status,
            timeout: config.timeout,
            read_consistency: config.read_consistency,
        }))
    }

    /// Writes `ops` through the Raft log; returns their outcomes once they are committed and
    /// applied on this node, or `no leader` / not committed after `--cluster-timeout`.
    pub fn write_many(&self, ops: Vec<WriteOp>) -> Vec<Reply> {
        crate::store::with_valid_keys(ops, |ops| self.propose_all(ops))
    }

    fn propose_all(&self, ops: Vec<WriteOp>) -> Vec<Reply> {
        let mut replies = Vec::with_capacity(ops.len());
        let mut ops = ops.into_iter().peekable();
        while ops.peek().is_some() {
            let chunk: Vec<WriteOp> = ops.by_ref().take(MAX_ENTRY_OPS).collect();
            let count = chunk.len();
            let mut answer = self.propose(chunk);
            // An error for the whole batch (no leader, timeout) answers each of its ops.
            if answer.len() != count {
                let error = answer.pop().unwrap_or(Err(StoreError::Closed));
                answer = vec![error; count];
            }
            replies.extend(answer);
        }
        replies
    }

    fn propose(&self, ops: Vec<WriteOp>) -> Vec<Reply> {
        self.ask(|reply, deadline| Event::Propose { ops, reply, deadline }).unwrap_or_else(|e| vec![Err(e)])
    }

    /// Returns once this node may serve a read under `--read-consistency`: at once for
    /// `local`; for `linearizable`, once the leader confirmed its commit index with a
    /// majority and this node has applied up to it (`no leader` after `--cluster-timeout`).
    pub fn read_fence(&self) -> Result<(), StoreError> {
        if self.read_consistency == ReadConsistency::Local {
            return Ok(());
        }
        self.ask(|reply, deadline| Event::Fence { reply, deadline })?
    }

    /// `cluster add/remove`: proposes the change through Raft and returns once it is applied
    /// on this node (or why it was refused, or timed out).
    pub fn change_members(&self, change: Change) -> Result<(), String> {
        self.ask(|reply, deadline| Event::Change { change, reply, deadline }).map_err(|e| e.to_string())?
    }

    /// Sends the raft thread the event `make` builds around a reply slot and the
    /// `--cluster-timeout` deadline, and waits for the answer. The raft thread answers by
    /// the deadline; the margin only guards against it hanging.
    fn ask<T>(&self, make: impl FnOnce(reply::Replier<T>, Instant) -> Event) -> Result<T, StoreError> {
        let (reply, answer) = reply::slot();
        let deadline = Instant::now() + self.timeout;
        self.inbox.send(make(reply, deadline)).map_err(|_| StoreError::Closed)?;
        answer
            .recv_timeout(self.timeout + Duration::from_secs(2))
            .ok_or_else(|| StoreError::Unavailable("the raft thread did not answer".into()))
    }

    /// This node's view of the cluster.
    pub fn status(&self) -> Status {
        self.status.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{StoreConfig, StoreMode, WriteOutcome};

    #[test]
    fn a_committed_batch_is_applied_with_the_logs_time_and_cas_uniques() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("database.txt");
        let store = Store::open(StoreConfig::new(&db)).unwrap();
        let store_op = |key: &str, expires_at, mode| WriteOp::Store {
            key: key.into(),
            value: b"v".to_vec().into(),
            flags: 0,
            expires_at,
            mode,
        };
        let set = |key: &str, expires_at| store_op(key, expires_at, StoreMode::Set);
        // Decided at the entry's time: an expiry after it is stored, one at it is a delete.
        let inputs = Inputs { now: 1_000, first_cas: 7 << node::CAS_SHIFT, max_value_bytes: 10 };
        let outcomes = store.apply_committed(&[set("a", 0), set("b", 1_000)], inputs).unwrap();
        let first = 7 << node::CAS_SHIFT;
        assert_eq!(outcomes, [WriteOutcome::Stored { cas: first }, WriteOutcome::Stored { cas: first + 1 }]);
        assert_eq!(store.get(b"a").map(|item| item.cas), Some(first));
        assert_eq!(store.get(b"b"), None);
        let add = store_op("a", 0, StoreMode::Add);
        assert_eq!(store.apply_committed(&[add], inputs).unwrap(), [WriteOutcome::NotStored]);
        assert!(std::fs::read_to_string(&db).unwrap().contains("set a v"));
        store.shutdown();
        assert_eq!(store.apply_committed(&[set("c", 0)], inputs), Err(StoreError::Closed));
    }

    /// Items expired by this machine's clock stay in a replicated store's memory (a
    /// compaction's sweep leaves them) until the log's sweep entry drops them with its own
    /// time; a single-node store drops them at the compaction.
    #[test]
    fn a_replicated_store_drops_expired_items_only_where_the_log_says() {
        let dir = tempfile::tempdir().unwrap();
        let set = WriteOp::Store {
            key: b"k".to_vec(),
            value: b"v".to_vec().into(),
            flags: 0,
            expires_at: 1_000, // long past by the clock, not by the entry's time
            mode: StoreMode::Set,
        };
        let inputs = Inputs { now: 900, first_cas: 1 << node::CAS_SHIFT, max_value_bytes: 10 };
        for replicated in [true, false] {
            let config =
                StoreConfig { replicated, ..StoreConfig::new(dir.path().join(format!("{replicated}.txt"))) };
            let store = Store::open(config).unwrap();
            store.apply_committed(std::slice::from_ref(&set), inputs).unwrap();
            assert_eq!(store.stats().keys, 1);
            store.compact().unwrap();
            if !replicated {
                assert_eq!(store.stats().keys, 0, "a single node sweeps by its clock");
                continue;
            }
            assert_eq!(store.stats().keys, 1, "a replicated store keeps it for the log to decide");
            store.sweep_expired_at(999);
            assert_eq!(store.stats().keys, 1, "not expired at the sweep entry's time");
            store.sweep_expired_at(1_000);
            assert_eq!(store.stats().keys, 0);
        }
    }

    #[test]
    fn members_parse_and_bad_lists_are_refused() {
        let members = parse_members("2=127.0.0.1:7102, 1=127.0.0.1:7101").unwrap();
        assert_eq!(
            members.into_iter().collect::<Vec<_>>(),
            [(1, "127.0.0.1:7101".to_string()), (2, "127.0.0.1:7102".to_string())]
        );
        assert!(parse_members("").unwrap_err().contains("no member"));
        assert!(parse_members("1=a:1,1=b:2").unwrap_err().contains("twice"));
        assert!(parse_members("0=a:1").unwrap_err().contains("positive"));
        assert!(parse_members("127.0.0.1:7101").unwrap_err().contains("<id>=<host:port>"));
        assert!(resolve_peer(1, "127.0.0.1:7101", false).is_ok());
        assert!(resolve_peer(1, "192.0.2.1:7101", false).unwrap_err().contains("--cluster-secret"));
        assert!(resolve_peer(1, "192.0.2.1:7101", true).is_ok());
    }
}
