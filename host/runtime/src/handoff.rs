//! Hand-off of an operation's terminal path to a job.
//!
//! A handler may end its part early and leave the operation to durable background work: it
//! enqueues a job that carries the operation id, returns, and the operation stays open without
//! tripping the attach rule. The runtime knows jobs only through this port, which the jobs
//! service implements, so that data still flows one way (runtime → jobs → store).

use futures::future::BoxFuture;
use opshost_api::TraceContext;
use serde_json::Value;

use crate::error::ServerError;

/// The jobs service, as the runtime sees it.
pub trait JobHandOff: Send + Sync + 'static {
    /// Durably enqueues job `job_id` on `queue`, owning operation `operation_id`, in trace
    /// `trace` (its hand-off span); returns its id. Enqueueing an id that exists returns that
    /// job, so a retried hand-off makes one job.
    fn enqueue_owned<'a>(
        &'a self,
        job_id: &'a str,
        operation_id: &'a str,
        queue: &'a str,
        payload: Value,
        trace: Option<TraceContext>,
    ) -> BoxFuture<'a, Result<String, ServerError>>;

    /// Whether an unfinished job owns operation `operation_id` (recovery leaves it to the job).
    fn owns<'a>(&'a self, operation_id: &'a str) -> BoxFuture<'a, Result<bool, ServerError>>;

    /// Cancels the unfinished job that owns operation `operation_id`, if any.
    fn cancel_owned<'a>(&'a self, operation_id: &'a str) -> BoxFuture<'a, Result<(), ServerError>>;
}
