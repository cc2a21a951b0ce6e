//! Group commit of compare-and-set updates: the updates waiting at once share one statement.
//!
//! An update made while no other is in flight goes straight to the database, on its caller's
//! task, as one statement: alone, it would gain nothing from a batch but a hand-off. Any other
//! update queues here and waits for its answer. One task takes what is queued (at most
//! [`MAX_BATCH`] updates and [`MAX_BATCH_BYTES`] of snapshots, at most one update per
//! operation, so that each is judged against the revision stored before the statement) and
//! applies it as one `UPDATE ... FROM unnest(...)` with the events inserted in the same
//! statement: one round trip, one transaction and one commit for the whole batch, instead of
//! one of each per update. Each update still moves its operation only from the revision before
//! it; those that find another revision are answered as not applied, and the others once the
//! batch is committed.
//!
//! **Never waiting on a row.** The batch locks its rows with `SKIP LOCKED`: a row another
//! transaction holds (a signal, a log append, another host's batch) is left out, and its
//! update goes back to the head of the queue for the next batch. So a batch never waits for a
//! lock, never holds up the other updates behind one busy operation, and cannot deadlock with
//! anything.
//!
//! **A batch that fails.** One the database refuses (with an error, the connection still
//! serving) was rolled back: each of its updates is then applied alone, so that one update's
//! failure stays its own. One whose connection was lost may have committed or not: the store
//! ends that connection's server process, waits for it to exit, then reads back which of the
//! batch's events exist with its snapshots. Those updates were applied; the others were not,
//! and go back to the queue, up to [`MAX_LOST`] times. Should the process not exit, or the
//! read fail, the callers are told that the outcome is unknown.
//!
//! Batches go through a connection of their own, taken out of the pool, which always uses the
//! statement's generic plan: planned for its arrays once, rather than again at every call for
//! the arrays it is given.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{ClientWrapper, Object, Pool};
use opshost_api::{EventKind, Snapshot};
use opshost_runtime::store::StoreError;
use tokio::sync::{Notify, oneshot};

use crate::doorbell::Doorbells;
use crate::sql::{count, failed, prepared, unavailable};

/// Most updates applied in one statement.
const MAX_BATCH: usize = 256;

/// Most bytes of snapshots sent in one statement (a batch holds one update at least).
const MAX_BATCH_BYTES: usize = 8 << 20;

/// How long the batches pause when no update of the last one moved and some are to be tried
/// again (their rows held, or their batch lost with its connection): doubled at each such
/// batch in a row, up to [`HELD_PAUSE_MAX`].
const HELD_PAUSE: Duration = Duration::from_millis(1);

/// The longest pause for held rows.
const HELD_PAUSE_MAX: Duration = Duration::from_millis(64);

/// How long a lost batch's server process is given to exit, to read back what the batch
/// wrote; past it, the batch's callers are told that its outcome is unknown.
const EXIT_WAIT: Duration = Duration::from_secs(10);

/// How often the exit of a lost batch's server process is checked.
const EXIT_POLL: Duration = Duration::from_millis(10);

/// How many lost batches an update may be part of before its caller is told it failed.
const MAX_LOST: u32 = 3;

/// One update alone: the compare-and-set and its event in one statement.
const APPLY_ONE: &str = "WITH moved AS (
         UPDATE operations SET state = $2, revision = $3, completed_at = $4, snapshot = $5
         WHERE id = $1 AND revision = $3::BIGINT - 1 RETURNING id)
     INSERT INTO events (id, revision, kind, snapshot)
     SELECT id, $3, $6, $5 FROM moved";

/// The batch statement: arrays of ids, states, revisions, completion times, snapshots and event
/// kinds, one element per update. Answers, per update, whether it moved its operation and
/// whether its row was held by another transaction (and so left alone).
const APPLY: &str = "WITH batch AS (
         SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::TIMESTAMPTZ[],
             $5::TEXT[], $6::TEXT[]) AS b(id, state, revision, completed_at, snapshot, kind)),
     present AS (SELECT id FROM operations WHERE id = ANY($1::TEXT[])),
     locked AS (
         SELECT id FROM operations WHERE id = ANY($1::TEXT[])
         ORDER BY id FOR NO KEY UPDATE SKIP LOCKED),
     moved AS (
         UPDATE operations o SET state = batch.state, revision = batch.revision,
             completed_at = batch.completed_at, snapshot = batch.snapshot
         FROM batch JOIN locked USING (id)
         WHERE o.id = batch.id AND o.revision = batch.revision - 1
         RETURNING batch.id, batch.revision, batch.kind, batch.snapshot),
     logged AS (
         INSERT INTO events (id, revision, kind, snapshot)
         SELECT id, revision, kind, snapshot FROM moved)
     SELECT batch.id, moved.id IS NOT NULL,
         present.id IS NOT NULL AND locked.id IS NULL
     FROM batch
     LEFT JOIN moved USING (id) LEFT JOIN present USING (id) LEFT JOIN locked USING (id)";

/// Of `(id, revision, snapshot)` arrays, the ids whose event was written with that snapshot.
const WRITTEN: &str = "SELECT e.id FROM events e
     JOIN unnest($1::TEXT[], $2::BIGINT[], $3::TEXT[]) AS b(id, revision, snapshot)
       ON e.id = b.id AND e.revision = b.revision AND e.snapshot = b.snapshot";

/// An update waiting for its batch: the operation's next snapshot (and its JSON), its event,
/// and where its answer goes: the snapshot once applied, `None` when the stored revision was
/// not the one before.
struct Queued {
    next: Snapshot,
    text: String,
    kind: EventKind,
    answer: oneshot::Sender<Result<Option<Snapshot>, StoreError>>,
    /// How many batches holding it lost their connection without writing it.
    lost: u32,
}

/// What became of one update of a batch.
#[derive(Clone, Copy, PartialEq)]
enum Fate {
    Moved,
    /// The stored revision was another (or the operation is gone).
    NotMoved,
    /// Its row was held by another transaction: to be tried again.
    Held,
    /// Its batch's connection was lost, and the batch, read back once its server process was
    /// gone, did not write it: not applied; to be tried again, up to [`MAX_LOST`] times.
    Lost,
}

/// The updates waiting for the next batch.
pub(crate) struct Updates {
    queue: Mutex<VecDeque<Queued>>,
    wake: Notify,
    /// Updates being made now, queued or not.
    in_flight: AtomicUsize,
    /// The batch task is gone: nothing queued now would be applied.
    stopped: AtomicBool,
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

fn stopped() -> StoreError {
    StoreError::unavailable(
        "postgres: the store stopped; whether the update was applied is unknown",
    )
}

impl Updates {
    /// Updates through `pool`, ringing `bells` after each commit.
    pub(crate) fn new(pool: Pool, bells: Arc<Doorbells>) -> Self {
        Self {
            queue: Mutex::default(),
            wake: Notify::new(),
            in_flight: AtomicUsize::new(0),
            stopped: AtomicBool::new(false),
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
        {
            let mut queue = self.lock();
            // Checked under the queue's lock, which the stopping task empties it under.
            if self.stopped.load(Ordering::SeqCst) {
                return Err(StoreError::unavailable("postgres: the store has stopped"));
            }
            queue.push_back(Queued {
                next,
                text,
                kind,
                answer,
                lost: 0,
            });
        }
        self.wake.notify_one();
        answered.await.map_err(|_| stopped())?
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

    /// The next batch, in order of id: the oldest queued update of each operation, within the
    /// batch's limits. An operation's later updates stay queued, in order, for the batches
    /// after; updates whose caller is gone are dropped, as if never made.
    fn take(&self) -> Vec<Queued> {
        let mut queue = self.lock();
        let mut ids = HashSet::new();
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut left = VecDeque::new();
        while let Some(queued) = queue.pop_front() {
            if queued.answer.is_closed() {
                continue;
            }
            let fits = batch.is_empty()
                || (batch.len() < MAX_BATCH && bytes + queued.text.len() <= MAX_BATCH_BYTES);
            if fits && ids.insert(queued.next.id.clone()) {
                bytes += queued.text.len();
                batch.push(queued);
            } else {
                left.push_back(queued);
            }
        }
        *queue = left;
        batch.sort_by(|a, b| a.next.id.cmp(&b.next.id));
        batch
    }

    /// Puts `held` back at the head of the queue, ahead of the later updates of the same
    /// operations.
    fn requeue(&self, held: Vec<Queued>) {
        let mut queue = self.lock();
        for queued in held.into_iter().rev() {
            queue.push_front(queued);
        }
    }

    /// Marks the batch task gone and answers everything queued with an error.
    fn stop(&self) {
        let mut queue = self.lock();
        self.stopped.store(true, Ordering::SeqCst);
        for queued in queue.drain(..) {
            let _ = queued.answer.send(Err(stopped()));
        }
    }
}

/// Stops the updates when the batch task ends, however it ends.
struct Stopping(Arc<Updates>);

impl Drop for Stopping {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// Applies the queued updates, batch after batch, until the store is dropped.
pub(crate) async fn run(updates: Arc<Updates>) {
    let updates = Stopping(updates);
    let updates = &*updates.0;
    let mut link: Option<Link> = None;
    let mut pause = HELD_PAUSE;
    loop {
        let batch = updates.take();
        if batch.is_empty() {
            updates.wake.notified().await;
            continue;
        }
        let fates = settle(updates, &mut link, &batch).await;
        let mut again = Vec::new();
        let mut moved_any = false;
        for (mut queued, fate) in batch.into_iter().zip(fates) {
            match fate {
                Ok(Fate::Moved) => {
                    moved_any = true;
                    updates.bells.moved(&queued.next);
                    let _ = queued.answer.send(Ok(Some(queued.next)));
                }
                Ok(Fate::NotMoved) => {
                    let _ = queued.answer.send(Ok(None));
                }
                Ok(Fate::Held) => again.push(queued),
                Ok(Fate::Lost) if queued.lost + 1 >= MAX_LOST => {
                    let _ = queued.answer.send(Err(StoreError::unavailable(format!(
                        "postgres: lost the connection under this update {MAX_LOST} times; it \
                         was not applied"
                    ))));
                }
                Ok(Fate::Lost) => {
                    queued.lost += 1;
                    again.push(queued);
                }
                Err(error) => {
                    let _ = queued.answer.send(Err(error));
                }
            }
        }
        if again.is_empty() || moved_any {
            pause = HELD_PAUSE;
        }
        if !again.is_empty() {
            updates.requeue(again);
            if !moved_any {
                // Nothing moved: let the rows' holders commit, or the database recover, before
                // trying again, a little longer each time.
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(HELD_PAUSE_MAX);
            }
        }
    }
}

/// The batches' connection, and its server process (its pid, and when it started, which
/// tells it from a later process given the same pid).
struct Link {
    client: ClientWrapper,
    pid: i32,
    started: DateTime<Utc>,
}

/// What became of each update of `batch`: applied as one statement; should the database
/// refuse it, applied one by one; should the connection be lost, read back once the lost
/// statement can no longer commit.
async fn settle(
    updates: &Updates,
    link: &mut Option<Link>,
    batch: &[Queued],
) -> Vec<Result<Fate, StoreError>> {
    let (error, process) = match connected(&updates.pool, link).await {
        Ok(connected) => match apply(&connected.client, batch).await {
            Ok(fates) => return fates.into_iter().map(Ok).collect(),
            Err(error) if refused(&error, connected) => {
                // Refused by the database, so rolled back: one update's failure stays its own.
                tracing::warn!(%error, updates = batch.len(), "a batch of updates was refused; applying them one by one");
                return alone(&updates.pool, connected, batch).await;
            }
            Err(error) => (error, (connected.pid, connected.started)),
        },
        Err(error) => return batch.iter().map(|_| Err(error.clone())).collect(),
    };
    // Its server process is ended below: the next batch connects again.
    *link = None;
    tracing::warn!(%error, updates = batch.len(), "lost the connection under a batch of updates; reading back what it wrote");
    lost(&updates.pool, process, batch, &error).await
}

/// Whether `error`, from a statement on `link`, is the database refusing it (so that it was
/// rolled back and the connection still serves), rather than the connection lost.
fn refused(error: &StoreError, link: &Link) -> bool {
    !matches!(error, StoreError::Unavailable { .. }) && !link.client.is_closed()
}

/// Each update of `batch` in a statement of its own; should the connection be lost on the
/// way, what is left is read back.
async fn alone(pool: &Pool, link: &Link, batch: &[Queued]) -> Vec<Result<Fate, StoreError>> {
    let mut fates = Vec::with_capacity(batch.len());
    for (index, queued) in batch.iter().enumerate() {
        match apply(&link.client, std::slice::from_ref(queued)).await {
            Ok(fate) => fates.push(Ok(fate.first().copied().unwrap_or(Fate::NotMoved))),
            Err(error) if refused(&error, link) => fates.push(Err(error)),
            Err(error) => {
                let rest = &batch[index..];
                fates.extend(lost(pool, (link.pid, link.started), rest, &error).await);
                break;
            }
        }
    }
    fates
}

/// The fates of `batch`, whose statement was lost with its connection to server process
/// `process`: written (so applied) or lost (not applied), once that process is gone.
async fn lost(
    pool: &Pool,
    process: (i32, DateTime<Utc>),
    batch: &[Queued],
    error: &StoreError,
) -> Vec<Result<Fate, StoreError>> {
    match read_back(pool, process, batch).await {
        Ok(written) => batch
            .iter()
            .map(|queued| match written.contains(&queued.next.id) {
                true => Ok(Fate::Moved),
                false => Ok(Fate::Lost),
            })
            .collect(),
        Err(read) => {
            let unknown = StoreError::unavailable(format!(
                "postgres: lost the connection under an update ({error}) and cannot tell \
                 whether it was applied ({read})"
            ));
            batch.iter().map(|_| Err(unknown.clone())).collect()
        }
    }
}

/// The ids of `batch` whose update was applied by a statement lost with server process
/// `process`: ends that process first and waits for it to exit, so that the statement has
/// committed or never will.
async fn read_back(
    pool: &Pool,
    (pid, started): (i32, DateTime<Utc>),
    batch: &[Queued],
) -> Result<HashSet<String>, StoreError> {
    let db = pool.get().await.map_err(unavailable)?;
    db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE pid = $1 AND backend_start = $2",
        &[&pid, &started],
    )
    .await
    .map_err(failed)?;
    let deadline = tokio::time::Instant::now() + EXIT_WAIT;
    loop {
        let gone: bool = db
            .query_one(
                "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity
                     WHERE pid = $1 AND backend_start = $2)",
                &[&pid, &started],
            )
            .await
            .map_err(failed)?
            .get(0);
        if gone {
            return written(&db, batch).await;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(StoreError::unavailable(format!(
                "postgres: server process {pid} did not exit within {EXIT_WAIT:?}"
            )));
        }
        tokio::time::sleep(EXIT_POLL).await;
    }
}

/// The batches' connection: the one held, unless lost, else a new one taken out of `pool`.
async fn connected<'a>(pool: &Pool, link: &'a mut Option<Link>) -> Result<&'a Link, StoreError> {
    if link.as_ref().is_some_and(|link| link.client.is_closed()) {
        *link = None;
    }
    if let Some(link) = link {
        return Ok(link);
    }
    let client = Object::take(pool.get().await.map_err(unavailable)?);
    client
        .batch_execute("SET plan_cache_mode = force_generic_plan")
        .await
        .map_err(failed)?;
    let process = client
        .query_one(
            "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(failed)?;
    Ok(link.insert(Link {
        client,
        pid: process.get(0),
        started: process.get(1),
    }))
}

/// One statement for `batch`; answers the fate of each update, in order.
async fn apply(db: &ClientWrapper, batch: &[Queued]) -> Result<Vec<Fate>, StoreError> {
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
    let fates: HashMap<String, Fate> = rows
        .iter()
        .map(|row| {
            let fate = match (row.get(1), row.get(2)) {
                (true, _) => Fate::Moved,
                (false, true) => Fate::Held,
                (false, false) => Fate::NotMoved,
            };
            (row.get(0), fate)
        })
        .collect();
    Ok(ids
        .iter()
        .map(|id| fates.get(*id).copied().unwrap_or(Fate::NotMoved))
        .collect())
}

/// The ids of `batch` whose event is stored with the update's own snapshot: those applied.
async fn written(db: &Object, batch: &[Queued]) -> Result<HashSet<String>, StoreError> {
    let ids: Vec<&str> = batch.iter().map(|q| q.next.id.as_str()).collect();
    let revisions: Vec<i64> = batch.iter().map(|q| count(q.next.revision)).collect();
    let snapshots: Vec<&str> = batch.iter().map(|q| q.text.as_str()).collect();
    let rows = db
        .query(
            &prepared(db, WRITTEN).await?,
            &[&ids, &revisions, &snapshots],
        )
        .await
        .map_err(failed)?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}
