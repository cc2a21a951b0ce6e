//! Traces: one Orders.Process exported as one span tree, from the caller's request to the
//! job's outbound charge, to a real OTLP/HTTP collector on 127.0.0.1; live attempts; a
//! caller's `traceparent` kept with the operation, carried over a restart, sent on outbound
//! requests and written on its log lines.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use opshost_api::OperationState;
use opshost_runtime::Owner;
use opshost_sandbox::egress::HttpGrant;
use opshost_sandbox::{DeploymentConfig, WasmHost};
use opshost_store_sqlite::SqliteStore;
use opshost_telemetry::{Span, Telemetry, TelemetryConfig, TraceContext, propagation};
use opshost_tests::net::{TestServer, token};
use opshost_tests::otlp::{Collector, ReceivedSpan};
use opshost_tests::upstream::Upstream;
use opshost_tests::{orders_deployment, testing_deployment};
use serde_json::{Value, json};

const GRACE: Duration = Duration::from_secs(5);
/// The caller's own span: the parent of everything the host does for its request.
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn caller_traceparent() -> String {
    format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01")
}

fn telemetry(collector: &Collector) -> Telemetry {
    let mut config = TelemetryConfig::new(collector.endpoint(), "orders-test");
    config.export_interval = Duration::from_millis(50);
    Telemetry::otlp(&config).expect("telemetry starts")
}

/// The orders deployment whose fulfillment worker charges through `payments`.
fn charging_orders(payments: &Upstream) -> DeploymentConfig {
    let mut config = orders_deployment(GRACE, 2);
    let worker = &mut config.workers[0];
    worker
        .grants
        .env
        .insert("PAYMENTS_URL".into(), payments.origin());
    worker.grants.http = Some(HttpGrant {
        allow: vec![payments.origin()],
        ..HttpGrant::default()
    });
    config
}

fn host(config: &DeploymentConfig, telemetry: Telemetry) -> WasmHost {
    WasmHost::builder(config)
        .telemetry(telemetry)
        .build()
        .expect("the deployment loads")
}

fn order() -> Value {
    json!({
        "orderId": "ord_traced",
        "lineItems": [{ "sku": "sku_1", "quantity": 2, "unitPriceCents": 1250 }]
    })
}

/// Starts an order over HTTP as a caller in trace [`CALLER_TRACE`]; answers its snapshot.
async fn start_traced_order(server: &TestServer) -> Value {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/operations/Orders.Process", server.url))
        .bearer_auth(token(&["orders.write", "orders.read"]))
        .header("traceparent", caller_traceparent())
        .json(&order())
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    response.json().await.unwrap()
}

fn one<'a>(spans: &'a [ReceivedSpan], name: &str) -> &'a ReceivedSpan {
    let found: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(
        found.len(),
        1,
        "one ended span named {name:?} in {spans:#?}"
    );
    found[0]
}

fn assert_child(child: &ReceivedSpan, parent: &ReceivedSpan) {
    assert_eq!(
        child.parent_span_id, parent.span_id,
        "{:?} hangs from {:?}",
        child.name, parent.name
    );
    assert_eq!(child.trace_id, parent.trace_id);
}

#[tokio::test]
async fn one_order_is_one_span_tree_from_the_callers_request_to_the_jobs_charge() {
    let collector = Collector::start().await;
    let payments = Upstream::start().await;
    let host = host(&charging_orders(&payments), telemetry(&collector));
    let server = TestServer::start_with_jobs(host.runtime(), host.jobs()).await;

    let accepted = start_traced_order(&server).await;
    let id = accepted["id"].as_str().unwrap().to_owned();
    let terminal = host.runtime().wait(&id, None).await.unwrap();
    assert_eq!(terminal.state, OperationState::Completed, "{terminal:?}");

    let spans = collector
        .wait_until(|spans| {
            spans
                .iter()
                .any(|s| s.name == "job fulfillment" && !s.is_open())
                && spans.iter().any(|s| s.name == "POST" && s.kind == 3)
        })
        .await;
    assert!(spans.iter().all(|s| s.service == "orders-test"));
    let ended = collector.ended();
    let request = one(&ended, "POST /v1/operations/{key}");
    assert!(
        !ended.iter().any(|s| s.name.starts_with("accept")),
        "within the request's trace, no accept span"
    );
    let attempt = one(&ended, "Orders.Process");
    let hand_off = one(&ended, "hand-off fulfillment");
    let job = one(&ended, "job fulfillment");
    let charge = ended
        .iter()
        .find(|s| s.kind == 3)
        .expect("a client span for the charge");

    assert_eq!(request.trace_id, CALLER_TRACE, "the caller's trace");
    assert_eq!(
        request.parent_span_id, CALLER_SPAN,
        "under the caller's span"
    );
    assert_eq!(request.kind, 2);
    assert_eq!(request.attribute("http.response.status_code"), "202");
    assert_eq!(request.attribute("opshost.operation.id"), id);
    assert_eq!(request.attribute("opshost.tenant"), "acme");
    assert_child(attempt, request);
    assert_child(hand_off, attempt);
    assert_child(job, hand_off);
    assert_child(charge, job);

    assert_eq!(attempt.attribute("opshost.operation.id"), id);
    assert_eq!(attempt.attribute("opshost.attempt"), "1");
    assert_eq!(attempt.attribute("opshost.tenant"), "acme");
    assert_eq!(attempt.attribute("opshost.outcome"), "handed-off");
    assert_eq!(attempt.events, ["started", "progress"]);
    assert_eq!(job.attribute("opshost.outcome"), "completed");
    assert_eq!(
        job.events.iter().filter(|e| *e == "progress").count(),
        4,
        "the worker's four steps: {:?}",
        job.events
    );
    assert_eq!(charge.attribute("http.request.method"), "POST");
    assert_eq!(charge.attribute("url.full"), payments.url("/v1/charges"));
    assert_eq!(charge.attribute("http.response.status_code"), "201");

    // The attempt and the job attempt were sent open when they started, with the same ids.
    for live in [attempt, job] {
        let open = spans
            .iter()
            .find(|s| s.is_open() && s.span_id == live.span_id)
            .unwrap_or_else(|| panic!("{} was sent when it started", live.name));
        assert_eq!(open.end, open.start, "the open copy has not ended");
    }

    // The operation keeps its trace; the payments service was called in it.
    let trace = terminal.trace.expect("the operation keeps its trace");
    assert_eq!(trace.trace_id, CALLER_TRACE);
    assert_eq!(trace.span_id, request.span_id);
    assert_eq!(accepted["trace"]["traceId"], CALLER_TRACE);
    let charged = payments
        .seen()
        .into_iter()
        .find(|seen| seen.uri == "/v1/charges")
        .expect("the charge reached the payments service");
    assert_eq!(
        charged.headers["traceparent"],
        format!("00-{CALLER_TRACE}-{}-01", charge.span_id)
    );

    // Each line the worker wrote carries the trace and its job attempt's span.
    let logs = host.runtime().logs(&id, 0, 100).await.unwrap();
    let worker_lines: Vec<_> = logs.iter().filter(|line| line.job.is_some()).collect();
    assert!(!worker_lines.is_empty(), "{logs:?}");
    for line in worker_lines {
        assert_eq!(line.trace_id.as_deref(), Some(CALLER_TRACE));
        assert_eq!(line.span_id.as_deref(), Some(job.span_id.as_str()));
    }
}

#[tokio::test]
async fn a_running_attempt_is_exported_before_it_ends_and_its_signals_are_events() {
    let collector = Collector::start().await;
    let host = host(&testing_deployment(GRACE), telemetry(&collector));
    let accepted = host
        .start(
            "Testing.Scenario",
            None,
            json!({ "scenario": "echo-signals", "signals": 1 }),
        )
        .await
        .unwrap();
    let id = accepted.id;

    let spans = collector
        .wait_until(|spans| spans.iter().any(|s| s.name == "Testing.Scenario"))
        .await;
    let open = spans.iter().find(|s| s.name == "Testing.Scenario").unwrap();
    assert!(open.is_open(), "the first copy is the open one: {open:?}");
    assert_eq!(open.attribute("opshost.operation.id"), id);
    assert!(
        !host.runtime().get(&id).await.unwrap().is_terminal(),
        "sent while the operation still runs"
    );

    host.runtime()
        .signal(&id, "Note", json!({ "text": "go" }))
        .await
        .unwrap();
    host.runtime().wait(&id, None).await.unwrap();
    collector
        .wait_until(|spans| {
            spans
                .iter()
                .any(|s| s.name == "Testing.Scenario" && !s.is_open())
        })
        .await;
    let all = collector.ended();
    let ended = one(&all, "Testing.Scenario").clone();
    assert_eq!(ended.span_id, open.span_id, "the same span, ended");
    let accept = one(&all, "accept Testing.Scenario");
    assert_eq!(
        accept.parent_span_id, "",
        "accepted outside any trace, it starts one"
    );
    assert_child(&ended, accept);
    assert!(ended.end > ended.start);
    assert_eq!(ended.events, ["started", "signal"]);
    assert_eq!(ended.attribute("opshost.outcome"), "completed");
}

#[tokio::test]
async fn a_failed_attempt_ends_its_span_in_error_with_the_failure() {
    let collector = Collector::start().await;
    let host = host(&testing_deployment(GRACE), telemetry(&collector));
    let accepted = host
        .start("Testing.Scenario", None, json!({ "scenario": "fail" }))
        .await
        .unwrap();
    host.runtime().wait(&accepted.id, None).await.unwrap();
    collector
        .wait_until(|spans| {
            spans
                .iter()
                .any(|s| s.name == "Testing.Scenario" && !s.is_open())
        })
        .await;
    let attempt = one(&collector.ended(), "Testing.Scenario").clone();
    assert_eq!(attempt.attribute("opshost.outcome"), "failed");
    let error = attempt.error.expect("an error status");
    assert!(error.contains("the scenario asked to fail"), "{error}");
}

fn sqlite_host(dir: &Path, telemetry: Telemetry) -> WasmHost {
    let store = SqliteStore::open(dir).expect("the store opens");
    WasmHost::builder(&testing_deployment(GRACE))
        .operations(Arc::new(store))
        .telemetry(telemetry)
        .build()
        .expect("the deployment loads")
}

#[tokio::test]
async fn an_attempt_after_a_restart_continues_the_operations_trace() {
    let collector = Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let first = sqlite_host(dir.path(), telemetry(&collector));
    let parent = propagation::resume(Some(&TraceContext {
        trace_id: CALLER_TRACE.into(),
        span_id: CALLER_SPAN.into(),
        sampled: true,
    }));
    // Accepted within the caller's span, then the host dies before running it.
    let id = Span::from(parent)
        .scope(async {
            first
                .runtime()
                .accept_as(
                    Owner::default(),
                    "Testing.Scenario",
                    None,
                    Some(json!({ "scenario": "complete" })),
                )
                .await
                .unwrap()
                .snapshot
                .id
        })
        .await;
    drop(first);

    let second = sqlite_host(dir.path(), telemetry(&collector));
    second.recover().await.unwrap();
    let terminal = second.runtime().wait(&id, None).await.unwrap();
    assert_eq!(terminal.attempt, 2);
    let kept = terminal.trace.expect("the trace survives the restart");
    assert_eq!(kept.trace_id, CALLER_TRACE);

    collector
        .wait_until(|spans| {
            spans
                .iter()
                .any(|s| s.name == "Testing.Scenario" && !s.is_open())
        })
        .await;
    let ended = collector.ended();
    let attempt = one(&ended, "Testing.Scenario");
    assert_eq!(attempt.trace_id, CALLER_TRACE);
    assert_eq!(
        attempt.parent_span_id, CALLER_SPAN,
        "the attempt after the restart hangs from the span current at accept"
    );
    assert_eq!(attempt.attribute("opshost.attempt"), "2");
    assert_eq!(attempt.attribute("opshost.outcome"), "completed");
}

#[tokio::test]
async fn with_telemetry_off_a_callers_trace_is_kept_sent_on_and_written_on_log_lines() {
    let payments = Upstream::start().await;
    let host = host(&charging_orders(&payments), Telemetry::off());
    let server = TestServer::start_with_jobs(host.runtime(), host.jobs()).await;

    let accepted = start_traced_order(&server).await;
    assert_eq!(
        accepted["trace"],
        json!({ "traceId": CALLER_TRACE, "spanId": CALLER_SPAN, "sampled": true })
    );
    let id = accepted["id"].as_str().unwrap();
    let terminal = host.runtime().wait(id, None).await.unwrap();
    assert_eq!(terminal.state, OperationState::Completed, "{terminal:?}");
    let charged = payments
        .seen()
        .into_iter()
        .find(|seen| seen.uri == "/v1/charges")
        .expect("the charge reached the payments service");
    assert_eq!(charged.headers["traceparent"], caller_traceparent());
    let logs = host.runtime().logs(id, 0, 100).await.unwrap();
    assert!(!logs.is_empty());
    assert!(
        logs.iter()
            .all(|line| line.trace_id.as_deref() == Some(CALLER_TRACE)),
        "{logs:?}"
    );
}

#[tokio::test]
async fn without_a_trace_an_operation_has_none_and_sends_none() {
    let payments = Upstream::start().await;
    let host = host(&charging_orders(&payments), Telemetry::off());
    let accepted = host.start("Orders.Process", None, order()).await.unwrap();
    assert_eq!(accepted.trace, None);
    let terminal = host.runtime().wait(&accepted.id, None).await.unwrap();
    assert_eq!(terminal.state, OperationState::Completed, "{terminal:?}");
    let charged = payments
        .seen()
        .into_iter()
        .find(|seen| seen.uri == "/v1/charges")
        .expect("the charge reached the payments service");
    assert!(!charged.headers.contains_key("traceparent"), "{charged:?}");
}
