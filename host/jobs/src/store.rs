//! The durable queue: what a job store must do, and the in-memory store.
//!
//! Every call is atomic. Attempts are fenced by their number: a worker whose lease expired
//! and was taken by another can neither renew nor finish the job any more.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use opshost_api::{ErrorCode, ErrorInfo};
use serde_json::Value;

use crate::error::JobStoreError;
use crate::model::{CancelOutcome, Finish, Heartbeat, JobFilter, JobPage, JobRecord, JobState};

/// Durable home of jobs.
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// Stores a new job; a job with the same id is kept and returned instead.
    async fn enqueue(&self, job: JobRecord) -> Result<JobRecord, JobStoreError>;

    /// Leases the job of `queue` due first at `now` (queued and due, or running with an
    /// expired lease) until `until`, starting its next attempt. A job whose lease expired
    /// during its last attempt becomes `dead` (`HostRestarted`) and is returned so, for the
    /// caller to settle what it owned.
    async fn lease(
        &self,
        queue: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Option<JobRecord>, JobStoreError>;

    /// Extends the lease of `attempt` to `until`.
    async fn heartbeat(
        &self,
        id: &str,
        attempt: u32,
        until: DateTime<Utc>,
    ) -> Result<Heartbeat, JobStoreError>;

    /// Gives the job back while `attempt` holds it, as if that attempt never started: queued
    /// again, due at once, its attempt not counted (a host that stops hands back what it could
    /// not finish).
    async fn hand_back(
        &self,
        id: &str,
        attempt: u32,
        now: DateTime<Utc>,
    ) -> Result<Heartbeat, JobStoreError>;

    /// Records progress of `attempt`.
    async fn progress(
        &self,
        id: &str,
        attempt: u32,
        progress: Value,
        now: DateTime<Utc>,
    ) -> Result<Heartbeat, JobStoreError>;

    /// Ends `attempt` as `finish` says; `None` when the lease is lost.
    async fn finish(
        &self,
        id: &str,
        attempt: u32,
        finish: Finish,
        now: DateTime<Utc>,
    ) -> Result<Option<JobRecord>, JobStoreError>;

    /// Cancels a job that has not started, or records the request for its worker; `None`
    /// when no job has this id.
    async fn cancel(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<CancelOutcome>, JobStoreError>;

    /// Queues a dead or cancelled job again with a fresh set of attempts; any other job is
    /// returned unchanged. `None` when no job has this id.
    async fn retry(&self, id: &str, now: DateTime<Utc>)
    -> Result<Option<JobRecord>, JobStoreError>;

    /// Deletes final jobs (completed, dead, cancelled) last changed before `cutoff`; returns
    /// how many. Never touches a queued or running job.
    async fn purge(&self, cutoff: DateTime<Utc>) -> Result<u64, JobStoreError>;

    /// One job.
    async fn get(&self, id: &str) -> Result<Option<JobRecord>, JobStoreError>;

    /// Jobs by filter, by id.
    async fn list(&self, filter: &JobFilter) -> Result<JobPage, JobStoreError>;

    /// The unfinished job that owns operation `operation_id`, if any.
    async fn owner_of(&self, operation_id: &str) -> Result<Option<JobRecord>, JobStoreError>;

    /// When the next job of `queue` becomes due (a queued job's `runAt`, a running job's
    /// lease end), if any job may become due.
    async fn next_due(&self, queue: &str) -> Result<Option<DateTime<Utc>>, JobStoreError>;

    /// How many jobs each queue holds in each state (states without jobs are left out).
    async fn count_by_state(&self) -> Result<Vec<QueueCount>, JobStoreError>;
}

/// Counts read as (queue, state name, count), for stores that read them with SQL; rows of a
/// state this version does not know are left out.
pub fn queue_counts(rows: Vec<(String, String, u64)>) -> Vec<QueueCount> {
    rows.into_iter()
        .filter_map(|(queue, state, count)| {
            Some(QueueCount {
                queue,
                state: JobState::from_name(&state)?,
                count,
            })
        })
        .collect()
}

/// How many jobs of one queue are in one state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueCount {
    /// The queue.
    pub queue: String,
    /// The state.
    pub state: JobState,
    /// The jobs.
    pub count: u64,
}

/// The error a job gets when its lease ran out during its last attempt.
pub fn lease_expired(job: &JobRecord) -> ErrorInfo {
    ErrorInfo::new(
        ErrorCode::HostRestarted,
        format!(
            "the worker of attempt {} of {} stopped (its lease expired)",
            job.attempt, job.max_attempts
        ),
    )
}

/// Applies `finish` to a running job (shared by the stores so that they agree).
pub fn apply_finish(job: &mut JobRecord, finish: Finish, now: DateTime<Utc>) {
    job.lease_until = None;
    job.updated_at = now;
    match finish {
        Finish::Completed(result) => {
            job.state = JobState::Completed;
            job.result = Some(result);
        }
        Finish::Retry { error, at } => {
            job.state = JobState::Queued;
            job.error = Some(error);
            job.run_at = at;
        }
        Finish::Dead(error) => {
            job.state = JobState::Dead;
            job.error = Some(error);
        }
        Finish::Cancelled(error) => {
            job.state = JobState::Cancelled;
            job.error = Some(error);
        }
    }
}

/// The shared rules of every store, as changes to one record, so that the stores agree.
pub mod rules {
    use super::*;

    /// When `job` is due for a lease: a queued job from `runAt`, a running one once its lease
    /// ran out; a final job never.
    pub fn due_at(job: &JobRecord) -> Option<DateTime<Utc>> {
        match job.state {
            JobState::Queued => Some(job.run_at),
            JobState::Running => job.lease_until,
            _ => None,
        }
    }

    /// Leases a due job: its next attempt starts, or it dies when its last one expired.
    pub fn lease(job: &mut JobRecord, now: DateTime<Utc>, until: DateTime<Utc>) {
        job.updated_at = now;
        if job.state == JobState::Running && job.attempt >= job.max_attempts {
            let error = lease_expired(job);
            apply_finish(job, Finish::Dead(error), now);
        } else {
            job.state = JobState::Running;
            job.attempt += 1;
            job.lease_until = Some(until);
        }
    }

    /// Gives the job back as if the attempt holding it never started.
    pub fn hand_back(job: &mut JobRecord, now: DateTime<Utc>) {
        job.state = JobState::Queued;
        job.attempt = job.attempt.saturating_sub(1);
        job.run_at = now;
        job.lease_until = None;
        job.updated_at = now;
    }

    /// Whether `attempt` still holds the job's lease.
    pub fn holds(job: &JobRecord, attempt: u32) -> bool {
        job.state == JobState::Running && job.attempt == attempt
    }

    /// A heartbeat or progress of `attempt`: `change` applies only while it holds the lease.
    pub fn beat(
        job: &mut JobRecord,
        attempt: u32,
        change: impl FnOnce(&mut JobRecord),
    ) -> Heartbeat {
        if !holds(job, attempt) {
            return Heartbeat::Lost;
        }
        change(job);
        Heartbeat::Held {
            cancel_requested: job.cancel_requested,
        }
    }

    /// Cancels the job, or records the request for its worker.
    pub fn cancel(job: &mut JobRecord, now: DateTime<Utc>) -> CancelOutcome {
        match job.state {
            JobState::Queued => {
                let error = ErrorInfo::new(ErrorCode::Cancelled, "cancelled before it ran");
                apply_finish(job, Finish::Cancelled(error), now);
                CancelOutcome::Cancelled(job.clone())
            }
            JobState::Running => {
                job.cancel_requested = true;
                job.updated_at = now;
                CancelOutcome::Requested(job.clone())
            }
            _ => CancelOutcome::Final(job.clone()),
        }
    }

    /// Queues a dead or cancelled job again with a fresh set of attempts; whether it did.
    pub fn retry(job: &mut JobRecord, now: DateTime<Utc>) -> bool {
        if !matches!(job.state, JobState::Dead | JobState::Cancelled) {
            return false;
        }
        job.state = JobState::Queued;
        job.attempt = 0;
        job.cancel_requested = false;
        job.run_at = now;
        job.updated_at = now;
        true
    }
}

/// A page of at most `limit` jobs from `items` (fetched with one more than `limit`, to learn
/// whether a next page exists).
pub fn page(mut items: Vec<JobRecord>, limit: usize) -> JobPage {
    let next = (items.len() > limit).then(|| {
        items.truncate(limit);
        items.last().map(|job| job.id.clone())
    });
    JobPage {
        items,
        next: next.flatten(),
    }
}

/// Jobs in memory, for tests and the in-memory host. Due jobs are indexed by queue and
/// time, so that a lease costs the same with a thousand finished jobs as with none.
#[derive(Default)]
pub struct MemoryJobStore {
    state: Mutex<Jobs>,
}

#[derive(Default)]
struct Jobs {
    by_id: BTreeMap<String, JobRecord>,
    due: BTreeSet<(String, DateTime<Utc>, String)>,
}

fn due_key(job: &JobRecord) -> Option<(String, DateTime<Utc>, String)> {
    rules::due_at(job).map(|at| (job.queue.clone(), at, job.id.clone()))
}

impl Jobs {
    /// Changes job `id` with `change`, keeping the due index in step.
    fn change<R>(&mut self, id: &str, change: impl FnOnce(&mut JobRecord) -> R) -> Option<R> {
        let job = self.by_id.get_mut(id)?;
        if let Some(key) = due_key(job) {
            self.due.remove(&key);
        }
        let result = change(job);
        if let Some(key) = due_key(job) {
            self.due.insert(key);
        }
        Some(result)
    }

    fn first_due(&self, queue: &str) -> Option<&(String, DateTime<Utc>, String)> {
        let from = (queue.to_owned(), DateTime::<Utc>::MIN_UTC, String::new());
        self.due.range(from..).next().filter(|(q, _, _)| q == queue)
    }
}

impl MemoryJobStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, Jobs> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The answer to a heartbeat or progress of `attempt`, after `change` when it holds.
fn beat(jobs: &mut Jobs, id: &str, attempt: u32, change: impl FnOnce(&mut JobRecord)) -> Heartbeat {
    jobs.change(id, |job| rules::beat(job, attempt, change))
        .unwrap_or(Heartbeat::Lost)
}

#[async_trait]
impl JobStore for MemoryJobStore {
    async fn enqueue(&self, job: JobRecord) -> Result<JobRecord, JobStoreError> {
        let mut jobs = self.jobs();
        if let Some(existing) = jobs.by_id.get(&job.id) {
            return Ok(existing.clone());
        }
        if let Some(key) = due_key(&job) {
            jobs.due.insert(key);
        }
        jobs.by_id.insert(job.id.clone(), job.clone());
        Ok(job)
    }

    async fn lease(
        &self,
        queue: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Option<JobRecord>, JobStoreError> {
        let mut jobs = self.jobs();
        let Some((_, at, id)) = jobs.first_due(queue).cloned() else {
            return Ok(None);
        };
        if at > now {
            return Ok(None);
        }
        Ok(jobs.change(&id, |job| {
            rules::lease(job, now, until);
            job.clone()
        }))
    }

    async fn heartbeat(
        &self,
        id: &str,
        attempt: u32,
        until: DateTime<Utc>,
    ) -> Result<Heartbeat, JobStoreError> {
        Ok(beat(&mut self.jobs(), id, attempt, |job| {
            job.lease_until = Some(until)
        }))
    }

    async fn hand_back(
        &self,
        id: &str,
        attempt: u32,
        now: DateTime<Utc>,
    ) -> Result<Heartbeat, JobStoreError> {
        Ok(beat(&mut self.jobs(), id, attempt, |job| {
            rules::hand_back(job, now)
        }))
    }

    async fn progress(
        &self,
        id: &str,
        attempt: u32,
        progress: Value,
        now: DateTime<Utc>,
    ) -> Result<Heartbeat, JobStoreError> {
        Ok(beat(&mut self.jobs(), id, attempt, |job| {
            job.progress = Some(progress);
            job.updated_at = now;
        }))
    }

    async fn finish(
        &self,
        id: &str,
        attempt: u32,
        finish: Finish,
        now: DateTime<Utc>,
    ) -> Result<Option<JobRecord>, JobStoreError> {
        Ok(self
            .jobs()
            .change(id, |job| {
                rules::holds(job, attempt).then(|| {
                    apply_finish(job, finish, now);
                    job.clone()
                })
            })
            .flatten())
    }

    async fn cancel(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<CancelOutcome>, JobStoreError> {
        Ok(self.jobs().change(id, |job| rules::cancel(job, now)))
    }

    async fn retry(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<JobRecord>, JobStoreError> {
        Ok(self.jobs().change(id, |job| {
            rules::retry(job, now);
            job.clone()
        }))
    }

    async fn purge(&self, cutoff: DateTime<Utc>) -> Result<u64, JobStoreError> {
        let mut jobs = self.jobs();
        let before = jobs.by_id.len();
        jobs.by_id
            .retain(|_, job| !job.state.is_final() || job.updated_at >= cutoff);
        Ok((before - jobs.by_id.len()) as u64)
    }

    async fn get(&self, id: &str) -> Result<Option<JobRecord>, JobStoreError> {
        Ok(self.jobs().by_id.get(id).cloned())
    }

    async fn list(&self, filter: &JobFilter) -> Result<JobPage, JobStoreError> {
        let jobs = self.jobs();
        let limit = filter.limit.max(1);
        let from = filter.after.clone().unwrap_or_default();
        let items: Vec<JobRecord> = jobs
            .by_id
            .range(from..)
            .map(|(_, job)| job)
            .filter(|job| filter.after.as_ref().is_none_or(|after| &job.id > after))
            .filter(|job| filter.queue.as_ref().is_none_or(|q| &job.queue == q))
            .filter(|job| filter.state.is_none_or(|s| job.state == s))
            .take(limit + 1)
            .cloned()
            .collect();
        Ok(page(items, limit))
    }

    async fn owner_of(&self, operation_id: &str) -> Result<Option<JobRecord>, JobStoreError> {
        let jobs = self.jobs();
        Ok(jobs
            .due
            .iter()
            .filter_map(|(_, _, id)| jobs.by_id.get(id))
            .find(|job| job.operation.as_deref() == Some(operation_id))
            .cloned())
    }

    async fn next_due(&self, queue: &str) -> Result<Option<DateTime<Utc>>, JobStoreError> {
        Ok(self.jobs().first_due(queue).map(|(_, at, _)| *at))
    }

    async fn count_by_state(&self) -> Result<Vec<QueueCount>, JobStoreError> {
        let mut counts: BTreeMap<(String, &'static str), (JobState, u64)> = BTreeMap::new();
        for job in self.jobs().by_id.values() {
            counts
                .entry((job.queue.clone(), job.state.as_str()))
                .or_insert((job.state, 0))
                .1 += 1;
        }
        Ok(counts
            .into_iter()
            .map(|((queue, _), (state, count))| QueueCount {
                queue,
                state,
                count,
            })
            .collect())
    }
}
