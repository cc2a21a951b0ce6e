//! Jobs with native workers: retries with backoff then `dead`, payload checks,
//! restarts on SQLite, and operations whose terminal path a job owns (hand-off, cancel,
//! death, redelivery after the end).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opshost_api::{ErrorCode, OperationState};
use opshost_jobs::{EnqueueOptions, JobError, JobState, Jobs, WorkerError};
use opshost_runtime::{OperationRuntime, Owner};
use opshost_tests::jobs::{final_state, hand_off_handler, host, owning_job};
use serde_json::{Value, json};
use testing_participant::operations::TestingScenario;
use testing_participant::{ScenarioProgress, ScenarioResult};

fn owner() -> Owner {
    Owner {
        tenant: "t".into(),
        subject: "s".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_gets_its_payload_reports_progress_and_returns_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let (_runtime, jobs) = host(dir.path());
    jobs.worker("testing.work", 2, |job| async move {
        let n = job.payload_json()["n"].as_i64().unwrap_or_default();
        job.progress(ScenarioProgress {
            percent: 50,
            padding: None,
        })
        .await?;
        Ok::<_, WorkerError>(json!({ "text": format!("done {n}") }))
    })
    .unwrap();
    let job = jobs
        .enqueue("testing.work", json!({ "behaviour": "complete", "n": 7 }))
        .await
        .unwrap();
    let done = final_state(&jobs, &job.id).await;
    assert_eq!(done.state, JobState::Completed);
    assert_eq!(done.result, Some(json!({ "text": "done 7" })));
    assert_eq!(done.progress, Some(json!({ "percent": 50 })));
    assert_eq!(done.attempt, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_are_retried_after_a_growing_backoff_then_the_job_is_dead() {
    let dir = tempfile::tempdir().unwrap();
    let (_runtime, jobs) = host(dir.path());
    let starts = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&starts);
    jobs.worker("testing.work", 1, move |job| {
        seen.lock().unwrap().push(Instant::now());
        async move {
            Err::<Value, _>(WorkerError::new(format!(
                "attempt {} failed",
                job.attempt()
            )))
        }
    })
    .unwrap();
    let job = jobs
        .enqueue("testing.work", json!({ "behaviour": "fail" }))
        .await
        .unwrap();
    let dead = final_state(&jobs, &job.id).await;
    assert_eq!((dead.state, dead.attempt), (JobState::Dead, 3));
    let error = dead.error.unwrap();
    assert_eq!(error.code, ErrorCode::HandlerFailed);
    assert_eq!(error.message, "attempt 3 failed");
    let starts = starts.lock().unwrap().clone();
    assert_eq!(starts.len(), 3, "maxAttempts is 3");
    // initialMs 40, doubled per retry, of which at least half is kept.
    assert!(starts[1] - starts[0] >= Duration::from_millis(20));
    assert!(starts[2] - starts[1] >= Duration::from_millis(40));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_retries_a_dead_job_with_fresh_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let (_runtime, jobs) = host(dir.path());
    let calls = Arc::new(Mutex::new(0));
    let counted = Arc::clone(&calls);
    jobs.worker("testing.work", 1, move |_job| {
        let call = {
            let mut calls = counted.lock().unwrap();
            *calls += 1;
            *calls
        };
        async move {
            if call <= 3 {
                Err(WorkerError::new("not yet"))
            } else {
                Ok(json!({ "text": "finally" }))
            }
        }
    })
    .unwrap();
    let job = jobs
        .enqueue("testing.work", json!({ "behaviour": "fail" }))
        .await
        .unwrap();
    assert_eq!(final_state(&jobs, &job.id).await.state, JobState::Dead);
    let retried = jobs.retry(&job.id).await.unwrap();
    assert_eq!((retried.state, retried.attempt), (JobState::Queued, 0));
    let done = final_state(&jobs, &job.id).await;
    assert_eq!((done.state, done.attempt), (JobState::Completed, 1));
    let again = jobs.retry(&job.id).await.unwrap_err();
    assert!(
        matches!(
            again,
            JobError::WrongState {
                state: "completed",
                ..
            }
        ),
        "{again}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_past_the_queue_timeout_is_stopped_and_fails_with_limit_exceeded() {
    let dir = tempfile::tempdir().unwrap();
    let (_runtime, jobs) = host(dir.path());
    jobs.worker("testing.quick", 1, |_job| async move {
        std::future::pending::<Result<Value, WorkerError>>().await
    })
    .unwrap();
    let job = jobs
        .enqueue("testing.quick", json!({ "behaviour": "hang" }))
        .await
        .unwrap();
    let dead = final_state(&jobs, &job.id).await;
    assert_eq!((dead.state, dead.attempt), (JobState::Dead, 1));
    let error = dead.error.unwrap();
    assert_eq!(error.code, ErrorCode::LimitExceeded);
    assert!(
        error.message.contains("timeoutMs (300 ms)"),
        "{}",
        error.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_payload_is_refused_at_enqueue_with_its_schema_issues() {
    let dir = tempfile::tempdir().unwrap();
    let (_runtime, jobs) = host(dir.path());
    let error = jobs
        .enqueue("testing.work", json!({ "behaviour": "dance", "n": "x" }))
        .await
        .unwrap_err();
    let JobError::Invalid {
        what,
        queue,
        issues,
    } = &error
    else {
        panic!("expected schema issues, got {error}");
    };
    assert_eq!((*what, queue.as_str()), ("payload", "testing.work"));
    let pointers: Vec<&str> = issues.iter().map(|i| i.pointer.as_str()).collect();
    assert!(
        pointers.contains(&"/behaviour") && pointers.contains(&"/n"),
        "{issues:?}"
    );
    assert_eq!(error.code(), ErrorCode::InvalidInput);
    let unknown = jobs.enqueue("no.such.queue", json!({})).await.unwrap_err();
    assert!(matches!(unknown, JobError::UnknownQueue(_)), "{unknown}");
    let listed = jobs.list(&Default::default()).await.unwrap();
    assert!(listed.items.is_empty(), "nothing was enqueued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_that_breaks_the_queue_schema_fails_the_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let (_runtime, jobs) = host(dir.path());
    jobs.worker("testing.work", 1, |_job| async move {
        Ok::<_, WorkerError>(json!({ "text": 5 }))
    })
    .unwrap();
    let job = jobs
        .enqueue("testing.work", json!({ "behaviour": "bad-result" }))
        .await
        .unwrap();
    let dead = final_state(&jobs, &job.id).await;
    assert_eq!(dead.state, JobState::Dead);
    let error = dead.error.unwrap();
    assert_eq!(error.code, ErrorCode::InvalidInput);
    assert!(
        error.message.contains("result of queue `testing.work`"),
        "{}",
        error.message
    );
    assert!(error.message.contains("/text"), "{}", error.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_enqueued_before_a_restart_run_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let (_runtime, jobs) = host(dir.path());
        let job = jobs
            .enqueue("testing.work", json!({ "behaviour": "complete", "n": 1 }))
            .await
            .unwrap();
        jobs.stop();
        job.id
    };
    let (_runtime, jobs) = host(dir.path());
    assert_eq!(jobs.get(&id).await.unwrap().state, JobState::Queued);
    jobs.worker("testing.work", 1, |_job| async move {
        Ok::<_, WorkerError>(json!({ "text": "after restart" }))
    })
    .unwrap();
    let done = final_state(&jobs, &id).await;
    assert_eq!(done.result, Some(json!({ "text": "after restart" })));
}

/// The worker of `testing.owned`: resumes the operation and does what the payload says.
fn owned_worker(jobs: &Jobs, calls: Arc<Mutex<u32>>) {
    jobs.worker("testing.owned", 2, move |job| {
        *calls.lock().unwrap() += 1;
        async move {
            let control = job.control::<TestingScenario>().await?;
            match job.payload_json()["behaviour"].as_str() {
                Some("fail") => Err(WorkerError::new(format!(
                    "warehouse offline (attempt {})",
                    job.attempt()
                ))),
                Some("await-cancel") => {
                    control
                        .progress(ScenarioProgress {
                            percent: 20,
                            padding: None,
                        })
                        .await?;
                    job.cancelled().await;
                    control.acknowledge_cancel().await?;
                    Err(WorkerError::new("stopped on request"))
                }
                _ => {
                    control
                        .progress(ScenarioProgress {
                            percent: 90,
                            padding: None,
                        })
                        .await?;
                    control
                        .complete(ScenarioResult {
                            note: format!("completed by job {}", job.id()),
                            signals: vec![],
                        })
                        .await?;
                    Ok(json!(null))
                }
            }
        }
    })
    .unwrap();
}

async fn start(runtime: &OperationRuntime, scenario: &str) -> String {
    runtime
        .start(
            owner(),
            "Testing.Scenario",
            None,
            json!({ "scenario": scenario }),
        )
        .await
        .unwrap()
        .snapshot
        .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_hands_its_operation_to_a_job_whose_worker_completes_it() {
    let dir = tempfile::tempdir().unwrap();
    let (runtime, jobs) = host(dir.path());
    hand_off_handler(&runtime);
    owned_worker(&jobs, Arc::default());
    let id = start(&runtime, "complete").await;
    let terminal = runtime
        .wait(&id, Some(Duration::from_secs(15)))
        .await
        .unwrap();
    assert_eq!(terminal.state, OperationState::Completed, "{terminal:?}");
    assert_eq!(terminal.progress, Some(json!({ "percent": 90 })));
    let job = owning_job(&jobs, &id).await;
    let note = terminal.output.unwrap()["note"].clone();
    assert_eq!(note, json!(format!("completed by job {}", job.id)));
    assert_eq!(final_state(&jobs, &job.id).await.state, JobState::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_operation_cancels_its_job_and_the_worker_sees_it() {
    let dir = tempfile::tempdir().unwrap();
    let (runtime, jobs) = host(dir.path());
    hand_off_handler(&runtime);
    owned_worker(&jobs, Arc::default());
    let id = start(&runtime, "await-cancel").await;
    let job = owning_job(&jobs, &id).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while runtime.get(&id).await.unwrap().progress != Some(json!({ "percent": 20 })) {
        assert!(Instant::now() < deadline, "the worker never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cancelled = runtime.cancel(&id).await.unwrap();
    assert_eq!(cancelled.state, OperationState::Cancelled);
    assert_eq!(
        cancelled.error.unwrap().message,
        "cancelled by caller",
        "the worker acknowledged"
    );
    let job = final_state(&jobs, &job.id).await;
    assert_eq!(job.state, JobState::Cancelled);
    assert_eq!(job.attempt, 1, "a cancelled job is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_job_fails_its_operation_with_the_jobs_last_error() {
    let dir = tempfile::tempdir().unwrap();
    let (runtime, jobs) = host(dir.path());
    hand_off_handler(&runtime);
    owned_worker(&jobs, Arc::default());
    let id = start(&runtime, "fail").await;
    let terminal = runtime
        .wait(&id, Some(Duration::from_secs(15)))
        .await
        .unwrap();
    assert_eq!(terminal.state, OperationState::Failed);
    let error = terminal.error.unwrap();
    assert_eq!(error.code, ErrorCode::HandlerFailed);
    assert_eq!(
        error.message, "warehouse offline (attempt 2)",
        "testing.owned allows 2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_operation_already_ended_is_done_without_running_its_worker() {
    let dir = tempfile::tempdir().unwrap();
    let (runtime, jobs) = host(dir.path());
    let id = runtime
        .accept_as(owner(), "Testing.Scenario", Some("ended-op".into()), None)
        .await
        .unwrap()
        .snapshot
        .id;
    runtime
        .attach(&id)
        .await
        .unwrap()
        .complete(json!({ "note": "finished elsewhere" }))
        .await
        .unwrap();
    let calls = Arc::new(Mutex::new(0));
    owned_worker(&jobs, Arc::clone(&calls));
    let options = EnqueueOptions {
        operation: Some(id.clone()),
        ..EnqueueOptions::default()
    };
    let job = jobs
        .enqueue_with(
            "testing.owned",
            json!({ "behaviour": "finish-operation" }),
            options,
        )
        .await
        .unwrap();
    let done = final_state(&jobs, &job.id).await;
    assert_eq!(done.state, JobState::Completed);
    assert_eq!(*calls.lock().unwrap(), 0, "the worker never ran");
    assert_eq!(
        runtime.get(&id).await.unwrap().state,
        OperationState::Completed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_a_killed_host_process_runs_again_when_the_host_comes_back() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_job_host"))
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("job_host starts");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let id = line.trim().to_owned();
    let marker = dir.path().join("worker-running");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the worker never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let (runtime, jobs) = host(dir.path());
    hand_off_handler(&runtime);
    let report = runtime
        .recover(|_| opshost_runtime::RestartPolicy::Retry { max_attempts: 3 })
        .await
        .unwrap();
    assert_eq!(report.owned_by_jobs, 1, "{report:?}");
    assert_eq!(report.retried, 0, "the job, not the handler, finishes it");
    owned_worker(&jobs, Arc::default());
    let terminal = runtime
        .wait(&id, Some(Duration::from_secs(15)))
        .await
        .unwrap();
    assert_eq!(terminal.state, OperationState::Completed, "{terminal:?}");
    assert_eq!(terminal.attempt, 1);
    let job = owning_job(&jobs, &id).await;
    let job = final_state(&jobs, &job.id).await;
    assert_eq!((job.state, job.attempt), (JobState::Completed, 2));
}

#[test]
fn a_job_whose_worker_vanished_is_redelivered_once_its_lease_runs_out() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn opshost_jobs::JobStore> = Arc::new(opshost_jobs::MemoryJobStore::new());
    let runtime = |store: &Arc<dyn opshost_jobs::JobStore>| {
        let (operations, _) = host(dir.path());
        Jobs::new(&operations, Arc::clone(store), opshost_tests::jobs::CONFIG).unwrap()
    };
    // The first worker runs on a tokio runtime of its own, which is then dropped with every
    // task on it, as a process that dies mid-job.
    let doomed = tokio::runtime::Runtime::new().unwrap();
    let started = Arc::new(std::sync::Barrier::new(2));
    let id = doomed.block_on(async {
        let jobs = runtime(&store);
        let running = Arc::clone(&started);
        jobs.worker("testing.work", 1, move |_job| {
            running.wait();
            std::future::pending::<Result<Value, WorkerError>>()
        })
        .unwrap();
        let job = jobs
            .enqueue("testing.work", json!({ "behaviour": "hang" }))
            .await
            .unwrap();
        job.id
    });
    started.wait();
    doomed.shutdown_background();

    let survivor = tokio::runtime::Runtime::new().unwrap();
    survivor.block_on(async {
        let jobs = runtime(&store);
        assert_eq!(jobs.get(&id).await.unwrap().state, JobState::Running);
        jobs.worker("testing.work", 1, |job| async move {
            Ok::<_, WorkerError>(json!({ "text": format!("attempt {}", job.attempt()) }))
        })
        .unwrap();
        let done = final_state(&jobs, &id).await;
        assert_eq!((done.state, done.attempt), (JobState::Completed, 2));
        assert_eq!(done.result, Some(json!({ "text": "attempt 2" })));
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_off_to_an_unknown_queue_or_with_a_bad_payload_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (runtime, jobs) = host(dir.path());
    let id = runtime
        .accept_as(
            owner(),
            "Testing.Scenario",
            Some("refused-hand-off".into()),
            None,
        )
        .await
        .unwrap()
        .snapshot
        .id;
    let run = runtime.attach(&id).await.unwrap();
    let unknown = run
        .hand_off("no.such.queue", json!({ "behaviour": "complete" }))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), ErrorCode::InvalidInput);
    assert!(unknown.to_string().contains("no.such.queue"), "{unknown}");
    let invalid = run
        .hand_off("testing.owned", json!({ "behaviour": 5 }))
        .await
        .unwrap_err();
    let opshost_runtime::ServerError::InvalidInput { issues, .. } = &invalid else {
        panic!("expected schema issues, got {invalid}");
    };
    assert_eq!(issues[0].pointer, "/behaviour");
    assert!(
        jobs.list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let snapshot = runtime.get(&id).await.unwrap();
    assert_eq!(
        (snapshot.state, snapshot.revision),
        (OperationState::Pending, 1)
    );
}
