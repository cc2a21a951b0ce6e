//! [`WasmHost`]: compiled handlers and workers, the task that runs each operation, and the
//! jobs service whose workers run each job attempt.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use opshost_api::{ErrorCode, ErrorInfo, Snapshot};
use opshost_contract::Contract;
use opshost_jobs::{Job, JobStore, Jobs, MemoryJobStore, WorkerError};
use opshost_runtime::store::{MemoryStore, OperationStore};
use opshost_runtime::{
    OperationHandler, OperationRuntime, Owner, Recovery, RestartPolicy, RuntimeConfig, ServerError,
};
use serde_json::Value;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, Store, UpdateDeadline};

use crate::bindings::opshost::operation::types::{Failure, Invocation, JobInvocation};
use crate::bindings::worker::{Worker, WorkerPre};
use crate::bindings::{Handler, HandlerPre};
use crate::config::DeploymentConfig;
use crate::control::OperationState;
use crate::error::SandboxError;
use crate::{engine, grants};

/// Serves a contract's operations with wasm components: each component is compiled and linked
/// once; each operation runs in a fresh `Store` on its own tokio task.
#[derive(Clone)]
pub struct WasmHost {
    runtime: OperationRuntime,
    jobs: Jobs,
    policies: Arc<HashMap<String, RestartPolicy>>,
}

impl WasmHost {
    /// Loads a deployment on the in-memory store.
    pub fn from_config(config: &DeploymentConfig) -> Result<Self, SandboxError> {
        Self::from_config_with_store(config, Arc::new(MemoryStore::new()))
    }

    /// Loads a deployment with operations on `store` and jobs in memory.
    pub fn from_config_with_store(
        config: &DeploymentConfig,
        store: Arc<dyn OperationStore>,
    ) -> Result<Self, SandboxError> {
        Self::from_config_with_stores(config, store, Arc::new(MemoryJobStore::new()))
    }

    /// Loads a deployment on `operations` and `jobs` (the SQLite store is both): the
    /// contract, then every component it names. Worker components start working their queues
    /// at once (call this within a tokio runtime when the deployment has workers).
    pub fn from_config_with_stores(
        config: &DeploymentConfig,
        store: Arc<dyn OperationStore>,
        job_store: Arc<dyn JobStore>,
    ) -> Result<Self, SandboxError> {
        let contract = Contract::from_path(&config.contract)?;
        for handler in &config.handlers {
            if contract.operation(&handler.operation).is_none() {
                return Err(SandboxError::UnknownOperation {
                    operation: handler.operation.clone(),
                });
            }
        }
        let runtime_config = RuntimeConfig {
            cancel_grace: config.cancel_grace(),
            max_active: config.max_active_operations,
        };
        for worker in &config.workers {
            if contract.queue(&worker.queue).is_none() {
                return Err(SandboxError::UnknownQueue {
                    queue: worker.queue.clone(),
                });
            }
        }
        let runtime = OperationRuntime::with_contract(contract, store, runtime_config);
        let jobs = Jobs::new(&runtime, job_store, config.jobs.config())?;
        let engine = engine::new_engine()?;
        let mut compiled = Compiled::default();
        let mut linker = Linker::<OperationState>::new(&engine);
        let link_error = |e: wasmtime::Error| SandboxError::Engine(e.to_string());
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(link_error)?;
        Handler::add_to_linker::<_, HasSelf<OperationState>>(&mut linker, |state| state)
            .map_err(link_error)?;
        for handler in &config.handlers {
            let path = handler.component.display().to_string();
            let component_error = |e: wasmtime::Error| SandboxError::Component {
                path: path.clone(),
                message: format!("{e:#}"),
            };
            let component = compiled
                .load(&engine, &handler.component)
                .map_err(component_error)?;
            let pre = linker
                .instantiate_pre(&component)
                .map_err(component_error)?;
            let pre = HandlerPre::new(pre).map_err(component_error)?;
            tracing::info!(operation = %handler.operation, component = %path, "handler loaded");
            runtime.set_handler(
                &handler.operation,
                Arc::new(WasmHandler {
                    engine: engine.clone(),
                    pre,
                }),
            );
        }
        let mut worker_linker = Linker::<OperationState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut worker_linker).map_err(link_error)?;
        Worker::add_to_linker::<_, HasSelf<OperationState>>(&mut worker_linker, |state| state)
            .map_err(link_error)?;
        for worker in &config.workers {
            let path = worker.component.display().to_string();
            let component_error = |e: wasmtime::Error| SandboxError::Component {
                path: path.clone(),
                message: format!("{e:#}"),
            };
            let component = compiled
                .load(&engine, &worker.component)
                .map_err(component_error)?;
            let pre = worker_linker
                .instantiate_pre(&component)
                .map_err(component_error)?;
            let pre = WorkerPre::new(pre).map_err(component_error)?;
            tracing::info!(queue = %worker.queue, component = %path, "worker loaded");
            let wasm = Arc::new(WasmWorker {
                engine: engine.clone(),
                pre,
                runtime: runtime.clone(),
            });
            jobs.worker(&worker.queue, worker.concurrency, move |job| {
                let wasm = Arc::clone(&wasm);
                async move { wasm.run(job).await }
            })?;
        }
        let policies = config
            .handlers
            .iter()
            .map(|handler| (handler.operation.clone(), handler.restart_policy()))
            .collect();
        Ok(Self {
            runtime,
            jobs,
            policies: Arc::new(policies),
        })
    }

    /// The jobs service: enqueue, list, cancel and retry jobs.
    pub fn jobs(&self) -> &Jobs {
        &self.jobs
    }

    /// The runtime the host drives; use it to get, wait, watch, cancel and signal.
    pub fn runtime(&self) -> &OperationRuntime {
        &self.runtime
    }

    /// Resumes the operations a previous run left unfinished, each as its handler's
    /// `on_restart` says (operations without a handler here fail with `HostRestarted`).
    pub async fn recover(&self) -> Result<Recovery, ServerError> {
        let policies = Arc::clone(&self.policies);
        self.runtime
            .recover(move |operation| {
                policies
                    .get(operation)
                    .copied()
                    .unwrap_or(RestartPolicy::Fail)
            })
            .await
    }

    /// Accepts an operation with no owner and, when newly accepted, runs its handler in the
    /// background. `id` is the caller's idempotency key; `None` mints a ULID.
    pub async fn start(
        &self,
        operation: &str,
        id: Option<String>,
        input: Value,
    ) -> Result<Snapshot, ServerError> {
        Ok(self
            .runtime
            .start(Owner::default(), operation, id, input)
            .await?
            .snapshot)
    }
}

/// Components compiled so far by file: a file named by several handlers or workers is
/// compiled once.
#[derive(Default)]
struct Compiled(HashMap<std::path::PathBuf, Component>);

impl Compiled {
    fn load(&mut self, engine: &Engine, path: &std::path::Path) -> wasmtime::Result<Component> {
        if let Some(component) = self.0.get(path) {
            return Ok(component.clone());
        }
        let component = Component::from_file(engine, path)?;
        self.0.insert(path.to_path_buf(), component.clone());
        Ok(component)
    }
}

/// One compiled component serving one operation: each run gets a fresh `Store`.
struct WasmHandler {
    engine: Engine,
    pre: HandlerPre<OperationState>,
}

impl OperationHandler for WasmHandler {
    fn run(
        &self,
        runtime: OperationRuntime,
        snapshot: Snapshot,
        input: Option<Value>,
    ) -> BoxFuture<'static, Result<(), ErrorInfo>> {
        let engine = self.engine.clone();
        let pre = self.pre.clone();
        Box::pin(async move { failure(invoke(&engine, &pre, &runtime, snapshot, input).await) })
    }
}

type Outcome = wasmtime::Result<Result<(), Failure>>;

async fn invoke(
    engine: &Engine,
    pre: &HandlerPre<OperationState>,
    runtime: &OperationRuntime,
    snapshot: Snapshot,
    input: Option<Value>,
) -> Outcome {
    let invocation = Invocation {
        operation_id: snapshot.id.clone(),
        operation: snapshot.operation,
        version: snapshot.version,
        attempt: snapshot.attempt,
        input: input.unwrap_or(Value::Null).to_string(),
    };
    let state = OperationState::new(runtime.clone(), snapshot.id, grants::wasi_context());
    let mut store = Store::new(engine, state);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1)));
    let handler = pre.instantiate_async(&mut store).await?;
    handler.call_handle(&mut store, &invocation).await
}

/// One compiled worker component: each job attempt gets a fresh `Store`.
struct WasmWorker {
    engine: Engine,
    pre: WorkerPre<OperationState>,
    runtime: OperationRuntime,
}

impl WasmWorker {
    async fn run(&self, job: Job) -> Result<serde_json::Value, WorkerError> {
        let invocation = JobInvocation {
            job_id: job.id().to_owned(),
            queue: job.queue().to_owned(),
            attempt: job.attempt(),
            payload: job.payload_json().to_string(),
            operation_id: job.operation_id().map(str::to_owned),
        };
        let state = OperationState::for_job(self.runtime.clone(), job, grants::wasi_context());
        let mut store = Store::new(&self.engine, state);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1)));
        let outcome = async {
            let worker = self.pre.instantiate_async(&mut store).await?;
            worker.call_run(&mut store, &invocation).await
        }
        .await;
        match outcome {
            Ok(Ok(result)) => serde_json::from_str(&result).map_err(|e| {
                WorkerError(ErrorInfo::new(
                    ErrorCode::InvalidInput,
                    format!("the worker's result is not JSON: {e}"),
                ))
            }),
            Ok(Err(failure)) => Err(WorkerError(guest_failure(failure))),
            Err(trap) => Err(WorkerError(trapped("worker", &trap))),
        }
    }
}

/// What the guest's return means for its operation: a guest error or a trap is its failure.
fn failure(outcome: Outcome) -> Result<(), ErrorInfo> {
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(failure)) => Err(guest_failure(failure)),
        Err(trap) => Err(trapped("handler", &trap)),
    }
}

/// A guest's own failure: code `HandlerFailed`, its message and JSON details.
fn guest_failure(failure: Failure) -> ErrorInfo {
    ErrorInfo {
        code: ErrorCode::HandlerFailed,
        message: failure.message,
        details: failure
            .details
            .and_then(|text| serde_json::from_str(&text).ok()),
    }
}

fn trapped(who: &str, trap: &wasmtime::Error) -> ErrorInfo {
    ErrorInfo::new(
        ErrorCode::HandlerTrapped,
        format!("{who} trapped: {}", trap_message(trap)),
    )
}

fn trap_message(error: &wasmtime::Error) -> String {
    let mut message = error.to_string();
    for cause in error.chain().skip(1) {
        message.push_str(": ");
        message.push_str(&cause.to_string());
    }
    message
}
