//! The HTTP API on the wire: SSE watch, idempotency, inline waits, listing, bad input, limits,
//! and the documents beside the API (contract, OpenAPI, health, metrics).

use std::sync::Arc;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use opshost_runtime::store::{MemoryStore, OperationStore};
use opshost_runtime::{OperationRuntime, Owner};
use opshost_sandbox::WasmHost;
use opshost_server::ServerConfig;
use opshost_store_sqlite::SqliteStore;
use opshost_tests::net::{TENANT, TestServer, token};
use opshost_tests::{orders_host, testing_deployment, testing_host, testing_host_limited};
use reqwest::StatusCode;
use serde_json::{Value, json};

const ORDERS: &[&str] = &["orders.write", "orders.read"];
const TESTING: &[&str] = &["testing.run"];

fn order(id: &str) -> Value {
    json!({ "orderId": id, "lineItems": [{ "sku": "A", "quantity": 2, "unitPriceCents": 500 }] })
}

struct Api {
    server: TestServer,
    http: reqwest::Client,
    token: String,
}

impl Api {
    async fn orders() -> Self {
        Self::new(
            orders_host(Duration::from_secs(5)).runtime(),
            ORDERS,
            ServerConfig::default(),
        )
        .await
    }

    async fn testing() -> Self {
        Self::new(
            testing_host(Duration::from_secs(5)).runtime(),
            TESTING,
            ServerConfig::default(),
        )
        .await
    }

    async fn new(runtime: &OperationRuntime, scopes: &[&str], config: ServerConfig) -> Self {
        Self {
            server: TestServer::start_with(runtime, config).await,
            http: opshost_tests::net::http(),
            token: token(scopes),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.url)
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(self.url(path)).bearer_auth(&self.token)
    }

    /// The JSON body `GET path` answers.
    async fn read(&self, path: &str) -> Value {
        self.get(path).send().await.unwrap().json().await.unwrap()
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.post(self.url(path)).bearer_auth(&self.token)
    }

    async fn start(&self, operation: &str, input: Value) -> Value {
        let response = self
            .post(&format!("/v1/operations/{operation}"))
            .json(&input)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        response.json().await.unwrap()
    }

    /// A `Testing.Scenario` run to completion inline (`Prefer: wait`): its terminal snapshot.
    async fn completed(&self) -> Value {
        let response = self
            .post("/v1/operations/Testing.Scenario")
            .header("prefer", "wait=20")
            .json(&json!({ "scenario": "complete" }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let snapshot: Value = response.json().await.unwrap();
        assert_eq!(snapshot["state"], "completed");
        snapshot
    }

    /// Every SSE message of a watch until the server closes it.
    async fn events(&self, request: reqwest::RequestBuilder) -> Vec<eventsource_stream::Event> {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        response
            .bytes_stream()
            .eventsource()
            .map(|event| event.unwrap())
            .collect()
            .await
    }

    async fn error(&self, response: reqwest::Response) -> (StatusCode, Value) {
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        (status, body["error"].clone())
    }

    /// The host still answers after bad input.
    async fn still_serving(&self) {
        let response = self.http.get(self.url("/healthz")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
}

fn revision(event: &eventsource_stream::Event) -> u64 {
    event.id.parse().unwrap()
}

#[tokio::test]
async fn watch_streams_every_change_as_sse_with_the_revision_as_id() {
    let api = Api::orders().await;
    let accepted = api.start("Orders.Process", order("ord_sse")).await;
    let id = accepted["id"].as_str().unwrap();
    let events = api
        .events(api.get(&format!("/v1/operations/{id}/events?after=0")))
        .await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names.first(), Some(&"accepted"));
    assert_eq!(names[1], "started");
    assert_eq!(names.last(), Some(&"completed"));
    assert!(names[2..names.len() - 1].iter().all(|n| *n == "progress"));
    let revisions: Vec<u64> = events.iter().map(revision).collect();
    assert_eq!(revisions, (1..=events.len() as u64).collect::<Vec<_>>());
    for event in &events {
        let snapshot: Value = serde_json::from_str(&event.data).unwrap();
        assert_eq!(snapshot["revision"].as_u64(), Some(revision(event)));
        assert_eq!(snapshot["id"], id);
    }
}

#[tokio::test]
async fn a_dropped_watch_resumed_with_last_event_id_sees_each_later_revision_once() {
    let api = Api::orders().await;
    let accepted = api.start("Orders.Process", order("ord_resume")).await;
    let id = accepted["id"].as_str().unwrap();
    let path = format!("/v1/operations/{id}/events?after=0");
    let response = api.get(&path).send().await.unwrap();
    let mut first = response.bytes_stream().eventsource();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.push(revision(&first.next().await.unwrap().unwrap()));
    }
    drop(first);
    let last = *seen.last().unwrap();
    let rest = api
        .events(
            api.get(&format!("/v1/operations/{id}/events"))
                .header("last-event-id", last.to_string()),
        )
        .await;
    assert_eq!(rest.last().unwrap().event, "completed");
    seen.extend(rest.iter().map(revision));
    assert_eq!(seen, (1..=seen.len() as u64).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_watch_opened_after_completion_gets_the_terminal_snapshot_and_closes() {
    let api = Api::testing().await;
    let accepted = api
        .start("Testing.Scenario", json!({ "scenario": "complete" }))
        .await;
    let id = accepted["id"].as_str().unwrap();
    let terminal = api
        .read(&format!("/v1/operations/{id}/wait?timeout=30"))
        .await;
    assert_eq!(terminal["state"], "completed");
    let events = api
        .events(api.get(&format!("/v1/operations/{id}/events")))
        .await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event, "completed");
    assert_eq!(revision(&events[0]), terminal["revision"].as_u64().unwrap());
}

#[tokio::test]
async fn an_idle_watch_receives_keep_alive_comments() {
    let host = testing_host(Duration::from_secs(5));
    let config = ServerConfig {
        keep_alive_secs: 1,
        ..ServerConfig::default()
    };
    let api = Api::new(host.runtime(), TESTING, config).await;
    let owner = Owner {
        tenant: TENANT.into(),
        subject: "alice".into(),
    };
    let id = api
        .server
        .runtime
        .accept_as(
            owner,
            "Testing.Scenario",
            None,
            Some(json!({ "scenario": "complete" })),
        )
        .await
        .unwrap()
        .snapshot
        .id;
    let response = api
        .get(&format!("/v1/operations/{id}/events"))
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let mut text = String::new();
    while !text.lines().any(|line| line.starts_with(':')) {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("a keep-alive within 10 s")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.starts_with("event: accepted"), "{text}");
}

#[tokio::test]
async fn the_same_idempotency_key_and_body_return_the_same_operation() {
    let api = Api::orders().await;
    let send = |body: Value| {
        api.post("/v1/operations/Orders.Process")
            .header("idempotency-key", "checkout-42")
            .json(&body)
            .send()
    };
    let first: Value = send(order("ord_42")).await.unwrap().json().await.unwrap();
    let again = send(order("ord_42")).await.unwrap();
    assert!(again.status().is_success());
    let again: Value = again.json().await.unwrap();
    assert_eq!(
        first["id"], "checkout-42@acme",
        "the key, scoped to the tenant"
    );
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["createdAt"], first["createdAt"]);

    let (status, error) = api.error(send(order("ord_43")).await.unwrap()).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error["code"], "OperationAlreadyExists");
}

#[tokio::test]
async fn prefer_wait_returns_a_fast_result_inline() {
    let api = Api::testing().await;
    let response = api
        .post("/v1/operations/Testing.Scenario")
        .header("prefer", "wait=20")
        .json(&json!({ "scenario": "complete" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["preference-applied"], "wait=20");
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let snapshot: Value = response.json().await.unwrap();
    assert_eq!(snapshot["state"], "completed");
    assert_eq!(
        location,
        format!("/v1/operations/{}", snapshot["id"].as_str().unwrap())
    );
}

#[tokio::test]
async fn prefer_wait_that_runs_out_answers_202_with_a_location() {
    let api = Api::testing().await;
    let response = api
        .post("/v1/operations/Testing.Scenario")
        .header("prefer", "respond-async, wait=1")
        .json(&json!({ "scenario": "await-cancel" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let snapshot: Value = response.json().await.unwrap();
    assert_eq!(snapshot["state"], "running");
    let followed: Value = api
        .get(&location)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(followed["id"], snapshot["id"]);
}

#[tokio::test]
async fn wait_with_a_timeout_returns_the_current_snapshot() {
    let api = Api::testing().await;
    let accepted = api
        .start("Testing.Scenario", json!({ "scenario": "await-cancel" }))
        .await;
    let id = accepted["id"].as_str().unwrap();
    let response = api
        .get(&format!("/v1/operations/{id}/wait?timeout=0.2"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let snapshot: Value = response.json().await.unwrap();
    assert!(matches!(
        snapshot["state"].as_str(),
        Some("pending" | "running")
    ));
}

#[tokio::test]
async fn list_filters_by_operation_and_state_and_pages() {
    let api = Api::testing().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let snapshot = api.completed().await;
        ids.push(snapshot["id"].as_str().unwrap().to_owned());
    }
    api.start("Testing.Scenario", json!({ "scenario": "await-cancel" }))
        .await;
    ids.sort();
    let page = |after: Option<&str>| {
        let mut query = vec![
            ("operation", "Testing.Scenario".to_owned()),
            ("state", "completed".to_owned()),
            ("limit", "2".to_owned()),
        ];
        if let Some(after) = after {
            query.push(("after", after.to_owned()));
        }
        api.get("/v1/operations").query(&query).send()
    };
    let first: Value = page(None).await.unwrap().json().await.unwrap();
    let listed: Vec<&str> = first["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ids[..2]);
    let next = first["next"].as_str().unwrap();
    let second: Value = page(Some(next)).await.unwrap().json().await.unwrap();
    let listed: Vec<&str> = second["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ids[2..]);
    assert!(second["next"].is_null());

    let (status, error) = api
        .error(api.get("/v1/operations?state=done").send().await.unwrap())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error["message"].as_str().unwrap().contains("done"));
}

#[tokio::test]
async fn malformed_json_is_a_400_that_says_where() {
    let api = Api::orders().await;
    let response = api
        .post("/v1/operations/Orders.Process")
        .header("content-type", "application/json")
        .body(r#"{"orderId": "x", "lineItems": [}"#)
        .send()
        .await
        .unwrap();
    let (status, error) = api.error(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["code"], "InvalidInput");
    assert_eq!(error["details"]["line"], 1);
    assert!(error["details"]["column"].as_u64().unwrap() > 0);
    api.still_serving().await;
}

#[tokio::test]
async fn a_body_that_is_not_json_is_a_415() {
    let api = Api::orders().await;
    let response = api
        .post("/v1/operations/Orders.Process")
        .header("content-type", "text/plain")
        .body(order("ord_text").to_string())
        .send()
        .await
        .unwrap();
    let (status, error) = api.error(response).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(error["message"].as_str().unwrap().contains("text/plain"));
    api.still_serving().await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_a_413_naming_the_limit() {
    let host = orders_host(Duration::from_secs(5));
    let config = ServerConfig {
        max_body_bytes: 1024,
        ..ServerConfig::default()
    };
    let api = Api::new(host.runtime(), ORDERS, config).await;
    let items: Vec<Value> = (0..100)
        .map(|n| json!({ "sku": format!("SKU-{n}"), "quantity": 1, "unitPriceCents": 1 }))
        .collect();
    let response = api
        .post("/v1/operations/Orders.Process")
        .json(&json!({ "orderId": "big", "lineItems": items }))
        .send()
        .await
        .unwrap();
    let (status, error) = api.error(response).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error["code"], "LimitExceeded");
    assert_eq!(error["details"]["limit"], "max_body_bytes");
    assert_eq!(error["details"]["max"], 1024);
    api.still_serving().await;
}

#[tokio::test]
async fn an_unknown_operation_is_a_404() {
    let api = Api::orders().await;
    let response = api
        .post("/v1/operations/Orders.Refund")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let (status, error) = api.error(response).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error["code"], "OperationNotFound");
    assert!(error["message"].as_str().unwrap().contains("Orders.Refund"));
    api.still_serving().await;
}

#[tokio::test]
async fn an_unknown_signal_is_a_400_naming_it() {
    let api = Api::orders().await;
    let accepted = api.start("Orders.Process", order("ord_sig")).await;
    let id = accepted["id"].as_str().unwrap();
    let response = api
        .post(&format!("/v1/operations/{id}/signals/Teleport"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let (status, error) = api.error(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["code"], "InvalidInput");
    assert!(error["message"].as_str().unwrap().contains("Teleport"));
    api.still_serving().await;
}

#[tokio::test]
async fn schema_invalid_input_lists_each_issue_with_its_json_pointer() {
    let api = Api::orders().await;
    let response = api
        .post("/v1/operations/Orders.Process")
        .json(&json!({ "orderId": 7, "lineItems": [{ "sku": "A", "quantity": 0, "unitPriceCents": 1 }] }))
        .send()
        .await
        .unwrap();
    let (status, error) = api.error(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["code"], "InvalidInput");
    let pointers: Vec<&str> = error["details"]["issues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|issue| issue["pointer"].as_str().unwrap())
        .collect();
    assert!(pointers.contains(&"/orderId"), "{error}");
    assert!(pointers.contains(&"/lineItems/0/quantity"), "{error}");
    let listed: Value = api
        .get("/v1/operations")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"], json!([]), "nothing was accepted");
}

#[tokio::test]
async fn a_signal_after_the_terminal_state_is_a_409() {
    let api = Api::testing().await;
    let done = api.completed().await;
    let id = done["id"].as_str().unwrap();
    let response = api
        .post(&format!("/v1/operations/{id}/signals/Note"))
        .json(&json!({ "text": "late" }))
        .send()
        .await
        .unwrap();
    let (status, error) = api.error(response).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error["code"], "OperationTerminal");
}

#[tokio::test]
async fn starts_beyond_the_handler_slots_and_backlog_are_429_with_retry_after() {
    let host = testing_host_limited(Duration::from_millis(200), 1, 0);
    let api = Api::new(host.runtime(), TESTING, ServerConfig::default()).await;
    let running = api
        .start("Testing.Scenario", json!({ "scenario": "await-cancel" }))
        .await;
    let response = api
        .post("/v1/operations/Testing.Scenario")
        .json(&json!({ "scenario": "complete" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["retry-after"], "1");
    let (status, error) = api.error(response).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error["code"], "Overloaded");

    let id = running["id"].as_str().unwrap();
    let cancelled: Value = api
        .post(&format!("/v1/operations/{id}/cancel"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cancelled["state"], "cancelled");
    let response = api
        .post("/v1/operations/Testing.Scenario")
        .json(&json!({ "scenario": "complete" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED, "capacity is back");
}

#[tokio::test]
async fn requests_beyond_max_in_flight_are_503_with_retry_after() {
    let host = testing_host(Duration::from_secs(3));
    let config = ServerConfig {
        max_in_flight: 1,
        ..ServerConfig::default()
    };
    let api = Api::new(host.runtime(), TESTING, config).await;
    let owner = Owner {
        tenant: TENANT.into(),
        subject: "alice".into(),
    };
    // No handler runs this operation, so its cancel holds the one slot for the grace period.
    let id = api
        .server
        .runtime
        .accept_as(
            owner,
            "Testing.Scenario",
            None,
            Some(json!({ "scenario": "complete" })),
        )
        .await
        .unwrap()
        .snapshot
        .id;
    let slow = tokio::spawn(api.post(&format!("/v1/operations/{id}/cancel")).send());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let response = api
        .get(&format!("/v1/operations/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["retry-after"], "1");
    let (status, error) = api.error(response).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error["code"], "Overloaded");
    assert_eq!(slow.await.unwrap().unwrap().status(), StatusCode::OK);
    api.still_serving().await;
}

#[tokio::test]
async fn the_contract_route_serves_the_manifest() {
    let api = Api::orders().await;
    let manifest: Value = api
        .get("/v1/contract")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(manifest["service"], "orders-service");
    assert!(manifest["operations"]["Orders.Process"].is_object());
}

#[tokio::test]
async fn the_openapi_document_describes_every_route_and_the_contract_schemas() {
    let api = Api::orders().await;
    let document: Value = api
        .http
        .get(api.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    let paths = document["paths"].as_object().unwrap();
    for path in [
        "/v1/operations",
        "/v1/operations/Orders.Process",
        "/v1/operations/{id}",
        "/v1/operations/{id}/wait",
        "/v1/operations/{id}/events",
        "/v1/operations/{id}/cancel",
        "/v1/operations/{id}/signals/{signal}",
        "/v1/operations/{id}/signals/Expedite",
        "/v1/contract",
        "/healthz",
        "/metrics",
    ] {
        assert!(paths.contains_key(path), "missing {path}");
    }
    let start = &paths["/v1/operations/Orders.Process"]["post"];
    assert_eq!(
        start["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ProcessOrderRequest"
    );
    let schemas = document["components"]["schemas"].as_object().unwrap();
    assert_eq!(
        schemas["ProcessOrderRequest"]["properties"]["lineItems"]["items"]["$ref"],
        "#/components/schemas/LineItem"
    );
    for name in ["LineItem", "ProcessOrderResult", "Snapshot", "Error"] {
        assert!(schemas.contains_key(name), "missing schema {name}");
    }
}

#[tokio::test]
async fn metrics_count_operations_by_state_and_time_them() {
    let api = Api::testing().await;
    api.completed().await;
    let timed = "opshost_operation_duration_seconds_count{operation=\"Testing.Scenario\",state=\"completed\"} 1";
    let mut text = String::new();
    // Latencies arrive through the runtime's event feed, a moment after the change itself.
    for _ in 0..100 {
        text = api
            .http
            .get(api.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains(timed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(text.contains(timed), "{text}");
    assert!(
        text.contains(r#"opshost_operations{operation="Testing.Scenario",state="completed"} 1"#),
        "{text}"
    );
    assert!(text.contains("opshost_active_handlers 0"), "{text}");
    assert!(text.contains("opshost_http_requests_total{method=\"POST\",route=\"/v1/operations/{key}\",status=\"200\"} 1"), "{text}");
}

#[tokio::test]
async fn a_last_event_id_that_is_not_a_revision_is_a_400() {
    let api = Api::testing().await;
    let id = api.completed().await["id"].as_str().unwrap().to_owned();
    let response = api
        .get(&format!("/v1/operations/{id}/events"))
        .header("last-event-id", "yesterday")
        .send()
        .await
        .unwrap();
    let (status, error) = api.error(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error["message"].as_str().unwrap().contains("Last-Event-ID"));
}

/// A wait answers, without reading the store again, the terminal snapshot its store rang the
/// bells with: the same one a read shows afterwards, on each store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_answers_the_terminal_snapshot_that_a_later_read_shows() {
    let data = tempfile::tempdir().unwrap();
    let stores: [Arc<dyn OperationStore>; 2] = [
        Arc::new(MemoryStore::new()),
        Arc::new(SqliteStore::open(data.path()).unwrap()),
    ];
    for store in stores {
        let host = WasmHost::builder(&testing_deployment(Duration::from_secs(5)))
            .operations(store)
            .build()
            .unwrap();
        let api = Api::new(host.runtime(), TESTING, ServerConfig::default()).await;
        for _ in 0..20 {
            let accepted = api
                .start(
                    "Testing.Scenario",
                    json!({ "scenario": "progress-flood", "count": 2 }),
                )
                .await;
            let id = accepted["id"].as_str().unwrap();
            let waited = api.read(&format!("/v1/operations/{id}/wait")).await;
            assert_eq!(waited["state"], "completed", "{waited}");
            assert_eq!(waited, api.read(&format!("/v1/operations/{id}")).await);
        }
    }
}
