//! The untyped operation runtime: the one place where operations change.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::Utc;
use futures::Stream;
use futures::future::BoxFuture;
use opshost_api::{
    ErrorCode, ErrorInfo, EventKind, Operation, OperationEvent, OperationState, Snapshot,
};
use opshost_contract::{Contract, OperationSpec, PayloadSchema};
use serde_json::Value;
use tokio::sync::broadcast;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use crate::error::ServerError;
use crate::handoff::JobHandOff;
use crate::store::{
    CreateOutcome, ListFilter, MemoryStore, OperationStore, Owner, Page, SignalOutcome,
    SignalRecord, StateCount, StoredOperation, UpdateOutcome,
};
use crate::typed::Operations;

/// Tunables of a runtime.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// How long a cancelled handler has to clean up before it is stopped by force.
    pub cancel_grace: Duration,
    /// How many handlers run on this host at once; further accepted operations wait as
    /// `pending` for a slot. `None` means no limit.
    pub concurrency: Option<usize>,
    /// How many accepted operations may wait for a slot; further starts are refused with
    /// `Overloaded`.
    pub backlog: usize,
    /// Largest input or signal payload a caller may send, in bytes of JSON.
    pub max_payload_bytes: usize,
}

impl Default for RuntimeConfig {
    /// A 5 s cancel grace, no concurrency limit, a backlog of 10,000 and 1 MiB payloads.
    fn default() -> Self {
        Self {
            cancel_grace: Duration::from_secs(5),
            concurrency: None,
            backlog: 10_000,
            max_payload_bytes: 1 << 20,
        }
    }
}

/// Handler slots: a semaphore of `concurrency` permits, and how many launched handlers wait
/// for one (at most `backlog`).
struct Slots {
    permits: Arc<tokio::sync::Semaphore>,
    waiting: Arc<AtomicUsize>,
}

/// A launched handler waiting for a slot: counted in [`Slots::waiting`] until dropped.
struct Queued {
    permits: Arc<tokio::sync::Semaphore>,
    waiting: Arc<AtomicUsize>,
}

impl Queued {
    fn new(slots: &Slots) -> Self {
        slots.waiting.fetch_add(1, Ordering::SeqCst);
        Self {
            permits: Arc::clone(&slots.permits),
            waiting: Arc::clone(&slots.waiting),
        }
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a host does with an operation it finds unfinished when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Run its handler again with `attempt + 1`; once `max_attempts` ran, fail it.
    Retry {
        /// Attempts in all, the first included.
        max_attempts: u32,
    },
    /// Fail it with `HostRestarted`.
    Fail,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self::Retry { max_attempts: 3 }
    }
}

/// What [`OperationRuntime::recover`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Operations whose handler runs again.
    pub retried: usize,
    /// Operations failed with `HostRestarted`.
    pub failed: usize,
    /// Operations whose cancel request was pending: now `cancelled`.
    pub cancelled: usize,
    /// Operations left to the job that owns their terminal path.
    pub owned_by_jobs: usize,
}

/// Runs accepted operations of one operation name: a wasm component or native code.
///
/// The runtime spawns [`OperationHandler::run`] on its own task once the operation is accepted;
/// the handler reports through the runtime it is given. When `run` returns, the runtime holds
/// the attach rule for every kind of handler: an error fails the operation with it, and an
/// operation still non-terminal fails with `HandlerNonTerminal`.
pub trait OperationHandler: Send + Sync + 'static {
    /// Drives operation `snapshot` (accepted with `input`) to a terminal state, or answers the
    /// failure to record.
    fn run(
        &self,
        runtime: OperationRuntime,
        snapshot: Snapshot,
        input: Option<Value>,
    ) -> BoxFuture<'static, Result<(), ErrorInfo>>;
}

/// What a wait for the next signal ended with.
#[derive(Debug, Clone, PartialEq)]
pub enum SignalWait {
    /// The next signal.
    Signal(SignalRecord),
    /// The timeout passed with no new signal.
    TimedOut,
    /// Cancellation was requested.
    Cancelled,
}

/// The result of [`OperationRuntime::accept`].
#[derive(Debug, Clone, PartialEq)]
pub struct Acceptance {
    /// The operation's snapshot (the existing one when it was already accepted).
    pub snapshot: Snapshot,
    /// Whether this call created the operation.
    pub created: bool,
}

/// In-process state of an operation that is still running here.
#[derive(Default)]
struct Live {
    cancel: CancellationToken,
    task: Mutex<Option<AbortHandle>>,
    /// The newest snapshot written here. It may be ahead of what the store shows readers:
    /// a store answers `started` and `progress` before they are durable.
    latest: Mutex<Option<Snapshot>>,
    /// Set once the handler handed the terminal path to a job.
    handed_off: std::sync::atomic::AtomicBool,
}

struct Inner {
    service: String,
    contract: OnceLock<Arc<Contract>>,
    store: Arc<dyn OperationStore>,
    config: RuntimeConfig,
    live: Mutex<HashMap<String, Arc<Live>>>,
    handlers: Mutex<HashMap<String, Arc<dyn OperationHandler>>>,
    feed: broadcast::Sender<OperationEvent>,
    jobs: OnceLock<Arc<dyn JobHandOff>>,
    slots: Option<Slots>,
}

/// The operation runtime of one service. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct OperationRuntime {
    inner: Arc<Inner>,
}

/// An [`OperationRuntime`] created with [`OperationRuntime::new`] keeps its operations in memory.
pub type InMemoryOperationRuntime = OperationRuntime;

/// Events kept for slow subscribers of [`OperationRuntime::events`] before they lag.
const FEED_CAPACITY: usize = 1024;

type EventStream = Pin<Box<dyn Stream<Item = Result<OperationEvent, ServerError>> + Send>>;

impl OperationRuntime {
    /// A runtime for `service` on the in-memory store. Its contract is learned from the facade
    /// the first time [`OperationRuntime::operation`] is called.
    pub fn new(service: impl Into<String>) -> Self {
        Self::build(
            service.into(),
            None,
            Arc::new(MemoryStore::new()),
            RuntimeConfig::default(),
        )
    }

    /// A runtime serving `contract` on `store`.
    pub fn with_contract(
        contract: Contract,
        store: Arc<dyn OperationStore>,
        config: RuntimeConfig,
    ) -> Self {
        let service = contract.service().to_owned();
        Self::build(service, Some(Arc::new(contract)), store, config)
    }

    fn build(
        service: String,
        contract: Option<Arc<Contract>>,
        store: Arc<dyn OperationStore>,
        config: RuntimeConfig,
    ) -> Self {
        let cell = OnceLock::new();
        if let Some(contract) = contract {
            let _ = cell.set(contract);
        }
        let slots = config.concurrency.map(|concurrency| Slots {
            permits: Arc::new(tokio::sync::Semaphore::new(concurrency)),
            waiting: Default::default(),
        });
        Self {
            inner: Arc::new(Inner {
                service,
                contract: cell,
                store,
                config,
                slots,
                live: Mutex::new(HashMap::new()),
                handlers: Mutex::new(HashMap::new()),
                feed: broadcast::channel(FEED_CAPACITY).0,
                jobs: OnceLock::new(),
            }),
        }
    }

    /// The typed handle for operation `Op` of this service.
    ///
    /// # Panics
    /// When `Op` belongs to another service, or its embedded manifest does not load; both are
    /// programming errors fixed by regenerating the facade.
    pub fn operation<Op: Operation>(&self) -> Operations<Op> {
        assert_eq!(
            Op::SERVICE,
            self.inner.service,
            "operation {} belongs to service {}, not {}",
            Op::NAME,
            Op::SERVICE,
            self.inner.service
        );
        self.inner.contract.get_or_init(|| {
            let contract = Contract::from_json(Op::manifest()).unwrap_or_else(|error| {
                panic!("facade manifest of {} does not load: {error}", Op::SERVICE)
            });
            Arc::new(contract)
        });
        Operations::new(self.clone())
    }

    /// The service name.
    pub fn service(&self) -> &str {
        &self.inner.service
    }

    /// The runtime's tunables.
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// The contract operation named `name`.
    pub fn spec(&self, name: &str) -> Result<&OperationSpec, ServerError> {
        self.inner
            .contract
            .get()
            .and_then(|contract| contract.operation(name))
            .ok_or_else(|| {
                ServerError::invalid(format!(
                    "unknown operation `{name}` in service `{}`",
                    self.inner.service
                ))
            })
    }

    /// The contract served, once known.
    pub fn contract(&self) -> Option<&Contract> {
        self.inner.contract.get().map(Arc::as_ref)
    }

    /// Serves operation `operation` with `handler`: [`OperationRuntime::start`] runs it.
    pub fn set_handler(&self, operation: &str, handler: Arc<dyn OperationHandler>) {
        lock(&self.inner.handlers).insert(operation.to_owned(), handler);
    }

    /// Connects the jobs service, so that handlers can hand their terminal path to a job.
    /// The first call wins.
    pub fn set_jobs(&self, jobs: Arc<dyn JobHandOff>) {
        if self.inner.jobs.set(jobs).is_err() {
            tracing::warn!("a jobs service is already connected to this runtime");
        }
    }

    /// Hands the terminal path of operation `id` to a new job on `queue` whose payload is
    /// `payload`; returns the job's id. The handler may then return with the operation still
    /// open: the job's worker resumes its control by id. Cancelling the operation cancels the
    /// job; the job's death fails the operation.
    pub async fn hand_off(
        &self,
        id: &str,
        queue: &str,
        payload: Value,
    ) -> Result<String, ServerError> {
        let Some(jobs) = self.inner.jobs.get() else {
            return Err(ServerError::invalid(format!(
                "cannot hand operation `{id}` to queue `{queue}`: this host runs no jobs"
            )));
        };
        non_terminal(&self.current(id).await?)?;
        let job = jobs.enqueue_owned(id, queue, payload).await?;
        self.mark_handed_off(id);
        Ok(job)
    }

    fn mark_handed_off(&self, id: &str) {
        let mut live = lock(&self.inner.live);
        live.entry(id.to_owned())
            .or_default()
            .handed_off
            .store(true, Ordering::SeqCst);
    }

    /// Accepts an operation for `owner` and, when newly accepted, runs its handler on a task
    /// of its own once a slot is free. Refused with `Overloaded` when every slot is taken and
    /// the backlog of waiting operations is full.
    pub async fn start(
        &self,
        owner: Owner,
        operation: &str,
        id: Option<String>,
        input: Value,
    ) -> Result<Acceptance, ServerError> {
        let handler = lock(&self.inner.handlers).get(operation).cloned();
        let Some(handler) = handler else {
            self.spec(operation)?;
            return Err(ServerError::OperationUnsupportedControl {
                operation: operation.to_owned(),
                action: "start (no handler deployed)".into(),
            });
        };
        if let Some(slots) = &self.inner.slots {
            let waiting = slots.waiting.load(Ordering::SeqCst);
            let backlog = self.inner.config.backlog;
            if slots.permits.available_permits() == 0 && waiting >= backlog {
                return Err(ServerError::Overloaded {
                    message: format!(
                        "every handler slot is taken and {waiting} accepted operations already wait (max_backlog {backlog})"
                    ),
                    retry_after: Duration::from_secs(1),
                });
            }
        }
        let acceptance = self
            .accept_as(owner, operation, id, Some(input.clone()))
            .await?;
        if acceptance.created {
            self.launch(handler, acceptance.snapshot.clone(), Some(input));
        }
        Ok(acceptance)
    }

    fn launch(&self, handler: Arc<dyn OperationHandler>, snapshot: Snapshot, input: Option<Value>) {
        let id = snapshot.id.clone();
        let runtime = self.clone();
        let (registered, gate) = tokio::sync::oneshot::channel::<()>();
        let queued = self.inner.slots.as_ref().map(Queued::new);
        let task = tokio::spawn(async move {
            // Run only once cancel can find the task, so a fast handler cannot finish first.
            let _ = gate.await;
            let _permit = match queued {
                Some(queued) => {
                    let cancel = runtime.cancellation(&snapshot.id);
                    tokio::select! {
                        biased;
                        permit = Arc::clone(&queued.permits).acquire_owned() => permit.ok(),
                        _ = cancel.cancelled() => {
                            drop(queued);
                            let ended = runtime
                                .cancelled(&snapshot.id, "cancelled while waiting for a handler slot")
                                .await;
                            if let Err(error) = ended {
                                tracing::debug!(id = %snapshot.id, %error, "cancel of a waiting operation");
                            }
                            return;
                        }
                    }
                }
                None => None,
            };
            let id = snapshot.id.clone();
            let attempt = snapshot.attempt;
            tokio::select! {
                outcome = handler.run(runtime.clone(), snapshot, input) => {
                    runtime.handler_returned(&id, outcome).await;
                }
                () = runtime.changed_elsewhere(&id, attempt) => {}
            }
        });
        self.register_handler(&id, Some(task.abort_handle()));
        let _ = registered.send(());
    }

    /// On a store other hosts share, what they do to an operation running here: a cancel
    /// request fires this host's cancellation token (waking the handler); an end, or a restart
    /// elsewhere (a newer attempt), returns after the cancel grace, so that the caller drops a
    /// run that did not finish by then. Never returns on a store this host owns alone.
    async fn changed_elsewhere(&self, id: &str, attempt: u32) {
        if !self.inner.store.is_shared() {
            return std::future::pending().await;
        }
        let mut bell = self.inner.store.subscribe(id);
        loop {
            let closed = bell.changed().await.is_err();
            let over = match self.inner.store.load(id).await {
                Ok(Some(stored)) => {
                    let snapshot = stored.snapshot;
                    if snapshot.cancel_requested {
                        self.cancellation(id).cancel();
                    }
                    closed || snapshot.is_terminal() || snapshot.attempt > attempt
                }
                Ok(None) => true,
                Err(error) => {
                    tracing::warn!(%id, %error, "cannot read an operation another host changed");
                    closed
                }
            };
            if over {
                tokio::time::sleep(self.inner.config.cancel_grace).await;
                tracing::info!(%id, attempt, "dropping a run that ended or moved elsewhere");
                self.retire(id);
                return;
            }
        }
    }

    /// The attach rule, once a handler's `run` returned.
    async fn handler_returned(&self, id: &str, outcome: Result<(), ErrorInfo>) {
        let handed_off = self
            .running(id)
            .is_some_and(|live| live.handed_off.load(Ordering::SeqCst));
        if handed_off && outcome.is_ok() {
            return;
        }
        let error = match outcome {
            Err(error) => error,
            Ok(()) => match self.current(id).await {
                Ok(current) if current.is_terminal() => return,
                Ok(current) => ServerError::HandlerNonTerminal {
                    id: id.to_owned(),
                    state: current.state,
                }
                .to_info(),
                Err(error) => {
                    tracing::error!(%id, %error, "cannot read operation after its handler returned");
                    return;
                }
            },
        };
        // The failure must be recorded, or the operation would stay open with nothing running
        // it: while the store is unavailable, try again with a growing pause.
        let mut pause = Duration::from_millis(100);
        loop {
            match self.fail(id, error.clone()).await {
                Ok(_) | Err(ServerError::OperationTerminal { .. }) => return,
                Err(ServerError::Store(store)) if store.is_unavailable() => {
                    tracing::warn!(%id, error = %store, ?pause, "cannot record a handler's failure yet");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(error) => {
                    tracing::error!(%id, %error, "cannot record handler failure");
                    return;
                }
            }
        }
    }

    /// Resumes what a previous run of the host (or, on a shared store, a dead host) left
    /// unfinished: an operation with a pending cancel request ends `cancelled`; the others run
    /// again from their handler with `attempt + 1` (event `Restarted`) or fail with
    /// `HostRestarted`, as `policy` says for their operation. Call it at start, after the
    /// handlers are set, and on a shared store again from time to time.
    pub async fn recover(
        &self,
        policy: impl Fn(&str) -> RestartPolicy,
    ) -> Result<Recovery, ServerError> {
        let mut report = Recovery::default();
        for stored in self.inner.store.claim_orphans().await? {
            let id = stored.snapshot.id.clone();
            let attempt = stored.snapshot.attempt;
            let owned = match self.inner.jobs.get() {
                Some(jobs) => jobs.owns(&id).await?,
                None => false,
            };
            let outcome = if owned && !stored.snapshot.cancel_requested {
                report.owned_by_jobs += 1;
                self.mark_handed_off(&id);
                continue;
            } else if stored.snapshot.cancel_requested {
                report.cancelled += 1;
                if owned && let Some(jobs) = self.inner.jobs.get() {
                    jobs.cancel_owned(&id).await?;
                }
                self.cancelled(
                    &id,
                    "cancelled: the host restarted while the cancel was pending",
                )
                .await
            } else {
                let handler = lock(&self.inner.handlers)
                    .get(&stored.snapshot.operation)
                    .cloned();
                match (policy(&stored.snapshot.operation), handler) {
                    (RestartPolicy::Retry { max_attempts }, Some(handler))
                        if attempt < max_attempts =>
                    {
                        report.retried += 1;
                        self.restart(handler, stored).await
                    }
                    (policy, _) => {
                        report.failed += 1;
                        let message = match policy {
                            RestartPolicy::Retry { max_attempts } => format!(
                                "the host restarted during attempt {attempt} of {max_attempts}"
                            ),
                            RestartPolicy::Fail => {
                                "the host restarted while the operation ran (on_restart = fail)"
                                    .to_owned()
                            }
                        };
                        self.fail(&id, ErrorInfo::new(ErrorCode::HostRestarted, message))
                            .await
                    }
                }
            };
            match outcome {
                Ok(_) | Err(ServerError::OperationTerminal { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        if report != Recovery::default() {
            tracing::info!(?report, "recovered unfinished operations");
        }
        Ok(report)
    }

    async fn restart(
        &self,
        handler: Arc<dyn OperationHandler>,
        stored: StoredOperation,
    ) -> Result<Snapshot, ServerError> {
        let snapshot = self
            .transition_from(stored.snapshot, |current| {
                non_terminal(current)?;
                let mut snapshot = next(current, OperationState::Pending);
                snapshot.attempt = current.attempt + 1;
                Ok(Some((EventKind::Restarted, snapshot)))
            })
            .await?;
        self.launch(handler, snapshot.clone(), stored.input);
        Ok(snapshot)
    }

    /// Whether other hosts share this runtime's store (see [`OperationStore::is_shared`]).
    pub fn shares_store(&self) -> bool {
        self.inner.store.is_shared()
    }

    /// Purges terminal operations completed more than `retention` ago; returns how many.
    pub async fn purge_expired(&self, retention: Duration) -> Result<u64, ServerError> {
        let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
        let cutoff = Utc::now()
            .checked_sub_signed(retention)
            .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
        Ok(self.inner.store.purge(cutoff).await?)
    }

    /// Refuses a caller's payload larger than `max_payload_bytes` of JSON.
    fn check_size(&self, value: &Value, what: &str) -> Result<(), ServerError> {
        let limit = self.inner.config.max_payload_bytes;
        let mut count = ByteCount(0);
        serde_json::to_writer(&mut count, value)?;
        if count.0 > limit {
            return Err(ServerError::LimitExceeded {
                limit: "max_payload_bytes".into(),
                message: format!("{what} is {} bytes of JSON, more than {limit}", count.0),
            });
        }
        Ok(())
    }

    /// How many operations have a doorbell held on this host (by a watch, a wait or a
    /// running handler).
    pub fn doorbells(&self) -> usize {
        self.inner.store.doorbells()
    }

    /// How many operations have a handler running on this host.
    pub fn active_handlers(&self) -> usize {
        lock(&self.inner.live).len()
    }

    /// Every event of every operation changed through this runtime, as it happens. A
    /// subscriber that falls more than 1024 events behind skips the oldest.
    pub fn events(&self) -> broadcast::Receiver<OperationEvent> {
        self.inner.feed.subscribe()
    }

    fn publish(&self, kind: EventKind, snapshot: &Snapshot) {
        if self.inner.feed.receiver_count() > 0 {
            let _ = self
                .inner
                .feed
                .send(OperationEvent::new(kind, snapshot.clone()));
        }
    }

    /// Accepts operation `operation` under `id` (a fresh ULID when `None`), with no owner.
    /// See [`OperationRuntime::accept_as`].
    pub async fn accept(
        &self,
        operation: &str,
        id: Option<String>,
        input: Option<Value>,
    ) -> Result<Acceptance, ServerError> {
        self.accept_as(Owner::default(), operation, id, input).await
    }

    /// Accepts operation `operation` for `owner` under key `id` (a fresh ULID when `None`).
    ///
    /// A key follows the rule of [`opshost_api::id`] and is scoped to the owner's tenant: the
    /// operation's id is [`opshost_api::id::scoped_id`] of the two, so the same key in two
    /// tenants makes two operations. With `input`, it is validated against the input schema
    /// first. Accepting an existing key with the same input returns the existing snapshot;
    /// otherwise it fails with `OperationAlreadyExists`.
    pub async fn accept_as(
        &self,
        owner: Owner,
        operation: &str,
        id: Option<String>,
        input: Option<Value>,
    ) -> Result<Acceptance, ServerError> {
        let spec = self.spec(operation)?;
        if let Some(input) = &input {
            self.check_size(input, &format!("input of {operation}"))?;
            check(&spec.input, input, &format!("input of {operation}"))?;
        }
        let id = match id {
            Some(key) => {
                opshost_api::id::check_key(&key)
                    .map_err(|error| ServerError::invalid(error.to_string()))?;
                let id = opshost_api::id::scoped_id(&owner.tenant, &key);
                // Before keys were scoped, the id was the key in every tenant: such an
                // operation of this tenant still answers for its key.
                if id != key
                    && let Some(legacy) = self.inner.store.load(&key).await?
                    && legacy.owner.tenant == owner.tenant
                {
                    return Self::existing(legacy, operation, &input, &owner.tenant);
                }
                id
            }
            None => ulid::Ulid::new().to_string(),
        };
        let snapshot = Snapshot::accepted(
            id.clone(),
            self.inner.service.clone(),
            operation.to_owned(),
            spec.version.clone(),
        );
        let tenant = owner.tenant.clone();
        let stored = StoredOperation {
            snapshot,
            input: input.clone(),
            owner,
        };
        match self.inner.store.create(stored).await? {
            CreateOutcome::Created(snapshot) => {
                tracing::debug!(%id, operation, "accepted");
                self.publish(EventKind::Accepted, &snapshot);
                Ok(Acceptance {
                    snapshot,
                    created: true,
                })
            }
            CreateOutcome::Existing(existing) => {
                Self::existing(existing, operation, &input, &tenant)
            }
        }
    }

    /// The answer to accepting `existing` again: itself when the operation, input and tenant
    /// are the same, else `OperationAlreadyExists`.
    fn existing(
        existing: StoredOperation,
        operation: &str,
        input: &Option<Value>,
        tenant: &str,
    ) -> Result<Acceptance, ServerError> {
        if existing.snapshot.operation == operation
            && existing.input == *input
            && existing.owner.tenant == tenant
        {
            Ok(Acceptance {
                snapshot: existing.snapshot,
                created: false,
            })
        } else {
            Err(ServerError::OperationAlreadyExists {
                id: existing.snapshot.id,
            })
        }
    }

    /// The current snapshot.
    pub async fn get(&self, id: &str) -> Result<Snapshot, ServerError> {
        Ok(self.load(id).await?.snapshot)
    }

    /// The input the operation was accepted with.
    pub async fn input(&self, id: &str) -> Result<Option<Value>, ServerError> {
        Ok(self.load(id).await?.input)
    }

    /// The operation as stored: snapshot, input and owner.
    pub async fn load(&self, id: &str) -> Result<StoredOperation, ServerError> {
        self.inner
            .store
            .load(id)
            .await?
            .ok_or_else(|| ServerError::OperationNotFound { id: id.to_owned() })
    }

    /// One page of operations matching `filter`.
    pub async fn list(&self, filter: &ListFilter) -> Result<Page, ServerError> {
        Ok(self.inner.store.list(filter).await?)
    }

    /// How many operations there are of each operation name and state.
    pub async fn count_by_state(&self) -> Result<Vec<StateCount>, ServerError> {
        Ok(self.inner.store.count_by_state().await?)
    }

    /// The terminal snapshot, or the current one when `timeout` passes first.
    pub async fn wait(&self, id: &str, timeout: Option<Duration>) -> Result<Snapshot, ServerError> {
        let mut bell = self.inner.store.subscribe(id);
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        loop {
            let snapshot = self.get(id).await?;
            if snapshot.is_terminal() {
                return Ok(snapshot);
            }
            let changed = bell.changed();
            match deadline {
                Some(deadline) => {
                    if !matches!(tokio::time::timeout_at(deadline, changed).await, Ok(Ok(()))) {
                        return self.get(id).await;
                    }
                }
                None => {
                    if changed.await.is_err() {
                        return self.get(id).await;
                    }
                }
            }
        }
    }

    /// Events of the operation, ending with the terminal event.
    ///
    /// With `after: None` the stream begins with the current snapshot; with `Some(revision)` it
    /// resumes with every event after that revision (`Some(0)` replays the whole history).
    pub fn watch(&self, id: &str, after: Option<u64>) -> EventStream {
        struct Watch {
            runtime: OperationRuntime,
            id: String,
            last: u64,
            bell: crate::store::Doorbell,
            pending: std::collections::VecDeque<OperationEvent>,
            done: bool,
            first: bool,
            closed: bool,
        }
        let state = Watch {
            bell: self.inner.store.subscribe(id),
            runtime: self.clone(),
            id: id.to_owned(),
            last: after.unwrap_or(0),
            pending: Default::default(),
            done: false,
            first: after.is_none(),
            closed: false,
        };
        Box::pin(futures::stream::unfold(state, |mut w| async move {
            loop {
                if w.done {
                    return None;
                }
                if let Some(event) = w.pending.pop_front() {
                    w.last = event.snapshot().revision;
                    w.done = event.snapshot().is_terminal();
                    return Some((Ok(event), w));
                }
                w.bell.mark_seen();
                let events = match w.runtime.inner.store.events_after(&w.id, w.last).await {
                    Ok(events) => events,
                    Err(error) => {
                        w.done = true;
                        return Some((Err(error.into()), w));
                    }
                };
                if events.is_empty() {
                    if w.last == 0 {
                        w.done = true;
                        return Some((Err(ServerError::OperationNotFound { id: w.id.clone() }), w));
                    }
                    if w.closed {
                        return None;
                    }
                    // Resumed at or past the end: nothing more will come.
                    match w.runtime.get(&w.id).await {
                        Ok(snapshot) if snapshot.is_terminal() && snapshot.revision <= w.last => {
                            return None;
                        }
                        Ok(_) => {}
                        Err(error) => {
                            w.done = true;
                            return Some((Err(error), w));
                        }
                    }
                    // A closed doorbell means the operation is terminal: read once more.
                    w.closed = w.bell.changed().await.is_err();
                    continue;
                }
                let mut events = events;
                if std::mem::take(&mut w.first) && events.len() > 1 {
                    events.drain(..events.len() - 1);
                }
                w.pending.extend(events);
            }
        }))
    }

    /// Marks the operation running.
    pub async fn started(&self, id: &str) -> Result<Snapshot, ServerError> {
        self.transition(id, |current| match current.state {
            OperationState::Pending => Ok(Some((
                EventKind::Started,
                next(current, OperationState::Running),
            ))),
            OperationState::Running => Ok(None),
            state => Err(ServerError::OperationTerminal {
                id: current.id.clone(),
                state,
            }),
        })
        .await
    }

    /// Records a progress payload, validated against the progress schema.
    pub async fn progress(&self, id: &str, progress: Value) -> Result<Snapshot, ServerError> {
        let snapshot = self.check_progress(id, &progress).await?;
        self.transition_from(snapshot, |current| {
            non_terminal(current)?;
            let mut snapshot = next(current, OperationState::Running);
            snapshot.progress = Some(progress.clone());
            Ok(Some((EventKind::Progress, snapshot)))
        })
        .await
    }

    /// Bytes of JSON (as [`json_len`] counts them) of every progress the operation recorded,
    /// over all its attempts.
    pub async fn progress_bytes(&self, id: &str) -> Result<u64, ServerError> {
        let mut total = 0u64;
        for event in self.inner.store.events_after(id, 0).await? {
            if let (OperationEvent::Progress { .. }, Some(progress)) =
                (&event, &event.snapshot().progress)
            {
                total = total.saturating_add(json_len(progress));
            }
        }
        Ok(total)
    }

    /// Checks a progress payload as [`OperationRuntime::progress`] would, without recording
    /// it; returns the current snapshot.
    pub async fn check_progress(
        &self,
        id: &str,
        progress: &Value,
    ) -> Result<Snapshot, ServerError> {
        let snapshot = self.current(id).await?;
        non_terminal(&snapshot)?;
        match &self.spec(&snapshot.operation)?.progress {
            Some(schema) => check(
                schema,
                progress,
                &format!("progress of {}", snapshot.operation),
            )?,
            None => {
                return Err(ServerError::invalid(format!(
                    "operation {} declares no progress schema",
                    snapshot.operation
                )));
            }
        }
        Ok(snapshot)
    }

    /// Completes the operation with an output, validated against the output schema.
    pub async fn complete(&self, id: &str, output: Value) -> Result<Snapshot, ServerError> {
        let snapshot = self.current(id).await?;
        let schema = &self.spec(&snapshot.operation)?.output;
        check(
            schema,
            &output,
            &format!("output of {}", snapshot.operation),
        )?;
        self.finish(snapshot, EventKind::Completed, |snapshot| {
            snapshot.output = Some(output.clone())
        })
        .await
    }

    /// Fails the operation with `error`.
    pub async fn fail(&self, id: &str, error: ErrorInfo) -> Result<Snapshot, ServerError> {
        let current = self.current(id).await?;
        self.finish(current, EventKind::Failed, |snapshot| {
            snapshot.error = Some(error.clone())
        })
        .await
    }

    /// Ends the operation `cancelled` (after a cancel request was honoured or enforced).
    pub async fn cancelled(&self, id: &str, message: &str) -> Result<Snapshot, ServerError> {
        let error = ErrorInfo::new(ErrorCode::Cancelled, message);
        let current = self.current(id).await?;
        self.finish(current, EventKind::Cancelled, |snapshot| {
            snapshot.error = Some(error.clone())
        })
        .await
    }

    async fn finish(
        &self,
        current: Snapshot,
        kind: EventKind,
        set: impl Fn(&mut Snapshot),
    ) -> Result<Snapshot, ServerError> {
        let state = match kind {
            EventKind::Completed => OperationState::Completed,
            EventKind::Failed => OperationState::Failed,
            _ => OperationState::Cancelled,
        };
        let id = current.id.clone();
        let snapshot = self
            .transition_from(current, |current| {
                non_terminal(current)?;
                let mut snapshot = next(current, state);
                snapshot.completed_at = Some(snapshot.updated_at);
                set(&mut snapshot);
                Ok(Some((kind, snapshot)))
            })
            .await?;
        self.retire(&id);
        Ok(snapshot)
    }

    /// Requests cancellation, wakes the handler, waits the grace period for it to end, then
    /// stops it by force and ends the operation `cancelled`. Returns the terminal snapshot.
    pub async fn cancel(&self, id: &str) -> Result<Snapshot, ServerError> {
        let snapshot = self.request_cancel(id).await?;
        if snapshot.is_terminal() {
            return Ok(snapshot);
        }
        let live = self.running(id);
        let waited = self.wait(id, Some(self.inner.config.cancel_grace)).await?;
        if waited.is_terminal() {
            return Ok(waited);
        }
        let task = live.and_then(|live| live.task.lock().ok().and_then(|mut task| task.take()));
        if let Some(task) = task {
            tracing::warn!(%id, "handler ignored cancellation for the grace period; stopping it");
            task.abort();
        }
        match self
            .cancelled(
                id,
                "cancelled by caller; handler stopped after the grace period",
            )
            .await
        {
            Ok(snapshot) => Ok(snapshot),
            Err(ServerError::OperationTerminal { .. }) => self.get(id).await,
            Err(error) => Err(error),
        }
    }

    /// Records a cancel request and wakes the handler (and the job owning the operation),
    /// without waiting for the operation to end. Returns the snapshot after the request.
    pub async fn request_cancel(&self, id: &str) -> Result<Snapshot, ServerError> {
        let snapshot = self.get(id).await?;
        if !self.spec(&snapshot.operation)?.cancel {
            return Err(ServerError::OperationUnsupportedControl {
                operation: snapshot.operation,
                action: "cancel".into(),
            });
        }
        if snapshot.is_terminal() {
            return Ok(snapshot);
        }
        let requested = self
            .transition(id, |current| {
                if current.is_terminal() || current.cancel_requested {
                    return Ok(None);
                }
                let mut snapshot = next(current, current.state);
                snapshot.cancel_requested = true;
                Ok(Some((EventKind::CancelRequested, snapshot)))
            })
            .await?;
        if let Some(live) = self.running(id) {
            live.cancel.cancel();
        }
        if let Some(jobs) = self.inner.jobs.get() {
            jobs.cancel_owned(id).await?;
        }
        Ok(requested)
    }

    /// Sends signal `name` to the operation; returns its sequence number.
    pub async fn signal(&self, id: &str, name: &str, payload: Value) -> Result<u64, ServerError> {
        let snapshot = self.get(id).await?;
        let spec = self.spec(&snapshot.operation)?;
        let Some(signal) = spec.signals.get(name) else {
            return Err(ServerError::invalid(format!(
                "operation {} declares no signal `{name}`",
                snapshot.operation
            )));
        };
        let what = format!("signal {name} of {}", snapshot.operation);
        self.check_size(&payload, &what)?;
        check(&signal.input, &payload, &what)?;
        match self.inner.store.append_signal(id, name, payload).await? {
            SignalOutcome::Appended(sequence) => Ok(sequence),
            SignalOutcome::Terminal(state) => Err(ServerError::OperationTerminal {
                id: id.to_owned(),
                state,
            }),
        }
    }

    /// Waits for the first signal after sequence `after`, up to `timeout`, unless cancellation
    /// is requested first.
    pub async fn next_signal(
        &self,
        id: &str,
        after: u64,
        timeout: Option<Duration>,
    ) -> Result<SignalWait, ServerError> {
        let cancel = self.cancellation(id);
        let mut bell = self.inner.store.subscribe(id);
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        loop {
            if let Some(signal) = self
                .inner
                .store
                .signals_after(id, after)
                .await?
                .into_iter()
                .next()
            {
                return Ok(SignalWait::Signal(signal));
            }
            let snapshot = self.get(id).await?;
            if snapshot.is_terminal() {
                return Err(ServerError::OperationTerminal {
                    id: id.to_owned(),
                    state: snapshot.state,
                });
            }
            if cancel.is_cancelled() || snapshot.cancel_requested {
                return Ok(SignalWait::Cancelled);
            }
            let sleep = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = bell.changed() => {}
                _ = cancel.cancelled() => return Ok(SignalWait::Cancelled),
                _ = sleep => return Ok(SignalWait::TimedOut),
            }
        }
    }

    /// A token that fires when cancellation of the operation is requested on this host. For an
    /// operation not handled here (see [`OperationRuntime::register_handler`]) it never fires;
    /// the snapshot's `cancelRequested` still tells.
    pub fn cancellation(&self, id: &str) -> CancellationToken {
        self.running(id)
            .map(|live| live.cancel.clone())
            .unwrap_or_default()
    }

    /// Records that this host handles the operation until it is terminal, so that cancel can
    /// wake its handler and, with `task`, stop it by force.
    pub fn register_handler(&self, id: &str, task: Option<AbortHandle>) {
        let mut live = lock(&self.inner.live);
        let entry = live.entry(id.to_owned()).or_default();
        if let (Some(task), Ok(mut slot)) = (task, entry.task.lock()) {
            *slot = Some(task);
        }
    }

    fn running(&self, id: &str) -> Option<Arc<Live>> {
        lock(&self.inner.live).get(id).cloned()
    }

    fn retire(&self, id: &str) {
        lock(&self.inner.live).remove(id);
    }

    async fn transition(
        &self,
        id: &str,
        change: impl Fn(&Snapshot) -> Result<Option<(EventKind, Snapshot)>, ServerError>,
    ) -> Result<Snapshot, ServerError> {
        let current = self.current(id).await?;
        self.transition_from(current, change).await
    }

    /// The snapshot to change next: the store's, or the newer one written here and not
    /// durable yet.
    async fn current(&self, id: &str) -> Result<Snapshot, ServerError> {
        let stored = self.get(id).await?;
        let written = self
            .running(id)
            .and_then(|live| lock(&live.latest).clone())
            .filter(|written| written.revision > stored.revision);
        Ok(written.unwrap_or(stored))
    }

    /// Applies `change` starting from `current`, re-reading only on a revision conflict.
    async fn transition_from(
        &self,
        mut current: Snapshot,
        change: impl Fn(&Snapshot) -> Result<Option<(EventKind, Snapshot)>, ServerError>,
    ) -> Result<Snapshot, ServerError> {
        loop {
            let Some((kind, snapshot)) = change(&current)? else {
                return Ok(current);
            };
            match self.inner.store.update(snapshot, kind).await? {
                UpdateOutcome::Updated(snapshot) => {
                    if let Some(live) = self.running(&snapshot.id) {
                        *lock(&live.latest) = Some(snapshot.clone());
                    }
                    self.publish(kind, &snapshot);
                    return Ok(snapshot);
                }
                UpdateOutcome::Conflict(latest) => current = latest,
            }
        }
    }
}

/// Locks a map that no panic can leave inconsistent (each critical section is one call).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn next(current: &Snapshot, state: OperationState) -> Snapshot {
    let mut snapshot = current.clone();
    snapshot.revision += 1;
    snapshot.state = state;
    snapshot.updated_at = Utc::now();
    snapshot
}

/// The length of `value` as compact JSON, without building the text.
pub fn json_len(value: &Value) -> u64 {
    let mut count = ByteCount(0);
    // Writing to a counter cannot fail, and a `Value` always serializes.
    let _ = serde_json::to_writer(&mut count, value);
    u64::try_from(count.0).unwrap_or(u64::MAX)
}

/// Counts the bytes written to it.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn non_terminal(current: &Snapshot) -> Result<(), ServerError> {
    if current.is_terminal() {
        return Err(ServerError::OperationTerminal {
            id: current.id.clone(),
            state: current.state,
        });
    }
    Ok(())
}

fn check(schema: &PayloadSchema, value: &Value, what: &str) -> Result<(), ServerError> {
    schema
        .validate(value)
        .map_err(|issues| ServerError::InvalidInput {
            message: format!("{what} does not match its schema"),
            issues,
        })
}
