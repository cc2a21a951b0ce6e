//! The operation log: what happened to each operation, as the store keeps it.
//!
//! Accept, compare-and-set transitions, signals, reads, wait and watch, over an
//! [`OperationStore`]. The log knows nothing of what runs where: the executor and its runs
//! drive it, and callers read it.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::Utc;
use opshost_api::{EventKind, OperationEvent, OperationState, Snapshot};
use opshost_contract::{Contract, OperationSpec, PayloadSchema};
use opshost_telemetry::Telemetry;
use serde_json::Value;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::config::RuntimeConfig;
use crate::error::ServerError;
use crate::feed::ChangeFeed;
use crate::logs::LogSink;
use crate::store::{
    CreateOutcome, Doorbell, Durable, ListFilter, OperationStore, Owner, Page, Rang, SignalOutcome,
    SignalRecord, StateCount, StoredOperation, UpdateOutcome,
};
use crate::usage::UsageFeed;

/// Events kept for slow subscribers of [`OperationLog::events`] before they lag.
const FEED_CAPACITY: usize = 1024;

/// The result of accepting an operation.
#[derive(Debug, Clone, PartialEq)]
pub struct Acceptance {
    /// The operation's snapshot (the existing one when it was already accepted).
    pub snapshot: Snapshot,
    /// Whether this call created the operation.
    pub created: bool,
}

/// An accept the store has ordered (see [`OperationLog::accept_ordered`]).
pub(crate) struct Ordered {
    pub(crate) acceptance: Acceptance,
    /// Resolves once the accept is durable.
    pub(crate) durable: Durable,
    /// On a store other hosts share, a doorbell for their changes to the operation created,
    /// taken before the create.
    pub(crate) elsewhere: Option<Doorbell>,
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

/// The operations of one service, in one store.
pub(crate) struct OperationLog {
    service: String,
    contract: OnceLock<Arc<Contract>>,
    store: Arc<dyn OperationStore>,
    config: RuntimeConfig,
    feed: broadcast::Sender<OperationEvent>,
    changes: Arc<ChangeFeed>,
    logs: LogSink,
    usage: UsageFeed,
    telemetry: Telemetry,
}

/// A change the log applies: the event it records and the snapshot after it, or nothing to do.
pub(crate) type Change = Option<(EventKind, Snapshot)>;

impl OperationLog {
    pub(crate) fn new(
        service: String,
        contract: Option<Arc<Contract>>,
        store: Arc<dyn OperationStore>,
        config: RuntimeConfig,
        telemetry: Telemetry,
    ) -> Self {
        let cell = OnceLock::new();
        if let Some(contract) = contract {
            let _ = cell.set(contract);
        }
        let logs = LogSink::new(Arc::clone(&store));
        let changes = ChangeFeed::new(Arc::clone(&store));
        Self {
            service,
            contract: cell,
            store,
            config,
            feed: broadcast::channel(FEED_CAPACITY).0,
            changes,
            logs,
            usage: UsageFeed::new(),
            telemetry,
        }
    }

    /// The store's feed of every change.
    pub(crate) fn changes(&self) -> &Arc<ChangeFeed> {
        &self.changes
    }

    /// Where the spans of operations go.
    pub(crate) fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    pub(crate) fn logs(&self) -> &LogSink {
        &self.logs
    }

    pub(crate) fn usage(&self) -> &UsageFeed {
        &self.usage
    }

    pub(crate) fn service(&self) -> &str {
        &self.service
    }

    pub(crate) fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    pub(crate) fn store(&self) -> &Arc<dyn OperationStore> {
        &self.store
    }

    pub(crate) fn contract(&self) -> Option<&Contract> {
        self.contract.get().map(Arc::as_ref)
    }

    /// Learns the contract from a facade's manifest, unless one is known.
    pub(crate) fn learn_contract(&self, load: impl FnOnce() -> Contract) {
        self.contract.get_or_init(|| Arc::new(load()));
    }

    /// The contract operation named `name`.
    pub(crate) fn spec(&self, name: &str) -> Result<&OperationSpec, ServerError> {
        self.contract()
            .and_then(|contract| contract.operation(name))
            .ok_or_else(|| {
                ServerError::invalid(format!(
                    "unknown operation `{name}` in service `{}`",
                    self.service
                ))
            })
    }

    /// Accepts operation `operation` for `owner` under key `key` (a fresh ULID when `None`),
    /// pinned to component version `component` if given.
    pub(crate) async fn accept(
        &self,
        owner: Owner,
        operation: &str,
        key: Option<String>,
        input: Option<Value>,
        component: Option<String>,
    ) -> Result<Acceptance, ServerError> {
        let ordered = self
            .accept_ordered(owner, operation, key, input, component)
            .await?;
        ordered.durable.wait().await?;
        Ok(ordered.acceptance)
    }

    /// [`OperationLog::accept`], answered as soon as the store has ordered the accept, with
    /// what resolves once it is durable. Nobody else learns of the operation before then.
    pub(crate) async fn accept_ordered(
        &self,
        owner: Owner,
        operation: &str,
        key: Option<String>,
        input: Option<Value>,
        component: Option<String>,
    ) -> Result<Ordered, ServerError> {
        let spec = self.spec(operation)?;
        if let Some(input) = &input {
            self.check_size(input, &format!("input of {operation}"))?;
            check(&spec.input, input, &format!("input of {operation}"))?;
        }
        let id = match key {
            Some(key) => {
                opshost_api::id::check_key(&key)
                    .map_err(|error| ServerError::invalid(error.to_string()))?;
                let id = opshost_api::id::scoped_id(&owner.tenant, &key);
                // Before keys were scoped, the id was the key in every tenant: such an
                // operation of this tenant still answers for its key.
                if id != key
                    && self.store.holds_unscoped_keys()
                    && let Some(legacy) = self.store.load(&key).await?
                    && legacy.owner.tenant == owner.tenant
                {
                    return Ok(Ordered {
                        acceptance: existing(legacy, operation, &input, &owner.tenant)?,
                        durable: Durable::done(),
                        elsewhere: None,
                    });
                }
                id
            }
            None => ulid::Ulid::new().to_string(),
        };
        let mut snapshot = Snapshot::accepted(
            id.clone(),
            self.service.clone(),
            operation.to_owned(),
            spec.version.clone(),
        );
        snapshot.component = component;
        // The operation joins the trace of whoever accepts it (an HTTP request's span, or an
        // embedding service's current span), on every attempt.
        snapshot.trace = self.telemetry.accepted(
            &opshost_telemetry::Context::current(),
            operation,
            &id,
            &owner.tenant,
        );
        let tenant = owner.tenant.clone();
        let stored = StoredOperation {
            snapshot,
            input: input.clone(),
            owner,
        };
        // Taken before the create, on a store other hosts share: it hears every change they make
        // to an operation created here, which they can make only after the create.
        let elsewhere = self
            .store
            .is_shared()
            .then(|| self.store.subscribe_elsewhere(&id));
        let (outcome, durable) = self.store.create_ordered(stored).await?;
        match outcome {
            CreateOutcome::Created(snapshot) => {
                tracing::debug!(%id, operation, "accepted");
                // In order with the handler's own events, which may follow before the sync.
                self.publish(EventKind::Accepted, &snapshot);
                let acceptance = Acceptance {
                    snapshot,
                    created: true,
                };
                Ok(Ordered {
                    acceptance,
                    durable,
                    elsewhere,
                })
            }
            CreateOutcome::Existing(stored) => {
                // What the store answers may be another accept's, not yet durable either.
                durable.wait().await?;
                Ok(Ordered {
                    acceptance: existing(stored, operation, &input, &tenant)?,
                    durable: Durable::done(),
                    elsewhere: None,
                })
            }
        }
    }

    pub(crate) async fn load(&self, id: &str) -> Result<StoredOperation, ServerError> {
        self.store
            .load(id)
            .await?
            .ok_or_else(|| ServerError::OperationNotFound { id: id.to_owned() })
    }

    pub(crate) async fn get(&self, id: &str) -> Result<Snapshot, ServerError> {
        Ok(self.load(id).await?.snapshot)
    }

    pub(crate) async fn list(&self, filter: &ListFilter) -> Result<Page, ServerError> {
        Ok(self.store.list(filter).await?)
    }

    pub(crate) async fn count_by_state(&self) -> Result<Vec<StateCount>, ServerError> {
        Ok(self.store.count_by_state().await?)
    }

    pub(crate) fn subscribe(&self, id: &str) -> Doorbell {
        self.store.subscribe(id)
    }

    /// The operation's events after revision `after`, oldest first.
    pub(crate) async fn events_after(
        &self,
        id: &str,
        after: u64,
    ) -> Result<Vec<OperationEvent>, ServerError> {
        Ok(self.store.events_after(id, after).await?)
    }

    /// The terminal snapshot, or the current one when `timeout` passes first.
    pub(crate) async fn wait(
        &self,
        id: &str,
        timeout: Option<Duration>,
    ) -> Result<Snapshot, ServerError> {
        let bell = self.store.subscribe(id);
        let current = self.get(id).await?;
        self.wait_from(bell, current, timeout).await
    }

    /// [`OperationLog::wait`] from `current`, read after `bell` was taken. Reads the store
    /// again only when a ring leaves it unsure where the operation stands, or at the timeout.
    pub(crate) async fn wait_from(
        &self,
        mut bell: Doorbell,
        current: Snapshot,
        timeout: Option<Duration>,
    ) -> Result<Snapshot, ServerError> {
        let id = current.id.clone();
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut current = current;
        loop {
            if current.is_terminal() {
                return Ok(current);
            }
            let rang = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, bell.rang()).await.ok(),
                None => Some(bell.rang().await),
            };
            match rang {
                Some(Rang::Changed) => {}
                Some(Rang::Unsure) => current = self.get(&id).await?,
                Some(Rang::Ended(Some(last))) => return Ok(Snapshot::clone(&last)),
                Some(Rang::Ended(None)) | None => return self.get(&id).await,
            }
        }
    }

    /// Appends signal `name` after checking it against the contract; answers its sequence.
    pub(crate) async fn signal(
        &self,
        id: &str,
        name: &str,
        payload: Value,
    ) -> Result<u64, ServerError> {
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
        match self.store.append_signal(id, name, payload).await? {
            SignalOutcome::Appended(sequence) => Ok(sequence),
            SignalOutcome::Terminal(state) => Err(ServerError::OperationTerminal {
                id: id.to_owned(),
                state,
            }),
        }
    }

    /// Waits for the first signal after sequence `after`, up to `timeout`, unless `cancel`
    /// fires or a cancel request is recorded first.
    pub(crate) async fn next_signal(
        &self,
        id: &str,
        after: u64,
        cancel: &CancellationToken,
        timeout: Option<Duration>,
    ) -> Result<SignalWait, ServerError> {
        let mut bell = self.store.subscribe(id);
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        loop {
            if let Some(signal) = self
                .store
                .signals_after(id, after)
                .await?
                .into_iter()
                .next()
            {
                return Ok(SignalWait::Signal(signal));
            }
            let snapshot = self.get(id).await?;
            non_terminal(&snapshot)?;
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

    /// Checks a progress payload against the progress schema of `current`'s operation.
    pub(crate) fn check_progress(
        &self,
        current: &Snapshot,
        progress: &Value,
    ) -> Result<(), ServerError> {
        non_terminal(current)?;
        match &self.spec(&current.operation)?.progress {
            Some(schema) => check(
                schema,
                progress,
                &format!("progress of {}", current.operation),
            ),
            None => Err(ServerError::invalid(format!(
                "operation {} declares no progress schema",
                current.operation
            ))),
        }
    }

    /// Checks an output against the output schema of `current`'s operation.
    pub(crate) fn check_output(
        &self,
        current: &Snapshot,
        output: &Value,
    ) -> Result<(), ServerError> {
        let schema = &self.spec(&current.operation)?.output;
        check(schema, output, &format!("output of {}", current.operation))
    }

    /// Bytes of JSON (as [`json_len`] counts them) of every progress the operation recorded,
    /// over all its attempts.
    pub(crate) async fn progress_bytes(&self, id: &str) -> Result<u64, ServerError> {
        let mut total = 0u64;
        for event in self.store.events_after(id, 0).await? {
            if let (OperationEvent::Progress { .. }, Some(progress)) =
                (&event, &event.snapshot().progress)
            {
                total = total.saturating_add(json_len(progress));
            }
        }
        Ok(total)
    }

    /// Applies `change` starting from `current`, re-reading only on a revision conflict.
    pub(crate) async fn transition_from(
        &self,
        mut current: Snapshot,
        change: impl Fn(&Snapshot) -> Result<Change, ServerError>,
    ) -> Result<Snapshot, ServerError> {
        loop {
            let Some((kind, snapshot)) = change(&current)? else {
                return Ok(current);
            };
            match self.store.update(snapshot, kind).await? {
                UpdateOutcome::Updated(snapshot) => {
                    self.publish(kind, &snapshot);
                    return Ok(snapshot);
                }
                UpdateOutcome::Conflict(latest) => current = latest,
            }
        }
    }

    /// Records a cancel request unless the operation is terminal or one is recorded.
    pub(crate) async fn request_cancel(&self, current: Snapshot) -> Result<Snapshot, ServerError> {
        self.transition_from(current, |current| {
            if current.is_terminal() || current.cancel_requested {
                return Ok(None);
            }
            let mut snapshot = next(current, current.state);
            snapshot.cancel_requested = true;
            Ok(Some((EventKind::CancelRequested, snapshot)))
        })
        .await
    }

    /// Ends the operation in the terminal state of `kind`, with `set` applied.
    pub(crate) async fn finish(
        &self,
        current: Snapshot,
        kind: EventKind,
        set: impl Fn(&mut Snapshot),
    ) -> Result<Snapshot, ServerError> {
        self.finish_if(current, kind, |_| Ok(()), set).await
    }

    /// [`OperationLog::finish`], refused by `allowed` (checked on every snapshot it would end).
    pub(crate) async fn finish_if(
        &self,
        current: Snapshot,
        kind: EventKind,
        allowed: impl Fn(&Snapshot) -> Result<(), ServerError>,
        set: impl Fn(&mut Snapshot),
    ) -> Result<Snapshot, ServerError> {
        let state = match kind {
            EventKind::Completed => OperationState::Completed,
            EventKind::Failed => OperationState::Failed,
            _ => OperationState::Cancelled,
        };
        self.transition_from(current, |current| {
            non_terminal(current)?;
            allowed(current)?;
            let mut snapshot = next(current, state);
            snapshot.completed_at = Some(snapshot.updated_at);
            set(&mut snapshot);
            Ok(Some((kind, snapshot)))
        })
        .await
    }

    /// Purges terminal operations completed more than `retention` ago; returns how many.
    pub(crate) async fn purge_expired(&self, retention: Duration) -> Result<u64, ServerError> {
        let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
        let cutoff = Utc::now()
            .checked_sub_signed(retention)
            .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
        Ok(self.store.purge(cutoff).await?)
    }

    /// Every event of every operation changed through this log, as it happens.
    pub(crate) fn events(&self) -> broadcast::Receiver<OperationEvent> {
        self.feed.subscribe()
    }

    fn publish(&self, kind: EventKind, snapshot: &Snapshot) {
        if self.feed.receiver_count() > 0 {
            let _ = self.feed.send(OperationEvent::new(kind, snapshot.clone()));
        }
    }

    /// Refuses a caller's payload larger than `max_payload_bytes` of JSON.
    fn check_size(&self, value: &Value, what: &str) -> Result<(), ServerError> {
        let limit = self.config.max_payload_bytes;
        let bytes = json_len(value);
        if bytes > u64::try_from(limit).unwrap_or(u64::MAX) {
            return Err(ServerError::LimitExceeded {
                limit: "max_payload_bytes".into(),
                message: format!("{what} is {bytes} bytes of JSON, more than {limit}"),
            });
        }
        Ok(())
    }
}

/// The answer to accepting `stored` again: itself when the operation, input and tenant are
/// the same, else `OperationAlreadyExists`.
fn existing(
    stored: StoredOperation,
    operation: &str,
    input: &Option<Value>,
    tenant: &str,
) -> Result<Acceptance, ServerError> {
    if stored.snapshot.operation == operation
        && stored.input == *input
        && stored.owner.tenant == tenant
    {
        Ok(Acceptance {
            snapshot: stored.snapshot,
            created: false,
        })
    } else {
        Err(ServerError::OperationAlreadyExists {
            id: stored.snapshot.id,
        })
    }
}

/// The snapshot after `current`, one revision on, in `state`.
pub(crate) fn next(current: &Snapshot, state: OperationState) -> Snapshot {
    let mut snapshot = current.clone();
    snapshot.revision += 1;
    snapshot.state = state;
    snapshot.updated_at = Utc::now();
    snapshot
}

/// Refuses a change to a terminal operation.
pub(crate) fn non_terminal(current: &Snapshot) -> Result<(), ServerError> {
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
