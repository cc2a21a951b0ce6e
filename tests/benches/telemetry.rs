//! The cost of observability: the same workload with log capture and traces off and on, in
//! one run.
//!
//! Each operation is `Testing.Scenario` with `scenario: print` (two lines each to stdout,
//! stderr and the `log` import: six lines) on a SQLite store, started and waited for by 32
//! closed-loop callers. Four hosts, measured in rounds that each start with the next host:
//! - `bare`: capture off (`log_lines_per_second = 0`), no traces;
//! - `traces`: capture off; every operation's spans (accept, the live attempt sent at start
//!   and end, its events) exported over OTLP/HTTP to a real collector on 127.0.0.1, which
//!   decodes every request;
//! - `logs`: every line kept in the store, no traces;
//! - `logs+traces`: both.
//!
//! Prints, for the median round of each, throughput, latency, and the process's CPU time per
//! operation (every thread: host, exporter and collector, the round's spans sent and received
//! included), each against `bare`. Checks that every span reached the collector. CPU time is
//! the steadier figure on a shared machine. `cargo bench -p opshost-tests --bench telemetry`
//! (or `./dev bench`); `BENCH_OPERATIONS` sets the operations per round (default 4,096),
//! `BENCH_ROUNDS` the rounds (default 9).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::Duration;

use opshost_sandbox::{LimitsTable, WasmHost};
use opshost_store_sqlite::SqliteStore;
use opshost_telemetry::{Telemetry, TelemetryConfig};
use opshost_tests::bench::{Figures, cpu_time, measure_input};
use opshost_tests::otlp::Collector;
use opshost_tests::{env_number, testing_deployment};
use serde_json::json;

const CONCURRENCY: usize = 32;

fn host(dir: &std::path::Path, capture: bool, telemetry: Telemetry) -> WasmHost {
    let mut config = testing_deployment(Duration::from_secs(5));
    config.max_concurrent_operations = CONCURRENCY;
    config.limits = LimitsTable {
        log_lines_per_second: Some(if capture { 1000 } else { 0 }),
        ..LimitsTable::default()
    };
    WasmHost::builder(&config)
        .stores(Arc::new(SqliteStore::open(dir).expect("the store opens")))
        .telemetry(telemetry)
        .build()
        .expect("the deployment loads")
}

/// One round of one host: its figures and the CPU time per operation.
#[derive(Clone, Copy)]
struct Round {
    figures: Figures,
    cpu_per_operation: Duration,
}

fn median(mut rounds: Vec<Round>) -> Round {
    rounds.sort_by(|a, b| a.figures.per_second.total_cmp(&b.figures.per_second));
    let throughput = rounds[rounds.len() / 2].figures;
    rounds.sort_by_key(|round| round.cpu_per_operation);
    Round {
        figures: throughput,
        cpu_per_operation: rounds[rounds.len() / 2].cpu_per_operation,
    }
}

/// Sends what `traces` holds and waits until the collector has it.
async fn flush(traces: &Telemetry) {
    let traces = traces.clone();
    tokio::task::spawn_blocking(move || traces.flush())
        .await
        .expect("flushed");
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let operations = (env_number("BENCH_OPERATIONS", 4096) / CONCURRENCY).max(1) * CONCURRENCY;
        let rounds_wanted = env_number("BENCH_ROUNDS", 9);
        let collector = Collector::start_counting().await;
        let mut config = TelemetryConfig::new(collector.endpoint(), "bench");
        config.export_interval = Duration::from_millis(200);
        let traces = Telemetry::otlp(&config).expect("telemetry starts");
        let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
        let hosts = [
            ("bare", host(dirs[0].path(), false, Telemetry::off())),
            ("traces", host(dirs[1].path(), false, traces.clone())),
            ("logs", host(dirs[2].path(), true, Telemetry::off())),
            ("logs+traces", host(dirs[3].path(), true, traces.clone())),
        ];
        let input = json!({ "scenario": "print", "count": 2 });
        for (_, host) in &hosts {
            measure_input(host.runtime(), CONCURRENCY * 4, CONCURRENCY, input.clone()).await;
        }
        let mut rounds: Vec<Vec<Round>> = vec![Vec::new(); hosts.len()];
        // Each round starts with the next host, so that none always follows the same one.
        for round in 0..rounds_wanted {
            for offset in 0..hosts.len() {
                let at = (round + offset) % hosts.len();
                flush(&traces).await;
                let before = cpu_time();
                let figures =
                    measure_input(hosts[at].1.runtime(), operations, CONCURRENCY, input.clone())
                        .await;
                // What the round exported is sent and received before the next one begins,
                // so that no round pays for another's spans.
                flush(&traces).await;
                let cpu_per_operation = (cpu_time() - before) / operations as u32;
                rounds[at].push(Round {
                    figures,
                    cpu_per_operation,
                });
            }
        }
        let medians: Vec<Round> = rounds.into_iter().map(median).collect();
        let bare = medians[0];
        println!(
            "{operations} operations a round, {rounds_wanted} rounds, {CONCURRENCY} callers; medians"
        );
        println!(
            "{:<14} {:>9} {:>9} {:>9} {:>8} {:>12} {:>8}",
            "", "ops/s", "p50 µs", "p99 µs", "vs bare", "CPU µs/op", "vs bare"
        );
        for ((name, _), round) in hosts.iter().zip(&medians) {
            println!(
                "{:<14} {:>9.0} {:>9.0} {:>9.0} {:>8.2} {:>12.1} {:>8.2}",
                name,
                round.figures.per_second,
                round.figures.p50.as_secs_f64() * 1e6,
                round.figures.p99.as_secs_f64() * 1e6,
                round.figures.per_second / bare.figures.per_second,
                round.cpu_per_operation.as_secs_f64() * 1e6,
                round.cpu_per_operation.as_secs_f64() / bare.cpu_per_operation.as_secs_f64(),
            );
        }
        // Each traced operation is an accept span and its attempt, sent open then ended.
        let traced_operations = 2 * (CONCURRENCY * 4 + rounds_wanted * operations);
        // An attempt's span ends just after its operation: the last round's may come late.
        let expected = 3 * traced_operations;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while collector.count() < expected && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            flush(&traces).await;
        }
        let spans = collector.count();
        println!(
            "spans received by the collector: {spans} (expected {})",
            expected
        );
        assert_eq!(spans, expected, "every span reached the collector");
    });
}
