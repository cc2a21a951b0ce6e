//! Shared set-up for the integration tests: hosts serving the real guests built for
//! `wasm32-wasip2` (run `./dev guests` first; `./dev test` does), and in [`net`] real HTTP
//! servers on 127.0.0.1 with tokens to call them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use opshost_api::{OperationState, Snapshot};
use opshost_contract::Contract;
use opshost_runtime::store::OperationStore;
use opshost_runtime::{OperationRuntime, RuntimeConfig};
use opshost_sandbox::egress::HttpGrant;
use opshost_sandbox::{DeploymentConfig, HandlerConfig, JobsSettings, WasmHost, WorkerConfig};
use serde_json::Value;

/// The repository's root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A runtime of the testing contract on `store`, with no handler set.
pub fn testing_runtime(store: Arc<dyn OperationStore>, config: RuntimeConfig) -> OperationRuntime {
    OperationRuntime::builder(testing_contract())
        .store(store)
        .config(config)
        .build()
}

/// The testing contract.
pub fn testing_contract() -> Contract {
    Contract::from_path(root().join("contracts/testing.manifest.json"))
        .unwrap_or_else(|e| panic!("testing manifest: {e}"))
}

/// Starts `Testing.Scenario` on `host` with `input`; answers the accepted snapshot.
pub async fn start_scenario(host: &WasmHost, input: Value) -> Snapshot {
    host.start("Testing.Scenario", None, input)
        .await
        .unwrap_or_else(|e| panic!("start: {e}"))
}

/// The operation's terminal snapshot (after 60 s at most; panics if it is not terminal).
pub async fn wait_terminal(host: &WasmHost, id: &str) -> Snapshot {
    let snapshot = host
        .runtime()
        .wait(id, Some(Duration::from_secs(60)))
        .await
        .unwrap_or_else(|e| panic!("wait: {e}"));
    assert!(snapshot.is_terminal(), "{snapshot:?}");
    snapshot
}

/// Starts `Testing.Scenario` with `input` and answers its terminal snapshot.
pub async fn run_scenario(host: &WasmHost, input: Value) -> Snapshot {
    let accepted = start_scenario(host, input).await;
    wait_terminal(host, &accepted.id).await
}

/// Waits until the operation's handler has marked it running.
pub async fn until_running(host: &WasmHost, id: &str) {
    let mut events = host.runtime().watch(id, Some(0));
    while let Some(event) = events.next().await {
        let event = event.unwrap_or_else(|e| panic!("watch: {e}"));
        if event.snapshot().state == OperationState::Running {
            return;
        }
    }
    panic!("operation {id} ended without running");
}

/// A bench setting: the number in environment variable `name`, or `default`.
pub fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Path of a guest component built by `./dev guests`.
pub fn guest(name: &str) -> PathBuf {
    let path = root()
        .join("target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "guest component {} is missing: build the guests with `./dev guests`",
        path.display()
    );
    path
}

/// A host serving `Orders.Process`: the orders-process guest hands
/// each order to a `fulfillment` job, worked by the orders-fulfillment guest. Call it within
/// a tokio runtime (the worker starts at once).
pub fn orders_host(cancel_grace: Duration) -> WasmHost {
    load(&orders_deployment(cancel_grace, 16))
}

/// The deployment of [`orders_host`], with `workers` fulfillment workers.
pub fn orders_deployment(cancel_grace: Duration, workers: usize) -> DeploymentConfig {
    let mut config = deployment(
        "orders_service.manifest.json",
        "Orders.Process",
        "orders_process",
        cancel_grace,
    );
    let mut worker = WorkerConfig::new("fulfillment", guest("orders_fulfillment"), workers);
    // It may charge through a payments service; here none is granted.
    worker.grants.http = Some(HttpGrant::default());
    config.workers = vec![worker];
    config
}

/// A host serving `Testing.Scenario` with the test-handlers guest.
pub fn testing_host(cancel_grace: Duration) -> WasmHost {
    host(
        "testing.manifest.json",
        "Testing.Scenario",
        "test_handlers",
        cancel_grace,
    )
}

/// A host serving `Testing.Scenario` that runs `concurrency` handlers at once and lets
/// `backlog` accepted operations wait for a slot.
pub fn testing_host_limited(
    cancel_grace: Duration,
    concurrency: usize,
    backlog: usize,
) -> WasmHost {
    let mut config = testing_deployment(cancel_grace);
    config.max_concurrent_operations = concurrency;
    config.max_backlog = backlog;
    load(&config)
}

/// Loads `config` on the in-memory stores, or panics with why it cannot.
pub fn load(config: &DeploymentConfig) -> WasmHost {
    match WasmHost::from_config(config) {
        Ok(host) => host,
        Err(error) => panic!("cannot load the test deployment: {error}"),
    }
}

fn host(manifest: &str, operation: &str, component: &str, cancel_grace: Duration) -> WasmHost {
    load(&deployment(manifest, operation, component, cancel_grace))
}

/// The deployment of `Testing.Scenario` with the test-handlers guest.
pub fn testing_deployment(cancel_grace: Duration) -> DeploymentConfig {
    deployment(
        "testing.manifest.json",
        "Testing.Scenario",
        "test_handlers",
        cancel_grace,
    )
}

/// [`testing_deployment`] plus the test-worker guest on every testing queue, with short
/// leases.
pub fn testing_jobs_deployment(cancel_grace: Duration) -> DeploymentConfig {
    let mut config = testing_deployment(cancel_grace);
    config.workers = ["testing.work", "testing.owned", "testing.quick"]
        .into_iter()
        .map(|queue| WorkerConfig::new(queue, guest("test_worker"), 2))
        .collect();
    config.jobs = JobsSettings {
        lease_ms: 900,
        poll_ms: 50,
    };
    config
}

fn deployment(
    manifest: &str,
    operation: &str,
    component: &str,
    cancel_grace: Duration,
) -> DeploymentConfig {
    let mut config = DeploymentConfig::new(root().join("contracts").join(manifest));
    config.cancel_grace_ms = u64::try_from(cancel_grace.as_millis()).unwrap_or(u64::MAX);
    config.handlers = vec![HandlerConfig::new(operation, guest(component))];
    config
}

pub mod bench;
pub mod conformance;
pub mod deployment_conformance;
pub mod job_conformance;
pub mod jobs;
pub mod net;
pub mod otlp;
pub mod postgres;
pub mod tls;
pub mod upstream;
