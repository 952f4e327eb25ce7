//! What a Raft snapshot's data holds: the members' addresses and every item of the store.
//!
//! ```text
//! data    = "textkv snapshot 1\n"
//!           "members " <id>=<peer-addr>,... "\n"
//!           items (see `store::snapshot`: "<cas> <set record>\n" per item)
//! ```
//!
//! Raft's own metadata (index, term, who votes) travels beside it in `eraftpb::Snapshot`.
//! The members line is what tells a node that installs the snapshot (a new member, or one
//! far behind) where every member listens. The snapshot of index N is taken on the raft
//! thread right after entry N is applied, so it is exactly the state of the log up to N.
//!
//! Size: a snapshot travels to a follower in one peer frame, so the data must fit in the
//! transport's frame limit (64 MiB plus twice `--max-value-bytes`); a node whose snapshot
//! is larger logs an error and cannot bring a far-behind member up to date (chunked
//! transfer is not built).

const MAGIC: &[u8] = b"textkv snapshot 1\n";
const MEMBERS: &[u8] = b"members ";

/// Encodes the data of a snapshot: `members` as `--initial-cluster` spells them, then the
/// items as [`crate::store::Store::export_items`] gives them.
pub fn encode(members: &str, items: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + MEMBERS.len() + members.len() + 1 + items.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(MEMBERS);
    out.extend_from_slice(members.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(items);
    out
}

/// The members text and the items of snapshot data.
pub fn decode(data: &[u8]) -> Result<(&str, &[u8]), String> {
    let rest = data.strip_prefix(MAGIC).ok_or("not a textkv snapshot (or another version)")?;
    let rest = rest.strip_prefix(MEMBERS).ok_or("snapshot without a members line")?;
    let end = rest.iter().position(|&b| b == b'\n').ok_or("snapshot cut in its members line")?;
    let members = std::str::from_utf8(&rest[..end]).map_err(|_| "snapshot members are not text")?;
    Ok((members, &rest[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_and_items_round_trip_and_other_data_is_refused() {
        let items = b"7 set a 1\n8 setmeta b 1 0 two\n";
        let data = encode("1=127.0.0.1:7101,2=127.0.0.1:7102", items);
        assert_eq!(decode(&data), Ok(("1=127.0.0.1:7101,2=127.0.0.1:7102", &items[..])));
        assert_eq!(decode(&encode("1=h:1", b"")), Ok(("1=h:1", &b""[..])));
        assert!(decode(b"set a 1\n").unwrap_err().contains("not a textkv snapshot"));
        assert!(decode(b"textkv snapshot 1\nmembers 1=h:1").unwrap_err().contains("cut"));
    }
}
