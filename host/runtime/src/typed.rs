//! The typed embedding API: one handle per operation, with the facade's Rust types.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use opshost_api::{ErrorInfo, Operation, OperationEvent, OperationSnapshot, Signal, Snapshot};
use serde_json::Value;

use crate::control::OperationControl;
use crate::error::ServerError;
use crate::executor::OperationHandler;
use crate::run::Run;
use crate::runtime::OperationRuntime;
use crate::store::Owner;

impl OperationRuntime {
    /// The typed handle for operation `Op` of this service. A runtime made with
    /// [`OperationRuntime::new`] learns its contract from `Op`'s facade here.
    ///
    /// # Panics
    /// When `Op` belongs to another service, or its embedded manifest does not load; both are
    /// programming errors fixed by regenerating the facade.
    pub fn operation<Op: Operation>(&self) -> Operations<Op> {
        assert_eq!(
            Op::SERVICE,
            self.service(),
            "operation {} belongs to service {}, not {}",
            Op::NAME,
            Op::SERVICE,
            self.service()
        );
        self.learn_contract(|| {
            opshost_contract::Contract::from_json(Op::manifest()).unwrap_or_else(|error| {
                panic!("facade manifest of {} does not load: {error}", Op::SERVICE)
            })
        });
        Operations::new(self.clone())
    }
}

/// The runtime's handle for operation `Op`: accept, control, get, wait, watch, cancel, signal.
pub struct Operations<Op: Operation> {
    runtime: OperationRuntime,
    marker: PhantomData<fn() -> Op>,
}

impl<Op: Operation> Clone for Operations<Op> {
    fn clone(&self) -> Self {
        Self::new(self.runtime.clone())
    }
}

impl<Op: Operation> Operations<Op> {
    fn new(runtime: OperationRuntime) -> Self {
        Self {
            runtime,
            marker: PhantomData,
        }
    }

    /// Runs `handler` for every operation of `Op` started through [`OperationRuntime::start`]
    /// (for example over HTTP): it gets the operation's control handle and its decoded input,
    /// and must end the operation. The runtime's attach rule applies as for a wasm guest: an
    /// error fails the operation with it, returning while non-terminal fails it with
    /// `HandlerNonTerminal`.
    pub fn serve<F, Fut>(&self, handler: F)
    where
        F: Fn(OperationControl<Op>, Op::Input) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), ServerError>> + Send + 'static,
    {
        let native = Native::<Op, F> {
            handler,
            marker: PhantomData,
        };
        self.runtime.install_handler(Op::NAME, Arc::new(native));
    }

    /// Starts the operation in the default tenant with `input` (validated) and a fresh id, and
    /// runs the handler given to [`Operations::serve`].
    pub async fn start(&self, input: &Op::Input) -> Result<OperationSnapshot<Op>, ServerError> {
        self.start_with_key(None, input).await
    }

    /// [`Operations::start`] under idempotency key `key`: starting the same key with the same
    /// input again returns the same operation.
    pub async fn start_with_key(
        &self,
        key: Option<String>,
        input: &Op::Input,
    ) -> Result<OperationSnapshot<Op>, ServerError> {
        let input = serde_json::to_value(input)?;
        let snapshot = self
            .runtime
            .start(Owner::default(), Op::NAME, key, input)
            .await?
            .snapshot;
        Ok(snapshot.typed()?)
    }

    /// Accepts the operation under a handler-chosen id, with no stored input.
    pub async fn accept(
        &self,
        id: impl Into<String>,
    ) -> Result<OperationSnapshot<Op>, ServerError> {
        let snapshot = self
            .runtime
            .accept(Op::NAME, Some(id.into()), None)
            .await?
            .snapshot;
        Ok(snapshot.typed()?)
    }

    /// Accepts the operation with its input (validated); `id: None` mints a fresh ULID.
    pub async fn accept_with(
        &self,
        id: Option<String>,
        input: &Op::Input,
    ) -> Result<OperationSnapshot<Op>, ServerError> {
        let input = serde_json::to_value(input)?;
        let snapshot = self
            .runtime
            .accept(Op::NAME, id, Some(input))
            .await?
            .snapshot;
        Ok(snapshot.typed()?)
    }

    /// The control handle of an accepted operation, resumed by id: it joins the operation's
    /// [`Run`] on this host (or starts one), so a cancel wakes
    /// [`OperationControl::cancelled`].
    pub async fn control(
        &self,
        id: impl Into<String>,
    ) -> Result<OperationControl<Op>, ServerError> {
        let id = id.into();
        let snapshot = self.runtime.get(&id).await?;
        if snapshot.operation != Op::NAME {
            return Err(ServerError::OperationNotFound { id });
        }
        Ok(OperationControl::new(self.runtime.attach(&id).await?))
    }

    /// The current snapshot.
    pub async fn get(&self, id: impl AsRef<str>) -> Result<OperationSnapshot<Op>, ServerError> {
        Ok(self.runtime.get(id.as_ref()).await?.typed()?)
    }

    /// Waits for the terminal snapshot.
    pub async fn wait(&self, id: impl AsRef<str>) -> Result<OperationSnapshot<Op>, ServerError> {
        Ok(self.runtime.wait(id.as_ref(), None).await?.typed()?)
    }

    /// Waits for the terminal snapshot, or returns the current one after `timeout`.
    pub async fn wait_timeout(
        &self,
        id: impl AsRef<str>,
        timeout: Duration,
    ) -> Result<OperationSnapshot<Op>, ServerError> {
        Ok(self
            .runtime
            .wait(id.as_ref(), Some(timeout))
            .await?
            .typed()?)
    }

    /// Typed events, starting with the current snapshot (or after `after`, see
    /// [`OperationRuntime::watch`]) and ending with the terminal one.
    pub fn watch(
        &self,
        id: &str,
        after: Option<u64>,
    ) -> impl Stream<Item = Result<OperationEvent<OperationSnapshot<Op>>, ServerError>> + Send + use<Op>
    {
        self.runtime.watch(id, after).map(|event| {
            event.and_then(|event| {
                event.try_map(|snapshot| snapshot.typed::<Op>().map_err(ServerError::from))
            })
        })
    }

    /// Cancels the operation and returns its terminal snapshot.
    pub async fn cancel(&self, id: impl AsRef<str>) -> Result<OperationSnapshot<Op>, ServerError> {
        Ok(self.runtime.cancel(id.as_ref()).await?.typed()?)
    }

    /// Sends signal `S`; returns its sequence number.
    pub async fn signal<S: Signal<Operation = Op>>(
        &self,
        id: impl AsRef<str>,
        input: &S::Input,
    ) -> Result<u64, ServerError> {
        let payload = serde_json::to_value(input)?;
        self.runtime.signal(id.as_ref(), S::NAME, payload).await
    }
}

/// A native handler registered with [`Operations::serve`].
struct Native<Op, F> {
    handler: F,
    marker: PhantomData<fn() -> Op>,
}

impl<Op, F, Fut> OperationHandler for Native<Op, F>
where
    Op: Operation,
    F: Fn(OperationControl<Op>, Op::Input) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), ServerError>> + Send + 'static,
{
    fn run(
        &self,
        run: Arc<Run>,
        _snapshot: Snapshot,
        input: Option<Value>,
    ) -> BoxFuture<'static, Result<(), ErrorInfo>> {
        let control = OperationControl::new(run);
        let work = serde_json::from_value::<Op::Input>(input.unwrap_or(Value::Null))
            .map(|input| (self.handler)(control, input));
        Box::pin(async move {
            match work {
                Ok(work) => work.await.map_err(|error| error.to_info()),
                Err(error) => Err(ServerError::from(error).to_info()),
            }
        })
    }
}
