//! The runtime's rules on the in-memory store, with native handlers: no wasm, no database.
//! Transitions, the attach rule, cancel and its forced end, signals after the end, recovery
//! decisions, and how long a run counts as active.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use opshost_contract::Contract;
use opshost_runtime::store::{MemoryStore, OperationStore, StoredOperation};
use opshost_runtime::{
    ErrorCode, ErrorInfo, EventKind, JobHandOff, OperationHandler, OperationRuntime,
    OperationState, Owner, RestartPolicy, Run, RuntimeConfig, ServerError, Snapshot,
};
use serde_json::{Value, json};

const OP: &str = "Testing.Scenario";

fn contract() -> Contract {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../contracts/testing.manifest.json"
    );
    Contract::from_path(path).expect("the testing contract loads")
}

type Body = Arc<dyn Fn(Arc<Run>) -> BoxFuture<'static, Result<(), ErrorInfo>> + Send + Sync>;

/// A native handler running `body` on each run.
struct Native(Body);

impl OperationHandler for Native {
    fn run(
        &self,
        run: Arc<Run>,
        _snapshot: Snapshot,
        _input: Option<Value>,
    ) -> BoxFuture<'static, Result<(), ErrorInfo>> {
        (self.0)(run)
    }
}

/// A body that completes the operation at once.
fn completes() -> Body {
    Arc::new(|run: Arc<Run>| {
        Box::pin(async move {
            run.complete(json!({ "note": "done" }))
                .await
                .map_err(|e| e.to_info())?;
            Ok(())
        })
    })
}

fn runtime_with(store: Arc<dyn OperationStore>, body: Body) -> OperationRuntime {
    OperationRuntime::builder(contract())
        .store(store)
        .config(RuntimeConfig {
            cancel_grace: Duration::from_millis(100),
            ..RuntimeConfig::default()
        })
        .handler(OP, Arc::new(Native(body)))
        .build()
}

fn runtime(body: Body) -> OperationRuntime {
    runtime_with(Arc::new(MemoryStore::new()), body)
}

fn input() -> Value {
    json!({ "scenario": "complete" })
}

async fn start(runtime: &OperationRuntime) -> Snapshot {
    runtime
        .start(Owner::default(), OP, None, input())
        .await
        .expect("the start is accepted")
        .snapshot
}

async fn terminal(runtime: &OperationRuntime, id: &str) -> Snapshot {
    let snapshot = runtime
        .wait(id, Some(Duration::from_secs(10)))
        .await
        .expect("wait");
    assert!(snapshot.is_terminal(), "{snapshot:?}");
    snapshot
}

#[tokio::test]
async fn a_run_moves_through_started_and_progress_to_completed_one_revision_at_a_time() {
    let runtime = runtime(Arc::new(|run: Arc<Run>| {
        Box::pin(async move {
            run.started().await.map_err(|e| e.to_info())?;
            run.progress(json!({ "percent": 50 }))
                .await
                .map_err(|e| e.to_info())?;
            run.complete(json!({ "note": "done" }))
                .await
                .map_err(|e| e.to_info())?;
            Ok(())
        })
    }));
    let accepted = start(&runtime).await;
    let done = terminal(&runtime, &accepted.id).await;
    assert_eq!(done.state, OperationState::Completed);
    assert_eq!(done.revision, 4);
    assert_eq!(
        done.progress,
        Some(json!({ "percent": 50 })),
        "kept after the end"
    );
    use futures::StreamExt;
    let kinds: Vec<EventKind> = runtime
        .watch(&accepted.id, Some(0))
        .map(|event| event.unwrap().kind())
        .collect()
        .await;
    assert_eq!(
        kinds,
        [
            EventKind::Accepted,
            EventKind::Started,
            EventKind::Progress,
            EventKind::Completed
        ]
    );
}

#[tokio::test]
async fn nothing_changes_a_terminal_operation() {
    let runtime = runtime(Arc::new(|run: Arc<Run>| {
        Box::pin(async move {
            run.complete(json!({ "note": "done" }))
                .await
                .map_err(|e| e.to_info())?;
            let again = run.complete(json!({ "note": "again" })).await;
            assert!(matches!(again, Err(ServerError::OperationTerminal { .. })));
            let late = run.progress(json!({ "percent": 1 })).await;
            assert!(matches!(late, Err(ServerError::OperationTerminal { .. })));
            Ok(())
        })
    }));
    let accepted = start(&runtime).await;
    let done = terminal(&runtime, &accepted.id).await;
    assert_eq!(done.output, Some(json!({ "note": "done" })));
}

#[tokio::test]
async fn a_handler_that_returns_while_the_operation_is_open_fails_it_with_handler_non_terminal() {
    let runtime = runtime(Arc::new(|run: Arc<Run>| {
        Box::pin(async move {
            run.started().await.map_err(|e| e.to_info())?;
            Ok(())
        })
    }));
    let accepted = start(&runtime).await;
    let done = terminal(&runtime, &accepted.id).await;
    assert_eq!(done.state, OperationState::Failed);
    assert_eq!(done.error.unwrap().code, ErrorCode::HandlerNonTerminal);
}

#[tokio::test]
async fn a_handler_error_fails_the_operation_with_it() {
    let runtime = runtime(Arc::new(|_run: Arc<Run>| {
        Box::pin(async move { Err(ErrorInfo::new(ErrorCode::HandlerFailed, "no stock")) })
    }));
    let accepted = start(&runtime).await;
    let done = terminal(&runtime, &accepted.id).await;
    let error = done.error.unwrap();
    assert_eq!(
        (error.code, error.message.as_str()),
        (ErrorCode::HandlerFailed, "no stock")
    );
}

/// Enqueues nothing, remembers the job ids it was asked for, and owns whatever `owns` lists.
/// With `lose_first_answer`, the first enqueue is recorded but answered with an error, as
/// when a write commits and its connection drops.
#[derive(Default)]
struct FakeJobs {
    owns: Vec<String>,
    enqueued: Mutex<Vec<String>>,
    lose_first_answer: AtomicBool,
}

impl JobHandOff for FakeJobs {
    fn enqueue_owned<'a>(
        &'a self,
        job_id: &'a str,
        _operation_id: &'a str,
        _queue: &'a str,
        _payload: Value,
        _trace: Option<opshost_api::TraceContext>,
    ) -> BoxFuture<'a, Result<String, ServerError>> {
        Box::pin(async move {
            self.enqueued.lock().unwrap().push(job_id.to_owned());
            if self.lose_first_answer.swap(false, Ordering::SeqCst) {
                return Err(ServerError::ShuttingDown);
            }
            Ok(job_id.to_owned())
        })
    }

    fn owns<'a>(&'a self, operation_id: &'a str) -> BoxFuture<'a, Result<bool, ServerError>> {
        Box::pin(async move { Ok(self.owns.iter().any(|id| id == operation_id)) })
    }

    fn cancel_owned<'a>(
        &'a self,
        _operation_id: &'a str,
    ) -> BoxFuture<'a, Result<(), ServerError>> {
        Box::pin(async move { Ok(()) })
    }
}

#[tokio::test]
async fn a_handler_that_handed_off_may_return_with_the_operation_open_and_its_run_ends() {
    let runtime = runtime(Arc::new(|run: Arc<Run>| {
        Box::pin(async move {
            run.started().await.map_err(|e| e.to_info())?;
            run.hand_off("testing.owned", json!({ "behaviour": "complete" }))
                .await
                .map_err(|e| e.to_info())?;
            Ok(())
        })
    }));
    let jobs = Arc::new(FakeJobs::default());
    runtime.connect_jobs(jobs.clone());
    let accepted = start(&runtime).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while jobs.enqueued.lock().unwrap().is_empty() || runtime.active_handlers() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the run never ended"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let open = runtime.get(&accepted.id).await.unwrap();
    assert_eq!(open.state, OperationState::Running, "left to the job");
    // The job's worker takes control by id and ends it.
    let worker = runtime.attach(&accepted.id).await.unwrap();
    assert_eq!(runtime.active_handlers(), 1);
    worker
        .complete(json!({ "note": "by the job" }))
        .await
        .unwrap();
    assert_eq!(
        runtime.active_handlers(),
        0,
        "a run ends with its operation"
    );
}

#[tokio::test]
async fn cancel_wakes_the_handler_and_its_acknowledgement_ends_the_operation_cancelled() {
    let runtime = runtime(Arc::new(|run: Arc<Run>| {
        Box::pin(async move {
            run.started().await.map_err(|e| e.to_info())?;
            run.cancellation().cancelled().await;
            run.acknowledge_cancel().await.map_err(|e| e.to_info())?;
            Ok(())
        })
    }));
    let accepted = start(&runtime).await;
    wait_running(&runtime, &accepted.id).await;
    let cancelled = runtime.cancel(&accepted.id).await.unwrap();
    assert_eq!(cancelled.state, OperationState::Cancelled);
    assert!(cancelled.cancel_requested);
    assert_eq!(cancelled.error.unwrap().message, "cancelled by caller");
}

#[tokio::test]
async fn a_handler_that_ignores_cancel_is_stopped_after_the_grace_period() {
    let runtime = runtime(Arc::new(|run: Arc<Run>| {
        Box::pin(async move {
            run.started().await.map_err(|e| e.to_info())?;
            std::future::pending::<()>().await;
            Ok(())
        })
    }));
    let accepted = start(&runtime).await;
    wait_running(&runtime, &accepted.id).await;
    let cancelled = runtime.cancel(&accepted.id).await.unwrap();
    assert_eq!(cancelled.state, OperationState::Cancelled);
    assert!(
        cancelled
            .error
            .unwrap()
            .message
            .contains("after the grace period"),
        "forced"
    );
    assert_eq!(runtime.active_handlers(), 0, "the stopped run is gone");
}

#[tokio::test]
async fn a_signal_after_the_end_is_refused() {
    let runtime = runtime(completes());
    let accepted = start(&runtime).await;
    terminal(&runtime, &accepted.id).await;
    let refused = runtime
        .signal(&accepted.id, "Note", json!({ "text": "late" }))
        .await;
    assert!(
        matches!(refused, Err(ServerError::OperationTerminal { .. })),
        "{refused:?}"
    );
}

async fn wait_running(runtime: &OperationRuntime, id: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while runtime.get(id).await.unwrap().state != OperationState::Running {
        assert!(tokio::time::Instant::now() < deadline, "never ran");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A store holding operations a previous run of the host left: `fresh` (attempt 1),
/// `tired` (attempt 3), `cancelling` (a cancel request pending) and `owned` (its job runs it).
async fn left_behind() -> Arc<MemoryStore> {
    let store = Arc::new(MemoryStore::new());
    for (id, attempt, cancel_requested) in [
        ("fresh", 1, false),
        ("tired", 3, false),
        ("cancelling", 1, true),
        ("owned", 1, false),
    ] {
        let mut snapshot = Snapshot::accepted(id.into(), "testing".into(), OP.into(), "v1".into());
        store
            .create(StoredOperation {
                snapshot: snapshot.clone(),
                input: Some(input()),
                owner: Owner::default(),
            })
            .await
            .unwrap();
        snapshot.revision = 2;
        snapshot.state = OperationState::Running;
        snapshot.attempt = attempt;
        snapshot.cancel_requested = cancel_requested;
        store.update(snapshot, EventKind::Started).await.unwrap();
    }
    store
}

#[tokio::test]
async fn recovery_retries_within_max_attempts_fails_beyond_them_cancels_pending_cancels_and_leaves_jobs_alone()
 {
    let store = left_behind().await;
    let runtime = runtime_with(
        store,
        Arc::new(|run: Arc<Run>| {
            Box::pin(async move {
                run.complete(json!({ "note": format!("attempt {}", run.attempt()) }))
                    .await
                    .map_err(|e| e.to_info())?;
                Ok(())
            })
        }),
    );
    runtime.connect_jobs(Arc::new(FakeJobs {
        owns: vec!["owned".into()],
        ..FakeJobs::default()
    }));
    let report = runtime
        .recover(|_| RestartPolicy::Retry { max_attempts: 3 })
        .await
        .unwrap();
    assert_eq!(
        (
            report.retried,
            report.failed,
            report.cancelled,
            report.owned_by_jobs
        ),
        (1, 1, 1, 1)
    );
    let fresh = terminal(&runtime, "fresh").await;
    assert_eq!(fresh.output, Some(json!({ "note": "attempt 2" })));
    let tired = terminal(&runtime, "tired").await;
    assert_eq!(tired.error.unwrap().code, ErrorCode::HostRestarted);
    let cancelling = terminal(&runtime, "cancelling").await;
    assert_eq!(cancelling.state, OperationState::Cancelled);
    let owned = runtime.get("owned").await.unwrap();
    assert_eq!(owned.state, OperationState::Running, "left to its job");
}

#[tokio::test]
async fn recovery_with_the_fail_policy_fails_with_host_restarted() {
    let runtime = runtime_with(
        left_behind().await,
        Arc::new(|_run: Arc<Run>| Box::pin(async move { Ok(()) })),
    );
    let report = runtime.recover(|_| RestartPolicy::Fail).await.unwrap();
    assert_eq!(report.failed, 3, "all but the cancelled one");
    let fresh = runtime.get("fresh").await.unwrap();
    assert_eq!(fresh.error.unwrap().code, ErrorCode::HostRestarted);
}

#[tokio::test]
async fn control_of_a_finished_operation_is_not_counted_as_running() {
    let runtime = runtime(completes());
    let accepted = start(&runtime).await;
    terminal(&runtime, &accepted.id).await;
    let late = runtime.attach(&accepted.id).await.unwrap();
    assert_eq!(runtime.active_handlers(), 0);
    drop(late);
    assert_eq!(runtime.active_handlers(), 0);
}

#[tokio::test]
async fn a_drained_executor_refuses_starts_and_stops_what_outlives_the_grace_period() {
    let runtime = runtime(Arc::new(|run: Arc<Run>| {
        Box::pin(async move {
            run.started().await.map_err(|e| e.to_info())?;
            std::future::pending::<()>().await;
            Ok(())
        })
    }));
    let accepted = start(&runtime).await;
    wait_running(&runtime, &accepted.id).await;
    let drained = runtime.drain(Duration::from_millis(50)).await;
    assert_eq!((drained.running, drained.stopped), (1, 1));
    assert_eq!(runtime.active_handlers(), 0);
    let open = runtime.get(&accepted.id).await.unwrap();
    assert_eq!(open.state, OperationState::Running, "left for recovery");
    let refused = runtime.start(Owner::default(), OP, None, input()).await;
    assert!(
        matches!(refused, Err(ServerError::ShuttingDown)),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_run_superseded_by_a_later_attempt_writes_nothing() {
    let store = Arc::new(MemoryStore::new());
    let runtime = runtime_with(store.clone(), completes());
    let accepted = runtime
        .accept(OP, Some("fenced".into()), Some(input()))
        .await
        .unwrap()
        .snapshot;
    let stale = runtime.attach(&accepted.id).await.unwrap();
    assert_eq!(stale.attempt(), 1);
    // Another host restarts the operation as attempt 2.
    let mut restarted = accepted.clone();
    restarted.revision = 2;
    restarted.attempt = 2;
    store.update(restarted, EventKind::Restarted).await.unwrap();
    for refused in [
        stale.progress(json!({ "percent": 10 })).await,
        stale.complete(json!({ "note": "stale" })).await,
        stale
            .fail(ErrorInfo::new(ErrorCode::HandlerFailed, "stale"))
            .await,
    ] {
        assert!(
            matches!(
                refused,
                Err(ServerError::Superseded {
                    attempt: 1,
                    current: 2,
                    ..
                })
            ),
            "{refused:?}"
        );
    }
    let current = runtime.get(&accepted.id).await.unwrap();
    assert_eq!(
        (current.revision, current.attempt),
        (2, 2),
        "nothing written"
    );
}

#[tokio::test]
async fn attaching_after_a_later_attempt_began_gets_a_run_of_that_attempt_which_can_end_it() {
    let store = Arc::new(MemoryStore::new());
    let runtime = runtime_with(store.clone(), completes());
    let accepted = runtime
        .accept(OP, Some("moved".into()), Some(input()))
        .await
        .unwrap()
        .snapshot;
    let stale = runtime.attach(&accepted.id).await.unwrap();
    let mut restarted = accepted.clone();
    restarted.revision = 2;
    restarted.attempt = 2;
    store.update(restarted, EventKind::Restarted).await.unwrap();

    let current = runtime.attach(&accepted.id).await.unwrap();
    assert_eq!((stale.attempt(), current.attempt()), (1, 2));
    current.complete(json!({ "note": "done" })).await.unwrap();
    assert_eq!(
        runtime.get(&accepted.id).await.unwrap().state,
        OperationState::Completed
    );
}

#[tokio::test]
async fn a_run_of_an_operation_with_a_pending_cancel_request_starts_cancelled() {
    let store = Arc::new(MemoryStore::new());
    let runtime = runtime_with(store.clone(), completes());
    let accepted = runtime
        .accept(OP, Some("cancelling".into()), Some(input()))
        .await
        .unwrap()
        .snapshot;
    let mut requested = accepted.clone();
    requested.revision = 2;
    requested.cancel_requested = true;
    store
        .update(requested, EventKind::CancelRequested)
        .await
        .unwrap();

    let run = runtime.attach(&accepted.id).await.unwrap();
    assert!(run.cancellation().is_cancelled());
}

#[tokio::test]
async fn a_hand_off_retried_after_a_lost_answer_names_the_same_job_and_the_next_one_another() {
    let runtime = runtime(completes());
    let jobs = Arc::new(FakeJobs {
        lose_first_answer: AtomicBool::new(true),
        ..FakeJobs::default()
    });
    runtime.connect_jobs(jobs.clone());
    let accepted = runtime
        .accept(OP, Some("handed".into()), Some(input()))
        .await
        .unwrap()
        .snapshot;
    let run = runtime.attach(&accepted.id).await.unwrap();
    let payload = json!({ "behaviour": "complete" });
    assert!(
        run.hand_off("testing.owned", payload.clone())
            .await
            .is_err()
    );
    let retried = run
        .hand_off("testing.owned", payload.clone())
        .await
        .unwrap();
    let next = run.hand_off("testing.owned", payload).await.unwrap();
    let enqueued = jobs.enqueued.lock().unwrap().clone();
    assert_eq!(enqueued, [retried.clone(), retried.clone(), next.clone()]);
    assert_ne!(retried, next);
}
