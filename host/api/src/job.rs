//! Jobs on the wire: their states, records and pages, as operators see them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ErrorInfo;

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
    /// The trace its attempts' spans belong to, when it was enqueued in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<crate::TraceContext>,
}

/// One page of jobs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobPage {
    /// The jobs, by id.
    pub items: Vec<JobRecord>,
    /// Cursor of the next page, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}
