//! [`WasmHost`]: compiled handlers and workers, the task that runs each operation, and the
//! jobs service whose workers run each job attempt.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use opshost_api::{DeployTarget, DeploymentRecord, ErrorCode, ErrorInfo, Snapshot};
use opshost_contract::Contract;
use opshost_jobs::{Job, JobStore, Jobs, MemoryJobStore, WorkerError};
use opshost_runtime::store::{DeploymentStore, MemoryStore, OperationStore};
use opshost_runtime::{
    Drained, OperationHandler, OperationRuntime, Owner, Recovery, RestartPolicy, Run,
    RuntimeConfig, ServerError, Usage, WeakRuntime,
};
use opshost_telemetry::Telemetry;
use serde_json::Value;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, Store, UpdateDeadline};

use crate::bindings::opshost::operation::types::{Failure, Invocation, JobInvocation};
use crate::bindings::worker::{Worker, WorkerPre};
use crate::bindings::{Handler, HandlerPre};
use crate::cache::ComponentLoader;
use crate::capture::Capture;
use crate::config::DeploymentConfig;
use crate::control::{GuestState, RunEnv};
use crate::deploys::{DeployCheck, Deployer, Deployments, Settings};
use crate::egress::{Egress, EgressPolicy, EgressRun, Network, Secrets};
use crate::engine::{self, Allocation, EngineShape};
use crate::error::SandboxError;
use crate::grants::{self, Grants};
use crate::limits::{LimitBreach, Limits, LimitsTable};
use crate::versions::VersionInfo;

/// Serves a contract's operations with wasm components: each component is compiled and linked
/// once; each operation runs in a fresh `Store` on its own tokio task.
#[derive(Clone)]
pub struct WasmHost {
    runtime: OperationRuntime,
    jobs: Jobs,
    policies: Arc<HashMap<String, RestartPolicy>>,
    allocation: Allocation,
    /// The versions of every handler and worker.
    deployments: Arc<Deployments>,
}

impl WasmHost {
    /// Loads a deployment with everything in memory; [`WasmHost::builder`] chooses the stores.
    pub fn from_config(config: &DeploymentConfig) -> Result<Self, SandboxError> {
        Self::builder(config).build()
    }

    /// A builder loading `config`: the contract, then every component it names, each checked
    /// against its grants and pin.
    pub fn builder(config: &DeploymentConfig) -> WasmHostBuilder<'_> {
        WasmHostBuilder {
            config,
            store: None,
            job_store: None,
            deployment_store: None,
            env: RunEnv::default(),
            telemetry: Telemetry::off(),
        }
    }

    fn load(
        config: &DeploymentConfig,
        stores: Stores,
        env: RunEnv,
        telemetry: Telemetry,
    ) -> Result<Self, SandboxError> {
        let Stores {
            operations: store,
            jobs: job_store,
            deployments: deployment_store,
        } = stores;
        let contract = Contract::from_path(&config.contract)?;
        for handler in &config.handlers {
            if contract.operation(&handler.operation).is_none() {
                return Err(SandboxError::UnknownOperation {
                    operation: handler.operation.clone(),
                });
            }
        }
        for worker in &config.workers {
            if contract.queue(&worker.queue).is_none() {
                return Err(SandboxError::UnknownQueue {
                    queue: worker.queue.clone(),
                });
            }
        }
        let defaults = Limits::resolve(&config.limits, &LimitsTable::default());
        let runtime_config = RuntimeConfig {
            cancel_grace: config.cancel_grace(),
            concurrency: Some(config.max_concurrent_operations.max(1)),
            backlog: config.max_backlog,
            max_payload_bytes: defaults.max_payload_bytes,
        };
        let runtime = OperationRuntime::builder(contract)
            .store(store)
            .config(runtime_config)
            .telemetry(telemetry)
            .build();
        let jobs = Jobs::new(&runtime, job_store, config.jobs.config())?;
        let settings = Settings::from_config(config);
        let worker_slots: usize = config.workers.iter().map(|w| w.concurrency).sum();
        let slots = config.max_concurrent_operations.max(1) + worker_slots;
        let shape = EngineShape {
            slots: Some(u32::try_from(slots).unwrap_or(u32::MAX)),
            max_memory_bytes: settings.max_memory_bytes().unwrap_or(defaults.memory_bytes),
        };
        let (engine, allocation) = engine::new_engine(shape)?;
        tracing::info!(?allocation, "engine ready");
        let link_error = |e: wasmtime::Error| SandboxError::Engine(e.to_string());
        let deployer = Arc::new(Deployer {
            engine: engine.clone(),
            handler_linker: handler_linker(&engine).map_err(link_error)?,
            worker_linker: worker_linker(&engine).map_err(link_error)?,
            loader: ComponentLoader::new(&engine, config.engine.cache_dir.clone()),
            secrets: Secrets::read(&config.secrets).map_err(SandboxError::Secrets)?,
            network: Network::new(&config.egress).map_err(SandboxError::Secrets)?,
            runtime: runtime.downgrade(),
            env: env.clone(),
            max_memory_bytes: shape.max_memory_bytes,
            changing: std::sync::Mutex::new(()),
            settings: RwLock::new(settings),
        });
        let components = config
            .handlers
            .iter()
            .map(|h| {
                let target = DeployTarget::Operation(h.operation.clone());
                (target, &h.component, h.sha256.as_deref())
            })
            .chain(config.workers.iter().map(|w| {
                let target = DeployTarget::Queue(w.queue.clone());
                (target, &w.component, w.sha256.as_deref())
            }));
        let mut configured = Vec::new();
        // A file several handlers or workers name is read and compiled once.
        let mut read = HashMap::new();
        for (target, path, pin) in components {
            let (bytes, sha256, component) = match read.entry((path, pin)) {
                std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::hash_map::Entry::Vacant(entry) => {
                    entry.insert(deployer.read(path, pin)?)
                }
            }
            .clone();
            let built = deployer.link(&target, path, &component)?;
            tracing::info!(%target, component = %path.display(), %sha256, "component loaded");
            configured.push((target, sha256, bytes, built));
        }
        let deployments = Deployments::new(deployment_store, Arc::clone(&deployer), configured);
        for handler in &config.handlers {
            if let Some(versioned) = deployments.handler(&handler.operation) {
                runtime.install_handler(&handler.operation, versioned);
            }
        }
        for worker in &config.workers {
            let (deployments, queue) = (Arc::clone(&deployments), worker.queue.clone());
            jobs.worker(&worker.queue, worker.concurrency, move |job| {
                let (deployments, queue) = (Arc::clone(&deployments), queue.clone());
                async move { deployments.run_job(&queue, job).await }
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
            allocation,
            deployments,
        })
    }

    /// How the engine allocates instances: pooled, or on demand when the pool could not be
    /// reserved.
    pub fn allocation(&self) -> Allocation {
        self.allocation
    }

    /// Deploys `component` (its bytes) as a new version of `target`'s handler or worker,
    /// without a restart. It is checked as `opshost check` would (a component that fails
    /// changes nothing), compiled, kept in the store, and made what new work runs: all of it,
    /// or `percent` of it as a ramp. Operations accepted before keep their version. `by` names
    /// who deployed it in the deployment log. Answers its sha256.
    pub async fn deploy(
        &self,
        target: &DeployTarget,
        component: Vec<u8>,
        percent: u8,
        by: &str,
    ) -> Result<String, SandboxError> {
        self.deployments
            .deploy(target, component, percent, by)
            .await
    }

    /// What a deploy of `component` as a version of `target` would find, changing nothing:
    /// the problems that would refuse it (the checks of `opshost check`), and the interfaces
    /// it imports beyond, or no longer, against the current version.
    pub async fn check_deploy(
        &self,
        target: &DeployTarget,
        component: Vec<u8>,
    ) -> Result<DeployCheck, SandboxError> {
        self.deployments.check(target, component).await
    }

    /// Rolls `target` back: its ramp ends, or else the version current before the current one
    /// is made current again. Answers the version now current.
    pub async fn rollback(&self, target: &DeployTarget, by: &str) -> Result<String, SandboxError> {
        self.deployments.rollback(target, by).await
    }

    /// The versions of every handler and worker, by target.
    pub fn deployments(&self) -> Vec<(DeployTarget, Vec<VersionInfo>)> {
        self.deployments.list()
    }

    /// The last `limit` changes of the deployment log, oldest first: what changed, who did
    /// it, and when.
    pub async fn deployment_history(
        &self,
        limit: usize,
    ) -> Result<Vec<DeploymentRecord>, SandboxError> {
        Ok(self.deployments.history(limit).await?)
    }

    /// Follows the store's deployment log now (see [`WasmHost::follow_deployments`]).
    pub async fn sync_deployments(&self) -> Result<(), SandboxError> {
        Ok(self.deployments.sync().await?)
    }

    /// Applies the `[limits]` and grants of `config` (the deployment config read again) to
    /// the runs that start from now on, without a restart; runs in flight keep theirs. Every
    /// version held is linked again under the new grants first: when one would be refused,
    /// nothing changes. Answers what changed, one line each. Handlers or workers added to or
    /// removed from the config, and every other setting, take a restart.
    pub fn reload(&self, config: &DeploymentConfig) -> Result<Vec<String>, SandboxError> {
        self.deployments.reload(Settings::from_config(config))
    }

    /// On a store that several hosts share, follows the deployment log every `every` until
    /// the returned task is aborted, so that a version deployed through another host is
    /// served here too. `None` on a store this host owns alone.
    pub fn follow_deployments(&self, every: Duration) -> Option<tokio::task::JoinHandle<()>> {
        if !self.runtime.shares_store() {
            return None;
        }
        let deployments = Arc::clone(&self.deployments);
        Some(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if let Err(error) = deployments.sync().await {
                    tracing::warn!(%error, "cannot follow the deployment log");
                }
            }
        }))
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
        self.deployments.sync().await?;
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

    /// On a store that several hosts share, recovers every `every` what dead hosts left
    /// unfinished (see [`WasmHost::recover`]) until the returned task is aborted. `None` on a
    /// store this host owns alone: there, only a restart orphans operations.
    pub fn take_over_orphans(&self, every: Duration) -> Option<tokio::task::JoinHandle<()>> {
        if !self.runtime.shares_store() {
            return None;
        }
        let runtime = self.runtime.clone();
        let policies = Arc::clone(&self.policies);
        Some(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    () = runtime.orphans_released() => {}
                }
                let policies = Arc::clone(&policies);
                let policy = move |operation: &str| {
                    policies
                        .get(operation)
                        .copied()
                        .unwrap_or(RestartPolicy::Fail)
                };
                if let Err(error) = runtime.recover(policy).await {
                    tracing::warn!(%error, "cannot take over orphaned operations");
                }
            }
        }))
    }

    /// Shuts the host down gracefully: starts nothing more, stops leasing jobs, lets running
    /// handlers and job attempts end for up to `grace`, then stops what is left (their
    /// operations stay open and their job leases are handed back, for the next start or
    /// another host), and finally makes the store durable and, when shared, releases this
    /// host's claim at once.
    pub async fn shutdown(&self, grace: Duration) -> Result<Shutdown, ServerError> {
        let (drained, handed_back) =
            tokio::join!(self.runtime.drain(grace), self.jobs.shutdown(grace));
        self.runtime.release_store().await?;
        Ok(Shutdown {
            drained,
            handed_back,
        })
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

/// Builds a [`WasmHost`]: where its operations and jobs are kept, and the environment its
/// guests run in.
pub struct WasmHostBuilder<'a> {
    config: &'a DeploymentConfig,
    store: Option<Arc<dyn OperationStore>>,
    job_store: Option<Arc<dyn JobStore>>,
    deployment_store: Option<Arc<dyn DeploymentStore>>,
    env: RunEnv,
    telemetry: Telemetry,
}

impl WasmHostBuilder<'_> {
    /// Keeps operations, jobs and deployments in `store` (as the SQLite and PostgreSQL
    /// stores do).
    pub fn stores<S: OperationStore + JobStore + DeploymentStore>(self, store: Arc<S>) -> Self {
        self.operations(store.clone())
            .jobs(store.clone())
            .deployments(store)
    }

    /// Keeps component versions and the deployment log in `store` (in memory unless set).
    pub fn deployments(mut self, store: Arc<dyn DeploymentStore>) -> Self {
        self.deployment_store = Some(store);
        self
    }

    /// Keeps operations in `store` (in memory unless set).
    pub fn operations(mut self, store: Arc<dyn OperationStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Keeps jobs in `store` (in memory unless set).
    pub fn jobs(mut self, store: Arc<dyn JobStore>) -> Self {
        self.job_store = Some(store);
        self
    }

    /// Makes the spans of operations, jobs and outbound requests with `telemetry` (off
    /// unless set).
    pub fn telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = telemetry;
        self
    }

    /// Runs guests in `env`: a virtual clock and injected faults, for tests.
    pub fn env(mut self, env: RunEnv) -> Self {
        self.env = env;
        self
    }

    /// Loads the deployment. Worker components start working their queues at once (call this
    /// within a tokio runtime when the deployment has workers).
    pub fn build(self) -> Result<WasmHost, SandboxError> {
        let store = self.store.unwrap_or_else(|| Arc::new(MemoryStore::new()));
        let job_store = self
            .job_store
            .unwrap_or_else(|| Arc::new(MemoryJobStore::new()));
        let deployment_store = self
            .deployment_store
            .unwrap_or_else(|| Arc::new(MemoryStore::new()));
        WasmHost::load(
            self.config,
            Stores {
                operations: store,
                jobs: job_store,
                deployments: deployment_store,
            },
            self.env,
            self.telemetry,
        )
    }
}

/// Where a host keeps what it keeps.
struct Stores {
    operations: Arc<dyn OperationStore>,
    jobs: Arc<dyn JobStore>,
    deployments: Arc<dyn DeploymentStore>,
}

/// What [`WasmHost::shutdown`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shutdown {
    /// Runs (handlers and the operations job attempts drove) running at the start, and how
    /// many were stopped at the end of the grace period.
    pub drained: Drained,
    /// Job leases handed back because their attempts did not end in time.
    pub handed_back: usize,
}

/// Refuses `component` (from `path`) when it imports what `grants` do not give, or the
/// grants themselves are wrong.
pub(crate) fn checked(
    engine: &Engine,
    path: &Path,
    component: &Component,
    grants: &Grants,
) -> Result<(), SandboxError> {
    let imports = grants::ungranted_imports(engine, component, grants);
    if !imports.is_empty() {
        return Err(SandboxError::UngrantedImports {
            path: path.display().to_string(),
            imports,
        });
    }
    grants.check().map_err(|message| SandboxError::Grant {
        path: path.display().to_string(),
        message,
    })
}

/// The linker of the `handler` world: WASI, `wasi:http` (a component imports it only when
/// granted) and opshost's imports.
pub(crate) fn handler_linker(engine: &Engine) -> wasmtime::Result<Linker<GuestState>> {
    let mut linker = Linker::<GuestState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    Handler::add_to_linker::<_, HasSelf<GuestState>>(&mut linker, |state| state)?;
    Ok(linker)
}

/// The linker of the `worker` world, as [`handler_linker`].
pub(crate) fn worker_linker(engine: &Engine) -> wasmtime::Result<Linker<GuestState>> {
    let mut linker = Linker::<GuestState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    Worker::add_to_linker::<_, HasSelf<GuestState>>(&mut linker, |state| state)?;
    Ok(linker)
}

/// The outbound policy of a component granted `grants.http`, if it is.
pub(crate) fn egress_policy(
    path: &Path,
    grants: &Grants,
    secrets: &Secrets,
    network: &Arc<Network>,
) -> Result<Option<Arc<EgressPolicy>>, SandboxError> {
    let Some(grant) = &grants.http else {
        return Ok(None);
    };
    EgressPolicy::new(grant, secrets, network)
        .map(|policy| Some(Arc::new(policy)))
        .map_err(|message| SandboxError::Grant {
            path: path.display().to_string(),
            message,
        })
}

pub(crate) fn component_error(path: &Path, error: wasmtime::Error) -> SandboxError {
    SandboxError::Component {
        path: path.display().to_string(),
        message: format!("{error:#}"),
    }
}

/// One compiled component serving one operation: each run gets a fresh `Store`.
pub(crate) struct WasmHandler {
    /// Weak: the runtime holds this handler.
    pub(crate) runtime: WeakRuntime,
    pub(crate) engine: Engine,
    pub(crate) pre: HandlerPre<GuestState>,
    pub(crate) limits: Limits,
    pub(crate) grants: Grants,
    pub(crate) egress: Option<Arc<EgressPolicy>>,
    pub(crate) env: RunEnv,
}

impl OperationHandler for WasmHandler {
    /// A component reaches outside the store through its run (outbound requests and
    /// hand-offs, which wait for the accept), or through a writable directory, which does not.
    fn starts_before_durable(&self) -> bool {
        !self.grants.dirs.iter().any(|dir| dir.writable)
    }

    fn run(
        &self,
        run: Arc<Run>,
        snapshot: Snapshot,
        input: Option<Value>,
    ) -> BoxFuture<'static, Result<(), ErrorInfo>> {
        let engine = self.engine.clone();
        let pre = self.pre.clone();
        let runtime = self.runtime.upgrade();
        let (limits, grants, env) = (self.limits, self.grants.clone(), self.env.clone());
        let egress = self.egress.clone();
        Box::pin(async move {
            let runtime = runtime
                .ok_or_else(|| ErrorInfo::new(ErrorCode::Internal, "the host is shutting down"))?;
            let capture = Capture::new(
                runtime.clone(),
                Some(snapshot.id.clone()),
                None,
                snapshot.attempt,
                run.span().clone(),
                limits.log_lines_per_second,
                limits.log_bytes_per_second,
            );
            let wasi = grants
                .wasi_context(Arc::clone(&env.clock), &capture)
                .map_err(|message| ErrorInfo::new(ErrorCode::Internal, message))?;
            let sent = EgressRun::new(limits.http, Arc::clone(&capture), Some(Arc::clone(&run)));
            let egress = Egress::new(egress, sent);
            let written = Arc::clone(&capture);
            let state = GuestState::new(runtime.clone(), run, wasi, egress, capture, limits, env);
            let mut store = sandboxed_store(&engine, state);
            let operation = snapshot.operation.clone();
            let invocation = Invocation {
                operation_id: snapshot.id,
                operation: snapshot.operation,
                version: snapshot.version,
                attempt: snapshot.attempt,
                input: input.unwrap_or(Value::Null).to_string(),
            };
            let run = async {
                let handler = loop {
                    match pre.instantiate_async(&mut store).await {
                        Err(error) if pool_exhausted(&error) => wait_for_pool().await,
                        instantiated => break instantiated?,
                    }
                };
                handler.call_handle(&mut store, &invocation).await
            };
            let outcome = match tokio::time::timeout(limits.deadline, run).await {
                Ok(outcome) => outcome,
                Err(_) => Err(LimitBreach::Deadline {
                    limit: limits.deadline,
                }
                .into()),
            };
            let breach = store.data().breach();
            let (cpu, peak_memory_bytes) = store.data().used();
            runtime.record_usage(Usage {
                kind: "handler",
                name: operation,
                cpu,
                peak_memory_bytes,
            });
            // The run is over: its last lines are written before the executor records how it
            // ended.
            drop(store);
            if finished(written) {
                runtime.log_sink().flush().await;
            }
            match (breach, outcome) {
                (Some(breach), _) => Err(limit_exceeded(&breach)),
                (None, Ok(Ok(()))) => Ok(()),
                (None, Ok(Err(failure))) => Err(guest_failure(failure)),
                (None, Err(trap)) => Err(trapped("handler", &trap)),
            }
        })
    }
}

/// A store under its limits: memory counted across all memories, and a CPU tick counted (and
/// tokio yielded to) at every epoch.
fn sandboxed_store(engine: &Engine, state: GuestState) -> Store<GuestState> {
    let mut store = Store::new(engine, state);
    store.limiter(|state| state.limits_mut());
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut context| {
        context.data_mut().tick()?;
        Ok(UpdateDeadline::Yield(1))
    });
    store
}

/// One compiled worker component: each job attempt gets a fresh `Store`.
pub(crate) struct WasmWorker {
    pub(crate) engine: Engine,
    pub(crate) pre: WorkerPre<GuestState>,
    pub(crate) runtime: OperationRuntime,
    pub(crate) limits: Limits,
    pub(crate) grants: Grants,
    pub(crate) egress: Option<Arc<EgressPolicy>>,
    pub(crate) env: RunEnv,
}

impl WasmWorker {
    pub(crate) async fn run(&self, job: Job) -> Result<serde_json::Value, WorkerError> {
        let queue = job.queue().to_owned();
        let invocation = JobInvocation {
            job_id: job.id().to_owned(),
            queue: job.queue().to_owned(),
            attempt: job.attempt(),
            payload: job.payload_json().to_string(),
            operation_id: job.operation_id().map(str::to_owned),
        };
        let capture = Capture::new(
            self.runtime.clone(),
            job.operation_id().map(str::to_owned),
            Some(job.id().to_owned()),
            job.attempt(),
            job.span().clone(),
            self.limits.log_lines_per_second,
            self.limits.log_bytes_per_second,
        );
        let wasi = self
            .grants
            .wasi_context(Arc::clone(&self.env.clock), &capture)
            .map_err(|message| WorkerError(ErrorInfo::new(ErrorCode::Internal, message)))?;
        let egress = Egress::new(
            self.egress.clone(),
            EgressRun::new(self.limits.http, Arc::clone(&capture), None),
        );
        let written = Arc::clone(&capture);
        let state = GuestState::for_job(
            self.runtime.clone(),
            job,
            wasi,
            egress,
            capture,
            self.limits,
            self.env.clone(),
        );
        let mut store = sandboxed_store(&self.engine, state);
        let outcome = async {
            let worker = loop {
                match self.pre.instantiate_async(&mut store).await {
                    Err(error) if pool_exhausted(&error) => wait_for_pool().await,
                    instantiated => break instantiated?,
                }
            };
            worker.call_run(&mut store, &invocation).await
        }
        .await;
        let breach = store.data().breach();
        let (cpu, peak_memory_bytes) = store.data().used();
        self.runtime.record_usage(Usage {
            kind: "worker",
            name: queue,
            cpu,
            peak_memory_bytes,
        });
        drop(store);
        if finished(written) {
            self.runtime.log_sink().flush().await;
        }
        if let Some(breach) = breach {
            return Err(WorkerError(limit_exceeded(&breach)));
        }
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

/// Ends a run's capture (its unfinished lines and count of dropped ones are queued as it
/// goes); answers whether the run wrote anything that must reach the store first.
fn finished(capture: Arc<Capture>) -> bool {
    let wrote = capture.wrote();
    drop(capture);
    wrote
}

/// Whether instantiating failed only because every slot of the instance pool is taken: for a
/// moment after runs end, their stores may still hold their slots.
fn pool_exhausted(error: &wasmtime::Error) -> bool {
    error
        .chain()
        .any(|cause| cause.is::<wasmtime::PoolConcurrencyLimitError>())
}

/// Waits a moment for a slot of the instance pool to be given back.
async fn wait_for_pool() {
    tracing::debug!("instance pool full; waiting for a slot");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
}

fn limit_exceeded(breach: &LimitBreach) -> ErrorInfo {
    breach.to_server_error().to_info()
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

/// A trap: `LimitExceeded` when a limit caused it, else `HandlerTrapped` with its message.
fn trapped(who: &str, trap: &wasmtime::Error) -> ErrorInfo {
    if let Some(breach) = LimitBreach::of_trap(trap) {
        return limit_exceeded(breach);
    }
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
