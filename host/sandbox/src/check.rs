//! `opshost check`: what a deployment would refuse about one component, found before it is
//! deployed, every problem at once.
//!
//! For each handler or worker of the config that names the component, the same steps as
//! loading: the sha256 pin, the WIT world it must export (`handler` or `worker`, with the
//! types of this host), the operation or queue in the contract, imports beyond the grants,
//! and the granted directories. For a handler, also the operation the component declares it
//! handles (custom section `opshost-operation`, written by the guest SDK's `export_handler!`).

use std::path::Path;
use std::sync::Arc;

use opshost_api::DeployTarget;
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::bindings::HandlerPre;
use crate::bindings::worker::WorkerPre;
use crate::cache::{ComponentLoader, sha256_hex};
use crate::config::DeploymentConfig;
use crate::egress::{Network, Secrets, check_grant};
use crate::engine::{EngineShape, new_engine};
use crate::error::SandboxError;
use crate::grants::{Grants, ungranted_imports};
use crate::host::{handler_linker, worker_linker};
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
    let declared = declared_operations(&bytes);
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
            serves: serves(&declared, &h.operation),
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
            serves: None,
            world: ("worker", exports_worker(&engine, &compiled)),
            pin: w.sha256.as_deref(),
            grants: &w.grants,
        });
    let mut problems = Vec::new();
    let secrets = Secrets::read(&config.secrets);
    let network = Network::new(&config.egress);
    for error in [secrets.as_ref().err(), network.as_ref().err()]
        .into_iter()
        .flatten()
    {
        problems.push(error.clone());
    }
    let mut uses = 0;
    for used in handlers.chain(workers) {
        uses += 1;
        used.problems(
            &mut problems,
            &engine,
            &compiled,
            &digest,
            secrets.as_ref().ok().zip(network.as_ref().ok()),
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

/// Every problem a deploy of `bytes` (compiled as `component`) as a version of `target`
/// would have: the same checks as [`check_component`] for one handler or worker.
pub(crate) fn deploy_problems(
    engine: &Engine,
    target: &DeployTarget,
    bytes: &[u8],
    component: &Component,
    grants: &Grants,
    secrets: &Secrets,
    network: &Arc<Network>,
) -> Vec<String> {
    let used = match target {
        DeployTarget::Operation(operation) => Use {
            role: format!("handler of {operation}"),
            missing: None,
            serves: serves(&declared_operations(bytes), operation),
            world: ("handler", exports_handler(engine, component)),
            pin: None,
            grants,
        },
        DeployTarget::Queue(queue) => Use {
            role: format!("worker of queue {queue}"),
            missing: None,
            serves: None,
            world: ("worker", exports_worker(engine, component)),
            pin: None,
            grants,
        },
    };
    let mut problems = Vec::new();
    let digest = sha256_hex(bytes);
    used.problems(
        &mut problems,
        engine,
        component,
        &digest,
        Some((secrets, network)),
    );
    problems
}

/// One handler or worker entry that names the component, and what loading it found so far.
struct Use<'a> {
    role: String,
    /// What the contract lacks for this entry, if anything.
    missing: Option<String>,
    /// How the operation the component declares differs from the entry's, if it does.
    serves: Option<String>,
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
        egress: Option<(&Secrets, &Arc<Network>)>,
    ) {
        let role = &self.role;
        if let Some(missing) = self.missing {
            problems.push(format!("{role}: the contract declares {missing}"));
        }
        if let Some(serves) = self.serves {
            problems.push(format!("{role}: {serves}"));
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
        let imports = ungranted_imports(engine, component, self.grants);
        if !imports.is_empty() {
            problems.push(format!(
                "{role}: imports what it was not granted: {}",
                imports.join(", ")
            ));
        }
        if let Err(error) = self.grants.check() {
            problems.push(format!("{role}: {error}"));
        }
        if let (Some(grant), Some((secrets, network))) = (&self.grants.http, egress)
            && let Err(error) = check_grant(grant, secrets, network)
        {
            problems.push(format!("{role}: {error}"));
        }
    }
}

/// The custom section in which a component declares the operations it handles, one name per
/// line.
const OPERATION_SECTION: &str = "opshost-operation";

/// The operations the component (or a module inside it) declares it handles.
fn declared_operations(bytes: &[u8]) -> Vec<String> {
    wasmparser::Parser::new(0)
        .parse_all(bytes)
        .filter_map(Result::ok)
        .filter_map(|payload| match payload {
            wasmparser::Payload::CustomSection(section) if section.name() == OPERATION_SECTION => {
                Some(String::from_utf8_lossy(section.data()).into_owned())
            }
            _ => None,
        })
        .flat_map(|text| {
            text.lines()
                .filter(|line| !line.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Why a component declaring `declared` does not serve `operation`, if it does not.
fn serves(declared: &[String], operation: &str) -> Option<String> {
    if declared.is_empty() {
        Some(format!(
            "declares no operation (custom section `{OPERATION_SECTION}`, written by the guest \
             SDK's `export_handler!`), so it cannot be shown to handle {operation}"
        ))
    } else if declared.iter().any(|name| name == operation) {
        None
    } else {
        Some(format!("handles {}, not {operation}", declared.join(", ")))
    }
}

fn exports_handler(engine: &Engine, component: &Component) -> wasmtime::Result<()> {
    HandlerPre::new(handler_linker(engine)?.instantiate_pre(component)?).map(drop)
}

fn exports_worker(engine: &Engine, component: &Component) -> wasmtime::Result<()> {
    WorkerPre::new(worker_linker(engine)?.instantiate_pre(component)?).map(drop)
}
