//! memcached's administration commands: the `stats` groups, `stats cachedump`,
//! `lru_crawler metadump`, `cache_memlimit` and the meta debug command `me`.
//!
//! textkv has no slab allocator and no LRU, so it answers in memcached's shape with its own
//! facts: every item is in slab class 1 (one class holds every size up to
//! `--max-value-bytes`; a "chunk" is an item), nothing is ever evicted (those counters are
//! truly 0), and an item's `size` is its key plus value bytes. textkv keeps no access times:
//! `la` is 0 and `fetch` is `no`. Per group:
//!
//! - `stats settings`: the settings textkv has (`item_size_max`, authentication, `evictions
//!   off`, …); `maxbytes 0` as `limit_maxbytes` (no memory cap). The listener's port,
//!   `maxconns` and `idle_timeout` are not known to a session and are left out.
//! - `stats items`, `stats slabs`: class 1 with the real item count and bytes; the hit
//!   counters of `stats slabs` are the server's (all items are in that class).
//! - `stats sizes`: `sizes_status disabled`, as memcached by default.
//! - `stats conns`: the open memcached connections with their peer and seconds since their
//!   last request; the asking one is `conn_parse_cmd`, the others `conn_waiting`.
//! - `stats reset`: zeroes the per-command counters (`cmd_*`, `*_hits`, `*_misses`…).
//! - `stats cachedump <class> <limit>`: `ITEM <key> [<bytes> b; <expiry> s]` for class 1
//!   (0 = every item; memcached stops at 2 MB of reply, textkv streams them all), just
//!   `END` for the other classes 0..63.
//! - `lru_crawler metadump all|hash|<classes>`: `key=<uri-encoded key> exp=<Unix time or -1>
//!   la=0 cas=<cas> fetch=no cls=1 size=<bytes>`. memcached refuses it after other
//!   pipelined commands; textkv does not need to. Other `lru_crawler` subcommands are
//!   `ERROR` (textkv drops expired items by itself every 60 s).
//! - `cache_memlimit <MB>`: checked as memcached does, answered `OK`, and has no effect:
//!   textkv never evicts (a database's memory is its data set).
//! - `me <key>`: `ME <key> exp=<seconds left or -1> la=0 cas=<cas> fetch=no cls=1
//!   size=<bytes>`, or `EN`.
//!
//! Listings (`cachedump`, `metadump`) are answered an index shard at a time, stopping once
//! the replies pass [`FLUSH_THRESHOLD`] and going on when the connection has written them
//! ([`Session::has_more`]), so a listing of millions of keys holds about one shard's lines
//! (1/256 of them), never the whole reply.
//!
//! [`FLUSH_THRESHOLD`]: crate::protocol::FLUSH_THRESHOLD
//! [`Session::has_more`]: crate::protocol::Session::has_more

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::request::{remaining_ttl, StatsGroup};
use super::Executor;
use crate::protocol::{push_decimal, FLUSH_THRESHOLD};
use crate::stats::ServerStats;
use crate::store::index::SHARDS;
use crate::store::{unix_now, ItemRef};

/// The slab class every item is reported in.
const ITEM_CLASS: u32 = 1;

/// Which listing a [`Dump`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpFormat {
    /// `stats cachedump`: `ITEM <key> [<bytes> b; <expiry> s]`.
    CacheDump,
    /// `lru_crawler metadump`: `key=… exp=… la=… cas=… fetch=no cls=1 size=…`.
    MetaDump,
}

/// A listing of every item in progress, resumed shard by shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dump {
    format: DumpFormat,
    next_shard: usize,
    /// Items still to list (`stats cachedump`'s limit); None = all.
    left: Option<u64>,
}

impl Dump {
    /// A listing of the items of slab class `class` (only class 1 has any), at most `limit`
    /// (0 = all).
    pub fn new(format: DumpFormat, class: u32, limit: u64) -> Dump {
        let next_shard = if class == ITEM_CLASS { 0 } else { SHARDS };
        Dump { format, next_shard, left: (limit > 0).then_some(limit) }
    }

    /// Lists items until `out` passes [`FLUSH_THRESHOLD`] or the listing ends (with `END`).
    /// Returns whether it ended.
    pub fn resume(&mut self, executor: &Executor, out: &mut Vec<u8>) -> bool {
        while self.next_shard < SHARDS && self.left != Some(0) && out.len() < FLUSH_THRESHOLD {
            executor.ctx.store.for_each_in_shard(self.next_shard, |key, item| {
                if self.left == Some(0) {
                    return;
                }
                if let Some(left) = &mut self.left {
                    *left -= 1;
                }
                match self.format {
                    DumpFormat::CacheDump => cachedump_line(key, item, out),
                    DumpFormat::MetaDump => metadump_line(key, item, out),
                }
            });
            self.next_shard += 1;
        }
        if self.next_shard < SHARDS && self.left != Some(0) {
            return false;
        }
        out.extend_from_slice(b"END\r\n");
        true
    }
}

/// `ITEM <key> [<bytes> b; <expiry as a Unix time, 0 = never> s]`.
fn cachedump_line(key: &[u8], item: ItemRef<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"ITEM ");
    out.extend_from_slice(key);
    out.extend_from_slice(b" [");
    push_decimal(item.value.len() as u64, out);
    out.extend_from_slice(b" b; ");
    push_decimal(item.expires_at, out);
    out.extend_from_slice(b" s]\r\n");
}

/// `key=<uri-encoded> exp=<Unix time, -1 = never> la=0 cas=<cas> fetch=no cls=1 size=<n>`.
fn metadump_line(key: &[u8], item: ItemRef<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"key=");
    uri_encode(key, out);
    out.extend_from_slice(b" exp=");
    if item.expires_at == 0 {
        out.extend_from_slice(b"-1");
    } else {
        push_decimal(item.expires_at, out);
    }
    out.extend_from_slice(b" la=0 cas=");
    push_decimal(item.cas, out);
    out.extend_from_slice(b" fetch=no cls=1 size=");
    push_decimal((key.len() + item.value.len()) as u64, out);
    out.extend_from_slice(b"\r\n");
}

/// memcached's key encoding in metadump: RFC 3986 unreserved bytes as they are, every other
/// byte as `%XX`.
fn uri_encode(key: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in key {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

/// The open memcached connections, for `stats conns`.
#[derive(Default)]
struct Registry {
    next_id: AtomicU64,
    open: Mutex<BTreeMap<u64, Arc<ConnectionInfo>>>,
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

struct ConnectionInfo {
    peer: Option<SocketAddr>,
    /// Unix seconds of the last request.
    last_request: AtomicU64,
}

/// A connection's entry in `stats conns`, removed when the session ends.
pub struct Registration {
    id: u64,
    info: Arc<ConnectionInfo>,
}

impl Registration {
    pub fn new(peer: Option<SocketAddr>) -> Registration {
        let registry = registry();
        let id = registry.next_id.fetch_add(1, Ordering::Relaxed);
        let info = Arc::new(ConnectionInfo { peer, last_request: AtomicU64::new(unix_now()) });
        registry.open.lock().unwrap_or_else(|e| e.into_inner()).insert(id, Arc::clone(&info));
        Registration { id, info }
    }

    /// Notes that the connection sent a request now.
    pub fn active(&self) {
        self.info.last_request.store(unix_now(), Ordering::Relaxed);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        registry().open.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
    }
}

/// Appends `STAT <name> <value>\r\n` lines, then `END`.
struct StatLines<'a> {
    out: &'a mut Vec<u8>,
}

impl StatLines<'_> {
    fn stat(&mut self, name: impl fmt::Display, value: impl fmt::Display) {
        use std::io::Write as _;
        let _ = write!(self.out, "STAT {name} {value}\r\n");
    }

    fn end(self) {
        self.out.extend_from_slice(b"END\r\n");
    }
}

impl Executor<'_> {
    /// Answers `stats <group>` (other than `cachedump`, which is a [`Dump`]).
    pub(super) fn stats_group(&self, group: StatsGroup, asking: &Registration, out: &mut Vec<u8>) {
        let mut lines = StatLines { out };
        match group {
            StatsGroup::Settings => self.settings(&mut lines),
            StatsGroup::Items => self.items(&mut lines),
            StatsGroup::Slabs => self.slabs(&mut lines),
            StatsGroup::Sizes => lines.stat("sizes_status", "disabled"),
            StatsGroup::Conns => conns(asking.id, &mut lines),
            StatsGroup::Reset => {
                self.ctx.stats.cache.reset();
                lines.out.extend_from_slice(b"RESET\r\n");
                return;
            }
            StatsGroup::CacheDump { .. } => unreachable!("cachedump is a Dump"),
        }
        lines.end();
    }

    fn settings(&self, lines: &mut StatLines) {
        let auth = if self.ctx.users.is_some() { "yes" } else { "no" };
        lines.stat("maxbytes", 0);
        lines.stat("verbosity", 0);
        lines.stat("evictions", "off");
        lines.stat("cas_enabled", "yes");
        lines.stat("binding_protocol", "auto-negotiate");
        lines.stat("auth_enabled_sasl", auth);
        lines.stat("auth_enabled_ascii", auth);
        lines.stat("item_size_max", self.ctx.limits.max_value_bytes);
        lines.stat("detail_enabled", "no");
        lines.stat("flush_enabled", "yes");
        lines.stat("dump_enabled", "yes");
        lines.stat("lru_crawler", "no");
        lines.stat("track_sizes", "no");
    }

    fn items(&self, lines: &mut StatLines) {
        let (items, bytes) = self.ctx.store.usage();
        if items == 0 {
            return;
        }
        let c = ITEM_CLASS;
        lines.stat(format_args!("items:{c}:number"), items);
        for name in ["number_hot", "number_warm"] {
            lines.stat(format_args!("items:{c}:{name}"), 0);
        }
        lines.stat(format_args!("items:{c}:number_cold"), items);
        for name in ["age_hot", "age_warm", "age"] {
            lines.stat(format_args!("items:{c}:{name}"), 0);
        }
        lines.stat(format_args!("items:{c}:mem_requested"), bytes);
        for name in [
            "evicted",
            "evicted_nonzero",
            "evicted_time",
            "outofmemory",
            "tailrepairs",
            "reclaimed",
            "expired_unfetched",
            "evicted_unfetched",
            "evicted_active",
            "crawler_reclaimed",
            "crawler_items_checked",
            "lrutail_reflocked",
            "moves_to_cold",
            "moves_to_warm",
            "moves_within_lru",
            "direct_reclaims",
            "hits_to_hot",
            "hits_to_warm",
            "hits_to_cold",
            "hits_to_temp",
        ] {
            lines.stat(format_args!("items:{c}:{name}"), 0);
        }
    }

    fn slabs(&self, lines: &mut StatLines) {
        let (items, bytes) = self.ctx.store.usage();
        let c = ITEM_CLASS;
        if items > 0 {
            let counters = &self.ctx.stats.cache;
            lines.stat(format_args!("{c}:chunk_size"), self.ctx.limits.max_value_bytes);
            lines.stat(format_args!("{c}:chunks_per_page"), 1);
            for name in ["total_pages", "total_chunks", "used_chunks"] {
                lines.stat(format_args!("{c}:{name}"), items);
            }
            lines.stat(format_args!("{c}:free_chunks"), 0);
            lines.stat(format_args!("{c}:free_chunks_end"), 0);
            for (name, counter) in [
                ("get_hits", &counters.get_hits),
                ("cmd_set", &counters.cmd_set),
                ("delete_hits", &counters.delete_hits),
                ("incr_hits", &counters.incr_hits),
                ("decr_hits", &counters.decr_hits),
                ("cas_hits", &counters.cas_hits),
                ("cas_badval", &counters.cas_badval),
                ("touch_hits", &counters.touch_hits),
            ] {
                lines.stat(format_args!("{c}:{name}"), ServerStats::read(counter));
            }
        }
        lines.stat("active_slabs", u64::from(items > 0));
        lines.stat("total_malloced", bytes);
    }

    /// `me <key>`.
    pub(super) fn meta_debug(&self, key: &[u8], out: &mut Vec<u8>) {
        let now = unix_now();
        self.ctx.store.with_item(key, |item| match item {
            None => out.extend_from_slice(b"EN\r\n"),
            Some(item) => {
                out.extend_from_slice(b"ME ");
                out.extend_from_slice(key);
                out.extend_from_slice(format!(" exp={}", remaining_ttl(item.expires_at, now)).as_bytes());
                out.extend_from_slice(b" la=0 cas=");
                push_decimal(item.cas, out);
                out.extend_from_slice(b" fetch=no cls=1 size=");
                push_decimal((key.len() + item.value.len()) as u64, out);
                out.extend_from_slice(b"\r\n");
            }
        })
    }
}

fn conns(asking: u64, lines: &mut StatLines) {
    let now = unix_now();
    let open = registry().open.lock().unwrap_or_else(|e| e.into_inner());
    for (id, info) in open.iter() {
        if let Some(peer) = info.peer {
            lines.stat(format_args!("{id}:addr"), format_args!("tcp:{peer}"));
        }
        lines.stat(format_args!("{id}:state"), if *id == asking { "conn_parse_cmd" } else { "conn_waiting" });
        let idle = now.saturating_sub(info.last_request.load(Ordering::Relaxed));
        lines.stat(format_args!("{id}:secs_since_last_cmd"), idle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_uri_encoded_as_memcached_does() {
        // memcached 1.6.18's metadump of the key `a%b:c/d~e`: key=a%25b%3Ac%2Fd~e
        let mut out = Vec::new();
        uri_encode(b"a%b:c/d~e", &mut out);
        assert_eq!(out, b"a%25b%3Ac%2Fd~e");
        out.clear();
        uri_encode(&[0xff, b'Z', b'-', b'_', b'.'], &mut out);
        assert_eq!(out, b"%FFZ-_.");
    }

    #[test]
    fn listing_lines_have_memcacheds_shape() {
        let item = ItemRef { value: b"0123456789", flags: 0, expires_at: 1796118857, cas: 2 };
        let mut out = Vec::new();
        cachedump_line(b"baz", item, &mut out);
        metadump_line(b"baz", ItemRef { expires_at: 0, ..item }, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "ITEM baz [10 b; 1796118857 s]\r\nkey=baz exp=-1 la=0 cas=2 fetch=no cls=1 size=13\r\n"
        );
    }
}
