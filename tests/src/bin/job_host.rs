//! A host process for the jobs crash test: on the SQLite store in the directory given, it
//! starts one `Testing.Scenario` operation (printing its id) whose handler hands it to a
//! `testing.owned` job, and runs a worker that reports 50 %, writes `worker-running` into the
//! directory and then hangs, so that the test can kill the process mid-job.

use std::path::PathBuf;

use anyhow::Context;
use opshost_jobs::WorkerError;
use opshost_runtime::Owner;
use opshost_tests::jobs::{hand_off_handler, host};
use serde_json::{Value, json};
use testing_participant::ScenarioProgress;
use testing_participant::operations::TestingScenario;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .context("usage: job_host DATA_DIR")?,
    );
    let (runtime, jobs) = host(&dir);
    hand_off_handler(&runtime);
    let marker = dir.join("worker-running");
    jobs.worker("testing.owned", 1, move |job| {
        let marker = marker.clone();
        async move {
            let control = job.control::<TestingScenario>().await?;
            control
                .progress(ScenarioProgress {
                    percent: 50,
                    padding: None,
                })
                .await?;
            std::fs::write(&marker, job.id()).map_err(|e| WorkerError::new(e.to_string()))?;
            std::future::pending::<Result<Value, WorkerError>>().await
        }
    })?;
    let owner = Owner {
        tenant: "t".into(),
        subject: "s".into(),
    };
    let accepted = runtime
        .start(
            owner,
            "Testing.Scenario",
            None,
            json!({ "scenario": "complete" }),
        )
        .await?;
    println!("{}", accepted.snapshot.id);
    std::future::pending::<()>().await;
    Ok(())
}
