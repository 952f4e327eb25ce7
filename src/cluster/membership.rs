//! Members coming and going: `cluster add/remove`, `--join`, and the identity checks that
//! keep a wiped member out.
//!
//! A change is a Raft configuration change (`ConfChange`, `AddNode`/`RemoveNode`), so it
//! is ordered with the writes and applied by every member at the same log position. Its
//! entry's context says who asked and the new member's peer address:
//!
//! ```text
//! context = "<origin> <boot> <request> <incarnation> <peer-addr or ->"   (text)
//! ```
//!
//! Every member applying it saves the new voters and the members' addresses in its Raft
//! state (`storage`), and starts (or stops) its sender to that member; the node that took
//! the request answers `OK` once it has applied it. One change at a time: raft-rs turns a
//! change proposed while another is pending into an empty entry, which then times out.
//!
//! Identity: a node's Raft state holds its *incarnation*, a random number drawn when the
//! state is created. Every connection a node opens to a peer starts with a `hello` naming its
//! id, incarnation and peer address (so that a joining node, which knows no member yet,
//! can answer the leader); a member keeps the incarnation it first saw for each id (durably) and
//! refuses a different one — a member whose data directory was wiped comes back with no
//! state and a new incarnation, and must not take part under its old id (it lost its votes
//! and log: Raft's safety would break). The refused node is told why and stops. A removed
//! id is remembered as such, and never accepted again.
//!
//! Peer frames of this module (see `transport` for how they are told apart from Raft's):
//!
//! ```text
//! hello <id> <incarnation> <peer-addr>      first frame of every connection
//! join <id> <peer-addr> <incarnation>       a new node asking to be added (`--join`)
//! refused <reason>                          to a node that may not take part, then it stops
//! ```

use std::fmt;

/// What the line protocol asks (`cluster add <id> <peer-addr>`, `cluster remove <id>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Add { id: u64, addr: String },
    Remove { id: u64 },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Add { id, addr } => write!(f, "add member {id} at {addr}"),
            Change::Remove { id } => write!(f, "remove member {id}"),
        }
    }
}

/// The context of a configuration change entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeContext {
    /// The node that took the request (0: none waits for it, e.g. a `--join`).
    pub origin: u64,
    pub boot: u64,
    pub request: u64,
    /// The added member's incarnation, when it asked itself (`--join`); 0 if unknown.
    pub incarnation: u64,
    /// The added member's peer address.
    pub addr: Option<String>,
}

impl ChangeContext {
    pub fn encode(&self) -> Vec<u8> {
        let addr = self.addr.as_deref().unwrap_or("-");
        format!("{} {} {} {} {addr}", self.origin, self.boot, self.request, self.incarnation).into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Option<ChangeContext> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut fields = text.split(' ');
        let mut number = || fields.next()?.parse::<u64>().ok();
        let (origin, boot, request, incarnation) = (number()?, number()?, number()?, number()?);
        let addr = match fields.next()? {
            "-" => None,
            addr => Some(addr.to_string()),
        };
        fields.next().is_none().then_some(ChangeContext { origin, boot, request, incarnation, addr })
    }
}

/// A peer frame that is not a Raft message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    Hello { id: u64, incarnation: u64, addr: String },
    Join { id: u64, addr: String, incarnation: u64 },
    Refused(String),
}

impl Control {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Control::Hello { id, incarnation, addr } => format!("hello {id} {incarnation} {addr}"),
            Control::Join { id, addr, incarnation } => format!("join {id} {addr} {incarnation}"),
            Control::Refused(reason) => format!("refused {reason}"),
        }
        .into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Option<Control> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (word, rest) = text.split_once(' ')?;
        let fields: Vec<&str> = rest.split(' ').collect();
        let number = |at: usize| fields.get(at)?.parse::<u64>().ok();
        match (word, fields.len()) {
            ("hello", 3) => {
                Some(Control::Hello { id: number(0)?, incarnation: number(1)?, addr: fields[2].to_string() })
            }
            ("join", 3) => {
                Some(Control::Join { id: number(0)?, addr: fields[1].to_string(), incarnation: number(2)? })
            }
            ("refused", _) => Some(Control::Refused(rest.to_string())),
            _ => None,
        }
    }
}

/// A fresh incarnation: random, never 0 (0 means unknown) nor [`REMOVED`].
pub fn new_incarnation() -> u64 {
    let mut bytes = [0u8; 8];
    // The kernel's generator; the clock only if it cannot be read (still distinct per start).
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_err()
    {
        bytes = crate::store::unix_now().wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes();
    }
    u64::from_le_bytes(bytes).clamp(1, REMOVED - 1)
}

/// The incarnation recorded for an id that was removed: no node may use that id again.
pub const REMOVED: u64 = u64::MAX;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_and_control_frames_round_trip_and_junk_is_refused() {
        for context in [
            ChangeContext {
                origin: 1,
                boot: 2,
                request: 3,
                incarnation: 4,
                addr: Some("127.0.0.1:7104".into()),
            },
            ChangeContext { origin: 0, boot: 0, request: 0, incarnation: 0, addr: None },
        ] {
            assert_eq!(ChangeContext::decode(&context.encode()), Some(context));
        }
        assert_eq!(ChangeContext::decode(b"1 2 3"), None);
        assert_eq!(ChangeContext::decode(b"1 2 3 4 a b"), None);
        for control in [
            Control::Hello { id: 3, incarnation: 99, addr: "127.0.0.1:7103".into() },
            Control::Join { id: 4, addr: "127.0.0.1:7104".into(), incarnation: 5 },
            Control::Refused("member 3 was wiped: rejoin with --join and a new --node-id".into()),
        ] {
            assert_eq!(Control::decode(&control.encode()), Some(control));
        }
        assert_eq!(Control::decode(b"hello 3"), None);
        assert_eq!(Control::decode(b"join x 1 2"), None);
        assert_eq!(Control::decode(b"bye 1"), None);
        let incarnation = new_incarnation();
        assert!(incarnation != 0 && incarnation != REMOVED && incarnation != new_incarnation());
    }
}
