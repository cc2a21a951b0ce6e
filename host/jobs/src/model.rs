//! Jobs as stored: their states, records and the ways an attempt ends.

use chrono::{DateTime, Utc};
use opshost_api::ErrorInfo;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where a job stands. `completed`, `dead` and `cancelled` are final (an operator may retry a
/// dead or cancelled job).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum JobState {
    /// Waiting for a worker, from `runAt` on.
    Queued,
    /// Leased by a worker until `leaseUntil`.
    Running,
    /// A worker returned its result.
    Completed,
    /// Every attempt failed.
    Dead,
    /// Cancelled before it completed.
    Cancelled,
}

impl JobState {
    /// The state's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Dead => "dead",
            Self::Cancelled => "cancelled",
        }
    }

    /// The state named `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Self::Queued,
            Self::Running,
            Self::Completed,
            Self::Dead,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|state| state.as_str() == name)
    }

    /// Whether no worker will run the job again.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Dead | Self::Cancelled)
    }
}

/// One job, as stored and as shown to operators.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRecord {
    /// Job id (a ULID unless given).
    pub id: String,
    /// Queue name.
    pub queue: String,
    /// Current state.
    pub state: JobState,
    /// The payload it was enqueued with.
    pub payload: Value,
    /// Last progress a worker reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Value>,
    /// The worker's result, once completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// The last attempt's error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    /// Attempts started so far (the running one included).
    pub attempt: u32,
    /// Attempts allowed before the job is dead.
    pub max_attempts: u32,
    /// The operation whose terminal path this job owns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// Whether cancellation was requested while a worker ran it.
    pub cancel_requested: bool,
    /// When a queued job becomes due.
    pub run_at: DateTime<Utc>,
    /// When the running attempt's lease ends, unless renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_until: Option<DateTime<Utc>>,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// How a leased attempt ends.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    /// The worker returned its result.
    Completed(Value),
    /// The attempt failed; run it again from `at`.
    Retry {
        /// The attempt's error.
        error: ErrorInfo,
        /// When the next attempt is due.
        at: DateTime<Utc>,
    },
    /// The last attempt failed.
    Dead(ErrorInfo),
    /// The worker stopped on a cancel request.
    Cancelled(ErrorInfo),
}

/// What [`crate::JobStore::heartbeat`] learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// The lease is extended; whether cancellation was requested meanwhile.
    Held {
        /// A cancel request is pending.
        cancel_requested: bool,
    },
    /// The lease is gone (expired and taken, or the job was finished elsewhere).
    Lost,
}

/// What [`crate::JobStore::cancel`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum CancelOutcome {
    /// The job had not started: it is cancelled now.
    Cancelled(JobRecord),
    /// A worker runs it: the request is recorded for the worker to see.
    Requested(JobRecord),
    /// The job was already final; nothing changed.
    Final(JobRecord),
}

/// Filters and paging for [`crate::JobStore::list`]: newest id first is not promised; ids
/// ascend.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only this queue.
    pub queue: Option<String>,
    /// Only this state.
    pub state: Option<JobState>,
    /// Only ids after this one (the previous page's `next`).
    pub after: Option<String>,
    /// Page size.
    pub limit: usize,
}

/// One page of jobs.
#[derive(Debug, Clone, Serialize)]
pub struct JobPage {
    /// The jobs, by id.
    pub items: Vec<JobRecord>,
    /// Cursor of the next page, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}
