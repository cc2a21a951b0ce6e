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
    let mut problems = Vec::new();
    let mut uses = 0;
    for handler in config.handlers.iter().filter(|h| same_file(&h.component)) {
        uses += 1;
        let role = format!("handler of {}", handler.operation);
        if contract.operation(&handler.operation).is_none() {
            problems.push(format!(
                "{role}: the contract declares no operation `{}`",
                handler.operation
            ));
        }
        if let Err(error) = exports_handler(&engine, &compiled) {
            problems.push(format!(
                "{role}: does not export the `handler` world: {error}"
            ));
        }
        common(
            &mut problems,
            &role,
            &engine,
            &compiled,
            (&digest, handler.sha256.as_deref()),
            &handler.grants,
        );
    }
    for worker in config.workers.iter().filter(|w| same_file(&w.component)) {
        uses += 1;
        let role = format!("worker of queue {}", worker.queue);
        if contract.queue(&worker.queue).is_none() {
            problems.push(format!(
                "{role}: the contract declares no queue `{}`",
                worker.queue
            ));
        }
        if let Err(error) = exports_worker(&engine, &compiled) {
            problems.push(format!(
                "{role}: does not export the `worker` world: {error}"
            ));
        }
        common(
            &mut problems,
            &role,
            &engine,
            &compiled,
            (&digest, worker.sha256.as_deref()),
            &worker.grants,
        );
    }
    if uses == 0 {
        problems.push(format!(
            "no handler or worker of the config uses {}",
            component.display()
        ));
    }
    Ok(problems)
}

/// The checks every role shares: pin, imports, grants.
fn common(
    problems: &mut Vec<String>,
    role: &str,
    engine: &Engine,
    component: &Component,
    (digest, pin): (&str, Option<&str>),
    grants: &Grants,
) {
    if let Some(pin) = pin
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
    if let Err(error) = grants.check() {
        problems.push(format!("{role}: {error}"));
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
