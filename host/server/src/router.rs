//! The whole router: the operation routes, the operator routes, the documents beside them,
//! and the middleware every request passes (in-flight admission, metrics, its span).

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use opshost_api::ErrorCode;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::state::AppState;
use crate::{admin, console, deployments, feed, http, logs, openapi};

/// The router over `shared`.
pub(crate) fn router(shared: AppState) -> Router {
    // Short requests count against `max_in_flight`; waits and watches hold no permit.
    let admitted = http::admitted()
        .merge(admin::routes())
        .merge(deployments::routes())
        .route_layer(middleware::from_fn_with_state(shared.clone(), admit));
    // The `/v1` API answers pages of the listed origins; CORS is its outermost layer, so that
    // preflights are answered before anything else looks at them.
    let v1 = Router::new()
        .merge(admitted)
        .merge(http::streaming())
        .merge(feed::routes())
        .merge(logs::routes());
    let v1 = match crate::cors::layer(&shared.config.cors_origins) {
        Ok(Some(cors)) => v1.layer(cors),
        Ok(None) => v1,
        Err(error) => {
            tracing::error!(%error, "CORS is off");
            v1
        }
    };
    let router = Router::new()
        .merge(v1)
        .merge(console::routes())
        .route("/openapi.json", get(openapi_document))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::OperationNotFound,
                "no such route",
            )
        })
        .layer(middleware::from_fn_with_state(shared.clone(), record));
    router.with_state(shared)
}

async fn healthz(State(shared): State<AppState>) -> Response {
    if shared.draining.is_cancelled() {
        let body = Json(json!({ "status": "draining" }));
        return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    }
    Json(json!({ "status": "ok" })).into_response()
}

async fn admit(State(shared): State<AppState>, request: Request, next: Next) -> Response {
    match shared.in_flight.try_acquire() {
        Ok(_permit) => next.run(request).await,
        Err(_) => ApiError::overloaded(
            format!(
                "more than {} requests in flight",
                shared.config.max_in_flight
            ),
            Duration::from_secs(1),
        )
        .into_response(),
    }
}

async fn record(State(shared): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    // A span per request, under the caller's `traceparent`; what the request accepts (an
    // operation, a job) joins its trace. Probes and scrapes make none.
    let response = if matches!(route.as_str(), "/healthz" | "/metrics") {
        next.run(request).await
    } else {
        let telemetry = shared.runtime.telemetry();
        let span = telemetry.request(request.headers(), &method, &route);
        let response = span.scope(next.run(request)).await;
        span.end_http(response.status().as_u16());
        response
    };
    shared.metrics.request(
        &method,
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

async fn openapi_document(State(shared): State<AppState>) -> Json<Value> {
    Json(openapi::document(shared.runtime.contract()))
}

async fn metrics(State(shared): State<AppState>) -> Response {
    match shared
        .metrics
        .render(&shared.runtime, shared.jobs.as_ref())
        .await
    {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(message) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            message,
        )
        .into_response(),
    }
}
