//! Host memory per in-flight operation: the growth of the process's resident set while
//! 10,000 operations wait, divided by 10,000.
//!
//! - `native`: a native handler that marks its operation running and waits for cancellation:
//!   the runtime's own cost (task, live entry, stored snapshot, event log).
//! - `wasm`: the test guest's `await-cancel` scenario, each in its own store and instance,
//!   blocked in `next-signal`.
//!
//! The host's part is what lives on the Rust heap (counted exactly by a counting global
//! allocator: runtime entries, stores, WASI contexts, tasks). The guest's own part is what
//! wasmtime maps outside the heap for each instance (its linear memory, instance state and
//! execution stack, from the pooling allocator), seen as the rest of the resident growth.
//!
//! Each mode runs in a child process of its own (this binary again), so one mode's freed
//! memory does not hide the next one's growth. `cargo bench -p opshost-tests --bench memory`;
//! `BENCH_OPS` sets the number of waiting operations (default 10000).

use std::alloc::{GlobalAlloc, Layout};

use mimalloc::MiMalloc;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use opshost_api::{ErrorInfo, OperationState, Snapshot};
use opshost_runtime::store::MemoryStore;
use opshost_runtime::{OperationHandler, OperationRuntime, Owner, Run};
use opshost_tests::{env_number, load, testing_contract, testing_deployment};
use serde_json::{Value, json};

const KIB: f64 = 1024.0;

/// mimalloc (as in `opshost serve`), counting the bytes live on the heap.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to `MiMalloc` unchanged; only a counter is updated beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { MiMalloc.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `dealloc` is passed on as is.
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `realloc` is passed on as is.
        unsafe { MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn main() {
    match std::env::var("MEMORY_MODE") {
        Ok(mode) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            runtime.block_on(measure(&mode));
        }
        Err(_) => {
            println!(
                "{:<8} {:>8} {:>14} {:>15} {:>20} {:>21}",
                "mode",
                "waiting",
                "RSS delta MiB",
                "RSS per op KiB",
                "host heap per op KiB",
                "guest rest per op KiB"
            );
            for mode in ["native", "wasm"] {
                let exe = std::env::current_exe().expect("this bench's path");
                let status = Command::new(exe)
                    .env("MEMORY_MODE", mode)
                    .status()
                    .expect("the bench's child process starts");
                assert!(status.success(), "mode {mode} failed: {status}");
            }
        }
    }
}

/// Marks the operation running and waits until cancellation is requested.
struct Waiting;

impl OperationHandler for Waiting {
    fn run(
        &self,
        run: Arc<Run>,
        _snapshot: Snapshot,
        _input: Option<Value>,
    ) -> BoxFuture<'static, Result<(), ErrorInfo>> {
        Box::pin(async move {
            run.started().await.map_err(|e| e.to_info())?;
            run.cancellation().cancelled().await;
            run.acknowledge_cancel().await.map_err(|e| e.to_info())?;
            Ok(())
        })
    }
}

async fn measure(mode: &str) {
    let count = env_number("BENCH_OPS", 10_000);
    let (runtime, _host) = match mode {
        "native" => {
            let runtime = OperationRuntime::builder(testing_contract())
                .store(Arc::new(MemoryStore::new()))
                .handler("Testing.Scenario", Arc::new(Waiting))
                .build();
            (runtime, None)
        }
        _ => {
            let mut config = testing_deployment(Duration::from_secs(5));
            config.max_concurrent_operations = count;
            let host = load(&config);
            (host.runtime().clone(), Some(host))
        }
    };
    // Warm up: allocator arenas, the compiled code's pages, the first instance.
    let warm = start_waiting(&runtime).await;
    until_running(&runtime, 1).await;
    runtime
        .cancel(&warm)
        .await
        .unwrap_or_else(|e| panic!("cancel: {e}"));
    let before = Resident::read();
    for _ in 0..count {
        start_waiting(&runtime).await;
    }
    until_running(&runtime, count).await;
    let after = Resident::read();
    let rss = after.rss as f64 - before.rss as f64;
    let heap = after.heap as f64 - before.heap as f64;
    let per_op = |bytes: f64| bytes / KIB / count as f64;
    println!(
        "{mode:<8} {count:>8} {:>14.1} {:>15.1} {:>20.1} {:>21.1}",
        rss / KIB / KIB,
        per_op(rss),
        per_op(heap),
        per_op((rss - heap).max(0.0)),
    );
}

/// Starts one operation that waits until cancelled; returns its id.
async fn start_waiting(runtime: &OperationRuntime) -> String {
    let input = json!({ "scenario": "await-cancel" });
    runtime
        .start(Owner::default(), "Testing.Scenario", None, input)
        .await
        .unwrap_or_else(|e| panic!("start: {e}"))
        .snapshot
        .id
}

/// Waits until `count` operations are running.
async fn until_running(runtime: &OperationRuntime, count: usize) {
    loop {
        let counts = runtime
            .count_by_state()
            .await
            .unwrap_or_else(|e| panic!("count: {e}"));
        let running: u64 = counts
            .iter()
            .filter(|c| c.state == OperationState::Running)
            .map(|c| c.count)
            .sum();
        if running as usize >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Resident bytes of the process, and bytes live on its Rust heap.
struct Resident {
    rss: u64,
    heap: u64,
}

impl Resident {
    fn read() -> Self {
        let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
        let pages: u64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|field| field.parse().ok())
            .expect("resident pages in /proc/self/statm");
        Self {
            rss: pages * 4096,
            heap: LIVE.load(Ordering::Relaxed) as u64,
        }
    }
}
