//! Orders.Process served by the real orders-process guest under wasmtime.

use std::time::Duration;

use futures::StreamExt;
use opshost_api::{ErrorCode, EventKind, OperationState};
use opshost_runtime::ServerError;
use opshost_tests::orders_host;
use serde_json::{Value, json};

fn order(id: &str) -> Value {
    json!({
        "orderId": id,
        "lineItems": [
            { "sku": "KB-ERGO-01", "quantity": 1, "unitPriceCents": 12900 },
            { "sku": "USB-C-2M", "quantity": 3, "unitPriceCents": 1250 }
        ]
    })
}

const GRACE: Duration = Duration::from_secs(5);

#[tokio::test]
async fn happy_path_emits_every_event_in_order_with_consecutive_revisions() {
    let host = orders_host(GRACE);
    let accepted = host
        .start("Orders.Process", None, order("ord_1"))
        .await
        .unwrap();
    assert_eq!(accepted.revision, 1);
    assert_eq!(accepted.state, OperationState::Pending);

    let events: Vec<_> = host.runtime().watch(&accepted.id, Some(0)).collect().await;
    let events: Vec<_> = events.into_iter().map(Result::unwrap).collect();
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind()).collect();
    let mut expected = vec![EventKind::Accepted, EventKind::Started];
    expected.extend([EventKind::Progress; 5]);
    expected.push(EventKind::Completed);
    assert_eq!(kinds, expected);
    let revisions: Vec<u64> = events.iter().map(|e| e.snapshot().revision).collect();
    assert_eq!(revisions, (1..=8).collect::<Vec<u64>>());

    let steps: Vec<&str> = events
        .iter()
        .filter(|e| e.kind() == EventKind::Progress)
        .map(|e| {
            e.snapshot().progress.as_ref().unwrap()["step"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(
        steps,
        ["queued", "reserving", "charging", "packing", "shipping"]
    );

    let terminal = events.last().unwrap().snapshot();
    assert_eq!(terminal.state, OperationState::Completed);
    let output = terminal.output.as_ref().unwrap();
    assert_eq!(output["orderId"], "ord_1");
    assert_eq!(output["status"], "shipped");
    assert_eq!(output["totalCents"], 12900 + 3 * 1250);
    assert_eq!(output["expedited"], false);
    assert_eq!(
        terminal.progress.as_ref().unwrap()["completed"],
        4,
        "last progress is kept"
    );
    assert!(terminal.completed_at.is_some());
}

#[tokio::test]
async fn invalid_start_input_is_rejected_with_each_schema_issue() {
    let host = orders_host(GRACE);
    let input =
        json!({ "orderId": "", "lineItems": [{ "sku": "A", "quantity": 0, "unitPriceCents": 1 }] });
    let error = host.start("Orders.Process", None, input).await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::InvalidInput);
    let ServerError::InvalidInput { issues, .. } = &error else {
        panic!("expected InvalidInput, got {error:?}");
    };
    let pointers: Vec<&str> = issues.iter().map(|i| i.pointer.as_str()).collect();
    assert!(pointers.contains(&"/orderId"), "{issues:?}");
    assert!(pointers.contains(&"/lineItems/0/quantity"), "{issues:?}");
    let listed = host.runtime().watch("nope", None).next().await.unwrap();
    assert!(matches!(listed, Err(ServerError::OperationNotFound { .. })));
}

#[tokio::test]
async fn cancel_mid_flight_ends_cancelled_after_the_guest_cleans_up() {
    let host = orders_host(GRACE);
    let accepted = host
        .start("Orders.Process", None, order("ord_2"))
        .await
        .unwrap();
    let mut events = host.runtime().watch(&accepted.id, Some(0));
    while let Some(event) = events.next().await {
        if event.unwrap().kind() == EventKind::Progress {
            break;
        }
    }
    let terminal = host.runtime().cancel(&accepted.id).await.unwrap();
    assert_eq!(terminal.state, OperationState::Cancelled);
    assert!(terminal.cancel_requested);
    let error = terminal.error.unwrap();
    assert_eq!(error.code, ErrorCode::Cancelled);
    assert_eq!(
        error.message, "cancelled by caller",
        "the guest acknowledged, no force needed"
    );
    assert_eq!(
        terminal.progress.unwrap()["step"],
        "cleanup",
        "the guest saw the request and cleaned up"
    );
}

#[tokio::test]
async fn expedite_signal_reaches_the_guest_and_changes_the_result() {
    let host = orders_host(GRACE);
    let accepted = host
        .start("Orders.Process", None, order("ord_3"))
        .await
        .unwrap();
    let sequence = host
        .runtime()
        .signal(
            &accepted.id,
            "Expedite",
            json!({ "reason": "VIP customer" }),
        )
        .await
        .unwrap();
    assert_eq!(sequence, 1);
    let terminal = host.runtime().wait(&accepted.id, None).await.unwrap();
    assert_eq!(terminal.state, OperationState::Completed);
    assert_eq!(terminal.output.unwrap()["expedited"], true);
}

#[tokio::test]
async fn accepting_the_same_id_twice_is_idempotent_only_for_the_same_input() {
    let host = orders_host(GRACE);
    let key = Some("order-ord_4".to_string());
    let first = host
        .start("Orders.Process", key.clone(), order("ord_4"))
        .await
        .unwrap();
    let again = host
        .start("Orders.Process", key.clone(), order("ord_4"))
        .await
        .unwrap();
    assert_eq!(again.id, first.id);
    assert_eq!(again.created_at, first.created_at);
    let error = host
        .start("Orders.Process", key, order("ord_other"))
        .await
        .unwrap_err();
    assert!(matches!(error, ServerError::OperationAlreadyExists { ref id } if id == "order-ord_4"));
    assert_eq!(error.code(), ErrorCode::OperationAlreadyExists);
    let terminal = host.runtime().wait(&first.id, None).await.unwrap();
    assert_eq!(
        terminal.output.unwrap()["orderId"],
        "ord_4",
        "the handler ran once, for the first input"
    );
}

#[tokio::test]
async fn a_late_watcher_gets_the_current_snapshot_first_then_the_terminal_event() {
    let host = orders_host(GRACE);
    let accepted = host
        .start("Orders.Process", None, order("ord_5"))
        .await
        .unwrap();
    let mut early = host.runtime().watch(&accepted.id, Some(0));
    while let Some(event) = early.next().await {
        if event.unwrap().snapshot().revision >= 4 {
            break;
        }
    }
    let mut late = host.runtime().watch(&accepted.id, None);
    let first = late.next().await.unwrap().unwrap();
    assert!(
        first.snapshot().revision >= 4,
        "starts from the current snapshot, not history"
    );
    let mut last_revision = first.snapshot().revision;
    let mut last = first;
    while let Some(event) = late.next().await {
        let event = event.unwrap();
        assert!(
            event.snapshot().revision > last_revision,
            "revisions never go backwards"
        );
        last_revision = event.snapshot().revision;
        last = event;
    }
    assert_eq!(last.kind(), EventKind::Completed);

    let mut after_the_end = host.runtime().watch(&accepted.id, None);
    let only = after_the_end.next().await.unwrap().unwrap();
    assert_eq!(only.kind(), EventKind::Completed);
    assert!(
        after_the_end.next().await.is_none(),
        "the stream ends after the terminal event"
    );
}

#[tokio::test]
async fn a_watch_resumed_from_a_revision_sees_each_later_revision_once() {
    let host = orders_host(GRACE);
    let accepted = host
        .start("Orders.Process", None, order("ord_6"))
        .await
        .unwrap();
    let terminal = host.runtime().wait(&accepted.id, None).await.unwrap();
    let resumed: Vec<u64> = host
        .runtime()
        .watch(&accepted.id, Some(3))
        .map(|e| e.unwrap().snapshot().revision)
        .collect()
        .await;
    assert_eq!(resumed, (4..=terminal.revision).collect::<Vec<u64>>());
}
