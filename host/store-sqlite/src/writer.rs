//! The write path: group commit in two stages on two threads.
//!
//! 1. The **writer** drains the queue of writes into one transaction and commits it with
//!    `synchronous = OFF`: the WAL frames reach the OS, not yet the disk.
//! 2. The **syncer** takes every batch committed so far, makes the WAL durable with one
//!    `fdatasync`, and only then publishes the batches (cache, doorbells) and answers their
//!    callers, in commit order. Meanwhile the writer already commits the next batch.
//!
//! When the syncer has nothing left to do and no queued write is waited for, the writer syncs
//! and publishes its batch itself: there is nothing to overlap the sync with, and the
//! hand-off to the other thread would only add its wake-up to the caller's wait.
//!
//! The writer wakes at once for a write someone waits for. A write answered at enqueue (a
//! handler's reports) wakes it only when nothing else is queued, and then waits up to a
//! millisecond for a waited-for write to commit with: a handler's reports and its terminal
//! change share one commit.
//!
//! No cached snapshot or doorbell shows a change before it is on disk, and no caller is
//! answered before, except for the changes that need not be durable ([`must_be_durable`]): a
//! handler's `started` or progress is answered at enqueue when its compare-and-set is certain
//! there (see `cache`), else at commit, so that it costs no sync. An ordered create answers
//! its outcome at commit and its durability after the sync. Should a sync fail, every later
//! write is refused: the store is poisoned.

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use opshost_api::{EventKind, OperationState, Snapshot};
use opshost_runtime::store::{
    CreateOutcome, Durable, SignalOutcome, StoreError, StoredOperation, UpdateOutcome,
    must_be_durable,
};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::cache::Cache;
use crate::job_writes::{self, JobWrite, JobWritten};
use crate::{SELECT_STORED, Shared, decode, lock, log_writes, stored_from_row};

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 512;

/// A change to make durable. Snapshots arrive already encoded: the caller's thread does the
/// JSON work, the one writer thread only the SQL.
pub(crate) enum Write {
    Create {
        operation: StoredOperation,
        snapshot: String,
        input: Option<String>,
    },
    Update {
        next: Snapshot,
        kind: EventKind,
        snapshot: String,
    },
    Signal {
        id: String,
        name: String,
        payload: Value,
    },
    Purge(DateTime<Utc>),
    /// Changes nothing; answered once everything before it is durable.
    Flush,
    /// A change to the jobs table.
    Job(JobWrite),
    /// Log lines of operation `id`, each already encoded.
    Logs {
        id: String,
        lines: Vec<String>,
    },
}

/// The outcome of one [`Write`], sent once its transaction committed.
#[derive(Debug)]
pub(crate) enum Written {
    Created(CreateOutcome),
    Updated(UpdateOutcome),
    Signal(SignalOutcome),
    Purged(u64),
    Flushed,
    Job(JobWritten),
    Logged,
}

/// What a committed write changes in memory: the cache and the doorbells.
enum Ring {
    None,
    Purged(DateTime<Utc>),
    /// Created, with its event's `seq`.
    Created(StoredOperation, u64),
    /// Updated, with its event's `seq`.
    Updated(Snapshot, u64),
    Signalled(String),
}

impl Write {
    /// Creates `operation` unless its id exists.
    pub(crate) fn create(operation: StoredOperation) -> Result<Self, StoreError> {
        Ok(Self::Create {
            snapshot: json(&operation.snapshot)?,
            input: operation.input.as_ref().map(json).transpose()?,
            operation,
        })
    }

    /// Moves an operation to `next`, if its stored revision is the one before.
    pub(crate) fn update(next: Snapshot, kind: EventKind) -> Result<Self, StoreError> {
        Ok(Self::Update {
            snapshot: json(&next)?,
            next,
            kind,
        })
    }

    /// The operation whose revision this write may change, counted in the cache's queue.
    fn operation(&self) -> Option<&str> {
        match self {
            Self::Create { operation, .. } => Some(&operation.snapshot.id),
            Self::Update { next, .. } => Some(&next.id),
            _ => None,
        }
    }

    /// Whether the caller waits for the sync, or only for the commit.
    fn answered_once_durable(&self) -> bool {
        match self {
            Self::Update { kind, .. } => must_be_durable(*kind),
            Self::Job(write) => write.must_be_durable(),
            Self::Logs { .. } => false,
            _ => true,
        }
    }
}

/// Where the outcome of a write goes.
type Answer = oneshot::Sender<Result<Written, StoreError>>;

/// How the caller of a write is answered.
enum Reply {
    /// With the outcome: at commit when the write need not be durable, else once it is.
    Outcome(Answer),
    /// With the outcome at commit, then with whether it became durable.
    Ordered(Answer, oneshot::Sender<Result<(), StoreError>>),
    /// Not at all: its outcome was certain at enqueue, and answered then.
    Given,
}

/// The handle to the writer thread. Dropping it lets the thread commit every write queued,
/// then end; the drop does not wait for that.
pub(crate) struct Writer {
    inbox: Arc<Inbox>,
    shared: Arc<Shared>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.inbox.close();
    }
}

/// How long a write answered at enqueue may wait for a write someone waits for, to share its
/// commit, before the writer commits it alone.
const LAG: Duration = Duration::from_millis(1);

/// The writes queued for the writer thread, in order. The writer is woken at once for a write
/// someone waits for; writes answered at enqueue (a handler's reports) wake it only when the
/// queue was empty, and then wait up to [`LAG`] to share the next waited-for write's commit.
#[derive(Default)]
struct Inbox {
    queue: Mutex<Queue>,
    wake: Condvar,
}

#[derive(Default)]
struct Queue {
    writes: VecDeque<(Write, Reply)>,
    /// When the oldest of `writes` was queued (or left over from the last batch).
    oldest: Option<Instant>,
    /// How many of `writes` someone waits for.
    waited: usize,
    /// The handle is gone (or the writer thread): commit what is queued and stop.
    closed: bool,
    /// The writer thread is gone: nothing queued now will be committed.
    stopped: bool,
}

impl Inbox {
    /// Queues `write`; refused once the writer thread is gone.
    fn push(&self, write: Write, reply: Reply) -> Result<(), StoreError> {
        let mut queue = lock(&self.queue);
        if queue.stopped {
            return Err(stopped());
        }
        let waited = !matches!(reply, Reply::Given);
        let was_empty = queue.writes.is_empty();
        if was_empty {
            queue.oldest = Some(Instant::now());
        }
        queue.writes.push_back((write, reply));
        if waited {
            queue.waited += 1;
        }
        drop(queue);
        if waited || was_empty {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// The next batch to commit: at most `MAX_BATCH` writes, taken once one is waited for,
    /// the oldest has waited [`LAG`], a whole batch is queued, or the handle is gone. `None`
    /// once closed and empty.
    fn next_batch(&self) -> Option<Vec<(Write, Reply)>> {
        let mut queue = lock(&self.queue);
        loop {
            let full = queue.writes.len() >= MAX_BATCH;
            if queue.waited > 0 || full || (queue.closed && !queue.writes.is_empty()) {
                break;
            }
            if queue.closed {
                return None;
            }
            if queue.writes.is_empty() {
                queue = self
                    .wake
                    .wait(queue)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            let until = *queue.oldest.get_or_insert_with(Instant::now) + LAG;
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            queue = self
                .wake
                .wait_timeout(queue, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let take = queue.writes.len().min(MAX_BATCH);
        let batch: Vec<(Write, Reply)> = queue.writes.drain(..take).collect();
        let waited = batch
            .iter()
            .filter(|(_, reply)| !matches!(reply, Reply::Given))
            .count();
        debug_assert!(queue.waited >= waited, "every waited-for write was counted");
        queue.waited -= waited;
        // What is left over waits from now, not from its enqueue: it missed only this batch.
        queue.oldest = (!queue.writes.is_empty()).then(Instant::now);
        Some(batch)
    }

    /// Whether no queued write is waited for.
    fn none_waited(&self) -> bool {
        lock(&self.queue).waited == 0
    }

    fn close(&self) {
        lock(&self.queue).closed = true;
        self.wake.notify_all();
    }

    /// Marks the writer thread gone: what is still queued is answered by dropping its reply.
    fn stop(&self) {
        let mut queue = lock(&self.queue);
        queue.closed = true;
        queue.stopped = true;
        queue.writes.clear();
        queue.waited = 0;
    }
}

/// Stops the inbox when the writer thread ends, however it ends.
struct Stopping(Arc<Inbox>);

impl Drop for Stopping {
    fn drop(&mut self) {
        self.0.stop();
    }
}

fn stopped() -> StoreError {
    StoreError::unavailable("the SQLite writer has stopped")
}

impl Writer {
    pub(crate) fn start(connection: Connection, wal: PathBuf, shared: Arc<Shared>) -> Self {
        let inbox = Arc::new(Inbox::default());
        let (committed, to_sync) = mpsc::channel();
        let (writer, syncer) = (Arc::clone(&shared), Arc::clone(&shared));
        // Made here, so that a thread that never starts stops the inbox too.
        let stopping = Stopping(Arc::clone(&inbox));
        let unsynced = Arc::new(AtomicUsize::new(0));
        let wal = |unsynced: &Arc<AtomicUsize>| Wal {
            path: wal.clone(),
            file: None,
            unsynced: Arc::clone(unsynced),
        };
        let (writer_wal, syncer_wal) = (wal(&unsynced), wal(&unsynced));
        let threads = [
            std::thread::Builder::new()
                .name("opshost-sqlite-writer".into())
                .spawn(move || run(connection, stopping, committed, writer_wal, writer)),
            std::thread::Builder::new()
                .name("opshost-sqlite-sync".into())
                .spawn(move || sync(to_sync, syncer_wal, syncer)),
        ];
        for spawned in threads {
            if let Err(error) = spawned {
                tracing::error!(%error, "cannot start an SQLite store thread");
            }
        }
        Self { inbox, shared }
    }

    /// Queues `write`, unless the store is poisoned or its writer stopped.
    fn send(&self, write: Write, reply: Reply) -> Result<(), StoreError> {
        if let Some(reason) = self.shared.poisoned.get() {
            return Err(StoreError::internal(reason.clone()));
        }
        self.inbox.push(write, reply)
    }

    /// [`Writer::send`] of a write to operation `id`, counted in the cache's queue (locked by
    /// the caller, so that the count and the queue agree): a refused write is not counted.
    fn send_counted(
        &self,
        cache: &mut Cache,
        id: &str,
        write: Write,
        reply: Reply,
    ) -> Result<(), StoreError> {
        self.send(write, reply).inspect_err(|_| cache.settled(id))
    }

    /// Makes `write`, which changes no operation's revision (those go through
    /// [`Writer::create_ordered`] and [`Writer::update`]), and answers its outcome (see
    /// [`Write::answered_once_durable`]).
    pub(crate) async fn submit(&self, write: Write) -> Result<Written, StoreError> {
        debug_assert!(write.operation().is_none(), "a revision write is counted");
        let (reply, answer) = oneshot::channel();
        self.send(write, Reply::Outcome(reply))?;
        answer.await.map_err(|_| stopped())?
    }

    /// Creates `operation` unless its id exists: answers the outcome at commit, and what
    /// resolves once it is durable.
    pub(crate) async fn create_ordered(
        &self,
        operation: StoredOperation,
    ) -> Result<(CreateOutcome, Durable), StoreError> {
        let id = operation.snapshot.id.clone();
        let write = Write::create(operation)?;
        let (reply, answer) = oneshot::channel();
        let (synced, durable) = oneshot::channel();
        {
            let mut cache = lock(&self.shared.cache);
            cache.queue_undecided(&id);
            self.send_counted(&mut cache, &id, write, Reply::Ordered(reply, synced))?;
        }
        let outcome = match answer.await.map_err(|_| stopped())?? {
            Written::Created(outcome) => outcome,
            other => return Err(unexpected(other)),
        };
        let durable = Durable::after(async move { durable.await.map_err(|_| stopped())? });
        Ok((outcome, durable))
    }

    /// Moves an operation to `next` if its revision is the one before. A change that need
    /// not be durable is answered at once when the cache is certain it applies.
    pub(crate) async fn update(
        &self,
        next: Snapshot,
        kind: EventKind,
    ) -> Result<UpdateOutcome, StoreError> {
        let write = Write::update(next.clone(), kind)?;
        let answer = {
            let mut cache = lock(&self.shared.cache);
            if cache.queue_update(&next) && !must_be_durable(kind) {
                self.send_counted(&mut cache, &next.id, write, Reply::Given)?;
                None
            } else {
                let (reply, answer) = oneshot::channel();
                self.send_counted(&mut cache, &next.id, write, Reply::Outcome(reply))?;
                Some(answer)
            }
        };
        let Some(answer) = answer else {
            return Ok(UpdateOutcome::Updated(next));
        };
        match answer.await.map_err(|_| stopped())?? {
            Written::Updated(outcome) => Ok(outcome),
            other => Err(unexpected(other)),
        }
    }
}

pub(crate) fn unexpected(written: Written) -> StoreError {
    StoreError::internal(format!("store writer answered out of turn: {written:?}"))
}

/// A committed write waiting for the sync: its change to publish, the operation whose queue
/// counts it, and its caller, unless answered already.
struct Pending {
    ring: Ring,
    counted: Option<String>,
    waiting: Waiting,
}

/// Who waits for a committed write's sync.
enum Waiting {
    Nobody,
    Outcome(Box<Result<Written, StoreError>>, Answer),
    Durable(oneshot::Sender<Result<(), StoreError>>),
}

/// A committed batch waiting for its sync.
type Committed = Vec<Pending>;

fn run(
    mut db: Connection,
    inbox: Stopping,
    committed: mpsc::Sender<Committed>,
    mut wal: Wal,
    shared: Arc<Shared>,
) {
    while let Some(batch) = inbox.0.next_batch() {
        let (writes, replies): (Vec<Write>, Vec<Reply>) = batch.into_iter().unzip();
        let facts: Vec<(Option<String>, bool)> = writes
            .iter()
            .map(|write| {
                let counted = write.operation().map(str::to_owned);
                (counted, write.answered_once_durable())
            })
            .collect();
        let outcomes = commit(&mut db, writes);
        let pending: Committed = {
            let mut cache = lock(&shared.cache);
            outcomes
                .into_iter()
                .zip(replies)
                .zip(facts)
                .map(|((outcome, reply), (counted, durable))| {
                    committed_one(&mut cache, outcome, reply, counted, durable)
                })
                .collect()
        };
        // Nothing waits for the syncer, and nobody for the next commit: the sync now costs
        // no more here than there, and saves the hand-off.
        if wal.unsynced.load(Ordering::SeqCst) == 0 && inline(&shared) && inbox.0.none_waited() {
            make_durable(vec![pending], &mut wal, &shared);
            continue;
        }
        wal.unsynced.fetch_add(1, Ordering::SeqCst);
        if let Err(mpsc::SendError(pending)) = committed.send(pending) {
            // The syncer thread is gone: nothing committed from now on would be synced.
            tracing::error!("the SQLite sync thread is gone; refusing all further writes");
            let _ = shared
                .poisoned
                .set("sqlite: the sync thread is gone".to_owned());
            make_durable(vec![pending], &mut wal, &shared);
            return;
        }
    }
}

/// Notes a committed write in the cache's queue and answers what may be answered at commit.
fn committed_one(
    cache: &mut Cache,
    outcome: Outcome,
    reply: Reply,
    counted: Option<String>,
    durable: bool,
) -> Pending {
    let (result, ring) = match outcome {
        Ok((written, ring)) => (Ok(written), ring),
        Err(error) => (Err(error), Ring::None),
    };
    if let Some(id) = &counted {
        let given = matches!(reply, Reply::Given);
        match &result {
            Ok(Written::Created(CreateOutcome::Created(snapshot))) => {
                cache.create_committed(id, snapshot.revision);
            }
            Ok(Written::Updated(UpdateOutcome::Conflict(_))) if given => {
                tracing::warn!(%id, "a change answered at enqueue conflicted at commit");
                cache.write_failed(id);
            }
            Err(error) => {
                if given {
                    tracing::warn!(%id, %error, "a change answered at enqueue failed at commit");
                }
                cache.write_failed(id);
            }
            Ok(_) => {}
        }
    }
    let waiting = match reply {
        Reply::Outcome(answer) if durable || result.is_err() => {
            Waiting::Outcome(Box::new(result), answer)
        }
        Reply::Outcome(answer) => {
            let _ = answer.send(result);
            Waiting::Nobody
        }
        Reply::Ordered(answer, synced) => {
            let applied = result.is_ok();
            let _ = answer.send(result);
            if applied {
                Waiting::Durable(synced)
            } else {
                Waiting::Nobody
            }
        }
        Reply::Given => Waiting::Nobody,
    };
    Pending {
        ring,
        counted,
        waiting,
    }
}

fn sync(to_sync: mpsc::Receiver<Committed>, wal: Wal, shared: Arc<Shared>) {
    let mut wal = wal;
    while let Ok(first) = to_sync.recv() {
        let mut batches = vec![first];
        while let Ok(more) = to_sync.try_recv() {
            batches.push(more);
        }
        let count = batches.len();
        make_durable(batches, &mut wal, &shared);
        wal.unsynced.fetch_sub(count, Ordering::SeqCst);
    }
}

/// Whether the writer may sync its own batches (tests turn it off to hold the sync thread's).
fn inline(shared: &Shared) -> bool {
    #[cfg(test)]
    return !shared.syncer_only.load(Ordering::SeqCst);
    #[cfg(not(test))]
    {
        let _ = shared;
        true
    }
}

/// The WAL as one thread syncs it: its path, the file once opened, and how many committed
/// batches wait for the syncer thread (shared by the writer and the syncer).
struct Wal {
    path: PathBuf,
    file: Option<File>,
    unsynced: Arc<AtomicUsize>,
}

/// Syncs the WAL, then publishes `batches` (committed, in commit order) and answers their
/// callers; poisons the store should the sync fail.
fn make_durable(batches: Vec<Committed>, wal: &mut Wal, shared: &Shared) {
    #[cfg(test)]
    let failing = lock(&shared.held)
        .as_ref()
        .is_some_and(|held| held.recv() == Ok(false));
    #[cfg(not(test))]
    let failing = false;
    let synced = match failing {
        true => Err(std::io::Error::other("a sync failed on purpose")),
        false => sync_wal(&mut wal.file, &wal.path),
    };
    if shared.poisoned.get().is_none()
        && let Err(error) = synced
    {
        tracing::error!(%error, wal = %wal.path.display(), "cannot make the WAL durable; refusing all further writes");
        let _ = shared
            .poisoned
            .set(format!("sqlite: the WAL could not be synced: {error}"));
    }
    let poisoned = shared.poisoned.get();
    let mut answers = Vec::new();
    {
        let mut cache = lock(&shared.cache);
        for pending in batches.into_iter().flatten() {
            if poisoned.is_none() {
                publish(&mut cache, shared, pending.ring);
            }
            if let Some(id) = &pending.counted {
                cache.settled(id);
            }
            answers.push(pending.waiting);
        }
    }
    // Callers are woken outside the locks their tasks are about to take.
    let failed = || StoreError::internal(poisoned.cloned().unwrap_or_default());
    for waiting in answers {
        match (waiting, poisoned) {
            (Waiting::Nobody, _) => {}
            (Waiting::Outcome(result, answer), None) => {
                let _ = answer.send(*result);
            }
            (Waiting::Outcome(_, answer), Some(_)) => {
                let _ = answer.send(Err(failed()));
            }
            (Waiting::Durable(synced), None) => {
                let _ = synced.send(Ok(()));
            }
            (Waiting::Durable(synced), Some(_)) => {
                let _ = synced.send(Err(failed()));
            }
        }
    }
}

/// `fdatasync` of the WAL file: every frame written so far is on disk afterwards.
fn sync_wal(file: &mut Option<File>, wal: &Path) -> std::io::Result<()> {
    let file = match file {
        Some(file) => file,
        None => file.insert(File::open(wal)?),
    };
    file.sync_data()
}

/// Makes a committed write visible: the cache and the feed, then the doorbell (all under the
/// cache's lock, so that no reader sees one without the other).
fn publish(cache: &mut Cache, shared: &Shared, ring: Ring) {
    match ring {
        Ring::None => {}
        Ring::Purged(cutoff) => cache.purged(cutoff),
        Ring::Created(stored, seq) => {
            let id = stored.snapshot.id.clone();
            cache.created(stored);
            shared.published.fetch_max(seq, Ordering::AcqRel);
            shared.bells.ring(&id, false);
        }
        Ring::Updated(snapshot, seq) => {
            shared.published.fetch_max(seq, Ordering::AcqRel);
            // At the end this closes the bells with the last snapshot: nothing rings after it,
            // and a waiter for the end needs no read.
            shared.bells.changed(&snapshot);
            cache.updated(snapshot);
        }
        Ring::Signalled(id) => shared.bells.ring(&id, false),
    }
}

type Outcome = Result<(Written, Ring), StoreError>;

/// Applies every write in one transaction and commits once.
///
/// Writes check before they change anything, so a refused write (conflict, terminal) changes
/// nothing. Should one fail in SQLite itself, the batch is rolled back and applied again with a
/// savepoint per write, so that the failure stays its own.
fn commit(db: &mut Connection, writes: Vec<Write>) -> Vec<Outcome> {
    match commit_batch(db, &writes, false) {
        Ok(outcomes) if outcomes.iter().all(Result::is_ok) => outcomes,
        Ok(_) => commit_batch(db, &writes, true).unwrap_or_else(|error| all_failed(&writes, error)),
        Err(error) => all_failed(&writes, error),
    }
}

fn all_failed(writes: &[Write], error: StoreError) -> Vec<Outcome> {
    writes.iter().map(|_| Err(error.clone())).collect()
}

/// One transaction over `writes`; with `isolated`, each write in its own savepoint. Without,
/// the transaction is rolled back as soon as a write fails.
fn commit_batch(
    db: &mut Connection,
    writes: &[Write],
    isolated: bool,
) -> Result<Vec<Outcome>, StoreError> {
    let mut tx = db
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql)?;
    let mut outcomes = Vec::with_capacity(writes.len());
    for write in writes {
        let outcome = if isolated {
            apply_in_savepoint(&mut tx, write)
        } else {
            apply(&tx, write)
        };
        if !isolated && outcome.is_err() {
            // Dropping the transaction rolls it back.
            outcomes.push(outcome);
            return Ok(outcomes);
        }
        outcomes.push(outcome);
    }
    tx.commit().map_err(sql)?;
    Ok(outcomes)
}

fn apply_in_savepoint(tx: &mut Transaction<'_>, write: &Write) -> Outcome {
    let savepoint = tx.savepoint().map_err(sql)?;
    let outcome = apply(&savepoint, write)?;
    savepoint.commit().map_err(sql)?;
    Ok(outcome)
}

fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn json(value: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::internal("cannot encode").caused_by(e))
}

use crate::failed as sql;

fn apply(db: &Connection, write: &Write) -> Outcome {
    match write {
        Write::Create {
            operation,
            snapshot,
            input,
        } => create(db, operation, snapshot, input.as_deref()),
        Write::Update {
            next,
            kind,
            snapshot,
        } => update(db, next, *kind, snapshot),
        Write::Signal { id, name, payload } => signal(db, id, name, payload),
        Write::Flush => Ok((Written::Flushed, Ring::None)),
        Write::Logs { id, lines } => {
            log_writes::append(db, id, lines).map_err(sql)?;
            Ok((Written::Logged, Ring::None))
        }
        Write::Job(write) => Ok((
            Written::Job(job_writes::apply(db, write).map_err(sql)?),
            Ring::None,
        )),
        Write::Purge(at) => {
            let cutoff = timestamp(*at);
            let expired =
                "SELECT id FROM operations WHERE completed_at IS NOT NULL AND completed_at < ?1";
            db.execute(
                &format!("DELETE FROM events WHERE id IN ({expired})"),
                params![cutoff],
            )
            .map_err(sql)?;
            db.execute(
                &format!("DELETE FROM signals WHERE id IN ({expired})"),
                params![cutoff],
            )
            .map_err(sql)?;
            db.execute(
                &format!("DELETE FROM logs WHERE id IN ({expired})"),
                params![cutoff],
            )
            .map_err(sql)?;
            let purged = db
                .execute(
                    "DELETE FROM operations WHERE completed_at IS NOT NULL AND completed_at < ?1",
                    params![cutoff],
                )
                .map_err(sql)?;
            Ok((Written::Purged(purged as u64), Ring::Purged(*at)))
        }
    }
}

fn create(
    db: &Connection,
    operation: &StoredOperation,
    text: &str,
    input: Option<&str>,
) -> Outcome {
    let snapshot = &operation.snapshot;
    let inserted = db
        .prepare_cached(
            "INSERT INTO operations (id, operation, state, revision, tenant, subject, created_at, completed_at, input)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (id) DO NOTHING",
        )
        .and_then(|mut insert| {
            insert.execute(params![
                snapshot.id,
                snapshot.operation,
                snapshot.state.as_str(),
                snapshot.revision,
                operation.owner.tenant,
                operation.owner.subject,
                timestamp(snapshot.created_at),
                snapshot.completed_at.map(timestamp),
                input
            ])
        })
        .map_err(sql)?;
    if inserted == 0 {
        let existing = db
            .prepare_cached(&format!("{SELECT_STORED} WHERE o.id = ?1"))
            .and_then(|mut select| select.query_row(params![snapshot.id], stored_from_row))
            .map_err(sql)?;
        return Ok((
            Written::Created(CreateOutcome::Existing(existing)),
            Ring::None,
        ));
    }
    let seq = insert_event(db, snapshot, EventKind::Accepted, text)?;
    Ok((
        Written::Created(CreateOutcome::Created(snapshot.clone())),
        Ring::Created(operation.clone(), seq),
    ))
}

/// Appends an event; answers its `seq` in the feed.
fn insert_event(
    db: &Connection,
    snapshot: &Snapshot,
    kind: EventKind,
    text: &str,
) -> Result<u64, StoreError> {
    db.prepare_cached("INSERT INTO events (id, revision, kind, snapshot) VALUES (?1, ?2, ?3, ?4)")
        .and_then(|mut insert| {
            insert.execute(params![snapshot.id, snapshot.revision, kind.as_str(), text])
        })
        .map_err(sql)?;
    u64::try_from(db.last_insert_rowid())
        .map_err(|_| StoreError::corrupt("sqlite: an event numbered below 0"))
}

fn update(db: &Connection, next: &Snapshot, kind: EventKind, text: &str) -> Outcome {
    // Compare-and-set in one statement: only the revision before `next` moves.
    let moved = db
        .prepare_cached(
            "UPDATE operations SET state = ?2, revision = ?3, completed_at = ?4
             WHERE id = ?1 AND revision = ?3 - 1",
        )
        .and_then(|mut statement| {
            statement.execute(params![
                next.id,
                next.state.as_str(),
                next.revision,
                next.completed_at.map(timestamp)
            ])
        })
        .map_err(sql)?;
    if moved == 0 {
        let current: Option<String> = db
            .prepare_cached(
                "SELECT e.snapshot FROM operations o
                 JOIN events e ON e.id = o.id AND e.revision = o.revision WHERE o.id = ?1",
            )
            .and_then(|mut select| {
                select
                    .query_row(params![next.id], |row| row.get(0))
                    .optional()
            })
            .map_err(sql)?;
        let Some(current) = current else {
            return Err(StoreError::conflict(format!(
                "update of unknown operation `{}`",
                next.id
            )));
        };
        let current: Snapshot = decode(&current).map_err(sql)?;
        return Ok((
            Written::Updated(UpdateOutcome::Conflict(current)),
            Ring::None,
        ));
    }
    let seq = insert_event(db, next, kind, text)?;
    Ok((
        Written::Updated(UpdateOutcome::Updated(next.clone())),
        Ring::Updated(next.clone(), seq),
    ))
}

fn signal(db: &Connection, id: &str, name: &str, payload: &Value) -> Outcome {
    let state: Option<String> = db
        .prepare_cached("SELECT state FROM operations WHERE id = ?1")
        .and_then(|mut select| select.query_row(params![id], |row| row.get(0)).optional())
        .map_err(sql)?;
    let Some(state) = state else {
        return Err(StoreError::conflict(format!(
            "signal to unknown operation `{id}`"
        )));
    };
    let state: OperationState = decode(&format!("\"{state}\"")).map_err(sql)?;
    if state.is_terminal() {
        return Ok((Written::Signal(SignalOutcome::Terminal(state)), Ring::None));
    }
    let last: u64 = db
        .prepare_cached("SELECT coalesce(max(sequence), 0) FROM signals WHERE id = ?1")
        .and_then(|mut select| select.query_row(params![id], |row| row.get(0)))
        .map_err(sql)?;
    let sequence = last + 1;
    db.prepare_cached("INSERT INTO signals (id, sequence, name, payload) VALUES (?1, ?2, ?3, ?4)")
        .and_then(|mut insert| {
            insert.execute(params![
                id,
                sequence,
                name,
                json(payload).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?
            ])
        })
        .map_err(sql)?;
    Ok((
        Written::Signal(SignalOutcome::Appended(sequence)),
        Ring::Signalled(id.to_owned()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn given(n: usize) -> (Write, Reply) {
        let lines = vec![n.to_string()];
        let write = Write::Logs {
            id: "op".into(),
            lines,
        };
        (write, Reply::Given)
    }

    fn lines(batch: &[(Write, Reply)]) -> Vec<String> {
        batch
            .iter()
            .map(|(write, _)| match write {
                Write::Logs { lines, .. } => lines.join(","),
                _ => String::new(),
            })
            .collect()
    }

    #[test]
    fn a_waited_for_write_takes_the_answered_ones_queued_before_it_in_order() {
        let inbox = Inbox::default();
        let (first, reply) = given(1);
        inbox.push(first, reply).expect("queued");
        let (second, _) = given(2);
        let (answer, _receiver) = oneshot::channel();
        inbox.push(second, Reply::Outcome(answer)).expect("queued");
        let batch = inbox.next_batch().expect("a batch");
        assert_eq!(lines(&batch), ["1", "2"]);
    }

    #[test]
    fn a_closed_inbox_hands_over_what_is_left_then_ends() {
        let inbox = Inbox::default();
        let (write, reply) = given(1);
        inbox.push(write, reply).expect("queued");
        inbox.close();
        assert_eq!(lines(&inbox.next_batch().expect("what is left")), ["1"]);
        assert!(inbox.next_batch().is_none());
    }

    #[test]
    fn a_stopped_inbox_refuses_writes_and_drops_those_queued() {
        let inbox = Arc::new(Inbox::default());
        let (answer, receiver) = oneshot::channel();
        let (write, _) = given(1);
        inbox.push(write, Reply::Outcome(answer)).expect("queued");
        drop(Stopping(Arc::clone(&inbox)));
        let (write, reply) = given(2);
        assert!(inbox.push(write, reply).is_err());
        assert!(
            receiver.blocking_recv().is_err(),
            "its caller learns it was dropped"
        );
    }
}
