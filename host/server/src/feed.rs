//! `GET /v1/events`: the list-watch stream. Server-Sent Events of every change to the
//! operations the caller may observe, in its tenant, optionally of one operation name or
//! state, resumable by `Last-Event-ID`.
//!
//! The stream ends when the caller's token expires (or the host drains); the client resumes
//! it with a fresh token. The stream opens with a `ready` event whose `id` is where it starts, so that a client that
//! loses the connection before the first change still resumes without a gap. Each change is
//! an event named for its kind, with the change's cursor as `id` and the snapshot as `data`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use opshost_api::OperationState;
use opshost_contract::Action;
use opshost_runtime::{Change, ChangeCursor};
use serde::Deserialize;
use serde_json::json;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::http::{parse_state, with_keep_alive};
use crate::state::{AppState, Caller, Shared, authorize};

/// The list-watch route.
pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/v1/events", get(events))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedQuery {
    operation: Option<String>,
    state: Option<String>,
    /// Where to resume, as `Last-Event-ID` does (which wins when both are given).
    after: Option<String>,
}

async fn events(
    State(shared): State<AppState>,
    Caller(caller): Caller,
    query: Result<Query<FeedQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // A watch token (`access_token`) is refused here too: it opens one operation's events.
    let Query(query) = query.map_err(|rejection| {
        ApiError::invalid(format!("query: {}", rejection.body_text()))
            .with_details(json!({ "allowed": ["operation", "state", "after"] }))
    })?;
    if let Some(operation) = &query.operation {
        authorize(&caller, shared.spec(operation)?, Action::Observe)?;
    }
    let state = query.state.as_deref().map(parse_state).transpose()?;
    let resumed = match headers.get("last-event-id") {
        Some(value) => Some(value.to_str().unwrap_or_default().trim().to_owned()),
        None => query.after.clone(),
    };
    let after = resumed
        .map(|text| {
            text.parse::<ChangeCursor>()
                .map_err(|reason| ApiError::invalid(format!("Last-Event-ID: {reason}")))
        })
        .transpose()?;
    let watch = shared.runtime.changes(after).await?;
    // The stream ends when the caller's token does: it shows nothing past what the token
    // allowed, and the client resumes with a fresh one.
    let token_left = Duration::from_secs(caller.expires.saturating_sub(now_secs()));
    let mut filter = Filter {
        caller,
        operation: query.operation,
        state,
        observable: HashMap::new(),
    };
    let feed = Arc::clone(&shared);
    let watching = shared.metrics.watching();
    let ready = Bytes::from(format!(
        "event: ready\nid: {start}\ndata: {{\"cursor\":\"{start}\"}}\n\n",
        start = watch.start
    ));
    let changes = watch.changes.filter_map(move |change| {
        let _watching = &watching;
        let frame = match change {
            Ok(change) => filter
                .admits(&feed, &change)
                .then(|| feed.change_frames.frame(&change)),
            Err(error) => {
                let error = ApiError::from(error);
                Some(crate::sse::error(
                    &json!({ "error": error.info() }).to_string(),
                ))
            }
        };
        std::future::ready(frame)
    });
    let frames = futures::stream::once(std::future::ready(ready)).chain(changes);
    // A host going down ends its streams; clients resume them elsewhere.
    let frames = frames
        .take_until(shared.draining.clone().cancelled_owned())
        .take_until(tokio::time::sleep(token_left));
    let body = Body::from_stream(with_keep_alive(frames, shared.config.keep_alive()));
    Ok((StatusCode::OK, crate::sse::stream_headers(), body).into_response())
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// What one stream shows: its caller's tenant, the operations it may observe, and the
/// query's filters.
struct Filter {
    caller: Principal,
    operation: Option<String>,
    state: Option<OperationState>,
    /// Whether the caller may observe each operation name met so far.
    observable: HashMap<String, bool>,
}

impl Filter {
    fn admits(&mut self, shared: &Shared, change: &Change) -> bool {
        let snapshot = change.event.snapshot();
        if change.tenant != self.caller.tenant
            || self
                .operation
                .as_ref()
                .is_some_and(|operation| *operation != snapshot.operation)
            || self.state.is_some_and(|state| state != snapshot.state)
        {
            return false;
        }
        if let Some(&observable) = self.observable.get(&snapshot.operation) {
            return observable;
        }
        let observable = shared
            .runtime
            .spec(&snapshot.operation)
            .is_ok_and(|spec| authorize(&self.caller, spec, Action::Observe).is_ok());
        self.observable
            .insert(snapshot.operation.clone(), observable);
        observable
    }
}
