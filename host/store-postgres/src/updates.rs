//! Group commit of compare-and-set updates: the updates waiting at once share one statement.
//!
//! An update made while no other is in flight goes straight to the database, on its caller's
//! task, as one statement: alone, it would gain nothing from a batch but a hand-off. Any other
//! update queues here and waits for its answer. One task takes everything queued (at
//! most [`MAX_BATCH`], and at most one update per operation, so that each is judged against the
//! revision stored before the statement) and applies it as one `UPDATE ... FROM unnest(...)`
//! with the events inserted in the same statement: one round trip, one transaction and one
//! commit for the whole batch, instead of one of each per update. Each update still moves its
//! operation only from the revision before it; those that find another revision are answered
//! as not applied, and the others are answered once the batch is committed.
//!
//! Only one batch is in flight at a time: two batches never hold row locks the other wants,
//! so batches cannot deadlock one another. They go through a connection of their own, taken
//! out of the pool, which always uses the statement's generic plan: planned for its arrays
//! once, rather than again at every call for the arrays it is given.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};
use deadpool_postgres::{ClientWrapper, Object, Pool};
use opshost_api::{EventKind, Snapshot};
use opshost_runtime::store::StoreError;
use tokio::sync::{Notify, oneshot};

use crate::doorbell::Doorbells;
use crate::sql::{count, failed, prepared, unavailable};

/// Most updates applied in one statement.
const MAX_BATCH: usize = 256;

/// One update alone: the compare-and-set and its event in one statement.
const APPLY_ONE: &str = "WITH moved AS (
         UPDATE operations SET state = $2, revision = $3, completed_at = $4, snapshot = $5
         WHERE id = $1 AND revision = $3::BIGINT - 1 RETURNING id)
     INSERT INTO events (id, revision, kind, snapshot)
     SELECT id, $3, $6, $5 FROM moved";

/// The batch statement: arrays of ids, states, revisions, completion times, snapshots and event
/// kinds, one element per update; answers the ids of the operations moved.
const APPLY: &str = "WITH batch AS (
         SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::TIMESTAMPTZ[],
             $5::TEXT[], $6::TEXT[]) AS b(id, state, revision, completed_at, snapshot, kind)),
     moved AS (
         UPDATE operations o SET state = batch.state, revision = batch.revision,
             completed_at = batch.completed_at, snapshot = batch.snapshot
         FROM batch WHERE o.id = batch.id AND o.revision = batch.revision - 1
         RETURNING batch.id, batch.revision, batch.kind, batch.snapshot),
     logged AS (
         INSERT INTO events (id, revision, kind, snapshot)
         SELECT id, revision, kind, snapshot FROM moved)
     SELECT id FROM moved";

/// An update waiting for its batch: the operation's next snapshot (and its JSON), its event,
/// and where its answer goes: the snapshot once applied, `None` when the stored revision was
/// not the one before.
struct Queued {
    next: Snapshot,
    text: String,
    kind: EventKind,
    answer: oneshot::Sender<Result<Option<Snapshot>, StoreError>>,
}

/// The updates waiting for the next batch.
pub(crate) struct Updates {
    queue: Mutex<VecDeque<Queued>>,
    wake: Notify,
    /// Updates being made now, queued or not.
    in_flight: AtomicUsize,
    pool: Pool,
    bells: Arc<Doorbells>,
}

/// One update counted in [`Updates::in_flight`] until dropped.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Updates {
    /// Updates through `pool`, ringing `bells` after each commit.
    pub(crate) fn new(pool: Pool, bells: Arc<Doorbells>) -> Self {
        Self {
            queue: Mutex::default(),
            wake: Notify::new(),
            in_flight: AtomicUsize::new(0),
            pool,
            bells,
        }
    }

    /// Moves an operation to `next` (encoded as `text`) with event `kind`, if its stored
    /// revision is the one before: answers `next` once committed, or `None` when the stored
    /// revision is another.
    pub(crate) async fn apply(
        &self,
        next: Snapshot,
        text: String,
        kind: EventKind,
    ) -> Result<Option<Snapshot>, StoreError> {
        let alone = self.in_flight.fetch_add(1, Ordering::SeqCst) == 0;
        let _counted = InFlight(&self.in_flight);
        if alone {
            return self.apply_alone(next, text, kind).await;
        }
        let (answer, answered) = oneshot::channel();
        self.lock().push_back(Queued {
            next,
            text,
            kind,
            answer,
        });
        self.wake.notify_one();
        answered.await.map_err(|_| {
            StoreError::unavailable("postgres: the store stopped before the update was applied")
        })?
    }

    async fn apply_alone(
        &self,
        next: Snapshot,
        text: String,
        kind: EventKind,
    ) -> Result<Option<Snapshot>, StoreError> {
        let db = self.pool.get().await.map_err(unavailable)?;
        let moved = db
            .execute(
                &prepared(&db, APPLY_ONE).await?,
                &[
                    &next.id,
                    &next.state.as_str(),
                    &count(next.revision),
                    &next.completed_at,
                    &text,
                    &kind.as_str(),
                ],
            )
            .await
            .map_err(failed)?;
        Ok((moved > 0).then(|| {
            self.bells.moved(&next);
            next
        }))
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Queued>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next batch: the oldest queued update of each operation, up to [`MAX_BATCH`]. An
    /// operation's later updates stay queued, in order, for the batches after.
    fn take(&self) -> Vec<Queued> {
        let mut queue = self.lock();
        let mut ids = HashSet::new();
        let mut batch = Vec::new();
        let mut left = VecDeque::new();
        while let Some(queued) = queue.pop_front() {
            if batch.len() < MAX_BATCH && ids.insert(queued.next.id.clone()) {
                batch.push(queued);
            } else {
                left.push_back(queued);
            }
        }
        *queue = left;
        batch
    }
}

/// Applies the queued updates, batch after batch, until the store is dropped.
pub(crate) async fn run(updates: Arc<Updates>) {
    let (pool, bells) = (&updates.pool, &*updates.bells);
    let mut db: Option<ClientWrapper> = None;
    loop {
        let batch = updates.take();
        if batch.is_empty() {
            updates.wake.notified().await;
            continue;
        }
        let connection = match &db {
            Some(connection) if !connection.is_closed() => connection,
            _ => match connect(pool).await {
                Ok(connection) => db.insert(connection),
                Err(error) => {
                    for queued in batch {
                        let _ = queued.answer.send(Err(error.clone()));
                    }
                    continue;
                }
            },
        };
        match apply(connection, &batch).await {
            Ok(moved) => answer(batch, &moved, bells),
            // One update's failure stays its own: each is applied alone again.
            Err(_) if batch.len() > 1 => {
                for queued in batch {
                    let alone = [queued];
                    match apply(connection, &alone).await {
                        Ok(moved) => answer(alone, &moved, bells),
                        Err(error) => {
                            let [queued] = alone;
                            let _ = queued.answer.send(Err(error));
                        }
                    }
                }
            }
            Err(error) => {
                for queued in batch {
                    let _ = queued.answer.send(Err(error.clone()));
                }
            }
        }
    }
}

/// Answers each update of a committed batch: applied when its operation was `moved`, after
/// ringing its doorbells.
fn answer(batch: impl IntoIterator<Item = Queued>, moved: &HashSet<String>, bells: &Doorbells) {
    for queued in batch {
        let applied = moved.contains(&queued.next.id).then(|| {
            bells.moved(&queued.next);
            queued.next
        });
        let _ = queued.answer.send(Ok(applied));
    }
}

/// A connection of the batches' own, taken out of `pool`.
async fn connect(pool: &Pool) -> Result<ClientWrapper, StoreError> {
    let db = Object::take(pool.get().await.map_err(unavailable)?);
    db.batch_execute("SET plan_cache_mode = force_generic_plan")
        .await
        .map_err(failed)?;
    Ok(db)
}

/// One statement for `batch`; answers the ids of the operations it moved.
async fn apply(db: &ClientWrapper, batch: &[Queued]) -> Result<HashSet<String>, StoreError> {
    let ids: Vec<&str> = batch.iter().map(|q| q.next.id.as_str()).collect();
    let states: Vec<&str> = batch.iter().map(|q| q.next.state.as_str()).collect();
    let revisions: Vec<i64> = batch.iter().map(|q| count(q.next.revision)).collect();
    let completed: Vec<Option<DateTime<Utc>>> = batch.iter().map(|q| q.next.completed_at).collect();
    let snapshots: Vec<&str> = batch.iter().map(|q| q.text.as_str()).collect();
    let kinds: Vec<&str> = batch.iter().map(|q| q.kind.as_str()).collect();
    let rows = db
        .query(
            &db.prepare_cached(APPLY).await.map_err(failed)?,
            &[&ids, &states, &revisions, &completed, &snapshots, &kinds],
        )
        .await
        .map_err(failed)?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}
