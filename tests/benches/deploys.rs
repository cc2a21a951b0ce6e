//! Deploys under load: how long a new version takes to serve (check, compile, keep in the
//! store, swap), and the start latency of new operations while versions are swapped against
//! steady state, in one run.
//!
//! A host on SQLite serves `Testing.Scenario` with version `a` of the versioned test guest,
//! with no compiled-component cache, so that every deploy compiles.
//! - **Deploy to serving**: deploys alternating versions `b` and `a`, each timed from the call
//!   to its answer (the checks, Cranelift, the store and the swap) and to the end of the first
//!   operation started after it, which must run the new version.
//! - **Latency during swaps**: 16 closed-loop callers start an operation and wait for it; the
//!   time from each start to its result is kept: the accept (durable, with the choice of a
//!   version) and the run on that version. First a steady window, then a window of the same
//!   length with a deploy every 250 ms; p50 and p99 of both.
//!
//! `cargo bench -p opshost-tests --bench deploys` (or `./dev bench`); `BENCH_DEPLOYS` sets the
//! deploys of the first part (default 10), `BENCH_WINDOW_MS` each window (default 3,000).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use opshost_api::{DeployTarget, OperationState};
use opshost_sandbox::WasmHost;
use opshost_store_sqlite::SqliteStore;
use opshost_tests::bench::start;
use opshost_tests::{env_number, guest, testing_deployment};

const CALLERS: usize = 16;

fn target() -> DeployTarget {
    DeployTarget::Operation("Testing.Scenario".to_owned())
}

/// The version deployed `n`th: `b`, `a`, `b`, ...
fn version(n: usize) -> (&'static str, Vec<u8>) {
    let (letter, name) = if n.is_multiple_of(2) {
        ("b", "test_version_b")
    } else {
        ("a", "test_version_a")
    };
    let bytes = std::fs::read(guest(name)).expect("build the guests first: ./dev guests");
    (letter, bytes)
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// Starts one operation and waits for it; answers the version letter its note names.
async fn note_of_one(host: &WasmHost) -> String {
    let accepted = start(host.runtime()).await;
    let done = host
        .runtime()
        .wait(&accepted.snapshot.id, None)
        .await
        .expect("wait");
    assert_eq!(done.state, OperationState::Completed, "{done:?}");
    let note = done.output.expect("an output")["note"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    note.trim_start_matches("version ")
        .chars()
        .take(1)
        .collect()
}

/// Start-to-result latencies of closed-loop callers until `stop` is set.
async fn start_latencies(host: &WasmHost, stop: Arc<AtomicBool>) -> Vec<Duration> {
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (host, stop) = (host.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let begun = Instant::now();
                    let accepted = start(host.runtime()).await;
                    let done = host.runtime().wait(&accepted.snapshot.id, None).await;
                    assert_eq!(done.expect("wait").state, OperationState::Completed);
                    latencies.push(begun.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for caller in callers {
        latencies.extend(caller.await.expect("a caller"));
    }
    latencies.sort();
    latencies
}

fn main() {
    let deploys = env_number("BENCH_DEPLOYS", 10);
    let window = Duration::from_millis(env_number("BENCH_WINDOW_MS", 3_000) as u64);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let dir = tempfile::tempdir().expect("a data directory");
    let mut config = testing_deployment(Duration::from_secs(5));
    config.handlers[0].component = guest("test_version_a");
    config.max_concurrent_operations = CALLERS * 2;
    runtime.block_on(async {
        let host = WasmHost::builder(&config)
            .stores(Arc::new(
                SqliteStore::open(dir.path()).expect("the store opens"),
            ))
            .build()
            .expect("the deployment loads");
        host.recover().await.expect("recovery");

        println!("deploy to serving, {deploys} deploys (every one compiles):");
        let (mut answered, mut serving) = (Vec::new(), Vec::new());
        for n in 0..deploys {
            let (letter, bytes) = version(n);
            let begun = Instant::now();
            host.deploy(&target(), bytes, 100, "bench")
                .await
                .expect("the deploy");
            answered.push(begun.elapsed());
            assert_eq!(note_of_one(&host).await, letter, "the new version serves");
            serving.push(begun.elapsed());
        }
        answered.sort();
        serving.sort();
        println!(
            "  deploy answered        p50 {:>8.1} ms   max {:>8.1} ms",
            ms(quantile(&answered, 0.5)),
            ms(quantile(&answered, 1.0))
        );
        println!(
            "  first operation served p50 {:>8.1} ms   max {:>8.1} ms",
            ms(quantile(&serving, 0.5)),
            ms(quantile(&serving, 1.0))
        );

        let stop = Arc::new(AtomicBool::new(false));
        let steady = {
            let (host, stop) = (host.clone(), Arc::clone(&stop));
            tokio::spawn(async move { start_latencies(&host, stop).await })
        };
        tokio::time::sleep(window).await;
        stop.store(true, Ordering::Relaxed);
        let steady = steady.await.expect("steady window");

        let stop = Arc::new(AtomicBool::new(false));
        let swapping = {
            let (host, stop) = (host.clone(), Arc::clone(&stop));
            tokio::spawn(async move { start_latencies(&host, stop).await })
        };
        let began = Instant::now();
        let mut swaps = 0;
        while began.elapsed() < window {
            let (_, bytes) = version(deploys + swaps);
            host.deploy(&target(), bytes, 100, "bench")
                .await
                .expect("the deploy");
            swaps += 1;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        stop.store(true, Ordering::Relaxed);
        let swapping = swapping.await.expect("swapping window");

        println!(
            "start to result, {CALLERS} callers, {} ms windows:",
            window.as_millis()
        );
        println!(
            "  {:<22} {:>8} {:>10} {:>10}",
            "window", "operations", "p50 µs", "p99 µs"
        );
        for (name, latencies) in [("steady", &steady), (&*format!("{swaps} swaps"), &swapping)] {
            println!(
                "  {:<22} {:>8} {:>10.0} {:>10.0}",
                name,
                latencies.len(),
                quantile(latencies, 0.5).as_secs_f64() * 1e6,
                quantile(latencies, 0.99).as_secs_f64() * 1e6
            );
        }
        println!(
            "  p99 during swaps / steady: {:.2}",
            quantile(&swapping, 0.99).as_secs_f64() / quantile(&steady, 0.99).as_secs_f64()
        );
    });
}
