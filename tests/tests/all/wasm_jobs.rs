//! Jobs worked by a wasm worker component (the `worker` world), and operations a wasm
//! handler hands to them, on SQLite.

use std::sync::Arc;
use std::time::{Duration, Instant};

use opshost_api::{ErrorCode, OperationState};
use opshost_jobs::JobState;
use opshost_runtime::Owner;
use opshost_sandbox::WasmHost;
use opshost_store_sqlite::SqliteStore;
use opshost_tests::jobs::{final_state, owning_job};
use opshost_tests::testing_jobs_deployment;
use serde_json::{Value, json};

fn host(dir: &std::path::Path) -> WasmHost {
    let store = Arc::new(SqliteStore::open(dir).expect("the store opens"));
    WasmHost::builder(&testing_jobs_deployment(Duration::from_secs(2)))
        .stores(store)
        .build()
        .expect("the deployment loads")
}

async fn hand_off(host: &WasmHost, job: &str) -> String {
    let owner = Owner::default();
    let input = json!({ "scenario": "hand-off", "job": job });
    let accepted = host
        .runtime()
        .start(owner, "Testing.Scenario", None, input)
        .await
        .expect("the operation starts");
    accepted.snapshot.id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasm_worker_reports_progress_and_returns_its_result() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    let job = host
        .jobs()
        .enqueue("testing.work", json!({ "behaviour": "complete", "n": 3 }))
        .await
        .unwrap();
    let done = final_state(host.jobs(), &job.id).await;
    assert_eq!(done.state, JobState::Completed, "{done:?}");
    assert_eq!(done.result, Some(json!({ "text": "done 3" })));
    assert_eq!(done.progress, Some(json!({ "percent": 50 })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_wasm_worker_fails_each_attempt_until_the_job_is_dead() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    let job = host
        .jobs()
        .enqueue("testing.work", json!({ "behaviour": "trap" }))
        .await
        .unwrap();
    let dead = final_state(host.jobs(), &job.id).await;
    assert_eq!((dead.state, dead.attempt), (JobState::Dead, 3));
    let error = dead.error.unwrap();
    assert_eq!(error.code, ErrorCode::HandlerTrapped);
    assert!(
        error.message.contains("worker trapped"),
        "{}",
        error.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_wasm_worker_is_stopped_at_the_queue_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    let job = host
        .jobs()
        .enqueue("testing.quick", json!({ "behaviour": "hang" }))
        .await
        .unwrap();
    let dead = final_state(host.jobs(), &job.id).await;
    assert_eq!(dead.state, JobState::Dead);
    assert_eq!(dead.error.unwrap().code, ErrorCode::LimitExceeded);
    let next = host
        .jobs()
        .enqueue("testing.quick", json!({ "behaviour": "complete", "n": 1 }))
        .await
        .unwrap();
    let done = final_state(host.jobs(), &next.id).await;
    assert_eq!(
        done.state,
        JobState::Completed,
        "the worker slot is free again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasm_handler_hands_its_operation_to_a_wasm_worker_that_completes_it() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    let id = hand_off(&host, "finish-operation").await;
    let terminal = host
        .runtime()
        .wait(&id, Some(Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(terminal.state, OperationState::Completed, "{terminal:?}");
    assert_eq!(terminal.progress, Some(json!({ "percent": 90 })));
    let job = owning_job(host.jobs(), &id).await;
    let note = terminal.output.unwrap()["note"].clone();
    assert_eq!(
        note,
        Value::from(format!("completed by wasm job {}", job.id))
    );
    let job = final_state(host.jobs(), &job.id).await;
    assert_eq!(
        job.result,
        Some(json!({ "text": "finished the operation" }))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_handed_off_operation_reaches_the_wasm_worker() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    let id = hand_off(&host, "await-cancel").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while host.runtime().get(&id).await.unwrap().progress != Some(json!({ "percent": 20 })) {
        assert!(Instant::now() < deadline, "the worker never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cancelled = host.runtime().cancel(&id).await.unwrap();
    assert_eq!(cancelled.state, OperationState::Cancelled);
    assert_eq!(cancelled.error.unwrap().message, "cancelled by caller");
    let job = owning_job(host.jobs(), &id).await;
    assert_eq!(
        final_state(host.jobs(), &job.id).await.state,
        JobState::Cancelled
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_wasm_job_fails_the_operation_it_owns() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    let id = hand_off(&host, "fail").await;
    let terminal = host
        .runtime()
        .wait(&id, Some(Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(terminal.state, OperationState::Failed, "{terminal:?}");
    let error = terminal.error.unwrap();
    assert_eq!(error.message, "worker failed attempt 2");
}
