//! Recovery on the SQLite store: what one host run left unfinished, the next run resumes as
//! the deployment's `on_restart` says, with signals and cancel requests kept.
//!
//! The "crash" here is a host dropped with operations accepted but not run; the crash test
//! with `kill -9` on a real `opshost serve` is `host/cli/tests/crash.rs`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use opshost_api::{ErrorCode, EventKind, OperationState};
use opshost_runtime::store::OperationStore;
use opshost_runtime::{Owner, Recovery};
use opshost_sandbox::{DeploymentConfig, OnRestart, WasmHost};
use opshost_store_sqlite::SqliteStore;
use opshost_tests::testing_deployment;
use serde_json::{Value, json};

const GRACE: Duration = Duration::from_secs(5);

fn host(dir: &Path, config: &DeploymentConfig) -> WasmHost {
    let store = SqliteStore::open(dir).expect("the store opens");
    WasmHost::builder(config)
        .operations(Arc::new(store))
        .build()
        .expect("the deployment loads")
}

/// A host run that accepts `input` and dies before its handler runs.
async fn accepted_then_crashed(dir: &Path, input: Value) -> String {
    let first = host(dir, &testing_deployment(GRACE));
    let owner = Owner {
        tenant: "acme".into(),
        subject: "alice".into(),
    };
    first
        .runtime()
        .accept_as(owner, "Testing.Scenario", None, Some(input))
        .await
        .unwrap()
        .snapshot
        .id
}

#[tokio::test]
async fn an_unfinished_operation_runs_again_with_the_next_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let id = accepted_then_crashed(dir.path(), json!({ "scenario": "complete" })).await;

    let second = host(dir.path(), &testing_deployment(GRACE));
    let report = second.recover().await.unwrap();
    assert_eq!(
        report,
        Recovery {
            retried: 1,
            failed: 0,
            cancelled: 0,
            owned_by_jobs: 0
        }
    );
    let terminal = second.runtime().wait(&id, None).await.unwrap();
    assert_eq!(terminal.state, OperationState::Completed);
    assert_eq!(terminal.attempt, 2);
    assert_eq!(
        terminal.output.unwrap()["note"],
        "attempt 2",
        "the guest saw attempt 2"
    );
    let kinds: Vec<EventKind> =
        futures::StreamExt::collect::<Vec<_>>(second.runtime().watch(&id, Some(0)))
            .await
            .into_iter()
            .map(|event| event.unwrap().kind())
            .collect();
    assert_eq!(kinds[..2], [EventKind::Accepted, EventKind::Restarted]);
    assert_eq!(
        second.runtime().load(&id).await.unwrap().owner.tenant,
        "acme"
    );
}

#[tokio::test]
async fn signals_sent_before_the_restart_reach_the_next_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let id = accepted_then_crashed(
            dir.path(),
            json!({ "scenario": "echo-signals", "signals": 2 }),
        )
        .await;
        let first = host(dir.path(), &testing_deployment(GRACE));
        first
            .runtime()
            .signal(&id, "Note", json!({ "text": "before" }))
            .await
            .unwrap();
        id
    };
    let second = host(dir.path(), &testing_deployment(GRACE));
    second.recover().await.unwrap();
    second
        .runtime()
        .signal(&id, "Note", json!({ "text": "after" }))
        .await
        .unwrap();
    let terminal = second.runtime().wait(&id, None).await.unwrap();
    assert_eq!(terminal.state, OperationState::Completed, "{terminal:?}");
    assert_eq!(
        terminal.output.unwrap()["signals"],
        json!(["1:before", "2:after"])
    );
}

#[tokio::test]
async fn a_cancel_request_pending_at_the_restart_ends_the_operation_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let id = accepted_then_crashed(dir.path(), json!({ "scenario": "await-cancel" })).await;
    {
        let store = SqliteStore::open(dir.path()).unwrap();
        let current = store.load(&id).await.unwrap().unwrap().snapshot;
        let mut requested = current.clone();
        requested.revision += 1;
        requested.cancel_requested = true;
        store
            .update(requested, EventKind::CancelRequested)
            .await
            .unwrap();
    }
    let second = host(dir.path(), &testing_deployment(GRACE));
    let report = second.recover().await.unwrap();
    assert_eq!(report.cancelled, 1);
    let terminal = second.runtime().get(&id).await.unwrap();
    assert_eq!(terminal.state, OperationState::Cancelled);
    assert_eq!(terminal.error.unwrap().code, ErrorCode::Cancelled);
}

#[tokio::test]
async fn an_operation_out_of_attempts_fails_with_host_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let id = accepted_then_crashed(dir.path(), json!({ "scenario": "complete" })).await;
    {
        let store = SqliteStore::open(dir.path()).unwrap();
        let current = store.load(&id).await.unwrap().unwrap().snapshot;
        let mut third = current.clone();
        third.revision += 1;
        third.attempt = 3;
        store.update(third, EventKind::Restarted).await.unwrap();
    }
    let second = host(dir.path(), &testing_deployment(GRACE));
    assert_eq!(second.recover().await.unwrap().failed, 1);
    let terminal = second.runtime().get(&id).await.unwrap();
    assert_eq!(terminal.state, OperationState::Failed);
    let error = terminal.error.unwrap();
    assert_eq!(error.code, ErrorCode::HostRestarted);
    assert!(
        error.message.contains("attempt 3 of 3"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn on_restart_fail_fails_the_operation_with_host_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let id = accepted_then_crashed(dir.path(), json!({ "scenario": "complete" })).await;
    let mut config = testing_deployment(GRACE);
    config.handlers[0].on_restart = OnRestart::Fail;
    let second = host(dir.path(), &config);
    assert_eq!(second.recover().await.unwrap().failed, 1);
    let terminal = second.runtime().get(&id).await.unwrap();
    assert_eq!(terminal.error.unwrap().code, ErrorCode::HostRestarted);
}

#[tokio::test]
async fn retention_purges_old_terminal_operations_and_keeps_running_ones() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path(), &testing_deployment(GRACE));
    let done = host
        .start("Testing.Scenario", None, json!({ "scenario": "complete" }))
        .await
        .unwrap();
    host.runtime().wait(&done.id, None).await.unwrap();
    let running = host
        .start(
            "Testing.Scenario",
            None,
            json!({ "scenario": "await-cancel" }),
        )
        .await
        .unwrap();
    assert_eq!(
        host.runtime()
            .purge_expired(Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        host.runtime().purge_expired(Duration::ZERO).await.unwrap(),
        1
    );
    assert!(host.runtime().get(&done.id).await.is_err());
    assert!(!host.runtime().get(&running.id).await.unwrap().is_terminal());
}
