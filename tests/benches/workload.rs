//! The common workload of long-running operations, over HTTP, durable and not, against the
//! disk's own sync time, all in one run.
//!
//! Each operation is started under an idempotency key (`POST /v1/operations/Testing.Scenario`)
//! and its caller then waits for the result (`GET …/wait`). The guest (`test-handlers`,
//! scenario `progress-flood` with `count: 2`) reports progress three times and completes. The
//! host serves it over loopback HTTP, on the SQLite store (every accept and terminal state
//! `fdatasync`ed before anyone sees it) and on the in-memory store (no durability, the
//! baseline), first one caller at a time, then 64 closed-loop callers. Beside them, the probe:
//! `fdatasync` of a 4 KiB write in the SQLite store's directory, timed alone, which is the
//! floor a durable write cannot go below.
//!
//! The load generator is a keep-alive HTTP client in this process, on the same two cores as
//! the host, as a caller on the same machine would be.
//!
//! With `OPSHOST_TEST_POSTGRES` set, the same runs follow on PostgreSQL (a fresh database on
//! that server).
//!
//! `cargo bench -p opshost-tests --bench workload`. `WORKLOAD_SEQUENTIAL` sets the sequential
//! operations per store (default 500), `WORKLOAD_OPS` those of the concurrent run (default
//! 6,000) and `WORKLOAD_CALLERS` its callers (default 64).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use opshost_runtime::store::{MemoryStore, OperationStore};
use opshost_sandbox::WasmHost;
use opshost_server::ServerConfig;
use opshost_store_postgres::PostgresStore;
use opshost_store_sqlite::SqliteStore;
use opshost_tests::net::{TestServer, token};
use opshost_tests::{env_number, testing_deployment};
use serde_json::{Value, json};

/// Latencies of one run (start to result, and of the start alone), sorted, and how long it
/// took.
struct Run {
    latencies: Vec<Duration>,
    starts: Vec<Duration>,
    elapsed: Duration,
}

impl Run {
    fn at(&self, q: f64) -> Duration {
        quantile(&self.latencies, q)
    }

    fn per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let last = sorted.len().saturating_sub(1);
    sorted[((sorted.len() as f64 * q) as usize).min(last)]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// A caller of one host: its URL, token and connection pool, and the next key.
#[derive(Clone)]
struct Caller {
    http: reqwest::Client,
    url: String,
    token: String,
    keys: Arc<AtomicUsize>,
}

impl Caller {
    /// Starts one operation under a fresh key and waits for its result; answers how long that
    /// took, and how long the start alone.
    async fn one(&self) -> (Duration, Duration) {
        let key = format!("w-{}", self.keys.fetch_add(1, Ordering::Relaxed));
        let began = Instant::now();
        let started: Value = self
            .http
            .post(format!("{}/v1/operations/Testing.Scenario", self.url))
            .bearer_auth(&self.token)
            .header("idempotency-key", &key)
            .json(&json!({ "scenario": "progress-flood", "count": 2 }))
            .send()
            .await
            .unwrap_or_else(|e| panic!("start: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("start answer: {e}"));
        let accepted = began.elapsed();
        let id = started["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no id: {started}"));
        let done: Value = self
            .http
            .get(format!("{}/v1/operations/{id}/wait?timeout=30", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap_or_else(|e| panic!("wait: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("wait answer: {e}"));
        assert_eq!(done["state"], "completed", "{done}");
        (began.elapsed(), accepted)
    }

    /// `operations` operations from `callers` closed-loop callers.
    async fn run(&self, operations: usize, callers: usize) -> Run {
        let left = Arc::new(AtomicUsize::new(operations));
        let began = Instant::now();
        let tasks: Vec<_> = (0..callers)
            .map(|_| {
                let (caller, left) = (self.clone(), Arc::clone(&left));
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    while left
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                        .is_ok()
                    {
                        latencies.push(caller.one().await);
                    }
                    latencies
                })
            })
            .collect();
        let (mut latencies, mut starts) = (Vec::new(), Vec::new());
        for task in tasks {
            for (latency, start) in task.await.unwrap_or_else(|e| panic!("a caller: {e}")) {
                latencies.push(latency);
                starts.push(start);
            }
        }
        let elapsed = began.elapsed();
        latencies.sort();
        starts.sort();
        Run {
            latencies,
            starts,
            elapsed,
        }
    }
}

/// `fdatasync` of a 4 KiB write in `dir`, `times` times; sorted.
fn sync_probe(dir: &std::path::Path, times: usize) -> Vec<Duration> {
    let mut file = std::fs::File::create(dir.join("probe")).expect("a probe file");
    let page = vec![7u8; 4096];
    let mut times_taken: Vec<Duration> = (0..times)
        .map(|_| {
            file.write_all(&page).expect("a write");
            let began = Instant::now();
            file.sync_data().expect("fdatasync");
            began.elapsed()
        })
        .collect();
    times_taken.sort();
    times_taken
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(bench());
}

async fn bench() {
    let sequential = env_number("WORKLOAD_SEQUENTIAL", 500);
    let operations = env_number("WORKLOAD_OPS", 6000);
    let callers = env_number("WORKLOAD_CALLERS", 64).max(1);
    let dir = tempfile::tempdir().expect("a data directory");
    let probe = sync_probe(dir.path(), 400);
    let sync_p50 = probe[probe.len() / 2];
    println!(
        "fdatasync of 4 KiB in the data directory: p50 {:.3} ms, p99 {:.3} ms",
        ms(sync_p50),
        ms(probe[probe.len() * 99 / 100])
    );
    println!(
        "{:<8} {:>8} {:>7} {:>9} {:>9} {:>11} {:>9} {:>10}",
        "store", "callers", "ops", "p50 ms", "p99 ms", "start p50", "ops/s", "vs memory"
    );
    let mut memory: Option<(Run, Run)> = None;
    let mut stores = vec!["memory", "sqlite"];
    if std::env::var(opshost_tests::postgres::SERVER_VAR).is_ok() {
        stores.push("postgres");
    }
    for name in stores {
        let store: Arc<dyn OperationStore> = match name {
            "memory" => Arc::new(MemoryStore::new()),
            "sqlite" => {
                Arc::new(SqliteStore::open(dir.path().join("store")).expect("an SQLite store"))
            }
            _ => {
                let url = opshost_tests::postgres::fresh_database().await;
                Arc::new(
                    PostgresStore::connect(&url)
                        .await
                        .expect("a PostgreSQL store"),
                )
            }
        };
        let host = WasmHost::builder(&testing_deployment(Duration::from_secs(5)))
            .operations(store)
            .build()
            .unwrap_or_else(|e| panic!("testing deployment: {e}"));
        let config = ServerConfig {
            max_in_flight: 100_000,
            max_connections_per_client: 100_000,
            ..ServerConfig::default()
        };
        let server = TestServer::start_with(host.runtime(), config).await;
        let caller = Caller {
            http: opshost_tests::net::http(),
            url: server.url.clone(),
            token: token(&["testing.run"]),
            keys: Arc::new(AtomicUsize::new(0)),
        };
        caller.run(sequential / 5, 1).await;
        let one = caller.run(sequential, 1).await;
        caller.run(operations / 10, callers).await;
        let many = caller.run(operations, callers).await;
        let (base_one, base_many) = match &memory {
            Some((one, many)) => (one.per_second(), many.per_second()),
            None => (one.per_second(), many.per_second()),
        };
        for (run, count, base) in [(&one, 1, base_one), (&many, callers, base_many)] {
            println!(
                "{name:<8} {count:>8} {:>7} {:>9.3} {:>9.3} {:>11.3} {:>9.0} {:>10.2}",
                run.latencies.len(),
                ms(run.at(0.5)),
                ms(run.at(0.99)),
                ms(quantile(&run.starts, 0.5)),
                run.per_second(),
                run.per_second() / base
            );
        }
        match &memory {
            None => memory = Some((one, many)),
            Some((memory_one, _)) if name == "sqlite" => {
                let budget = memory_one.at(0.5) + 2 * sync_p50;
                println!(
                    "sequential p50 on SQLite {:.3} ms against a budget of {:.3} ms (memory p50 + 2 × fdatasync p50): {:.2}×",
                    ms(one.at(0.5)),
                    ms(budget),
                    one.at(0.5).as_secs_f64() / budget.as_secs_f64()
                );
            }
            Some(_) => {}
        }
    }
}
