//! Start→terminal throughput and latency on the SQLite store against the in-memory store,
//! measured in the same run.
//!
//! - `trivial`: a native handler that marks the operation started and completes it (three
//!   durable writes per operation: accept, started, completed) — the store's own cost.
//! - `wasm`: the real test guest (`scenario: complete`: started, progress, completed).
//!
//! Each mode runs `BENCH_OPS` operations (default 4000) from `BENCH_CONCURRENCY` closed-loop
//! callers (default 64), each starting an operation and waiting for its terminal snapshot.
//! `BENCH_ONLY=trivial|wasm` runs one kind. After each SQLite run it prints the WAL's size,
//! which checkpoints keep bounded under load. `cargo bench -p opshost-tests --bench store` (or
//! `./dev bench`).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::Duration;

use opshost_runtime::OperationRuntime;
use opshost_runtime::store::{MemoryStore, OperationStore};
use opshost_sandbox::WasmHost;
use opshost_store_sqlite::{DATABASE_FILE, SqliteStore};
use opshost_tests::bench::{measure, row, trivial_runtime};
use opshost_tests::{env_number, testing_deployment};

fn wasm_runtime(store: Arc<dyn OperationStore>) -> (WasmHost, OperationRuntime) {
    let host = WasmHost::builder(&testing_deployment(Duration::from_secs(5)))
        .operations(store)
        .build()
        .unwrap_or_else(|e| panic!("testing deployment: {e}"));
    let runtime = host.runtime().clone();
    (host, runtime)
}

#[tokio::main]
async fn main() {
    let operations = env_number("BENCH_OPS", 4000);
    let concurrency = env_number("BENCH_CONCURRENCY", 64).max(1);
    println!(
        "{operations} operations per mode from {concurrency} closed-loop callers (start, then wait)"
    );
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>10}",
        "mode", "ops/s", "p50 µs", "p99 µs", "vs memory"
    );
    let only = std::env::var("BENCH_ONLY").ok();
    for kind in ["trivial", "wasm"] {
        if only.as_deref().is_some_and(|only| only != kind) {
            continue;
        }
        let mut baseline = None;
        for store_name in ["memory", "sqlite"] {
            let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temporary directory: {e}"));
            let store: Arc<dyn OperationStore> = match store_name {
                "memory" => Arc::new(MemoryStore::new()),
                _ => Arc::new(
                    SqliteStore::open(dir.path()).unwrap_or_else(|e| panic!("sqlite store: {e}")),
                ),
            };
            let wal = dir.path().join(format!("{DATABASE_FILE}-wal"));
            let (_host, runtime) = match kind {
                "trivial" => (None, trivial_runtime(store)),
                _ => {
                    let (host, runtime) = wasm_runtime(store);
                    (Some(host), runtime)
                }
            };
            measure(&runtime, operations / 10, concurrency).await;
            let figures = measure(&runtime, operations, concurrency).await;
            let base = *baseline.get_or_insert(figures);
            row(&format!("{kind} {store_name}"), &figures, &base);
            if let Ok(meta) = std::fs::metadata(&wal) {
                println!(
                    "{:<22} WAL file {:.1} MiB",
                    "",
                    meta.len() as f64 / 1048576.0
                );
            }
        }
    }
}
