//! Jobs on SQLite for the jobs tests and the `job_host` binary: the testing contract's
//! runtime and jobs on one file, a native `Testing.Scenario` handler that hands its
//! operation to a `testing.owned` job, and waits on jobs.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opshost_jobs::{JobRecord, Jobs, JobsConfig};
use opshost_runtime::{OperationRuntime, RuntimeConfig};
use opshost_store_sqlite::SqliteStore;
use serde_json::json;
use testing_participant::ScenarioProgress;
use testing_participant::operations::TestingScenario;

/// Short leases, so that a dead worker's job comes back within a second.
pub const CONFIG: JobsConfig = JobsConfig {
    lease: Duration::from_millis(900),
    poll: Duration::from_millis(50),
};

/// A runtime of the testing contract and its jobs, both on one SQLite file in `dir`.
pub fn host(dir: &Path) -> (OperationRuntime, Jobs) {
    let store = Arc::new(SqliteStore::open(dir).expect("the store opens"));
    let config = RuntimeConfig {
        cancel_grace: Duration::from_secs(2),
        ..RuntimeConfig::default()
    };
    let runtime = crate::testing_runtime(store.clone(), config);
    let jobs = Jobs::new(&runtime, store, CONFIG).expect("the jobs service starts");
    (runtime, jobs)
}

/// Serves `Testing.Scenario` with a native handler that reports 10 %, then hands the
/// operation to a `testing.owned` job whose behaviour follows the input's scenario (`fail`,
/// `await-cancel`, otherwise `finish-operation`).
pub fn hand_off_handler(runtime: &OperationRuntime) {
    runtime
        .operation::<TestingScenario>()
        .serve(|control, input| async move {
            control.started().await?;
            control
                .progress(ScenarioProgress {
                    percent: 10,
                    padding: None,
                })
                .await?;
            let behaviour = match input.scenario.to_string().as_str() {
                "fail" => "fail",
                "await-cancel" => "await-cancel",
                _ => "finish-operation",
            };
            control
                .hand_off("testing.owned", json!({ "behaviour": behaviour }))
                .await?;
            Ok(())
        });
}

/// The job once it is final (completed, dead or cancelled); panics after 20 s.
pub async fn final_state(jobs: &Jobs, id: &str) -> JobRecord {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let job = jobs.get(id).await.expect("the job exists");
        if job.state.is_final() {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} still {:?}", job.state);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The job that owns `operation`, once there is one; panics after 10 s.
pub async fn owning_job(jobs: &Jobs, operation: &str) -> JobRecord {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page = jobs.list(&Default::default()).await.expect("jobs list");
        if let Some(job) = page
            .items
            .into_iter()
            .find(|job| job.operation.as_deref() == Some(operation))
        {
            return job;
        }
        assert!(Instant::now() < deadline, "no job owns {operation}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
