//! `opshost check`: what a deployment would refuse about one component, found before it is
//! deployed, every problem at once.
//!
//! For each handler or worker of the config that names the component, the same steps as
//! loading: the sha256 pin, the WIT world it must export (`handler` or `worker`, with the
//! types of this host), the operation or queue in the contract, imports beyond the grants,
//! and the granted directories.

use std::path::Path;

use wasmtime::Engine;
use wasmtime::component::{Component, HasSelf, Linker};

use crate::bindings::worker::{Worker, WorkerPre};
use crate::bindings::{Handler, HandlerPre};
use crate::cache::{ComponentLoader, sha256_hex};
use crate::config::DeploymentConfig;
use crate::control::OperationState;
use crate::engine::{EngineShape, new_engine};
use crate::error::SandboxError;
use crate::grants::{Grants, ungranted_imports};
use crate::limits::Limits;

/// Every problem found with `component` under `config`; empty when it would load.
pub fn check_component(
    config: &DeploymentConfig,
    component: &Path,
) -> Result<Vec<String>, SandboxError> {
    let contract = opshost_contract::Contract::from_path(&config.contract)?;
    let bytes = match std::fs::read(component) {
        Ok(bytes) => bytes,
        Err(error) => {
            return Ok(vec![format!(
                "cannot read {}: {error}",
                component.display()
            )]);
        }
    };
    let digest = sha256_hex(&bytes);
    let shape = EngineShape {
        slots: None,
        max_memory_bytes: Limits::default().memory_bytes,
    };
    let (engine, _) = new_engine(shape)?;
    let compiled = match ComponentLoader::new(&engine, None).compile(&bytes, &digest) {
        Ok((compiled, _)) => compiled,
        Err(error) => return Ok(vec![format!("not a loadable component: {error}")]),
    };
    let same_file = |path: &Path| {
        path == component
            || matches!((path.canonicalize(), component.canonicalize()), (Ok(a), Ok(b)) if a == b)
    };
    let handlers = config
        .handlers
        .iter()
        .filter(|h| same_file(&h.component))
        .map(|h| Use {
            role: format!("handler of {}", h.operation),
            missing: contract
                .operation(&h.operation)
                .is_none()
                .then(|| format!("no operation `{}`", h.operation)),
            world: ("handler", exports_handler(&engine, &compiled)),
            pin: h.sha256.as_deref(),
            grants: &h.grants,
        });
    let workers = config
        .workers
        .iter()
        .filter(|w| same_file(&w.component))
        .map(|w| Use {
            role: format!("worker of queue {}", w.queue),
            missing: contract
                .queue(&w.queue)
                .is_none()
                .then(|| format!("no queue `{}`", w.queue)),
            world: ("worker", exports_worker(&engine, &compiled)),
            pin: w.sha256.as_deref(),
            grants: &w.grants,
        });
    let mut problems = Vec::new();
    let mut uses = 0;
    for used in handlers.chain(workers) {
        uses += 1;
        used.problems(&mut problems, &engine, &compiled, &digest);
    }
    if uses == 0 {
        problems.push(format!(
            "no handler or worker of the config uses {}",
            component.display()
        ));
    }
    Ok(problems)
}

/// One handler or worker entry that names the component, and what loading it found so far.
struct Use<'a> {
    role: String,
    /// What the contract lacks for this entry, if anything.
    missing: Option<String>,
    /// The world the entry needs, and whether the component exports it.
    world: (&'static str, wasmtime::Result<()>),
    pin: Option<&'a str>,
    grants: &'a Grants,
}

impl Use<'_> {
    fn problems(
        self,
        problems: &mut Vec<String>,
        engine: &Engine,
        component: &Component,
        digest: &str,
    ) {
        let role = &self.role;
        if let Some(missing) = self.missing {
            problems.push(format!("{role}: the contract declares {missing}"));
        }
        if let (world, Err(error)) = self.world {
            problems.push(format!(
                "{role}: does not export the `{world}` world: {error}"
            ));
        }
        if let Some(pin) = self.pin
            && !pin.eq_ignore_ascii_case(digest)
        {
            problems.push(format!(
                "{role}: sha256 is {digest}, but the config pins {pin}"
            ));
        }
        let imports = ungranted_imports(engine, component);
        if !imports.is_empty() {
            problems.push(format!(
                "{role}: imports what it was not granted: {}",
                imports.join(", ")
            ));
        }
        if let Err(error) = self.grants.check() {
            problems.push(format!("{role}: {error}"));
        }
    }
}

fn exports_handler(engine: &Engine, component: &Component) -> wasmtime::Result<()> {
    let mut linker = Linker::<OperationState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    Handler::add_to_linker::<_, HasSelf<OperationState>>(&mut linker, |state| state)?;
    HandlerPre::new(linker.instantiate_pre(component)?).map(drop)
}

fn exports_worker(engine: &Engine, component: &Component) -> wasmtime::Result<()> {
    let mut linker = Linker::<OperationState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    Worker::add_to_linker::<_, HasSelf<OperationState>>(&mut linker, |state| state)?;
    WorkerPre::new(linker.instantiate_pre(component)?).map(drop)
}
