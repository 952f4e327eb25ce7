//! The raft thread: the one thread that drives this node's Raft state machine.
//!
//! It waits on its inbox (peer messages from `transport`, proposals from client
//! connections) at most one tick (`TICK`) at a time, then handles Raft's `Ready` the way
//! raft-rs prescribes: messages a leader may send at once go out; new entries and the hard
//! state are appended to `storage` and synced; only then the messages that depend on them
//! (votes, append responses) are sent; committed entries are applied to the store in log
//! order.
//!
//! Proposals: a write becomes one entry ([`Proposal`]). With no known leader it waits (up
//! to `--cluster-timeout`); a follower's proposal is forwarded by Raft to the leader, which
//! stamps its own clock into the entry before appending it. Every node applies every entry
//! with the entry's stamp as `now` and CAS uniques from the entry's index
//! (`index << CAS_SHIFT`, one more per stored item), so every node reaches the same state;
//! the node that took the request answers its client once the entry is applied here. A write
//! not applied by its deadline is answered `no leader` if there is none, else as not
//! committed in time (it may still be applied: the outcome is then unknown, as after any
//! timeout).
//!
//! Expiry: the store of a member never drops expired items by its own clock; the leader
//! proposes an entry of no ops every `--expiry-sweep-secs`, and every member applies it as
//! a sweep with the entry's time, so all members decide later entries on the same items.
//!
//! Snapshots: after applying, every `--snapshot-entries` entries the node saves a snapshot
//! of its store at the applied index and compacts its Raft log behind the previous one
//! (`maybe_snapshot`, see `mod.rs`). A `Ready` that carries a leader's snapshot is saved in
//! `storage` before anything else and installed in the store (replacing its whole state)
//! before any entry after it is applied. As leader, a snapshot a follower has not taken
//! within `SNAPSHOT_ANSWER_TIMEOUT` is reported failed, so raft-rs sends it again.
//!
//! Members (`membership`): a configuration change entry is applied with raft-rs's
//! `apply_conf_change`; the new voters, the members' addresses and their identities go to
//! `storage`, senders to new members start and those to removed ones stop. A `hello` from a
//! member with an incarnation other than the one first seen, or a heartbeat that commits
//! entries this node lacks, marks a wiped member under its old id: refused / stopped.
//!
//! An entry (or a snapshot) the store cannot apply (a full disk) stops applying: it is
//! retried each tick and nothing after it is applied meanwhile, so the node never skips an
//! entry. Raft state
//! that cannot be written stops the process: a node that cannot keep its votes must not
//! vote.

mod members;
mod snapshots;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use raft::eraftpb::{Entry, EntryType, Message, MessageType, Snapshot, SnapshotMetadata};
use raft::{RawNode, StateRole};

use super::membership::{Change, Control};
use super::proposal::{restamp, Proposal};
use super::reply::Replier;
use super::storage::DiskStorage;
use super::transport::{Dialer, Peer};
use super::{MemberStatus, Role, Status};
use crate::store::decide::Inputs;
use crate::store::{unix_now, FsyncPolicy, Store, StoreError, WriteOp, WriteOutcome};

pub(crate) type Reply = Result<WriteOutcome, StoreError>;

/// One Raft tick. Elections time out after `ELECTION_TICKS` to twice that.
pub const TICK: Duration = Duration::from_millis(50);
pub const ELECTION_TICKS: usize = 10;
pub const HEARTBEAT_TICKS: usize = 2;

/// CAS uniques of the items an entry stores are `index << CAS_SHIFT` and up: an entry holds
/// fewer than `1 << CAS_SHIFT` ops (`Cluster::write_many` splits larger batches).
pub const CAS_SHIFT: u32 = 16;

/// A read fence waiting to be answered: `Ok` once this node has applied everything that
/// was committed when the fence was confirmed by a majority.
pub(crate) type FenceReply = Result<(), StoreError>;

/// A snapshot sent to a follower that has not answered for it in this long is reported
/// failed, so that Raft sends it again (a dropped message would otherwise leave the follower
/// waiting for ever: Raft sends nothing else to a member it is sending a snapshot to).
const SNAPSHOT_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a node whose Raft state is gone must not come back under its id, and what to do.
fn lost_state(id: u64) -> String {
    format!(
        "its Raft state was lost or wiped, and a member that forgot its votes and log must not come \
         back under its old id (Raft's safety would break); start it with --join <member> and a new \
         --node-id, then `cluster remove {id}`"
    )
}

/// The node's settings, from `ClusterConfig`.
pub struct Settings {
    pub fsync: FsyncPolicy,
    pub max_value_bytes: usize,
    pub snapshot_entries: u64,
    /// How often the leader proposes an expiry sweep (an entry of no ops).
    pub sweep_every: Duration,
    /// The index the store holds at start (its snapshot's, or 0).
    pub applied: u64,
    /// How this node connects to peers (secret, `hello`).
    pub dialer: Dialer,
    /// The raft thread's own inbox, for work finished on other threads.
    pub inbox: Sender<Event>,
}

/// What the raft thread is asked to do.
pub enum Event {
    Peer(Box<Message>),
    Propose {
        ops: Vec<WriteOp>,
        reply: Replier<Vec<Reply>>,
        deadline: Instant,
    },
    /// A linearizable read is about to be served: confirm, through ReadIndex, that this
    /// node's state is at least as new as everything committed before now.
    Fence {
        reply: Replier<FenceReply>,
        deadline: Instant,
    },
    /// A control frame from a peer connection, which waits for the verdict (`false`: the
    /// connection is closed).
    Control(Control, Sender<bool>),
    /// A snapshot written and fsynced off the raft thread (`maybe_snapshot`): to adopt,
    /// then compact the log up to `compact_to`.
    SnapshotWritten {
        meta: SnapshotMetadata,
        written: std::io::Result<()>,
        compact_to: u64,
        started: Instant,
        bytes: usize,
    },
    /// `cluster add/remove`: answered once the change is applied here.
    Change {
        change: Change,
        reply: Replier<Result<(), String>>,
        deadline: Instant,
    },
}

struct PendingChange {
    reply: Replier<Result<(), String>>,
    deadline: Instant,
}

struct Pending {
    reply: Replier<Vec<Reply>>,
    deadline: Instant,
}

struct PendingFence {
    reply: Replier<FenceReply>,
    deadline: Instant,
}

/// A ReadIndex request that has gone to the leader may be dropped (a leader that has not
/// committed an entry of its term yet drops it, as does a node with no leader): unanswered
/// after this long, its fences are asked again under a new context.
const FENCE_RETRY: Duration = Duration::from_millis(150);

/// The read fences of this node, batched: every fence that arrives while one ReadIndex
/// request is out waits for the next, so one heartbeat round confirms them all.
#[derive(Default)]
struct Fences {
    /// Not asked yet.
    new: Vec<PendingFence>,
    /// Groups of fences asked together, by group number, with the time they were last
    /// asked.
    asked: HashMap<u64, (Instant, Vec<PendingFence>)>,
    /// Every context (a counter) a group was asked under, to its group: a group asked again
    /// keeps its earlier requests, so an answer that is only slow (a round trip longer than
    /// `FENCE_RETRY`) still confirms it.
    contexts: HashMap<u64, u64>,
    /// Confirmed at a commit index, answered once that index is applied here.
    confirmed: Vec<(u64, PendingFence)>,
    next_context: u64,
}

impl Fences {
    /// Asks for a read index for the fences that wait, once there is a leader to ask, and
    /// again for those whose request went unanswered for `FENCE_RETRY`.
    fn ask(&mut self, raw: &mut RawNode<DiskStorage>, now: Instant) {
        if raw.raft.leader_id == raft::INVALID_ID {
            return;
        }
        for (&group, (at, _)) in self.asked.iter_mut() {
            if now.duration_since(*at) >= FENCE_RETRY {
                *at = now;
                self.next_context += 1;
                self.contexts.insert(self.next_context, group);
                raw.read_index(self.next_context.to_be_bytes().to_vec());
            }
        }
        if self.new.is_empty() {
            return;
        }
        self.next_context += 1;
        self.contexts.insert(self.next_context, self.next_context);
        raw.read_index(self.next_context.to_be_bytes().to_vec());
        self.asked.insert(self.next_context, (now, std::mem::take(&mut self.new)));
    }

    /// Takes the read indexes Raft confirmed.
    fn confirm(&mut self, states: &[raft::ReadState]) {
        for state in states {
            let Ok(context) = <[u8; 8]>::try_from(&state.request_ctx[..]) else { continue };
            let Some(group) = self.contexts.remove(&u64::from_be_bytes(context)) else { continue };
            if let Some((_, fences)) = self.asked.remove(&group) {
                self.confirmed.extend(fences.into_iter().map(|fence| (state.index, fence)));
            }
        }
    }

    /// Answers the confirmed fences whose index this node has applied.
    fn release(&mut self, applied: u64) {
        self.confirmed.retain(|(index, fence)| {
            if *index > applied {
                return true;
            }
            fence.reply.send(Ok(()));
            false
        });
    }

    /// Answers the fences whose deadline has passed with `why`.
    fn expire(&mut self, now: Instant, why: &str) {
        let expired = |fence: &PendingFence| {
            if fence.deadline > now {
                return false;
            }
            fence.reply.send(Err(StoreError::Unavailable(why.to_string())));
            true
        };
        self.new.retain(|f| !expired(f));
        self.confirmed.retain(|(_, f)| !expired(f));
        for (_, fences) in self.asked.values_mut() {
            fences.retain(|f| !expired(f));
        }
        self.asked.retain(|_, (_, fences)| !fences.is_empty());
        let asked = &self.asked;
        self.contexts.retain(|_, group| asked.contains_key(group));
    }
}

pub struct Node {
    raw: RawNode<DiskStorage>,
    id: u64,
    boot: u64,
    store: Arc<Store>,
    peers: HashMap<u64, Peer>,
    /// Every member's peer address.
    addrs: BTreeMap<u64, String>,
    inbox: Receiver<Event>,
    status: Arc<Mutex<Status>>,
    fsync: FsyncPolicy,
    max_value_bytes: usize,
    next_request: u64,
    pending: HashMap<u64, Pending>,
    fences: Fences,
    /// Encoded proposals waiting for a leader, oldest first.
    waiting: VecDeque<(u64, Vec<u8>)>,
    /// A leader's snapshot saved in the Raft state but not yet installed in the store (a
    /// full disk): installed before any entry after it is applied.
    installing: Option<Snapshot>,
    /// Committed entries not yet applied (normally empty between iterations).
    to_apply: VecDeque<Entry>,
    snapshot_entries: u64,
    sweep_every: Duration,
    /// When this node, as leader, proposes the next expiry sweep.
    next_sweep: Instant,
    /// Followers sent a snapshot, and when.
    snapshots_sent: HashMap<u64, Instant>,
    applied: u64,
    apply_failing: bool,
    last_contact: HashMap<u64, Instant>,
    /// Members this leader has logged as not answering.
    silent: Vec<u64>,
    seen_leader: (u64, u64),
    dialer: Dialer,
    pending_changes: HashMap<u64, PendingChange>,
    /// `--join` requests proposed, and when (a node asks again every second).
    joins_proposed: HashMap<u64, Instant>,
    /// Take a snapshot after this round whatever the count (a member was added).
    snapshot_now: bool,
    /// Peer addresses of nodes that are not (yet) members, from their `hello`: where a
    /// joining node sends its answers to the leader.
    contacts: HashMap<u64, String>,
    /// Identities refused and logged (each logged once).
    refused: Vec<(u64, u64)>,
    /// The own inbox, and whether a snapshot is being written off the raft thread.
    own_inbox: Sender<Event>,
    snapshot_writing: bool,
    /// Raft state that could not be written while applying: stops the node.
    state_failure: Option<std::io::Error>,
}

impl Node {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        raw: RawNode<DiskStorage>,
        id: u64,
        store: Arc<Store>,
        peers: HashMap<u64, Peer>,
        addrs: BTreeMap<u64, String>,
        inbox: Receiver<Event>,
        status: Arc<Mutex<Status>>,
        settings: Settings,
    ) -> Node {
        let boot = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let started = Instant::now();
        let last_contact = peers.keys().map(|&peer| (peer, started)).collect();
        Node {
            raw,
            id,
            boot,
            store,
            peers,
            addrs,
            inbox,
            status,
            fsync: settings.fsync,
            max_value_bytes: settings.max_value_bytes,
            next_request: 1,
            pending: HashMap::new(),
            fences: Fences::default(),
            waiting: VecDeque::new(),
            installing: None,
            to_apply: VecDeque::new(),
            snapshot_entries: settings.snapshot_entries,
            sweep_every: settings.sweep_every,
            next_sweep: started + settings.sweep_every,
            snapshots_sent: HashMap::new(),
            applied: settings.applied,
            apply_failing: false,
            last_contact,
            silent: Vec::new(),
            seen_leader: (0, 0),
            dialer: settings.dialer,
            pending_changes: HashMap::new(),
            joins_proposed: HashMap::new(),
            snapshot_now: false,
            refused: Vec::new(),
            contacts: HashMap::new(),
            own_inbox: settings.inbox,
            snapshot_writing: false,
            state_failure: None,
        }
    }

    /// Runs until the process ends; returns only if the Raft state cannot be written.
    pub fn run(mut self) -> std::io::Result<()> {
        let mut next_tick = Instant::now() + TICK;
        let mut next_sync = Instant::now() + Duration::from_secs(1);
        loop {
            let now = Instant::now();
            match self.inbox.recv_timeout(next_tick.saturating_duration_since(now)) {
                Ok(event) => {
                    self.handle(event);
                    // Take whatever else is queued before the next Ready: one sync for all.
                    while let Ok(event) = self.inbox.try_recv() {
                        self.handle(event);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            let now = Instant::now();
            if now >= next_tick {
                self.raw.tick();
                next_tick = now + TICK;
                self.watch_members(now);
                self.watch_snapshots(now);
                self.propose_sweep(now);
                self.expire(now);
                if self.apply_failing {
                    self.apply_queue();
                }
            }
            if self.fsync == FsyncPolicy::Everysec && now >= next_sync {
                self.raw.mut_store().sync_if_dirty()?;
                next_sync = now + Duration::from_secs(1);
            }
            self.propose_waiting();
            self.fences.ask(&mut self.raw, now);
            self.on_ready()?;
            self.maybe_snapshot()?;
            self.note_leader();
            self.publish_status();
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Peer(mut message) => {
                let from = message.from;
                self.last_contact.insert(from, Instant::now());
                if let Some(at) = self.silent.iter().position(|&id| id == from) {
                    self.silent.swap_remove(at);
                    log::info!("member {from} answers again");
                }
                if message.get_msg_type() == MessageType::MsgPropose
                    && self.raw.raft.state == StateRole::Leader
                {
                    // A follower's forwarded proposal: the leader's clock goes into the log.
                    let stamp = unix_now();
                    let writes =
                        message.entries.iter_mut().filter(|e| e.get_entry_type() == EntryType::EntryNormal);
                    for entry in writes {
                        let mut data = entry.data.to_vec();
                        restamp(&mut data, stamp);
                        entry.data = data.into();
                    }
                }
                self.refuse_if_state_lost(&message);
                if self.entries_before_a_snapshot(&message) {
                    return;
                }
                if let Err(e) = self.raw.step(*message) {
                    log::debug!("raft message from {from} not taken: {e}");
                }
            }
            Event::Propose { ops, reply, deadline } => {
                let request = self.next_request;
                self.next_request += 1;
                let data =
                    Proposal { stamp: unix_now(), origin: self.id, boot: self.boot, request, ops }.encode();
                self.pending.insert(request, Pending { reply, deadline });
                self.waiting.push_back((request, data));
            }
            Event::Fence { reply, deadline } => self.fences.new.push(PendingFence { reply, deadline }),
            Event::Control(control, verdict) => {
                let accepted = self.on_control(control);
                let _ = verdict.send(accepted);
            }
            Event::SnapshotWritten { meta, written, compact_to, started, bytes } => {
                self.snapshot_writing = false;
                let index = meta.index;
                let adopted = written.and_then(|()| self.raw.mut_store().adopt_written_snapshot(meta));
                let compacted = adopted.and_then(|adopted| match adopted {
                    true => self.compact_behind(index, compact_to, started, bytes),
                    false => Ok(()), // a leader's newer snapshot was installed meanwhile
                });
                if let Err(e) = compacted {
                    self.state_failure.get_or_insert(e);
                }
            }
            Event::Change { change, reply, deadline } => match self.propose_change(change) {
                Ok(request) => {
                    self.pending_changes.insert(request, PendingChange { reply, deadline });
                }
                Err(e) => reply.send(Err(e)),
            },
        }
    }

    /// Proposes every waiting write as one Raft message of many entries, so the leader
    /// appends them together and sends each follower one append for all of them (a
    /// proposal per entry would cost a message per follower per write).
    fn propose_waiting(&mut self) {
        if self.raw.raft.leader_id == raft::INVALID_ID || self.waiting.is_empty() {
            return;
        }
        let stamp = (self.raw.raft.state == StateRole::Leader).then(unix_now);
        let pending = &self.pending;
        let waiting: Vec<(u64, Vec<u8>)> =
            self.waiting.drain(..).filter(|(request, _)| pending.contains_key(request)).collect();
        if waiting.is_empty() {
            return;
        }
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgPropose);
        message.from = self.id;
        message.entries = waiting
            .iter()
            .map(|(_, data)| {
                let mut data = data.clone();
                if let Some(stamp) = stamp {
                    restamp(&mut data, stamp);
                }
                Entry { data: data.into(), ..Default::default() }
            })
            .collect::<Vec<_>>()
            .into();
        if let Err(e) = self.raw.step(message) {
            log::debug!("{} proposals not taken yet: {e}", waiting.len());
            self.waiting.extend(waiting);
        }
    }

    /// As leader, proposes an expiry sweep every `sweep_every`: an entry of no ops, which
    /// every member applies as a sweep with the entry's time (the store never sweeps by its
    /// own clock on a cluster: members would drop items at different points of the log and
    /// could then decide a later `add` or `cas` differently).
    fn propose_sweep(&mut self, now: Instant) {
        if self.raw.raft.state != StateRole::Leader || now < self.next_sweep {
            return;
        }
        self.next_sweep = now + self.sweep_every;
        // Request 0 is never pending: nobody waits for the answer.
        let sweep =
            Proposal { stamp: unix_now(), origin: self.id, boot: self.boot, request: 0, ops: Vec::new() };
        if let Err(e) = self.raw.propose(Vec::new(), sweep.encode()) {
            log::debug!("expiry sweep not proposed: {e}");
        }
    }

    /// Answers the writes and read fences whose deadline has passed.
    fn expire(&mut self, now: Instant) {
        let leaderless = self.raw.raft.leader_id == raft::INVALID_ID;
        self.pending.retain(|_, pending| {
            if pending.deadline > now {
                return true;
            }
            let why = if leaderless {
                "no leader".to_string()
            } else {
                "not committed within --cluster-timeout (it may still be applied)".to_string()
            };
            pending.reply.send(vec![Err(StoreError::Unavailable(why))]);
            false
        });
        self.pending_changes.retain(|_, pending| {
            if pending.deadline > now {
                return true;
            }
            let why = if leaderless {
                "no leader"
            } else {
                "not applied within --cluster-timeout (it may still be)"
            };
            pending.reply.send(Err(why.to_string()));
            false
        });
        let why = if leaderless {
            "no leader"
        } else {
            "read not confirmed by a majority within --cluster-timeout"
        };
        self.fences.expire(now, why);
    }

    fn send(&mut self, messages: Vec<Message>) {
        for message in messages {
            if message.get_msg_type() == MessageType::MsgSnapshot {
                let meta = message.get_snapshot().get_metadata();
                log::info!(
                    "sending member {} the snapshot of entry {} ({} bytes)",
                    message.to,
                    meta.index,
                    message.get_snapshot().data.len()
                );
                self.snapshots_sent.insert(message.to, Instant::now());
            }
            if !self.peers.contains_key(&message.to) {
                self.contact(message.to);
            }
            match self.peers.get(&message.to) {
                Some(peer) => peer.send(message),
                None => log::debug!("raft message for unknown member {}", message.to),
            }
        }
    }

    fn on_ready(&mut self) -> std::io::Result<()> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        if !ready.messages().is_empty() {
            self.send(ready.take_messages());
        }
        self.fences.confirm(ready.read_states());
        if !ready.snapshot().is_empty() {
            // A leader's snapshot replaces this node's log and state: saved first (so a
            // restart finds it), installed in the store before the entries after it.
            let snapshot = ready.snapshot().clone();
            self.raw.mut_store().install_snapshot(&snapshot)?;
            log::info!(
                "received the snapshot of entry {} ({} bytes)",
                snapshot.get_metadata().index,
                snapshot.data.len()
            );
            self.to_apply.clear();
            self.installing = Some(snapshot);
        }
        self.to_apply.extend(ready.take_committed_entries());
        let storage = self.raw.mut_store();
        storage.append(ready.entries())?;
        if let Some(hard) = ready.hs() {
            storage.set_hard_state(hard)?;
        }
        storage.persist()?;
        self.send(ready.take_persisted_messages());
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit)?;
        }
        self.send(light.take_messages());
        self.to_apply.extend(light.take_committed_entries());
        self.apply_queue();
        Ok(())
    }

    /// Installs a received snapshot in the store, then applies committed entries in order,
    /// until one fails.
    fn apply_queue(&mut self) {
        if let Some(snapshot) = self.installing.take() {
            if let Err(e) = self.install(&snapshot) {
                if !self.apply_failing {
                    log::error!("cannot install the snapshot ({e}); retrying every tick");
                    self.apply_failing = true;
                }
                self.installing = Some(snapshot);
                return;
            }
        }
        while let Some(entry) = self.to_apply.pop_front() {
            match self.apply(&entry) {
                Ok(()) => {
                    if self.apply_failing {
                        log::info!("applying committed entries again from {}", entry.index);
                        self.apply_failing = false;
                    }
                    self.applied = entry.index;
                }
                Err(e) => {
                    if !self.apply_failing {
                        log::error!(
                            "cannot apply committed entry {} ({e}); retrying every tick",
                            entry.index
                        );
                        self.apply_failing = true;
                    }
                    self.to_apply.push_front(entry);
                    break;
                }
            }
        }
        if self.applied > self.raw.raft.raft_log.applied {
            self.raw.advance_apply_to(self.applied);
        }
        self.fences.release(self.applied);
    }

    fn apply(&mut self, entry: &Entry) -> Result<(), StoreError> {
        match entry.get_entry_type() {
            EntryType::EntryNormal => {}
            EntryType::EntryConfChange => {
                self.apply_conf_change(entry);
                return Ok(());
            }
            EntryType::EntryConfChangeV2 => {
                log::warn!(
                    "configuration change entry {} ignored: only simple changes are made",
                    entry.index
                );
                return Ok(());
            }
        }
        if entry.data.is_empty() {
            return Ok(()); // a new leader's empty entry
        }
        let proposal = match Proposal::decode(&entry.data) {
            Ok(proposal) => proposal,
            Err(e) => {
                // Every member runs the same decoder, so every member skips it alike.
                log::error!("entry {} skipped: {e}", entry.index);
                return Ok(());
            }
        };
        if proposal.ops.is_empty() {
            // The leader's expiry sweep: every member drops what expired by the entry's time
            // at this point of the log, so later entries are decided on the same items.
            self.store.sweep_expired_at(proposal.stamp);
            return Ok(());
        }
        let inputs = Inputs {
            now: proposal.stamp,
            first_cas: entry.index << CAS_SHIFT,
            max_value_bytes: self.max_value_bytes,
        };
        let outcomes = self.store.apply_committed(&proposal.ops, inputs)?;
        if proposal.origin == self.id && proposal.boot == self.boot {
            if let Some(pending) = self.pending.remove(&proposal.request) {
                pending.reply.send(outcomes.into_iter().map(Ok).collect());
            }
        }
        Ok(())
    }

    /// As leader, logs a member that stops answering within the election timeout (and
    /// `handle` logs it when it answers again).
    fn watch_members(&mut self, now: Instant) {
        if self.raw.raft.state != StateRole::Leader {
            return;
        }
        let timeout = TICK * ELECTION_TICKS as u32;
        for (&id, &last) in &self.last_contact {
            if now.duration_since(last) > timeout && !self.silent.contains(&id) {
                log::warn!("member {id} has not answered for {} ms", now.duration_since(last).as_millis());
                self.silent.push(id);
            }
        }
    }

    fn note_leader(&mut self) {
        let seen = (self.raw.raft.leader_id, self.raw.raft.term);
        if seen != self.seen_leader {
            if seen.0 != self.seen_leader.0 {
                match seen.0 {
                    raft::INVALID_ID => log::info!("no leader (term {})", seen.1),
                    leader if leader == self.id => {
                        log::info!("this node ({leader}) is the leader, term {}", seen.1)
                    }
                    leader => log::info!("leader is node {leader}, term {}", seen.1),
                }
            }
            self.seen_leader = seen;
        }
    }

    /// Publishes this node's view for `cluster` and `stats` (also once before the thread
    /// starts, so a client never sees an empty member list).
    pub fn publish_status(&self) {
        let raft = &self.raw.raft;
        let role = Role::of(raft.state);
        let now = Instant::now();
        let members = self
            .addrs
            .iter()
            .map(|(id, addr)| {
                let member_role = if *id == self.id {
                    role
                } else if *id == raft.leader_id {
                    Role::Leader
                } else {
                    Role::Follower
                };
                let matched = if *id == self.id {
                    raft.raft_log.last_index()
                } else if role == Role::Leader {
                    raft.prs().get(*id).map_or(0, |p| p.matched)
                } else {
                    0
                };
                let last_contact_ms = match self.last_contact.get(id) {
                    Some(at) => now.duration_since(*at).as_millis() as u64,
                    None => 0, // this node
                };
                MemberStatus { id: *id, addr: addr.clone(), role: member_role, matched, last_contact_ms }
            })
            .collect();
        *self.status.lock() = Status {
            id: self.id,
            role,
            leader: raft.leader_id,
            term: raft.term,
            commit: raft.raft_log.committed,
            applied: self.applied,
            members,
        };
    }
}
