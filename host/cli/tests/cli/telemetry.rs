//! Traces from outside: a real `opshost serve` exporting to a real OTLP/HTTP collector on
//! 127.0.0.1, one order started by a caller with its own `traceparent`.

use std::path::{Path, PathBuf};

use opshost_tests::otlp::{Collector, ReceivedSpan};
use serde_json::{Value, json};

use crate::common::{payments, root, token};
use crate::{Serve, runtime, text};

const CALLER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_SPAN: &str = "b7ad6b7169203331";

/// The orders deployment (its worker charging the payments service), exporting its spans to
/// `endpoint` every 100 ms.
fn traced_config(dir: &Path, endpoint: &str) -> PathBuf {
    let contracts = root().join("contracts");
    let original = std::fs::read_to_string(contracts.join("orders.deploy.toml")).unwrap();
    let absolute = original
        .replace(
            "\"orders_service.manifest.json\"",
            &format!("{:?}", contracts.join("orders_service.manifest.json")),
        )
        .replace("\"../target/", &format!("\"{}/target/", root().display()))
        .replace(
            "\"payments.token\"",
            &format!("{:?}", contracts.join("payments.token")),
        );
    let config = format!(
        "{absolute}\n[telemetry]\notlp_endpoint = {endpoint:?}\nservice_name = \"orders\"\nexport_interval_ms = 100\n"
    );
    let path = dir.join("traced.deploy.toml");
    std::fs::write(&path, config).unwrap();
    path
}

fn ended<'a>(spans: &'a [ReceivedSpan], name: &str) -> &'a ReceivedSpan {
    spans
        .iter()
        .rev()
        .find(|span| span.name == name && !span.is_open())
        .unwrap_or_else(|| panic!("no ended span {name:?} in {spans:#?}"))
}

#[test]
fn serve_exports_the_span_tree_of_one_order_from_the_callers_request_to_its_charge() {
    payments();
    let runtime = runtime();
    let collector = runtime.block_on(Collector::start());
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::with_config(&traced_config(dir.path(), &collector.endpoint()));
    let token = token(&["orders.write", "orders.read"]);
    let order_id = format!("ord_{}", ulid::Ulid::new());

    let accepted: Value = runtime.block_on(async {
        opshost_tests::net::http()
            .post(format!("{}/v1/operations/Orders.Process", serve.url))
            .bearer_auth(&token)
            .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
            .json(&json!({
                "orderId": order_id,
                "lineItems": [{ "sku": "KB-ERGO-01", "quantity": 1, "unitPriceCents": 12900 }]
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert_eq!(accepted["trace"]["traceId"], CALLER_TRACE, "{accepted}");
    let id = accepted["id"].as_str().unwrap();
    let waited = serve.call(&token, &["wait", id]);
    assert!(waited.status.success(), "{}", text(&waited.stderr));

    let spans = runtime.block_on(collector.wait_until(|spans| {
        spans
            .iter()
            .any(|s| s.name == "job fulfillment" && !s.is_open())
            && spans.iter().any(|s| s.kind == 3 && !s.is_open())
    }));
    let request = ended(&spans, "POST /v1/operations/{key}");
    let attempt = ended(&spans, "Orders.Process");
    let hand_off = ended(&spans, "hand-off fulfillment");
    let job = ended(&spans, "job fulfillment");
    let charge = ended(&spans, "POST");
    let tree = [
        (request, CALLER_SPAN),
        (attempt, request.span_id.as_str()),
        (hand_off, attempt.span_id.as_str()),
        (job, hand_off.span_id.as_str()),
        (charge, job.span_id.as_str()),
    ];
    for (span, parent) in tree {
        assert_eq!(span.trace_id, CALLER_TRACE, "{span:?}");
        assert_eq!(span.parent_span_id, parent, "the parent of {:?}", span.name);
        assert_eq!(span.service, "orders");
    }
    assert_eq!(
        charge.attribute("url.full"),
        "http://127.0.0.1:18091/v1/charges"
    );
    assert_eq!(charge.attribute("http.response.status_code"), "201");
    assert!(
        spans
            .iter()
            .any(|s| s.is_open() && s.span_id == attempt.span_id),
        "the attempt was sent when it started"
    );

    // The worker's log lines carry the trace and the span of its job attempt.
    let got = serve.call(&token, &["get", id]);
    assert_eq!(
        serde_json::from_slice::<Value>(&got.stdout).unwrap()["trace"]["traceId"],
        CALLER_TRACE
    );
    let logs = serve.call(&token, &["logs", id, "--json"]);
    assert!(logs.status.success(), "{}", text(&logs.stderr));
    let lines: Vec<Value> = text(&logs.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let charged = lines
        .iter()
        .find(|line| line["stream"] == "http")
        .unwrap_or_else(|| panic!("no outbound record in {lines:?}"));
    assert_eq!(charged["traceId"], CALLER_TRACE);
    assert_eq!(charged["spanId"], job.span_id.as_str());
}

#[test]
fn serve_refuses_an_otlp_endpoint_it_cannot_send_to_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = traced_config(dir.path(), "https://collector.example:4318");
    let out = crate::common::opshost()
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let error = text(&out.stderr);
    assert!(
        error.contains("telemetry.otlp_endpoint `https://collector.example:4318`"),
        "{error}"
    );
    assert!(error.contains("http://"), "{error}");
}
