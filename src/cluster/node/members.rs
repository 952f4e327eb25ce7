//! The raft thread's side of `membership`: control frames from peers (`hello`, `join`,
//! `refused`), `cluster add/remove`, and applying a configuration change (voters, the
//! members' addresses and senders, identities).

use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, Entry, Message, MessageType};

use super::{lost_state, Node};
use crate::cluster;
use crate::cluster::membership::{Change, ChangeContext, Control, REMOVED};

impl Node {
    /// A peer's `hello`, `join` or `refused`; whether its connection may go on.
    pub(super) fn on_control(&mut self, control: Control) -> bool {
        match control {
            Control::Hello { id, incarnation, addr } => {
                if !self.addrs.contains_key(&id) {
                    // A joining node answers the leader before it knows the members.
                    self.contacts.insert(id, addr);
                }
                self.check_identity(id, incarnation)
            }
            Control::Join { id, addr, incarnation } => {
                self.on_join(id, &addr, incarnation);
                true
            }
            Control::Refused(reason) => {
                log::error!("this node may not take part in the cluster: {reason}; stopping");
                std::process::exit(1);
            }
        }
    }

    /// Accepts member `id`'s connection if `incarnation` is the one first seen for it (a
    /// first contact records it); a different one is a member whose Raft state was wiped,
    /// told so and refused.
    pub(super) fn check_identity(&mut self, id: u64, incarnation: u64) -> bool {
        if !self.addrs.contains_key(&id) && self.raw.store().known_incarnation(id) != Some(REMOVED) {
            return true; // not a member (yet): Raft ignores what it sends
        }
        let known = self.raw.store().known_incarnation(id);
        match known {
            Some(seen) if seen == incarnation => true,
            None | Some(0) => {
                if let Err(e) = self.raw.mut_store().record_incarnation(id, incarnation) {
                    self.state_failure.get_or_insert(e);
                    return false;
                }
                true
            }
            Some(seen) => {
                let reason = if seen == REMOVED {
                    format!("member {id} was removed from the cluster; start a new node with --join and a new --node-id")
                } else {
                    format!("member {id} is known with another identity: {}", lost_state(id))
                };
                if !self.refused.contains(&(id, incarnation)) {
                    log::warn!("refused a connection of {reason}");
                    self.refused.push((id, incarnation));
                }
                if let Some(addr) = self.addrs.get(&id).and_then(|a| a.parse().ok()) {
                    self.dialer.send_once(addr, Control::Refused(reason));
                }
                false
            }
        }
    }

    /// Stops this node if `message` shows it lost Raft state that a peer relied on: a
    /// heartbeat committing entries this node does not have (its leader counted them as
    /// stored here) — a wiped member started again under its old id. Raft itself would
    /// panic on that heartbeat.
    pub(super) fn refuse_if_state_lost(&self, message: &Message) {
        let last = self.raw.raft.raft_log.last_index();
        if message.get_msg_type() == MessageType::MsgHeartbeat && message.commit > last {
            log::error!(
                "this node may not take part in the cluster: the leader (member {}) counts entries up to {} \
                 as stored here, but this node's Raft log ends at {last}: {}; stopping",
                message.from,
                message.commit,
                lost_state(self.id)
            );
            std::process::exit(1);
        }
    }

    /// Whether `message` is an append of the log from its start to a node that is joining
    /// (no voters yet): dropped, since the first members are in no entry and applying the
    /// log from index 1 would give this node a wrong configuration. It must start from a
    /// snapshot, which every member takes (and compacts its log to) when it adds a member.
    pub(super) fn entries_before_a_snapshot(&self, message: &Message) -> bool {
        let joining = self.raw.raft.prs().conf().voters().ids().is_empty();
        let dropped = joining
            && message.get_msg_type() == MessageType::MsgAppend
            && message.index == 0
            && !message.entries.is_empty();
        if dropped {
            log::warn!(
                "dropped entries from index 1 sent by member {}: waiting for a snapshot",
                message.from
            );
        }
        dropped
    }

    /// A new node asks to be added (`--join`): proposed as an `AddNode`, or refused if its
    /// id is or was another node's.
    pub(super) fn on_join(&mut self, id: u64, addr: &str, incarnation: u64) {
        let known = self.raw.store().known_incarnation(id);
        let refusal = if id == 0 {
            Some("node id 0 is not allowed".to_string())
        } else if known == Some(REMOVED) {
            Some(format!("id {id} belonged to a member that was removed; join with a new --node-id"))
        } else if self.addrs.contains_key(&id) {
            match known {
                // Asked again while the snapshot is on its way.
                Some(seen) if seen == incarnation => return,
                // Added by `cluster add`, which does not know the incarnation: this is it.
                None | Some(0) => {
                    if let Err(e) = self.raw.mut_store().record_incarnation(id, incarnation) {
                        self.state_failure.get_or_insert(e);
                    }
                    return;
                }
                Some(_) => {}
            }
            Some(format!(
                "member {id} is already in the cluster (this node's Raft state was lost or wiped?): \
                 join with a new --node-id, then `cluster remove {id}`"
            ))
        } else {
            cluster::resolve_peer(id, addr, self.dialer.secret.is_some()).err()
        };
        let Ok(target) = addr.parse() else {
            log::warn!("join request of node {id} with an unusable address {addr}");
            return;
        };
        if let Some(reason) = refusal {
            log::warn!("refused the join request of node {id} at {addr}: {reason}");
            self.dialer.send_once(target, Control::Refused(reason));
            return;
        }
        let now = Instant::now();
        if self.joins_proposed.get(&id).is_some_and(|at| now.duration_since(*at) < Duration::from_secs(5)) {
            return;
        }
        self.joins_proposed.insert(id, now);
        let context =
            ChangeContext { origin: 0, boot: 0, request: 0, incarnation, addr: Some(addr.to_string()) };
        match self.propose_conf_change(ConfChangeType::AddNode, id, &context) {
            Ok(()) => log::info!("node {id} at {addr} asks to join: proposed adding it"),
            Err(e) => log::info!("node {id} at {addr} asks to join, not proposed yet: {e}"),
        }
    }

    pub(super) fn propose_conf_change(
        &mut self,
        kind: ConfChangeType,
        id: u64,
        context: &ChangeContext,
    ) -> Result<(), String> {
        if self.raw.raft.leader_id == raft::INVALID_ID {
            return Err("no leader".into());
        }
        let mut change = ConfChange::default();
        change.set_change_type(kind);
        change.node_id = id;
        change.context = context.encode().into();
        self.raw.propose_conf_change(context.encode(), change).map_err(|e| e.to_string())
    }

    /// `cluster add/remove` on this node: checked, then proposed; returns the request to
    /// answer once it is applied.
    pub(super) fn propose_change(&mut self, change: Change) -> Result<u64, String> {
        let request = self.next_request;
        self.next_request += 1;
        let mut context =
            ChangeContext { origin: self.id, boot: self.boot, request, incarnation: 0, addr: None };
        let (kind, id) = match &change {
            Change::Add { id, addr } => {
                if self.addrs.contains_key(id) {
                    return Err(format!("member {id} is already in the cluster"));
                }
                if self.raw.store().known_incarnation(*id) == Some(REMOVED) {
                    return Err(format!("id {id} belonged to a removed member and may not be used again"));
                }
                cluster::resolve_peer(*id, addr, self.dialer.secret.is_some())?;
                context.addr = Some(addr.clone());
                (ConfChangeType::AddNode, *id)
            }
            Change::Remove { id } => {
                if !self.addrs.contains_key(id) {
                    return Err(format!("no member {id}"));
                }
                if self.addrs.len() == 1 {
                    return Err("the last member cannot be removed".into());
                }
                (ConfChangeType::RemoveNode, *id)
            }
        };
        self.propose_conf_change(kind, id, &context)?;
        log::info!("proposed to {change}");
        Ok(request)
    }

    /// Applies a committed configuration change: Raft's voters, the members' addresses and
    /// senders, the identities; answers the node that asked.
    pub(super) fn apply_conf_change(&mut self, entry: &Entry) {
        let Ok(change) = ConfChange::parse_from_bytes(&entry.data) else {
            log::error!("configuration change entry {} skipped: undecodable", entry.index);
            return;
        };
        let context = ChangeContext::decode(&entry.context);
        let id = change.node_id;
        let outcome = self.raw.apply_conf_change(&change).map_err(|e| e.to_string()).and_then(|conf| {
            let written = self.record_change(&change, context.as_ref(), &conf);
            written.map_err(|e| {
                let message = e.to_string();
                self.state_failure.get_or_insert(e);
                message
            })
        });
        match &outcome {
            Ok(()) => log::info!(
                "configuration change {} applied: {:?} member {id}; members now {}",
                entry.index,
                change.get_change_type(),
                cluster::format_members(&self.addrs)
            ),
            Err(e) => log::warn!("configuration change {} not applied: {e}", entry.index),
        }
        if let Some(context) = context.filter(|c| c.origin == self.id && c.boot == self.boot) {
            if let Some(pending) = self.pending_changes.remove(&context.request) {
                pending.reply.send(outcome);
            }
        }
    }

    pub(super) fn record_change(
        &mut self,
        change: &ConfChange,
        context: Option<&ChangeContext>,
        conf: &raft::eraftpb::ConfState,
    ) -> std::io::Result<()> {
        let id = change.node_id;
        match change.get_change_type() {
            ConfChangeType::AddNode => {
                let addr = context.and_then(|c| c.addr.clone()).unwrap_or_default();
                let incarnation = context.map_or(0, |c| c.incarnation);
                if incarnation != 0 && self.raw.store().known_incarnation(id).is_none() {
                    self.raw.mut_store().record_incarnation(id, incarnation)?;
                }
                self.addrs.insert(id, addr);
                // The new member is sent a snapshot that already counts it.
                self.snapshot_now = true;
            }
            ConfChangeType::RemoveNode => {
                self.addrs.remove(&id);
                self.raw.mut_store().record_incarnation(id, REMOVED)?;
                if id == self.id {
                    log::warn!("this node was removed from the cluster: it takes no further part");
                }
            }
            ConfChangeType::AddLearnerNode => {}
        }
        self.connect_members();
        let storage = self.raw.mut_store();
        storage.set_conf(conf)?;
        storage.set_members(&cluster::format_members(&self.addrs))?;
        storage.sync_if_dirty()
    }

    /// Starts a sender to a node known only from its `hello` (this node is joining).
    pub(super) fn contact(&mut self, id: u64) {
        let Some(addr) = self.contacts.get(&id).and_then(|a| a.parse().ok()) else { return };
        match self.dialer.start(id, addr) {
            Ok(peer) => {
                self.peers.insert(id, peer);
            }
            Err(e) => log::warn!("cannot start the connection to node {id} at {addr}: {e}"),
        }
    }

    /// Starts a sender for every member without one, and drops those of former members.
    pub(super) fn connect_members(&mut self) {
        self.peers.retain(|id, _| self.addrs.contains_key(id));
        self.last_contact.retain(|id, _| self.addrs.contains_key(id));
        for (&id, addr) in &self.addrs {
            if id == self.id || self.peers.contains_key(&id) {
                continue;
            }
            match addr
                .parse()
                .map_err(|e| format!("{e}"))
                .and_then(|a| self.dialer.start(id, a).map_err(|e| e.to_string()))
            {
                Ok(peer) => {
                    self.peers.insert(id, peer);
                    self.last_contact.insert(id, Instant::now());
                }
                Err(e) => log::error!("cannot start the connection to member {id} at {addr}: {e}"),
            }
        }
    }
}
