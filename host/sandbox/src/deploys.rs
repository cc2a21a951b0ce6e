//! Deploys without a restart: new versions of a handler's or a worker's component, kept in
//! the store and served by every host that shares it.
//!
//! Three steps, as for any capability of the host:
//! - **Build** ([`Deployer`]): a component's bytes are checked (the world it exports, the
//!   operation it declares, its imports against the grants), compiled (or taken from the
//!   cache) and linked under the target's limits and grants.
//! - **Record** ([`Deployments::deploy`], [`Deployments::rollback`]): the bytes are kept in the
//!   store under their sha256 and the change is appended to the store's deployment log, with
//!   who made it.
//! - **Follow** ([`Deployments::sync`]): each host folds the log into each target's
//!   [`Lineage`], compiling the versions new work will run before it switches to them. A host
//!   follows the log after its own changes, at start, and (on a shared store) every few
//!   hundred milliseconds.
//!
//! A run loads the version its operation is pinned to from the store when this host does
//! not hold it (after a restart, or on a host that never ran it). A job attempt runs the
//! version of its queue's worker current (or ramped) when the attempt starts: jobs are
//! retried from their payload, so each attempt may run a newer worker.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use chrono::Utc;
use futures::future::BoxFuture;
use opshost_api::{DeployAction, DeployTarget, DeploymentRecord, ErrorCode, ErrorInfo, Snapshot};
use opshost_jobs::{Job, WorkerError};
use opshost_runtime::store::{DeploymentStore, StoreError};
use opshost_runtime::{OperationHandler, Run, WeakRuntime};
use serde_json::Value;
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

use crate::bindings::HandlerPre;
use crate::bindings::worker::WorkerPre;
use crate::cache::{ComponentLoader, LoadError, sha256_hex};
use crate::check;
use crate::config::DeploymentConfig;
use crate::control::{GuestState, RunEnv};
use crate::egress::{Network, Secrets};
use crate::error::SandboxError;
use crate::grants::Grants;
use crate::host::{WasmHandler, WasmWorker, checked, component_error, egress_policy};
use crate::limits::{Limits, LimitsTable};
use crate::versions::{Lineage, VersionInfo, Versions};

/// Each target's limits and grants, as the config gives them.
#[derive(Clone, Default)]
pub(crate) struct Settings {
    pub(crate) handlers: HashMap<String, (Limits, Grants)>,
    pub(crate) workers: HashMap<String, (Limits, Grants)>,
}

impl Settings {
    /// The limits and grants of every handler and worker of `config`.
    pub(crate) fn from_config(config: &DeploymentConfig) -> Self {
        let of = |limits: &LimitsTable, grants: &Grants| {
            (Limits::resolve(&config.limits, limits), grants.clone())
        };
        Self {
            handlers: config
                .handlers
                .iter()
                .map(|h| (h.operation.clone(), of(&h.limits, &h.grants)))
                .collect(),
            workers: config
                .workers
                .iter()
                .map(|w| (w.queue.clone(), of(&w.limits, &w.grants)))
                .collect(),
        }
    }

    /// The most memory any one run may use.
    pub(crate) fn max_memory_bytes(&self) -> Option<usize> {
        self.handlers
            .values()
            .chain(self.workers.values())
            .map(|(limits, _)| limits.memory_bytes)
            .max()
    }

    fn of(&self, target: &DeployTarget) -> Result<(Limits, Grants), SandboxError> {
        let (table, unknown) = match target {
            DeployTarget::Operation(name) => (&self.handlers, unknown_operation(name)),
            DeployTarget::Queue(name) => (&self.workers, unknown_queue(name)),
        };
        table.get(target.name()).cloned().ok_or(unknown)
    }
}

fn unknown_operation(name: &str) -> SandboxError {
    SandboxError::UnknownOperation {
        operation: name.to_owned(),
    }
}

fn unknown_queue(name: &str) -> SandboxError {
    SandboxError::UnknownQueue {
        queue: name.to_owned(),
    }
}

/// A compiled version, ready to run.
pub(crate) enum Built {
    Handler(Arc<WasmHandler>),
    Worker(Arc<WasmWorker>),
}

/// The interfaces `component` imports, by name.
fn imports_of(engine: &Engine, component: &Component) -> Vec<String> {
    component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name.to_owned())
        .collect()
}

/// What a deploy would find: see [`crate::WasmHost::check_deploy`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeployCheck {
    /// The component's sha256.
    pub sha256: String,
    /// The current version's sha256.
    pub current: Option<String>,
    /// Every problem that would refuse it; empty when it would deploy.
    pub problems: Vec<String>,
    /// Interfaces it imports that the current version does not.
    pub imports_added: Vec<String>,
    /// Interfaces the current version imports that it does not.
    pub imports_removed: Vec<String>,
}

/// What examining a component found: its imports when it compiles, the version when it also
/// links, and every problem that would refuse it.
struct Examined {
    imports: Option<Vec<String>>,
    built: Option<Built>,
    problems: Vec<String>,
}

/// What building a version takes: see the module docs.
pub(crate) struct Deployer {
    pub(crate) engine: Engine,
    pub(crate) handler_linker: Linker<GuestState>,
    pub(crate) worker_linker: Linker<GuestState>,
    pub(crate) loader: ComponentLoader,
    pub(crate) secrets: Secrets,
    pub(crate) network: Arc<Network>,
    pub(crate) runtime: WeakRuntime,
    pub(crate) env: RunEnv,
    /// The most memory the engine was built to give one run.
    pub(crate) max_memory_bytes: usize,
    pub(crate) settings: RwLock<Settings>,
}

impl Deployer {
    /// The component file at `path` (refused unless its sha256 is `pin`, when given): its
    /// bytes, its sha256 and its compiled form.
    pub(crate) fn read(
        &self,
        path: &Path,
        pin: Option<&str>,
    ) -> Result<(Vec<u8>, String, Component), SandboxError> {
        let failed = |error: LoadError| SandboxError::Component {
            path: path.display().to_string(),
            message: error.to_string(),
        };
        let bytes = std::fs::read(path).map_err(|e| failed(LoadError::Read(e)))?;
        let sha256 = sha256_hex(&bytes);
        if let Some(expected) = pin
            && !expected.eq_ignore_ascii_case(&sha256)
        {
            return Err(failed(LoadError::Pin {
                expected: expected.to_owned(),
                actual: sha256,
            }));
        }
        let (component, origin) = self.loader.compile(&bytes, &sha256).map_err(failed)?;
        tracing::debug!(component = %path.display(), ?origin, "component ready");
        Ok((bytes, sha256, component))
    }

    /// `component` (from `label`) linked as a version of `target`, refused when it imports
    /// what the target's grants do not give.
    pub(crate) fn link(
        &self,
        target: &DeployTarget,
        label: &Path,
        component: &Component,
    ) -> Result<Built, SandboxError> {
        let (limits, grants) = self.settings().of(target)?;
        self.link_with(target, label, component, limits, grants)
    }

    /// [`Deployer::link`] under `limits` and `grants`.
    fn link_with(
        &self,
        target: &DeployTarget,
        label: &Path,
        component: &Component,
        limits: Limits,
        grants: Grants,
    ) -> Result<Built, SandboxError> {
        checked(&self.engine, label, component, &grants)?;
        let egress = egress_policy(label, &grants, &self.secrets, &self.network)?;
        let env = self.env.clone();
        Ok(match target {
            DeployTarget::Operation(_) => {
                let pre = self
                    .handler_linker
                    .instantiate_pre(component)
                    .and_then(HandlerPre::new)
                    .map_err(|e| component_error(label, e))?;
                Built::Handler(Arc::new(WasmHandler {
                    runtime: self.runtime.clone(),
                    engine: self.engine.clone(),
                    pre,
                    limits,
                    grants,
                    egress,
                    env,
                }))
            }
            DeployTarget::Queue(_) => {
                let pre = self
                    .worker_linker
                    .instantiate_pre(component)
                    .and_then(WorkerPre::new)
                    .map_err(|e| component_error(label, e))?;
                let runtime = self
                    .runtime
                    .upgrade()
                    .ok_or_else(|| SandboxError::Engine("the host is shutting down".to_owned()))?;
                Built::Worker(Arc::new(WasmWorker {
                    engine: self.engine.clone(),
                    pre,
                    runtime,
                    limits,
                    grants,
                    egress,
                    env,
                }))
            }
        })
    }

    /// `bytes` compiled and linked as a version of `target`: every problem found (as
    /// `opshost check` reports them) refuses it.
    fn build(&self, target: &DeployTarget, bytes: &[u8]) -> Result<Built, SandboxError> {
        let examined = self.examine(target, bytes)?;
        match examined.built {
            Some(built) if examined.problems.is_empty() => Ok(built),
            _ => Err(SandboxError::Refused {
                target: target.clone(),
                problems: examined.problems,
            }),
        }
    }

    /// `bytes` checked, compiled and linked as a version of `target`.
    fn examine(&self, target: &DeployTarget, bytes: &[u8]) -> Result<Examined, SandboxError> {
        let sha256 = sha256_hex(bytes);
        let component = match self.loader.compile(bytes, &sha256) {
            Ok((component, _)) => component,
            Err(error) => {
                return Ok(Examined {
                    imports: None,
                    built: None,
                    problems: vec![format!("not a loadable component: {error}")],
                });
            }
        };
        let (_, grants) = self.settings().of(target)?;
        let mut problems = check::deploy_problems(
            &self.engine,
            target,
            bytes,
            &component,
            &grants,
            &self.secrets,
            &self.network,
        );
        let imports = Some(imports_of(&self.engine, &component));
        let built = match self.link(target, Path::new(&sha256), &component) {
            Ok(built) => Some(built),
            Err(error) => {
                if problems.is_empty() {
                    problems.push(error.to_string());
                }
                None
            }
        };
        Ok(Examined {
            imports,
            built,
            problems,
        })
    }

    fn settings(&self) -> std::sync::RwLockReadGuard<'_, Settings> {
        self.settings.read().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The versions of every handler and worker of a host, and the store that keeps them: see
/// the module docs.
pub(crate) struct Deployments {
    store: Arc<dyn DeploymentStore>,
    deployer: Arc<Deployer>,
    handlers: HashMap<String, Arc<Versions<WasmHandler>>>,
    workers: HashMap<String, Arc<Versions<WasmWorker>>>,
    /// How far this host has followed the log; the config's versions until they are stored.
    followed: tokio::sync::Mutex<Followed>,
}

#[derive(Default)]
struct Followed {
    seq: u64,
    /// The config's versions (target, sha256, bytes), kept in the store at the first sync.
    configured: Vec<(DeployTarget, String, Vec<u8>)>,
    started: bool,
}

impl Deployments {
    /// The deployments of a host just loaded: each target's only version is the config's.
    pub(crate) fn new(
        store: Arc<dyn DeploymentStore>,
        deployer: Arc<Deployer>,
        configured: Vec<(DeployTarget, String, Vec<u8>, Built)>,
    ) -> Arc<Self> {
        let mut handlers = HashMap::new();
        let mut workers = HashMap::new();
        let mut pending = Vec::new();
        for (target, sha256, bytes, built) in configured {
            match (&target, built) {
                (DeployTarget::Operation(name), Built::Handler(handler)) => {
                    handlers.insert(name.clone(), Versions::new(&sha256, handler));
                }
                (DeployTarget::Queue(name), Built::Worker(worker)) => {
                    workers.insert(name.clone(), Versions::new(&sha256, worker));
                }
                _ => continue,
            }
            pending.push((target, sha256, bytes));
        }
        Arc::new(Self {
            store,
            deployer,
            handlers,
            workers,
            followed: tokio::sync::Mutex::new(Followed {
                configured: pending,
                ..Followed::default()
            }),
        })
    }

    /// The handler of `operation` that runs each operation on its pinned version.
    pub(crate) fn handler(self: &Arc<Self>, operation: &str) -> Option<Arc<dyn OperationHandler>> {
        let versions = Arc::clone(self.handlers.get(operation)?);
        Some(Arc::new(VersionedHandler {
            operation: operation.to_owned(),
            versions,
            deployments: Arc::clone(self),
        }))
    }

    /// Runs `job` on the version of `queue`'s worker that new work runs now.
    pub(crate) async fn run_job(&self, queue: &str, job: Job) -> Result<Value, WorkerError> {
        let internal = |message: String| WorkerError(ErrorInfo::new(ErrorCode::Internal, message));
        let versions = self
            .workers
            .get(queue)
            .ok_or_else(|| internal(format!("no worker serves queue `{queue}`")))?;
        let sha256 = versions
            .choose()
            .ok_or_else(|| internal(format!("queue `{queue}` has no version")))?;
        let _in_flight = versions.begin(&sha256);
        let worker = match versions.get(&sha256) {
            Some(worker) => worker,
            None => match self
                .load(&DeployTarget::Queue(queue.to_owned()), &sha256)
                .await
            {
                Ok(Built::Worker(worker)) => versions.insert(&sha256, worker),
                Ok(Built::Handler(_)) => return Err(internal(format!("{sha256} is no worker"))),
                Err(error) => return Err(internal(error)),
            },
        };
        worker.run(job).await
    }

    /// Compiles version `sha256` of `target` from the store's copy of its bytes.
    async fn load(&self, target: &DeployTarget, sha256: &str) -> Result<Built, String> {
        let bytes = self
            .store
            .component(sha256)
            .await
            .map_err(|e| format!("cannot read version {sha256} of {target}: {e}"))?
            .ok_or_else(|| format!("version {sha256} of {target} is not in the store"))?;
        let deployer = Arc::clone(&self.deployer);
        let target = target.clone();
        let label = sha256.to_owned();
        tokio::task::spawn_blocking(move || {
            let (component, _) = deployer
                .loader
                .compile(&bytes, &label)
                .map_err(|e| format!("version {label} of {target}: {e}"))?;
            deployer
                .link(&target, Path::new(&label), &component)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| format!("compiling version {sha256} stopped: {e}"))?
    }

    /// Makes sure version `sha256` of `target` is compiled here.
    async fn ensure_loaded(&self, target: &DeployTarget, sha256: &str) -> Result<(), String> {
        let loaded = match target {
            DeployTarget::Operation(name) => self
                .handlers
                .get(name)
                .is_none_or(|v| v.get(sha256).is_some()),
            DeployTarget::Queue(name) => self
                .workers
                .get(name)
                .is_none_or(|v| v.get(sha256).is_some()),
        };
        if loaded {
            return Ok(());
        }
        self.keep(target, sha256, self.load(target, sha256).await?);
        Ok(())
    }

    fn keep(&self, target: &DeployTarget, sha256: &str, built: Built) {
        match (target, built) {
            (DeployTarget::Operation(name), Built::Handler(handler)) => {
                if let Some(versions) = self.handlers.get(name) {
                    versions.insert(sha256, handler);
                }
            }
            (DeployTarget::Queue(name), Built::Worker(worker)) => {
                if let Some(versions) = self.workers.get(name) {
                    versions.insert(sha256, worker);
                }
            }
            _ => {}
        }
    }

    fn lineage(&self, target: &DeployTarget) -> Option<Lineage> {
        match target {
            DeployTarget::Operation(name) => self.handlers.get(name).map(|v| v.lineage()),
            DeployTarget::Queue(name) => self.workers.get(name).map(|v| v.lineage()),
        }
    }

    fn set_lineage(&self, target: &DeployTarget, lineage: Lineage) {
        match target {
            DeployTarget::Operation(name) => {
                if let Some(versions) = self.handlers.get(name) {
                    versions.set_lineage(lineage);
                }
            }
            DeployTarget::Queue(name) => {
                if let Some(versions) = self.workers.get(name) {
                    versions.set_lineage(lineage);
                }
            }
        }
    }

    /// Follows the store's deployment log: see the module docs. The first call keeps the
    /// config's versions in the store and records those that changed since the last start.
    pub(crate) async fn sync(&self) -> Result<(), StoreError> {
        let mut followed = self.followed.lock().await;
        if !followed.started {
            self.start(&mut followed).await?;
        }
        let records = self.store.deployments_after(followed.seq).await?;
        let Some(last) = records.last().map(|record| record.seq) else {
            return Ok(());
        };
        // Read from the start, each lineage is folded afresh from the log.
        let from_start = followed.seq == 0;
        let mut lineages: HashMap<DeployTarget, Lineage> = HashMap::new();
        for record in &records {
            let Some(lineage) = (match lineages.entry(record.target.clone()) {
                std::collections::hash_map::Entry::Occupied(entry) => Some(entry.into_mut()),
                std::collections::hash_map::Entry::Vacant(entry) => {
                    let known = self.lineage(&record.target);
                    known.map(|known| {
                        entry.insert(if from_start {
                            Lineage::default()
                        } else {
                            known
                        })
                    })
                }
            }) else {
                continue;
            };
            lineage.apply(record);
        }
        for (target, lineage) in lineages {
            let live = lineage
                .current()
                .into_iter()
                .chain(lineage.ramp().map(|(sha, _)| sha));
            for sha256 in live {
                if let Err(error) = self.ensure_loaded(&target, sha256).await {
                    tracing::error!(%target, %sha256, %error, "cannot load a deployed version; new work runs it once it loads");
                }
            }
            tracing::info!(%target, current = lineage.current().unwrap_or_default(), ramp = ?lineage.ramp(), "deployments followed");
            self.set_lineage(&target, lineage);
        }
        followed.seq = last;
        Ok(())
    }

    async fn start(&self, followed: &mut Followed) -> Result<(), StoreError> {
        let log = self.store.deployments_after(0).await?;
        for (target, sha256, bytes) in std::mem::take(&mut followed.configured) {
            self.store.put_component(&sha256, bytes).await?;
            let mut lineage = Lineage::default();
            log.iter()
                .filter(|record| record.target == target)
                .for_each(|record| lineage.apply(record));
            if lineage.config_version() != Some(sha256.as_str()) {
                self.record(target, DeployAction::Config, sha256, "config")
                    .await?;
            }
        }
        followed.started = true;
        Ok(())
    }

    async fn record(
        &self,
        target: DeployTarget,
        action: DeployAction,
        sha256: String,
        by: &str,
    ) -> Result<u64, StoreError> {
        self.store
            .record_deployment(DeploymentRecord {
                seq: 0,
                target,
                action,
                sha256,
                by: by.to_owned(),
                at: Utc::now(),
            })
            .await
    }

    /// Checks and compiles `component`, keeps it, and makes it the version of `target` that
    /// new work runs (all of it, or `percent` of it as a ramp), on this host at once and on
    /// the others as they follow the log. Answers its sha256.
    pub(crate) async fn deploy(
        &self,
        target: &DeployTarget,
        component: Vec<u8>,
        percent: u8,
        by: &str,
    ) -> Result<String, SandboxError> {
        if self.lineage(target).is_none() {
            return Err(match target {
                DeployTarget::Operation(name) => unknown_operation(name),
                DeployTarget::Queue(name) => unknown_queue(name),
            });
        }
        if !(1..=100).contains(&percent) {
            return Err(SandboxError::Refused {
                target: target.clone(),
                problems: vec![format!("percent must be 1 to 100, not {percent}")],
            });
        }
        self.sync().await.map_err(SandboxError::Store)?;
        let sha256 = sha256_hex(&component);
        let deployer = Arc::clone(&self.deployer);
        let checking = target.clone();
        let (built, component) =
            tokio::task::spawn_blocking(move || (deployer.build(&checking, &component), component))
                .await
                .map_err(|e| {
                    SandboxError::Engine(format!("compiling the component stopped: {e}"))
                })?;
        let built = built?;
        self.store
            .put_component(&sha256, component)
            .await
            .map_err(SandboxError::Store)?;
        self.keep(target, &sha256, built);
        self.record(
            target.clone(),
            DeployAction::Deploy { percent },
            sha256.clone(),
            by,
        )
        .await
        .map_err(SandboxError::Store)?;
        self.sync().await.map_err(SandboxError::Store)?;
        tracing::info!(%target, %sha256, percent, by, "version deployed");
        Ok(sha256)
    }

    /// What a deploy of `component` as a version of `target` would find, changing nothing:
    /// every problem that would refuse it, and how it differs from the current version.
    pub(crate) async fn check(
        &self,
        target: &DeployTarget,
        component: Vec<u8>,
    ) -> Result<DeployCheck, SandboxError> {
        let current = self
            .lineage(target)
            .ok_or_else(|| match target {
                DeployTarget::Operation(name) => unknown_operation(name),
                DeployTarget::Queue(name) => unknown_queue(name),
            })?
            .current()
            .map(str::to_owned);
        let current_component = current
            .as_deref()
            .and_then(|sha| self.components(target).into_iter().find(|(s, _)| s == sha))
            .map(|(_, component)| component);
        let deployer = Arc::clone(&self.deployer);
        let target = target.clone();
        tokio::task::spawn_blocking(move || {
            let sha256 = sha256_hex(&component);
            let Examined {
                imports, problems, ..
            } = deployer.examine(&target, &component)?;
            let before: Vec<String> = current_component
                .map(|component| imports_of(&deployer.engine, &component))
                .unwrap_or_default();
            let after = imports.unwrap_or_default();
            Ok(DeployCheck {
                imports_added: after
                    .iter()
                    .filter(|i| !before.contains(i))
                    .cloned()
                    .collect(),
                imports_removed: before
                    .iter()
                    .filter(|i| !after.contains(i))
                    .cloned()
                    .collect(),
                sha256,
                current,
                problems,
            })
        })
        .await
        .map_err(|e| SandboxError::Engine(format!("checking the component stopped: {e}")))?
    }

    /// Rolls back `target`: a ramp ends, or the version current before the current one is
    /// made current again. Answers the version now current.
    pub(crate) async fn rollback(
        &self,
        target: &DeployTarget,
        by: &str,
    ) -> Result<String, SandboxError> {
        self.sync().await.map_err(SandboxError::Store)?;
        let lineage = self.lineage(target).ok_or_else(|| match target {
            DeployTarget::Operation(name) => unknown_operation(name),
            DeployTarget::Queue(name) => unknown_queue(name),
        })?;
        let rolled_back = lineage
            .rollback_target()
            .ok_or_else(|| SandboxError::NoEarlierVersion {
                target: target.clone(),
            })?
            .to_owned();
        self.record(
            target.clone(),
            DeployAction::Rollback,
            rolled_back.clone(),
            by,
        )
        .await
        .map_err(SandboxError::Store)?;
        self.sync().await.map_err(SandboxError::Store)?;
        let current = self
            .lineage(target)
            .and_then(|lineage| lineage.current().map(str::to_owned))
            .unwrap_or_default();
        tracing::info!(%target, %rolled_back, %current, by, "version rolled back");
        Ok(current)
    }

    /// The versions of every target, in order of target.
    pub(crate) fn list(&self) -> Vec<(DeployTarget, Vec<VersionInfo>)> {
        let handlers = self
            .handlers
            .iter()
            .map(|(name, v)| (DeployTarget::Operation(name.clone()), v.list()));
        let workers = self
            .workers
            .iter()
            .map(|(name, v)| (DeployTarget::Queue(name.clone()), v.list()));
        let mut listed: Vec<_> = handlers.chain(workers).collect();
        listed.sort_by(|a, b| a.0.cmp(&b.0));
        listed
    }

    /// Applies `settings` to new runs: see [`crate::WasmHost::reload`].
    pub(crate) fn reload(&self, settings: Settings) -> Result<Vec<String>, SandboxError> {
        let old = self.deployer.settings().clone();
        let mut changes = Vec::new();
        let mut problems = Vec::new();
        let mut relinked = Vec::new();
        let tables = [
            (
                &old.handlers,
                &settings.handlers,
                DeployTarget::Operation as fn(String) -> _,
            ),
            (
                &old.workers,
                &settings.workers,
                DeployTarget::Queue as fn(String) -> _,
            ),
        ];
        for (before, after, target_of) in tables {
            for (name, (limits, grants)) in after {
                let target = target_of(name.clone());
                let Some((old_limits, old_grants)) = before.get(name) else {
                    changes.push(format!("{target}: new in the config; a restart serves it"));
                    continue;
                };
                let changed = config_changes(old_limits, limits, old_grants, grants);
                if changed.is_empty() {
                    continue;
                }
                if limits.memory_bytes > self.deployer.max_memory_bytes {
                    problems.push(format!(
                        "{target}: limits.memory_mb above the {} MiB the engine was built for \
                         takes a restart",
                        self.deployer.max_memory_bytes >> 20
                    ));
                }
                for (sha256, component) in self.components(&target) {
                    let label = Path::new(&sha256);
                    match self.deployer.link_with(
                        &target,
                        label,
                        &component,
                        *limits,
                        grants.clone(),
                    ) {
                        Ok(built) => relinked.push((target.clone(), sha256, built)),
                        Err(error) => problems.push(format!("{target}: {error}")),
                    }
                }
                changes.extend(
                    changed
                        .into_iter()
                        .map(|change| format!("{target}: {change}")),
                );
            }
            for name in before.keys().filter(|name| !after.contains_key(*name)) {
                let target = target_of(name.clone());
                changes.push(format!(
                    "{target}: gone from the config; a restart stops serving it"
                ));
            }
        }
        if !problems.is_empty() {
            return Err(SandboxError::ReloadRefused { problems });
        }
        {
            let mut current = self
                .deployer
                .settings
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            for (name, entry) in settings.handlers {
                if let Some(kept) = current.handlers.get_mut(&name) {
                    *kept = entry;
                }
            }
            for (name, entry) in settings.workers {
                if let Some(kept) = current.workers.get_mut(&name) {
                    *kept = entry;
                }
            }
        }
        for (target, sha256, built) in relinked {
            match (&target, built) {
                (DeployTarget::Operation(name), Built::Handler(handler)) => {
                    if let Some(versions) = self.handlers.get(name) {
                        versions.replace(&sha256, handler);
                    }
                }
                (DeployTarget::Queue(name), Built::Worker(worker)) => {
                    if let Some(versions) = self.workers.get(name) {
                        versions.replace(&sha256, worker);
                    }
                }
                _ => {}
            }
        }
        for change in &changes {
            tracing::info!(change = %change, "config reloaded");
        }
        Ok(changes)
    }

    /// The compiled versions of `target` held here, by sha256.
    fn components(&self, target: &DeployTarget) -> Vec<(String, Component)> {
        match target {
            DeployTarget::Operation(name) => self.handlers.get(name).map(|versions| {
                versions
                    .loaded()
                    .into_iter()
                    .map(|(sha, h)| (sha, h.pre.instance_pre().component().clone()))
                    .collect()
            }),
            DeployTarget::Queue(name) => self.workers.get(name).map(|versions| {
                versions
                    .loaded()
                    .into_iter()
                    .map(|(sha, w)| (sha, w.pre.instance_pre().component().clone()))
                    .collect()
            }),
        }
        .unwrap_or_default()
    }

    /// The last `limit` changes recorded, oldest first.
    pub(crate) async fn history(&self, limit: usize) -> Result<Vec<DeploymentRecord>, StoreError> {
        let mut log = self.store.deployments_after(0).await?;
        let skip = log.len().saturating_sub(limit);
        Ok(log.split_off(skip))
    }
}

/// An operation's handler over its versions: each run on the version its operation is pinned
/// to, new operations on the version [`Versions::choose`] gives.
struct VersionedHandler {
    operation: String,
    versions: Arc<Versions<WasmHandler>>,
    deployments: Arc<Deployments>,
}

impl OperationHandler for VersionedHandler {
    fn run(
        &self,
        run: Arc<Run>,
        snapshot: Snapshot,
        input: Option<Value>,
    ) -> BoxFuture<'static, Result<(), ErrorInfo>> {
        let current = || self.versions.lineage().current().map(str::to_owned);
        let sha256 = snapshot
            .component
            .clone()
            .or_else(current)
            .unwrap_or_default();
        // Counted from now until the run's future is dropped, polled or not.
        let in_flight = self.versions.begin(&sha256);
        let versions = Arc::clone(&self.versions);
        let deployments = Arc::clone(&self.deployments);
        let target = DeployTarget::Operation(self.operation.clone());
        Box::pin(async move {
            let _in_flight = in_flight;
            let handler = match versions.get(&sha256) {
                Some(handler) => handler,
                None => match deployments.load(&target, &sha256).await {
                    Ok(Built::Handler(handler)) => versions.insert(&sha256, handler),
                    loaded => {
                        let error = match loaded {
                            Err(error) => error,
                            Ok(_) => format!("{sha256} is no handler"),
                        };
                        // The pinned version is gone: the current one runs rather than none.
                        let current = current_of(&versions)
                            .ok_or_else(|| ErrorInfo::new(ErrorCode::Internal, error.clone()))?;
                        tracing::warn!(%target, pinned = %sha256, %error, "the pinned version cannot be loaded; the current version runs");
                        current
                    }
                },
            };
            handler.run(run, snapshot, input).await
        })
    }

    fn version(&self) -> Option<String> {
        self.versions.choose()
    }
}

/// The compiled current version, if loaded.
fn current_of<T: ?Sized>(versions: &Versions<T>) -> Option<Arc<T>> {
    let lineage = versions.lineage();
    versions.get(lineage.current()?)
}

/// What differs between two limits and grants of one target, one line each. Environment
/// values are not shown, only the names whose values changed.
fn config_changes(
    old_limits: &Limits,
    limits: &Limits,
    old_grants: &Grants,
    grants: &Grants,
) -> Vec<String> {
    let mut changes = Vec::new();
    let mut compare = |name: &str, before: String, after: String| {
        if before != after {
            changes.push(format!("{name} {before} -> {after}"));
        }
    };
    macro_rules! fields {
        ($prefix:literal, $old:expr, $new:expr, [$($field:ident),*]) => {
            $(compare(
                concat!($prefix, stringify!($field)),
                format!("{:?}", $old.$field),
                format!("{:?}", $new.$field),
            );)*
        };
    }
    fields!(
        "limits.",
        old_limits,
        limits,
        [
            memory_bytes,
            cpu,
            deadline,
            progress_per_second,
            max_payload_bytes,
            max_history_bytes,
            max_events,
            log_lines_per_second,
            log_bytes_per_second
        ]
    );
    fields!(
        "limits.http.",
        old_limits.http,
        limits.http,
        [
            connect_timeout,
            first_byte_timeout,
            between_bytes_timeout,
            max_response_bytes,
            max_request_bytes,
            max_in_flight,
            max_requests
        ]
    );
    let names = old_grants.env.keys().chain(grants.env.keys());
    let mut env: Vec<&String> = names
        .filter(|name| old_grants.env.get(*name) != grants.env.get(*name))
        .collect();
    env.sort();
    env.dedup();
    if !env.is_empty() {
        let env: Vec<&str> = env.into_iter().map(String::as_str).collect();
        changes.push(format!("grants.env changed: {}", env.join(", ")));
    }
    if format!("{:?}", old_grants.dirs) != format!("{:?}", grants.dirs) {
        changes.push(format!(
            "grants.dirs {:?} -> {:?}",
            old_grants.dirs, grants.dirs
        ));
    }
    if format!("{:?}", old_grants.http) != format!("{:?}", grants.http) {
        let allow = |grants: &Grants| grants.http.as_ref().map(|http| http.allow.clone());
        changes.push(format!(
            "grants.http changed: allow {:?} -> {:?}",
            allow(old_grants),
            allow(grants)
        ));
    }
    changes
}
