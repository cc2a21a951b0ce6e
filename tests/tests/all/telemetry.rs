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
use opshost_tests::{
    guest, orders_deployment, run_scenario, testing_deployment, testing_jobs_deployment,
};
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
    let response = opshost_tests::net::http()
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

/// Waits until the collector has the ended span named `name`; answers it.
async fn ended_span(collector: &Collector, name: &str) -> ReceivedSpan {
    collector
        .wait_until(|spans| spans.iter().any(|s| s.name == name && !s.is_open()))
        .await;
    one(&collector.ended(), name).clone()
}

/// The caller's span, as an embedding service holding it would have it current.
fn caller() -> Span {
    Span::from(propagation::resume(Some(&TraceContext {
        trace_id: CALLER_TRACE.into(),
        span_id: CALLER_SPAN.into(),
        sampled: true,
        state: None,
    })))
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
    assert_eq!(job.attribute("opshost.tenant"), "acme");
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
    ended_span(&collector, "Testing.Scenario").await;
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
    let attempt = ended_span(&collector, "Testing.Scenario").await;
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
    // Accepted within the caller's span, then the host dies before running it.
    let id = caller()
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

    let attempt = ended_span(&collector, "Testing.Scenario").await;
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

/// `Testing.Scenario` served by the test-egress guest, granted `upstream`.
fn egress_deployment(upstream: &Upstream) -> DeploymentConfig {
    let mut config = testing_deployment(GRACE);
    config.handlers[0].component = guest("test_egress");
    config.handlers[0].grants.http = Some(HttpGrant {
        allow: vec![upstream.origin()],
        ..HttpGrant::default()
    });
    config
}

#[tokio::test]
async fn a_guests_own_traceparent_is_replaced_by_its_requests_span() {
    let collector = Collector::start().await;
    let upstream = Upstream::start().await;
    let host = host(&egress_deployment(&upstream), telemetry(&collector));
    let forged = "00-11111111111111111111111111111111-2222222222222222-01";
    let done = run_scenario(
        &host,
        json!({
            "scenario": "fetch",
            "url": upstream.url("/hello"),
            "header": format!("traceparent: {forged}")
        }),
    )
    .await;
    assert_eq!(done.state, OperationState::Completed, "{done:?}");
    let spans = collector
        .wait_until(|spans| spans.iter().any(|s| s.kind == 3))
        .await;
    let client = spans.iter().find(|s| s.kind == 3).unwrap();
    let sent = &upstream.seen()[0].headers["traceparent"];
    assert_ne!(sent, forged);
    assert_eq!(
        *sent,
        format!("00-{}-{}-01", client.trace_id, client.span_id),
        "the request carries its own client span"
    );
}

#[tokio::test]
async fn a_malformed_traceparent_is_ignored_and_an_unsampled_one_is_kept_unrecorded() {
    let collector = Collector::start().await;
    let host = host(&orders_deployment(GRACE, 1), telemetry(&collector));
    let server = TestServer::start_with_jobs(host.runtime(), host.jobs()).await;
    let start = |traceparent: String| {
        opshost_tests::net::http()
            .post(format!("{}/v1/operations/Orders.Process", server.url))
            .bearer_auth(token(&["orders.write", "orders.read"]))
            .header("traceparent", traceparent)
            .json(&order())
            .send()
    };

    let malformed = start("00-not-a-trace-01".into()).await.unwrap();
    assert_eq!(malformed.status(), 202);
    let malformed: Value = malformed.json().await.unwrap();
    let fresh = malformed["trace"]["traceId"].as_str().unwrap().to_owned();

    let unsampled: Value = start(format!("00-{CALLER_TRACE}-{CALLER_SPAN}-00"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(unsampled["trace"]["traceId"], CALLER_TRACE);
    assert_eq!(unsampled["trace"]["sampled"], false);
    let id = unsampled["id"].as_str().unwrap();
    host.runtime().wait(id, None).await.unwrap();
    host.runtime()
        .wait(malformed["id"].as_str().unwrap(), None)
        .await
        .unwrap();
    collector
        .wait_until(|spans| {
            spans
                .iter()
                .any(|s| s.name == "job fulfillment" && !s.is_open())
        })
        .await;
    assert!(
        collector.spans().iter().all(|s| s.trace_id != CALLER_TRACE),
        "nothing of the unsampled trace is exported"
    );
    let request = collector
        .ended()
        .into_iter()
        .find(|s| s.trace_id == fresh && s.kind == 2)
        .expect("the request with the malformed traceparent was traced");
    assert_eq!(
        request.parent_span_id, "",
        "it starts a trace of its own instead"
    );
}

#[tokio::test]
async fn every_attempt_sent_open_is_sent_ended() {
    let collector = Collector::start().await;
    let host = host(&testing_deployment(GRACE), telemetry(&collector));
    let mut ids = Vec::new();
    for _ in 0..200 {
        let accepted = host
            .start("Testing.Scenario", None, json!({ "scenario": "complete" }))
            .await
            .unwrap();
        ids.push(accepted.id);
    }
    for id in &ids {
        host.runtime().wait(id, None).await.unwrap();
    }
    let spans = collector
        .wait_until(|spans| {
            spans
                .iter()
                .filter(|s| s.name == "Testing.Scenario" && !s.is_open())
                .count()
                == 200
        })
        .await;
    let open: Vec<&str> = spans
        .iter()
        .filter(|s| s.is_open())
        .map(|s| s.span_id.as_str())
        .collect();
    assert_eq!(open.len(), 200);
    for span_id in open {
        assert!(
            spans.iter().any(|s| !s.is_open() && s.span_id == span_id),
            "{span_id} was sent ended"
        );
    }
}

#[tokio::test]
async fn a_cancelled_attempt_records_the_request_and_ends_cancelled() {
    let collector = Collector::start().await;
    let host = host(&testing_deployment(GRACE), telemetry(&collector));
    let accepted = host
        .start(
            "Testing.Scenario",
            None,
            json!({ "scenario": "await-cancel" }),
        )
        .await
        .unwrap();
    collector
        .wait_until(|spans| spans.iter().any(|s| s.name == "Testing.Scenario"))
        .await;
    let cancelled = host.runtime().cancel(&accepted.id).await.unwrap();
    assert_eq!(cancelled.state, OperationState::Cancelled);
    let attempt = ended_span(&collector, "Testing.Scenario").await;
    assert_eq!(attempt.attribute("opshost.outcome"), "cancelled");
    assert!(
        attempt.events.iter().any(|e| e == "cancel requested"),
        "{:?}",
        attempt.events
    );
}

#[tokio::test]
async fn a_job_enqueued_in_a_trace_runs_its_attempts_in_it_and_a_dead_one_ends_in_error() {
    let collector = Collector::start().await;
    let mut config = testing_jobs_deployment(GRACE);
    config
        .workers
        .retain(|worker| worker.queue == "testing.work");
    let host = host(&config, telemetry(&collector));
    let job = caller()
        .scope(
            host.jobs()
                .enqueue("testing.work", json!({ "behaviour": "trap" })),
        )
        .await
        .unwrap();
    let enqueued = job.trace.clone().expect("the job keeps its trace");
    assert_eq!(enqueued.trace_id, CALLER_TRACE);
    let dead = opshost_tests::jobs::final_state(host.jobs(), &job.id).await;
    let spans = collector
        .wait_until(|spans| {
            spans
                .iter()
                .filter(|s| s.name == "job testing.work" && !s.is_open())
                .count()
                == dead.attempt as usize
        })
        .await;
    let enqueue = spans
        .iter()
        .find(|s| s.name == "enqueue testing.work")
        .expect("an enqueue span");
    assert_eq!(enqueue.parent_span_id, CALLER_SPAN);
    assert_eq!(enqueue.span_id, enqueued.span_id);
    let ended = collector.ended();
    let attempts: Vec<&ReceivedSpan> = ended
        .iter()
        .filter(|s| s.name == "job testing.work")
        .collect();
    assert!(attempts.len() >= 2, "{attempts:?}");
    for attempt in &attempts {
        assert_child(attempt, enqueue);
        assert!(attempt.error.is_some(), "{attempt:?}");
    }
    let outcomes: Vec<&str> = attempts
        .iter()
        .map(|a| a.attribute("opshost.outcome"))
        .collect();
    assert!(outcomes.contains(&"retrying"), "{outcomes:?}");
    assert_eq!(outcomes.last(), Some(&"dead"), "{outcomes:?}");
}

/// A collector that takes connections and never answers.
async fn black_hole() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((connection, _)) = listener.accept().await {
            open.push(connection);
        }
    });
    (address, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_costs_operations_nothing_and_shutdown_ends() {
    let (address, _held) = black_hole().await;
    let mut config = TelemetryConfig::new(format!("http://{address}"), "orders-test");
    config.export_interval = Duration::from_millis(10);
    config.max_queue = 64;
    let telemetry = Telemetry::otlp(&config).unwrap();
    let host = host(&testing_deployment(GRACE), telemetry.clone());
    // Far more spans than the queue holds, while every export hangs.
    let mut ids = Vec::new();
    for _ in 0..100 {
        ids.push(
            host.start("Testing.Scenario", None, json!({ "scenario": "complete" }))
                .await
                .unwrap()
                .id,
        );
    }
    for id in &ids {
        let done = tokio::time::timeout(Duration::from_secs(30), host.runtime().wait(id, None))
            .await
            .expect("operations do not wait for the collector")
            .unwrap();
        assert_eq!(done.state, OperationState::Completed);
    }
    let stopped = tokio::task::spawn_blocking(move || telemetry.shutdown(Duration::from_secs(1)));
    tokio::time::timeout(Duration::from_secs(30), stopped)
        .await
        .expect("shutdown gives up on the collector")
        .unwrap();
}
