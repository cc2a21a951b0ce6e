//! [`Jobs`]: enqueue, operate and run the queues of one service's contract.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use chrono::Utc;
use futures::future::BoxFuture;
use opshost_api::{ErrorCode, ErrorInfo, TraceContext};
use opshost_contract::{Contract, QueueSpec};
use opshost_runtime::{JobHandOff, OperationRuntime, ServerError, until_stored};
use opshost_telemetry::Context;
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::error::JobError;
use crate::model::{CancelOutcome, JobFilter, JobPage, JobRecord, JobState};
use crate::store::{JobStore, QueueCount};

/// How workers hold and look for jobs.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// How long a lease lasts without a heartbeat (the visibility timeout). Workers renew it
    /// every third of that; a worker that dies has its job redelivered once it runs out.
    pub lease: Duration,
    /// Longest an idle worker sleeps before it looks for due jobs again (jobs enqueued on this
    /// host wake it at once).
    pub poll: Duration,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            poll: Duration::from_secs(1),
        }
    }
}

/// How to enqueue a job.
#[derive(Debug, Clone, Default)]
pub struct EnqueueOptions {
    /// The job's id (a fresh ULID when `None`); enqueueing an existing id returns that job.
    pub id: Option<String>,
    /// The operation whose terminal path the job owns.
    pub operation: Option<String>,
    /// How long to wait before the first attempt.
    pub delay: Duration,
    /// The trace its attempts join; when `None`, the trace of the span current where it is
    /// enqueued (an HTTP request's, a handler's), if any.
    pub trace: Option<TraceContext>,
}

/// The jobs of one service. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Jobs {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) runtime: OperationRuntime,
    pub(crate) contract: Arc<Contract>,
    pub(crate) store: Arc<dyn JobStore>,
    pub(crate) config: JobsConfig,
    wake: Mutex<HashMap<String, Arc<Notify>>>,
    running: Mutex<HashMap<String, Attempt>>,
    /// Attempts started on this host, by queue.
    attempts: Mutex<HashMap<String, u64>>,
    pub(crate) stop: CancellationToken,
}

impl Jobs {
    /// The jobs of `runtime`'s contract, kept in `store`. Connects to the runtime so that its
    /// handlers can hand operations to jobs.
    pub fn new(
        runtime: &OperationRuntime,
        store: Arc<dyn JobStore>,
        config: JobsConfig,
    ) -> Result<Self, JobError> {
        let contract = runtime.contract().cloned().ok_or(JobError::NoContract)?;
        let jobs = Self {
            inner: Arc::new(Inner {
                runtime: runtime.clone(),
                contract: Arc::new(contract),
                store,
                config,
                wake: Mutex::default(),
                running: Mutex::default(),
                attempts: Mutex::default(),
                stop: CancellationToken::new(),
            }),
        };
        runtime.connect_jobs(Arc::new(Port(Arc::downgrade(&jobs.inner))));
        Ok(jobs)
    }

    /// The runtime whose operations jobs may own.
    pub fn runtime(&self) -> &OperationRuntime {
        &self.inner.runtime
    }

    /// The declaration of `queue`.
    pub fn queue(&self, queue: &str) -> Result<&QueueSpec, JobError> {
        self.inner
            .contract
            .queue(queue)
            .ok_or_else(|| JobError::UnknownQueue(queue.to_owned()))
    }

    /// Enqueues a job on `queue`, its payload checked against the queue's schema.
    pub async fn enqueue(&self, queue: &str, payload: Value) -> Result<JobRecord, JobError> {
        self.enqueue_with(queue, payload, EnqueueOptions::default())
            .await
    }

    /// Enqueues a job with options: a chosen id, an owned operation, a delay.
    pub async fn enqueue_with(
        &self,
        queue: &str,
        payload: Value,
        options: EnqueueOptions,
    ) -> Result<JobRecord, JobError> {
        let spec = self.queue(queue)?;
        spec.payload
            .validate(&payload)
            .map_err(|issues| JobError::Invalid {
                what: "payload",
                queue: queue.to_owned(),
                issues,
            })?;
        let now = Utc::now();
        let delay = chrono::Duration::from_std(options.delay).unwrap_or(chrono::Duration::MAX);
        let id = options.id.unwrap_or_else(|| ulid::Ulid::new().to_string());
        let trace = options.trace.or_else(|| {
            self.inner
                .runtime
                .telemetry()
                .enqueued(&Context::current(), queue, &id)
        });
        let job = JobRecord {
            id,
            queue: queue.to_owned(),
            state: JobState::Queued,
            payload,
            progress: None,
            result: None,
            error: None,
            attempt: 0,
            max_attempts: spec.max_attempts,
            operation: options.operation,
            cancel_requested: false,
            run_at: now.checked_add_signed(delay).unwrap_or(now),
            lease_until: None,
            created_at: now,
            updated_at: now,
            trace,
        };
        let stored = self.inner.store.enqueue(job).await?;
        self.inner.wake(queue).notify_one();
        Ok(stored)
    }

    /// One job.
    pub async fn get(&self, id: &str) -> Result<JobRecord, JobError> {
        self.inner
            .store
            .get(id)
            .await?
            .ok_or_else(|| JobError::NotFound(id.to_owned()))
    }

    /// Jobs by queue and state, by id, `filter.limit` per page.
    pub async fn list(&self, filter: &JobFilter) -> Result<JobPage, JobError> {
        Ok(self.inner.store.list(filter).await?)
    }

    /// Cancels a job: at once when it has not started (an operation it owns ends
    /// `cancelled`), otherwise its worker is told and the attempt ends `cancelled` when the
    /// worker stops. A final job is returned unchanged.
    pub async fn cancel(&self, id: &str) -> Result<JobRecord, JobError> {
        match self.inner.store.cancel(id, Utc::now()).await? {
            None => Err(JobError::NotFound(id.to_owned())),
            Some(CancelOutcome::Cancelled(job)) => {
                self.inner.settle(&job).await;
                Ok(job)
            }
            Some(CancelOutcome::Requested(job)) => {
                if let Some(attempt) = lock(&self.inner.running).get(id) {
                    attempt.cancel.cancel();
                }
                Ok(job)
            }
            Some(CancelOutcome::Final(job)) => Ok(job),
        }
    }

    /// Queues a dead or cancelled job again with a fresh set of attempts.
    pub async fn retry(&self, id: &str) -> Result<JobRecord, JobError> {
        let job = self
            .inner
            .store
            .retry(id, Utc::now())
            .await?
            .ok_or_else(|| JobError::NotFound(id.to_owned()))?;
        if job.state != JobState::Queued || job.attempt != 0 {
            return Err(JobError::WrongState {
                id: id.to_owned(),
                state: job.state.as_str(),
                message: "only a dead or cancelled job can be retried".into(),
            });
        }
        self.inner.wake(&job.queue).notify_one();
        Ok(job)
    }

    /// How many jobs each queue holds in each state.
    pub async fn counts(&self) -> Result<Vec<QueueCount>, JobError> {
        Ok(self.inner.store.count_by_state().await?)
    }

    /// Attempts started on this host since it started, by queue.
    pub fn attempts(&self) -> Vec<(String, u64)> {
        let attempts = lock(&self.inner.attempts);
        let mut attempts: Vec<(String, u64)> = attempts
            .iter()
            .map(|(queue, n)| (queue.clone(), *n))
            .collect();
        attempts.sort();
        attempts
    }

    /// Deletes final jobs last changed more than `retention` ago; returns how many.
    pub async fn purge_expired(&self, retention: Duration) -> Result<u64, JobError> {
        let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
        let cutoff = Utc::now()
            .checked_sub_signed(retention)
            .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
        Ok(self.inner.store.purge(cutoff).await?)
    }

    /// Stops every worker of this service after its current attempt's next step; their
    /// leased jobs are redelivered once the leases run out.
    pub fn stop(&self) {
        self.inner.stop.cancel();
    }

    /// Stops leasing jobs, lets the attempts running here finish for up to `grace`, then
    /// hands back the leases of those still running: each job is due again at once, for
    /// another host or the next start. Answers how many leases were handed back.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.stop();
        let deadline = tokio::time::Instant::now() + grace;
        while !lock(&self.inner.running).is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Stop what is left, and wait until its worker and heartbeat have stopped (the attempt
        // untracks itself then), so that nothing renews or writes after the hand-back. An
        // attempt leased from now on sees the stop and hands its lease back itself.
        let left: Vec<(String, u32)> = lock(&self.inner.running)
            .iter()
            .map(|(id, attempt)| {
                attempt.stop.cancel();
                (id.clone(), attempt.number)
            })
            .collect();
        let stopped = tokio::time::Instant::now() + STOP_PATIENCE;
        while left
            .iter()
            .any(|(id, _)| lock(&self.inner.running).contains_key(id))
            && tokio::time::Instant::now() < stopped
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for (id, number) in &left {
            if let Err(error) = self.inner.store.hand_back(id, *number, Utc::now()).await {
                tracing::warn!(job = %id, %error, "cannot hand back a job's lease");
            }
        }
        if !left.is_empty() {
            tracing::info!(handed_back = left.len(), "job leases handed back");
        }
        left.len()
    }
}

/// How long a stopped attempt may take to stop its worker before its lease is handed back.
const STOP_PATIENCE: Duration = Duration::from_secs(5);

/// A job attempt running on this host: its number, the token that tells its worker of a
/// cancel request, and the one that stops it here.
pub(crate) struct Attempt {
    pub(crate) number: u32,
    pub(crate) cancel: CancellationToken,
    pub(crate) stop: CancellationToken,
}

/// An attempt counted as running; dropping it ends the count.
pub(crate) struct Tracked<'a> {
    inner: &'a Inner,
    id: &'a str,
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        lock(&self.inner.running).remove(self.id);
    }
}

impl Inner {
    pub(crate) fn wake(&self, queue: &str) -> Arc<Notify> {
        Arc::clone(lock(&self.wake).entry(queue.to_owned()).or_default())
    }

    /// Counts an attempt started on `queue`.
    pub(crate) fn count_attempt(&self, queue: &str) {
        *lock(&self.attempts).entry(queue.to_owned()).or_default() += 1;
    }

    /// Counts `attempt` as running here until the returned guard is dropped.
    pub(crate) fn track<'a>(&'a self, id: &'a str, attempt: Attempt) -> Tracked<'a> {
        lock(&self.running).insert(id.to_owned(), attempt);
        Tracked { inner: self, id }
    }

    /// What a final job means for the operation it owns: a dead job fails it with the job's
    /// last error, a cancelled one cancels it.
    pub(crate) async fn settle(&self, job: &JobRecord) {
        let Some(operation) = &job.operation else {
            return;
        };
        if !matches!(job.state, JobState::Dead | JobState::Cancelled) {
            return;
        }
        let outcome = match self.runtime.attach(operation).await {
            Ok(run) if job.state == JobState::Dead => {
                let error = job.error.clone().unwrap_or_else(|| {
                    ErrorInfo::new(ErrorCode::HandlerFailed, format!("job `{}` died", job.id))
                });
                until_stored(|| run.fail(error.clone())).await
            }
            Ok(run) => {
                let message = format!("job `{}` was cancelled", job.id);
                until_stored(|| run.cancelled_with(&message)).await
            }
            Err(error) => Err(error),
        };
        match outcome {
            Ok(_) | Err(ServerError::OperationTerminal { .. }) => {}
            Err(error) => {
                tracing::error!(job = %job.id, %operation, %error, "cannot settle the operation of a final job");
            }
        }
    }
}

/// The runtime's view of the jobs service. Weak, so that the runtime and the jobs service do
/// not keep each other alive: the service lives as long as a [`Jobs`] handle or a worker.
/// Once it is gone no job can own an operation any more, and nothing is left to cancel.
struct Port(Weak<Inner>);

impl Port {
    fn jobs(&self) -> Option<Jobs> {
        self.0.upgrade().map(|inner| Jobs { inner })
    }
}

impl JobHandOff for Port {
    fn enqueue_owned<'a>(
        &'a self,
        job_id: &'a str,
        operation_id: &'a str,
        queue: &'a str,
        payload: Value,
        trace: Option<TraceContext>,
    ) -> BoxFuture<'a, Result<String, ServerError>> {
        Box::pin(async move {
            let options = EnqueueOptions {
                id: Some(job_id.to_owned()),
                operation: Some(operation_id.to_owned()),
                trace,
                ..EnqueueOptions::default()
            };
            let Some(jobs) = self.jobs() else {
                return Err(ServerError::Failed(format!(
                    "cannot hand operation `{operation_id}` to queue `{queue}`: the jobs service has stopped"
                )));
            };
            let job = jobs.enqueue_with(queue, payload, options).await?;
            Ok(job.id)
        })
    }

    fn owns<'a>(&'a self, operation_id: &'a str) -> BoxFuture<'a, Result<bool, ServerError>> {
        Box::pin(async move {
            let Some(jobs) = self.jobs() else {
                return Ok(false);
            };
            let owner = jobs.inner.store.owner_of(operation_id).await;
            Ok(owner.map_err(JobError::from)?.is_some())
        })
    }

    fn cancel_owned<'a>(&'a self, operation_id: &'a str) -> BoxFuture<'a, Result<(), ServerError>> {
        Box::pin(async move {
            let Some(jobs) = self.jobs() else {
                return Ok(());
            };
            let owner = jobs.inner.store.owner_of(operation_id).await;
            if let Some(job) = owner.map_err(JobError::from)? {
                jobs.cancel(&job.id).await?;
            }
            Ok(())
        })
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
