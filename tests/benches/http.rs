//! Start→terminal latency and throughput of one operation kind, in-process and over HTTP on
//! loopback, measured in the same run so the ratio is meaningful.
//!
//! The operation is `Testing.Scenario` with `scenario: complete`: a real wasm guest that
//! starts, reports progress and completes at once, so the figures are the host's overhead.
//!
//! - `in-process`: `OperationRuntime::start` then `wait`.
//! - `http start+wait`: the Rust client's `POST /v1/operations/{name}` then `GET .../wait`.
//! - `http prefer-wait`: one `POST` with `Prefer: wait=30`, answered with the terminal snapshot.
//! - `http get (floor)`: one authenticated `GET` of a finished operation, no guest: the cost of
//!   one request on this machine.
//!
//! `cargo bench -p opshost-tests --bench http` (or `./dev bench`). `BENCH_OPS` sets the
//! number of sequential operations per mode (default 400), `BENCH_CONCURRENCY` the callers of
//! the throughput run (default 16).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::future::Future;
use std::time::{Duration, Instant};

use opshost_client::{Client, StartOptions};
use opshost_runtime::{OperationRuntime, Owner};
use opshost_tests::net::{TENANT, TestServer, token};
use opshost_tests::{env_number, testing_host};
use serde_json::{Value, json};

fn input() -> Value {
    json!({ "scenario": "complete" })
}

/// One way of running an operation to its terminal state.
#[derive(Clone)]
enum Mode {
    InProcess(OperationRuntime),
    Http(Client),
    HttpPreferWait(Client),
    HttpGet(Client, String),
}

impl Mode {
    fn name(&self) -> &'static str {
        match self {
            Self::InProcess(_) => "in-process",
            Self::Http(_) => "http start+wait",
            Self::HttpPreferWait(_) => "http prefer-wait",
            Self::HttpGet(..) => "http get (floor)",
        }
    }

    async fn run_one(&self) {
        match self {
            Self::InProcess(runtime) => {
                let owner = Owner {
                    tenant: TENANT.into(),
                    subject: "bench".into(),
                };
                let accepted = runtime
                    .start(owner, "Testing.Scenario", None, input())
                    .await
                    .unwrap_or_else(|e| panic!("start: {e}"));
                let terminal = runtime
                    .wait(&accepted.snapshot.id, None)
                    .await
                    .unwrap_or_else(|e| panic!("wait: {e}"));
                assert!(terminal.is_terminal());
            }
            Self::Http(client) => {
                let accepted = client
                    .start("Testing.Scenario", &input(), &StartOptions::default())
                    .await
                    .unwrap_or_else(|e| panic!("start: {e}"));
                let terminal = client
                    .wait(&accepted.id)
                    .await
                    .unwrap_or_else(|e| panic!("wait: {e}"));
                assert!(terminal.is_terminal());
            }
            Self::HttpPreferWait(client) => {
                let options = StartOptions {
                    idempotency_key: None,
                    wait: Some(Duration::from_secs(30)),
                };
                let terminal = client
                    .start("Testing.Scenario", &input(), &options)
                    .await
                    .unwrap_or_else(|e| panic!("start: {e}"));
                assert!(terminal.is_terminal());
            }
            Self::HttpGet(client, id) => {
                let snapshot = client.get(id).await.unwrap_or_else(|e| panic!("get: {e}"));
                assert!(snapshot.is_terminal());
            }
        }
    }
}

struct Figures {
    p50: Duration,
    p99: Duration,
    per_second: f64,
}

async fn timed<F: Future<Output = ()>>(f: F) -> Duration {
    let started = Instant::now();
    f.await;
    started.elapsed()
}

async fn measure(mode: &Mode, operations: usize, concurrency: usize) -> Figures {
    for _ in 0..operations / 10 {
        mode.run_one().await;
    }
    let mut latencies = Vec::with_capacity(operations);
    for _ in 0..operations {
        latencies.push(timed(mode.run_one()).await);
    }
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];

    let per_caller = operations / concurrency.max(1);
    let elapsed = timed(async {
        let callers: Vec<_> = (0..concurrency)
            .map(|_| {
                let mode = mode.clone();
                tokio::spawn(async move {
                    for _ in 0..per_caller {
                        mode.run_one().await;
                    }
                })
            })
            .collect();
        for caller in callers {
            caller.await.unwrap_or_else(|e| panic!("caller: {e}"));
        }
    })
    .await;
    Figures {
        p50: at(0.50),
        p99: at(0.99),
        per_second: (per_caller * concurrency) as f64 / elapsed.as_secs_f64(),
    }
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

#[tokio::main]
async fn main() {
    let operations = env_number("BENCH_OPS", 400).max(10);
    let concurrency = env_number("BENCH_CONCURRENCY", 16).max(1);
    let host = testing_host(Duration::from_secs(5));
    let server = TestServer::start(host.runtime()).await;
    let client = Client::connect(&server.url, token(&["testing.run"]))
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let finished = client
        .start(
            "Testing.Scenario",
            &input(),
            &StartOptions {
                idempotency_key: None,
                wait: Some(Duration::from_secs(30)),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    let modes = [
        Mode::InProcess(host.runtime().clone()),
        Mode::Http(client.clone()),
        Mode::HttpPreferWait(client.clone()),
        Mode::HttpGet(client, finished.id),
    ];
    println!(
        "Testing.Scenario `complete`, {operations} sequential operations per mode, then {concurrency} concurrent callers"
    );
    println!(
        "{:<18} {:>10} {:>10} {:>12} {:>10} {:>10}",
        "mode", "p50 µs", "p99 µs", "ops/s", "p50 ×", "ops/s ×"
    );
    let mut baseline: Option<Figures> = None;
    for mode in &modes {
        let figures = measure(mode, operations, concurrency).await;
        let (latency_ratio, throughput_ratio) = match &baseline {
            Some(base) => (
                micros(figures.p50) / micros(base.p50),
                figures.per_second / base.per_second,
            ),
            None => (1.0, 1.0),
        };
        println!(
            "{:<18} {:>10.0} {:>10.0} {:>12.0} {:>10.2} {:>10.2}",
            mode.name(),
            micros(figures.p50),
            micros(figures.p99),
            figures.per_second,
            latency_ratio,
            throughput_ratio
        );
        if baseline.is_none() {
            baseline = Some(figures);
        }
    }
}
