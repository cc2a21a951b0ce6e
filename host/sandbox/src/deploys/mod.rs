//! Deploys without a restart: new versions of a handler's or a worker's component, kept in
//! the store and served by every host that shares it.
//!
//! Three steps, as for any capability of the host:
//! - **Build** (`build`, [`Deployer`]): a component's bytes are checked (the world it exports, the
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
//!
//! `reload` applies a changed config's limits and grants to new runs.

mod build;
mod reload;

pub use build::DeployCheck;
pub(crate) use build::{Deployer, Settings};

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::Path;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use chrono::Utc;
use futures::future::BoxFuture;
use opshost_api::{DeployAction, DeployTarget, DeploymentRecord, ErrorCode, ErrorInfo, Snapshot};
use opshost_jobs::{Job, WorkerError};
use opshost_runtime::store::{DeploymentStore, StoreError};
use opshost_runtime::{OperationHandler, Run};
use serde_json::Value;
use wasmtime::component::Component;

use crate::cache::sha256_hex;
use crate::error::SandboxError;
use crate::host::{WasmHandler, WasmWorker};
use crate::versions::{Lineage, VersionInfo, Versions};

use build::{Built, Compiled, Examined, imports_of, unknown_operation, unknown_queue};

/// Held while one version is compiled from the store, so that it is compiled once.
type Gate = Arc<tokio::sync::Mutex<()>>;

/// The versions of one target, whichever kind they are.
trait TargetVersions: Send + Sync {
    fn lineage(&self) -> Lineage;
    /// Replaces the lineage, keeping the compiled versions `live` at once.
    fn set_lineage(&self, lineage: Lineage, live: Vec<(String, Built)>);
    fn held(&self, sha256: &str) -> Option<Built>;
    fn keep(&self, sha256: &str, built: Built);
    fn replace(&self, sha256: &str, built: Built);
    /// Every compiled version held, with its component.
    fn components(&self) -> Vec<(String, Component)>;
}

impl<T: Compiled> TargetVersions for Versions<T> {
    fn lineage(&self) -> Lineage {
        Versions::lineage(self)
    }

    fn set_lineage(&self, lineage: Lineage, live: Vec<(String, Built)>) {
        let live = live
            .into_iter()
            .filter_map(|(sha, built)| Some((sha, T::from_built(built)?)))
            .collect();
        Versions::set_lineage(self, lineage, live);
    }

    fn held(&self, sha256: &str) -> Option<Built> {
        self.get(sha256).map(T::into_built)
    }

    fn keep(&self, sha256: &str, built: Built) {
        if let Some(compiled) = T::from_built(built) {
            self.insert(sha256, compiled);
        }
    }

    fn replace(&self, sha256: &str, built: Built) {
        if let Some(compiled) = T::from_built(built) {
            Versions::replace(self, sha256, compiled);
        }
    }

    fn components(&self) -> Vec<(String, Component)> {
        self.loaded()
            .into_iter()
            .map(|(sha, compiled)| (sha, compiled.component().clone()))
            .collect()
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
    /// A gate per version being compiled from the store, so that it is compiled once.
    loading: std::sync::Mutex<HashMap<(DeployTarget, String), Gate>>,
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
            loading: std::sync::Mutex::default(),
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
        let target = DeployTarget::Queue(queue.to_owned());
        let worker = self
            .version(versions.as_ref(), &target, &sha256)
            .await
            .map_err(internal)?;
        worker.run(job).await
    }

    /// The versions of `target`, if it is served here.
    fn versions(&self, target: &DeployTarget) -> Option<&dyn TargetVersions> {
        match target {
            DeployTarget::Operation(name) => {
                let versions = self.handlers.get(name)?;
                Some(versions.as_ref())
            }
            DeployTarget::Queue(name) => {
                let versions = self.workers.get(name)?;
                Some(versions.as_ref())
            }
        }
    }

    /// Version `sha256` of `target`: held here, or compiled from the store's copy of its bytes
    /// and then held. However many runs wait for it, a version is compiled once at a time.
    async fn version<T: Compiled>(
        &self,
        versions: &Versions<T>,
        target: &DeployTarget,
        sha256: &str,
    ) -> Result<Arc<T>, String> {
        if let Some(held) = versions.get(sha256) {
            return Ok(held);
        }
        let built = self.load_once(target, sha256).await?;
        let compiled = T::from_built(built)
            .ok_or_else(|| format!("version {sha256} of {target} is of another kind"))?;
        Ok(versions.insert(sha256, compiled))
    }

    /// Version `sha256` of `target`, held here or compiled and then held: one compile at a
    /// time per version, however many runs and follows want it.
    async fn load_once(&self, target: &DeployTarget, sha256: &str) -> Result<Built, String> {
        let held = || {
            self.versions(target)
                .and_then(|versions| versions.held(sha256))
        };
        if let Some(built) = held() {
            return Ok(built);
        }
        let gate = {
            let mut loading = self.loading.lock().unwrap_or_else(PoisonError::into_inner);
            let key = (target.clone(), sha256.to_owned());
            Arc::clone(loading.entry(key).or_default())
        };
        let _turn = gate.lock().await;
        if let Some(built) = held() {
            return Ok(built);
        }
        let built = self.load(target, sha256).await?;
        if let Some(versions) = self.versions(target) {
            versions.keep(sha256, built.clone());
        }
        Ok(built)
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

    /// The versions new work may run of `target` under `lineage`, compiled; those that cannot
    /// be compiled are logged and left out (new work then runs the newest version held).
    async fn live(&self, target: &DeployTarget, lineage: &Lineage) -> Vec<(String, Built)> {
        let mut compiled = Vec::new();
        for sha256 in lineage.live() {
            match self.load_once(target, sha256).await {
                Ok(built) => compiled.push((sha256.to_owned(), built)),
                Err(error) => {
                    tracing::error!(%target, %sha256, %error, "cannot load a deployed version; retried at the next follow");
                }
            }
        }
        compiled
    }

    /// Follows the store's deployment log: see the module docs. The first call keeps the
    /// config's versions in the store and records those that changed since the last start.
    /// Each call also retries the live versions this host could not load before.
    pub(crate) async fn sync(&self) -> Result<(), StoreError> {
        let mut followed = self.followed.lock().await;
        if !followed.started {
            self.start(&mut followed).await?;
        }
        let records = self.store.deployments_after(followed.seq).await?;
        // Read from the start, each lineage is folded afresh from the log.
        let from_start = followed.seq == 0;
        let mut lineages: HashMap<DeployTarget, Lineage> = HashMap::new();
        for record in &records {
            let lineage = match lineages.entry(record.target.clone()) {
                Entry::Occupied(entry) => entry.into_mut(),
                Entry::Vacant(entry) => match self.versions(&record.target) {
                    Some(_) if from_start => entry.insert(Lineage::default()),
                    Some(versions) => entry.insert(versions.lineage()),
                    None => continue,
                },
            };
            lineage.apply(record);
        }
        let targets = self
            .handlers
            .keys()
            .map(|name| DeployTarget::Operation(name.clone()))
            .chain(
                self.workers
                    .keys()
                    .map(|name| DeployTarget::Queue(name.clone())),
            );
        for target in targets {
            let Some(versions) = self.versions(&target) else {
                continue;
            };
            let lineage = match lineages.remove(&target) {
                Some(changed) => {
                    tracing::info!(%target, current = changed.current().unwrap_or_default(), ramp = ?changed.ramp(), "deployments followed");
                    changed
                }
                // Unchanged: only a live version this host could not load yet is worth a retry.
                None => {
                    let lineage = versions.lineage();
                    if lineage.live().all(|sha| versions.held(sha).is_some()) {
                        continue;
                    }
                    lineage
                }
            };
            let live = self.live(&target, &lineage).await;
            versions.set_lineage(lineage, live);
        }
        if let Some(last) = records.last() {
            followed.seq = last.seq;
        }
        Ok(())
    }

    async fn start(&self, followed: &mut Followed) -> Result<(), StoreError> {
        let mut lineages: HashMap<DeployTarget, Lineage> = HashMap::new();
        for record in self.store.deployments_after(0).await? {
            lineages
                .entry(record.target.clone())
                .or_default()
                .apply(&record);
        }
        for (target, sha256, bytes) in std::mem::take(&mut followed.configured) {
            let configured = lineages.get(&target).and_then(Lineage::config_version);
            // A version is kept before its first record names it, and only then.
            if configured != Some(sha256.as_str()) {
                self.store.put_component(&sha256, bytes).await?;
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

    /// The versions of `target`, or why there are none.
    fn served(&self, target: &DeployTarget) -> Result<&dyn TargetVersions, SandboxError> {
        self.versions(target).ok_or_else(|| match target {
            DeployTarget::Operation(name) => unknown_operation(name),
            DeployTarget::Queue(name) => unknown_queue(name),
        })
    }

    /// Checks and compiles `component`, keeps it, and makes it the version of `target` that
    /// new work runs (all of it, or `percent` of it as a ramp), on this host at once and on
    /// the others as they follow the log. Answers its sha256 once the change is recorded.
    pub(crate) async fn deploy(
        &self,
        target: &DeployTarget,
        component: Vec<u8>,
        percent: u8,
        by: &str,
    ) -> Result<String, SandboxError> {
        let refused = |problem: String| SandboxError::Refused {
            target: target.clone(),
            problems: vec![problem],
        };
        self.served(target)?;
        if !(1..=100).contains(&percent) {
            return Err(refused(format!("percent must be 1 to 100, not {percent}")));
        }
        self.sync().await?;
        let sha256 = sha256_hex(&component);
        if percent < 100 && self.served(target)?.lineage().current() == Some(sha256.as_str()) {
            return Err(refused(format!(
                "version {sha256} is current already: a ramp needs another version"
            )));
        }
        let deployer = Arc::clone(&self.deployer);
        let checking = target.clone();
        let (built, component) = tokio::task::spawn_blocking(move || {
            // One change at a time: a reload relinks what it finds held, this one included.
            let _changing = deployer
                .changing
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            (deployer.build(&checking, &component), component)
        })
        .await
        .map_err(|e| SandboxError::Internal(format!("compiling the component stopped: {e}")))?;
        let built = built?;
        self.store.put_component(&sha256, component).await?;
        self.served(target)?.keep(&sha256, built);
        self.record(
            target.clone(),
            DeployAction::Deploy { percent },
            sha256.clone(),
            by,
        )
        .await?;
        tracing::info!(%target, %sha256, percent, by, "version deployed");
        // Recorded: every host follows it from the log, this one included, even if this
        // follow fails.
        if let Err(error) = self.sync().await {
            tracing::warn!(%target, %error, "deployed, but not yet followed here");
        }
        Ok(sha256)
    }

    /// What a deploy of `component` as a version of `target` would find, changing nothing:
    /// every problem that would refuse it, and how it differs from the current version.
    pub(crate) async fn check(
        &self,
        target: &DeployTarget,
        component: Vec<u8>,
    ) -> Result<DeployCheck, SandboxError> {
        let versions = self.served(target)?;
        let current = versions.lineage().current().map(str::to_owned);
        let current_component = current
            .as_deref()
            .and_then(|sha| versions.components().into_iter().find(|(s, _)| s == sha))
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
        .map_err(|e| SandboxError::Internal(format!("checking the component stopped: {e}")))?
    }

    /// Rolls back `target`: a ramp ends, or the version current before the current one is
    /// made current again. Answers the version current once the rollback is recorded.
    pub(crate) async fn rollback(
        &self,
        target: &DeployTarget,
        by: &str,
    ) -> Result<String, SandboxError> {
        self.sync().await?;
        let mut lineage = self.served(target)?.lineage();
        let rolled_back = lineage
            .rollback_target()
            .ok_or_else(|| SandboxError::NoEarlierVersion {
                target: target.clone(),
            })?
            .to_owned();
        let seq = self
            .record(
                target.clone(),
                DeployAction::Rollback,
                rolled_back.clone(),
                by,
            )
            .await?;
        lineage.apply(&DeploymentRecord {
            seq,
            target: target.clone(),
            action: DeployAction::Rollback,
            sha256: rolled_back.clone(),
            by: by.to_owned(),
            at: Utc::now(),
        });
        let current = lineage.current().unwrap_or_default().to_owned();
        tracing::info!(%target, %rolled_back, %current, by, "version rolled back");
        if let Err(error) = self.sync().await {
            tracing::warn!(%target, %error, "rolled back, but not yet followed here");
        }
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

    /// The last `limit` changes recorded, oldest first.
    pub(crate) async fn history(&self, limit: usize) -> Result<Vec<DeploymentRecord>, StoreError> {
        let mut log = self.store.deployments_after(0).await?;
        let skip = log.len().saturating_sub(limit);
        Ok(log.split_off(skip))
    }
}

/// The first pause before loading a pinned version again; it doubles up to 1.6 s.
const LOAD_RETRY: Duration = Duration::from_millis(100);

/// An operation's handler over its versions: each run on the version its operation is pinned
/// to, new operations on the version [`Versions::choose`] gives.
struct VersionedHandler {
    operation: String,
    versions: Arc<Versions<WasmHandler>>,
    deployments: Arc<Deployments>,
}

impl OperationHandler for VersionedHandler {
    /// As each version loaded (see [`WasmHandler`]).
    fn starts_before_durable(&self) -> bool {
        self.versions
            .all_loaded(|handler| handler.starts_before_durable())
    }

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
            let mut pause = LOAD_RETRY;
            let handler = loop {
                match deployments
                    .version(versions.as_ref(), &target, &sha256)
                    .await
                {
                    Ok(handler) => break handler,
                    // A store that cannot answer now may later: a few tries, then the attempt
                    // fails naming the version rather than running other code.
                    Err(error) if pause > LOAD_RETRY * 16 => {
                        return Err(ErrorInfo::new(
                            ErrorCode::Internal,
                            format!("cannot load the version this operation is pinned to: {error}"),
                        ));
                    }
                    Err(error) => {
                        tracing::warn!(%target, pinned = %sha256, %error, "cannot load the pinned version yet");
                        tokio::time::sleep(pause).await;
                        pause *= 2;
                    }
                }
            };
            handler.run(run, snapshot, input).await
        })
    }

    fn version(&self) -> Option<String> {
        self.versions.choose()
    }
}
