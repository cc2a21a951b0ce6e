//! What the store knows of its operations without reading the database: their published
//! state, and the writes queued for them and not yet published.
//!
//! - **Published.** The current state of every unfinished operation, and of the last few
//!   thousand that ended, as last made durable, so that the runtime's reads of running
//!   operations (and a waiter's read of the result) never touch the disk. Only the syncer
//!   changes it, after the sync; it is filled from the database at open, for recovery. This
//!   holds because one host owns the file.
//! - **Queued.** For each operation with writes queued and not yet published: how many, and
//!   the revision they leave it at, when that is certain. Every write to an operation goes
//!   through the writer's one queue, in order, so an update whose expected revision is that
//!   one will apply, and one whose expected revision is not will conflict: the compare-and-set
//!   is decided here, at enqueue, as the commit will decide it. A handler's `started` and
//!   progress are answered then, without waiting for the writer.
//!
//! The revision is uncertain (and updates are decided by the commit alone) while a create is
//! queued whose outcome is unknown, for an operation the cache does not hold, and after a write
//! failed in SQLite, until every write queued before is published.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Utc};
use opshost_api::Snapshot;
use opshost_runtime::store::StoredOperation;

/// Finished operations kept in the cache.
const FINISHED_CACHED: usize = 4096;

/// See the module docs.
#[derive(Default)]
pub(crate) struct Cache {
    entries: HashMap<String, StoredOperation>,
    finished: VecDeque<String>,
    queued: HashMap<String, Queued>,
}

/// Writes queued for one operation and not yet published.
struct Queued {
    writes: usize,
    /// The revision once they all applied, when certain.
    revision: Option<u64>,
}

impl Cache {
    /// The operation as published, if cached.
    pub(crate) fn get(&self, id: &str) -> Option<StoredOperation> {
        self.entries.get(id).cloned()
    }

    /// Whether writes to `id` are queued and not yet published: the database may show them
    /// before they are durable.
    pub(crate) fn is_queued(&self, id: &str) -> bool {
        self.queued.contains_key(id)
    }

    /// Counts a write to `id` queued whose outcome only its commit decides (a create): so are
    /// the updates queued after it, until it commits.
    pub(crate) fn queue_undecided(&mut self, id: &str) {
        let queued = self.queued.entry(id.to_owned()).or_insert(Queued {
            writes: 0,
            revision: None,
        });
        queued.writes += 1;
        queued.revision = None;
    }

    /// Counts an update to `next` queued; answers whether it will certainly apply.
    pub(crate) fn queue_update(&mut self, next: &Snapshot) -> bool {
        let base = match self.queued.get(&next.id) {
            Some(queued) => queued.revision,
            None => self.entries.get(&next.id).map(|s| s.snapshot.revision),
        };
        let certain = base.is_some_and(|base| base.checked_add(1) == Some(next.revision));
        let queued = self.queued.entry(next.id.clone()).or_insert(Queued {
            writes: 0,
            revision: base,
        });
        queued.writes += 1;
        // An update expecting another revision than a certain one conflicts: nothing changes.
        if certain {
            queued.revision = Some(next.revision);
        }
        certain
    }

    /// A create of `id` committed as new, at `revision`: updates queued from now on are decided
    /// against it, if nothing else was queued for `id` meanwhile.
    pub(crate) fn create_committed(&mut self, id: &str, revision: u64) {
        if let Some(queued) = self.queued.get_mut(id)
            && queued.writes == 1
        {
            queued.revision = Some(revision);
        }
    }

    /// A write to `id` did not apply as decided at enqueue (it failed in SQLite): the writes
    /// queued after it are decided by their commit.
    pub(crate) fn write_failed(&mut self, id: &str) {
        if let Some(queued) = self.queued.get_mut(id) {
            queued.revision = None;
        }
    }

    /// A queued write to `id` is published, or refused: forgotten once it was the last.
    pub(crate) fn settled(&mut self, id: &str) {
        if let Some(queued) = self.queued.get_mut(id) {
            queued.writes = queued.writes.saturating_sub(1);
            if queued.writes == 0 {
                self.queued.remove(id);
            }
        }
    }

    pub(crate) fn created(&mut self, stored: StoredOperation) {
        self.entries.insert(stored.snapshot.id.clone(), stored);
    }

    pub(crate) fn updated(&mut self, snapshot: Snapshot) {
        let terminal = snapshot.is_terminal();
        let id = snapshot.id.clone();
        match self.entries.get_mut(&id) {
            Some(stored) => stored.snapshot = snapshot,
            // Not cached (a finished operation evicted earlier): the database answers.
            None => return,
        }
        if terminal {
            self.finished.push_back(id);
            while self.finished.len() > FINISHED_CACHED {
                if let Some(old) = self.finished.pop_front() {
                    self.entries.remove(&old);
                }
            }
        }
    }

    pub(crate) fn purged(&mut self, cutoff: DateTime<Utc>) {
        self.entries.retain(|_, stored| {
            stored
                .snapshot
                .completed_at
                .is_none_or(|completed| completed >= cutoff)
        });
        let entries = &self.entries;
        self.finished.retain(|id| entries.contains_key(id));
    }
}

#[cfg(test)]
mod tests {
    use opshost_api::OperationState;
    use opshost_runtime::store::Owner;

    use super::*;

    fn at(revision: u64) -> Snapshot {
        let mut snapshot = Snapshot::accepted("op".into(), "s".into(), "Op".into(), "v1".into());
        snapshot.revision = revision;
        snapshot.state = OperationState::Running;
        snapshot
    }

    fn cached(revision: u64) -> Cache {
        let mut cache = Cache::default();
        cache.created(StoredOperation {
            snapshot: at(revision),
            input: None,
            owner: Owner::default(),
        });
        cache
    }

    #[test]
    fn an_update_on_the_published_revision_is_certain_and_the_next_one_builds_on_it() {
        let mut cache = cached(3);
        assert!(cache.queue_update(&at(4)));
        assert!(cache.queue_update(&at(5)));
        assert!(cache.is_queued("op"));
    }

    #[test]
    fn an_update_on_another_revision_is_left_to_the_commit_and_changes_nothing_queued() {
        let mut cache = cached(3);
        assert!(!cache.queue_update(&at(6)));
        assert!(cache.queue_update(&at(4)));
        assert!(!cache.queue_update(&at(4)));
        assert!(cache.queue_update(&at(5)));
    }

    #[test]
    fn an_operation_the_cache_does_not_hold_is_decided_at_commit() {
        let mut cache = Cache::default();
        assert!(!cache.queue_update(&at(2)));
        assert!(!cache.queue_update(&at(3)));
    }

    #[test]
    fn a_create_is_certain_only_once_committed_and_alone_in_the_queue() {
        let mut cache = Cache::default();
        cache.queue_undecided("op");
        assert!(!cache.queue_update(&at(2)));
        cache.create_committed("op", 1);
        assert!(
            !cache.queue_update(&at(2)),
            "an update queued before the commit"
        );

        let mut cache = Cache::default();
        cache.queue_undecided("op");
        cache.create_committed("op", 1);
        assert!(cache.queue_update(&at(2)));
    }

    #[test]
    fn a_failed_write_leaves_what_follows_to_the_commit_until_everything_queued_settles() {
        let mut cache = cached(3);
        assert!(cache.queue_update(&at(4)));
        cache.write_failed("op");
        assert!(!cache.queue_update(&at(5)));
        cache.settled("op");
        assert!(!cache.queue_update(&at(4)), "one write still queued");
        cache.settled("op");
        cache.settled("op");
        assert!(!cache.is_queued("op"));
        assert!(
            cache.queue_update(&at(4)),
            "decided on the published revision again"
        );
    }
}
