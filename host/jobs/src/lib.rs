//! opshost jobs: service-private, durable background work.
//!
//! Queues are declared in the contract (payload, progress and result schemas, attempts,
//! backoff, timeout). [`Jobs`] enqueues (payloads checked), runs native workers
//! ([`Jobs::worker`]) with leases, heartbeats, retries with backoff and jitter, and `dead`
//! after the last attempt, and lets operators list, cancel and retry jobs. A handler may hand
//! its operation's terminal path to a job ([`opshost_runtime::OperationRuntime::hand_off`]):
//! the worker resumes the operation's control by id ([`Job::control`]), the job's death fails
//! the operation, and cancelling the operation cancels the job.
//!
//! - [`model`]: jobs as stored.
//! - [`store`]: the [`JobStore`] trait every backend implements, and [`MemoryJobStore`].
//! - `service`: [`Jobs`]; `worker`: the worker loops and the [`Job`] handle.

mod error;
pub mod model;
mod service;
pub mod store;
mod worker;

pub use error::{JobError, JobStoreError, WorkerError};
pub use model::{CancelOutcome, Finish, Heartbeat, JobFilter, JobPage, JobRecord, JobState};
pub use service::{EnqueueOptions, Jobs, JobsConfig};
pub use store::{JobStore, MemoryJobStore, QueueCount};
pub use worker::{Job, backoff};
