//! The caller side through the generated facade's Rust client, against
//! the orders-process guest served over real HTTP on 127.0.0.1.

use std::time::Duration;

use futures::StreamExt;
use opshost_api::{ErrorCode, EventKind, OperationEvent, OperationState};
use opshost_client::StartOptions;
use opshost_tests::net::{Proxy, TestServer, token};
use opshost_tests::orders_host;
use orders_participant::operations::OrdersProcessOperation;
use orders_participant::signals::OrdersProcessExpedite;
use orders_participant::{
    ExpediteRequest, LineItem, ProcessOrderRequest, ProcessOrderResultStatus, connect_service,
};

const CALLER: &[&str] = &["orders.write", "orders.read"];

fn request(order_id: &str) -> ProcessOrderRequest {
    ProcessOrderRequest {
        order_id: order_id.into(),
        line_items: vec![LineItem {
            sku: "KB-ERGO-01".into(),
            quantity: 2,
            unit_price_cents: 12900,
        }],
    }
}

async fn server() -> TestServer {
    let host = orders_host(Duration::from_secs(5));
    TestServer::start(host.runtime()).await
}

#[tokio::test]
async fn start_then_wait_returns_the_typed_output() {
    let server = server().await;
    let client = connect_service(&server.url, token(CALLER)).await.unwrap();
    let op_ref = client
        .orders()
        .operation::<OrdersProcessOperation>()
        .start(request("ord_123"))
        .await
        .unwrap();
    let accepted = op_ref.accepted().unwrap();
    assert_eq!(accepted.state, OperationState::Pending);
    assert_eq!(accepted.revision, 1);

    let terminal = op_ref.wait().await.unwrap();
    assert_eq!(terminal.state, OperationState::Completed);
    let output = terminal.output.unwrap();
    assert_eq!(output.order_id, "ord_123");
    assert_eq!(output.status, ProcessOrderResultStatus::Shipped);
    assert_eq!(output.total_cents, 2 * 12900);
}

#[tokio::test]
async fn watch_yields_typed_progress_then_the_completed_event() {
    let server = server().await;
    let client = connect_service(&server.url, token(CALLER)).await.unwrap();
    let op_ref = client
        .orders()
        .operation::<OrdersProcessOperation>()
        .start(request("ord_watch"))
        .await
        .unwrap();
    let mut stream = op_ref.watch();
    let mut steps = Vec::new();
    let mut revisions = Vec::new();
    let mut completed = None;
    while let Some(event) = stream.next().await {
        revisions.push(event.snapshot().revision);
        match event {
            OperationEvent::Progress { snapshot } => {
                steps.push(snapshot.progress.unwrap().step);
            }
            OperationEvent::Completed { snapshot } => {
                completed = snapshot.output;
                break;
            }
            _ => {}
        }
    }
    assert!(stream.take_error().is_none());
    assert_eq!(completed.unwrap().order_id, "ord_watch");
    assert!(steps.ends_with(&[
        "reserving".into(),
        "charging".into(),
        "packing".into(),
        "shipping".into()
    ]));
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "{revisions:?}");
}

#[tokio::test]
async fn cancel_returns_the_cancelled_terminal_snapshot() {
    let server = server().await;
    let client = connect_service(&server.url, token(CALLER)).await.unwrap();
    let op_ref = client
        .orders()
        .operation::<OrdersProcessOperation>()
        .start(request("ord_cancel"))
        .await
        .unwrap();
    let snapshot = op_ref.cancel().await.unwrap();
    assert_eq!(snapshot.state, OperationState::Cancelled);
    assert!(snapshot.cancel_requested);
    assert_eq!(snapshot.error.unwrap().code, ErrorCode::Cancelled);
    assert_eq!(op_ref.get().await.unwrap().state, OperationState::Cancelled);
}

#[tokio::test]
async fn a_signal_reaches_the_guest_and_a_resumed_reference_sees_its_effect() {
    let server = server().await;
    let client = connect_service(&server.url, token(CALLER)).await.unwrap();
    let operations = client.orders().operation::<OrdersProcessOperation>();
    let op_ref = operations.start(request("ord_fast")).await.unwrap();
    let sequence = op_ref
        .signal::<OrdersProcessExpedite>(&ExpediteRequest {
            reason: "vip".into(),
        })
        .await
        .unwrap();
    assert_eq!(sequence, 1);

    let resumed = operations.resume(op_ref.id());
    let terminal = resumed.wait().await.unwrap();
    assert!(terminal.output.unwrap().expedited);
}

#[tokio::test]
async fn the_same_idempotency_key_gives_back_the_same_operation() {
    let server = server().await;
    let client = connect_service(&server.url, token(CALLER)).await.unwrap();
    let operations = client.orders().operation::<OrdersProcessOperation>();
    let options = StartOptions {
        idempotency_key: Some("order-ord_idem".into()),
        wait: None,
    };
    let first = operations
        .start_with(request("ord_idem"), &options)
        .await
        .unwrap();
    let second = operations
        .start_with(request("ord_idem"), &options)
        .await
        .unwrap();
    assert_eq!(first.id(), "order-ord_idem@acme");
    assert_eq!(second.id(), first.id());
    let error = operations
        .start_with(request("ord_other"), &options)
        .await
        .err()
        .unwrap();
    assert_eq!(error.code(), Some(ErrorCode::OperationAlreadyExists));
}

#[tokio::test]
async fn a_watch_whose_connection_drops_resumes_without_gaps_or_repeats() {
    let server = server().await;
    let proxy = Proxy::start(&server.url).await;
    let client = connect_service(&proxy.url, token(CALLER)).await.unwrap();
    let op_ref = client
        .orders()
        .operation::<OrdersProcessOperation>()
        .start(request("ord_flaky"))
        .await
        .unwrap();
    let mut stream = op_ref.watch();
    let mut revisions = Vec::new();
    let mut kinds = Vec::new();
    let mut cuts = 0;
    while let Some(event) = stream.next().await {
        revisions.push(event.snapshot().revision);
        kinds.push(event.kind());
        if event.kind() == EventKind::Progress && cuts < 2 {
            proxy.cut();
            cuts += 1;
        }
    }
    assert!(stream.take_error().is_none());
    assert_eq!(cuts, 2, "the operation reports progress at least twice");
    assert_eq!(kinds.last(), Some(&EventKind::Completed));
    let first = revisions[0];
    let expected: Vec<u64> = (first..first + revisions.len() as u64).collect();
    assert_eq!(revisions, expected, "every revision exactly once");
}

#[tokio::test]
async fn a_caller_without_the_capability_gets_a_typed_missing_capability_error() {
    let server = server().await;
    let client = connect_service(&server.url, token(&["orders.read"]))
        .await
        .unwrap();
    let error = client
        .orders()
        .operation::<OrdersProcessOperation>()
        .start(request("ord_denied"))
        .await
        .err()
        .unwrap();
    assert_eq!(error.code(), Some(ErrorCode::MissingCapability));
    assert!(error.to_string().contains("orders.write"), "{error}");
}
