//! Shared by the benches: a trivial native handler and a closed-loop start→terminal load.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use opshost_api::{ErrorInfo, OperationState, Snapshot};
use opshost_runtime::store::OperationStore;
use opshost_runtime::{Acceptance, OperationHandler, OperationRuntime, Owner, Run};
use serde_json::{Value, json};

use crate::testing_contract;

/// Marks the operation started and completes it at once.
pub struct Trivial;

impl OperationHandler for Trivial {
    fn run(
        &self,
        run: Arc<Run>,
        _snapshot: Snapshot,
        _input: Option<Value>,
    ) -> BoxFuture<'static, Result<(), ErrorInfo>> {
        Box::pin(async move {
            run.started().await.map_err(|e| e.to_info())?;
            run.complete(json!({ "note": "done" }))
                .await
                .map_err(|e| e.to_info())?;
            Ok(())
        })
    }
}

/// A runtime serving `Testing.Scenario` with [`Trivial`] on `store`.
pub fn trivial_runtime(store: Arc<dyn OperationStore>) -> OperationRuntime {
    OperationRuntime::builder(testing_contract())
        .store(store)
        .handler("Testing.Scenario", Arc::new(Trivial))
        .build()
}

/// Throughput and latency of one load.
#[derive(Clone, Copy)]
pub struct Figures {
    /// Operations per second.
    pub per_second: f64,
    /// Median start→terminal latency.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
}

/// `operations` start→terminal runs of `Testing.Scenario` (`scenario: complete`) from
/// `concurrency` closed-loop callers.
pub async fn measure(runtime: &OperationRuntime, operations: usize, concurrency: usize) -> Figures {
    measure_input(
        runtime,
        operations,
        concurrency,
        json!({ "scenario": "complete" }),
    )
    .await
}

/// [`measure`] with `input` as every operation's input.
pub async fn measure_input(
    runtime: &OperationRuntime,
    operations: usize,
    concurrency: usize,
    input: Value,
) -> Figures {
    let per_caller = (operations / concurrency).max(1);
    let started = Instant::now();
    let callers: Vec<_> = (0..concurrency)
        .map(|_| {
            let runtime = runtime.clone();
            let input = input.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_caller);
                for _ in 0..per_caller {
                    let begun = Instant::now();
                    let accepted = start_input(&runtime, input.clone()).await;
                    let terminal = runtime
                        .wait(&accepted.snapshot.id, None)
                        .await
                        .unwrap_or_else(|e| panic!("wait: {e}"));
                    assert_eq!(terminal.state, OperationState::Completed, "{terminal:?}");
                    latencies.push(begun.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(per_caller * concurrency);
    for caller in callers {
        latencies.extend(caller.await.unwrap_or_else(|e| panic!("caller: {e}")));
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Figures {
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    }
}

/// Starts `Testing.Scenario` (`scenario: complete`) for the bench's owner.
pub async fn start(runtime: &OperationRuntime) -> Acceptance {
    start_input(runtime, json!({ "scenario": "complete" })).await
}

/// Starts `Testing.Scenario` with `input` for the bench's owner.
pub async fn start_input(runtime: &OperationRuntime, input: Value) -> Acceptance {
    let owner = Owner {
        tenant: "bench".into(),
        subject: "bench".into(),
    };
    runtime
        .start(owner, "Testing.Scenario", None, input)
        .await
        .unwrap_or_else(|e| panic!("start: {e}"))
}

/// Prints one row of figures: ops/s, p50 and p99 in µs, and throughput against `baseline`.
pub fn row(name: &str, figures: &Figures, baseline: &Figures) {
    println!(
        "{:<22} {:>10.0} {:>10.0} {:>10.0} {:>10.2}",
        name,
        figures.per_second,
        figures.p50.as_secs_f64() * 1e6,
        figures.p99.as_secs_f64() * 1e6,
        figures.per_second / baseline.per_second
    );
}

/// CPU time this process has used so far (user and system, every thread).
pub fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}
