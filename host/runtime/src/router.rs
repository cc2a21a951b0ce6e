//! A service's routes: how each operation is started, read, awaited and cancelled.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use opshost_api::{Operation, OperationSnapshot, Snapshot};
use serde_json::Value;

use crate::error::ServerError;

/// Who is calling, as established by authentication.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestContext {
    /// The caller's subject (`sub`).
    pub subject: String,
    /// The caller's tenant, when tenants are in use.
    pub tenant: Option<String>,
    /// The caller's capabilities (`scope`).
    pub capabilities: Vec<String>,
}

type Handler<I> = Arc<
    dyn Fn(RequestContext, I) -> BoxFuture<'static, Result<Snapshot, ServerError>> + Send + Sync,
>;

struct Route {
    start: Handler<Value>,
    get: Handler<String>,
    wait: Handler<String>,
    cancel: Handler<String>,
}

/// Routes calls by operation name to the closures a service registered for it.
#[derive(Default)]
pub struct Router {
    routes: HashMap<&'static str, Route>,
}

fn erase<Op, I, F, Fut>(f: F) -> Handler<I>
where
    Op: Operation,
    F: Fn(RequestContext, I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<OperationSnapshot<Op>, ServerError>> + Send + 'static,
{
    Arc::new(move |ctx, input| {
        let fut = f(ctx, input);
        Box::pin(async move { fut.await.and_then(untyped::<Op>) })
    })
}

fn untyped<Op: Operation>(s: OperationSnapshot<Op>) -> Result<Snapshot, ServerError> {
    let progress = s.progress.map(serde_json::to_value).transpose()?;
    let output = s.output.map(serde_json::to_value).transpose()?;
    Ok(Snapshot {
        id: s.id,
        service: s.service,
        operation: s.operation,
        version: s.version,
        revision: s.revision,
        state: s.state,
        progress,
        output,
        error: s.error,
        cancel_requested: s.cancel_requested,
        attempt: s.attempt,
        created_at: s.created_at,
        updated_at: s.updated_at,
        completed_at: s.completed_at,
        trace: s.trace,
        component: s.component,
    })
}

impl Router {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers operation `Op` with its start, get, wait and cancel closures. Start inputs are
    /// validated against the contract embedded in the facade before `start` sees them.
    ///
    /// # Panics
    /// When the facade's embedded manifest does not load or lacks `Op`: regenerate the facade.
    #[allow(clippy::too_many_arguments)]
    pub fn register_operation<Op, S, SF, G, GF, W, WF, C, CF>(
        &mut self,
        start: S,
        get: G,
        wait: W,
        cancel: C,
    ) where
        Op: Operation,
        S: Fn(RequestContext, Op::Input) -> SF + Send + Sync + 'static,
        SF: Future<Output = Result<OperationSnapshot<Op>, ServerError>> + Send + 'static,
        G: Fn(RequestContext, String) -> GF + Send + Sync + 'static,
        GF: Future<Output = Result<OperationSnapshot<Op>, ServerError>> + Send + 'static,
        W: Fn(RequestContext, String) -> WF + Send + Sync + 'static,
        WF: Future<Output = Result<OperationSnapshot<Op>, ServerError>> + Send + 'static,
        C: Fn(RequestContext, String) -> CF + Send + Sync + 'static,
        CF: Future<Output = Result<OperationSnapshot<Op>, ServerError>> + Send + 'static,
    {
        let contract =
            opshost_contract::Contract::from_json(Op::manifest()).unwrap_or_else(|error| {
                panic!("facade manifest of {} does not load: {error}", Op::SERVICE)
            });
        let Some(spec) = contract.operation(Op::NAME) else {
            panic!(
                "facade manifest of {} does not declare {}",
                Op::SERVICE,
                Op::NAME
            );
        };
        let schema = spec.input.clone();
        let start = Arc::new(start);
        let decode_start: Handler<Value> = erase::<Op, Value, _, _>(move |ctx, input: Value| {
            let start = start.clone();
            let valid = schema
                .validate(&input)
                .map_err(|issues| ServerError::InvalidInput {
                    message: format!("input of {} does not match its schema", Op::NAME),
                    issues,
                });
            async move {
                valid?;
                let input: Op::Input = serde_json::from_value(input).map_err(|error| {
                    ServerError::invalid(format!("input of {} does not decode: {error}", Op::NAME))
                })?;
                start(ctx, input).await
            }
        });
        self.routes.insert(
            Op::NAME,
            Route {
                start: decode_start,
                get: erase::<Op, _, _, _>(get),
                wait: erase::<Op, _, _, _>(wait),
                cancel: erase::<Op, _, _, _>(cancel),
            },
        );
    }

    fn route(&self, operation: &str) -> Result<&Route, ServerError> {
        self.routes
            .get(operation)
            .ok_or_else(|| ServerError::invalid(format!("no route for operation `{operation}`")))
    }

    /// Starts `operation` with a JSON input.
    pub async fn start(
        &self,
        ctx: RequestContext,
        operation: &str,
        input: Value,
    ) -> Result<Snapshot, ServerError> {
        (self.route(operation)?.start)(ctx, input).await
    }

    /// Reads an operation.
    pub async fn get(
        &self,
        ctx: RequestContext,
        operation: &str,
        id: &str,
    ) -> Result<Snapshot, ServerError> {
        (self.route(operation)?.get)(ctx, id.to_owned()).await
    }

    /// Waits for an operation's terminal snapshot.
    pub async fn wait(
        &self,
        ctx: RequestContext,
        operation: &str,
        id: &str,
    ) -> Result<Snapshot, ServerError> {
        (self.route(operation)?.wait)(ctx, id.to_owned()).await
    }

    /// Cancels an operation.
    pub async fn cancel(
        &self,
        ctx: RequestContext,
        operation: &str,
        id: &str,
    ) -> Result<Snapshot, ServerError> {
        (self.route(operation)?.cancel)(ctx, id.to_owned()).await
    }
}
