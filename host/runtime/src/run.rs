//! A [`Run`]: one operation running on this host.
//!
//! The run owns what only this host knows of the operation: the cancellation that wakes its
//! handler, the task that can be stopped by force, its attempt, whether it handed its terminal
//! path to a job, and the newest snapshot it wrote (which the store may not show readers yet).
//! Handlers, [`crate::OperationControl`] and the guest's control imports act through it, so
//! they never look the operation up again.
//!
//! The executor creates a run when it launches, resumes or recovers an operation, and a
//! caller that takes control of one by id joins the run already there. A run is counted by
//! [`crate::OperationRuntime::active_handlers`] from then until it ends the operation or its
//! last holder drops it, whichever comes first: no run can outlive both.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::Duration;

use futures::future::{BoxFuture, Shared};
use opshost_api::{ErrorCode, ErrorInfo, EventKind, OperationState, Snapshot};
use opshost_telemetry::Span;
use serde_json::Value;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use crate::error::ServerError;
use crate::handoff::JobHandOff;
use crate::log::{OperationLog, SignalWait, next, non_terminal};
use crate::store::StoreError;

/// The jobs service once connected: the runtime's only way to jobs.
pub(crate) type JobsPort = OnceLock<Arc<dyn JobHandOff>>;

/// Resolves once a run's operation is accepted durably (see [`Run::accept_durable`]).
pub(crate) type Accepted = Shared<BoxFuture<'static, Result<(), StoreError>>>;

/// One operation running on this host. Shared by its handler's task and every control handle.
pub struct Run {
    id: String,
    attempt: u32,
    cancel: CancellationToken,
    task: Mutex<Option<AbortHandle>>,
    latest: Mutex<Option<Snapshot>>,
    /// Set when the run started before its accept was durable.
    accepted: Option<Accepted>,
    /// Hand-offs made by this run so far.
    hand_offs: AtomicU32,
    /// Where its events go: its attempt's span when launched here, else the span of whoever
    /// joined it (a job attempt's), which this run does not end.
    span: Span,
    owns_span: bool,
    log: Arc<OperationLog>,
    jobs: Arc<JobsPort>,
    runs: Weak<Runs>,
}

impl Run {
    /// The operation's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The attempt this run is (1 for the first).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The span of this run's work: its attempt's, or, for a run joined by a job's worker,
    /// that job attempt's. Its children (outbound requests, hand-offs) hang from it.
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// A token that fires when a cancel of the operation is requested while this run lives.
    pub fn cancellation(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Returns once the operation's accept is durable. A sandboxed handler may start before
    /// (see [`crate::OperationHandler::starts_before_durable`]): its effects outside the store,
    /// outbound requests and hand-offs, wait for this, so that nothing leaves the host for an
    /// operation a crash could still lose. Fails when the accept cannot be made durable.
    pub async fn accept_durable(&self) -> Result<(), ServerError> {
        match &self.accepted {
            Some(accepted) => Ok(accepted.clone().await?),
            None => Ok(()),
        }
    }

    /// Whether a cancel was requested: through this host (at once) or recorded by any.
    pub async fn cancel_requested(&self) -> Result<bool, ServerError> {
        if self.cancel.is_cancelled() {
            return Ok(true);
        }
        Ok(self.log.get(&self.id).await?.cancel_requested)
    }

    /// Resolves once a cancel of the operation is requested, through this host or another.
    pub async fn cancelled(&self) {
        let mut bell = self.log.subscribe(&self.id);
        loop {
            if self.cancel.is_cancelled() {
                return;
            }
            if let Ok(snapshot) = self.log.get(&self.id).await
                && snapshot.cancel_requested
            {
                return;
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                rang = bell.changed() => if rang.is_err() {
                    // Terminal: no cancel will come; wait for the token alone.
                    return self.cancel.cancelled().await;
                },
            }
        }
    }

    /// The snapshot to change next: the newest this run saw or wrote (which the store may not
    /// show readers yet), without reading the store. Another writer's change since then makes
    /// the next compare-and-set conflict, and the conflict answers the stored snapshot.
    pub async fn snapshot(&self) -> Result<Snapshot, ServerError> {
        let seen = lock(&self.latest).clone();
        match seen {
            Some(seen) => Ok(seen),
            None => Ok(self.wrote(self.log.get(&self.id).await?)),
        }
    }

    /// Marks the operation running (idempotent while running).
    pub async fn started(&self) -> Result<Snapshot, ServerError> {
        let current = self.snapshot().await?;
        if current.state == OperationState::Pending {
            self.events().event("started", Vec::new);
        }
        let snapshot = self
            .log
            .transition_from(current, |current| match self.fence(current)?.state {
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
            .await?;
        Ok(self.wrote(snapshot))
    }

    /// Checks a progress payload as [`Run::progress`] would, without recording it; answers
    /// the current snapshot.
    pub async fn check_progress(&self, progress: &Value) -> Result<Snapshot, ServerError> {
        let current = self.snapshot().await?;
        self.log.check_progress(&current, progress)?;
        Ok(current)
    }

    /// Records a progress payload, validated against the progress schema.
    pub async fn progress(&self, progress: Value) -> Result<Snapshot, ServerError> {
        let current = self.check_progress(&progress).await?;
        let snapshot = self
            .log
            .transition_from(current, |current| {
                non_terminal(self.fence(current)?)?;
                let mut snapshot = next(current, OperationState::Running);
                snapshot.progress = Some(progress.clone());
                Ok(Some((EventKind::Progress, snapshot)))
            })
            .await?;
        self.events().progress(&progress);
        Ok(self.wrote(snapshot))
    }

    /// Bytes of JSON of every progress the operation recorded, over all its attempts.
    pub async fn progress_bytes(&self) -> Result<u64, ServerError> {
        self.log.progress_bytes(&self.id).await
    }

    /// Completes the operation with `output`, validated against the output schema.
    pub async fn complete(&self, output: Value) -> Result<Snapshot, ServerError> {
        let current = self.snapshot().await?;
        self.log.check_output(&current, &output)?;
        self.finish(current, EventKind::Completed, |snapshot| {
            snapshot.output = Some(output.clone())
        })
        .await
    }

    /// Fails the operation with `error`.
    pub async fn fail(&self, error: ErrorInfo) -> Result<Snapshot, ServerError> {
        let current = self.snapshot().await?;
        self.finish(current, EventKind::Failed, |snapshot| {
            snapshot.error = Some(error.clone())
        })
        .await
    }

    /// Ends the operation `cancelled`, with `message`.
    pub async fn cancelled_with(&self, message: &str) -> Result<Snapshot, ServerError> {
        let error = ErrorInfo::new(ErrorCode::Cancelled, message);
        let current = self.snapshot().await?;
        self.finish(current, EventKind::Cancelled, |snapshot| {
            snapshot.error = Some(error.clone())
        })
        .await
    }

    /// Ends the operation `cancelled` after its handler honoured a cancel request.
    pub async fn acknowledge_cancel(&self) -> Result<Snapshot, ServerError> {
        self.cancelled_with("cancelled by caller").await
    }

    /// Hands the operation's terminal path to a new job on `queue` with `payload`; answers
    /// the job's id. The handler may then return with the operation open: the job's worker
    /// takes control by id and ends the operation. Cancelling the operation cancels the job;
    /// the job's death fails the operation.
    pub async fn hand_off(&self, queue: &str, payload: Value) -> Result<String, ServerError> {
        let Some(jobs) = self.jobs.get() else {
            return Err(ServerError::invalid(format!(
                "cannot hand operation `{}` to queue `{queue}`: this host runs no jobs",
                self.id
            )));
        };
        self.accept_durable().await?;
        // Read from the store: a job must not be enqueued for an operation already ended.
        non_terminal(self.fence(&self.log.get(&self.id).await?)?)?;
        // The job's id is fixed by the run and its count of hand-offs, so a hand-off retried
        // after a write whose answer was lost finds the job it made.
        let made = self.hand_offs.load(Ordering::SeqCst);
        let job_id = format!("{}.{}.{queue}.{made}", self.id, self.attempt);
        let span = self
            .log
            .telemetry()
            .hand_off(&self.events(), queue, &job_id);
        let enqueued = jobs
            .enqueue_owned(&job_id, &self.id, queue, payload, span.trace())
            .await;
        match &enqueued {
            Ok(_) => {
                self.hand_offs.fetch_add(1, Ordering::SeqCst);
                span.end();
            }
            Err(error) => span.end_with("refused", Some(&error.to_string())),
        }
        enqueued
    }

    /// Waits for the first signal after sequence `after`, up to `timeout`, unless a cancel is
    /// requested first.
    pub async fn next_signal(
        &self,
        after: u64,
        timeout: Option<Duration>,
    ) -> Result<SignalWait, ServerError> {
        let wait = self
            .log
            .next_signal(&self.id, after, &self.cancel, timeout)
            .await?;
        if let SignalWait::Signal(signal) = &wait {
            self.events().signal(&signal.name, signal.sequence);
        }
        Ok(wait)
    }

    pub(crate) fn handed_off(&self) -> bool {
        self.hand_offs.load(Ordering::SeqCst) > 0
    }

    /// The span the operation's events go to: the one current where they happen when the
    /// host made it (the attempt's in its handler, the job attempt's in a job's worker that
    /// joined this run), else this run's own.
    fn events(&self) -> Span {
        let current = Span::current();
        if current.is_recording() {
            current
        } else {
            self.span.clone()
        }
    }

    pub(crate) fn set_task(&self, task: AbortHandle) {
        *lock(&self.task) = Some(task);
    }

    /// Stops the handler's task by force; answers whether there was one.
    pub(crate) fn abort(&self) -> bool {
        match lock(&self.task).take() {
            Some(task) => {
                task.abort();
                true
            }
            None => false,
        }
    }

    pub(crate) fn wake(&self) {
        if !self.cancel.is_cancelled() {
            self.span.event("cancel requested", Vec::new);
        }
        self.cancel.cancel();
    }

    /// Ends this run's attempt span, if it owns it, with how the attempt went: a hand-off
    /// (whatever the job did since, on this run or not), the operation's end, or an
    /// interruption (the host stopping, a newer attempt).
    pub(crate) fn end_span(&self) {
        if !self.owns_span {
            return;
        }
        if self.handed_off() {
            return self.span.end_with("handed-off", None);
        }
        let latest = lock(&self.latest).clone();
        match latest {
            Some(snapshot) if snapshot.is_terminal() => {
                let error = snapshot.error.as_ref().map(|error| error.message.as_str());
                self.span.end_with(snapshot.state.as_str(), error);
            }
            _ => self.span.end_with("interrupted", None),
        }
    }

    async fn finish(
        &self,
        current: Snapshot,
        kind: EventKind,
        set: impl Fn(&mut Snapshot),
    ) -> Result<Snapshot, ServerError> {
        let snapshot = self
            .log
            .finish_if(current, kind, |current| self.fence(current).map(drop), set)
            .await?;
        self.retire();
        Ok(self.wrote(snapshot))
    }

    /// `current`, unless a later attempt superseded this run's.
    fn fence<'s>(&self, current: &'s Snapshot) -> Result<&'s Snapshot, ServerError> {
        if current.attempt > self.attempt {
            return Err(ServerError::Superseded {
                id: self.id.clone(),
                attempt: self.attempt,
                current: current.attempt,
            });
        }
        Ok(current)
    }

    fn wrote(&self, snapshot: Snapshot) -> Snapshot {
        *lock(&self.latest) = Some(snapshot.clone());
        snapshot
    }

    /// No longer counted as running here (its operation ended, or it moved elsewhere).
    pub(crate) fn retire(&self) {
        if let Some(runs) = self.runs.upgrade() {
            runs.forget(&self.id, self);
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.end_span();
        self.retire();
    }
}

/// What a launched run (rather than a joined one) starts with.
struct Launch {
    accepted: Option<Accepted>,
}

/// The runs of this host, by operation id. Entries are weak: a run is counted while someone
/// holds it, and its drop removes its entry.
#[derive(Default)]
pub(crate) struct Runs {
    by_id: Mutex<HashMap<String, Weak<Run>>>,
}

impl Runs {
    /// A run of `snapshot`'s attempt; its cancellation has fired already when the snapshot
    /// records a cancel request.
    fn new_run(
        self: &Arc<Self>,
        log: &Arc<OperationLog>,
        jobs: &Arc<JobsPort>,
        snapshot: &Snapshot,
        span: Span,
        launched: Option<Launch>,
    ) -> Arc<Run> {
        let cancel = CancellationToken::new();
        if snapshot.cancel_requested {
            cancel.cancel();
        }
        Arc::new(Run {
            id: snapshot.id.clone(),
            attempt: snapshot.attempt,
            cancel,
            task: Mutex::new(None),
            latest: Mutex::new(launched.as_ref().map(|_| snapshot.clone())),
            owns_span: launched.is_some(),
            accepted: launched.and_then(|launch| launch.accepted),
            hand_offs: AtomicU32::new(0),
            span,
            log: Arc::clone(log),
            jobs: Arc::clone(jobs),
            runs: Arc::downgrade(self),
        })
    }

    /// A new run of `snapshot`'s attempt with its attempt span `span`, replacing any other run
    /// of it here (one of an earlier attempt, which that attempt's fence keeps from writing).
    /// `snapshot` is the operation's newest; with `accepted`, its accept is not durable yet.
    pub(crate) fn launch(
        self: &Arc<Self>,
        log: &Arc<OperationLog>,
        jobs: &Arc<JobsPort>,
        snapshot: &Snapshot,
        span: Span,
        accepted: Option<Accepted>,
    ) -> Arc<Run> {
        let run = self.new_run(log, jobs, snapshot, span, Some(Launch { accepted }));
        lock(&self.by_id).insert(snapshot.id.clone(), Arc::downgrade(&run));
        run
    }

    /// The run of `snapshot`'s operation here, joined if there is one of its attempt, else a
    /// new one: looked up and inserted under one lock, so that two callers attaching at once
    /// share one run. A run of an earlier attempt (one that another host or a restart has
    /// superseded, and that has not ended yet) is replaced, never joined. A new run's events
    /// go to `span`, the joiner's, unless a span of the host's is current where they happen.
    pub(crate) fn join(
        self: &Arc<Self>,
        log: &Arc<OperationLog>,
        jobs: &Arc<JobsPort>,
        snapshot: &Snapshot,
        span: Span,
    ) -> Arc<Run> {
        let mut by_id = lock(&self.by_id);
        if let Some(run) = by_id.get(&snapshot.id).and_then(Weak::upgrade)
            && run.attempt >= snapshot.attempt
        {
            return run;
        }
        let run = self.new_run(log, jobs, snapshot, span, None);
        by_id.insert(snapshot.id.clone(), Arc::downgrade(&run));
        run
    }

    /// The run of `id` here, if any.
    pub(crate) fn get(&self, id: &str) -> Option<Arc<Run>> {
        lock(&self.by_id).get(id).and_then(Weak::upgrade)
    }

    /// How many operations run here.
    pub(crate) fn len(&self) -> usize {
        lock(&self.by_id).len()
    }

    /// Every run here.
    pub(crate) fn all(&self) -> Vec<Arc<Run>> {
        lock(&self.by_id)
            .values()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// Removes `id`'s entry if it is `run`'s.
    fn forget(&self, id: &str, run: &Run) {
        let mut by_id = lock(&self.by_id);
        if by_id
            .get(id)
            .is_some_and(|entry| std::ptr::eq(entry.as_ptr(), run))
        {
            by_id.remove(id);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
