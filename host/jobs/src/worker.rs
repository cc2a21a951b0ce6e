//! Workers: the loops that lease jobs of a queue and run a native closure on each, and the
//! [`Job`] handle the closure gets.
//!
//! One attempt: lease → (the owned operation already terminal? then done) → run the closure
//! on a task of its own, renewing the lease every third of it, within the queue's timeout →
//! complete, retry after a backoff with jitter, or `dead` after the last attempt; cancel
//! requests reach the closure through [`Job::cancelled`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::future::BoxFuture;
use opshost_api::{ErrorCode, ErrorInfo, Operation, OperationState};
use opshost_contract::QueueSpec;
use opshost_runtime::OperationControl;
use opshost_telemetry::Span;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::{JobError, WorkerError};
use crate::model::{Finish, Heartbeat, JobRecord, JobState};
use crate::service::{Attempt, Jobs};

type WorkerFn = Arc<dyn Fn(Job) -> BoxFuture<'static, Result<Value, WorkerError>> + Send + Sync>;

/// One attempt of one job, as its worker sees it.
pub struct Job {
    jobs: Jobs,
    record: JobRecord,
    cancel: CancellationToken,
    span: Span,
}

impl Job {
    /// The job's id.
    pub fn id(&self) -> &str {
        &self.record.id
    }

    /// Its queue.
    pub fn queue(&self) -> &str {
        &self.record.queue
    }

    /// This attempt's number, from 1.
    pub fn attempt(&self) -> u32 {
        self.record.attempt
    }

    /// This attempt's span: what the worker does (its outbound requests, the operation it
    /// resumes) hangs from it.
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// The payload as JSON.
    pub fn payload_json(&self) -> &Value {
        &self.record.payload
    }

    /// The payload as `T`.
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T, WorkerError> {
        serde_json::from_value(self.record.payload.clone())
            .map_err(|e| WorkerError::new(format!("payload of job `{}`: {e}", self.record.id)))
    }

    /// The operation whose terminal path this job owns, if any.
    pub fn operation_id(&self) -> Option<&str> {
        self.record.operation.as_deref()
    }

    /// Resumes the control of the operation this job owns, as `Op`.
    pub async fn control<Op: Operation>(&self) -> Result<OperationControl<Op>, WorkerError> {
        let Some(id) = self.operation_id() else {
            return Err(WorkerError::new(format!(
                "job `{}` owns no operation",
                self.record.id
            )));
        };
        Ok(self.jobs.runtime().operation::<Op>().control(id).await?)
    }

    /// Reports progress, checked against the queue's progress schema when it has one.
    pub async fn progress(&self, progress: impl Serialize) -> Result<(), WorkerError> {
        let value = serde_json::to_value(progress)
            .map_err(|e| WorkerError::new(format!("progress does not encode: {e}")))?;
        let spec = self.jobs.queue(&self.record.queue)?;
        if let Some(schema) = &spec.progress {
            schema
                .validate(&value)
                .map_err(|issues| JobError::Invalid {
                    what: "progress",
                    queue: self.record.queue.clone(),
                    issues,
                })?;
        }
        let store = &self.jobs.inner.store;
        let beat = store
            .progress(&self.record.id, self.record.attempt, value, Utc::now())
            .await
            .map_err(JobError::from)?;
        match beat {
            Heartbeat::Held { cancel_requested } => {
                if cancel_requested {
                    self.cancel.cancel();
                }
                Ok(())
            }
            Heartbeat::Lost => Err(JobError::LeaseLost(self.record.id.clone()).into()),
        }
    }

    /// Whether cancellation of the job was requested.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Resolves when cancellation of the job is requested.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// A token that fires when cancellation of the job is requested.
    pub fn cancellation(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

impl Jobs {
    /// Runs `worker` on the jobs of `queue`, `concurrency` at a time, until [`Jobs::stop`].
    /// The worker returns the job's result (checked against the queue's result schema) or
    /// fails the attempt.
    pub fn worker<F, Fut, R>(
        &self,
        queue: &str,
        concurrency: usize,
        worker: F,
    ) -> Result<(), JobError>
    where
        F: Fn(Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, WorkerError>> + Send + 'static,
        R: Serialize,
    {
        self.queue(queue)?;
        let run: WorkerFn = Arc::new(move |job| {
            let done = worker(job);
            Box::pin(async move {
                let result = done.await?;
                serde_json::to_value(result)
                    .map_err(|e| WorkerError::new(format!("result does not encode: {e}")))
            })
        });
        for _ in 0..concurrency.max(1) {
            let jobs = self.clone();
            let queue = queue.to_owned();
            let run = Arc::clone(&run);
            tokio::spawn(async move { jobs.work(&queue, run).await });
        }
        Ok(())
    }

    async fn work(&self, queue: &str, run: WorkerFn) {
        let inner = &self.inner;
        let wake = inner.wake(queue);
        while !inner.stop.is_cancelled() {
            let now = Utc::now();
            let leased = inner
                .store
                .lease(queue, now, now + lease(&inner.config.lease))
                .await;
            match leased {
                Ok(Some(job)) if job.state == JobState::Dead => inner.settle(&job).await,
                Ok(Some(job)) => self.attempt(job, &run).await,
                Ok(None) => {
                    let next = inner.store.next_due(queue).await.ok().flatten();
                    let pause = next
                        .and_then(|at| (at - now).to_std().ok())
                        .map_or(inner.config.poll, |until| until.min(inner.config.poll));
                    tokio::select! {
                        _ = wake.notified() => {}
                        _ = tokio::time::sleep(pause) => {}
                        _ = inner.stop.cancelled() => {}
                    }
                }
                Err(error) => {
                    tracing::warn!(%queue, %error, "cannot lease a job");
                    tokio::time::sleep(inner.config.poll).await;
                }
            }
        }
    }

    async fn attempt(&self, record: JobRecord, run: &WorkerFn) {
        let inner = &self.inner;
        let cancel = CancellationToken::new();
        if record.cancel_requested {
            cancel.cancel();
        }
        let lost = CancellationToken::new();
        // Tracked from the lease to the last write, so that a shutdown sees every attempt that
        // holds a lease here and waits for its end to be recorded.
        let _tracked = inner.track(
            &record.id,
            Attempt {
                number: record.attempt,
                cancel: cancel.clone(),
                stop: lost.clone(),
            },
        );
        if inner.stop.is_cancelled() {
            // Leased while the host began to stop: the job is due again at once elsewhere.
            if let Err(error) = inner
                .store
                .hand_back(&record.id, record.attempt, Utc::now())
                .await
            {
                tracing::warn!(job = %record.id, %error, "cannot hand back a job's lease");
            }
            return;
        }
        let Ok(spec) = self.queue(&record.queue).cloned() else {
            return;
        };
        // The tenant of the operation the job owns, for the attempt's span and log lines.
        let mut tenant = None;
        if let Some(operation) = &record.operation
            && let Ok(stored) = inner.runtime.load(operation).await
        {
            if stored.snapshot.is_terminal() {
                // Redelivered after the operation ended: the work is done.
                self.finish(&record, Finish::Completed(Value::Null)).await;
                return;
            }
            tenant = Some(stored.owner.tenant);
        }
        let heart = tokio::spawn(heartbeat(
            self.clone(),
            record.id.clone(),
            record.attempt,
            cancel.clone(),
            lost.clone(),
        ));
        let trace = inner
            .runtime
            .telemetry()
            .job_attempt(&record, tenant.as_deref());
        let job = Job {
            jobs: self.clone(),
            record: record.clone(),
            cancel: cancel.clone(),
            span: trace.clone(),
        };
        let span = tracing::info_span!(
            "job",
            job = %record.id,
            queue = %record.queue,
            attempt = record.attempt,
            operation = record.operation.as_deref().unwrap_or(""),
            tenant = tenant.as_deref().unwrap_or(""),
            trace_id = trace.trace().map_or(String::new(), |trace| trace.trace_id),
        );
        inner.count_attempt(&record.queue);
        let mut task = tokio::spawn(trace.scope(run(job)).instrument(span));
        let outcome = tokio::select! {
            outcome = tokio::time::timeout(spec.timeout, &mut task) => Some(outcome),
            _ = lost.cancelled() => None,
        };
        task.abort();
        heart.abort();
        // A stopped heartbeat renews nothing more.
        let _ = heart.await;
        let Some(outcome) = outcome else {
            // Stopped before anyone takes the job on: its worker writes nothing more.
            let _ = task.await;
            tracing::warn!(job = %record.id, "lease lost or handed back; the job runs elsewhere");
            trace.end_with("interrupted", None);
            return;
        };
        let failure = match outcome {
            Ok(Err(joined)) if joined.is_cancelled() => {
                // The tokio runtime is shutting down under the worker: the attempt did not
                // fail, it stopped with its host; the lease running out hands the job on.
                tracing::warn!(job = %record.id, "worker stopped with its runtime");
                trace.end_with("interrupted", None);
                return;
            }
            Ok(Ok(Ok(result))) => match check_result(&spec, &result) {
                Ok(()) => {
                    trace.end_with("completed", None);
                    self.finish(&record, Finish::Completed(result)).await;
                    return;
                }
                Err(error) => error.to_info(),
            },
            Ok(Ok(Err(WorkerError(error)))) => error,
            Ok(Err(joined)) => ErrorInfo::new(
                ErrorCode::HandlerTrapped,
                format!("worker of job `{}` panicked: {joined}", record.id),
            ),
            Err(_) => ErrorInfo::new(
                ErrorCode::LimitExceeded,
                format!(
                    "attempt {} of job `{}` ran past the queue's timeoutMs ({} ms)",
                    record.attempt,
                    record.id,
                    spec.timeout.as_millis()
                ),
            ),
        };
        let finish = if let Some(finish) = self.settled_by_operation(&record, &failure).await {
            finish
        } else if cancel.is_cancelled() {
            Finish::Cancelled(ErrorInfo {
                code: ErrorCode::Cancelled,
                ..failure
            })
        } else if record.attempt < record.max_attempts {
            Finish::Retry {
                error: failure,
                at: Utc::now() + lease(&backoff(&spec, record.attempt)),
            }
        } else {
            Finish::Dead(failure)
        };
        let (outcome, error) = match &finish {
            Finish::Completed(_) => ("completed", None),
            Finish::Retry { error, .. } => ("retrying", Some(error)),
            Finish::Dead(error) => ("dead", Some(error)),
            Finish::Cancelled(_) => ("cancelled", None),
        };
        trace.end_with(outcome, error.map(|error| error.message.as_str()));
        self.finish(&record, finish).await;
    }

    /// How a failed attempt ends when the operation the job owns is already terminal (the
    /// worker ended it, or a caller cancelled it meanwhile): never with a retry.
    async fn settled_by_operation(
        &self,
        record: &JobRecord,
        failure: &ErrorInfo,
    ) -> Option<Finish> {
        let operation = record.operation.as_ref()?;
        let snapshot = self.inner.runtime.get(operation).await.ok()?;
        match snapshot.state {
            OperationState::Completed => Some(Finish::Completed(Value::Null)),
            OperationState::Cancelled => Some(Finish::Cancelled(ErrorInfo {
                code: ErrorCode::Cancelled,
                ..failure.clone()
            })),
            OperationState::Failed => Some(Finish::Dead(failure.clone())),
            OperationState::Pending | OperationState::Running => None,
        }
    }

    async fn finish(&self, record: &JobRecord, finish: Finish) {
        let inner = &self.inner;
        match inner
            .store
            .finish(&record.id, record.attempt, finish, Utc::now())
            .await
        {
            Ok(Some(job)) => {
                if job.state == JobState::Queued {
                    tracing::info!(job = %job.id, attempt = job.attempt, run_at = %job.run_at, "job attempt failed; retrying");
                }
                inner.settle(&job).await;
            }
            Ok(None) => tracing::warn!(job = %record.id, "lease lost before the attempt ended"),
            Err(error) => {
                tracing::error!(job = %record.id, %error, "cannot record the end of a job attempt")
            }
        }
    }
}

/// Renews the lease every third of it; tells the attempt of cancel requests and of a lost
/// lease.
async fn heartbeat(
    jobs: Jobs,
    id: String,
    attempt: u32,
    cancel: CancellationToken,
    lost: CancellationToken,
) {
    let every = jobs.inner.config.lease / 3;
    loop {
        tokio::time::sleep(every).await;
        let until = Utc::now() + lease(&jobs.inner.config.lease);
        match jobs.inner.store.heartbeat(&id, attempt, until).await {
            Ok(Heartbeat::Held { cancel_requested }) => {
                if cancel_requested {
                    cancel.cancel();
                }
            }
            Ok(Heartbeat::Lost) => {
                lost.cancel();
                return;
            }
            Err(error) => tracing::warn!(job = %id, %error, "cannot renew a job's lease"),
        }
    }
}

fn check_result(spec: &QueueSpec, result: &Value) -> Result<(), JobError> {
    match &spec.result {
        Some(schema) => schema.validate(result).map_err(|issues| JobError::Invalid {
            what: "result",
            queue: spec.name.clone(),
            issues,
        }),
        None => Ok(()),
    }
}

/// The delay after failed attempt `attempt`: `initialMs` doubled per attempt, capped at
/// `maxMs`, of which a random half is kept ("equal jitter"), so that retries spread out.
pub fn backoff(spec: &QueueSpec, attempt: u32) -> Duration {
    let doubled = spec
        .backoff_initial
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(30));
    let full = doubled.min(spec.backoff_max);
    let half = full / 2;
    half + half.mul_f64(fastrand::f64())
}

fn lease(duration: &Duration) -> chrono::Duration {
    chrono::Duration::from_std(*duration).unwrap_or(chrono::Duration::MAX)
}
