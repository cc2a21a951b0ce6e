//! The executor: which operations run on this host, and how they start, stop and resume.
//!
//! It owns the handlers by operation name, the handler slots, the jobs port and one [`Run`]
//! per operation running here. `launch`, `restart` (on recovery) and `attach` (a caller taking
//! control by id) create runs; a run ends when its operation does or its last holder drops it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use opshost_api::{ErrorCode, ErrorInfo, EventKind, OperationState, Snapshot};
use opshost_telemetry::Span;
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{RestartPolicy, RuntimeConfig};
use crate::error::{ServerError, until_stored};
use crate::handoff::JobHandOff;
use crate::log::{Acceptance, OperationLog, Ordered, next, non_terminal};
use crate::run::{Accepted, JobsPort, Run, Runs};
use crate::store::{Doorbell, Owner, StoredOperation};

/// Runs accepted operations of one operation name: a wasm component or native code.
///
/// The executor spawns [`OperationHandler::run`] on its own task once the operation is
/// accepted, with the operation's [`Run`] to report through. When `run` returns, the executor
/// holds the attach rule for every kind of handler: an error fails the operation with it, and
/// an operation still non-terminal (and not handed to a job) fails with `HandlerNonTerminal`.
pub trait OperationHandler: Send + Sync + 'static {
    /// Drives `run`'s operation (`snapshot`, accepted with `input`) to a terminal state, or
    /// answers the failure to record.
    fn run(
        &self,
        run: Arc<Run>,
        snapshot: Snapshot,
        input: Option<Value>,
    ) -> BoxFuture<'static, Result<(), ErrorInfo>>;

    /// The version an operation accepted now is pinned to (a component's sha256), if the
    /// handler has versions.
    fn version(&self) -> Option<String> {
        None
    }

    /// Whether the handler may start before its operation's accept is durable, while the
    /// store makes it so. Only when every effect it has outside the store goes through its
    /// [`Run`], which holds those effects until then ([`Run::accept_durable`]), as a sandboxed
    /// component's do. Native code can do anything, so by default it starts once the accept
    /// is durable.
    fn starts_before_durable(&self) -> bool {
        false
    }
}

/// What [`crate::OperationRuntime::recover`] did.
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

/// Handler slots: a semaphore of `concurrency` permits, and how many launched handlers wait
/// for one (at most `backlog`).
struct Slots {
    permits: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
}

/// A launched handler waiting for a slot: counted in [`Slots::waiting`] until dropped.
struct Queued {
    permits: Arc<Semaphore>,
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

    async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.permits).acquire_owned().await.ok()
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What [`crate::OperationRuntime::drain`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drained {
    /// Runs that were running when the drain began.
    pub running: usize,
    /// Runs still running when the grace period ended, stopped here: their operations stay
    /// open for the next start of this host, or another host, to resume.
    pub stopped: usize,
}

/// See the module docs.
pub(crate) struct Executor {
    log: Arc<OperationLog>,
    handlers: RwLock<HashMap<String, Arc<dyn OperationHandler>>>,
    jobs: Arc<JobsPort>,
    runs: Arc<Runs>,
    slots: Option<Slots>,
    closing: CancellationToken,
    /// Starts past the `closing` check and not yet launched: a drain waits for them, so that
    /// none launches a run after the drain counted the runs.
    admitting: AtomicUsize,
}

/// What a run launched at its accept brings from it.
#[derive(Default)]
struct Fresh {
    /// Resolves once the accept is durable, when the handler starts before.
    accepted: Option<Accepted>,
    /// A doorbell for other hosts' changes to the operation, taken before its create.
    elsewhere: Option<Doorbell>,
}

/// One start counted in [`Executor::admitting`] until dropped.
struct Admitting<'a>(&'a AtomicUsize);

impl Drop for Admitting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Executor {
    pub(crate) fn new(log: Arc<OperationLog>) -> Self {
        let slots = log.config().concurrency.map(|concurrency| Slots {
            permits: Arc::new(Semaphore::new(concurrency)),
            waiting: Arc::default(),
        });
        Self {
            log,
            handlers: RwLock::default(),
            jobs: Arc::default(),
            runs: Arc::default(),
            slots,
            closing: CancellationToken::new(),
            admitting: AtomicUsize::new(0),
        }
    }

    /// Starts nothing more: later starts are refused and operations waiting for a slot stay
    /// pending. Lets the runs here end for up to `grace`, then stops those still running.
    pub(crate) async fn drain(&self, grace: Duration) -> Drained {
        self.closing.cancel();
        let deadline = tokio::time::Instant::now() + grace;
        while self.admitting.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let running = self.runs.len();
        while self.runs.len() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.runs.all();
        for run in &left {
            run.abort();
            run.retire();
        }
        if !left.is_empty() {
            tracing::info!(
                stopped = left.len(),
                "runs stopped at the end of the grace period"
            );
        }
        Drained {
            running,
            stopped: left.len(),
        }
    }

    fn config(&self) -> &RuntimeConfig {
        self.log.config()
    }

    pub(crate) fn install(&self, operation: &str, handler: Arc<dyn OperationHandler>) {
        self.handlers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(operation.to_owned(), handler);
    }

    pub(crate) fn handler(&self, operation: &str) -> Option<Arc<dyn OperationHandler>> {
        self.handlers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(operation)
            .cloned()
    }

    pub(crate) fn connect_jobs(&self, jobs: Arc<dyn JobHandOff>) {
        if self.jobs.set(jobs).is_err() {
            tracing::warn!("a jobs service is already connected to this runtime");
        }
    }

    pub(crate) fn active(&self) -> usize {
        self.runs.len()
    }

    /// Accepts an operation and, when newly accepted, launches its handler.
    pub(crate) async fn start(
        self: &Arc<Self>,
        owner: Owner,
        operation: &str,
        key: Option<String>,
        input: Value,
    ) -> Result<Acceptance, ServerError> {
        self.admitting.fetch_add(1, Ordering::SeqCst);
        let _admitting = Admitting(&self.admitting);
        if self.closing.is_cancelled() {
            return Err(ServerError::ShuttingDown);
        }
        let Some(handler) = self.handler(operation) else {
            self.log.spec(operation)?;
            return Err(ServerError::OperationUnsupportedControl {
                operation: operation.to_owned(),
                action: "start (no handler deployed)".into(),
            });
        };
        if let Some(slots) = &self.slots {
            let waiting = slots.waiting.load(Ordering::SeqCst);
            let backlog = self.config().backlog;
            if slots.permits.available_permits() == 0 && waiting >= backlog {
                return Err(ServerError::Overloaded {
                    message: format!(
                        "every handler slot is taken and {waiting} accepted operations already wait (max_backlog {backlog})"
                    ),
                    retry_after: Duration::from_secs(1),
                });
            }
        }
        let tenant = owner.tenant.clone();
        let Ordered {
            acceptance,
            durable,
            elsewhere,
        } = self
            .log
            .accept_ordered(
                owner,
                operation,
                key,
                Some(input.clone()),
                handler.version(),
            )
            .await?;
        // Accepted while the host began to stop: the operation stays pending, for the next
        // start of this host or another host to run.
        let launch = acceptance.created && !self.closing.is_cancelled();
        let snapshot = acceptance.snapshot.clone();
        if launch && handler.starts_before_durable() && !durable.is_done() {
            // The handler's first steps overlap the accept's sync; its caller is answered,
            // and its effects outside the store go out, only once the accept is durable.
            let accepted = durable.wait().boxed().shared();
            let fresh = Fresh {
                accepted: Some(accepted.clone()),
                elsewhere,
            };
            let run = self.launch(handler, snapshot, Some(input), &tenant, fresh);
            if let Err(error) = accepted.await {
                run.abort();
                run.retire();
                return Err(error.into());
            }
        } else {
            durable.wait().await?;
            if launch {
                let fresh = Fresh {
                    accepted: None,
                    elsewhere,
                };
                self.launch(handler, snapshot, Some(input), &tenant, fresh);
            }
        }
        Ok(acceptance)
    }

    /// Runs `handler` for `snapshot` (an operation of `tenant`) on a task of its own, once a
    /// slot is free. Answers the run.
    fn launch(
        self: &Arc<Self>,
        handler: Arc<dyn OperationHandler>,
        snapshot: Snapshot,
        input: Option<Value>,
        tenant: &str,
        fresh: Fresh,
    ) -> Arc<Run> {
        let span = self.log.telemetry().attempt(&snapshot, tenant);
        let run = self
            .runs
            .launch(&self.log, &self.jobs, &snapshot, span, fresh.accepted);
        // Boxed, and only on a shared store, so that every run's task stays small.
        let elsewhere: BoxFuture<'static, ()> = match self.log.store().is_shared() {
            true => {
                let (executor, run) = (Arc::clone(self), Arc::clone(&run));
                let taken = fresh.elsewhere;
                Box::pin(async move { executor.changed_elsewhere(&run, taken).await })
            }
            false => Box::pin(std::future::pending()),
        };
        let executor = Arc::clone(self);
        let closing = self.closing.clone();
        let queued = self.slots.as_ref().map(Queued::new);
        let (registered, gate) = tokio::sync::oneshot::channel::<()>();
        let task_run = Arc::clone(&run);
        // The host's own lines about this run carry its operation, attempt, tenant and trace.
        let span = tracing::info_span!(
            "run",
            operation = %snapshot.id,
            name = %snapshot.operation,
            attempt = snapshot.attempt,
            tenant,
            trace_id = snapshot.trace.as_ref().map_or("", |trace| trace.trace_id.as_str()),
        );
        let task = tokio::spawn(async move {
            let run = task_run;
            // Run only once cancel can find the task, so a fast handler cannot finish first.
            let _ = gate.await;
            let cancel = run.cancellation();
            let _permit = match queued {
                Some(queued) => tokio::select! {
                    biased;
                    // The host is going down: the operation stays pending, to be resumed.
                    () = closing.cancelled() => return,
                    permit = queued.slot() => permit,
                    () = cancel.cancelled() => {
                        drop(queued);
                        let ended = run.cancelled_with("cancelled while waiting for a handler slot").await;
                        if let Err(error) = ended {
                            tracing::debug!(id = %run.id(), %error, "cancel of a waiting operation");
                        }
                        return;
                    }
                },
                None => None,
            };
            tokio::select! {
                outcome = run.span().scope(handler.run(Arc::clone(&run), snapshot, input)) => {
                    executor.handler_returned(&run, outcome).await;
                }
                () = elsewhere => {}
            }
            run.end_span();
        }.instrument(span));
        run.set_task(task.abort_handle());
        let _ = registered.send(());
        run
    }

    /// On a store other hosts share, what they do to an operation running here: a cancel
    /// request wakes the run; an end, or a restart elsewhere (a newer attempt), returns after
    /// the cancel grace, so that the caller drops a run that did not finish by then. `taken`
    /// is a doorbell for those changes taken before the operation was created, so that none
    /// went unheard.
    async fn changed_elsewhere(&self, run: &Run, taken: Option<Doorbell>) {
        // What this host does to the run wakes it directly; only the others' changes need
        // reading back.
        let mut closed = false;
        let mut bell = match taken {
            Some(mut bell) => {
                closed = bell.changed().await.is_err();
                bell
            }
            // Read once at once: a change made before the doorbell was taken rang nothing.
            None => self.log.store().subscribe_elsewhere(run.id()),
        };
        loop {
            let over = match self.log.store().load(run.id()).await {
                Ok(Some(stored)) => {
                    let snapshot = stored.snapshot;
                    if snapshot.cancel_requested {
                        run.wake();
                    }
                    closed || snapshot.is_terminal() || snapshot.attempt > run.attempt()
                }
                Ok(None) => true,
                Err(error) => {
                    tracing::warn!(id = %run.id(), %error, "cannot read an operation another host changed");
                    closed
                }
            };
            if over {
                tokio::time::sleep(self.config().cancel_grace).await;
                tracing::info!(id = %run.id(), attempt = run.attempt(), "dropping a run that ended or moved elsewhere");
                run.retire();
                return;
            }
            closed = bell.changed().await.is_err();
        }
    }

    /// The attach rule, once a handler's `run` returned.
    async fn handler_returned(&self, run: &Run, outcome: Result<(), ErrorInfo>) {
        if run.handed_off() && outcome.is_ok() {
            return;
        }
        let error = match outcome {
            Err(error) => error,
            Ok(()) => match run.snapshot().await {
                Ok(current) if current.is_terminal() => return,
                Ok(current) => ServerError::HandlerNonTerminal {
                    id: run.id().to_owned(),
                    state: current.state,
                }
                .to_info(),
                Err(error) => {
                    tracing::error!(id = %run.id(), %error, "cannot read operation after its handler returned");
                    return;
                }
            },
        };
        // The failure must be recorded, or the operation would stay open with nothing running
        // it.
        match until_stored(|| run.fail(error.clone())).await {
            Ok(_) | Err(ServerError::OperationTerminal { .. } | ServerError::Superseded { .. }) => {
            }
            Err(error) => tracing::error!(id = %run.id(), %error, "cannot record handler failure"),
        }
    }

    /// The run of operation `id`: the one here, else a new one, counted while it is held and
    /// the operation is open.
    pub(crate) async fn attach(&self, id: &str) -> Result<Arc<Run>, ServerError> {
        let snapshot = self.log.get(id).await?;
        let span = Span::current();
        let run = self.runs.join(&self.log, &self.jobs, &snapshot, span);
        if snapshot.is_terminal() {
            run.retire();
        }
        Ok(run)
    }

    /// Records a cancel request and wakes the handler (and the job owning the operation),
    /// without waiting for the operation to end.
    pub(crate) async fn request_cancel(&self, id: &str) -> Result<Snapshot, ServerError> {
        let snapshot = self.log.get(id).await?;
        if !self.log.spec(&snapshot.operation)?.cancel {
            return Err(ServerError::OperationUnsupportedControl {
                operation: snapshot.operation,
                action: "cancel".into(),
            });
        }
        if snapshot.is_terminal() {
            return Ok(snapshot);
        }
        let current = match self.runs.get(id) {
            Some(run) => run.snapshot().await?,
            None => snapshot,
        };
        let requested = self.log.request_cancel(current).await?;
        if let Some(run) = self.runs.get(id) {
            run.wake();
        }
        if let Some(jobs) = self.jobs.get() {
            jobs.cancel_owned(id).await?;
        }
        Ok(requested)
    }

    /// Requests cancellation, waits the grace period for the operation to end, then stops the
    /// handler by force and ends the operation `cancelled`.
    pub(crate) async fn cancel(&self, id: &str) -> Result<Snapshot, ServerError> {
        let snapshot = self.request_cancel(id).await?;
        if snapshot.is_terminal() {
            return Ok(snapshot);
        }
        // The run to stop is the one running now, whatever happens to the registry meanwhile.
        let running = self.runs.get(id);
        let waited = self.log.wait(id, Some(self.config().cancel_grace)).await?;
        if waited.is_terminal() {
            return Ok(waited);
        }
        let run = match running {
            Some(run) => run,
            None => self.attach(id).await?,
        };
        if run.abort() {
            tracing::warn!(%id, "handler ignored cancellation for the grace period; stopping it");
        }
        match run
            .cancelled_with("cancelled by caller; handler stopped after the grace period")
            .await
        {
            Ok(snapshot) => Ok(snapshot),
            Err(ServerError::OperationTerminal { .. }) => self.log.get(id).await,
            Err(error) => Err(error),
        }
    }

    /// Resumes what a previous run of the host (or, on a shared store, a dead host) left
    /// unfinished. See [`crate::OperationRuntime::recover`].
    pub(crate) async fn recover(
        self: &Arc<Self>,
        policy: impl Fn(&str) -> RestartPolicy,
    ) -> Result<Recovery, ServerError> {
        let mut report = Recovery::default();
        if self.closing.is_cancelled() {
            return Ok(report);
        }
        for stored in self.log.store().claim_orphans().await? {
            if self.closing.is_cancelled() {
                // Going down: what is left stays for the next start or another host.
                break;
            }
            let id = stored.snapshot.id.clone();
            let attempt = stored.snapshot.attempt;
            let owned = match self.jobs.get() {
                Some(jobs) => jobs.owns(&id).await?,
                None => false,
            };
            let outcome = if owned && !stored.snapshot.cancel_requested {
                report.owned_by_jobs += 1;
                continue;
            } else if stored.snapshot.cancel_requested {
                report.cancelled += 1;
                if owned && let Some(jobs) = self.jobs.get() {
                    jobs.cancel_owned(&id).await?;
                }
                self.end_unfinished(
                    stored.snapshot,
                    EventKind::Cancelled,
                    ErrorInfo::new(
                        ErrorCode::Cancelled,
                        "cancelled: the host restarted while the cancel was pending",
                    ),
                )
                .await
            } else {
                let handler = self.handler(&stored.snapshot.operation);
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
                        self.end_unfinished(
                            stored.snapshot,
                            EventKind::Failed,
                            ErrorInfo::new(ErrorCode::HostRestarted, message),
                        )
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

    /// Ends an operation no run of this host drives, as `kind` with `error`.
    async fn end_unfinished(
        &self,
        current: Snapshot,
        kind: EventKind,
        error: ErrorInfo,
    ) -> Result<Snapshot, ServerError> {
        self.log
            .finish(current, kind, |snapshot| {
                snapshot.error = Some(error.clone())
            })
            .await
    }

    /// Runs `stored`'s handler again as attempt + 1.
    async fn restart(
        self: &Arc<Self>,
        handler: Arc<dyn OperationHandler>,
        stored: StoredOperation,
    ) -> Result<Snapshot, ServerError> {
        let snapshot = self
            .log
            .transition_from(stored.snapshot, |current| {
                non_terminal(current)?;
                let mut snapshot = next(current, OperationState::Pending);
                snapshot.attempt = current.attempt + 1;
                Ok(Some((EventKind::Restarted, snapshot)))
            })
            .await?;
        self.launch(
            handler,
            snapshot.clone(),
            stored.input,
            &stored.owner.tenant,
            Fresh::default(),
        );
        Ok(snapshot)
    }
}
