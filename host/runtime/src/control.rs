//! [`OperationControl`]: the handler's side of one operation.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use opshost_api::{ErrorCode, ErrorInfo, Operation, OperationSnapshot};

use crate::error::{ServerError, until_stored};
use crate::run::Run;

/// A handler's failure, recorded on the failed snapshot with code `HandlerFailed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationFailure {
    /// What went wrong, for the caller.
    pub message: String,
}

/// Drives one operation to its terminal state: started, progress, complete, fail. It acts
/// through the operation's [`Run`] on this host. Its ends (complete, fail, acknowledge a
/// cancel, hand-off) wait out an unavailable store rather than lose the handler's work.
pub struct OperationControl<Op: Operation> {
    run: Arc<Run>,
    marker: PhantomData<fn() -> Op>,
}

impl<Op: Operation> Clone for OperationControl<Op> {
    fn clone(&self) -> Self {
        Self::new(Arc::clone(&self.run))
    }
}

impl<Op: Operation> OperationControl<Op> {
    pub(crate) fn new(run: Arc<Run>) -> Self {
        Self {
            run,
            marker: PhantomData,
        }
    }

    /// The operation's id.
    pub fn id(&self) -> &str {
        self.run.id()
    }

    /// Marks the operation running (idempotent while running).
    pub async fn started(&self) -> Result<OperationSnapshot<Op>, ServerError> {
        Ok(self.run.started().await?.typed()?)
    }

    /// Reports progress.
    pub async fn progress(
        &self,
        progress: Op::Progress,
    ) -> Result<OperationSnapshot<Op>, ServerError> {
        let value = serde_json::to_value(progress)?;
        Ok(self.run.progress(value).await?.typed()?)
    }

    /// Completes the operation with its output.
    pub async fn complete(&self, output: Op::Output) -> Result<OperationSnapshot<Op>, ServerError> {
        let value = serde_json::to_value(output)?;
        Ok(until_stored(|| self.run.complete(value.clone()))
            .await?
            .typed()?)
    }

    /// Fails the operation.
    pub async fn fail(
        &self,
        failure: OperationFailure,
    ) -> Result<OperationSnapshot<Op>, ServerError> {
        let error = ErrorInfo::new(ErrorCode::HandlerFailed, failure.message);
        Ok(until_stored(|| self.run.fail(error.clone()))
            .await?
            .typed()?)
    }

    /// Whether a caller asked to cancel the operation.
    pub async fn cancel_requested(&self) -> Result<bool, ServerError> {
        self.run.cancel_requested().await
    }

    /// Resolves when a caller asks to cancel the operation, through this host or another.
    pub async fn cancelled(&self) {
        self.run.cancelled().await
    }

    /// Ends the operation `cancelled` after the handler cleaned up.
    pub async fn acknowledge_cancel(&self) -> Result<OperationSnapshot<Op>, ServerError> {
        Ok(until_stored(|| self.run.acknowledge_cancel())
            .await?
            .typed()?)
    }

    /// Hands the operation's terminal path to a new job on `queue` with `payload`; returns
    /// the job's id. The handler may then return with the operation open: the job's worker
    /// resumes this control by id and ends the operation.
    pub async fn hand_off(
        &self,
        queue: &str,
        payload: impl serde::Serialize,
    ) -> Result<String, ServerError> {
        let payload = serde_json::to_value(payload)?;
        until_stored(|| self.run.hand_off(queue, payload.clone())).await
    }

    /// Runs service-owned `work` that must drive the operation to a terminal state.
    ///
    /// When `work` fails the operation is failed with its error; when it returns while the
    /// operation is still non-terminal, the operation fails with `HandlerNonTerminal` and so
    /// does this call.
    pub async fn attach<F, E>(&self, work: F) -> Result<(), ServerError>
    where
        F: Future<Output = Result<(), E>>,
        E: Into<ServerError>,
    {
        if let Err(error) = work.await {
            let error = error.into();
            match self.run.fail(error.to_info()).await {
                Ok(_) | Err(ServerError::OperationTerminal { .. }) => return Err(error),
                Err(other) => return Err(other),
            }
        }
        let snapshot = self.run.snapshot().await?;
        if snapshot.is_terminal() {
            return Ok(());
        }
        let error = ServerError::HandlerNonTerminal {
            id: self.run.id().to_owned(),
            state: snapshot.state,
        };
        self.run.fail(error.to_info()).await?;
        Err(error)
    }
}
