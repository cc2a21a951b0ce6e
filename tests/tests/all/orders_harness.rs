//! The orders-process and orders-fulfillment guests tested the way a guest author would:
//! through the `opshost-test` harness, on virtual time, with injected faults.

use std::time::{Duration, Instant};

use opshost_api::{ErrorCode, OperationState};
use opshost_sandbox::Grants;
use opshost_sandbox::egress::HttpGrant;
use opshost_test::{Clock, Fault, Faults, Harness, HarnessBuilder, Import};
use opshost_tests::{guest, root};
use orders_participant::operations::OrdersProcess;
use orders_participant::signals::OrdersProcessExpedite;
use orders_participant::{
    ExpediteRequest, LineItem, ProcessOrderRequest, ProcessOrderResultStatus,
};

/// Virtual time one fulfilment step waits (the worker's `STEP_TIME`).
const STEP: Duration = Duration::from_millis(300);

fn orders() -> HarnessBuilder {
    Harness::builder(root().join("contracts/orders_service.manifest.json"))
        .handler("Orders.Process", guest("orders_process"))
        .worker("fulfillment", guest("orders_fulfillment"), 4)
        .grants(Grants {
            http: Some(HttpGrant::default()),
            ..Grants::default()
        })
}

fn order() -> ProcessOrderRequest {
    ProcessOrderRequest {
        order_id: "ord_123".into(),
        line_items: vec![
            LineItem {
                sku: "KB-ERGO-01".into(),
                quantity: 1,
                unit_price_cents: 12_900,
            },
            LineItem {
                sku: "USB-C-2M".into(),
                quantity: 3,
                unit_price_cents: 1_250,
            },
        ],
    }
}

#[tokio::test]
async fn an_order_goes_through_every_step_as_virtual_time_advances() {
    let began = Instant::now();
    let harness = orders().build().unwrap();
    let run = harness.start::<OrdersProcess>(order()).await.unwrap();
    for _ in 0..4 {
        harness.advance(STEP).await.unwrap();
    }
    let done = run.wait().await.unwrap();
    assert_eq!(done.state, OperationState::Completed, "{done:?}");
    let output = done.output.unwrap();
    assert_eq!(output.status, ProcessOrderResultStatus::Shipped);
    assert_eq!(output.total_cents, 12_900 + 3 * 1_250);
    assert!(!output.expedited);
    let steps: Vec<String> = run
        .progress()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.step)
        .collect();
    assert_eq!(
        steps,
        ["queued", "reserving", "charging", "packing", "shipping"]
    );
    eprintln!("harness test of the orders guest: {:?}", began.elapsed());
}

#[tokio::test]
async fn nothing_moves_until_the_test_advances_the_clock() {
    let harness = orders().build().unwrap();
    let run = harness.start::<OrdersProcess>(order()).await.unwrap();
    harness.sleeping().await.unwrap();
    tokio::time::sleep(STEP * 2).await;
    let waiting = run.get().await.unwrap();
    assert_eq!(waiting.state, OperationState::Running);
    assert_eq!(
        waiting.progress.unwrap().completed,
        0,
        "two real steps passed, no virtual time did"
    );
    harness.advance(STEP).await.unwrap();
    let first = run
        .until(|s| s.progress.as_ref().is_some_and(|p| p.completed == 1))
        .await
        .unwrap();
    assert_eq!(first.progress.unwrap().step, "reserving");
}

#[tokio::test]
async fn expedite_shortens_the_remaining_steps() {
    let harness = orders().build().unwrap();
    let run = harness.start::<OrdersProcess>(order()).await.unwrap();
    harness.sleeping().await.unwrap();
    let sequence = run
        .signal::<OrdersProcessExpedite>(&ExpediteRequest {
            reason: "customer is waiting".into(),
        })
        .await
        .unwrap();
    assert_eq!(sequence, 1);
    run.until(|s| s.progress.as_ref().is_some_and(|p| p.step != "queued"))
        .await
        .unwrap();
    for _ in 0..3 {
        harness.advance(Duration::from_millis(30)).await.unwrap();
    }
    let done = run.wait().await.unwrap();
    assert_eq!(done.state, OperationState::Completed, "{done:?}");
    assert!(done.output.unwrap().expedited);
    assert!(
        harness.clock().monotonic() < STEP,
        "three expedited steps of 30 ms, no full step"
    );
}

#[tokio::test]
async fn cancel_releases_the_stock_and_ends_the_order_cancelled() {
    let harness = orders().build().unwrap();
    let run = harness.start::<OrdersProcess>(order()).await.unwrap();
    harness.sleeping().await.unwrap();
    let cancelled = run.cancel().await.unwrap();
    assert_eq!(cancelled.state, OperationState::Cancelled, "{cancelled:?}");
    assert_eq!(cancelled.progress.unwrap().step, "cleanup");
}

#[tokio::test]
async fn a_refused_progress_fails_the_order_with_the_hosts_message() {
    let faults = Faults::new().at(Import::Progress, 1, Fault::Refuse("disk full".into()));
    let harness = orders().faults(faults).build().unwrap();
    let run = harness.start::<OrdersProcess>(order()).await.unwrap();
    let failed = run.wait().await.unwrap();
    assert_eq!(failed.state, OperationState::Failed);
    let error = failed.error.unwrap();
    assert_eq!(error.code, ErrorCode::HandlerFailed);
    assert!(error.message.contains("disk full"), "{}", error.message);
}

#[tokio::test]
async fn a_cancel_requested_at_the_first_wait_takes_the_cleanup_path() {
    let faults = Faults::new().at(Import::NextSignal, 1, Fault::RequestCancel);
    let harness = orders().faults(faults).build().unwrap();
    let run = harness.start::<OrdersProcess>(order()).await.unwrap();
    let ended = run.wait().await.unwrap();
    assert_eq!(ended.state, OperationState::Cancelled, "{ended:?}");
    assert_eq!(ended.progress.unwrap().step, "cleanup");
    assert_eq!(harness.clock().sleepers(), 0);
}
