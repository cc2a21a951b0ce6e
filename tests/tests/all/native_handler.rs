//! A native Rust handler on `InMemoryOperationRuntime`, registered
//! with `Router::register_operation`, goes through the same flow as the wasm guest.

use std::time::Duration;

use futures::StreamExt;
use opshost_api::{ErrorCode, EventKind, OperationState};
use opshost_runtime::{
    InMemoryOperationRuntime, OperationFailure, RequestContext, Router, ServerError,
};
use opshost_tests::net::{TestServer, token};
use orders_participant::operations::OrdersProcess;
use orders_participant::{
    LineItem, ProcessOrderProgress, ProcessOrderRequest, ProcessOrderResult,
    ProcessOrderResultStatus,
};

async fn run_fulfillment(input: ProcessOrderRequest) -> Result<ProcessOrderResult, ServerError> {
    tokio::time::sleep(Duration::from_millis(20)).await;
    if let Some(item) = input.line_items.iter().find(|i| i.sku == "OUT-OF-STOCK") {
        return Err(ServerError::Failed(format!(
            "{} cannot be reserved",
            item.sku
        )));
    }
    Ok(ProcessOrderResult {
        total_cents: input
            .line_items
            .iter()
            .map(|i| i.quantity * i.unit_price_cents)
            .sum(),
        order_id: input.order_id,
        status: ProcessOrderResultStatus::Shipped,
        tracking_number: "TRK-NATIVE".into(),
        expedited: false,
    })
}

fn guide_router(runtime: &InMemoryOperationRuntime) -> Router {
    let operations = runtime.operation::<orders_participant::operations::OrdersProcess>();
    let mut router = Router::new();
    router.register_operation::<orders_participant::operations::OrdersProcess, _, _, _, _, _, _, _, _>(
        {
            let operations = operations.clone();
            move |_ctx, input| {
                let operations = operations.clone();
                async move {
                    let operation_id = format!("orders-process-{}", input.order_id);
                    let accepted = operations.accept(operation_id.clone()).await?;
                    let control = operations.control(operation_id).await?;

                    control.started().await?;
                    control
                        .progress(ProcessOrderProgress {
                            step: "queued".into(),
                            message: "Fulfillment started".into(),
                            completed: 0,
                            total: 1,
                        })
                        .await?;

                    tokio::spawn(async move {
                        let result = run_fulfillment(input).await;
                        match result {
                            Ok(output) => {
                                let _ = control.complete(output).await;
                            }
                            Err(error) => {
                                let _ = control
                                    .fail(OperationFailure {
                                        message: error.to_string(),
                                    })
                                    .await;
                            }
                        }
                    });

                    Ok(accepted)
                }
            }
        },
        {
            let operations = operations.clone();
            move |_ctx, operation_id| {
                let operations = operations.clone();
                async move { operations.get(operation_id).await }
            }
        },
        {
            let operations = operations.clone();
            move |_ctx, operation_id| {
                let operations = operations.clone();
                async move { operations.wait(operation_id).await }
            }
        },
        |_ctx, _operation_id| async move {
            Err(ServerError::OperationUnsupportedControl {
                operation: "Orders.Process".into(),
                action: "cancel".into(),
            })
        },
    );
    router
}

fn request(order_id: &str, items: Vec<LineItem>) -> serde_json::Value {
    serde_json::to_value(ProcessOrderRequest {
        order_id: order_id.into(),
        line_items: items,
    })
    .unwrap()
}

fn item() -> LineItem {
    LineItem {
        sku: "SKU-1".into(),
        quantity: 2,
        unit_price_cents: 500,
    }
}

#[tokio::test]
async fn the_guides_native_handler_runs_start_get_wait_through_the_router() {
    let runtime = InMemoryOperationRuntime::new("orders-service");
    let router = guide_router(&runtime);
    let ctx = RequestContext::default();
    let accepted = router
        .start(
            ctx.clone(),
            "Orders.Process",
            request("ord_123", vec![item()]),
        )
        .await
        .unwrap();
    assert_eq!(accepted.id, "orders-process-ord_123");
    assert_eq!(accepted.revision, 1);

    let terminal = router
        .wait(ctx.clone(), "Orders.Process", &accepted.id)
        .await
        .unwrap();
    assert_eq!(terminal.state, OperationState::Completed);
    assert_eq!(terminal.output.as_ref().unwrap()["totalCents"], 1000);
    assert_eq!(
        router
            .get(ctx.clone(), "Orders.Process", &accepted.id)
            .await
            .unwrap(),
        terminal
    );

    let kinds: Vec<EventKind> = runtime
        .watch(&accepted.id, Some(0))
        .map(|e| e.unwrap().kind())
        .collect()
        .await;
    assert_eq!(
        kinds,
        [
            EventKind::Accepted,
            EventKind::Started,
            EventKind::Progress,
            EventKind::Completed
        ]
    );

    let cancel = router
        .cancel(ctx, "Orders.Process", &accepted.id)
        .await
        .unwrap_err();
    assert_eq!(cancel.code(), ErrorCode::OperationUnsupportedControl);
}

#[tokio::test]
async fn the_router_refuses_start_input_that_breaks_the_contract() {
    let runtime = InMemoryOperationRuntime::new("orders-service");
    let router = guide_router(&runtime);
    let error = router
        .start(
            RequestContext::default(),
            "Orders.Process",
            request("ord_empty", vec![]),
        )
        .await
        .unwrap_err();
    assert_eq!(error.code(), ErrorCode::InvalidInput);
    assert!(error.to_string().contains("/lineItems"), "{error}");
    let missing = runtime.get("orders-process-ord_empty").await.unwrap_err();
    assert_eq!(
        missing.code(),
        ErrorCode::OperationNotFound,
        "nothing was accepted"
    );
}

#[tokio::test]
async fn a_failing_native_job_fails_the_operation_with_its_message() {
    let runtime = InMemoryOperationRuntime::new("orders-service");
    let router = guide_router(&runtime);
    let ctx = RequestContext::default();
    let mut bad = item();
    bad.sku = "OUT-OF-STOCK".into();
    let accepted = router
        .start(
            ctx.clone(),
            "Orders.Process",
            request("ord_fail", vec![bad]),
        )
        .await
        .unwrap();
    let terminal = router
        .wait(ctx, "Orders.Process", &accepted.id)
        .await
        .unwrap();
    assert_eq!(terminal.state, OperationState::Failed);
    let error = terminal.error.unwrap();
    assert_eq!(error.code, ErrorCode::HandlerFailed);
    assert_eq!(error.message, "OUT-OF-STOCK cannot be reserved");
}

#[tokio::test]
async fn typed_watch_yields_typed_progress_and_output() {
    let runtime = InMemoryOperationRuntime::new("orders-service");
    let router = guide_router(&runtime);
    let accepted = router
        .start(
            RequestContext::default(),
            "Orders.Process",
            request("ord_typed", vec![item()]),
        )
        .await
        .unwrap();
    let operations = runtime.operation::<OrdersProcess>();
    let mut stream = operations.watch(&accepted.id, Some(0));
    let mut saw_progress = false;
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            opshost_api::OperationEvent::Progress { snapshot } => {
                saw_progress = snapshot.progress.unwrap().step == "queued";
            }
            opshost_api::OperationEvent::Completed { snapshot } => {
                assert_eq!(snapshot.output.unwrap().tracking_number, "TRK-NATIVE");
                break;
            }
            _ => {}
        }
    }
    assert!(saw_progress);
}

#[tokio::test]
async fn attach_fails_the_operation_when_the_work_leaves_it_open() {
    let runtime = InMemoryOperationRuntime::new("orders-service");
    let operations = runtime.operation::<OrdersProcess>();
    operations.accept("attach-open").await.unwrap();
    let control = operations.control("attach-open").await.unwrap();
    control.started().await.unwrap();
    let error = control
        .attach(async { Ok::<(), ServerError>(()) })
        .await
        .unwrap_err();
    assert_eq!(error.code(), ErrorCode::HandlerNonTerminal);
    let snapshot = operations.get("attach-open").await.unwrap();
    assert_eq!(snapshot.state, OperationState::Failed);
    assert_eq!(snapshot.error.unwrap().code, ErrorCode::HandlerNonTerminal);
}

#[tokio::test]
async fn attach_succeeds_when_the_work_completes_the_operation() {
    let runtime = InMemoryOperationRuntime::new("orders-service");
    let operations = runtime.operation::<OrdersProcess>();
    operations.accept("attach-done").await.unwrap();
    let control = operations.control("attach-done").await.unwrap();
    let input = ProcessOrderRequest {
        order_id: "attach-done".into(),
        line_items: vec![item()],
    };
    control
        .attach(async {
            let output = run_fulfillment(input).await?;
            control.complete(output).await?;
            Ok::<(), ServerError>(())
        })
        .await
        .unwrap();
    assert_eq!(
        operations.get("attach-done").await.unwrap().state,
        OperationState::Completed
    );
}

#[tokio::test]
async fn a_native_handler_reporting_invalid_progress_gets_an_error_and_the_operation_is_unchanged()
{
    let runtime = InMemoryOperationRuntime::new("orders-service");
    let operations = runtime.operation::<OrdersProcess>();
    operations.accept("bad-progress").await.unwrap();
    let control = operations.control("bad-progress").await.unwrap();
    let error = control
        .progress(ProcessOrderProgress {
            step: String::new(),
            message: "empty step".into(),
            completed: 0,
            total: 0,
        })
        .await
        .unwrap_err();
    let ServerError::InvalidInput { issues, .. } = &error else {
        panic!("expected InvalidInput, got {error:?}");
    };
    let pointers: Vec<&str> = issues.iter().map(|i| i.pointer.as_str()).collect();
    assert_eq!(pointers, ["/step", "/total"]);
    assert_eq!(operations.get("bad-progress").await.unwrap().revision, 1);
}

#[tokio::test]
async fn cancel_wakes_a_native_handler_that_then_acknowledges() {
    let runtime = InMemoryOperationRuntime::new("orders-service");
    let operations = runtime.operation::<OrdersProcess>();
    operations.accept("native-cancel").await.unwrap();
    let control = operations.control("native-cancel").await.unwrap();
    control.started().await.unwrap();
    let handler = tokio::spawn(async move {
        control.cancelled().await;
        assert!(control.cancel_requested().await.unwrap());
        control.acknowledge_cancel().await.unwrap();
    });
    let terminal = operations.cancel("native-cancel").await.unwrap();
    handler.await.unwrap();
    assert_eq!(terminal.state, OperationState::Cancelled);
    assert_eq!(terminal.error.unwrap().message, "cancelled by caller");
}

fn keyboard() -> ProcessOrderRequest {
    ProcessOrderRequest {
        order_id: "ord_native_http".into(),
        line_items: vec![LineItem {
            sku: "KB-ERGO-01".into(),
            quantity: 2,
            unit_price_cents: 12900,
        }],
    }
}

#[tokio::test]
async fn a_native_handler_registered_with_serve_is_started_over_http() {
    let runtime = InMemoryOperationRuntime::new("orders-service");
    runtime
        .operation::<OrdersProcess>()
        .serve(|control, input| async move {
            control.started().await?;
            control
                .progress(ProcessOrderProgress {
                    step: "queued".into(),
                    message: "Fulfillment started".into(),
                    completed: 0,
                    total: 1,
                })
                .await?;
            control.complete(run_fulfillment(input).await?).await?;
            Ok(())
        });
    let server = TestServer::start(&runtime).await;
    let client =
        orders_participant::connect_service(&server.url, token(&["orders.write", "orders.read"]))
            .await
            .unwrap();
    let op_ref = client
        .orders()
        .operation::<OrdersProcess>()
        .start(keyboard())
        .await
        .unwrap();
    let terminal = op_ref.wait().await.unwrap();
    assert_eq!(terminal.state, OperationState::Completed);
    assert_eq!(terminal.output.unwrap().total_cents, 2 * 12900);
    assert_eq!(terminal.progress.unwrap().step, "queued");
}

#[tokio::test]
async fn a_served_native_handler_that_returns_early_fails_its_operation() {
    let runtime = InMemoryOperationRuntime::new("orders-service");
    let operations = runtime.operation::<OrdersProcess>();
    operations.serve(|control, _input| async move {
        control.started().await?;
        Ok(())
    });
    let owner = opshost_runtime::Owner::default();
    let accepted = runtime
        .start(
            owner,
            "Orders.Process",
            None,
            serde_json::to_value(keyboard()).unwrap(),
        )
        .await
        .unwrap();
    let terminal = operations.wait(&accepted.snapshot.id).await.unwrap();
    assert_eq!(terminal.state, OperationState::Failed);
    assert_eq!(terminal.error.unwrap().code, ErrorCode::HandlerNonTerminal);
}
