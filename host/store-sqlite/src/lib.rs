//! The embedded SQLite store: the default of `opshost serve`.
//!
//! - **Durable before shown.** Every write (accept, transition, signal, job change) is on disk
//!   before any reader of this store can see it, through a read, the cache or a doorbell, and
//!   before its caller is answered, with two exceptions. A handler's `started` and `progress`
//!   (and a job's lease, heartbeat and progress) are answered once ordered: at enqueue, when
//!   the compare-and-set is certain there (see `cache`), else at commit. And an accept made
//!   with `create_ordered` answers its outcome at commit, and that it is durable after the sync.
//! - **Group commit, pipelined.** One writer thread owns the write connection and commits every
//!   queued write in one transaction; a sync thread makes whole runs of such commits durable
//!   with one `fdatasync` of the WAL while the writer goes on (see `writer`). A write that fails
//!   in SQLite never undoes its neighbours (the batch is redone with a savepoint per write).
//! - **Readers** use a small pool of read-only connections on blocking threads; WAL lets them
//!   read while the writer commits.
//! - **Checkpoints** run on a thread of their own, never inside a commit.
//! - **Jobs** live in the same file and go through the same writer (see `jobs`).
//! - **Deployments** (component bytes and the deployment log) are rare writes, each made on
//!   a connection of its own and synced at commit (see `deployments`).
//! - **Migrations** are embedded and applied in order, tracked by `PRAGMA user_version`.
//!
//! - **Cache.** What readers see of running and recently finished operations without reading
//!   the database, and the writes queued for each (see `cache`).
//!
//! Doorbells ring once a change is published, after its sync, so a woken watcher always reads
//! it.

mod cache;
mod checkpoint;
mod deployments;
mod job_writes;
mod jobs;
mod log_writes;
mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use opshost_api::{EventKind, LogLine, OperationEvent, OperationState, Snapshot};
use opshost_runtime::store::{
    Change, ChangeCursor, CreateOutcome, Doorbell, Doorbells, Durable, ListFilter, OperationStore,
    Owner, Page, SignalOutcome, SignalRecord, StateCount, StoreError, StoredOperation,
    UpdateOutcome, is_unscoped,
};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde_json::Value;

use crate::cache::Cache;
use crate::checkpoint::Checkpointer;
use crate::writer::{Write, Writer, Written, unexpected};

/// Why a store cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The data directory cannot be created or written.
    #[error("data directory {path}: {message}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The database file cannot be opened, is not a database, or fails its integrity check.
    #[error("database {path}: {message}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// The SQLite store. Cheap to share behind an `Arc`.
pub struct SqliteStore {
    path: PathBuf,
    writer: Writer,
    _checkpointer: Checkpointer,
    readers: Mutex<Vec<Connection>>,
    shared: Arc<Shared>,
    /// See [`OperationStore::holds_unscoped_keys`]: read at open, set by a create of one.
    unscoped: AtomicBool,
}

/// What the writer thread changes after each commit and the store's readers see.
#[derive(Default)]
pub(crate) struct Shared {
    /// Doorbells by operation id.
    pub(crate) bells: Doorbells,
    /// Operations as last committed: every unfinished one, and the latest finished ones.
    pub(crate) cache: Mutex<Cache>,
    /// The `seq` of the last event published: every event up to it is durable.
    pub(crate) published: AtomicU64,
    /// Why every write is refused, once a sync failed.
    pub(crate) poisoned: OnceLock<String>,
    /// While set, each sync waits for a message on it (`false` fails the sync), or for its
    /// sender to go.
    #[cfg(test)]
    pub(crate) held: Mutex<Option<std::sync::mpsc::Receiver<bool>>>,
    /// While set, every batch is synced by the sync thread, none by the writer.
    #[cfg(test)]
    pub(crate) syncer_only: std::sync::atomic::AtomicBool,
}

/// The database file inside a data directory.
pub const DATABASE_FILE: &str = "opshost.sqlite3";

impl SqliteStore {
    /// Opens (creating if needed) the store in `data_dir`, migrating it to the current schema.
    pub fn open(data_dir: impl AsRef<Path>) -> Result<Self, OpenError> {
        let dir = data_dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| OpenError::Directory {
            path: dir.to_path_buf(),
            message: e.to_string(),
        })?;
        let path = dir.join(DATABASE_FILE);
        let database = |e: rusqlite::Error| OpenError::Database {
            path: path.clone(),
            message: e.to_string(),
        };
        let connection = Connection::open(&path).map_err(database)?;
        schema::prepare(&connection).map_err(|message| OpenError::Database {
            path: path.clone(),
            message,
        })?;
        let shared = Arc::new(Shared::default());
        let last_event: u64 = connection
            .query_row("SELECT coalesce(max(seq), 0) FROM events", [], |row| {
                row.get(0)
            })
            .map_err(database)?;
        shared.published.store(last_event, Ordering::Release);
        let unscoped: bool = connection
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM operations WHERE tenant <> ?1 AND instr(id, '@') = 0)",
                [opshost_api::id::DEFAULT_TENANT],
                |row| row.get(0),
            )
            .map_err(database)?;
        let unfinished = unfinished(&connection).map_err(database)?;
        {
            let mut cache = lock(&shared.cache);
            for stored in unfinished {
                cache.created(stored);
            }
        }
        // One host owns the file: the leases of a previous run are void, so its jobs are due
        // again at once instead of after their leases run out.
        connection
            .execute("UPDATE jobs SET due_at = 0 WHERE state = 'running'", [])
            .map_err(database)?;
        // Durability comes from the syncer's fdatasync of the WAL, not from each commit.
        connection
            .execute_batch("PRAGMA wal_autocheckpoint = 0; PRAGMA synchronous = OFF;")
            .map_err(database)?;
        let checkpointer = Checkpointer::start(&path).map_err(database)?;
        let wal = dir.join(format!("{DATABASE_FILE}-wal"));
        let writer = Writer::start(connection, wal, Arc::clone(&shared));
        Ok(Self {
            path,
            writer,
            _checkpointer: checkpointer,
            readers: Mutex::new(Vec::new()),
            shared,
            unscoped: AtomicBool::new(unscoped),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `page` (of operations in `state`, if given) as readers may see it: an operation with
    /// writes queued and not yet published shows its published state if that still matches,
    /// and not at all while its accept is not durable.
    fn shown(&self, mut page: Page, state: Option<OperationState>) -> Page {
        let cache = lock(&self.shared.cache);
        page.items.retain_mut(|item| {
            if !cache.is_queued(&item.id) {
                return true;
            }
            match cache.get(&item.id) {
                Some(stored) => {
                    *item = stored.snapshot;
                    state.is_none_or(|state| item.state == state)
                }
                None => false,
            }
        });
        page
    }

    /// Runs `read` on a pooled read-only connection on a blocking thread.
    async fn read<T, F>(&self, read: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        // The database may hold commits a failed sync never made durable.
        if let Some(reason) = self.shared.poisoned.get() {
            return Err(StoreError::unavailable(reason.clone()));
        }
        let pooled = lock(&self.readers).pop();
        let connection = match pooled {
            Some(connection) => connection,
            None => {
                let connection = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(failed)?;
                connection.execute_batch(schema::SETTINGS).map_err(failed)?;
                connection
            }
        };
        let (connection, result) = tokio::task::spawn_blocking(move || {
            let result = read(&connection);
            (connection, result)
        })
        .await
        .map_err(|e| StoreError::internal("the store reader stopped").caused_by(e))?;
        lock(&self.readers).push(connection);
        result.map_err(failed)
    }

    async fn write(&self, write: Write) -> Result<Written, StoreError> {
        self.writer.submit(write).await
    }

    /// Operation `id` as published, if cached. An operation the cache does not hold but has
    /// writes queued for (one being created, most often) may be in the database before it is
    /// durable: this waits until what is queued now is published.
    async fn published(&self, id: &str) -> Result<Option<StoredOperation>, StoreError> {
        {
            let cache = lock(&self.shared.cache);
            let stored = cache.get(id);
            if stored.is_some() || !cache.is_queued(id) {
                return Ok(stored);
            }
        }
        self.flush().await?;
        Ok(lock(&self.shared.cache).get(id))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An SQLite error as a store error of the right kind: busy, locked, full or failing I/O is
/// unavailable; a broken constraint is a conflict; a damaged file or an undecodable row is
/// corrupt.
pub(crate) fn failed(error: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as Code;
    let message = format!("sqlite: {error}");
    let kind = match &error {
        rusqlite::Error::SqliteFailure(failure, _) => match failure.code {
            Code::DatabaseBusy
            | Code::DatabaseLocked
            | Code::DiskFull
            | Code::SystemIoFailure
            | Code::CannotOpen
            | Code::OutOfMemory
            | Code::ReadOnly => StoreError::unavailable(message),
            Code::ConstraintViolation => StoreError::conflict(message),
            Code::DatabaseCorrupt | Code::NotADatabase => StoreError::corrupt(message),
            _ => StoreError::internal(message),
        },
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) => StoreError::corrupt(message),
        _ => StoreError::internal(message),
    };
    kind.caused_by(error)
}

fn decode<T: serde::de::DeserializeOwned>(text: &str) -> rusqlite::Result<T> {
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn stored_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredOperation> {
    let snapshot: String = row.get(0)?;
    let input: Option<String> = row.get(1)?;
    Ok(StoredOperation {
        snapshot: decode(&snapshot)?,
        input: input.as_deref().map(decode).transpose()?,
        owner: Owner {
            tenant: row.get(2)?,
            subject: row.get(3)?,
        },
    })
}

/// Operations with their current snapshot (`o` is the operation row, `e` its current event).
const SELECT_STORED: &str = "SELECT e.snapshot, o.input, o.tenant, o.subject FROM operations o \
     JOIN events e ON e.id = o.id AND e.revision = o.revision";

fn unfinished(db: &Connection) -> rusqlite::Result<Vec<StoredOperation>> {
    let mut statement = db.prepare_cached(&format!(
        "{SELECT_STORED} WHERE o.state IN ('pending', 'running') ORDER BY o.created_at, o.id"
    ))?;
    let rows = statement.query_map([], stored_from_row)?;
    rows.collect()
}

#[async_trait]
impl OperationStore for SqliteStore {
    async fn create(&self, operation: StoredOperation) -> Result<CreateOutcome, StoreError> {
        let (outcome, durable) = self.create_ordered(operation).await?;
        durable.wait().await?;
        Ok(outcome)
    }

    async fn create_ordered(
        &self,
        operation: StoredOperation,
    ) -> Result<(CreateOutcome, Durable), StoreError> {
        if is_unscoped(&operation) {
            self.unscoped.store(true, Ordering::Relaxed);
        }
        self.writer.create_ordered(operation).await
    }

    async fn load(&self, id: &str) -> Result<Option<StoredOperation>, StoreError> {
        if let Some(stored) = self.published(id).await? {
            return Ok(Some(stored));
        }
        let owned = id.to_owned();
        let read = self
            .read(move |db| {
                db.query_row(
                    &format!("{SELECT_STORED} WHERE o.id = ?1"),
                    params![owned],
                    stored_from_row,
                )
                .optional()
            })
            .await?;
        // A create queued meanwhile may have committed before the read: not durable yet.
        match read {
            Some(_) if lock(&self.shared.cache).is_queued(id) => self.published(id).await,
            read => Ok(read),
        }
    }

    async fn update(&self, next: Snapshot, kind: EventKind) -> Result<UpdateOutcome, StoreError> {
        self.writer.update(next, kind).await
    }

    async fn events_after(&self, id: &str, after: u64) -> Result<Vec<OperationEvent>, StoreError> {
        // The database may already hold a commit that is not durable yet: show only what the
        // cache (published after the sync) shows.
        let durable = self
            .published(id)
            .await?
            .map(|stored| stored.snapshot.revision);
        let queried = id.to_owned();
        let id = id.to_owned();
        let events = self.read(move |db| {
            let mut statement = db.prepare_cached(
                "SELECT kind, snapshot FROM events WHERE id = ?1 AND revision > ?2 ORDER BY revision",
            )?;
            let rows = statement.query_map(params![id, after], |row| {
                let kind: String = row.get(0)?;
                let snapshot: String = row.get(1)?;
                Ok((kind, snapshot))
            })?;
            let mut events: Vec<OperationEvent> = Vec::new();
            for row in rows {
                let (kind, snapshot) = row?;
                let kind = EventKind::from_name(&kind).ok_or_else(|| {
                    rusqlite::Error::InvalidColumnType(0, kind.clone(), rusqlite::types::Type::Text)
                })?;
                events.push(OperationEvent::new(kind, decode(&snapshot)?));
            }
            Ok(events)
        })
        .await?;
        // A create queued meanwhile may have committed before the read: not durable yet.
        let durable = match durable {
            None if lock(&self.shared.cache).is_queued(&queried) => Some(
                self.published(&queried)
                    .await?
                    .map_or(0, |stored| stored.snapshot.revision),
            ),
            durable => durable,
        };
        Ok(match durable {
            Some(durable) => events
                .into_iter()
                .filter(|event| event.snapshot().revision <= durable)
                .collect(),
            None => events,
        })
    }

    async fn append_signal(
        &self,
        id: &str,
        name: &str,
        payload: Value,
    ) -> Result<SignalOutcome, StoreError> {
        let write = Write::Signal {
            id: id.to_owned(),
            name: name.to_owned(),
            payload,
        };
        match self.write(write).await? {
            Written::Signal(outcome) => Ok(outcome),
            other => Err(unexpected(other)),
        }
    }

    async fn signals_after(&self, id: &str, after: u64) -> Result<Vec<SignalRecord>, StoreError> {
        let id = id.to_owned();
        self.read(move |db| {
            let mut statement = db.prepare_cached(
                "SELECT sequence, name, payload FROM signals WHERE id = ?1 AND sequence > ?2 ORDER BY sequence",
            )?;
            let rows = statement.query_map(params![id, after], |row| {
                let payload: String = row.get(2)?;
                Ok(SignalRecord {
                    sequence: row.get(0)?,
                    name: row.get(1)?,
                    payload: decode(&payload)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn append_logs(&self, id: &str, lines: Vec<LogLine>) -> Result<(), StoreError> {
        let lines = lines
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::internal("cannot encode a log line").caused_by(e))?;
        let write = Write::Logs {
            id: id.to_owned(),
            lines,
        };
        match self.write(write).await? {
            Written::Logged => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn logs_after(
        &self,
        id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogLine>, StoreError> {
        let id = id.to_owned();
        self.read(move |db| {
            log_writes::after(db, &id, after, limit)?
                .into_iter()
                .map(|(seq, line)| {
                    let mut line: LogLine = decode(&line)?;
                    line.seq = seq;
                    Ok(line)
                })
                .collect()
        })
        .await
    }

    async fn changes_after(
        &self,
        after: ChangeCursor,
        limit: usize,
    ) -> Result<Vec<Change>, StoreError> {
        // The database may already hold commits that are not durable yet.
        let published = self.shared.published.load(Ordering::Acquire);
        if after.seq >= published {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |db| {
            let mut statement = db.prepare_cached(
                "SELECT e.seq, e.kind, e.snapshot, o.tenant FROM events e
                 JOIN operations o ON o.id = e.id
                 WHERE e.seq > ?1 AND e.seq <= ?2 ORDER BY e.seq LIMIT ?3",
            )?;
            let rows = statement.query_map(params![after.seq, published, limit], |row| {
                let kind: String = row.get(1)?;
                let kind = EventKind::from_name(&kind).ok_or_else(|| {
                    rusqlite::Error::InvalidColumnType(1, kind.clone(), rusqlite::types::Type::Text)
                })?;
                Ok(Change {
                    cursor: ChangeCursor {
                        epoch: 0,
                        seq: row.get(0)?,
                    },
                    event: OperationEvent::new(kind, decode(&row.get::<_, String>(2)?)?),
                    tenant: row.get(3)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn change_head(&self) -> Result<ChangeCursor, StoreError> {
        Ok(ChangeCursor {
            epoch: 0,
            seq: self.shared.published.load(Ordering::Acquire),
        })
    }

    fn subscribe_changes(&self) -> tokio::sync::watch::Receiver<()> {
        self.shared.bells.any()
    }

    fn holds_unscoped_keys(&self) -> bool {
        self.unscoped.load(Ordering::Relaxed)
    }

    async fn list(&self, filter: &ListFilter) -> Result<Page, StoreError> {
        let state = filter.state;
        let filter = filter.clone();
        self.read(move |db| {
            let mut statement = db.prepare_cached(
                "SELECT e.snapshot FROM operations o
                 JOIN events e ON e.id = o.id AND e.revision = o.revision
                 WHERE (?1 IS NULL OR o.tenant = ?1) AND (?2 IS NULL OR o.operation = ?2)
                   AND (?3 IS NULL OR o.state = ?3) AND (?4 IS NULL OR o.id > ?4)
                   AND (?6 IS NULL OR (o.id >= ?6 AND substr(o.id, 1, length(?6)) = ?6))
                   AND (?7 IS NULL OR o.created_at >= ?7) AND (?8 IS NULL OR o.created_at < ?8)
                 ORDER BY o.id LIMIT ?5",
            )?;
            let at = |at: Option<DateTime<Utc>>| {
                at.map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
            };
            let limit = i64::try_from(filter.limit).unwrap_or(i64::MAX - 1) + 1;
            let rows = statement.query_map(
                params![
                    filter.tenant,
                    filter.operation,
                    filter.state.map(OperationState::as_str),
                    filter.after,
                    limit,
                    filter.id_prefix,
                    at(filter.created_from),
                    at(filter.created_until)
                ],
                |row| decode::<Snapshot>(&row.get::<_, String>(0)?),
            )?;
            let mut items = rows.collect::<rusqlite::Result<Vec<_>>>()?;
            let next = if items.len() > filter.limit {
                items.truncate(filter.limit);
                items.last().map(|last| last.id.clone())
            } else {
                None
            };
            Ok(Page { items, next })
        })
        .await
        .map(|page| self.shown(page, state))
    }

    async fn count_by_state(&self) -> Result<Vec<StateCount>, StoreError> {
        self.read(|db| {
            let mut statement = db.prepare_cached(
                "SELECT operation, state, count(*) FROM operations GROUP BY operation, state ORDER BY operation, state",
            )?;
            let rows = statement.query_map([], |row| {
                let state: String = row.get(1)?;
                Ok(StateCount {
                    operation: row.get(0)?,
                    state: decode(&format!("\"{state}\""))?,
                    count: row.get(2)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn unfinished(&self) -> Result<Vec<StoredOperation>, StoreError> {
        self.read(unfinished).await
    }

    async fn purge(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        match self.write(Write::Purge(cutoff)).await? {
            Written::Purged(count) => Ok(count),
            other => Err(unexpected(other)),
        }
    }

    async fn flush(&self) -> Result<(), StoreError> {
        match self.write(Write::Flush).await? {
            Written::Flushed => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    fn subscribe(&self, id: &str) -> Doorbell {
        self.shared.bells.subscribe(id)
    }

    fn doorbells(&self) -> usize {
        self.shared.bells.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use opshost_api::OperationState;

    use super::*;

    /// A store whose syncs wait for the answered sender: `true` syncs, `false` fails the sync,
    /// and every sync goes ahead once it is dropped. With `syncer_only`, every batch is synced
    /// by the sync thread; else by the writer whenever the sync thread is idle.
    fn held_store(
        syncer_only: bool,
    ) -> (
        SqliteStore,
        std::sync::mpsc::Sender<bool>,
        tempfile::TempDir,
    ) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = SqliteStore::open(dir.path()).expect("the store opens");
        let (release, held) = std::sync::mpsc::channel();
        *lock(&store.shared.held) = Some(held);
        store
            .shared
            .syncer_only
            .store(syncer_only, std::sync::atomic::Ordering::SeqCst);
        (store, release, dir)
    }

    fn accepted(id: &str) -> StoredOperation {
        StoredOperation {
            snapshot: Snapshot::accepted(id.into(), "s".into(), "Op".into(), "v1".into()),
            input: None,
            owner: Owner::default(),
        }
    }

    fn next(current: &Snapshot, state: OperationState) -> Snapshot {
        let mut snapshot = current.clone();
        snapshot.revision += 1;
        snapshot.state = state;
        snapshot
    }

    /// `update` to `snapshot`, answered with it.
    async fn reported(store: &SqliteStore, snapshot: &Snapshot, kind: EventKind) {
        let answer = store.update(snapshot.clone(), kind).await;
        assert_eq!(
            answer.expect("answered"),
            UpdateOutcome::Updated(snapshot.clone())
        );
    }

    async fn still_waiting<T>(future: impl std::future::Future<Output = T>) -> bool {
        tokio::time::timeout(Duration::from_millis(100), future)
            .await
            .is_err()
    }

    #[tokio::test]
    async fn an_ordered_create_answers_at_commit_and_shows_nothing_until_it_is_durable() {
        let (store, release, _dir) = held_store(false);
        let (outcome, durable) = store.create_ordered(accepted("a")).await.expect("ordered");
        assert!(matches!(outcome, CreateOutcome::Created(_)));

        let all = ListFilter {
            limit: 10,
            ..ListFilter::default()
        };
        assert!(store.list(&all).await.expect("a page").items.is_empty());
        let feed = store.changes_after(ChangeCursor::default(), 10).await;
        assert!(feed.expect("the feed").is_empty());
        assert!(
            still_waiting(store.load("a")).await,
            "a read waits for the sync"
        );

        drop(release);
        durable.wait().await.expect("durable");
        let loaded = store
            .load("a")
            .await
            .expect("a read")
            .expect("the operation");
        assert_eq!(loaded.snapshot.revision, 1);
        assert_eq!(store.list(&all).await.expect("a page").items.len(), 1);
    }

    #[tokio::test]
    async fn a_handlers_reports_are_answered_before_their_commit_and_shown_only_once_durable() {
        reports_answered_before_commit_shown_once_durable(false).await;
    }

    #[tokio::test]
    async fn through_the_sync_thread_reports_are_answered_before_commit_and_shown_once_durable() {
        reports_answered_before_commit_shown_once_durable(true).await;
    }

    async fn reports_answered_before_commit_shown_once_durable(syncer_only: bool) {
        let (store, release, _dir) = held_store(syncer_only);
        let (_, durable) = store.create_ordered(accepted("a")).await.expect("ordered");
        let created = accepted("a").snapshot;

        // The accept is not durable yet: the handler's reports are still answered at once.
        let started = next(&created, OperationState::Running);
        reported(&store, &started, EventKind::Started).await;
        let mut progress = next(&started, OperationState::Running);
        progress.progress = Some(serde_json::json!({"done": 1}));
        reported(&store, &progress, EventKind::Progress).await;

        let mut done = next(&progress, OperationState::Completed);
        done.completed_at = Some(done.updated_at);
        let completed = store.update(done.clone(), EventKind::Completed);
        let mut completed = Box::pin(completed);
        let feed = store.changes_after(ChangeCursor::default(), 10).await;
        assert!(
            feed.expect("the feed").is_empty(),
            "nothing in the feed yet"
        );
        let all = ListFilter {
            limit: 10,
            ..ListFilter::default()
        };
        assert!(store.list(&all).await.expect("a page").items.is_empty());
        assert!(
            still_waiting(&mut completed).await,
            "a terminal change waits for its sync"
        );

        drop(release);
        durable.wait().await.expect("durable");
        assert_eq!(
            completed.await.expect("answered"),
            UpdateOutcome::Updated(done)
        );
        let events = store.events_after("a", 0).await.expect("the events");
        let revisions: Vec<u64> = events.iter().map(|e| e.snapshot().revision).collect();
        assert_eq!(revisions, [1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn after_a_failed_sync_nothing_is_shown_and_every_write_is_refused() {
        failed_sync_shows_nothing_and_refuses_every_write(false).await;
    }

    #[tokio::test]
    async fn after_a_failed_sync_in_the_sync_thread_nothing_is_shown_and_writes_are_refused() {
        failed_sync_shows_nothing_and_refuses_every_write(true).await;
    }

    async fn failed_sync_shows_nothing_and_refuses_every_write(syncer_only: bool) {
        let (store, release, _dir) = held_store(syncer_only);
        let (_, durable) = store.create_ordered(accepted("a")).await.expect("ordered");
        release.send(false).expect("the syncer waits");
        let error = durable.wait().await.expect_err("the sync failed");
        assert!(error.to_string().contains("could not be synced"), "{error}");

        assert!(
            store.load("a").await.is_err(),
            "the commit is in the file, not durable"
        );
        let all = ListFilter {
            limit: 10,
            ..ListFilter::default()
        };
        assert!(store.list(&all).await.is_err());
        assert!(store.events_after("a", 0).await.is_err());
        let refused = store.create(accepted("b")).await;
        assert!(refused.is_err(), "a later write is refused: {refused:?}");
    }

    #[tokio::test]
    async fn a_change_on_a_revision_already_moved_by_a_queued_one_conflicts_with_it() {
        let (store, release, _dir) = held_store(false);
        drop(release);
        store.create(accepted("a")).await.expect("created");
        let created = accepted("a").snapshot;
        let started = next(&created, OperationState::Running);
        reported(&store, &started, EventKind::Started).await;

        let mut cancel = next(&created, OperationState::Pending);
        cancel.cancel_requested = true;
        let answer = store.update(cancel, EventKind::CancelRequested).await;
        assert_eq!(answer.expect("answered"), UpdateOutcome::Conflict(started));
    }
}
