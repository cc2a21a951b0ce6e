//! The operator routes under `/v1/jobs` through the real client: list, get, retry and
//! cancel, only for callers with the admin capability.

use opshost_api::ErrorCode;
use opshost_client::{Client, ClientError, JobQuery, JobState};
use opshost_jobs::{Jobs, WorkerError};
use opshost_tests::jobs::{final_state, host};
use opshost_tests::net::{TestServer, token};
use serde_json::{Value, json};

const ADMIN: &str = "opshost.admin";

async fn dead_job(jobs: &Jobs) -> String {
    jobs.worker("testing.work", 1, |job| async move {
        Err::<Value, _>(WorkerError::new(format!(
            "attempt {} failed",
            job.attempt()
        )))
    })
    .unwrap();
    let job = jobs
        .enqueue("testing.work", json!({ "behaviour": "fail" }))
        .await
        .unwrap();
    assert_eq!(final_state(jobs, &job.id).await.state, JobState::Dead);
    job.id
}

fn refused(error: ClientError) -> (u16, ErrorCode, Option<Value>) {
    match error {
        ClientError::Api {
            status,
            code,
            details,
            ..
        } => (status.as_u16(), code, details),
        other => panic!("expected a refusal, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_routes_need_the_admin_capability() {
    let dir = tempfile::tempdir().unwrap();
    let (runtime, jobs) = host(dir.path());
    let server = TestServer::start_with_jobs(&runtime, &jobs).await;
    let caller = Client::new(&server.url, token(&["testing.run"])).unwrap();
    let (status, code, details) = refused(caller.jobs(&JobQuery::default()).await.unwrap_err());
    assert_eq!((status, code), (403, ErrorCode::MissingCapability));
    assert_eq!(details.unwrap()["capability"], ADMIN);
    let anonymous = opshost_tests::net::http()
        .get(format!("{}/v1/jobs", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_lists_gets_and_retries_a_dead_job() {
    let dir = tempfile::tempdir().unwrap();
    let (runtime, jobs) = host(dir.path());
    let id = dead_job(&jobs).await;
    let server = TestServer::start_with_jobs(&runtime, &jobs).await;
    let admin = Client::new(&server.url, token(&[ADMIN])).unwrap();
    let dead = admin
        .jobs(&JobQuery {
            state: Some(JobState::Dead),
            ..JobQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(dead.items.len(), 1);
    assert_eq!(dead.items[0].id, id);
    let job = admin.job(&id).await.unwrap();
    assert_eq!(job.error.unwrap().message, "attempt 3 failed");
    let retried = admin.retry_job(&id).await.unwrap();
    assert_eq!((retried.state, retried.attempt), (JobState::Queued, 0));
    let missing = refused(admin.job("no-such-job").await.unwrap_err());
    assert_eq!((missing.0, missing.1), (404, ErrorCode::JobNotFound));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_cancels_a_waiting_job_and_queues_it_again_once() {
    let dir = tempfile::tempdir().unwrap();
    let (runtime, jobs) = host(dir.path());
    let waiting = jobs
        .enqueue("testing.owned", json!({ "behaviour": "complete" }))
        .await
        .unwrap();
    let server = TestServer::start_with_jobs(&runtime, &jobs).await;
    let admin = Client::new(&server.url, token(&[ADMIN])).unwrap();
    let cancelled = admin.cancel_job(&waiting.id).await.unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    let again = admin.retry_job(&waiting.id).await.unwrap();
    assert_eq!(
        again.state,
        JobState::Queued,
        "a cancelled job can be retried"
    );
    let bad = opshost_tests::net::http()
        .get(format!("{}/v1/jobs?state=sleeping", server.url))
        .bearer_auth(token(&[ADMIN]))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    let body: Value = bad.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sleeping"),
        "{body}"
    );
}
