//! What one Raft log entry carries: a batch of writes, the leader's clock and who asked.
//!
//! ```text
//! version u8 = 1
//! stamp   u64   Unix seconds, set by the leader when it appends the entry: every node
//!               decides the batch with this `now`, never with its own clock
//! origin  u64   node id that took the request from a client
//! boot    u64   that node's boot id (start time in ns): an answer is only ever matched
//!               to a request of the same run of the same node
//! request u64   the origin's request number, unique within one boot
//! count   u32   number of ops, then each op:
//!   0 Store  key value flags:u32 expires_at:u64 mode:u8 [cas:u64 if mode = Cas]
//!   1 Delete key has_cas:u8 [cas:u64]
//!   2 Touch  key expires_at:u64
//!   3 Arith  key delta:u64 incr:u8 has_cas:u8 [cas:u64] has_create:u8 [initial:u64 expires_at:u64]
//!            has_expiry:u8 [expires_at:u64]
//!   4 Flush
//!   5 Copy   src dst remove_source:u8 only_if_absent:u8
//!   6 DeletePrefix prefix
//! ```
//!
//! Store modes: 0 Set, 1 Add, 2 Replace, 3 Append, 4 Prepend, 5 Cas (then `cas:u64`),
//! 6 AppendOrCreate.
//!
//! Integers are little-endian; `key` and `value` are a `u32` length and the bytes. The
//! format is private to the cluster (every member runs the same binary); the version byte
//! lets a later format refuse an older one clearly.

use std::fmt;

use crate::store::{NewCounter, StoreMode, WriteOp};

const VERSION: u8 = 1;

/// Offset of `stamp` in an encoded proposal: the leader rewrites it in place.
const STAMP_AT: usize = 1;

/// A batch of writes as it travels through the Raft log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    pub stamp: u64,
    pub origin: u64,
    pub boot: u64,
    pub request: u64,
    pub ops: Vec<WriteOp>,
}

/// An entry that is not a proposal this binary can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(&'static str);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "undecodable proposal: {}", self.0)
    }
}

impl Proposal {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.ops.iter().map(WriteOp::payload_len).sum::<usize>());
        out.push(VERSION);
        for n in [self.stamp, self.origin, self.boot, self.request] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.extend_from_slice(&(self.ops.len() as u32).to_le_bytes());
        for op in &self.ops {
            encode_op(op, &mut out);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Proposal, DecodeError> {
        let mut r = Reader(bytes);
        if r.u8()? != VERSION {
            return Err(DecodeError("unknown version"));
        }
        let (stamp, origin, boot, request) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
        let count = r.u32()? as usize;
        // Each op takes at least 5 bytes: a hostile count cannot make us reserve much.
        let mut ops = Vec::with_capacity(count.min(r.0.len() / 5));
        for _ in 0..count {
            ops.push(decode_op(&mut r)?);
        }
        if !r.0.is_empty() {
            return Err(DecodeError("trailing bytes"));
        }
        Ok(Proposal { stamp, origin, boot, request, ops })
    }
}

/// Sets the leader's clock into an encoded proposal (one that fails to decode later is
/// skipped by every node alike, so a short one is left as it is).
pub fn restamp(encoded: &mut [u8], stamp: u64) {
    if let Some(slot) = encoded.get_mut(STAMP_AT..STAMP_AT + 8) {
        slot.copy_from_slice(&stamp.to_le_bytes());
    }
}

fn put_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put_u64(n: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(&n.to_le_bytes());
}

fn put_option(n: Option<u64>, out: &mut Vec<u8>) {
    match n {
        Some(n) => {
            out.push(1);
            put_u64(n, out);
        }
        None => out.push(0),
    }
}

fn encode_op(op: &WriteOp, out: &mut Vec<u8>) {
    match op {
        WriteOp::Store { key, value, flags, expires_at, mode } => {
            out.push(0);
            put_bytes(key, out);
            put_bytes(value, out);
            out.extend_from_slice(&flags.to_le_bytes());
            put_u64(*expires_at, out);
            let (tag, cas) = match mode {
                StoreMode::Set => (0, None),
                StoreMode::Add => (1, None),
                StoreMode::Replace => (2, None),
                StoreMode::Append => (3, None),
                StoreMode::Prepend => (4, None),
                StoreMode::Cas(cas) => (5, Some(*cas)),
                StoreMode::AppendOrCreate => (6, None),
            };
            out.push(tag);
            if let Some(cas) = cas {
                put_u64(cas, out);
            }
        }
        WriteOp::Delete { key, cas } => {
            out.push(1);
            put_bytes(key, out);
            put_option(*cas, out);
        }
        WriteOp::Touch { key, expires_at } => {
            out.push(2);
            put_bytes(key, out);
            put_u64(*expires_at, out);
        }
        WriteOp::Arith { key, delta, incr, cas, create, expires_at } => {
            out.push(3);
            put_bytes(key, out);
            put_u64(*delta, out);
            out.push(u8::from(*incr));
            put_option(*cas, out);
            match create {
                Some(new) => {
                    out.push(1);
                    put_u64(new.initial, out);
                    put_u64(new.expires_at, out);
                }
                None => out.push(0),
            }
            put_option(*expires_at, out);
        }
        WriteOp::Flush => out.push(4),
        WriteOp::Copy { src, dst, remove_source, only_if_absent } => {
            out.push(5);
            put_bytes(src, out);
            put_bytes(dst, out);
            out.push(u8::from(*remove_source));
            out.push(u8::from(*only_if_absent));
        }
        WriteOp::DeletePrefix { prefix } => {
            out.push(6);
            put_bytes(prefix, out);
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| DecodeError("truncated"))?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| DecodeError("truncated"))?))
    }

    fn flag(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError("bad flag byte")),
        }
    }

    fn bytes(&mut self) -> Result<Vec<u8>, DecodeError> {
        let len = self.u32()? as usize;
        Ok(self.take(len)?.to_vec())
    }

    fn option(&mut self) -> Result<Option<u64>, DecodeError> {
        Ok(if self.flag()? { Some(self.u64()?) } else { None })
    }
}

fn decode_op(r: &mut Reader<'_>) -> Result<WriteOp, DecodeError> {
    Ok(match r.u8()? {
        0 => {
            let (key, value) = (r.bytes()?, r.bytes()?);
            let (flags, expires_at) = (r.u32()?, r.u64()?);
            let mode = match r.u8()? {
                0 => StoreMode::Set,
                1 => StoreMode::Add,
                2 => StoreMode::Replace,
                3 => StoreMode::Append,
                4 => StoreMode::Prepend,
                5 => StoreMode::Cas(r.u64()?),
                6 => StoreMode::AppendOrCreate,
                _ => return Err(DecodeError("bad store mode")),
            };
            WriteOp::Store { key, value: value.into(), flags, expires_at, mode }
        }
        1 => WriteOp::Delete { key: r.bytes()?, cas: r.option()? },
        2 => WriteOp::Touch { key: r.bytes()?, expires_at: r.u64()? },
        3 => {
            let key = r.bytes()?;
            let delta = r.u64()?;
            let incr = r.flag()?;
            let cas = r.option()?;
            let create =
                if r.flag()? { Some(NewCounter { initial: r.u64()?, expires_at: r.u64()? }) } else { None };
            WriteOp::Arith { key, delta, incr, cas, create, expires_at: r.option()? }
        }
        4 => WriteOp::Flush,
        5 => WriteOp::Copy {
            src: r.bytes()?,
            dst: r.bytes()?,
            remove_source: r.flag()?,
            only_if_absent: r.flag()?,
        },
        6 => WriteOp::DeletePrefix { prefix: r.bytes()? },
        _ => return Err(DecodeError("bad op tag")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..40)
    }

    fn mode() -> impl Strategy<Value = StoreMode> {
        prop_oneof![
            Just(StoreMode::Set),
            Just(StoreMode::Add),
            Just(StoreMode::Replace),
            Just(StoreMode::Append),
            Just(StoreMode::Prepend),
            any::<u64>().prop_map(StoreMode::Cas),
            Just(StoreMode::AppendOrCreate),
        ]
    }

    fn op() -> impl Strategy<Value = WriteOp> {
        prop_oneof![
            (bytes(), bytes(), any::<u32>(), any::<u64>(), mode()).prop_map(
                |(key, value, flags, expires_at, mode)| WriteOp::Store {
                    key,
                    value: value.into(),
                    flags,
                    expires_at,
                    mode
                }
            ),
            (bytes(), any::<Option<u64>>()).prop_map(|(key, cas)| WriteOp::Delete { key, cas }),
            (bytes(), any::<u64>()).prop_map(|(key, expires_at)| WriteOp::Touch { key, expires_at }),
            (
                bytes(),
                any::<u64>(),
                any::<bool>(),
                any::<Option<u64>>(),
                any::<Option<(u64, u64)>>(),
                any::<Option<u64>>()
            )
                .prop_map(|(key, delta, incr, cas, create, expires_at)| WriteOp::Arith {
                    key,
                    delta,
                    incr,
                    cas,
                    create: create.map(|(initial, expires_at)| NewCounter { initial, expires_at }),
                    expires_at,
                }),
            Just(WriteOp::Flush),
            (bytes(), bytes(), any::<bool>(), any::<bool>()).prop_map(
                |(src, dst, remove_source, only_if_absent)| WriteOp::Copy {
                    src,
                    dst,
                    remove_source,
                    only_if_absent
                }
            ),
            bytes().prop_map(|prefix| WriteOp::DeletePrefix { prefix }),
        ]
    }

    proptest! {
        #[test]
        fn every_proposal_round_trips(
            stamp in any::<u64>(), origin in any::<u64>(), boot in any::<u64>(), request in any::<u64>(),
            ops in proptest::collection::vec(op(), 0..8),
        ) {
            let proposal = Proposal { stamp, origin, boot, request, ops };
            prop_assert_eq!(Proposal::decode(&proposal.encode()), Ok(proposal));
        }

        #[test]
        fn a_cut_proposal_is_refused(ops in proptest::collection::vec(op(), 1..4), cut in 1usize..200) {
            let encoded = Proposal { stamp: 1, origin: 2, boot: 3, request: 4, ops }.encode();
            let cut = cut.min(encoded.len() - 1);
            prop_assert!(Proposal::decode(&encoded[..cut]).is_err());
        }
    }

    #[test]
    fn restamp_changes_only_the_clock() {
        let proposal = Proposal { stamp: 5, origin: 1, boot: 9, request: 3, ops: vec![WriteOp::Flush] };
        let mut encoded = proposal.encode();
        restamp(&mut encoded, 1_700_000_000);
        assert_eq!(Proposal::decode(&encoded), Ok(Proposal { stamp: 1_700_000_000, ..proposal }));
        assert_eq!(Proposal::decode(&[2]), Err(DecodeError("unknown version")));
    }
}
