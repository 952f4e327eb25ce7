//! memcached's meta commands `mg`, `ms`, `md`, `ma`: flag parsing, execution and replies.
//!
//! Supported flags (anything else is `CLIENT_ERROR invalid flag`, as memcached answers a flag
//! it does not know):
//!
//! ```text
//! mg  v k f t c s q O<opaque> T<ttl> N<ttl>
//! ms  k c q O<opaque> T<ttl> F<flags> C<cas> M<E|A|P|R|S> I N<ttl>
//! md  k q O<opaque> C<cas>
//! ma  v k t c q O<opaque> T<ttl> N<ttl> J<initial> D<delta> C<cas> M<I|+|D|->
//! ```
//!
//! Return flags are echoed in the order asked. Quiet mode (`q`) hides what memcached 1.6
//! hides: `EN` for mg, `HD` for ms and md, `HD`/`VA` for ma; misses of md/ma (`NF`),
//! conflicts and errors are always sent. Simplifications: `mg N` creates the empty item and
//! answers `W` (this client should recache) but textkv keeps no lease state, so later
//! readers never see `Z`; `ms I` and `ms N` are accepted and ignored (memcached 1.6.18 also
//! ignores `N` for ms).

use super::request::{expires_at, remaining_ttl, valid_key};
use super::{server_error, Executor};
use crate::protocol::push_decimal;
use crate::stats::ServerStats;
use crate::store::{unix_now, Item, NewCounter, StoreError, StoreMode, WriteOp, WriteOutcome};

/// Which meta command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKind {
    Get,
    Set,
    Delete,
    Arith,
}

impl MetaKind {
    /// Flags the command accepts.
    fn accepts(self, flag: u8) -> bool {
        let allowed: &[u8] = match self {
            MetaKind::Get => b"vkftcsqOTN",
            MetaKind::Set => b"kcqOTFCMIN",
            MetaKind::Delete => b"kqOC",
            MetaKind::Arith => b"vktcqOTNJDCM",
        };
        allowed.contains(&flag)
    }
}

const MAX_OPAQUE: usize = 32;
const BAD_TOKEN: &str = "CLIENT_ERROR bad token in command line format";

/// The flags of one meta request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetaFlags {
    /// Flags echoed back in replies (`k f t c s O`), in request order.
    returns: Vec<u8>,
    pub value: bool,
    pub quiet: bool,
    /// Owned, so that a queued write's reply can carry it (see `PendingWrite`).
    pub opaque: Option<Box<[u8]>>,
    pub ttl: Option<i64>,
    pub client_flags: Option<u32>,
    pub compare_cas: Option<u64>,
    pub vivify: Option<i64>,
    /// `M`: the mode character, already checked against the command.
    pub mode: Option<u8>,
    pub delta: Option<u64>,
    pub initial: Option<u64>,
}

impl MetaFlags {
    /// Parses the flag tokens that follow the key (and, for ms, the data length).
    pub fn parse(kind: MetaKind, tokens: &[&[u8]]) -> Result<MetaFlags, &'static str> {
        let mut flags = MetaFlags::default();
        let mut seen = [false; 128];
        // memcached reports a bad numeric argument of ma with the generic flag error.
        // memcached 1.6 words a bad numeric flag argument differently for each command.
        let bad_number = match kind {
            MetaKind::Get => BAD_TOKEN,
            MetaKind::Set => super::request::BAD_FORMAT,
            MetaKind::Delete | MetaKind::Arith => "CLIENT_ERROR invalid or duplicate flag",
        };
        for token in tokens {
            let (flag, arg) = (token[0], &token[1..]);
            if !flag.is_ascii() || !kind.accepts(flag) {
                return Err("CLIENT_ERROR invalid flag");
            }
            if std::mem::replace(&mut seen[flag as usize], true) {
                return Err("CLIENT_ERROR duplicate flag");
            }
            let signed = || super::request::parse_signed(arg).ok_or(bad_number);
            let unsigned = || super::request::parse_unsigned::<u64>(arg).ok_or(bad_number);
            match flag {
                b'v' => flags.value = true,
                b'q' => flags.quiet = true,
                b'k' | b'f' | b't' | b'c' | b's' => flags.returns.push(flag),
                b'O' => {
                    if arg.len() > MAX_OPAQUE {
                        return Err("CLIENT_ERROR opaque token too long");
                    }
                    // Echoed verbatim: control bytes (a lone `\r`, escapes) would go raw into
                    // the reply line, so refuse them as keys are refused (memcached echoes them).
                    if arg.iter().any(|b| b.is_ascii_control()) {
                        return Err(BAD_TOKEN);
                    }
                    flags.opaque = Some(arg.into());
                    flags.returns.push(flag);
                }
                b'T' => flags.ttl = Some(signed()?),
                b'N' => flags.vivify = Some(signed()?),
                b'F' => flags.client_flags = Some(u32::try_from(unsigned()?).map_err(|_| bad_number)?),
                b'C' => flags.compare_cas = Some(unsigned()?),
                b'D' => flags.delta = Some(unsigned()?),
                b'J' => flags.initial = Some(unsigned()?),
                b'M' => {
                    let modes: &[u8] = if kind == MetaKind::Set { b"EAPRS" } else { b"I+D-id" };
                    match arg {
                        [mode] if modes.contains(mode) => flags.mode = Some(mode.to_ascii_uppercase()),
                        _ if kind == MetaKind::Set => return Err("CLIENT_ERROR invalid mode for ms M token"),
                        _ => return Err("CLIENT_ERROR invalid mode for ma M token"),
                    }
                }
                _ => {} // `I`: accepted, no effect.
            }
        }
        Ok(flags)
    }

    /// Appends the return flags: the item's where there is one, else only `k` and `O`.
    fn write_returns(&self, key: &[u8], item: Option<&Item>, now: u64, out: &mut Vec<u8>) {
        for &flag in &self.returns {
            match (flag, item) {
                (b'k', _) => {
                    out.extend_from_slice(b" k");
                    out.extend_from_slice(key);
                }
                (b'O', _) => {
                    out.extend_from_slice(b" O");
                    out.extend_from_slice(self.opaque.as_deref().unwrap_or_default());
                }
                (b'f', Some(item)) => push_flag_number(b'f', item.flags.into(), out),
                (b't', Some(item)) => {
                    out.extend_from_slice(format!(" t{}", remaining_ttl(item.expires_at, now)).as_bytes())
                }
                (b'c', Some(item)) => push_flag_number(b'c', item.cas, out),
                (b's', Some(item)) => push_flag_number(b's', item.value.len() as u64, out),
                _ => {}
            }
        }
    }

    /// Appends a status line such as `HD k<key> O<opaque>`, unless quiet mode hides it.
    fn status(
        &self,
        code: &str,
        hidden_when_quiet: bool,
        key: &[u8],
        item: Option<&Item>,
        out: &mut Vec<u8>,
    ) {
        if self.quiet && hidden_when_quiet {
            return;
        }
        out.extend_from_slice(code.as_bytes());
        self.write_returns(key, item, unix_now(), out);
        out.extend_from_slice(b"\r\n");
    }

    /// Appends `VA <size> <flags>\r\n<data>\r\n`, with `extra` (` W`) after the flags.
    fn value_reply(&self, key: &[u8], item: &Item, extra: &str, now: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(b"VA ");
        push_decimal(item.value.len() as u64, out);
        self.write_returns(key, Some(item), now, out);
        out.extend_from_slice(extra.as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&item.value);
        out.extend_from_slice(b"\r\n");
    }
}

impl Executor<'_> {
    /// `mg`, answered at once (it writes only for `T` or `N`).
    pub(super) fn meta_get(&self, key: &[u8], flags: &MetaFlags, out: &mut Vec<u8>) {
        debug_assert!(valid_key(key));
        let c = self.counters();
        ServerStats::bump(&c.cmd_meta);
        ServerStats::bump(&c.cmd_get);
        let now = unix_now();
        let mut found = None;
        let mut extra = "";
        if let Some(ttl) = flags.ttl {
            ServerStats::bump(&c.cmd_touch);
            match self.write(WriteOp::Touch { key: key.to_vec(), expires_at: expires_at(ttl, now) }, out) {
                Some(WriteOutcome::Touched(item)) => found = Some(item),
                Some(_) => {}
                None => return,
            }
        } else {
            found = self.ctx.store.get(key);
        }
        if found.is_none() {
            if let Some(ttl) = flags.vivify {
                let op = WriteOp::Store {
                    key: key.to_vec(),
                    value: Vec::new().into(),
                    flags: 0,
                    expires_at: expires_at(ttl, now),
                    mode: StoreMode::Add,
                };
                match self.write(op, out) {
                    Some(WriteOutcome::Stored { .. }) => extra = " W",
                    Some(_) => {}
                    None => return,
                }
                found = self.ctx.store.get(key);
            }
        }
        match found {
            Some(item) => {
                ServerStats::bump(&c.get_hits);
                if flags.value {
                    flags.value_reply(key, &item, extra, now, out);
                } else {
                    out.extend_from_slice(b"HD");
                    flags.write_returns(key, Some(&item), now, out);
                    out.extend_from_slice(extra.as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
            }
            None => {
                ServerStats::bump(&c.get_misses);
                flags.status("EN", true, key, None, out);
            }
        }
    }

    /// The one store write of `ms`, `md` or `ma`; its reply comes from [`Executor::meta_reply`]
    /// once the write is decided (they join the group commit of pipelined writes).
    pub(super) fn meta_write(&self, kind: MetaKind, key: &[u8], flags: &MetaFlags, data: &[u8]) -> WriteOp {
        let c = self.counters();
        ServerStats::bump(&c.cmd_meta);
        let now = unix_now();
        match kind {
            MetaKind::Set => {
                ServerStats::bump(&c.cmd_set);
                WriteOp::Store {
                    key: key.to_vec(),
                    value: data.into(),
                    flags: flags.client_flags.unwrap_or(0),
                    expires_at: expires_at(flags.ttl.unwrap_or(0), now),
                    mode: meta_set_mode(flags),
                }
            }
            MetaKind::Delete => WriteOp::Delete { key: key.to_vec(), cas: flags.compare_cas },
            MetaKind::Arith => WriteOp::Arith {
                key: key.to_vec(),
                delta: flags.delta.unwrap_or(1),
                incr: meta_incr(flags),
                cas: flags.compare_cas,
                // Auto-vivify: the item starts at the initial value, unchanged by the delta.
                create: flags.vivify.map(|ttl| NewCounter {
                    initial: flags.initial.unwrap_or(0),
                    expires_at: expires_at(ttl, now),
                }),
                expires_at: flags.ttl.map(|ttl| expires_at(ttl, now)),
            },
            MetaKind::Get => unreachable!("mg is answered by meta_get"),
        }
    }

    /// The reply to `ms`, `md` or `ma` once its write is decided.
    pub(super) fn meta_reply(
        &self,
        kind: MetaKind,
        key: &[u8],
        flags: &MetaFlags,
        result: Result<WriteOutcome, StoreError>,
        out: &mut Vec<u8>,
    ) {
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(e) => return server_error(&e, out),
        };
        let c = self.counters();
        match kind {
            MetaKind::Set => {
                let mode = meta_set_mode(flags);
                self.count_cas(mode, &outcome);
                match outcome {
                    WriteOutcome::Stored { cas } => {
                        let item = Item { value: Box::default(), flags: 0, expires_at: 0, cas };
                        flags.status("HD", true, key, Some(&item), out);
                    }
                    WriteOutcome::NotStored => flags.status("NS", false, key, None, out),
                    WriteOutcome::Exists => flags.status("EX", false, key, None, out),
                    WriteOutcome::NotFound => flags.status("NF", false, key, None, out),
                    WriteOutcome::TooLarge => self.too_large(out),
                    other => self.unexpected(&other, out),
                }
            }
            MetaKind::Delete => match outcome {
                WriteOutcome::Deleted => {
                    ServerStats::bump(&c.delete_hits);
                    flags.status("HD", true, key, None, out);
                }
                WriteOutcome::NotFound => {
                    ServerStats::bump(&c.delete_misses);
                    flags.status("NF", false, key, None, out);
                }
                WriteOutcome::Exists => flags.status("EX", false, key, None, out),
                other => self.unexpected(&other, out),
            },
            MetaKind::Arith => {
                let (hits, misses) = if meta_incr(flags) {
                    (&c.incr_hits, &c.incr_misses)
                } else {
                    (&c.decr_hits, &c.decr_misses)
                };
                match outcome {
                    WriteOutcome::Counter { value, cas, expires_at } => {
                        ServerStats::bump(hits);
                        // `expires_at` is the expiry as stored (clamped), so `t` reports it.
                        let item =
                            Item { value: value.to_string().into_bytes().into(), flags: 0, expires_at, cas };
                        // Quiet mode hides a successful ma's reply, value included.
                        if flags.value && !flags.quiet {
                            flags.value_reply(key, &item, "", unix_now(), out);
                        } else {
                            flags.status("HD", true, key, Some(&item), out);
                        }
                    }
                    WriteOutcome::NotFound => {
                        ServerStats::bump(misses);
                        flags.status("NF", false, key, None, out);
                    }
                    WriteOutcome::Exists => flags.status("EX", false, key, None, out),
                    WriteOutcome::NonNumeric => self.non_numeric(out),
                    other => self.unexpected(&other, out),
                }
            }
            MetaKind::Get => unreachable!("mg is answered by meta_get"),
        }
    }
}

/// The store mode of an `ms`: a CAS compare wins over `M`.
fn meta_set_mode(flags: &MetaFlags) -> StoreMode {
    match (flags.compare_cas, flags.mode) {
        (Some(cas), _) => StoreMode::Cas(cas),
        (None, Some(b'E')) => StoreMode::Add,
        (None, Some(b'A')) => StoreMode::Append,
        (None, Some(b'P')) => StoreMode::Prepend,
        (None, Some(b'R')) => StoreMode::Replace,
        (None, _) => StoreMode::Set,
    }
}

/// Whether an `ma` increments (the default) or decrements.
fn meta_incr(flags: &MetaFlags) -> bool {
    matches!(flags.mode, None | Some(b'I' | b'+'))
}

/// Appends a returned flag with its number, such as ` c12`.
fn push_flag_number(flag: u8, n: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(&[b' ', flag]);
    push_decimal(n, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(kind: MetaKind, line: &str) -> Result<MetaFlags, &'static str> {
        let tokens: Vec<&[u8]> = line.split(' ').filter(|t| !t.is_empty()).map(str::as_bytes).collect();
        MetaFlags::parse(kind, &tokens)
    }

    #[test]
    fn flags_parse_per_command() {
        let f = parse(MetaKind::Get, "v k t Oabc T30 q").unwrap();
        assert!(f.value && f.quiet);
        assert_eq!(f.returns, b"ktO");
        assert_eq!(f.opaque.as_deref(), Some(&b"abc"[..]));
        assert_eq!(f.ttl, Some(30));
        let f = parse(MetaKind::Set, "F7 C9 MA I").unwrap();
        assert_eq!((f.client_flags, f.compare_cas, f.mode), (Some(7), Some(9), Some(b'A')));
        let f = parse(MetaKind::Arith, "N0 J13 D5 Md").unwrap();
        assert_eq!((f.vivify, f.initial, f.delta, f.mode), (Some(0), Some(13), Some(5), Some(b'D')));
    }

    #[test]
    fn flag_errors_match_memcached() {
        assert_eq!(parse(MetaKind::Get, "X"), Err("CLIENT_ERROR invalid flag"));
        assert_eq!(parse(MetaKind::Delete, "v"), Err("CLIENT_ERROR invalid flag"));
        assert_eq!(parse(MetaKind::Get, "Oa Ob"), Err("CLIENT_ERROR duplicate flag"));
        assert_eq!(
            parse(MetaKind::Get, &format!("O{}", "x".repeat(33))),
            Err("CLIENT_ERROR opaque token too long")
        );
        assert_eq!(MetaFlags::parse(MetaKind::Get, &[&b"Oab\r\x1b[2J"[..]]), Err(BAD_TOKEN));
        assert_eq!(parse(MetaKind::Set, "MX"), Err("CLIENT_ERROR invalid mode for ms M token"));
        assert_eq!(parse(MetaKind::Arith, "Mx"), Err("CLIENT_ERROR invalid mode for ma M token"));
        assert_eq!(parse(MetaKind::Arith, "D-1"), Err("CLIENT_ERROR invalid or duplicate flag"));
        assert_eq!(parse(MetaKind::Get, "Tx"), Err(BAD_TOKEN));
        assert_eq!(parse(MetaKind::Set, "F4294967296"), Err("CLIENT_ERROR bad command line format"));
        assert_eq!(parse(MetaKind::Delete, "Cx"), Err("CLIENT_ERROR invalid or duplicate flag"));
    }
}
