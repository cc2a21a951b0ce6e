//! The `/v1` routes: start, get, wait, watch (SSE), cancel, signal, list and the contract.
//!
//! Every handler runs the same steps in the same order: authenticate (401), find the
//! operation within the caller's tenant (404), check the action's capability list (403), read
//! and check the body (415, 413, 400), then ask the runtime.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::{Stream, StreamExt};
use opshost_api::id::url_segment;
use opshost_api::{ErrorCode, OperationState, Snapshot};
use opshost_contract::Action;
use opshost_contract::strict_json::{self, StrictJsonError};
use opshost_runtime::{ListFilter, Owner, ServerError};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::state::{AppState, Caller, Shared, authorize};

/// The routes that count against `max_in_flight`: list, start, get, cancel, signal and the
/// contract.
pub(crate) fn admitted() -> Router<AppState> {
    Router::new()
        .route("/v1/operations", get(list))
        .route("/v1/operations/{key}", post(start).get(get_operation))
        .route("/v1/operations/{id}/cancel", post(cancel))
        .route("/v1/operations/{id}/signals/{signal}", post(signal))
        .route("/v1/operations/{id}/watch-token", post(watch_token))
        .route("/v1/contract", get(contract))
        .route("/v1/me", get(me))
}

/// The routes that hold a request open and no permit: wait and watch.
pub(crate) fn streaming() -> Router<AppState> {
    Router::new()
        .route("/v1/operations/{id}/wait", get(wait))
        .route("/v1/operations/{id}/events", get(watch))
}

/// Reads a JSON body, enforcing the content type and the size limit.
async fn json_body(shared: &Shared, headers: &HeaderMap, body: Body) -> Result<Value, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !(essence.eq_ignore_ascii_case("application/json") || essence.ends_with("+json")) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::InvalidInput,
            format!("expected Content-Type: application/json, got `{content_type}`"),
        ));
    }
    let limit = shared.config.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::LimitExceeded,
            format!("request body is larger than the limit of {limit} bytes"),
        )
        .with_details(json!({ "limit": "max_body_bytes", "max": limit }))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(too_large());
    }
    let patience = shared.config.header_timeout();
    let bytes = tokio::time::timeout(patience, axum::body::to_bytes(body, limit))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::InvalidInput,
                format!(
                    "the request body did not arrive within {} ms (header_timeout_ms)",
                    patience.as_millis()
                ),
            )
        })?
        .map_err(|_| too_large())?;
    strict_json::parse_slice(&bytes).map_err(|error| match &error {
        StrictJsonError::DuplicateKey { key, pointer } => ApiError::invalid(format!(
            "request body repeats key `{key}` at `{pointer}`: each key may appear once"
        ))
        .with_details(json!({ "pointer": pointer, "key": key })),
        StrictJsonError::Syntax(syntax) => {
            ApiError::invalid(format!("request body is not valid JSON: {error}"))
                .with_details(json!({ "line": syntax.line(), "column": syntax.column() }))
        }
    })
}

/// The URL of operation `id`, percent-encoded whatever the id holds.
fn location(id: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("/v1/operations/{}", url_segment(id)))
        .unwrap_or_else(|_| HeaderValue::from_static("/v1/operations"))
}

/// The `wait=N` preference of a `Prefer` header, in seconds.
fn preferred_wait(headers: &HeaderMap) -> Option<f64> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split([',', ';']))
        .find_map(|token| {
            let (key, value) = token.trim().split_once('=')?;
            (key.trim().eq_ignore_ascii_case("wait"))
                .then(|| value.trim().trim_matches('"').parse().ok())
                .flatten()
        })
}

async fn start(
    State(shared): State<AppState>,
    Caller(caller): Caller,
    Path(operation): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&caller, shared.spec(&operation)?, Action::Call)?;
    if shared.draining.is_cancelled() {
        return Err(ServerError::ShuttingDown.into());
    }
    let input = json_body(&shared, &headers, body).await?;
    let id = match headers.get("idempotency-key") {
        Some(key) => Some(
            key.to_str()
                .map_err(|_| ApiError::invalid("Idempotency-Key must be visible ASCII"))?
                .to_owned(),
        ),
        None => None,
    };
    let owner = Owner {
        tenant: caller.tenant.clone(),
        subject: caller.subject.clone(),
    };
    let accepted = shared
        .runtime
        .start(owner, &operation, id, input)
        .await?
        .snapshot;
    let mut snapshot = accepted;
    let mut applied = None;
    if let Some(seconds) = preferred_wait(&headers) {
        let wait = shared.clamp_wait(seconds);
        // The operation is accepted: a wait that fails (the store went away) still answers 202.
        match shared.wait(&snapshot.id, wait).await {
            Ok(waited) => {
                snapshot = waited;
                applied = Some(wait.as_secs());
            }
            Err(error) => tracing::warn!(id = %snapshot.id, %error, "cannot wait for a start"),
        }
    }
    let status = if snapshot.is_terminal() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let mut response = (status, Json(&snapshot)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, location(&snapshot.id));
    if let Some(applied) = applied
        && let Ok(value) = HeaderValue::from_str(&format!("wait={applied}"))
    {
        headers.insert("preference-applied", value);
    }
    Ok(response)
}

async fn get_operation(
    State(shared): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<Snapshot>, ApiError> {
    let stored = shared.visible(&caller, &id, Action::Observe).await?;
    Ok(Json(stored.snapshot))
}

#[derive(Deserialize)]
struct WaitQuery {
    timeout: Option<f64>,
}

async fn wait(
    State(shared): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    Query(query): Query<WaitQuery>,
) -> Result<Json<Snapshot>, ApiError> {
    // Taken before the read, so that no change after it goes unheard.
    let bell = shared.runtime.doorbell(&id);
    let stored = shared.visible(&caller, &id, Action::Observe).await?;
    let timeout = shared.clamp_wait(
        query
            .timeout
            .unwrap_or(shared.config.max_wait().as_secs_f64()),
    );
    Ok(Json(
        shared.wait_from(bell, stored.snapshot, timeout).await?,
    ))
}

/// A token for a browser's `EventSource` to watch operation `id` with (see `watch_token`).
async fn watch_token(
    State(shared): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    shared.visible(&caller, &id, Action::Observe).await?;
    let (token, expires) =
        shared
            .auth
            .watch_tokens()
            .mint(&caller, &id, shared.config.watch_token_ttl())?;
    let expires_at = chrono::DateTime::from_timestamp(i64::try_from(expires).unwrap_or(0), 0)
        .unwrap_or_default();
    Ok(Json(json!({
        "token": token,
        "expiresAt": expires_at,
        "events": format!("/v1/operations/{}/events?access_token={token}", url_segment(&id)),
    })))
}

#[derive(Deserialize)]
struct WatchQuery {
    after: Option<u64>,
    /// A watch token, for callers that cannot send `Authorization` (see `watch_token`).
    access_token: Option<String>,
}

async fn watch(
    State(shared): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<WatchQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let stored = match (
        headers.contains_key(header::AUTHORIZATION),
        &query.access_token,
    ) {
        (false, Some(token)) => {
            let watcher = shared.auth.watch_tokens().verify(token, &id)?;
            shared.owned(&watcher, &id).await?
        }
        _ => {
            let caller = crate::state::bearer(&shared, &headers)?;
            shared.visible(&caller, &id, Action::Observe).await?
        }
    };
    let last_event_id = last_event_id(&headers, "a revision number")?;
    let after = last_event_id.or(query.after);
    if stored.snapshot.is_terminal() && after.is_some_and(|after| after >= stored.snapshot.revision)
    {
        // Nothing will follow: 204 also tells an `EventSource` to stop reconnecting.
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let frames = Arc::clone(&shared);
    let watching = shared.metrics.watching();
    let events = shared.runtime.watch(&id, after).map(move |event| {
        let _watching = &watching;
        match event {
            Ok(event) => frames.frames.frame(&event),
            Err(error) => {
                let error = ApiError::from(error);
                crate::sse::error(&json!({ "error": error.info() }).to_string())
            }
        }
    });
    // A host going down ends its watches; clients resume them elsewhere.
    let events = events.take_until(shared.draining.clone().cancelled_owned());
    let body = Body::from_stream(with_keep_alive(events, shared.config.keep_alive()));
    Ok((crate::sse::stream_headers(), body).into_response())
}

/// The `Last-Event-ID` a stream is resumed from, if any; `what` says what it must be.
pub(crate) fn last_event_id(headers: &HeaderMap, what: &str) -> Result<Option<u64>, ApiError> {
    headers
        .get("last-event-id")
        .map(|value| {
            value
                .to_str()
                .ok()
                .and_then(|text| text.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::invalid(format!("Last-Event-ID must be {what}")))
        })
        .transpose()
}

/// `events`, with a keep-alive comment every `interval`; ends with them. The ticker is
/// not reset by events, so an event costs no timer work.
pub(crate) fn with_keep_alive(
    events: impl Stream<Item = axum::body::Bytes> + Send + 'static,
    interval: Duration,
) -> impl Stream<Item = Result<axum::body::Bytes, Infallible>> + Send + 'static {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    futures::stream::unfold(
        (Box::pin(events), ticks),
        |(mut events, mut ticks)| async move {
            let frame = tokio::select! {
                biased;
                frame = events.next() => frame?,
                _ = ticks.tick() => crate::sse::keep_alive(),
            };
            Some((Ok(frame), (events, ticks)))
        },
    )
}

async fn cancel(
    State(shared): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<Snapshot>, ApiError> {
    shared.visible(&caller, &id, Action::Cancel).await?;
    Ok(Json(shared.runtime.cancel(&id).await?))
}

async fn signal(
    State(shared): State<AppState>,
    Caller(caller): Caller,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    shared.visible(&caller, &id, Action::Control).await?;
    let payload = json_body(&shared, &headers, body).await?;
    let sequence = shared.runtime.signal(&id, &name, payload).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "id": id, "signal": name, "sequence": sequence })),
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    operation: Option<String>,
    state: Option<String>,
    id_prefix: Option<String>,
    created_from: Option<String>,
    created_until: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

/// A time named in a query, as RFC 3339.
fn parse_time(name: &str, text: &str) -> Result<chrono::DateTime<chrono::Utc>, ApiError> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|at| at.to_utc())
        .map_err(|error| {
            ApiError::invalid(format!(
                "query `{name}`: `{text}` is not an RFC 3339 time ({error})"
            ))
            .with_details(json!({ "path": name }))
        })
}

async fn list(
    State(shared): State<AppState>,
    Caller(caller): Caller,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    if let Some(operation) = &query.operation {
        authorize(&caller, shared.spec(operation)?, Action::Observe)?;
    }
    let state = query.state.as_deref().map(parse_state).transpose()?;
    let created_from = query
        .created_from
        .as_deref()
        .map(|text| parse_time("createdFrom", text))
        .transpose()?;
    let created_until = query
        .created_until
        .as_deref()
        .map(|text| parse_time("createdUntil", text))
        .transpose()?;
    let filter = ListFilter {
        tenant: Some(caller.tenant.clone()),
        operation: query.operation,
        state,
        id_prefix: query.id_prefix.filter(|prefix| !prefix.is_empty()),
        created_from,
        created_until,
        after: query.after,
        limit: query
            .limit
            .unwrap_or(shared.config.page_limit)
            .clamp(1, shared.config.page_limit),
    };
    let page = shared.runtime.list(&filter).await?;
    let items: Vec<Snapshot> = page
        .items
        .into_iter()
        .filter(|snapshot| {
            shared
                .runtime
                .spec(&snapshot.operation)
                .is_ok_and(|spec| authorize(&caller, spec, Action::Observe).is_ok())
        })
        .collect();
    Ok(Json(json!({ "items": items, "next": page.next })))
}

/// An operation state named in a query.
pub(crate) fn parse_state(name: &str) -> Result<OperationState, ApiError> {
    serde_json::from_value::<OperationState>(Value::String(name.to_owned())).map_err(|_| {
        ApiError::invalid(format!(
            "state `{name}` is not one of pending, running, completed, failed, cancelled"
        ))
    })
}

/// Who the caller is and what it may do: its subject, tenant, capabilities and token expiry,
/// the actions it may take on each operation, and whether it is an operator.
async fn me(State(shared): State<AppState>, Caller(caller): Caller) -> Json<Value> {
    let actions = [
        Action::Call,
        Action::Observe,
        Action::Cancel,
        Action::Control,
    ];
    let operations: serde_json::Map<String, Value> = shared
        .runtime
        .contract()
        .map(|contract| {
            contract
                .operations()
                .iter()
                .map(|(name, spec)| {
                    let allowed: Vec<&str> = actions
                        .iter()
                        .filter(|&&action| authorize(&caller, spec, action).is_ok())
                        .map(|action| action.as_str())
                        .collect();
                    (name.clone(), json!(allowed))
                })
                .collect()
        })
        .unwrap_or_default();
    let admin = crate::state::require_admin(&shared, &caller, "jobs").is_ok();
    let expires = chrono::DateTime::from_timestamp(i64::try_from(caller.expires).unwrap_or(0), 0);
    Json(json!({
        "subject": caller.subject,
        "tenant": caller.tenant,
        "capabilities": caller.scopes,
        "expiresAt": expires,
        "operations": operations,
        "admin": admin,
    }))
}

async fn contract(
    State(shared): State<AppState>,
    Caller(_caller): Caller,
) -> Result<Json<Value>, ApiError> {
    let contract = shared.runtime.contract().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal,
            "no contract loaded",
        )
    })?;
    Ok(Json(contract.manifest().clone()))
}
