//! Storage behind the runtime.
//!
//! Every backend (in-memory here; SQLite and PostgreSQL in their own crates) implements [`OperationStore`]:
//! atomic create-if-absent, compare-and-set on the revision, an ordered event log per
//! operation, ordered signals, filtered listing, a feed of every change in the order it
//! became visible, and doorbells that ring on every change.
//! They also implement [`DeploymentStore`]: component versions and the log of deployments.

mod doorbell;
mod memory;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
pub use doorbell::{Doorbell, Doorbells, Rang};
pub use memory::MemoryStore;
use opshost_api::{DeploymentRecord, EventKind, LogLine, OperationEvent, OperationState, Snapshot};
use serde_json::Value;

/// The error beneath a [`StoreError`], shared so that the error can be cloned.
pub type StoreSource = Arc<dyn std::error::Error + Send + Sync>;

/// Why a store call failed, by what a caller should do about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or cannot write now (a lost connection, a database
    /// restarting, a full disk): nothing was changed, and the same call may succeed later.
    #[error("store unavailable: {message}")]
    Unavailable {
        /// What could not be done.
        message: String,
        /// The driver's error, if any.
        #[source]
        source: Option<StoreSource>,
    },
    /// The write contradicts what is stored (an unknown operation, a broken constraint).
    #[error("store conflict: {message}")]
    Conflict {
        /// What conflicted.
        message: String,
        /// The driver's error, if any.
        #[source]
        source: Option<StoreSource>,
    },
    /// What is stored cannot be read back as it was written.
    #[error("store corrupt: {message}")]
    Corrupt {
        /// What could not be read.
        message: String,
        /// The driver's or decoder's error, if any.
        #[source]
        source: Option<StoreSource>,
    },
    /// Any other failure of the store: a bug, or an error of its driver that fits none of the
    /// kinds above.
    #[error("store failed: {message}")]
    Internal {
        /// What failed.
        message: String,
        /// The driver's error, if any.
        #[source]
        source: Option<StoreSource>,
    },
}

impl StoreError {
    /// [`StoreError::Unavailable`] with no source.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable {
            message: message.into(),
            source: None,
        }
    }

    /// [`StoreError::Conflict`] with no source.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::Conflict {
            message: message.into(),
            source: None,
        }
    }

    /// [`StoreError::Corrupt`] with no source.
    pub fn corrupt(message: impl Into<String>) -> Self {
        Self::Corrupt {
            message: message.into(),
            source: None,
        }
    }

    /// [`StoreError::Internal`] with no source.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal {
            message: message.into(),
            source: None,
        }
    }

    /// The same error, caused by `source`.
    pub fn caused_by(mut self, error: impl std::error::Error + Send + Sync + 'static) -> Self {
        let cause = Some(Arc::new(error) as StoreSource);
        match &mut self {
            Self::Unavailable { source, .. }
            | Self::Conflict { source, .. }
            | Self::Corrupt { source, .. }
            | Self::Internal { source, .. } => *source = cause,
        }
        self
    }

    /// Whether the same call may succeed later, unchanged.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

/// Who an operation belongs to: callers of other tenants never see it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    /// The tenant: [`opshost_api::id::DEFAULT_TENANT`] for operations accepted in-process
    /// without one, as for callers whose token names none.
    pub tenant: String,
    /// The subject (`sub`) that started it; empty in-process.
    pub subject: String,
}

impl Default for Owner {
    /// The default tenant, no subject.
    fn default() -> Self {
        Self {
            tenant: opshost_api::id::DEFAULT_TENANT.to_owned(),
            subject: String::new(),
        }
    }
}

/// An operation as stored: its current snapshot, the input it was accepted with and its owner.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredOperation {
    /// Current snapshot.
    pub snapshot: Snapshot,
    /// Start input; `None` when accepted by id alone.
    pub input: Option<Value>,
    /// Who started it.
    pub owner: Owner,
}

/// Result of [`OperationStore::create`].
#[derive(Debug, Clone, PartialEq)]
pub enum CreateOutcome {
    /// The operation did not exist and was created.
    Created(Snapshot),
    /// An operation with that id already existed; nothing was written.
    Existing(StoredOperation),
}

/// Resolves once a write answered before it was durable ([`OperationStore::create_ordered`])
/// is durable, or with the error that kept it from being so.
pub struct Durable(Option<futures::future::BoxFuture<'static, Result<(), StoreError>>>);

impl Durable {
    /// A write durable already.
    pub fn done() -> Self {
        Self(None)
    }

    /// A write durable once `sync` resolves with `Ok`.
    pub fn after(
        sync: impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static,
    ) -> Self {
        Self(Some(Box::pin(sync)))
    }

    /// Whether the write was durable already when answered.
    pub fn is_done(&self) -> bool {
        self.0.is_none()
    }

    /// Waits until the write is durable.
    pub async fn wait(self) -> Result<(), StoreError> {
        match self.0 {
            Some(sync) => sync.await,
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Durable(pending)"
        } else {
            "Durable(done)"
        })
    }
}

/// Result of [`OperationStore::update`].
#[derive(Debug, Clone, PartialEq)]
pub enum UpdateOutcome {
    /// The new snapshot was written.
    Updated(Snapshot),
    /// The stored revision was not the expected one; here is the current snapshot.
    Conflict(Snapshot),
}

/// Result of [`OperationStore::append_signal`].
#[derive(Debug, Clone, PartialEq)]
pub enum SignalOutcome {
    /// Appended with this sequence number (1, 2, ...).
    Appended(u64),
    /// The operation is terminal; nothing was written.
    Terminal(OperationState),
}

/// A signal delivered to an operation.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalRecord {
    /// Order of arrival, from 1.
    pub sequence: u64,
    /// Signal name.
    pub name: String,
    /// Validated payload.
    pub payload: Value,
}

/// Where a change sits in a store's feed of every change: a later change has a greater cursor.
///
/// A store numbers its changes with `seq` alone (`epoch` 0), or, where changes become visible
/// out of the order they were numbered in (PostgreSQL's concurrent transactions), with the
/// transaction's `epoch` first. Written as `seq`, or as `epoch.seq`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChangeCursor {
    /// The store's ordering of what commits together (0 where `seq` alone orders changes).
    pub epoch: u64,
    /// The change's number within its epoch.
    pub seq: u64,
}

impl std::fmt::Display for ChangeCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.epoch {
            0 => write!(f, "{}", self.seq),
            epoch => write!(f, "{epoch}.{}", self.seq),
        }
    }
}

impl std::str::FromStr for ChangeCursor {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let number = |part: &str| part.parse::<u64>().ok();
        let parsed = match text.split_once('.') {
            None => number(text).map(|seq| Self { epoch: 0, seq }),
            Some((epoch, seq)) => number(epoch)
                .zip(number(seq))
                .map(|(epoch, seq)| Self { epoch, seq }),
        };
        parsed.ok_or_else(|| format!("`{text}` is not a change cursor (`seq` or `epoch.seq`)"))
    }
}

/// One change in a store's feed: an operation's event, with the tenant it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Where it sits in the feed.
    pub cursor: ChangeCursor,
    /// The operation's tenant.
    pub tenant: String,
    /// The event.
    pub event: OperationEvent,
}

/// Which operations to list. Filters left `None` admit every operation.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only operations of this tenant.
    pub tenant: Option<String>,
    /// Only this operation name.
    pub operation: Option<String>,
    /// Only this state.
    pub state: Option<OperationState>,
    /// Only ids that start with this.
    pub id_prefix: Option<String>,
    /// Only operations created at or after this.
    pub created_from: Option<DateTime<Utc>>,
    /// Only operations created before this.
    pub created_until: Option<DateTime<Utc>>,
    /// Start after this id (the previous page's `next`).
    pub after: Option<String>,
    /// Page size.
    pub limit: usize,
}

/// One page of a listing, ordered by id.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The snapshots on this page.
    pub items: Vec<Snapshot>,
    /// Cursor of the next page, if any.
    pub next: Option<String>,
}

/// One row of [`OperationStore::count_by_state`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateCount {
    /// Operation name.
    pub operation: String,
    /// State.
    pub state: OperationState,
    /// How many operations of that name are in that state.
    pub count: u64,
}

/// Whether `operation` is stored under its bare key in a tenant that scopes its keys (see
/// [`OperationStore::holds_unscoped_keys`]).
pub fn is_unscoped(operation: &StoredOperation) -> bool {
    operation.owner.tenant != opshost_api::id::DEFAULT_TENANT
        && !operation.snapshot.id.contains('@')
}

/// Whether an update of `kind` must be durable before [`OperationStore::update`] answers.
/// Everything a caller asked for (cancel), every terminal snapshot and every restart is; a
/// handler's own reports (started, progress) need not be, as re-running the handler after a
/// crash reports them again.
pub fn must_be_durable(kind: EventKind) -> bool {
    !matches!(kind, EventKind::Started | EventKind::Progress)
}

/// Durable home of operations, their event logs and their signals.
#[async_trait]
pub trait OperationStore: Send + Sync + 'static {
    /// Creates the operation (revision 1, `Accepted`) unless its id exists.
    async fn create(&self, operation: StoredOperation) -> Result<CreateOutcome, StoreError>;

    /// [`OperationStore::create`] in two steps: answers as soon as the outcome is decided and
    /// ordered before every later write to the store, with a [`Durable`] that resolves once the
    /// write is durable. Until then no reader sees the operation, and a crash may lose it, never
    /// a later write without it. By default, [`OperationStore::create`], durable as it answers.
    async fn create_ordered(
        &self,
        operation: StoredOperation,
    ) -> Result<(CreateOutcome, Durable), StoreError> {
        Ok((self.create(operation).await?, Durable::done()))
    }

    /// Loads an operation.
    async fn load(&self, id: &str) -> Result<Option<StoredOperation>, StoreError>;

    /// Writes `next` if the stored revision is `next.revision - 1`, appending an event of `kind`.
    ///
    /// A change that [`must_be_durable`] returns only once it is durable. Any other change
    /// (started, progress) may return once it is ordered before every later write to the
    /// store, before it is durable: a crash may lose it, never a later write without it. Either
    /// way, readers ([`OperationStore::load`], [`OperationStore::events_after`], doorbells) see
    /// a change only once it is durable.
    async fn update(&self, next: Snapshot, kind: EventKind) -> Result<UpdateOutcome, StoreError>;

    /// Events with a revision above `after`, oldest first.
    async fn events_after(&self, id: &str, after: u64) -> Result<Vec<OperationEvent>, StoreError>;

    /// Appends a signal unless the operation is terminal.
    async fn append_signal(
        &self,
        id: &str,
        name: &str,
        payload: Value,
    ) -> Result<SignalOutcome, StoreError>;

    /// Signals with a sequence above `after`, oldest first.
    async fn signals_after(&self, id: &str, after: u64) -> Result<Vec<SignalRecord>, StoreError>;

    /// Appends log lines to operation `id`'s logs, in order; their `seq` is the store's to
    /// give. Lines are kept as long as the operation and purged with it.
    async fn append_logs(&self, id: &str, lines: Vec<LogLine>) -> Result<(), StoreError>;

    /// At most `limit` log lines of operation `id` with a `seq` above `after`, oldest first.
    async fn logs_after(
        &self,
        id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogLine>, StoreError>;

    /// At most `limit` changes to any operation after `after`, in the order they became
    /// visible to readers (only durable ones, as for [`OperationStore::events_after`]). The
    /// changes of a purged operation are gone from the feed with it.
    async fn changes_after(
        &self,
        after: ChangeCursor,
        limit: usize,
    ) -> Result<Vec<Change>, StoreError>;

    /// The cursor after every change visible now: reading from it yields only later changes.
    async fn change_head(&self) -> Result<ChangeCursor, StoreError>;

    /// A doorbell that rings after every change to any operation (see [`Doorbells::any`]).
    fn subscribe_changes(&self) -> tokio::sync::watch::Receiver<()>;

    /// Lists operations by filter.
    async fn list(&self, filter: &ListFilter) -> Result<Page, StoreError>;

    /// How many operations there are of each operation name and state.
    async fn count_by_state(&self) -> Result<Vec<StateCount>, StoreError>;

    /// Every operation that is not terminal, oldest first.
    async fn unfinished(&self) -> Result<Vec<StoredOperation>, StoreError>;

    /// The unfinished operations no live host runs, now claimed by this one, oldest first (for
    /// recovery). By default every unfinished operation: a store that one host owns holds only
    /// what a previous run of that host left.
    async fn claim_orphans(&self) -> Result<Vec<StoredOperation>, StoreError> {
        self.unfinished().await
    }

    /// Whether an operation of a tenant other than the default may be stored under its bare
    /// key, as accepted before keys were scoped to tenants, so that an accept must look its key
    /// up bare too. A store that holds none answers `false` and saves that read: nothing stores
    /// such an operation any more but a direct [`OperationStore::create`], which sets it again.
    fn holds_unscoped_keys(&self) -> bool {
        true
    }

    /// Whether several hosts share this store, so that operations may be orphaned by another
    /// host's death at any time (and [`OperationStore::claim_orphans`] is worth calling again).
    fn is_shared(&self) -> bool {
        false
    }

    /// Deletes terminal operations (with their events and signals) completed before `cutoff`;
    /// returns how many. Never touches a non-terminal operation.
    async fn purge(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Returns once every write answered so far is durable and shown to readers.
    async fn flush(&self) -> Result<(), StoreError>;

    /// Called once as the host shuts down: makes every write durable and, on a shared store,
    /// gives up this host's claim on its operations at once, telling the other hosts.
    async fn release(&self) -> Result<(), StoreError> {
        self.flush().await
    }

    /// Resolves when another host gave up its operations (see [`OperationStore::release`]),
    /// so that this one can take them over at once. Never on a store this host owns alone.
    async fn orphans_released(&self) {
        std::future::pending().await
    }

    /// A doorbell for one operation: it rings after every write to it, and closes once the
    /// operation is terminal. Dropping the last one of an operation forgets its entry.
    fn subscribe(&self, id: &str) -> Doorbell;

    /// A doorbell for one operation that rings for the changes other hosts sharing the store
    /// make to it, which this host learns of only from the store. By default, for every change
    /// ([`OperationStore::subscribe`]).
    fn subscribe_elsewhere(&self, id: &str) -> Doorbell {
        self.subscribe(id)
    }

    /// How many operations have a doorbell held on this host.
    fn doorbells(&self) -> usize;
}

/// Durable home of deployments: the bytes of every component version deployed, by sha256,
/// and the log of changes to which version serves each operation and queue. Every host on a
/// shared store reads the same log, so a version deployed through one is served by all.
#[async_trait]
pub trait DeploymentStore: Send + Sync + 'static {
    /// Keeps `bytes`, the component whose sha256 is `sha256`; keeping it again changes nothing.
    async fn put_component(&self, sha256: &str, bytes: Vec<u8>) -> Result<(), StoreError>;

    /// The bytes of component `sha256`, if kept.
    async fn component(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Appends `record` to the deployment log; answers the `seq` it was given.
    async fn record_deployment(&self, record: DeploymentRecord) -> Result<u64, StoreError>;

    /// The records with a `seq` above `after`, oldest first.
    async fn deployments_after(&self, after: u64) -> Result<Vec<DeploymentRecord>, StoreError>;
}
