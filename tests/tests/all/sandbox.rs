//! The sandbox's production settings: grants, sha256 pins, the precompiled-component cache,
//! the instance pool, and handler slots that queue work instead of failing it.

use std::time::Duration;

use opshost_api::{ErrorCode, OperationState, Snapshot};
use opshost_sandbox::testing::{ComponentLoader, Origin, sha256_hex};
use opshost_sandbox::testing::{EngineShape, new_engine};
use opshost_sandbox::{Allocation, DeploymentConfig, DirGrant, SandboxError, WasmHost};
use opshost_tests::{
    guest, load, run_scenario, start_scenario, testing_deployment, testing_host_limited,
    until_running, wait_terminal,
};
use serde_json::json;

const GRACE: Duration = Duration::from_millis(300);

fn note(snapshot: &Snapshot) -> String {
    match &snapshot.output {
        Some(output) => output["note"].as_str().unwrap_or_default().to_owned(),
        None => panic!("no output: {snapshot:?}"),
    }
}

fn failure(snapshot: &Snapshot) -> String {
    assert_eq!(snapshot.state, OperationState::Failed, "{snapshot:?}");
    let error = snapshot.error.as_ref().unwrap();
    assert_eq!(error.code, ErrorCode::HandlerFailed);
    error.message.clone()
}

fn with_dir(host_dir: &std::path::Path, guest_dir: &str, writable: bool) -> DeploymentConfig {
    let mut config = testing_deployment(GRACE);
    config.handlers[0].grants.dirs = vec![DirGrant {
        host: host_dir.to_path_buf(),
        guest: guest_dir.into(),
        writable,
    }];
    config
}

/// Fills the only handler slot of `host` with `holder` (once it runs), then starts a
/// `complete` operation that must wait; answers both ids.
async fn hold_the_only_slot(host: &WasmHost, holder: &str) -> (String, String) {
    let holder = start_scenario(host, json!({ "scenario": holder })).await;
    until_running(host, &holder.id).await;
    let waiting = start_scenario(host, json!({ "scenario": "complete" })).await;
    (holder.id, waiting.id)
}

fn load_error(config: &DeploymentConfig) -> SandboxError {
    match WasmHost::from_config(config) {
        Ok(_) => panic!("the deployment loaded"),
        Err(error) => error,
    }
}

#[tokio::test]
async fn a_granted_read_only_directory_can_be_read_but_not_written() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("catalog.txt"), "widgets").unwrap();
    let host = load(&with_dir(dir.path(), "/catalog", false));

    let read = run_scenario(
        &host,
        json!({ "scenario": "read-file", "path": "/catalog/catalog.txt" }),
    )
    .await;
    assert_eq!(note(&read), "widgets");

    let write = run_scenario(
        &host,
        json!({ "scenario": "write-file", "path": "/catalog/new.txt" }),
    )
    .await;
    assert!(
        failure(&write).starts_with("cannot write /catalog/new.txt"),
        "{write:?}"
    );
    assert!(!dir.path().join("new.txt").exists());
}

#[tokio::test]
async fn a_granted_writable_directory_takes_the_guests_files() {
    let dir = tempfile::tempdir().unwrap();
    let host = load(&with_dir(dir.path(), "/scratch", true));
    let write = run_scenario(
        &host,
        json!({ "scenario": "write-file", "path": "/scratch/out.txt" }),
    )
    .await;
    assert_eq!(note(&write), "wrote /scratch/out.txt");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.txt")).unwrap(),
        "written by the guest"
    );
}

#[tokio::test]
async fn a_guest_sees_its_granted_env_vars_and_no_other() {
    let mut config = testing_deployment(GRACE);
    config.handlers[0]
        .grants
        .env
        .insert("REGION".into(), "eu-west-1".into());
    let host = load(&config);
    let region = run_scenario(&host, json!({ "scenario": "read-env", "path": "REGION" })).await;
    assert_eq!(note(&region), "eu-west-1");
    let path = run_scenario(&host, json!({ "scenario": "read-env", "path": "PATH" })).await;
    assert!(failure(&path).starts_with("PATH: "), "{path:?}");
}

#[tokio::test]
async fn a_granted_directory_that_does_not_exist_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let error = load_error(&with_dir(&dir.path().join("missing"), "/data", false));
    assert!(matches!(error, SandboxError::Grant { .. }), "{error}");
    assert!(error.to_string().contains("grants.dirs"), "{error}");
    assert!(error.to_string().contains("missing"), "{error}");
}

#[tokio::test]
async fn a_pinned_component_loads_only_when_its_sha256_matches() {
    let bytes = std::fs::read(guest("test_handlers")).unwrap();
    let mut config = testing_deployment(GRACE);
    config.handlers[0].sha256 = Some(sha256_hex(&bytes).to_uppercase());
    let host = load(&config);
    assert_eq!(
        run_scenario(&host, json!({ "scenario": "complete" }))
            .await
            .state,
        OperationState::Completed
    );

    config.handlers[0].sha256 = Some("0".repeat(64));
    let error = load_error(&config);
    let message = error.to_string();
    assert!(message.contains("test_handlers.wasm"), "{message}");
    assert!(
        message.contains(&format!("sha256 is {}", sha256_hex(&bytes))),
        "{message}"
    );
    assert!(message.contains("pins 0000"), "{message}");
}

#[tokio::test]
async fn compiled_components_are_cached_by_digest_and_engine_and_a_bad_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let shape = EngineShape {
        slots: None,
        max_memory_bytes: 64 << 20,
    };
    let (engine, _) = new_engine(shape).unwrap();
    let bytes = std::fs::read(guest("test_handlers")).unwrap();
    let digest = sha256_hex(&bytes);
    let loader = ComponentLoader::new(&engine, Some(dir.path().to_path_buf()));

    let (_, first) = loader.compile(&bytes, &digest).unwrap();
    assert_eq!(first, Origin::Compiled);
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with(&digest) && name.ends_with(".cwasm"),
        "{name}"
    );
    let (_, second) = loader.compile(&bytes, &digest).unwrap();
    assert_eq!(second, Origin::Cached);

    std::fs::write(&files[0], b"not a compiled component").unwrap();
    let (_, third) = loader.compile(&bytes, &digest).unwrap();
    assert_eq!(third, Origin::Compiled, "a bad file is compiled again");
    let (_, fourth) = loader.compile(&bytes, &digest).unwrap();
    assert_eq!(fourth, Origin::Cached, "and replaced");
}

#[tokio::test]
async fn a_host_runs_operations_from_its_component_cache() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = testing_deployment(GRACE);
    config.engine.cache_dir = Some(dir.path().to_path_buf());
    for _ in 0..2 {
        let host = load(&config);
        let done = run_scenario(&host, json!({ "scenario": "complete" })).await;
        assert_eq!(done.state, OperationState::Completed);
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[tokio::test]
async fn the_engine_pools_instances_and_falls_back_when_the_pool_cannot_be_reserved() {
    let pooled = new_engine(EngineShape {
        slots: Some(8),
        max_memory_bytes: 64 << 20,
    })
    .unwrap();
    assert_eq!(pooled.1, Allocation::Pooling { slots: 8 });

    // Two million slots of 4 GiB reservations exceed any 64-bit address space.
    let too_big = new_engine(EngineShape {
        slots: Some(2_000_000),
        max_memory_bytes: 64 << 20,
    })
    .unwrap();
    assert_eq!(too_big.1, Allocation::OnDemand);
}

#[tokio::test]
async fn operations_beyond_the_handler_slots_wait_as_pending_then_run() {
    let host = testing_host_limited(GRACE, 1, 1);
    let (holder, waiting) = hold_the_only_slot(&host, "await-cancel").await;
    let refused = host
        .start("Testing.Scenario", None, json!({ "scenario": "complete" }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), ErrorCode::Overloaded);
    assert!(refused.to_string().contains("max_backlog 1"), "{refused}");

    let still = host
        .runtime()
        .wait(&waiting, Some(Duration::from_millis(300)))
        .await
        .unwrap();
    assert_eq!(
        still.state,
        OperationState::Pending,
        "no slot is free while the first operation runs"
    );
    host.runtime().cancel(&holder).await.unwrap();
    let done = wait_terminal(&host, &waiting).await;
    assert_eq!(done.state, OperationState::Completed);
}

#[tokio::test]
async fn cancelling_an_operation_waiting_for_a_slot_ends_it_at_once() {
    let host = testing_host_limited(Duration::from_secs(30), 1, 4);
    let (holder, waiting) = hold_the_only_slot(&host, "ignore-cancel").await;
    let cancelled = host.runtime().cancel(&waiting).await.unwrap();
    assert_eq!(cancelled.state, OperationState::Cancelled);
    assert_eq!(
        cancelled.error.unwrap().message,
        "cancelled while waiting for a handler slot"
    );
    assert_eq!(
        host.runtime().get(&holder).await.unwrap().state,
        OperationState::Running,
        "the operation holding the slot carries on"
    );
}
