//! The untyped operation runtime: the one place where operations change.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::Utc;
use futures::Stream;
use opshost_api::{
    ErrorCode, ErrorInfo, EventKind, Operation, OperationEvent, OperationState, Snapshot,
};
use opshost_contract::{Contract, OperationSpec, PayloadSchema};
use serde_json::Value;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use crate::error::ServerError;
use crate::store::{
    CreateOutcome, MemoryStore, OperationStore, SignalOutcome, SignalRecord, UpdateOutcome,
};
use crate::typed::Operations;

/// Tunables of a runtime.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// How long a cancelled handler has to clean up before it is stopped by force.
    pub cancel_grace: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            cancel_grace: Duration::from_secs(5),
        }
    }
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
}

struct Inner {
    service: String,
    contract: OnceLock<Arc<Contract>>,
    store: Arc<dyn OperationStore>,
    config: RuntimeConfig,
    live: Mutex<HashMap<String, Arc<Live>>>,
}

/// The operation runtime of one service. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct OperationRuntime {
    inner: Arc<Inner>,
}

/// An [`OperationRuntime`] created with [`OperationRuntime::new`] keeps its operations in memory.
pub type InMemoryOperationRuntime = OperationRuntime;

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
        Self {
            inner: Arc::new(Inner {
                service,
                contract: cell,
                store,
                config,
                live: Mutex::new(HashMap::new()),
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

    /// Accepts operation `operation` under `id` (a fresh ULID when `None`).
    ///
    /// With `input`, it is validated against the input schema first. Accepting an existing id
    /// with the same input returns the existing snapshot; with another input (or operation),
    /// it fails with `OperationAlreadyExists`.
    pub async fn accept(
        &self,
        operation: &str,
        id: Option<String>,
        input: Option<Value>,
    ) -> Result<Acceptance, ServerError> {
        let spec = self.spec(operation)?;
        if let Some(input) = &input {
            check(&spec.input, input, &format!("input of {operation}"))?;
        }
        let id = id.unwrap_or_else(|| ulid::Ulid::new().to_string());
        if id.is_empty() || id.len() > 200 {
            return Err(ServerError::invalid(
                "operation id must be 1 to 200 characters long",
            ));
        }
        let snapshot = Snapshot::accepted(
            id.clone(),
            self.inner.service.clone(),
            operation.to_owned(),
            spec.version.clone(),
        );
        match self.inner.store.create(snapshot, input.clone()).await? {
            CreateOutcome::Created(snapshot) => {
                tracing::debug!(%id, operation, "accepted");
                Ok(Acceptance {
                    snapshot,
                    created: true,
                })
            }
            CreateOutcome::Existing(existing)
                if existing.snapshot.operation == operation && existing.input == input =>
            {
                Ok(Acceptance {
                    snapshot: existing.snapshot,
                    created: false,
                })
            }
            CreateOutcome::Existing(_) => Err(ServerError::OperationAlreadyExists { id }),
        }
    }

    /// The current snapshot.
    pub async fn get(&self, id: &str) -> Result<Snapshot, ServerError> {
        Ok(self.load(id).await?.0)
    }

    /// The input the operation was accepted with.
    pub async fn input(&self, id: &str) -> Result<Option<Value>, ServerError> {
        Ok(self.load(id).await?.1)
    }

    async fn load(&self, id: &str) -> Result<(Snapshot, Option<Value>), ServerError> {
        self.inner
            .store
            .load(id)
            .await?
            .map(|stored| (stored.snapshot, stored.input))
            .ok_or_else(|| ServerError::OperationNotFound { id: id.to_owned() })
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
            bell: tokio::sync::watch::Receiver<u64>,
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
                w.bell.borrow_and_update();
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
        let snapshot = self.get(id).await?;
        match &self.spec(&snapshot.operation)?.progress {
            Some(schema) => check(
                schema,
                &progress,
                &format!("progress of {}", snapshot.operation),
            )?,
            None => {
                return Err(ServerError::invalid(format!(
                    "operation {} declares no progress schema",
                    snapshot.operation
                )));
            }
        }
        self.transition_from(snapshot, |current| {
            non_terminal(current)?;
            let mut snapshot = next(current, OperationState::Running);
            snapshot.progress = Some(progress.clone());
            Ok(Some((EventKind::Progress, snapshot)))
        })
        .await
    }

    /// Completes the operation with an output, validated against the output schema.
    pub async fn complete(&self, id: &str, output: Value) -> Result<Snapshot, ServerError> {
        let snapshot = self.get(id).await?;
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
        let current = self.get(id).await?;
        self.finish(current, EventKind::Failed, |snapshot| {
            snapshot.error = Some(error.clone())
        })
        .await
    }

    /// Ends the operation `cancelled` (after a cancel request was honoured or enforced).
    pub async fn cancelled(&self, id: &str, message: &str) -> Result<Snapshot, ServerError> {
        let error = ErrorInfo::new(ErrorCode::Cancelled, message);
        let current = self.get(id).await?;
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
        self.transition(id, |current| {
            if current.is_terminal() || current.cancel_requested {
                return Ok(None);
            }
            let mut snapshot = next(current, current.state);
            snapshot.cancel_requested = true;
            Ok(Some((EventKind::CancelRequested, snapshot)))
        })
        .await?;
        let live = self.running(id);
        if let Some(live) = &live {
            live.cancel.cancel();
        }
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
        check(
            &signal.input,
            &payload,
            &format!("signal {name} of {}", snapshot.operation),
        )?;
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
        let mut live = self
            .inner
            .live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = live.entry(id.to_owned()).or_default();
        if let (Some(task), Ok(mut slot)) = (task, entry.task.lock()) {
            *slot = Some(task);
        }
    }

    fn running(&self, id: &str) -> Option<Arc<Live>> {
        let live = self
            .inner
            .live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        live.get(id).cloned()
    }

    fn retire(&self, id: &str) {
        let mut live = self
            .inner
            .live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        live.remove(id);
    }

    async fn transition(
        &self,
        id: &str,
        change: impl Fn(&Snapshot) -> Result<Option<(EventKind, Snapshot)>, ServerError>,
    ) -> Result<Snapshot, ServerError> {
        let current = self.get(id).await?;
        self.transition_from(current, change).await
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
                UpdateOutcome::Updated(snapshot) => return Ok(snapshot),
                UpdateOutcome::Conflict(latest) => current = latest,
            }
        }
    }
}

fn next(current: &Snapshot, state: OperationState) -> Snapshot {
    let mut snapshot = current.clone();
    snapshot.revision += 1;
    snapshot.state = state;
    snapshot.updated_at = Utc::now();
    snapshot
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
