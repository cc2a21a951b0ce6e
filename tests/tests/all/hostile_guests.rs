//! The hostile-guest suite: each hostile scenario of the test-handlers guest runs beside a
//! healthy operation on the same host. The hostile operation must end with the right code and
//! message, and the healthy one must still complete.

use std::time::{Duration, Instant};

use futures::StreamExt;
use opshost_api::{ErrorCode, ErrorInfo, EventKind, OperationState, Snapshot};
use opshost_sandbox::{DeploymentConfig, LimitsTable, SandboxError, WasmHost};
use opshost_tests::{guest, load, run_scenario, start_scenario, testing_deployment, wait_terminal};
use serde_json::{Value, json};

const GRACE: Duration = Duration::from_millis(300);

/// The testing deployment with tight limits: 32 MiB, 500 ms of CPU, 10 progress events a
/// second, 64 KiB payloads.
fn hostile_deployment() -> DeploymentConfig {
    let mut config = testing_deployment(GRACE);
    config.limits = LimitsTable {
        memory_mb: Some(32),
        cpu_ms: Some(500),
        deadline_ms: None,
        progress_per_second: Some(10),
        max_payload_bytes: Some(64 << 10),
        ..LimitsTable::default()
    };
    config
}

/// Runs `input` beside a healthy operation waiting for a signal; returns the hostile
/// operation's terminal snapshot once the healthy one completed after it.
async fn beside_a_healthy_operation(host: &WasmHost, input: Value) -> Snapshot {
    let healthy = start_scenario(host, json!({ "scenario": "echo-signals", "signals": 1 })).await;
    let hostile = start_scenario(host, input).await;
    let terminal = wait_terminal(host, &hostile.id).await;
    host.runtime()
        .signal(&healthy.id, "Note", json!({ "text": "still here" }))
        .await
        .unwrap();
    let healthy = wait_terminal(host, &healthy.id).await;
    assert_eq!(
        healthy.state,
        OperationState::Completed,
        "the healthy operation completes: {healthy:?}"
    );
    assert_eq!(healthy.output.unwrap()["signals"], json!(["1:still here"]));
    terminal
}

/// Runs `scenario` on the hostile deployment and returns its failure.
async fn failure_of(input: Value) -> ErrorInfo {
    let host = load(&hostile_deployment());
    let terminal = beside_a_healthy_operation(&host, input).await;
    assert_eq!(terminal.state, OperationState::Failed, "{terminal:?}");
    terminal.error.expect("a failed snapshot carries its error")
}

#[tokio::test]
async fn an_infinite_loop_fails_with_limit_exceeded_once_its_cpu_time_is_spent() {
    let error = failure_of(json!({ "scenario": "ignore-cancel" })).await;
    assert_eq!(error.code, ErrorCode::LimitExceeded);
    assert!(error.message.contains("limits.cpu_ms"), "{}", error.message);
    assert!(error.message.contains("500 ms"), "{}", error.message);
}

#[tokio::test]
async fn a_memory_bomb_fails_with_limit_exceeded_naming_the_memory_limit() {
    let error = failure_of(json!({ "scenario": "memory-bomb" })).await;
    assert_eq!(error.code, ErrorCode::LimitExceeded);
    assert!(
        error.message.contains("limits.memory_mb"),
        "{}",
        error.message
    );
    assert!(
        error.message.contains(&(32usize << 20).to_string()),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn unbounded_recursion_traps_and_fails_with_handler_trapped() {
    let error = failure_of(json!({ "scenario": "recursion" })).await;
    assert_eq!(error.code, ErrorCode::HandlerTrapped);
    assert!(error.message.contains("stack"), "{}", error.message);
}

#[tokio::test]
async fn a_panic_fails_with_handler_trapped_and_the_panic_site() {
    let error = failure_of(json!({ "scenario": "trap" })).await;
    assert_eq!(error.code, ErrorCode::HandlerTrapped);
    assert!(error.message.contains("unreachable"), "{}", error.message);
}

#[tokio::test]
async fn unreachable_fails_with_handler_trapped() {
    let error = failure_of(json!({ "scenario": "unreachable" })).await;
    assert_eq!(error.code, ErrorCode::HandlerTrapped);
    assert!(error.message.contains("unreachable"), "{}", error.message);
}

#[tokio::test]
async fn a_progress_flood_is_coalesced_to_the_rate_limit() {
    let host = load(&hostile_deployment());
    let began = Instant::now();
    let terminal = beside_a_healthy_operation(
        &host,
        json!({ "scenario": "progress-flood", "count": 3000 }),
    )
    .await;
    let elapsed = began.elapsed();
    assert_eq!(terminal.state, OperationState::Completed, "{terminal:?}");
    assert_eq!(
        terminal.output.unwrap()["note"],
        "sent 3001 progress events"
    );
    let recorded = host
        .runtime()
        .watch(&terminal.id, Some(0))
        .filter(|event| {
            std::future::ready(matches!(event, Ok(e) if e.kind() == EventKind::Progress))
        })
        .count()
        .await;
    let allowed = (elapsed.as_secs_f64() * 10.0).ceil() as usize + 1;
    assert!(
        (1..=allowed).contains(&recorded),
        "{recorded} progress events recorded in {elapsed:?}; at most {allowed} allowed"
    );
}

#[tokio::test]
async fn a_burst_of_progress_ends_with_the_last_one_reported_before_the_terminal_event() {
    let host = load(&hostile_deployment());
    let terminal = run_scenario(&host, json!({ "scenario": "progress-flood", "count": 3 })).await;
    assert_eq!(terminal.state, OperationState::Completed, "{terminal:?}");
    assert_eq!(terminal.progress, Some(json!({ "percent": 100 })));
    let events: Vec<_> = host
        .runtime()
        .watch(&terminal.id, Some(0))
        .map(|event| event.unwrap())
        .collect()
        .await;
    let kinds: Vec<EventKind> = events.iter().map(|event| event.kind()).collect();
    let last_progress = events
        .iter()
        .rev()
        .find(|event| event.kind() == EventKind::Progress)
        .expect("a progress event");
    assert_eq!(
        last_progress.snapshot().progress,
        Some(json!({ "percent": 100 })),
        "{kinds:?}"
    );
    assert_eq!(
        &kinds[kinds.len() - 2..],
        [EventKind::Progress, EventKind::Completed],
        "the latest progress is recorded just before the end"
    );
}

/// The hostile deployment with a history budget of `bytes` of progress in `events` events.
fn budgeted(bytes: u64, events: u64) -> WasmHost {
    let mut config = hostile_deployment();
    config.limits.max_history_bytes = Some(bytes);
    config.limits.max_events = Some(events);
    load(&config)
}

/// The history of operation `id`, whose revisions must run 1, 2, ... without a gap.
async fn history(host: &WasmHost, id: &str) -> Vec<EventKind> {
    let events: Vec<_> = host
        .runtime()
        .watch(id, Some(0))
        .map(|event| event.unwrap())
        .collect()
        .await;
    let revisions: Vec<u64> = events.iter().map(|e| e.snapshot().revision).collect();
    assert_eq!(revisions, (1..=events.len() as u64).collect::<Vec<_>>());
    events.iter().map(|event| event.kind()).collect()
}

#[tokio::test]
async fn a_guest_hoarding_progress_fails_naming_max_history_bytes_and_spares_the_others() {
    let host = budgeted(200_000, 10_000);
    let terminal = beside_a_healthy_operation(
        &host,
        json!({ "scenario": "progress-hoard", "count": 1000, "bytes": 60_000 }),
    )
    .await;
    assert_eq!(terminal.state, OperationState::Failed, "{terminal:?}");
    let error = terminal.error.expect("an error");
    assert_eq!(error.code, ErrorCode::LimitExceeded);
    assert!(
        error.message.contains("limits.max_history_bytes"),
        "{}",
        error.message
    );
    let kinds = history(&host, &terminal.id).await;
    let progress = kinds.iter().filter(|k| **k == EventKind::Progress).count();
    assert_eq!(progress, 3, "three 60 kB progress fit in 200 kB: {kinds:?}");
    assert_eq!(kinds.last(), Some(&EventKind::Failed));
}

#[tokio::test]
async fn a_guest_reporting_progress_past_max_events_fails_naming_it() {
    let host = budgeted(16 << 20, 12);
    let terminal = beside_a_healthy_operation(
        &host,
        json!({ "scenario": "progress-hoard", "count": 1000, "bytes": 10 }),
    )
    .await;
    let error = terminal.error.expect("an error");
    assert_eq!(error.code, ErrorCode::LimitExceeded, "{error:?}");
    assert!(
        error.message.contains("limits.max_events"),
        "{}",
        error.message
    );
    let kinds = history(&host, &terminal.id).await;
    assert_eq!(
        kinds.len(),
        11,
        "room is kept for a cancel request: the terminal event is the 11th: {kinds:?}"
    );
    assert_eq!(kinds.last(), Some(&EventKind::Failed));
}

#[tokio::test]
async fn an_oversized_output_fails_with_limit_exceeded_naming_the_payload_limit() {
    let error = failure_of(json!({ "scenario": "oversized-output" })).await;
    assert_eq!(error.code, ErrorCode::LimitExceeded);
    assert!(error.message.contains("output of"), "{}", error.message);
    assert!(
        error.message.contains("limits.max_payload_bytes"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn an_oversized_input_is_refused_at_start_and_nothing_is_stored() {
    let host = load(&hostile_deployment());
    let error = host
        .start(
            "Testing.Scenario",
            Some("too-big".into()),
            json!({ "scenario": "complete", "path": "x".repeat(70 << 10) }),
        )
        .await
        .unwrap_err();
    assert_eq!(error.code(), ErrorCode::LimitExceeded);
    assert!(error.to_string().contains("max_payload_bytes"), "{error}");
    assert_eq!(
        host.runtime().get("too-big").await.unwrap_err().code(),
        ErrorCode::OperationNotFound
    );
}

#[tokio::test]
async fn an_oversized_signal_is_refused_and_the_operation_carries_on() {
    let host = load(&hostile_deployment());
    let waiting = start_scenario(&host, json!({ "scenario": "echo-signals", "signals": 1 })).await;
    let error = host
        .runtime()
        .signal(&waiting.id, "Note", json!({ "text": "x".repeat(70 << 10) }))
        .await
        .unwrap_err();
    assert_eq!(error.code(), ErrorCode::LimitExceeded);
    assert!(error.to_string().contains("signal Note"), "{error}");
    assert!(error.to_string().contains("max_payload_bytes"), "{error}");
    host.runtime()
        .signal(&waiting.id, "Note", json!({ "text": "small" }))
        .await
        .unwrap();
    let done = wait_terminal(&host, &waiting.id).await;
    assert_eq!(
        done.output.unwrap()["signals"],
        json!(["1:small"]),
        "the refused signal took no sequence number"
    );
}

#[tokio::test]
async fn a_second_complete_is_refused_and_the_first_output_stands() {
    let host = load(&hostile_deployment());
    let terminal =
        beside_a_healthy_operation(&host, json!({ "scenario": "double-complete" })).await;
    assert_eq!(terminal.state, OperationState::Completed);
    assert_eq!(terminal.output.unwrap()["note"], "first");
    assert_eq!(terminal.revision, 3, "accepted, started, completed");
}

#[tokio::test]
async fn complete_after_fail_is_refused_and_the_failure_stands() {
    let error = failure_of(json!({ "scenario": "complete-after-fail" })).await;
    assert_eq!(error.code, ErrorCode::HandlerFailed);
    assert_eq!(error.message, "failed on purpose");
}

#[tokio::test]
async fn returning_without_a_terminal_state_fails_with_handler_non_terminal() {
    let error = failure_of(json!({ "scenario": "non-terminal" })).await;
    assert_eq!(error.code, ErrorCode::HandlerNonTerminal);
}

#[tokio::test]
async fn a_guest_ignoring_cancel_is_stopped_after_the_grace_period() {
    let mut config = hostile_deployment();
    config.limits.cpu_ms = Some(60_000);
    let host = load(&config);
    let healthy = start_scenario(&host, json!({ "scenario": "echo-signals", "signals": 1 })).await;
    let spinning = start_scenario(&host, json!({ "scenario": "ignore-cancel" })).await;
    let terminal = host.runtime().cancel(&spinning.id).await.unwrap();
    assert_eq!(terminal.state, OperationState::Cancelled);
    assert!(
        terminal.error.unwrap().message.contains("grace period"),
        "stopped by force"
    );
    host.runtime()
        .signal(&healthy.id, "Note", json!({ "text": "still here" }))
        .await
        .unwrap();
    assert_eq!(
        wait_terminal(&host, &healthy.id).await.state,
        OperationState::Completed
    );
}

#[tokio::test]
async fn a_run_past_its_deadline_fails_with_limit_exceeded_naming_the_deadline() {
    let mut config = hostile_deployment();
    config.handlers[0].limits.deadline_ms = Some(400);
    let host = load(&config);
    let waiting = start_scenario(&host, json!({ "scenario": "await-cancel" })).await;
    let terminal = wait_terminal(&host, &waiting.id).await;
    let error = terminal.error.unwrap();
    assert_eq!(error.code, ErrorCode::LimitExceeded);
    assert!(
        error.message.contains("limits.deadline_ms"),
        "{}",
        error.message
    );
    assert!(error.message.contains("400 ms"), "{}", error.message);
}

#[tokio::test]
async fn reading_a_file_that_was_not_granted_fails() {
    let error = failure_of(json!({ "scenario": "read-file", "path": "/etc/hostname" })).await;
    assert_eq!(error.code, ErrorCode::HandlerFailed);
    assert!(
        error.message.starts_with("cannot read /etc/hostname"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn reading_an_env_var_that_was_not_granted_finds_nothing() {
    let error = failure_of(json!({ "scenario": "read-env", "path": "PATH" })).await;
    assert_eq!(error.code, ErrorCode::HandlerFailed);
    assert!(error.message.starts_with("PATH: "), "{}", error.message);
}

#[tokio::test]
async fn a_component_importing_sockets_is_refused_at_load_with_every_offending_import() {
    let mut config = testing_deployment(GRACE);
    config.handlers[0].component = guest("test_net");
    let error = match WasmHost::from_config(&config) {
        Ok(_) => panic!("a component importing wasi:sockets was loaded"),
        Err(error) => error,
    };
    let SandboxError::UngrantedImports { imports, path } = &error else {
        panic!("wrong error: {error}");
    };
    assert!(path.ends_with("test_net.wasm"), "{path}");
    assert!(
        imports.iter().any(|i| i.starts_with("wasi:sockets/tcp@")),
        "{imports:?}"
    );
    assert!(
        imports.iter().all(|i| i.starts_with("wasi:sockets/")),
        "only the sockets interfaces are offending: {imports:?}"
    );
    assert!(error.to_string().contains("wasi:sockets/tcp@"), "{error}");
}
