//! `/metrics` beyond operations: jobs by queue and state, attempts started here, and the CPU
//! time and peak memory of each run, scraped from a real server after a handed-off operation.

use std::time::Duration;

use opshost_tests::net::{TestServer, metric, metric_if_shown};
use opshost_tests::{load, run_scenario, testing_jobs_deployment};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_and_what_runs_used_are_exported_after_a_handed_off_operation() {
    let host = load(&testing_jobs_deployment(Duration::from_millis(300)));
    let server = TestServer::start_with_jobs(host.runtime(), host.jobs()).await;
    let done = run_scenario(
        &host,
        json!({ "scenario": "hand-off", "job": "finish-operation" }),
    )
    .await;
    assert_eq!(
        done.state,
        opshost_api::OperationState::Completed,
        "{done:?}"
    );
    // The job's end is recorded after the operation's.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let completed = r#"opshost_jobs{queue="testing.owned",state="completed"}"#;
    while metric_if_shown(&server.url, completed).await != Some(1.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job never completed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let url = &server.url;
    assert_eq!(
        metric(url, r#"opshost_job_attempts_total{queue="testing.owned"}"#).await,
        1.0
    );
    let handler = r#"{kind="handler",name="Testing.Scenario"}"#;
    let worker = r#"{kind="worker",name="testing.owned"}"#;
    for labels in [handler, worker] {
        let runs = metric(url, &format!("opshost_run_cpu_seconds_count{labels}")).await;
        assert_eq!(runs, 1.0, "{labels}");
        let memory = metric(url, &format!("opshost_run_peak_memory_bytes_sum{labels}")).await;
        assert!(memory > 0.0, "{labels}: {memory}");
    }
    assert_eq!(metric(url, "opshost_log_lines_dropped_total").await, 0.0);
}
