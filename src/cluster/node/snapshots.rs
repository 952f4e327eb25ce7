//! The raft thread's side of snapshots: installing a leader's, taking this node's own
//! every `--snapshot-entries` entries (written off the thread) and compacting the log
//! behind it, and re-sending one a follower never took.

use std::time::Instant;

use raft::eraftpb::Snapshot;
use raft::{ProgressState, SnapshotStatus, StateRole, Storage as _};

use super::{Event, Node, SNAPSHOT_ANSWER_TIMEOUT};
use crate::cluster;
use crate::cluster::storage::write_snapshot_file;
use crate::store::StoreError;

impl Node {
    pub(super) fn install(&mut self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let started = Instant::now();
        let index = snapshot.get_metadata().index;
        // A snapshot this binary cannot read is corruption: every later entry depends on it.
        let (members, items) = cluster::snapshot::decode(&snapshot.data)
            .map_err(|e| StoreError::Io(format!("the snapshot of entry {index}: {e}")))?;
        let members = cluster::parse_members(members)
            .map_err(|e| StoreError::Io(format!("the snapshot of entry {index}: {e}")))?;
        self.store.replace_all(items)?;
        self.applied = index;
        if members != self.addrs {
            self.addrs = members;
            self.connect_members();
            let text = cluster::format_members(&self.addrs);
            if let Err(e) =
                self.raw.mut_store().set_members(&text).and_then(|()| self.raw.mut_store().sync_if_dirty())
            {
                self.state_failure.get_or_insert(e);
            }
        }
        if self.apply_failing {
            log::info!("snapshot installed: applying committed entries again");
            self.apply_failing = false;
        }
        log::info!(
            "installed the snapshot of entry {index}: {} keys in {} ms",
            self.store.stats().keys,
            started.elapsed().as_millis()
        );
        Ok(())
    }

    /// Every `--snapshot-entries` applied entries, or every as many entries as the store
    /// has keys if that is more: saves a snapshot of the store at the applied index
    /// (durably), then compacts the Raft log up to the previous snapshot, so a follower a
    /// little behind still catches up from the log. A snapshot costs time and bytes in
    /// proportion to the keys, so spacing them by the key count keeps its cost per write
    /// bounded (a 500,000-key store snapshotted every 10,000 writes would write 6 KB for
    /// each of them).
    pub(super) fn maybe_snapshot(&mut self) -> std::io::Result<()> {
        if let Some(e) = self.state_failure.take() {
            return Err(e);
        }
        let previous = self.raw.store().snapshot_index();
        let forced = std::mem::take(&mut self.snapshot_now) | self.raw.store().take_snapshot_wanted();
        if self.installing.is_some()
            || self.applied <= previous
            || (!forced && self.applied < previous + self.snapshot_entries.max(self.store.stats().keys))
        {
            return Ok(());
        }
        // After a member joined, the log is compacted up to this snapshot at once: the new
        // member must start from a snapshot that counts it (the first members are in no
        // entry of the log, so entries from index 1 would give it a wrong configuration).
        if !forced && self.snapshot_writing {
            return Ok(());
        }
        let started = Instant::now();
        let index = self.applied;
        let term = self.raw.store().term(index).map_err(std::io::Error::other)?;
        let members = cluster::format_members(&self.addrs);
        let mut snapshot = Snapshot::default();
        snapshot.data = cluster::snapshot::encode(&members, &self.store.export_items()).into();
        let meta = snapshot.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.raw.raft.prs().conf().to_conf_state());
        let meta = meta.clone();
        let bytes = snapshot.data.len();
        if forced {
            self.raw.mut_store().save_snapshot(&snapshot)?;
            return self.compact_behind(index, index, started, bytes);
        }
        // The periodic one is written and fsynced on a thread of its own: a large one would
        // hold the raft thread (and the leader's heartbeats) past the election timeout.
        let path = self.raw.store().snapshot_writing_path();
        let inbox = self.own_inbox.clone();
        self.snapshot_writing = true;
        std::thread::Builder::new().name("snapshot".into()).spawn(move || {
            let written = write_snapshot_file(&path, &snapshot);
            let _ =
                inbox.send(Event::SnapshotWritten { meta, written, compact_to: previous, started, bytes });
        })?;
        Ok(())
    }

    /// The snapshot of entry `index` is saved: the Raft log is compacted up to `compact_to`
    /// behind it.
    pub(super) fn compact_behind(
        &mut self,
        index: u64,
        compact_to: u64,
        started: Instant,
        bytes: usize,
    ) -> std::io::Result<()> {
        let storage = self.raw.mut_store();
        let saved = started.elapsed();
        let before = storage.log_bytes();
        storage.compact_to(compact_to.min(index))?;
        log::info!(
            "snapshot of entry {index} saved ({bytes} bytes, {} ms); Raft log compacted up to entry {compact_to}: \
             {before} -> {} bytes",
            saved.as_millis(),
            storage.log_bytes(),
        );
        Ok(())
    }

    /// As leader, reports a snapshot a follower never answered as failed, so Raft sends it
    /// again.
    pub(super) fn watch_snapshots(&mut self, now: Instant) {
        if self.raw.raft.state != StateRole::Leader {
            self.snapshots_sent.clear();
            return;
        }
        let prs = self.raw.raft.prs();
        let mut failed = Vec::new();
        self.snapshots_sent.retain(|id, sent| {
            let waiting = prs.get(*id).is_some_and(|p| p.state == ProgressState::Snapshot);
            if waiting && now.duration_since(*sent) > SNAPSHOT_ANSWER_TIMEOUT {
                failed.push(*id);
            }
            waiting && !failed.contains(id)
        });
        for id in failed {
            log::warn!("member {id} did not take its snapshot in time: sending it again");
            self.raw.report_snapshot(id, SnapshotStatus::Failure);
        }
    }
}
