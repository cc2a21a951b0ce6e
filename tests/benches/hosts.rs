//! Several hosts on one PostgreSQL database (`OPSHOST_TEST_POSTGRES`; `./dev bench` starts a
//! throwaway server). Each host is a runtime with a `PostgresStore` of its own, in this
//! process, on the same two cores.
//!
//! - **Throughput**: the trivial native handler (accept, started, completed), start→terminal
//!   from `BENCH_CONCURRENCY` closed-loop callers (default 64): first all on one host, then
//!   split evenly over two hosts, each caller starting and waiting on its own host.
//! - **Cross-host watch**: a handler on host A reports progress every 10 ms; one watcher on A
//!   (the baseline) and one on B time each progress event from the moment A's progress call
//!   began to its arrival. B hears of A's changes only through the database's notices.
//!
//! `cargo bench -p opshost-tests --bench hosts` (or `./dev bench`).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use opshost_api::{ErrorInfo, EventKind, Snapshot};
use opshost_runtime::{OperationHandler, OperationRuntime, Run, RuntimeConfig};
use opshost_store_postgres::PostgresStore;
use opshost_tests::bench::{Figures, measure, row, start, trivial_runtime};
use opshost_tests::{env_number, testing_contract, testing_runtime};
use serde_json::{Value, json};

/// Progress events per watched operation (`percent` 0..=99).
const TICKS: u64 = 100;

/// When each `percent` of the current operation was reported.
type Sent = Arc<Mutex<HashMap<u64, Instant>>>;

/// Reports progress `0..TICKS` every 10 ms, then completes.
struct Ticker {
    sent: Sent,
}

impl OperationHandler for Ticker {
    fn run(
        &self,
        run: Arc<Run>,
        _snapshot: Snapshot,
        _input: Option<Value>,
    ) -> BoxFuture<'static, Result<(), ErrorInfo>> {
        let sent = self.sent.clone();
        Box::pin(async move {
            run.started().await.map_err(|e| e.to_info())?;
            // Let both watchers attach before the first report.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut ticks = tokio::time::interval(Duration::from_millis(10));
            for percent in 0..TICKS {
                ticks.tick().await;
                sent.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(percent, Instant::now());
                run.progress(json!({ "percent": percent }))
                    .await
                    .map_err(|e| e.to_info())?;
            }
            run.complete(json!({ "note": "ticked" }))
                .await
                .map_err(|e| e.to_info())?;
            Ok(())
        })
    }
}

async fn store(url: &str) -> Arc<PostgresStore> {
    Arc::new(
        PostgresStore::connect(url)
            .await
            .unwrap_or_else(|e| panic!("postgres store: {e}")),
    )
}

/// A fresh database on the server named by `OPSHOST_TEST_POSTGRES`.
async fn database() -> String {
    opshost_tests::postgres::fresh_database().await
}

/// Each progress event's delay, from the progress call on A to its arrival at `watcher`.
async fn delays(watcher: OperationRuntime, id: String, sent: Sent) -> Vec<Duration> {
    let mut delays = Vec::new();
    let mut events = watcher.watch(&id, Some(0));
    while let Some(event) = events.next().await {
        let event = event.unwrap_or_else(|e| panic!("watch: {e}"));
        let arrived = Instant::now();
        if event.kind() != EventKind::Progress {
            continue;
        }
        let percent = event
            .snapshot()
            .progress
            .as_ref()
            .and_then(|p| p["percent"].as_u64())
            .unwrap_or_else(|| panic!("progress without percent: {event:?}"));
        let began = sent.lock().unwrap_or_else(|e| e.into_inner())[&percent];
        delays.push(arrived.duration_since(began));
    }
    delays
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let operations = env_number("BENCH_OPS", 4000);
    let concurrency = env_number("BENCH_CONCURRENCY", 64).max(2);
    let watched = env_number("BENCH_WATCHED", 5);

    println!("{operations} trivial operations from {concurrency} closed-loop callers");
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>10}",
        "hosts", "ops/s", "p50 µs", "p99 µs", "vs 1 host"
    );
    let one = trivial_runtime(store(&database().await).await);
    measure(&one, operations / 10, concurrency).await;
    let single = measure(&one, operations, concurrency).await;
    row("1 host", &single, &single);

    let url = database().await;
    let (a, b) = (
        trivial_runtime(store(&url).await),
        trivial_runtime(store(&url).await),
    );
    let half = concurrency / 2;
    tokio::join!(
        measure(&a, operations / 20, half),
        measure(&b, operations / 20, half)
    );
    let began = Instant::now();
    let (on_a, on_b) = tokio::join!(
        measure(&a, operations / 2, half),
        measure(&b, operations / 2, half)
    );
    let elapsed = began.elapsed();
    let both = Figures {
        per_second: operations as f64 / elapsed.as_secs_f64(),
        p50: on_a.p50.max(on_b.p50),
        p99: on_a.p99.max(on_b.p99),
    };
    row("2 hosts (sum)", &both, &single);
    row("  host A", &on_a, &single);
    row("  host B", &on_b, &single);

    let url = database().await;
    let sent: Sent = Arc::default();
    let a = OperationRuntime::builder(testing_contract())
        .store(store(&url).await)
        .handler("Testing.Scenario", Arc::new(Ticker { sent: sent.clone() }))
        .build();
    let b = testing_runtime(store(&url).await, RuntimeConfig::default());
    let (mut local, mut remote) = (Vec::new(), Vec::new());
    for _ in 0..watched {
        let id = start(&a).await.snapshot.id;
        let (here, there) = tokio::join!(
            delays(a.clone(), id.clone(), sent.clone()),
            delays(b.clone(), id, sent.clone())
        );
        local.extend(here);
        remote.extend(there);
        sent.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
    local.sort();
    remote.sort();
    println!(
        "\nprogress → watcher, {} events each ({watched} operations × {TICKS}, 10 ms apart)",
        remote.len()
    );
    println!(
        "{:<22} {:>10} {:>10} {:>10}",
        "watcher", "p50 µs", "p99 µs", "max µs"
    );
    for (name, delays) in [("on A (same host)", &local), ("on B (other host)", &remote)] {
        println!(
            "{:<22} {:>10.0} {:>10.0} {:>10.0}",
            name,
            quantile(delays, 0.50).as_secs_f64() * 1e6,
            quantile(delays, 0.99).as_secs_f64() * 1e6,
            delays.last().copied().unwrap_or_default().as_secs_f64() * 1e6
        );
    }
}
