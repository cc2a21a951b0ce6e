//! Building a version: a component's bytes checked (the world it exports, the operation it
//! declares, its imports against the grants), compiled (or taken from the cache) and linked
//! under its target's limits and grants.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use opshost_api::DeployTarget;
use opshost_runtime::WeakRuntime;
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

    pub(crate) fn of(&self, target: &DeployTarget) -> Result<(Limits, Grants), SandboxError> {
        let (table, unknown) = match target {
            DeployTarget::Operation(name) => (&self.handlers, unknown_operation(name)),
            DeployTarget::Queue(name) => (&self.workers, unknown_queue(name)),
        };
        table.get(target.name()).cloned().ok_or(unknown)
    }
}

pub(crate) fn unknown_operation(name: &str) -> SandboxError {
    SandboxError::UnknownOperation {
        operation: name.to_owned(),
    }
}

pub(crate) fn unknown_queue(name: &str) -> SandboxError {
    SandboxError::UnknownQueue {
        queue: name.to_owned(),
    }
}

/// A compiled version, ready to run.
#[derive(Clone)]
pub(crate) enum Built {
    Handler(Arc<WasmHandler>),
    Worker(Arc<WasmWorker>),
}

/// The interfaces `component` imports, by name.
pub(crate) fn imports_of(engine: &Engine, component: &Component) -> Vec<String> {
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

/// A compiled version of one kind: a handler or a worker.
pub(crate) trait Compiled: Send + Sync + 'static {
    /// The version `built` if it is of this kind.
    fn from_built(built: Built) -> Option<Arc<Self>>;
    /// The version as either kind.
    fn into_built(this: Arc<Self>) -> Built;
    /// Its component.
    fn component(&self) -> &Component;
}

impl Compiled for WasmHandler {
    fn from_built(built: Built) -> Option<Arc<Self>> {
        match built {
            Built::Handler(handler) => Some(handler),
            Built::Worker(_) => None,
        }
    }

    fn into_built(this: Arc<Self>) -> Built {
        Built::Handler(this)
    }

    fn component(&self) -> &Component {
        self.pre.instance_pre().component()
    }
}

impl Compiled for WasmWorker {
    fn from_built(built: Built) -> Option<Arc<Self>> {
        match built {
            Built::Worker(worker) => Some(worker),
            Built::Handler(_) => None,
        }
    }

    fn into_built(this: Arc<Self>) -> Built {
        Built::Worker(this)
    }

    fn component(&self) -> &Component {
        self.pre.instance_pre().component()
    }
}

/// What examining a component found: its imports when it compiles, the version when it also
/// links, and every problem that would refuse it.
pub(crate) struct Examined {
    pub(crate) imports: Option<Vec<String>>,
    pub(crate) built: Option<Built>,
    pub(crate) problems: Vec<String>,
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
    /// Held by a deploy while it builds and keeps a version, and by a reload while it relinks:
    /// one at a time, so that no version is kept under settings a reload replaced.
    pub(crate) changing: std::sync::Mutex<()>,
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
    pub(crate) fn link_with(
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
    pub(crate) fn build(&self, target: &DeployTarget, bytes: &[u8]) -> Result<Built, SandboxError> {
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
    pub(crate) fn examine(
        &self,
        target: &DeployTarget,
        bytes: &[u8],
    ) -> Result<Examined, SandboxError> {
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

    pub(crate) fn settings(&self) -> std::sync::RwLockReadGuard<'_, Settings> {
        self.settings.read().unwrap_or_else(PoisonError::into_inner)
    }
}
