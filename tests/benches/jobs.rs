//! Jobs per second through enqueue → complete on the SQLite store against the in-memory job
//! store, measured in the same run.
//!
//! `BENCH_JOBS` jobs (default 4000) are enqueued by 64 concurrent callers while
//! `BENCH_WORKERS` native workers (default 32) complete them (each reports progress once);
//! the clock stops when no job is queued or running any more. `cargo bench -p opshost-tests
//! --bench jobs`.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use opshost_jobs::{JobFilter, JobState, JobStore, Jobs, JobsConfig, MemoryJobStore, WorkerError};
use opshost_runtime::RuntimeConfig;
use opshost_runtime::store::MemoryStore;
use opshost_store_sqlite::SqliteStore;
use opshost_tests::{env_number, testing_runtime};
use serde_json::json;

async fn unfinished(jobs: &Jobs) -> bool {
    for state in [JobState::Queued, JobState::Running] {
        let filter = JobFilter {
            state: Some(state),
            limit: 1,
            ..JobFilter::default()
        };
        let page = jobs
            .list(&filter)
            .await
            .unwrap_or_else(|e| panic!("list: {e}"));
        if !page.items.is_empty() {
            return true;
        }
    }
    false
}

async fn measure(store: Arc<dyn JobStore>, count: usize, workers: usize) -> f64 {
    let runtime = testing_runtime(Arc::new(MemoryStore::new()), RuntimeConfig::default());
    let config = JobsConfig {
        lease: Duration::from_secs(30),
        poll: Duration::from_millis(20),
    };
    let jobs = Jobs::new(&runtime, store, config).unwrap_or_else(|e| panic!("jobs: {e}"));
    jobs.worker("testing.work", workers, |job| async move {
        job.progress(json!({ "percent": 50 })).await?;
        Ok::<_, WorkerError>(json!({ "text": "done" }))
    })
    .unwrap_or_else(|e| panic!("worker: {e}"));
    let started = Instant::now();
    let callers: Vec<_> = (0..64)
        .map(|caller| {
            let jobs = jobs.clone();
            tokio::spawn(async move {
                for n in (caller..count).step_by(64) {
                    jobs.enqueue("testing.work", json!({ "behaviour": "complete", "n": n }))
                        .await
                        .unwrap_or_else(|e| panic!("enqueue: {e}"));
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap_or_else(|e| panic!("caller: {e}"));
    }
    while unfinished(&jobs).await {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let per_second = count as f64 / started.elapsed().as_secs_f64();
    jobs.stop();
    per_second
}

#[tokio::main]
async fn main() {
    let count = env_number("BENCH_JOBS", 4000);
    let workers = env_number("BENCH_WORKERS", 32);
    println!("{count} jobs enqueued by 64 callers, completed by {workers} workers");
    println!("{:<8} {:>10} {:>10}", "store", "jobs/s", "vs memory");
    let memory = measure(Arc::new(MemoryJobStore::new()), count, workers).await;
    println!("{:<8} {:>10.0} {:>10.2}", "memory", memory, 1.0);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temporary directory: {e}"));
    let sqlite = SqliteStore::open(dir.path()).unwrap_or_else(|e| panic!("sqlite store: {e}"));
    let durable = measure(Arc::new(sqlite), count, workers).await;
    println!(
        "{:<8} {:>10.0} {:>10.2}",
        "sqlite",
        durable,
        durable / memory
    );
}
