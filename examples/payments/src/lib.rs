//! A small payments service, the one the orders example charges: `POST /v1/charges` with a
//! bearer token charges an order once (a repeated charge of the same order answers the first
//! one), `GET /v1/charges/{order}` reads it back, and `GET /healthz` answers 200.
//!
//! For tests and demos it can be told to fail: the next `n` charges (or the next `n` of one
//! order) answer 503, as a payment provider in an outage would.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// A charge request.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChargeRequest {
    /// The order charged.
    pub order_id: String,
    /// The amount, in cents.
    pub amount_cents: u64,
}

/// A charge made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Charge {
    /// The charge's id.
    pub id: String,
    /// The order charged.
    pub order_id: String,
    /// The amount, in cents.
    pub amount_cents: u64,
}

/// The service's state: its token, its charges, and the outage it was told to have.
#[derive(Clone)]
pub struct Payments {
    inner: Arc<Inner>,
}

struct Inner {
    token: String,
    charges: Mutex<HashMap<String, Charge>>,
    failing: AtomicU64,
    failing_orders: Mutex<HashMap<String, u64>>,
}

impl Payments {
    /// A service that accepts `Authorization: Bearer {token}`.
    pub fn new(token: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(Inner {
                token: token.into(),
                charges: Mutex::default(),
                failing: AtomicU64::new(0),
                failing_orders: Mutex::default(),
            }),
        }
    }

    /// Answers the next `n` charges with 503.
    pub fn fail_next(&self, n: u64) {
        self.inner.failing.store(n, Ordering::SeqCst);
    }

    /// Answers the next `n` charges of order `order_id` with 503.
    pub fn fail_order(&self, order_id: &str, n: u64) {
        let mut failing = self
            .inner
            .failing_orders
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        failing.insert(order_id.to_owned(), n);
    }

    /// Whether this charge of `order_id` is to fail, counting it if so.
    fn outage(&self, order_id: &str) -> bool {
        let global = self
            .inner
            .failing
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let mut failing = self
            .inner
            .failing_orders
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let of_order = match failing.get_mut(order_id) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        };
        global || of_order
    }

    /// Every charge made so far.
    pub fn charges(&self) -> Vec<Charge> {
        let charges = self.inner.charges.lock().unwrap_or_else(|e| e.into_inner());
        charges.values().cloned().collect()
    }

    /// The HTTP API.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/v1/charges", post(charge))
            .route("/v1/charges/{order}", get(read))
            .with_state(self.clone())
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .is_some_and(|token| token == self.inner.token)
    }
}

fn refused(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

async fn charge(
    State(payments): State<Payments>,
    headers: HeaderMap,
    Json(request): Json<ChargeRequest>,
) -> Response {
    if !payments.authorized(&headers) {
        return refused(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
    }
    if payments.outage(&request.order_id) {
        tracing::warn!(order = %request.order_id, "charge refused: outage");
        return refused(StatusCode::SERVICE_UNAVAILABLE, "payments are unavailable");
    }
    let mut charges = payments
        .inner
        .charges
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let charge = charges
        .entry(request.order_id.clone())
        .or_insert_with(|| Charge {
            id: format!("ch_{}", ulid::Ulid::new()),
            order_id: request.order_id.clone(),
            amount_cents: request.amount_cents,
        })
        .clone();
    tracing::info!(order = %charge.order_id, amount_cents = charge.amount_cents, id = %charge.id, "charged");
    (StatusCode::CREATED, Json(charge)).into_response()
}

async fn read(
    State(payments): State<Payments>,
    headers: HeaderMap,
    Path(order): Path<String>,
) -> Response {
    if !payments.authorized(&headers) {
        return refused(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
    }
    let charges = payments
        .inner
        .charges
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    match charges.get(&order) {
        Some(charge) => Json(charge.clone()).into_response(),
        None => refused(StatusCode::NOT_FOUND, "no charge for this order"),
    }
}
