//! One memcached request line → a [`Request`], or the exact error memcached would answer.
//!
//! Tokens are separated by one or more spaces (a trailing space, as twemproxy sends, is
//! fine); command names are lower case only, as in memcached. Token counts decide between
//! `ERROR` (memcached does not know the command in that shape) and `CLIENT_ERROR …` (it does,
//! but an argument is wrong), following memcached 1.6's `proto_text.c`.

use super::meta::{MetaFlags, MetaKind};
use crate::auth::Role;
use crate::store::format;
use crate::store::StoreMode;

/// memcached's threshold between relative and absolute expiry times: 30 days in seconds.
pub const MAX_RELATIVE_EXPTIME: i64 = 60 * 60 * 24 * 30;

pub const BAD_FORMAT: &str = "CLIENT_ERROR bad command line format";
pub const BAD_EXPTIME: &str = "CLIENT_ERROR invalid exptime argument";
pub const BAD_DELTA: &str = "CLIENT_ERROR invalid numeric delta argument";
const DELETE_USAGE: &str = "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]";

/// The classic storage commands; each has a data block after its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Set,
    Add,
    Replace,
    Append,
    Prepend,
    Cas,
}

impl StoreKind {
    pub fn mode(self, cas: u64) -> StoreMode {
        match self {
            StoreKind::Set => StoreMode::Set,
            StoreKind::Add => StoreMode::Add,
            StoreKind::Replace => StoreMode::Replace,
            StoreKind::Append => StoreMode::Append,
            StoreKind::Prepend => StoreMode::Prepend,
            StoreKind::Cas => StoreMode::Cas(cas),
        }
    }
}

/// The keys of a retrieval command, already validated; they are read from the line itself
/// when the reply is built, so a 10,000-key `get` copies no key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keys<'a>(&'a [u8]);

impl<'a> Keys<'a> {
    #[cfg(test)]
    pub fn iter(self) -> impl Iterator<Item = &'a [u8]> {
        tokens(self.0)
    }

    /// The key list as it stands in the request line.
    pub fn as_bytes(self) -> &'a [u8] {
        self.0
    }
}

/// One parsed request line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// A storage command; its data block of `bytes` bytes plus `\r\n` follows the line.
    Store {
        kind: StoreKind,
        key: &'a [u8],
        flags: u32,
        exptime: i64,
        bytes: usize,
        cas: u64,
        noreply: bool,
    },
    /// `get`/`gets` (`touch: None`) and `gat`/`gats` (`touch: Some(exptime)`).
    Get {
        keys: Keys<'a>,
        with_cas: bool,
        touch: Option<i64>,
    },
    Delete {
        key: &'a [u8],
        noreply: bool,
    },
    Arith {
        key: &'a [u8],
        delta: u64,
        incr: bool,
        noreply: bool,
    },
    Touch {
        key: &'a [u8],
        exptime: i64,
        noreply: bool,
    },
    FlushAll {
        delay: i64,
        noreply: bool,
    },
    Stats,
    /// `stats <group> …` (arguments after a group that takes none are ignored, as memcached).
    StatsGroup(StatsGroup),
    /// `lru_crawler metadump <all|hash|classes>`; `items` says whether the classes include
    /// class 1, the one class every textkv item is in.
    MetaDump {
        items: bool,
    },
    /// `cache_memlimit <megabytes> [noreply]` (at least 8, as memcached requires).
    CacheMemlimit {
        noreply: bool,
    },
    /// The meta debug command `me <key>`.
    MetaDebug {
        key: &'a [u8],
    },
    Version,
    Verbosity {
        noreply: bool,
    },
    Quit,
    MetaNoop,
    /// `mg`, `md`, `ma`, and `ms` (whose data block of `bytes` bytes follows the line).
    Meta {
        kind: MetaKind,
        key: &'a [u8],
        bytes: usize,
        flags: MetaFlags,
    },
}

impl Request<'_> {
    /// Whether the client asked for no reply at all (the `noreply` token).
    pub fn noreply(&self) -> bool {
        match self {
            Request::Store { noreply, .. }
            | Request::Delete { noreply, .. }
            | Request::Arith { noreply, .. }
            | Request::Touch { noreply, .. }
            | Request::FlushAll { noreply, .. }
            | Request::CacheMemlimit { noreply }
            | Request::Verbosity { noreply } => *noreply,
            _ => false,
        }
    }

    /// Whether the request is one store write whose reply can wait: pipelined ones are
    /// submitted together and share a batch and an fsync (group commit). `gat`/`gats` keys
    /// join too, one write per key; `mg` does not (its writes, for `T`/`N`, are rare).
    pub fn joins_group_commit(&self) -> bool {
        match self {
            Request::Store { .. }
            | Request::Delete { .. }
            | Request::Arith { .. }
            | Request::Touch { .. } => true,
            Request::Meta { kind, .. } => *kind != MetaKind::Get,
            _ => false,
        }
    }

    /// The least role that may run this request (`--users`). Reads that change an item's
    /// expiry (`gat`, `mg T…`) or create it (`mg N…`) are writes.
    #[inline]
    pub fn role(&self) -> Role {
        match self {
            Request::Get { touch: None, .. }
            | Request::Stats
            | Request::Version
            | Request::Quit
            | Request::MetaNoop => Role::Read,
            Request::Meta { kind: MetaKind::Get, flags, .. }
                if flags.ttl.is_none() && flags.vivify.is_none() =>
            {
                Role::Read
            }
            Request::StatsGroup(StatsGroup::Reset) | Request::CacheMemlimit { .. } => Role::Admin,
            Request::StatsGroup(_) | Request::MetaDump { .. } | Request::MetaDebug { .. } => Role::Read,
            Request::FlushAll { .. } | Request::Verbosity { .. } => Role::Admin,
            _ => Role::Write,
        }
    }
}

/// The `stats` groups textkv answers (see the `admin` module for what each holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsGroup {
    Settings,
    Items,
    Slabs,
    Sizes,
    Conns,
    Reset,
    /// `stats cachedump <class> <limit>`: `limit` items of the class at most, 0 = all.
    CacheDump {
        class: u32,
        limit: u64,
    },
}

/// memcached's slab class ids are 0..64; `stats cachedump` accepts 0, `metadump` does not.
pub const SLAB_CLASSES: u32 = 64;

/// What to do with a line that is not a valid request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// Reply `error` (unless `noreply`), then drop `swallow` more bytes: the data block of a
    /// storage command whose line was wrong but whose length was readable, so that a
    /// pipeline stays in step.
    Reply { error: &'static str, noreply: bool, swallow: Option<usize> },
    /// Close the connection without a reply (an HTTP request sent to the wrong port).
    Close,
}

impl Invalid {
    pub fn error(error: &'static str) -> Invalid {
        Invalid::Reply { error, noreply: false, swallow: None }
    }
}

/// Space-separated tokens; runs of spaces count as one separator.
pub fn tokens(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|&b| b == b' ').filter(|t| !t.is_empty())
}

/// memcached's key rule plus textkv's: 1–250 bytes, no control characters or spaces.
pub fn valid_key(key: &[u8]) -> bool {
    format::validate_key(key).is_ok()
}

/// An unsigned decimal (`safe_strtoul`/`safe_strtoull`): digits only, no overflow.
pub fn parse_unsigned<T: std::str::FromStr>(token: &[u8]) -> Option<T> {
    format::parse_number(token)
}

/// A signed decimal (`safe_strtol`), as memcached reads exptime.
pub fn parse_signed(token: &[u8]) -> Option<i64> {
    match token.strip_prefix(b"-") {
        Some(digits) => parse_unsigned::<i64>(digits).map(|n| -n),
        None => parse_unsigned(token),
    }
}

/// memcached's exptime → textkv's absolute `expires_at` (Unix seconds, 0 = never): 0 never,
/// up to 30 days relative to `now`, above that a Unix time; negative means already expired
/// (1, a second long past).
pub fn expires_at(exptime: i64, now: u64) -> u64 {
    match exptime {
        0 => 0,
        e if e < 0 => 1,
        e if e <= MAX_RELATIVE_EXPTIME => now + e as u64,
        e => e as u64,
    }
}

/// The remaining TTL memcached's meta `t` flag reports: -1 for never.
pub fn remaining_ttl(expires_at: u64, now: u64) -> i64 {
    if expires_at == 0 {
        -1
    } else {
        expires_at.saturating_sub(now) as i64
    }
}

/// Parses one line, without its `\r\n` / `\n`.
pub fn parse(line: &[u8]) -> Result<Request<'_>, Invalid> {
    let mut all = tokens(line);
    let Some(command) = all.next() else { return Err(Invalid::error("ERROR")) };
    let args: Vec<&[u8]> = all.collect();
    let rest = line_after_command(line, command);
    let noreply = args.last() == Some(&&b"noreply"[..]);
    let request = match command {
        b"set" => parse_store(StoreKind::Set, &args)?,
        b"add" => parse_store(StoreKind::Add, &args)?,
        b"replace" => parse_store(StoreKind::Replace, &args)?,
        b"append" => parse_store(StoreKind::Append, &args)?,
        b"prepend" => parse_store(StoreKind::Prepend, &args)?,
        b"cas" => parse_store(StoreKind::Cas, &args)?,
        b"get" | b"gets" if !args.is_empty() => {
            Request::Get { keys: retrieval_keys(rest, &args)?, with_cas: command == b"gets", touch: None }
        }
        b"gat" | b"gats" if !args.is_empty() => {
            let exptime = parse_signed(args[0]).ok_or(Invalid::error(BAD_EXPTIME))?;
            let keys_start = line_after_command(rest, args[0]);
            Request::Get {
                keys: retrieval_keys(keys_start, &args[1..])?,
                with_cas: command == b"gats",
                touch: Some(exptime),
            }
        }
        b"delete" if (1..=3).contains(&args.len()) => parse_delete(&args, noreply)?,
        b"incr" | b"decr" if (2..=3).contains(&args.len()) => {
            let key = checked_key(args[0], noreply)?;
            let delta =
                parse_unsigned(args[1]).ok_or(Invalid::Reply { error: BAD_DELTA, noreply, swallow: None })?;
            Request::Arith { key, delta, incr: command == b"incr", noreply }
        }
        b"touch" if (2..=3).contains(&args.len()) => {
            let key = checked_key(args[0], noreply)?;
            let exptime =
                parse_signed(args[1]).ok_or(Invalid::Reply { error: BAD_EXPTIME, noreply, swallow: None })?;
            Request::Touch { key, exptime, noreply }
        }
        b"flush_all" if args.len() <= 2 => {
            let delay = match args.first() {
                Some(&t) if t != b"noreply" => {
                    parse_signed(t).ok_or(Invalid::Reply { error: BAD_EXPTIME, noreply, swallow: None })?
                }
                _ => 0,
            };
            Request::FlushAll { delay, noreply }
        }
        b"stats" if args.is_empty() => Request::Stats,
        b"stats" => Request::StatsGroup(parse_stats_group(&args)?),
        b"lru_crawler" => match args[..] {
            [b"metadump", classes] => Request::MetaDump { items: parse_dump_classes(classes)? },
            _ => return Err(Invalid::error("ERROR")),
        },
        b"cache_memlimit" if (1..=2).contains(&args.len()) => match parse_unsigned::<u32>(args[0]) {
            Some(megabytes) if megabytes >= 8 => Request::CacheMemlimit { noreply },
            Some(_) => {
                return Err(Invalid::Reply {
                    error: "MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m",
                    noreply,
                    swallow: None,
                })
            }
            None => return Err(Invalid::error("ERROR")),
        },
        b"me" => match args[..] {
            [key] if valid_key(key) => Request::MetaDebug { key },
            _ => return Err(Invalid::error(BAD_FORMAT)),
        },
        b"version" => Request::Version,
        b"verbosity" if (1..=2).contains(&args.len()) => {
            if parse_unsigned::<u32>(args[0]).is_none() {
                return Err(Invalid::Reply { error: BAD_FORMAT, noreply, swallow: None });
            }
            Request::Verbosity { noreply }
        }
        b"quit" if args.is_empty() => Request::Quit,
        b"mn" => Request::MetaNoop,
        b"mg" | b"md" | b"ma" if !args.is_empty() => {
            let kind = match command {
                b"mg" => MetaKind::Get,
                b"md" => MetaKind::Delete,
                _ => MetaKind::Arith,
            };
            parse_meta(kind, &args, 0)?
        }
        b"ms" if !args.is_empty() => {
            let bytes = match args.get(1).and_then(|t| parse_unsigned::<usize>(t)) {
                Some(bytes) if bytes <= i32::MAX as usize => bytes,
                _ => return Err(Invalid::error(BAD_FORMAT)),
            };
            parse_meta(MetaKind::Set, &args, bytes).map_err(|invalid| match invalid {
                Invalid::Reply { error, noreply, swallow: None } => {
                    Invalid::Reply { error, noreply, swallow: Some(bytes) }
                }
                other => other,
            })?
        }
        _ => {
            // memcached drops a connection that sends an HTTP request line.
            if args.last().is_some_and(|t| t.starts_with(b"HTTP/")) {
                return Err(Invalid::Close);
            }
            return Err(Invalid::error("ERROR"));
        }
    };
    Ok(request)
}

/// `stats <group> …`, with memcached's error for each wrong form.
pub fn parse_stats_group(args: &[&[u8]]) -> Result<StatsGroup, Invalid> {
    Ok(match args[0] {
        b"settings" => StatsGroup::Settings,
        b"items" => StatsGroup::Items,
        b"slabs" => StatsGroup::Slabs,
        b"sizes" => StatsGroup::Sizes,
        b"conns" => StatsGroup::Conns,
        b"reset" => StatsGroup::Reset,
        b"cachedump" if args.len() < 3 => return Err(Invalid::error("CLIENT_ERROR bad command line")),
        b"cachedump" => {
            let (Some(class), Some(limit)) = (parse_unsigned::<u32>(args[1]), parse_unsigned::<u64>(args[2]))
            else {
                return Err(Invalid::error(BAD_FORMAT));
            };
            if class >= SLAB_CLASSES {
                return Err(Invalid::error("CLIENT_ERROR Illegal slab id"));
            }
            StatsGroup::CacheDump { class, limit }
        }
        // textkv keeps no per-prefix statistics: every form gets memcached's usage error.
        b"detail" => return Err(Invalid::error("CLIENT_ERROR usage: stats detail on|off|dump")),
        _ => return Err(Invalid::error("ERROR")),
    })
}

/// The class list of `lru_crawler metadump`: `all`, `hash`, or comma-separated ids 1..63.
/// Returns whether it includes class 1.
fn parse_dump_classes(classes: &[u8]) -> Result<bool, Invalid> {
    if classes == b"all" || classes == b"hash" {
        return Ok(true);
    }
    let mut items = false;
    for id in classes.split(|&b| b == b',') {
        match parse_unsigned::<u32>(id) {
            Some(id) if (1..SLAB_CLASSES).contains(&id) => items |= id == 1,
            _ => return Err(Invalid::error("BADCLASS invalid class id")),
        }
    }
    Ok(items)
}

/// The part of `line` after the first occurrence of `token` (a sub-slice of it).
fn line_after_command<'a>(line: &'a [u8], token: &[u8]) -> &'a [u8] {
    let start = token.as_ptr() as usize - line.as_ptr() as usize + token.len();
    &line[start..]
}

fn checked_key(key: &[u8], noreply: bool) -> Result<&[u8], Invalid> {
    if valid_key(key) {
        Ok(key)
    } else {
        Err(Invalid::Reply { error: BAD_FORMAT, noreply, swallow: None })
    }
}

fn retrieval_keys<'a>(rest: &'a [u8], keys: &[&[u8]]) -> Result<Keys<'a>, Invalid> {
    if keys.iter().all(|k| valid_key(k)) {
        Ok(Keys(rest))
    } else {
        Err(Invalid::error(BAD_FORMAT))
    }
}

/// `<cmd> <key> <flags> <exptime> <bytes> [noreply]`, `cas` with `<cas unique>` before
/// `[noreply]`. A wrong token count is `ERROR`; a wrong value is `CLIENT_ERROR`, and if
/// `<bytes>` was readable the data block is swallowed.
fn parse_store<'a>(kind: StoreKind, args: &[&'a [u8]]) -> Result<Request<'a>, Invalid> {
    let fixed = if kind == StoreKind::Cas { 5 } else { 4 };
    if args.len() != fixed && args.len() != fixed + 1 {
        return Err(Invalid::error("ERROR"));
    }
    let noreply = args.len() == fixed + 1 && args[fixed] == b"noreply";
    let bytes = parse_unsigned::<usize>(args[3]).filter(|&b| b <= i32::MAX as usize);
    let fail = Invalid::Reply { error: BAD_FORMAT, noreply, swallow: bytes };
    let Some(bytes) = bytes else { return Err(fail) };
    let (Some(flags), Some(exptime)) = (parse_unsigned::<u32>(args[1]), parse_signed(args[2])) else {
        return Err(fail);
    };
    let cas = if kind == StoreKind::Cas { parse_unsigned::<u64>(args[4]).ok_or(fail.clone())? } else { 0 };
    if !valid_key(args[0]) {
        return Err(fail);
    }
    Ok(Request::Store { kind, key: args[0], flags, exptime, bytes, cas, noreply })
}

/// `delete <key> [0] [noreply]`: the legacy hold time is accepted only as `0`.
fn parse_delete<'a>(args: &[&'a [u8]], noreply: bool) -> Result<Request<'a>, Invalid> {
    let valid = match args {
        [_] => true,
        [_, extra] => *extra == b"0" || noreply,
        [_, hold, _] => *hold == b"0" && noreply,
        _ => false,
    };
    if !valid {
        return Err(Invalid::Reply { error: DELETE_USAGE, noreply, swallow: None });
    }
    Ok(Request::Delete { key: checked_key(args[0], noreply)?, noreply })
}

fn parse_meta<'a>(kind: MetaKind, args: &[&'a [u8]], bytes: usize) -> Result<Request<'a>, Invalid> {
    let key = args[0];
    if !valid_key(key) {
        return Err(Invalid::error(BAD_FORMAT));
    }
    let flag_tokens = if kind == MetaKind::Set { &args[2..] } else { &args[1..] };
    let flags = MetaFlags::parse(kind, flag_tokens).map_err(Invalid::error)?;
    Ok(Request::Meta { kind, key, bytes, flags })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply_error(line: &[u8]) -> (&'static str, bool, Option<usize>) {
        match parse(line) {
            Err(Invalid::Reply { error, noreply, swallow }) => (error, noreply, swallow),
            other => panic!("expected an error for {:?}, got {other:?}", String::from_utf8_lossy(line)),
        }
    }

    #[test]
    fn storage_lines() {
        assert_eq!(
            parse(b"set k 5 100 3"),
            Ok(Request::Store {
                kind: StoreKind::Set,
                key: b"k",
                flags: 5,
                exptime: 100,
                bytes: 3,
                cas: 0,
                noreply: false
            })
        );
        assert_eq!(
            parse(b"cas  k 0 -1 0 77 noreply "),
            Ok(Request::Store {
                kind: StoreKind::Cas,
                key: b"k",
                flags: 0,
                exptime: -1,
                bytes: 0,
                cas: 77,
                noreply: true
            })
        );
        // A sixth token that is not `noreply` is ignored, as memcached does.
        assert!(matches!(parse(b"set k 0 0 1 bogus"), Ok(Request::Store { noreply: false, .. })));
    }

    #[test]
    fn storage_errors_swallow_the_block_when_its_length_is_known() {
        assert_eq!(reply_error(b"set k 0 0"), ("ERROR", false, None));
        assert_eq!(reply_error(b"set k x 0 5"), (BAD_FORMAT, false, Some(5)));
        assert_eq!(reply_error(b"set k 4294967296 0 5"), (BAD_FORMAT, false, Some(5)));
        assert_eq!(reply_error(b"set k 0 0 -1"), (BAD_FORMAT, false, None));
        assert_eq!(reply_error(b"set k x 0 5 noreply"), (BAD_FORMAT, true, Some(5)));
        let long_key = [b"set ".as_slice(), &[b'k'; 251], b" 0 0 2"].concat();
        assert_eq!(reply_error(&long_key), (BAD_FORMAT, false, Some(2)));
        assert_eq!(reply_error(b"cas k 0 0 1 abc"), (BAD_FORMAT, false, Some(1)));
        assert_eq!(reply_error(b"SET k 0 0 1"), ("ERROR", false, None));
    }

    #[test]
    fn retrieval_lines() {
        let Ok(Request::Get { keys, with_cas: true, touch: None }) = parse(b"gets a  b c ") else {
            panic!("gets parses")
        };
        assert_eq!(keys.iter().collect::<Vec<_>>(), vec![&b"a"[..], b"b", b"c"]);
        let Ok(Request::Get { keys, with_cas: false, touch: Some(-1) }) = parse(b"gat -1 a") else {
            panic!("gat parses")
        };
        assert_eq!(keys.iter().collect::<Vec<_>>(), vec![&b"a"[..]]);
        assert_eq!(reply_error(b"get"), ("ERROR", false, None));
        assert!(matches!(parse(b"gat 10"), Ok(Request::Get { .. })), "no keys: just END, as memcached");
        assert_eq!(reply_error(b"gat x k"), (BAD_EXPTIME, false, None));
        assert_eq!(reply_error(&[b"get a ".as_slice(), &[b'k'; 251]].concat()), (BAD_FORMAT, false, None));
        assert!(parse(&[b"get ".as_slice(), &[b'k'; 250]].concat()).is_ok());
    }

    #[test]
    fn other_commands() {
        assert_eq!(parse(b"delete k 0 noreply"), Ok(Request::Delete { key: b"k", noreply: true }));
        assert_eq!(reply_error(b"delete k 5"), (DELETE_USAGE, false, None));
        assert_eq!(reply_error(b"delete k 1 2 3"), ("ERROR", false, None));
        assert_eq!(
            parse(b"decr k 18446744073709551615"),
            Ok(Request::Arith { key: b"k", delta: u64::MAX, incr: false, noreply: false })
        );
        assert_eq!(reply_error(b"incr k 18446744073709551616"), (BAD_DELTA, false, None));
        assert_eq!(reply_error(b"incr k -1 noreply"), (BAD_DELTA, true, None));
        assert_eq!(parse(b"touch k 10"), Ok(Request::Touch { key: b"k", exptime: 10, noreply: false }));
        assert_eq!(parse(b"flush_all 10 noreply"), Ok(Request::FlushAll { delay: 10, noreply: true }));
        assert_eq!(parse(b"flush_all noreply"), Ok(Request::FlushAll { delay: 0, noreply: true }));
        assert_eq!(reply_error(b"flush_all x"), (BAD_EXPTIME, false, None));
        assert_eq!(parse(b"verbosity 1 noreply"), Ok(Request::Verbosity { noreply: true }));
        assert_eq!(reply_error(b"verbosity"), ("ERROR", false, None));
        assert_eq!(parse(b"version"), Ok(Request::Version));
        assert_eq!(parse(b"quit"), Ok(Request::Quit));
        assert_eq!(parse(b"mn"), Ok(Request::MetaNoop));
        assert_eq!(reply_error(b""), ("ERROR", false, None));
        assert_eq!(parse(b"stats items x"), Ok(Request::StatsGroup(StatsGroup::Items)));
        assert_eq!(reply_error(b"stats bogus"), ("ERROR", false, None));
        assert_eq!(parse(b"GET / HTTP/1.1"), Err(Invalid::Close));
    }

    /// Each reply recorded from memcached 1.6.18 (`memcached -p 22122 -U 0 -l 127.0.0.1`).
    #[test]
    fn admin_commands_and_their_errors() {
        assert_eq!(
            parse(b"stats cachedump 1 0"),
            Ok(Request::StatsGroup(StatsGroup::CacheDump { class: 1, limit: 0 }))
        );
        assert!(parse(b"stats cachedump 0 5").is_ok());
        assert_eq!(reply_error(b"stats cachedump 1").0, "CLIENT_ERROR bad command line");
        assert_eq!(reply_error(b"stats cachedump x 1").0, BAD_FORMAT);
        assert_eq!(reply_error(b"stats cachedump 1 -1").0, BAD_FORMAT);
        assert_eq!(reply_error(b"stats cachedump 64 1").0, "CLIENT_ERROR Illegal slab id");
        assert_eq!(reply_error(b"stats detail on").0, "CLIENT_ERROR usage: stats detail on|off|dump");
        assert_eq!(parse(b"lru_crawler metadump all"), Ok(Request::MetaDump { items: true }));
        assert_eq!(parse(b"lru_crawler metadump hash"), Ok(Request::MetaDump { items: true }));
        assert_eq!(parse(b"lru_crawler metadump 2,1"), Ok(Request::MetaDump { items: true }));
        assert_eq!(parse(b"lru_crawler metadump 63"), Ok(Request::MetaDump { items: false }));
        for bad in [&b"lru_crawler metadump 0"[..], b"lru_crawler metadump 64", b"lru_crawler metadump x"] {
            assert_eq!(reply_error(bad).0, "BADCLASS invalid class id");
        }
        assert_eq!(reply_error(b"lru_crawler metadump").0, "ERROR");
        assert_eq!(reply_error(b"lru_crawler metadump 1 2").0, "ERROR");
        assert_eq!(reply_error(b"lru_crawler crawl all").0, "ERROR");
        assert_eq!(parse(b"cache_memlimit 100 noreply"), Ok(Request::CacheMemlimit { noreply: true }));
        assert_eq!(
            reply_error(b"cache_memlimit 7").0,
            "MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m"
        );
        assert_eq!(reply_error(b"cache_memlimit x").0, "ERROR");
        assert_eq!(reply_error(b"cache_memlimit").0, "ERROR");
        assert_eq!(parse(b"me k"), Ok(Request::MetaDebug { key: b"k" }));
        assert_eq!(reply_error(b"me").0, BAD_FORMAT);
        assert_eq!(reply_error(b"me a b").0, BAD_FORMAT);
    }

    #[test]
    fn exptime_rules() {
        let now = 1_700_000_000;
        assert_eq!(expires_at(0, now), 0);
        assert_eq!(expires_at(-1, now), 1);
        assert_eq!(expires_at(MAX_RELATIVE_EXPTIME, now), now + MAX_RELATIVE_EXPTIME as u64);
        assert_eq!(expires_at(MAX_RELATIVE_EXPTIME + 1, now), MAX_RELATIVE_EXPTIME as u64 + 1);
        assert_eq!(remaining_ttl(0, now), -1);
        assert_eq!(remaining_ttl(now + 5, now), 5);
    }
}
