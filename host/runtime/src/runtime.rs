//! [`OperationRuntime`]: the operation log and the executor of one service, as callers use
//! them.

use std::sync::{Arc, Weak};
use std::time::Duration;

use opshost_api::{ErrorInfo, OperationEvent, Snapshot};
use opshost_contract::{Contract, OperationSpec};
use opshost_telemetry::Telemetry;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::config::{RestartPolicy, RuntimeConfig};
use crate::error::ServerError;
use crate::executor::{Drained, Executor, OperationHandler, Recovery};
use crate::feed::ChangeWatch;
use crate::handoff::JobHandOff;
use crate::log::{Acceptance, OperationLog};
use crate::run::Run;
use crate::store::{
    ChangeCursor, ListFilter, MemoryStore, OperationStore, Owner, Page, StateCount, StoredOperation,
};
use crate::watch::EventStream;

/// The operation runtime of one service. Cheap to clone; clones share everything.
///
/// Callers accept, start, read, wait for, watch, signal and cancel operations here; handlers
/// drive their operation through its [`Run`].
#[derive(Clone)]
pub struct OperationRuntime {
    log: Arc<OperationLog>,
    executor: Arc<Executor>,
}

/// A handle to an [`OperationRuntime`] that does not keep it alive: what a handler the runtime
/// itself holds keeps, so that the two do not hold each other for ever.
#[derive(Clone)]
pub struct WeakRuntime {
    log: Weak<OperationLog>,
    executor: Weak<Executor>,
}

impl WeakRuntime {
    /// The runtime, while it lives.
    pub fn upgrade(&self) -> Option<OperationRuntime> {
        Some(OperationRuntime {
            log: self.log.upgrade()?,
            executor: self.executor.upgrade()?,
        })
    }
}

/// An [`OperationRuntime`] created with [`OperationRuntime::new`] keeps its operations in memory.
pub type InMemoryOperationRuntime = OperationRuntime;

/// Builds an [`OperationRuntime`]: its contract, store, tunables and handlers, in one place.
pub struct RuntimeBuilder {
    service: String,
    contract: Option<Arc<Contract>>,
    store: Option<Arc<dyn OperationStore>>,
    config: RuntimeConfig,
    handlers: Vec<(String, Arc<dyn OperationHandler>)>,
    telemetry: Telemetry,
}

impl RuntimeBuilder {
    /// Keeps operations in `store` (in memory unless set).
    pub fn store(mut self, store: Arc<dyn OperationStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Uses `config` (see [`RuntimeConfig::default`] unless set).
    pub fn config(mut self, config: RuntimeConfig) -> Self {
        self.config = config;
        self
    }

    /// Makes the spans of operations with `telemetry` (off unless set).
    pub fn telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = telemetry;
        self
    }

    /// Runs `handler` for every operation named `operation` that is started.
    pub fn handler(mut self, operation: &str, handler: Arc<dyn OperationHandler>) -> Self {
        self.handlers.push((operation.to_owned(), handler));
        self
    }

    /// The runtime.
    pub fn build(self) -> OperationRuntime {
        let store = self.store.unwrap_or_else(|| Arc::new(MemoryStore::new()));
        let log = Arc::new(OperationLog::new(
            self.service,
            self.contract,
            store,
            self.config,
            self.telemetry,
        ));
        let executor = Arc::new(Executor::new(Arc::clone(&log)));
        for (operation, handler) in self.handlers {
            executor.install(&operation, handler);
        }
        OperationRuntime { log, executor }
    }
}

impl OperationRuntime {
    /// A builder for a runtime serving `contract`.
    pub fn builder(contract: Contract) -> RuntimeBuilder {
        RuntimeBuilder {
            service: contract.service().to_owned(),
            contract: Some(Arc::new(contract)),
            store: None,
            config: RuntimeConfig::default(),
            handlers: Vec::new(),
            telemetry: Telemetry::off(),
        }
    }

    /// A runtime for `service` on the in-memory store. Its contract is learned from the facade
    /// the first time [`OperationRuntime::operation`] is called.
    pub fn new(service: impl Into<String>) -> Self {
        RuntimeBuilder {
            service: service.into(),
            contract: None,
            store: None,
            config: RuntimeConfig::default(),
            handlers: Vec::new(),
            telemetry: Telemetry::off(),
        }
        .build()
    }

    /// A runtime serving `contract` on `store`.
    pub fn with_contract(
        contract: Contract,
        store: Arc<dyn OperationStore>,
        config: RuntimeConfig,
    ) -> Self {
        Self::builder(contract).store(store).config(config).build()
    }

    /// A handle that does not keep this runtime alive.
    pub fn downgrade(&self) -> WeakRuntime {
        WeakRuntime {
            log: Arc::downgrade(&self.log),
            executor: Arc::downgrade(&self.executor),
        }
    }

    pub(crate) fn learn_contract(&self, load: impl FnOnce() -> Contract) {
        self.log.learn_contract(load);
    }

    /// The service name.
    pub fn service(&self) -> &str {
        self.log.service()
    }

    /// The runtime's tunables.
    pub fn config(&self) -> &RuntimeConfig {
        self.log.config()
    }

    /// The contract operation named `name`.
    pub fn spec(&self, name: &str) -> Result<&OperationSpec, ServerError> {
        self.log.spec(name)
    }

    /// The contract served, once known.
    pub fn contract(&self) -> Option<&Contract> {
        self.log.contract()
    }

    /// Where handlers and workers send their log lines (see [`LogSink`](crate::logs::LogSink)).
    pub fn log_sink(&self) -> &crate::logs::LogSink {
        self.log.logs()
    }

    /// At most `limit` log lines of operation `id` after line `after`, oldest first.
    pub async fn logs(
        &self,
        id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<opshost_api::LogLine>, ServerError> {
        Ok(self.log.store().logs_after(id, after, limit).await?)
    }

    /// Announces what a run of a component used, for metrics.
    pub fn record_usage(&self, usage: crate::Usage) {
        self.log.usage().record(usage);
    }

    /// What runs use, as they end.
    pub fn usage(&self) -> broadcast::Receiver<crate::Usage> {
        self.log.usage().subscribe()
    }

    /// A doorbell that rings at every change of operation `id` and closes at its end.
    pub fn doorbell(&self, id: &str) -> crate::store::Doorbell {
        self.log.subscribe(id)
    }

    /// Runs `handler` for every operation named `operation` started from now on.
    pub fn install_handler(&self, operation: &str, handler: Arc<dyn OperationHandler>) {
        self.executor.install(operation, handler);
    }

    /// Connects the jobs service, so that handlers can hand their terminal path to a job.
    /// The first call wins.
    pub fn connect_jobs(&self, jobs: Arc<dyn JobHandOff>) {
        self.executor.connect_jobs(jobs);
    }

    /// Accepts an operation for `owner` under key `key` (see
    /// [`OperationRuntime::accept_as`]) and, when newly accepted, runs its handler on a task
    /// of its own once a slot is free. Refused with `Overloaded` when every slot is taken and
    /// the backlog of waiting operations is full.
    pub async fn start(
        &self,
        owner: Owner,
        operation: &str,
        key: Option<String>,
        input: Value,
    ) -> Result<Acceptance, ServerError> {
        self.executor.start(owner, operation, key, input).await
    }

    /// Accepts operation `operation` in the default tenant under key `key` (a fresh ULID when
    /// `None`). See [`OperationRuntime::accept_as`].
    pub async fn accept(
        &self,
        operation: &str,
        key: Option<String>,
        input: Option<Value>,
    ) -> Result<Acceptance, ServerError> {
        self.accept_as(Owner::default(), operation, key, input)
            .await
    }

    /// Accepts operation `operation` for `owner` under key `key` (a fresh ULID when `None`).
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
        key: Option<String>,
        input: Option<Value>,
    ) -> Result<Acceptance, ServerError> {
        let component = self
            .executor
            .handler(operation)
            .and_then(|handler| handler.version());
        self.log
            .accept(owner, operation, key, input, component)
            .await
    }

    /// Where the spans of operations go.
    pub fn telemetry(&self) -> &Telemetry {
        self.log.telemetry()
    }

    /// The run of operation `id` on this host, joined if there is one: its handler's side.
    /// While held and while the operation is open, this host counts it as running.
    pub async fn attach(&self, id: &str) -> Result<Arc<Run>, ServerError> {
        self.executor.attach(id).await
    }

    /// The current snapshot.
    pub async fn get(&self, id: &str) -> Result<Snapshot, ServerError> {
        self.log.get(id).await
    }

    /// The input the operation was accepted with.
    pub async fn input(&self, id: &str) -> Result<Option<Value>, ServerError> {
        Ok(self.log.load(id).await?.input)
    }

    /// The operation as stored: snapshot, input and owner.
    pub async fn load(&self, id: &str) -> Result<StoredOperation, ServerError> {
        self.log.load(id).await
    }

    /// One page of operations matching `filter`.
    pub async fn list(&self, filter: &ListFilter) -> Result<Page, ServerError> {
        self.log.list(filter).await
    }

    /// How many operations there are of each operation name and state.
    pub async fn count_by_state(&self) -> Result<Vec<StateCount>, ServerError> {
        self.log.count_by_state().await
    }

    /// The terminal snapshot, or the current one when `timeout` passes first.
    pub async fn wait(&self, id: &str, timeout: Option<Duration>) -> Result<Snapshot, ServerError> {
        self.log.wait(id, timeout).await
    }

    /// [`OperationRuntime::wait`] from `current`, a snapshot read after `bell` was taken with
    /// [`OperationRuntime::doorbell`]: a caller that had to read the operation anyway (to
    /// check who may see it) saves a read.
    pub async fn wait_from(
        &self,
        bell: crate::store::Doorbell,
        current: Snapshot,
        timeout: Option<Duration>,
    ) -> Result<Snapshot, ServerError> {
        self.log.wait_from(bell, current, timeout).await
    }

    /// Events of the operation, ending with the terminal event.
    ///
    /// With `after: None` the stream begins with the current snapshot; with `Some(revision)` it
    /// resumes with every event after that revision (`Some(0)` replays the whole history), and
    /// ends at once when there is none and the operation is terminal.
    pub fn watch(&self, id: &str, after: Option<u64>) -> EventStream {
        self.log.watch(id, after)
    }

    /// Every change to every operation in the store (of every tenant: callers filter), in the
    /// store's order: those after `after`, or, with `None`, those after the latest one now.
    /// Across hosts on a shared store, and resumable from any change's cursor. A cursor ahead
    /// of the store's feed is refused (`InvalidInput`); a store error ends the stream, to be
    /// resumed after the last change seen.
    pub async fn changes(&self, after: Option<ChangeCursor>) -> Result<ChangeWatch, ServerError> {
        self.log.changes().subscribe(after).await
    }

    /// Sends signal `name` to the operation; returns its sequence number.
    pub async fn signal(&self, id: &str, name: &str, payload: Value) -> Result<u64, ServerError> {
        self.log.signal(id, name, payload).await
    }

    /// Requests cancellation, wakes the handler, waits the grace period for it to end, then
    /// stops it by force and ends the operation `cancelled`. Returns the terminal snapshot.
    pub async fn cancel(&self, id: &str) -> Result<Snapshot, ServerError> {
        self.executor.cancel(id).await
    }

    /// Records a cancel request and wakes the handler (and the job owning the operation),
    /// without waiting for the operation to end. Returns the snapshot after the request.
    pub async fn request_cancel(&self, id: &str) -> Result<Snapshot, ServerError> {
        self.executor.request_cancel(id).await
    }

    /// Fails the operation with `error` (for example when the job that owned it died).
    pub async fn fail(&self, id: &str, error: ErrorInfo) -> Result<Snapshot, ServerError> {
        self.attach(id).await?.fail(error).await
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
        self.executor.recover(policy).await
    }

    /// Shuts the executor down: later starts are refused with `ShuttingDown` and operations
    /// waiting for a handler slot stay pending; the runs here get up to `grace` to end, and
    /// those still running then are stopped, their operations left open for the next start of
    /// this host (or another host) to resume.
    pub async fn drain(&self, grace: Duration) -> Drained {
        self.executor.drain(grace).await
    }

    /// Makes everything written durable and, on a shared store, gives up this host's claim on
    /// its operations at once, so that another host takes over what is left without waiting
    /// for the lease to run out. Call it last, after [`OperationRuntime::drain`].
    pub async fn release_store(&self) -> Result<(), ServerError> {
        self.log.logs().flush().await;
        Ok(self.log.store().release().await?)
    }

    /// Resolves when another host sharing the store gave up its operations, so that this one
    /// can take them over at once (see [`OperationRuntime::recover`]).
    pub async fn orphans_released(&self) {
        self.log.store().orphans_released().await
    }

    /// Whether other hosts share this runtime's store (see [`OperationStore::is_shared`]).
    pub fn shares_store(&self) -> bool {
        self.log.store().is_shared()
    }

    /// Purges terminal operations completed more than `retention` ago; returns how many.
    pub async fn purge_expired(&self, retention: Duration) -> Result<u64, ServerError> {
        self.log.purge_expired(retention).await
    }

    /// How many operations have a doorbell held on this host (by a watch, a wait or a run).
    pub fn doorbells(&self) -> usize {
        self.log.store().doorbells()
    }

    /// How many operations run on this host: one per [`Run`] whose operation is open and
    /// that someone holds (a handler's task, a control handle).
    pub fn active_handlers(&self) -> usize {
        self.executor.active()
    }

    /// Every event of every operation changed through this runtime, as it happens: once the
    /// store has ordered it, which may be before it is durable (for counting, not for showing
    /// callers). A subscriber that falls more than 1024 events behind skips the oldest.
    pub fn events(&self) -> broadcast::Receiver<OperationEvent> {
        self.log.events()
    }
}
