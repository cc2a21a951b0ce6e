//! Guest logs: what a handler writes to stdout, to stderr and through the `log` import is kept
//! with its operation and attempt in the store, under the run's rate, and a flood changes
//! nothing for the host or other operations.

use std::sync::Arc;
use std::time::Duration;

use opshost_api::{LogLevel, LogLine, LogStream, OperationState};
use opshost_sandbox::{LimitsTable, WasmHost};
use opshost_store_sqlite::SqliteStore;
use opshost_tests::{load, run_scenario, start_scenario, testing_deployment, wait_terminal};
use serde_json::json;

const GRACE: Duration = Duration::from_millis(300);

/// Every log line of operation `id`, once its runs have ended (the last note of dropped
/// lines is written as a run ends) and the host's queued lines are written.
async fn logs_of(host: &WasmHost, id: &str) -> Vec<LogLine> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while host.runtime().active_handlers() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "runs never ended");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    host.runtime().log_sink().flush().await;
    host.runtime().logs(id, 0, 100_000).await.unwrap()
}

fn assert_printed(lines: &[LogLine], count: usize) {
    assert_eq!(lines.len(), 3 * count, "{lines:#?}");
    for (n, three) in lines.chunks(3).enumerate() {
        assert_eq!(
            (three[0].stream, three[0].level, three[0].message.as_str()),
            (
                LogStream::Stdout,
                LogLevel::Info,
                format!("line {n} to stdout").as_str()
            )
        );
        assert_eq!(
            (three[1].stream, three[1].level, three[1].message.as_str()),
            (
                LogStream::Stderr,
                LogLevel::Warn,
                format!("line {n} to stderr").as_str()
            )
        );
        assert_eq!(three[2].stream, LogStream::Log);
        assert_eq!(three[2].message, format!("line {n} through log"));
        assert_eq!(three[2].fields["n"], n.to_string());
        assert_eq!(three[2].fields["kind"], "structured");
    }
    assert!(
        lines
            .iter()
            .all(|line| line.attempt == 1 && line.job.is_none())
    );
    let seqs: Vec<u64> = lines.iter().map(|line| line.seq).collect();
    assert_eq!(seqs, (1..=lines.len() as u64).collect::<Vec<_>>());
}

#[tokio::test]
async fn stdout_stderr_and_log_lines_are_kept_with_the_operation_in_order() {
    let host = load(&testing_deployment(GRACE));
    let done = run_scenario(&host, json!({ "scenario": "print", "count": 5 })).await;
    assert_eq!(done.state, OperationState::Completed);
    assert_printed(&logs_of(&host, &done.id).await, 5);
}

#[tokio::test]
async fn logs_are_kept_in_the_sqlite_file_and_read_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let host = WasmHost::builder(&testing_deployment(GRACE))
            .stores(store)
            .build()
            .unwrap();
        let done = run_scenario(&host, json!({ "scenario": "print", "count": 4 })).await;
        host.shutdown(GRACE).await.unwrap();
        done.id
    };
    let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let host = WasmHost::builder(&testing_deployment(GRACE))
        .stores(store)
        .build()
        .unwrap();
    assert_printed(&logs_of(&host, &id).await, 4);
}

#[tokio::test]
async fn with_log_lines_per_second_zero_no_line_is_kept_or_counted_as_dropped() {
    let mut config = testing_deployment(GRACE);
    config.limits = LimitsTable {
        log_lines_per_second: Some(0),
        ..LimitsTable::default()
    };
    let host = load(&config);
    let done = run_scenario(&host, json!({ "scenario": "print", "count": 5 })).await;
    assert_eq!(done.state, OperationState::Completed);
    assert_eq!(logs_of(&host, &done.id).await, []);
    assert_eq!(host.runtime().log_sink().dropped(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_writing_300_mib_to_stdout_is_held_to_its_rate_and_others_carry_on() {
    let mut config = testing_deployment(GRACE);
    config.limits = LimitsTable {
        log_lines_per_second: Some(50),
        ..LimitsTable::default()
    };
    let host = load(&config);
    let healthy = start_scenario(&host, json!({ "scenario": "echo-signals", "signals": 1 })).await;
    let flood = start_scenario(
        &host,
        json!({ "scenario": "print-flood", "bytes": 300u64 << 20 }),
    )
    .await;
    let flooded = wait_terminal(&host, &flood.id).await;
    assert_eq!(flooded.state, OperationState::Completed, "{flooded:?}");
    host.runtime()
        .signal(&healthy.id, "Note", json!({ "text": "still here" }))
        .await
        .unwrap();
    let healthy = wait_terminal(&host, &healthy.id).await;
    assert_eq!(healthy.state, OperationState::Completed);

    let lines = logs_of(&host, &flood.id).await;
    let kept = lines
        .iter()
        .filter(|l| l.stream == LogStream::Stdout)
        .count();
    let notes: Vec<&LogLine> = lines
        .iter()
        .filter(|l| l.stream == LogStream::Host)
        .collect();
    let dropped: u64 = notes
        .iter()
        .map(|n| n.fields["dropped"].parse::<u64>().unwrap())
        .sum();
    // 300 MiB in lines of at most 16 KiB: 19,200 lines, most of them dropped.
    assert_eq!(
        kept as u64 + dropped,
        19_200,
        "{} kept, {dropped} dropped",
        kept
    );
    assert!(kept < 19_200 / 2, "{kept} kept");
    assert!(
        notes
            .iter()
            .all(|n| n.message.contains("limits.log_lines_per_second"))
    );
    assert!(lines.iter().all(|l| l.message.len() <= 16 << 10));
    assert!(
        host.runtime().log_sink().dropped() >= dropped,
        "opshost_log_lines_dropped_total counts them"
    );
}
