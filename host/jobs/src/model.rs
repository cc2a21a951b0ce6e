//! Jobs as stored (the wire types live in `opshost_api`), and the ways an attempt ends.

use chrono::{DateTime, Utc};
use opshost_api::ErrorInfo;
pub use opshost_api::{JobPage, JobRecord, JobState};
use serde_json::Value;

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

/// Filters and paging for [`crate::JobStore::list`], which lists jobs by id, ascending.
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
