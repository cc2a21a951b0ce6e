//! `GET /v1/operations/{id}/logs`: an operation's log lines (what its handler and job workers
//! wrote, and the outbound requests they made), gated by `observe`.
//!
//! Without `follow`, the lines after `after` as JSON lines (`application/x-ndjson`), at most
//! `limit`. With `follow=true`, Server-Sent Events (`event: log`, `id` = the line's `seq`,
//! resumable with `Last-Event-ID`) as lines are written; once the operation has ended and its
//! last lines are out, one `event: end` closes the stream. A stream that closes without it (the
//! host is going down) is to be resumed, elsewhere or later.

use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::Stream;
use opshost_api::{ErrorCode, LogLine};
use opshost_contract::Action;
use opshost_runtime::ServerError;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use crate::error::ApiError;
use crate::http::{last_event_id, with_keep_alive};
use crate::state::{AppState, Caller};

/// Lines in one answer unless `limit` says fewer.
const DEFAULT_LIMIT: usize = 1000;

/// Most lines in one answer.
const MAX_LIMIT: usize = 10_000;

/// Bytes of lines in one answer, about.
const MAX_BYTES: usize = 4 << 20;

/// Lines read from the store at once while following.
const PAGE: usize = 500;

/// How often a follower looks for lines another host wrote.
const POLL: Duration = Duration::from_secs(1);

/// The log routes; a follow holds its request open, so none counts against `max_in_flight`.
pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/v1/operations/{id}/logs", get(logs))
}

#[derive(Deserialize)]
struct LogsQuery {
    after: Option<u64>,
    limit: Option<usize>,
    #[serde(default)]
    follow: bool,
}

async fn logs(
    State(shared): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    Query(query): Query<LogsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let stored = shared.visible(&caller, &id, Action::Observe).await?;
    let id = stored.snapshot.id;
    let resume = last_event_id(&headers, "a log line's seq")?;
    let after = resume.or(query.after).unwrap_or(0);
    if !query.follow {
        let limit = query.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
        let lines = shared.runtime.logs(&id, after, limit).await?;
        let mut body = Vec::new();
        // A reader pages by `seq`: an answer stops after about `MAX_BYTES`.
        for line in &lines {
            if body.len() >= MAX_BYTES {
                break;
            }
            serde_json::to_writer(&mut body, line).map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Internal,
                    format!("cannot encode a log line: {e}"),
                )
            })?;
            body.push(b'\n');
        }
        return Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response());
    }
    let stream = follow(shared.clone(), id, after);
    let stream = futures::StreamExt::take_until(stream, shared.draining.clone().cancelled_owned());
    let body = Body::from_stream(with_keep_alive(stream, shared.config.keep_alive()));
    Ok((crate::sse::stream_headers(), body).into_response())
}

/// The lines of operation `id` after `after`, as SSE frames, as they are written; ends once
/// the operation has ended and its last lines are out.
fn follow(shared: AppState, id: String, after: u64) -> impl Stream<Item = Bytes> + Send {
    let appended = shared.runtime.log_sink().appended();
    let state = Follow {
        shared,
        id,
        after,
        appended,
        pending: Vec::new().into_iter(),
        ended: false,
        done: false,
        finished: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        match state.next().await {
            Some(line) => Some((frame(&line), state)),
            None if state.done && !state.finished => {
                state.finished = true;
                let end = crate::sse::encode("end", state.after, "{}");
                Some((end, state))
            }
            None => None,
        }
    })
}

struct Follow {
    shared: AppState,
    id: String,
    after: u64,
    appended: tokio::sync::broadcast::Receiver<String>,
    pending: std::vec::IntoIter<LogLine>,
    ended: bool,
    /// The operation has ended and its last lines were read.
    done: bool,
    /// `event: end` was sent.
    finished: bool,
}

impl Follow {
    async fn next(&mut self) -> Option<LogLine> {
        loop {
            if let Some(line) = self.pending.next() {
                self.after = line.seq;
                return Some(line);
            }
            if self.done {
                return None;
            }
            // Taken before the read, so that a change between the read and the wait wakes it.
            let mut bell = self.shared.runtime.doorbell(&self.id);
            let lines = match self.shared.runtime.logs(&self.id, self.after, PAGE).await {
                Ok(lines) => lines,
                Err(error) => {
                    tracing::warn!(operation = %self.id, %error, "cannot read logs to follow");
                    return None;
                }
            };
            let full = lines.len() == PAGE;
            self.pending = lines.into_iter();
            if full {
                continue;
            }
            if self.ended {
                // The read after the end (and after this host's queued lines were written)
                // was the last.
                self.done = true;
                continue;
            }
            if self.pending.len() > 0 {
                continue;
            }
            self.wait(&mut bell).await;
            match self.shared.runtime.get(&self.id).await {
                Ok(snapshot) if snapshot.is_terminal() => {
                    self.ended = true;
                    self.shared.runtime.log_sink().flush().await;
                }
                Ok(_) => {}
                // Gone (purged): nothing more will come.
                Err(ServerError::OperationNotFound { .. }) => self.done = true,
                Err(error) => {
                    // Closed without `end`: the reader resumes.
                    tracing::warn!(operation = %self.id, %error, "cannot read an operation followed");
                    return None;
                }
            }
        }
    }

    /// Waits until lines are written for this operation here, the operation changes, or a
    /// moment passed (lines written by another host).
    async fn wait(&mut self, bell: &mut opshost_runtime::store::Doorbell) {
        let appended = async {
            loop {
                match self.appended.recv().await {
                    Ok(id) if id == self.id => return,
                    // Missed notices may have named this operation: look again.
                    Err(RecvError::Lagged(_)) => return,
                    Ok(_) => {}
                    Err(RecvError::Closed) => return std::future::pending().await,
                }
            }
        };
        tokio::select! {
            () = appended => {}
            _ = bell.changed() => {}
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

fn frame(line: &LogLine) -> Bytes {
    let data = serde_json::to_string(line).unwrap_or_default();
    crate::sse::encode("log", line.seq, &data)
}
