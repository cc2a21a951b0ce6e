//! Authentication and capabilities over HTTP: every action × every kind of credential, with
//! the status and error code each must get.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use opshost_runtime::{OperationRuntime, Owner};
use opshost_tests::net::{TENANT, TestServer, claims, now, sign, token, token_for};
use opshost_tests::{orders_host, testing_host};
use reqwest::StatusCode;
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Action {
    Start,
    Get,
    Wait,
    Watch,
    List,
    Cancel,
    Signal,
}

const ACTIONS: [Action; 7] = [
    Action::Start,
    Action::Get,
    Action::Wait,
    Action::Watch,
    Action::List,
    Action::Cancel,
    Action::Signal,
];

impl Action {
    /// The capability Orders.Process requires for this action.
    fn capability(self) -> &'static str {
        match self {
            Self::Get | Self::Wait | Self::Watch | Self::List => "orders.read",
            Self::Start | Self::Cancel | Self::Signal => "orders.write",
        }
    }

    /// A capability of the contract that does not grant this action.
    fn other_capability(self) -> &'static str {
        match self.capability() {
            "orders.read" => "orders.write",
            _ => "orders.read",
        }
    }

    fn success(self) -> StatusCode {
        match self {
            Self::Start | Self::Signal => StatusCode::ACCEPTED,
            _ => StatusCode::OK,
        }
    }
}

fn order() -> Value {
    json!({ "orderId": "ord_auth", "lineItems": [{ "sku": "A", "quantity": 1, "unitPriceCents": 100 }] })
}

struct Fixture {
    server: TestServer,
    http: reqwest::Client,
}

impl Fixture {
    async fn orders() -> Self {
        // A short grace: cancelling an operation with no handler here ends after it.
        let host = orders_host(Duration::from_millis(50));
        Self::new(host.runtime()).await
    }

    async fn new(runtime: &OperationRuntime) -> Self {
        Self {
            server: TestServer::start(runtime).await,
            http: opshost_tests::net::http(),
        }
    }

    /// A pending operation of tenant [`TENANT`] that no handler runs.
    async fn pending(&self, operation: &str, input: Value) -> String {
        let owner = Owner {
            tenant: TENANT.into(),
            subject: "alice".into(),
        };
        self.server
            .runtime
            .accept_as(owner, operation, None, Some(input))
            .await
            .unwrap()
            .snapshot
            .id
    }

    /// Performs `action` on a fresh pending Orders.Process with `authorization` (a header
    /// value, or none), answering the status, the error code if any, and the body.
    async fn perform(
        &self,
        action: Action,
        authorization: Option<&str>,
    ) -> (StatusCode, Value, String) {
        let id = self.pending("Orders.Process", order()).await;
        let base = &self.server.url;
        let request = match action {
            Action::Start => self
                .http
                .post(format!("{base}/v1/operations/Orders.Process"))
                .json(&order()),
            Action::Get => self.http.get(format!("{base}/v1/operations/{id}")),
            Action::Wait => self
                .http
                .get(format!("{base}/v1/operations/{id}/wait?timeout=0")),
            Action::Watch => self.http.get(format!("{base}/v1/operations/{id}/events")),
            Action::List => self.http.get(format!("{base}/v1/operations")),
            Action::Cancel => self.http.post(format!("{base}/v1/operations/{id}/cancel")),
            Action::Signal => self
                .http
                .post(format!("{base}/v1/operations/{id}/signals/Expedite"))
                .json(&json!({ "reason": "vip" })),
        };
        let request = match authorization {
            Some(value) => request.header("authorization", value),
            None => request,
        };
        let response = request.send().await.unwrap();
        let status = response.status();
        if action == Action::Watch && status == StatusCode::OK {
            return (status, Value::Null, id);
        }
        let body: Value = response.json().await.unwrap_or(Value::Null);
        (status, body, id)
    }

    /// Every action answers 401 `Unauthenticated` with a message that says `why`.
    async fn expect_unauthenticated(&self, authorization: Option<&str>, why: &str) {
        for action in ACTIONS {
            let (status, body, _) = self.perform(action, authorization).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{action:?}: {body}");
            assert_eq!(
                body["error"]["code"], "Unauthenticated",
                "{action:?}: {body}"
            );
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains(why),
                "{action:?}: `{message}` should say `{why}`"
            );
        }
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn every_action_refuses_a_request_without_a_token() {
    Fixture::orders()
        .await
        .expect_unauthenticated(None, "missing")
        .await;
}

#[tokio::test]
async fn every_action_refuses_a_malformed_token() {
    let fixture = Fixture::orders().await;
    fixture
        .expect_unauthenticated(Some("Bearer not-a-jwt"), "malformed")
        .await;
    fixture
        .expect_unauthenticated(Some("Basic YWxpY2U6c2VjcmV0"), "Bearer")
        .await;
}

#[tokio::test]
async fn every_action_refuses_a_token_with_a_bad_signature() {
    let valid = sign(Algorithm::HS256, &claims(&["orders.write", "orders.read"]));
    let (head, _) = valid.rsplit_once('.').unwrap();
    let forged = format!("{head}.{}", URL_SAFE_NO_PAD.encode(b"not the signature"));
    Fixture::orders()
        .await
        .expect_unauthenticated(Some(&bearer(&forged)), "signature")
        .await;
}

#[tokio::test]
async fn every_action_refuses_an_unsigned_alg_none_token() {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims(&["orders.write", "orders.read"]).to_string());
    let unsigned = format!("{header}.{payload}.");
    Fixture::orders()
        .await
        .expect_unauthenticated(Some(&bearer(&unsigned)), "`none`")
        .await;
}

#[tokio::test]
async fn every_action_refuses_an_expired_token() {
    let mut expired = claims(&["orders.write", "orders.read"]);
    expired["exp"] = json!(now() - 3600);
    Fixture::orders()
        .await
        .expect_unauthenticated(Some(&bearer(&sign(Algorithm::HS256, &expired))), "expired")
        .await;
}

#[tokio::test]
async fn every_action_refuses_a_token_that_is_not_valid_yet() {
    let mut early = claims(&["orders.write", "orders.read"]);
    early["nbf"] = json!(now() + 3600);
    Fixture::orders()
        .await
        .expect_unauthenticated(
            Some(&bearer(&sign(Algorithm::HS256, &early))),
            "not valid yet",
        )
        .await;
}

#[tokio::test]
async fn every_action_without_its_capability_is_forbidden_naming_the_capability() {
    let fixture = Fixture::orders().await;
    for action in ACTIONS {
        let token = token(&[action.other_capability()]);
        let (status, body, _) = fixture.perform(action, Some(&bearer(&token))).await;
        if action == Action::List {
            // Listing without an operation filter shows only what may be observed: nothing.
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(body["items"], json!([]), "{body}");
            continue;
        }
        assert_eq!(status, StatusCode::FORBIDDEN, "{action:?}: {body}");
        assert_eq!(body["error"]["code"], "MissingCapability", "{action:?}");
        assert_eq!(
            body["error"]["details"]["capability"],
            action.capability(),
            "{action:?}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(action.capability()),
            "{action:?}: {body}"
        );
    }
}

#[tokio::test]
async fn listing_one_operation_without_observe_is_forbidden() {
    let fixture = Fixture::orders().await;
    let response = fixture
        .http
        .get(format!(
            "{}/v1/operations?operation=Orders.Process",
            fixture.server.url
        ))
        .bearer_auth(token(&["orders.write"]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["details"]["capability"], "orders.read");
}

#[tokio::test]
async fn every_action_with_its_capability_succeeds() {
    let fixture = Fixture::orders().await;
    for action in ACTIONS {
        let token = token(&[action.capability()]);
        let (status, body, id) = fixture.perform(action, Some(&bearer(&token))).await;
        assert_eq!(status, action.success(), "{action:?}: {body}");
        match action {
            Action::Get | Action::Wait => assert_eq!(body["id"], id),
            Action::Cancel => assert_eq!(body["state"], "cancelled"),
            Action::Signal => assert_eq!(body["sequence"], 1),
            Action::List => assert!(
                body["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|s| s["id"] == id),
                "{body}"
            ),
            Action::Start => assert_eq!(body["state"], "pending"),
            Action::Watch => {}
        }
    }
}

#[tokio::test]
async fn ed25519_and_rs256_tokens_are_accepted() {
    let fixture = Fixture::orders().await;
    for alg in [Algorithm::EdDSA, Algorithm::RS256] {
        let token = sign(alg, &claims(&["orders.read"]));
        let (status, body, id) = fixture.perform(Action::Get, Some(&bearer(&token))).await;
        assert_eq!(status, StatusCode::OK, "{alg:?}: {body}");
        assert_eq!(body["id"], id);
    }
}

#[tokio::test]
async fn another_tenant_can_neither_see_nor_touch_an_operation() {
    let fixture = Fixture::orders().await;
    let stranger = token_for("globex", &["orders.write", "orders.read"]);
    for action in ACTIONS {
        let (status, body, id) = fixture.perform(action, Some(&bearer(&stranger))).await;
        match action {
            Action::Start => assert_eq!(status, StatusCode::ACCEPTED, "{body}"),
            Action::List => {
                assert_eq!(status, StatusCode::OK);
                let items = body["items"].as_array().unwrap();
                assert!(items.iter().all(|s| s["id"] != id.as_str()), "{body}");
            }
            _ => {
                assert_eq!(status, StatusCode::NOT_FOUND, "{action:?}: {body}");
                assert_eq!(body["error"]["code"], "OperationNotFound", "{action:?}");
            }
        }
    }
}

#[tokio::test]
async fn observe_defaults_to_the_call_list() {
    let host = testing_host(Duration::from_millis(50));
    let fixture = Fixture::new(host.runtime()).await;
    let id = fixture
        .pending("Testing.Scenario", json!({ "scenario": "complete" }))
        .await;
    let url = format!("{}/v1/operations/{id}", fixture.server.url);
    let without = fixture
        .http
        .get(&url)
        .bearer_auth(token(&[]))
        .send()
        .await
        .unwrap();
    assert_eq!(without.status(), StatusCode::FORBIDDEN);
    let body: Value = without.json().await.unwrap();
    assert_eq!(body["error"]["details"]["capability"], "testing.run");
    assert_eq!(body["error"]["details"]["action"], "observe");
    let with = fixture
        .http
        .get(&url)
        .bearer_auth(token(&["testing.run"]))
        .send()
        .await
        .unwrap();
    assert_eq!(with.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_explicit_empty_observe_list_admits_any_authenticated_caller() {
    let host = testing_host(Duration::from_millis(50));
    let fixture = Fixture::new(host.runtime()).await;
    let id = fixture
        .pending("Testing.Uncancellable", json!({ "scenario": "complete" }))
        .await;
    let url = format!("{}/v1/operations/{id}", fixture.server.url);
    let response = fixture
        .http
        .get(&url)
        .bearer_auth(token(&[]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let anonymous = fixture.http.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let start = fixture
        .http
        .post(format!(
            "{}/v1/operations/Testing.Uncancellable",
            fixture.server.url
        ))
        .bearer_auth(token(&[]))
        .json(&json!({ "scenario": "complete" }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        start.status(),
        StatusCode::FORBIDDEN,
        "call still needs testing.run"
    );
}

#[tokio::test]
async fn a_scope_claim_may_be_a_list() {
    let fixture = Fixture::orders().await;
    let mut listed = claims(&[]);
    listed["scope"] = json!(["orders.read"]);
    let token = sign(Algorithm::HS256, &listed);
    let (status, body, id) = fixture.perform(Action::Get, Some(&bearer(&token))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], id);
}
