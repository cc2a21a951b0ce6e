//! The cost of observability: the same workload with log capture and traces off and on, in
//! one run.
//!
//! Each operation is `Testing.Scenario` with `scenario: print` (two lines each to stdout,
//! stderr and the `log` import: six lines) on a SQLite store, started and waited for by 32
//! closed-loop callers. Three hosts, measured in alternating rounds:
//! - `bare`: capture off (`log_lines_per_second = 0`), no traces;
//! - `logs`: every line kept in the store;
//! - `logs+traces`: the same, and every operation's spans (accept, the live attempt sent at
//!   start and end, its events) exported over OTLP/HTTP to a real collector on 127.0.0.1.
//!
//! `cargo bench -p opshost-tests --bench telemetry` (or `./dev bench`). Prints the median
//! throughput of each and its ratio to `bare`. `BENCH_OPERATIONS` sets the operations per
//! round (default 640).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::Duration;

use opshost_sandbox::{LimitsTable, WasmHost};
use opshost_store_sqlite::SqliteStore;
use opshost_telemetry::{Telemetry, TelemetryConfig};
use opshost_tests::bench::{Figures, measure_input, row};
use opshost_tests::otlp::Collector;
use opshost_tests::{env_number, testing_deployment};
use serde_json::json;

const ROUNDS: usize = 5;
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

fn median(mut rounds: Vec<Figures>) -> Figures {
    rounds.sort_by(|a, b| a.per_second.total_cmp(&b.per_second));
    rounds[rounds.len() / 2]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let operations = env_number("BENCH_OPERATIONS", 640);
        let collector = Collector::start().await;
        let traces = Telemetry::otlp(&TelemetryConfig::new(collector.endpoint(), "bench"))
            .expect("telemetry starts");
        let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let hosts = [
            ("bare", host(dirs[0].path(), false, Telemetry::off())),
            ("logs", host(dirs[1].path(), true, Telemetry::off())),
            ("logs+traces", host(dirs[2].path(), true, traces.clone())),
        ];
        let input = json!({ "scenario": "print", "count": 2 });
        for (_, host) in &hosts {
            measure_input(host.runtime(), CONCURRENCY * 4, CONCURRENCY, input.clone()).await;
        }
        let mut rounds: Vec<Vec<Figures>> = vec![Vec::new(); hosts.len()];
        for _ in 0..ROUNDS {
            for ((_, host), figures) in hosts.iter().zip(&mut rounds) {
                figures.push(
                    measure_input(host.runtime(), operations, CONCURRENCY, input.clone()).await,
                );
            }
        }
        let figures: Vec<Figures> = rounds.into_iter().map(median).collect();
        println!(
            "{operations} operations a round, {ROUNDS} rounds, {CONCURRENCY} callers; median round"
        );
        println!(
            "{:<22} {:>10} {:>10} {:>10} {:>10}",
            "", "ops/s", "p50 µs", "p99 µs", "vs bare"
        );
        for ((name, _), figure) in hosts.iter().zip(&figures) {
            row(name, figure, &figures[0]);
        }
        let flushed = traces.clone();
        tokio::task::spawn_blocking(move || flushed.flush())
            .await
            .expect("flushed");
        let spans = collector.spans().len();
        println!("spans received by the collector: {spans}");
        assert!(spans > 0, "the collector received no spans");
    });
}
