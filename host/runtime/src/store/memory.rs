//! The in-memory store: every operation's event log and signals in one mutex-guarded map.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use opshost_api::{DeploymentRecord, EventKind, LogLine, OperationEvent, Snapshot};
use serde_json::Value;

use super::{
    Change, ChangeCursor, CreateOutcome, DeploymentStore, Doorbell, Doorbells, ListFilter,
    OperationStore, Owner, Page, SignalOutcome, SignalRecord, StateCount, StoreError,
    StoredOperation, UpdateOutcome, is_unscoped,
};

struct Entry {
    input: Option<Value>,
    owner: Owner,
    events: Vec<(EventKind, Snapshot)>,
    signals: Vec<SignalRecord>,
    logs: Vec<LogLine>,
}

impl Entry {
    fn current(&self) -> &Snapshot {
        // An entry is created with its `Accepted` event and events are never removed.
        &self.events[self.events.len() - 1].1
    }

    fn stored(&self) -> StoredOperation {
        StoredOperation {
            snapshot: self.current().clone(),
            input: self.input.clone(),
            owner: self.owner.clone(),
        }
    }
}

#[derive(Default)]
struct State {
    entries: BTreeMap<String, Entry>,
    components: BTreeMap<String, Vec<u8>>,
    deployments: Vec<DeploymentRecord>,
    /// Every change by its number in the feed: the operation's id and the event's revision.
    feed: BTreeMap<u64, (String, u64)>,
    /// The number of the last change.
    fed: u64,
}

impl State {
    fn feed(&mut self, id: &str, revision: u64) {
        self.fed += 1;
        let seq = self.fed;
        self.feed.insert(seq, (id.to_owned(), revision));
    }
}

/// A store that keeps everything in process memory; for tests and embedding.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    bells: Doorbells,
    /// See [`OperationStore::holds_unscoped_keys`].
    unscoped: AtomicBool,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>, StoreError> {
        self.state
            .lock()
            .map_err(|_| StoreError::corrupt("memory store lock poisoned"))
    }
}

#[async_trait]
impl OperationStore for MemoryStore {
    async fn create(&self, operation: StoredOperation) -> Result<CreateOutcome, StoreError> {
        let mut state = self.lock()?;
        if let Some(entry) = state.entries.get(&operation.snapshot.id) {
            return Ok(CreateOutcome::Existing(entry.stored()));
        }
        if is_unscoped(&operation) {
            self.unscoped.store(true, Ordering::Relaxed);
        }
        let StoredOperation {
            snapshot,
            input,
            owner,
        } = operation;
        let id = snapshot.id.clone();
        state.entries.insert(
            id.clone(),
            Entry {
                input,
                owner,
                events: vec![(EventKind::Accepted, snapshot.clone())],
                signals: Vec::new(),
                logs: Vec::new(),
            },
        );
        state.feed(&id, 1);
        self.bells.ring(&id, false);
        Ok(CreateOutcome::Created(snapshot))
    }

    async fn load(&self, id: &str) -> Result<Option<StoredOperation>, StoreError> {
        let state = self.lock()?;
        Ok(state.entries.get(id).map(Entry::stored))
    }

    async fn update(&self, next: Snapshot, kind: EventKind) -> Result<UpdateOutcome, StoreError> {
        let mut state = self.lock()?;
        let Some(entry) = state.entries.get_mut(&next.id) else {
            return Err(StoreError::conflict(format!(
                "update of unknown operation `{}`",
                next.id
            )));
        };
        let current = entry.current();
        if current.revision + 1 != next.revision {
            return Ok(UpdateOutcome::Conflict(current.clone()));
        }
        entry.events.push((kind, next.clone()));
        state.feed(&next.id, next.revision);
        self.bells.changed(&next);
        Ok(UpdateOutcome::Updated(next))
    }

    async fn events_after(&self, id: &str, after: u64) -> Result<Vec<OperationEvent>, StoreError> {
        let state = self.lock()?;
        Ok(state
            .entries
            .get(id)
            .map(|entry| {
                entry
                    .events
                    .iter()
                    .filter(|(_, snapshot)| snapshot.revision > after)
                    .map(|(kind, snapshot)| OperationEvent::new(*kind, snapshot.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn append_signal(
        &self,
        id: &str,
        name: &str,
        payload: Value,
    ) -> Result<SignalOutcome, StoreError> {
        let mut state = self.lock()?;
        let Some(entry) = state.entries.get_mut(id) else {
            return Err(StoreError::conflict(format!(
                "signal to unknown operation `{id}`"
            )));
        };
        let current = entry.current().state;
        if current.is_terminal() {
            return Ok(SignalOutcome::Terminal(current));
        }
        let sequence = entry.signals.len() as u64 + 1;
        entry.signals.push(SignalRecord {
            sequence,
            name: name.to_owned(),
            payload,
        });
        self.bells.ring(id, false);
        Ok(SignalOutcome::Appended(sequence))
    }

    async fn signals_after(&self, id: &str, after: u64) -> Result<Vec<SignalRecord>, StoreError> {
        let state = self.lock()?;
        Ok(state
            .entries
            .get(id)
            .map(|entry| {
                entry
                    .signals
                    .iter()
                    .filter(|s| s.sequence > after)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn changes_after(
        &self,
        after: ChangeCursor,
        limit: usize,
    ) -> Result<Vec<Change>, StoreError> {
        let state = self.lock()?;
        let changes = state
            .feed
            .range(after.seq.saturating_add(1)..)
            .filter_map(|(&seq, (id, revision))| {
                let entry = state.entries.get(id)?;
                let index = usize::try_from(revision.checked_sub(1)?).ok()?;
                let (kind, snapshot) = entry.events.get(index)?;
                Some(Change {
                    cursor: ChangeCursor { epoch: 0, seq },
                    tenant: entry.owner.tenant.clone(),
                    event: OperationEvent::new(*kind, snapshot.clone()),
                })
            })
            .take(limit)
            .collect();
        Ok(changes)
    }

    async fn change_head(&self) -> Result<ChangeCursor, StoreError> {
        Ok(ChangeCursor {
            epoch: 0,
            seq: self.lock()?.fed,
        })
    }

    fn subscribe_changes(&self) -> tokio::sync::watch::Receiver<()> {
        self.bells.any()
    }

    fn holds_unscoped_keys(&self) -> bool {
        self.unscoped.load(Ordering::Relaxed)
    }

    async fn list(&self, filter: &ListFilter) -> Result<Page, StoreError> {
        let state = self.lock()?;
        let start = match &filter.after {
            Some(after) => std::ops::Bound::Excluded(after.clone()),
            None => std::ops::Bound::Unbounded,
        };
        let mut matching = state
            .entries
            .range((start, std::ops::Bound::Unbounded))
            .filter(|(_, entry)| {
                filter
                    .tenant
                    .as_deref()
                    .is_none_or(|tenant| entry.owner.tenant == tenant)
            })
            .map(|(_, entry)| entry.current())
            .filter(|s| {
                filter
                    .operation
                    .as_deref()
                    .is_none_or(|op| s.operation == op)
            })
            .filter(|s| filter.state.is_none_or(|state| s.state == state))
            .filter(|s| {
                filter
                    .id_prefix
                    .as_deref()
                    .is_none_or(|prefix| s.id.starts_with(prefix))
            })
            .filter(|s| filter.created_from.is_none_or(|from| s.created_at >= from))
            .filter(|s| {
                filter
                    .created_until
                    .is_none_or(|until| s.created_at < until)
            });
        let items: Vec<Snapshot> = matching.by_ref().take(filter.limit).cloned().collect();
        let next = match (matching.next(), items.last()) {
            (Some(_), Some(last)) => Some(last.id.clone()),
            _ => None,
        };
        Ok(Page { items, next })
    }

    async fn count_by_state(&self) -> Result<Vec<StateCount>, StoreError> {
        let state = self.lock()?;
        let mut counts: BTreeMap<(String, &'static str), StateCount> = BTreeMap::new();
        for entry in state.entries.values() {
            let current = entry.current();
            counts
                .entry((current.operation.clone(), current.state.as_str()))
                .or_insert_with(|| StateCount {
                    operation: current.operation.clone(),
                    state: current.state,
                    count: 0,
                })
                .count += 1;
        }
        Ok(counts.into_values().collect())
    }

    async fn unfinished(&self) -> Result<Vec<StoredOperation>, StoreError> {
        let state = self.lock()?;
        let mut unfinished: Vec<StoredOperation> = state
            .entries
            .values()
            .filter(|entry| !entry.current().is_terminal())
            .map(Entry::stored)
            .collect();
        unfinished.sort_by_key(|stored| stored.snapshot.created_at);
        Ok(unfinished)
    }

    async fn purge(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut state = self.lock()?;
        let before = state.entries.len();
        state.entries.retain(|_, entry| {
            entry
                .current()
                .completed_at
                .is_none_or(|completed| completed >= cutoff)
        });
        let State { entries, feed, .. } = &mut *state;
        feed.retain(|_, (id, _)| entries.contains_key(id));
        Ok((before - state.entries.len()) as u64)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn append_logs(&self, id: &str, lines: Vec<LogLine>) -> Result<(), StoreError> {
        let mut state = self.lock()?;
        if let Some(entry) = state.entries.get_mut(id) {
            for mut line in lines {
                line.seq = entry.logs.len() as u64 + 1;
                entry.logs.push(line);
            }
        }
        Ok(())
    }

    async fn logs_after(
        &self,
        id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogLine>, StoreError> {
        let state = self.lock()?;
        Ok(state.entries.get(id).map_or_else(Vec::new, |entry| {
            entry
                .logs
                .iter()
                .skip(usize::try_from(after).unwrap_or(usize::MAX))
                .take(limit)
                .cloned()
                .collect()
        }))
    }

    fn subscribe(&self, id: &str) -> Doorbell {
        self.bells.subscribe(id)
    }

    fn doorbells(&self) -> usize {
        self.bells.len()
    }
}

#[async_trait]
impl DeploymentStore for MemoryStore {
    async fn put_component(&self, sha256: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.lock()?
            .components
            .entry(sha256.to_owned())
            .or_insert(bytes);
        Ok(())
    }

    async fn component(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock()?.components.get(sha256).cloned())
    }

    async fn record_deployment(&self, mut record: DeploymentRecord) -> Result<u64, StoreError> {
        let mut state = self.lock()?;
        record.seq = state.deployments.len() as u64 + 1;
        state.deployments.push(record);
        Ok(state.deployments.len() as u64)
    }

    async fn deployments_after(&self, after: u64) -> Result<Vec<DeploymentRecord>, StoreError> {
        let state = self.lock()?;
        let from = usize::try_from(after).unwrap_or(usize::MAX);
        Ok(state.deployments.get(from..).unwrap_or_default().to_vec())
    }
}
