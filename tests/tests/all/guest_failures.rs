//! How the host ends operations whose guest misbehaves, using the test-handlers guest.

use std::time::Duration;

use futures::StreamExt;
use opshost_api::{ErrorCode, ErrorInfo, EventKind, OperationState, Snapshot};
use opshost_runtime::ServerError;
use opshost_sandbox::WasmHost;
use opshost_tests::{run_scenario, start_scenario, testing_host, wait_terminal};
use serde_json::json;

const GRACE: Duration = Duration::from_millis(300);

async fn run(host: &WasmHost, scenario: &str) -> Snapshot {
    run_scenario(host, json!({ "scenario": scenario })).await
}

/// Runs `scenario` and returns the error of the failed snapshot it must end with.
async fn failure_of(scenario: &str) -> ErrorInfo {
    let host = testing_host(GRACE);
    let snapshot = run(&host, scenario).await;
    assert_eq!(snapshot.state, OperationState::Failed, "{snapshot:?}");
    snapshot.error.expect("a failed snapshot carries its error")
}

#[tokio::test]
async fn a_guest_error_fails_the_operation_with_its_message() {
    let error = failure_of("fail").await;
    assert_eq!(error.code, ErrorCode::HandlerFailed);
    assert_eq!(error.message, "the scenario asked to fail");
}

#[tokio::test]
async fn a_trapping_guest_fails_with_handler_trapped_and_the_trap_message() {
    let error = failure_of("trap").await;
    assert_eq!(error.code, ErrorCode::HandlerTrapped);
    assert!(error.message.contains("unreachable"), "{}", error.message);
}

#[tokio::test]
async fn a_guest_returning_with_the_operation_open_fails_with_handler_non_terminal() {
    let error = failure_of("non-terminal").await;
    assert_eq!(error.code, ErrorCode::HandlerNonTerminal);
    assert!(error.message.contains("still running"), "{}", error.message);
}

#[tokio::test]
async fn invalid_progress_is_refused_to_the_guest_and_leaves_the_operation_unchanged() {
    let host = testing_host(GRACE);
    let snapshot = run(&host, "bad-progress").await;
    assert_eq!(snapshot.state, OperationState::Completed);
    let note = snapshot.output.unwrap()["note"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        note.contains("/percent"),
        "the guest got the issue with its pointer: {note}"
    );
    assert!(
        snapshot.progress.is_none(),
        "the refused progress was not recorded"
    );
    assert_eq!(
        snapshot.revision, 3,
        "accepted, started, completed: nothing else"
    );
}

#[tokio::test]
async fn a_guest_ignoring_cancel_is_stopped_by_force_after_the_grace_period() {
    let host = testing_host(GRACE);
    let spinning = start_scenario(&host, json!({ "scenario": "ignore-cancel" })).await;
    let healthy = start_scenario(&host, json!({ "scenario": "echo-signals", "signals": 1 })).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let terminal = host.runtime().cancel(&spinning.id).await.unwrap();
    assert_eq!(terminal.state, OperationState::Cancelled);
    let error = terminal.error.unwrap();
    assert_eq!(error.code, ErrorCode::Cancelled);
    assert!(error.message.contains("grace period"), "{}", error.message);

    host.runtime()
        .signal(&healthy.id, "Note", json!({ "text": "still alive" }))
        .await
        .unwrap();
    let other = wait_terminal(&host, &healthy.id).await;
    assert_eq!(
        other.state,
        OperationState::Completed,
        "the host and other operations carry on"
    );
}

#[tokio::test]
async fn cancel_wakes_a_guest_blocked_on_next_signal() {
    let host = testing_host(Duration::from_secs(30));
    let accepted = start_scenario(&host, json!({ "scenario": "await-cancel" })).await;
    let terminal = host.runtime().cancel(&accepted.id).await.unwrap();
    assert_eq!(terminal.state, OperationState::Cancelled);
    assert_eq!(terminal.error.unwrap().message, "cancelled by caller");
    let kinds: Vec<EventKind> = host
        .runtime()
        .watch(&accepted.id, Some(0))
        .map(|e| e.unwrap().kind())
        .collect()
        .await;
    assert!(kinds.contains(&EventKind::CancelRequested), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&EventKind::Cancelled));
}

#[tokio::test]
async fn cancel_of_an_operation_without_cancel_support_is_unsupported() {
    let host = testing_host(GRACE);
    let accepted = host
        .runtime()
        .accept(
            "Testing.Uncancellable",
            None,
            Some(json!({ "scenario": "complete" })),
        )
        .await
        .unwrap();
    let error = host
        .runtime()
        .cancel(&accepted.snapshot.id)
        .await
        .unwrap_err();
    assert_eq!(error.code(), ErrorCode::OperationUnsupportedControl);
    assert!(matches!(
        error,
        ServerError::OperationUnsupportedControl { ref operation, ref action }
            if operation == "Testing.Uncancellable" && action == "cancel"
    ));
    let unchanged = host.runtime().get(&accepted.snapshot.id).await.unwrap();
    assert!(!unchanged.cancel_requested);
}

#[tokio::test]
async fn signals_arrive_in_order_with_sequence_numbers_and_are_refused_after_terminal() {
    let host = testing_host(GRACE);
    let accepted = start_scenario(&host, json!({ "scenario": "echo-signals", "signals": 3 })).await;
    let mut sequences = Vec::new();
    for text in ["a", "b", "c"] {
        sequences.push(
            host.runtime()
                .signal(&accepted.id, "Note", json!({ "text": text }))
                .await
                .unwrap(),
        );
    }
    assert_eq!(sequences, [1, 2, 3]);
    let terminal = wait_terminal(&host, &accepted.id).await;
    assert_eq!(
        terminal.output.unwrap()["signals"],
        json!(["1:a", "2:b", "3:c"])
    );

    let late = host
        .runtime()
        .signal(&accepted.id, "Note", json!({ "text": "late" }))
        .await
        .unwrap_err();
    assert_eq!(late.code(), ErrorCode::OperationTerminal);
}

#[tokio::test]
async fn unknown_and_invalid_signals_are_refused_with_invalid_input() {
    let host = testing_host(GRACE);
    let accepted = start_scenario(&host, json!({ "scenario": "echo-signals", "signals": 1 })).await;
    let unknown = host
        .runtime()
        .signal(&accepted.id, "Nope", json!({}))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), ErrorCode::InvalidInput);
    assert!(
        unknown.to_string().contains("no signal `Nope`"),
        "{unknown}"
    );
    let invalid = host
        .runtime()
        .signal(&accepted.id, "Note", json!({ "text": 5 }))
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), ErrorCode::InvalidInput);
    assert!(invalid.to_string().contains("/text"), "{invalid}");
    host.runtime().cancel(&accepted.id).await.unwrap();
}

#[tokio::test]
async fn the_guest_sees_its_attempt_number() {
    let host = testing_host(GRACE);
    let snapshot = run(&host, "complete").await;
    assert_eq!(snapshot.output.unwrap()["note"], "attempt 1");
    assert_eq!(snapshot.progress.unwrap()["percent"], 50);
}
