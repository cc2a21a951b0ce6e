//! The HTTP API against callers that misbehave or probe: watches resumed at the end, keys
//! shared between tenants, ids that URLs cannot carry, bodies that say one thing twice, and
//! watchers that leave.

use std::sync::Arc;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use opshost_server::ServerConfig;
use opshost_tests::net::{TestServer, metric, token, token_for};
use opshost_tests::testing_host;
use reqwest::StatusCode;
use serde_json::{Value, json};

const TESTING: &[&str] = &["testing.run"];

struct Api {
    server: TestServer,
    http: reqwest::Client,
}

impl Api {
    async fn testing() -> Self {
        let host = testing_host(Duration::from_secs(5));
        Self {
            server: TestServer::start_with(host.runtime(), ServerConfig::default()).await,
            http: opshost_tests::net::http(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.url)
    }

    fn get(&self, token: &str, path: &str) -> reqwest::RequestBuilder {
        self.http.get(self.url(path)).bearer_auth(token)
    }

    fn start(&self, token: &str, key: Option<&str>, body: &str) -> reqwest::RequestBuilder {
        let request = self
            .http
            .post(self.url("/v1/operations/Testing.Scenario"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_owned());
        match key {
            Some(key) => request.header("idempotency-key", key),
            None => request,
        }
    }

    /// A `Testing.Scenario` completed inline: its terminal snapshot.
    async fn completed(&self, token: &str, key: Option<&str>) -> Value {
        let response = self
            .start(token, key, r#"{"scenario":"complete"}"#)
            .header("prefer", "wait=20")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    async fn metric(&self, name: &str) -> f64 {
        metric(&self.server.url, name).await
    }
}

async fn refusal(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    (status, body["error"].clone())
}

#[tokio::test]
async fn a_watch_resumed_at_or_past_the_terminal_revision_answers_204() {
    let api = Api::testing().await;
    let token = token(TESTING);
    let terminal = api.completed(&token, None).await;
    let (id, revision) = (
        terminal["id"].as_str().unwrap(),
        terminal["revision"].as_u64().unwrap(),
    );
    let path = format!("/v1/operations/{id}/events");
    for after in [revision, revision + 5] {
        let response = tokio::time::timeout(
            Duration::from_secs(5),
            api.get(&token, &path)
                .header("last-event-id", after.to_string())
                .send(),
        )
        .await
        .expect("a resume at the end is answered at once")
        .unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT, "after {after}");
        assert!(response.bytes().await.unwrap().is_empty());
    }
    let by_query = api
        .get(&token, &format!("{path}?after={revision}"))
        .send()
        .await
        .unwrap();
    assert_eq!(by_query.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn a_watch_resumed_before_the_end_of_a_finished_operation_gets_the_rest_and_closes() {
    let api = Api::testing().await;
    let token = token(TESTING);
    let terminal = api.completed(&token, None).await;
    let id = terminal["id"].as_str().unwrap();
    let revision = terminal["revision"].as_u64().unwrap();
    let response = api
        .get(&token, &format!("/v1/operations/{id}/events"))
        .header("last-event-id", (revision - 1).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let events: Vec<_> = tokio::time::timeout(
        Duration::from_secs(5),
        response.bytes_stream().eventsource().collect::<Vec<_>>(),
    )
    .await
    .expect("the stream ends after the terminal event");
    let ids: Vec<String> = events.into_iter().map(|event| event.unwrap().id).collect();
    assert_eq!(ids, [revision.to_string()]);
}

#[tokio::test]
async fn finished_watches_and_waits_leave_no_doorbell_or_watcher_behind() {
    let api = Api::testing().await;
    let token = token(TESTING);
    let terminal = api.completed(&token, None).await;
    let id = terminal["id"].as_str().unwrap().to_owned();
    let revision = terminal["revision"].as_u64().unwrap();
    let requests = futures::stream::iter(0..600).map(|n| {
        let (api, token, id) = (&api, &token, &id);
        async move {
            let path = match n % 3 {
                0 => format!("/v1/operations/{id}/events"),
                1 => format!("/v1/operations/{id}/events?after={revision}"),
                _ => format!("/v1/operations/{id}/wait?timeout=30"),
            };
            let response = api.get(token, &path).send().await.unwrap();
            assert!(response.status().is_success(), "{}", response.status());
            response.bytes().await.unwrap();
        }
    });
    requests.buffer_unordered(64).collect::<Vec<()>>().await;
    assert_eq!(api.metric("opshost_doorbells").await, 0.0);
    assert_eq!(api.metric("opshost_watchers").await, 0.0);
}

#[tokio::test]
async fn watchers_that_leave_a_running_operation_leave_nothing_behind() {
    let api = Api::testing().await;
    let token = token(TESTING);
    let response = api
        .start(&token, None, r#"{"scenario":"echo-signals","signals":1}"#)
        .send()
        .await
        .unwrap();
    let accepted: Value = response.json().await.unwrap();
    let id = accepted["id"].as_str().unwrap().to_owned();
    let mut streams = Vec::new();
    for _ in 0..50 {
        let response = api
            .get(&token, &format!("/v1/operations/{id}/events"))
            .send()
            .await
            .unwrap();
        let mut events = response.bytes_stream().eventsource();
        events.next().await.unwrap().unwrap();
        streams.push(events);
    }
    assert_eq!(api.metric("opshost_watchers").await, 50.0);
    assert!(api.metric("opshost_doorbells").await >= 1.0);
    drop(streams);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while api.metric("opshost_watchers").await > 0.0 {
        assert!(tokio::time::Instant::now() < deadline, "watchers stay open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let signalled = api
        .http
        .post(api.url(&format!("/v1/operations/{id}/signals/Note")))
        .bearer_auth(&token)
        .json(&json!({ "text": "done" }))
        .send()
        .await
        .unwrap();
    assert_eq!(signalled.status(), StatusCode::ACCEPTED);
    let waited: Value = api
        .get(&token, &format!("/v1/operations/{id}/wait?timeout=20"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(waited["state"], "completed");
    assert_eq!(api.metric("opshost_doorbells").await, 0.0);
}

#[tokio::test]
async fn the_same_idempotency_key_in_two_tenants_makes_two_independent_operations() {
    let api = Api::testing().await;
    let (acme, globex) = (token_for("acme", TESTING), token_for("globex", TESTING));
    let first = api.completed(&acme, Some("checkout-1")).await;
    let response = api
        .start(&globex, Some("checkout-1"), r#"{"scenario":"fail"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::ACCEPTED,
        "no 409 across tenants"
    );
    let second: Value = response.json().await.unwrap();
    assert_ne!(first["id"], second["id"]);
    assert_eq!(first["id"], "checkout-1@acme");
    assert_eq!(second["id"], "checkout-1@globex");
    // Each tenant sees its own operation and nothing of the other's.
    for (token, own, other) in [(&acme, &first, &second), (&globex, &second, &first)] {
        let got = api
            .get(
                token,
                &format!("/v1/operations/{}", own["id"].as_str().unwrap()),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), StatusCode::OK);
        let hidden = api
            .get(
                token,
                &format!("/v1/operations/{}", other["id"].as_str().unwrap()),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(hidden.status(), StatusCode::NOT_FOUND);
    }
    // The key stays idempotent within a tenant.
    let again = api.completed(&acme, Some("checkout-1")).await;
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["revision"], first["revision"]);
}

#[tokio::test]
async fn ids_that_urls_cannot_carry_are_refused_naming_the_rule() {
    let api = Api::testing().await;
    let token = token(TESTING);
    for key in [
        ".",
        "..",
        "a/b",
        "a b",
        "a%2Fb",
        "a@b",
        "a?b",
        &"k".repeat(201),
    ] {
        let response = api
            .start(&token, Some(key), r#"{"scenario":"complete"}"#)
            .send()
            .await
            .unwrap();
        let (status, error) = refusal(response).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{key}");
        assert_eq!(error["code"], "InvalidInput");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains("1 to 200 characters of A-Z a-z 0-9 . _ ~ : -"),
            "{message}"
        );
    }
    let listed: Value = api
        .get(&token, "/v1/operations")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"], json!([]), "nothing was accepted");
}

#[tokio::test]
async fn the_location_of_a_tenant_operation_is_percent_encoded_and_reachable() {
    let api = Api::testing().await;
    let token = token(TESTING);
    let response = api
        .start(&token, Some("order:7~b.c"), r#"{"scenario":"complete"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(location, "/v1/operations/order%3A7~b.c%40acme");
    let got: Value = api
        .get(&token, &location)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["id"], "order:7~b.c@acme");
}

#[tokio::test]
async fn a_body_with_a_duplicate_key_is_a_400_with_its_pointer() {
    let api = Api::testing().await;
    let token = token(TESTING);
    let response = api
        .start(
            &token,
            None,
            r#"{"scenario":"complete","path":"/a","path":"/b"}"#,
        )
        .send()
        .await
        .unwrap();
    let (status, error) = refusal(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["code"], "InvalidInput");
    assert_eq!(error["details"]["pointer"], "/path");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("repeats key `path`"),
        "{error}"
    );

    let running = api
        .start(&token, None, r#"{"scenario":"echo-signals","signals":1}"#)
        .send()
        .await
        .unwrap();
    let id = running.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let signal = api
        .http
        .post(api.url(&format!("/v1/operations/{id}/signals/Note")))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(r#"{"text":"a","nested":{"x":1,"x":2}}"#)
        .send()
        .await
        .unwrap();
    let (status, error) = refusal(signal).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["details"]["pointer"], "/nested/x");
}

#[tokio::test]
async fn a_key_accepted_before_keys_were_scoped_still_answers_for_its_tenant() {
    use opshost_runtime::store::{MemoryStore, OperationStore, StoredOperation};
    use opshost_runtime::{Owner, RuntimeConfig, Snapshot};

    let store = Arc::new(MemoryStore::new());
    let owner = |tenant: &str| Owner {
        tenant: tenant.into(),
        subject: "alice".into(),
    };
    let input = json!({ "scenario": "complete" });
    let legacy = StoredOperation {
        snapshot: Snapshot::accepted(
            "old-key".into(),
            "testing".into(),
            "Testing.Scenario".into(),
            "1".into(),
        ),
        input: Some(input.clone()),
        owner: owner("acme"),
    };
    store.create(legacy).await.unwrap();
    let runtime = opshost_tests::testing_runtime(store, RuntimeConfig::default());
    let again = runtime
        .accept_as(
            owner("acme"),
            "Testing.Scenario",
            Some("old-key".into()),
            Some(input.clone()),
        )
        .await
        .unwrap();
    assert!(
        !again.created,
        "the operation of that key is found, not run twice"
    );
    assert_eq!(again.snapshot.id, "old-key");
    let other = runtime
        .accept_as(
            owner("globex"),
            "Testing.Scenario",
            Some("old-key".into()),
            Some(input),
        )
        .await
        .unwrap();
    assert!(
        other.created,
        "another tenant's old operation is not its own"
    );
    assert_eq!(other.snapshot.id, "old-key@globex");
}
