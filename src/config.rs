//! `kvserver`'s command line: every flag, its default and its validation.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::cluster::{ClusterConfig, ReadConsistency};
use crate::protocol::Limits;
use crate::server::ServerConfig;
use crate::store::{FsyncPolicy, StoreConfig};

/// A durable key-value server whose database is a plain, human-readable text file.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// The database file: an append-only log of line-protocol commands. Created if missing.
    #[arg(long, default_value = "database.txt")]
    pub db: PathBuf,

    /// Address for the line protocol (nc, telnet, kvclient): `host:port`, the host an IP
    /// address or a name resolved at start (every address it resolves to is served).
    /// Loopback by default; port 0 picks a free port (the log says which).
    #[arg(long, default_value = "127.0.0.1:7878")]
    pub listen: String,

    /// Also serve memcached's ASCII protocol on this address (off unless given), over the same
    /// database and connection cap, so memcached clients and proxies such as twemproxy work
    /// unchanged. Example: 127.0.0.1:11211 or localhost:11211. See README, "memcached protocol".
    #[arg(long, value_name = "ADDR")]
    pub memcached: Option<String>,

    /// When writes are made durable: `always` fsyncs every batch before acknowledging it;
    /// `everysec` acknowledges after write(2) and fsyncs about once a second; `never` leaves
    /// flushing to the OS. See README "Durability".
    #[arg(long, value_enum, default_value_t = FsyncPolicy::Always)]
    pub fsync: FsyncPolicy,

    /// Connections served at once, across all listeners; more are refused with an error.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: u64,

    /// Largest value in bytes (after unescaping, and after append/prepend).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_value_bytes: usize,

    /// Longest request line in bytes; longer lines are refused without being buffered.
    /// Default: 4 × --max-value-bytes + 1024, room for a fully `\xHH`-escaped value.
    #[arg(long)]
    pub max_line_bytes: Option<usize>,

    /// Seconds a connection may stay silent (or leave replies unread) before it is closed;
    /// 0 (the default, as in memcached and Redis) never closes a connection for that.
    #[arg(long, default_value_t = 0)]
    pub idle_timeout: u64,

    /// With --users: seconds a connection has to log in after connecting (TLS handshake
    /// included) before it is closed with "login timed out"; 0 never closes it for that.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub login_timeout: u64,

    /// Seconds a request has, from its first byte, to arrive whole (line and data block),
    /// and a connection to take in a reply it is sent, before the connection is closed
    /// ("request timed out"): a client cannot hold a connection by sending a request a byte
    /// at a time, whatever --idle-timeout is. Raise it for very large values over slow
    /// links; 0 turns it off.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub request_timeout: u64,

    /// Automatic compaction starts only once the file is at least this many bytes…
    #[arg(long, default_value_t = 16 << 20)]
    pub compact_min_bytes: u64,

    /// …and more than this fraction (0–1) of its records are dead.
    #[arg(long, default_value_t = 0.5)]
    pub compact_garbage_ratio: f64,

    /// Disk space kept aside in `<db>.reserve` and released for compaction when the disk is
    /// full, so that compacting can always free space (for a live set up to this size plus
    /// what is free). 0 keeps none. See README "Durability".
    #[arg(long, default_value_t = 16 << 20)]
    pub compact_reserve_bytes: u64,

    /// If the file has a malformed line (other than a torn final line, which is always cut),
    /// copy the file to a backup beside it and truncate it at that line instead of refusing
    /// to start.
    #[arg(long)]
    pub repair: bool,

    /// Users file: one `name:hash:role` line per user (`kvserver hash-password` prints one).
    /// With it every connection must log in, and each user's role (read, write or admin)
    /// limits what they may do. See README "Security".
    #[arg(long, value_name = "FILE")]
    pub users: Option<PathBuf>,

    /// Serve every listener over TLS with this certificate chain (PEM); needs --tls-key.
    /// Reloaded, with the key, on SIGHUP.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Run as member N of a Raft cluster: every write goes through the cluster's log and is
    /// answered once a majority has it. Without it, the single-node server. See README
    /// "Cluster".
    #[arg(long, value_name = "N")]
    pub node_id: Option<u64>,

    /// Every member's peer address for Raft traffic, `1=127.0.0.1:7101,2=127.0.0.1:7102,...`;
    /// this node listens for peers on its own entry. Read on a member's first start only;
    /// later starts use the members saved in `<db>.raft/`.
    #[arg(long, value_name = "ID=ADDR,...", requires = "node_id")]
    pub initial_cluster: Option<String>,

    /// A file holding the secret every member shares (at least 16 bytes, mode 600): peer
    /// connections then prove it and every peer frame carries an HMAC. Required if any peer
    /// address is not loopback. See README "Cluster".
    #[arg(long, value_name = "FILE", requires = "node_id")]
    pub cluster_secret: Option<PathBuf>,

    /// Seconds a write on a cluster node waits for a leader and its commit before it is
    /// answered "no leader" (or as not committed in time).
    #[arg(long, default_value_t = 5, value_name = "SECS")]
    pub cluster_timeout: u64,

    /// What reads on a cluster node see: `linearizable` (every write acknowledged before the
    /// read; the leader confirms with a majority first, through ReadIndex), `lease` (the
    /// same, from the leader's lease instead of a round; relies on bounded clock drift and
    /// pauses) or `local` (this node's own state at once, possibly a moment stale).
    #[arg(long, value_enum, default_value_t = ReadConsistency::Linearizable, value_name = "MODE")]
    pub read_consistency: ReadConsistency,

    /// A cluster node snapshots its state (every item with its CAS unique, in `<db>.raft/`)
    /// after this many log entries since its last snapshot (or as many as it has keys, if
    /// more), then drops from its Raft log the entries before the previous snapshot: the log
    /// stays between one and two times this long, and a member further behind than that is
    /// sent the snapshot.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub snapshot_entries: u64,

    /// The largest snapshot a cluster node sends to a member far behind (or takes from the
    /// leader), in bytes: it travels as one peer message, held in memory on both sides. A
    /// database whose snapshot is larger still replicates, but such a member waits (and the
    /// leader logs why).
    #[arg(long, default_value_t = 1 << 30, value_name = "BYTES")]
    pub max_snapshot_bytes: usize,

    /// Seconds between two sweeps that drop expired items from memory (they are never
    /// served once expired; the sweep frees their memory). On a cluster the leader asks
    /// for each sweep through the log, so every member drops the same items at the same
    /// point of the log.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub expiry_sweep_secs: u64,

    /// A new node's first start: ask the member with this peer address to add this node
    /// (`--node-id` must be an id the cluster never had); it is then sent the cluster's
    /// state. Ignored once the node is a member. Needs --peer-addr.
    #[arg(long, value_name = "ADDR", requires_all = ["node_id", "peer_addr"], conflicts_with = "initial_cluster")]
    pub join: Option<String>,

    /// This node's own peer address (where it listens for Raft traffic), with --join.
    #[arg(long, value_name = "ADDR", requires = "join")]
    pub peer_addr: Option<String>,
}

impl Config {
    /// Checks values clap cannot check on its own.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.compact_garbage_ratio) {
            return Err(format!(
                "--compact-garbage-ratio must be between 0 and 1, not {}",
                self.compact_garbage_ratio
            ));
        }
        if u32::try_from(self.max_value_bytes).is_err() {
            return Err("--max-value-bytes must be below 4 GiB".into());
        }
        if self.max_connections == 0 {
            return Err("--max-connections must be at least 1".into());
        }
        if self.node_id == Some(0) {
            return Err("--node-id must be a positive number".into());
        }
        if self.cluster_timeout == 0 {
            return Err("--cluster-timeout must be at least 1 second".into());
        }
        if self.max_snapshot_bytes > u32::MAX as usize - (1 << 20) {
            return Err(
                "--max-snapshot-bytes must be below 4 GiB (a peer message's length is 32 bits)".into()
            );
        }
        if self.expiry_sweep_secs == 0 {
            return Err("--expiry-sweep-secs must be at least 1".into());
        }
        if self.snapshot_entries == 0 {
            return Err("--snapshot-entries must be at least 1".into());
        }
        if self.max_line_bytes() < 300 {
            return Err("--max-line-bytes must be at least 300 (a command and a 250-byte key)".into());
        }
        Ok(())
    }

    pub fn max_line_bytes(&self) -> usize {
        self.max_line_bytes.unwrap_or(self.max_value_bytes.saturating_mul(4).saturating_add(1024))
    }

    pub fn store(&self) -> StoreConfig {
        StoreConfig {
            path: self.db.clone(),
            // On a cluster node the Raft log (`<db>.raft/`, synced under --fsync) is the
            // durable record and the store is rebuilt from it at start, so database.txt is
            // written without syncs of its own.
            fsync: if self.node_id.is_some() { FsyncPolicy::Never } else { self.fsync },
            max_value_bytes: self.max_value_bytes,
            compact_min_bytes: self.compact_min_bytes,
            compact_garbage_ratio: self.compact_garbage_ratio,
            repair: self.repair,
            compact_reserve_bytes: self.compact_reserve_bytes,
            replicated: self.node_id.is_some(),
            sweep_every: Duration::from_secs(self.expiry_sweep_secs),
        }
    }

    /// The cluster settings, with `--node-id` only.
    pub fn cluster(&self) -> Option<ClusterConfig> {
        Some(ClusterConfig {
            node_id: self.node_id?,
            initial_cluster: self.initial_cluster.clone(),
            timeout: Duration::from_secs(self.cluster_timeout),
            db: self.db.clone(),
            fsync: self.fsync,
            max_value_bytes: self.max_value_bytes,
            read_consistency: self.read_consistency,
            secret: self.cluster_secret.clone(),
            snapshot_entries: self.snapshot_entries,
            max_snapshot_bytes: self.max_snapshot_bytes,
            sweep_every: Duration::from_secs(self.expiry_sweep_secs),

            join: self.join.clone(),
            peer_addr: self.peer_addr.clone(),
        })
    }

    pub fn limits(&self) -> Limits {
        Limits { max_value_bytes: self.max_value_bytes, max_line_bytes: self.max_line_bytes() }
    }

    pub fn server(&self) -> ServerConfig {
        ServerConfig {
            max_connections: self.max_connections,
            idle_timeout: seconds(self.idle_timeout),
            login_timeout: seconds(self.login_timeout),
            request_timeout: seconds(self.request_timeout),
        }
    }
}

/// A timeout flag's value: whole seconds, 0 meaning none.
fn seconds(secs: u64) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_secs(secs))
}
