//! Watching over Server-Sent Events, with reconnection.
//!
//! The stream keeps the last revision it yielded. When the connection drops (or the host
//! closes it before the terminal event), it reconnects with `Last-Event-ID` set to that
//! revision, backing off from 50 ms to 2 s, and drops any event at or below it, so every
//! revision arrives exactly once. Errors the host answers (404, 401, 403) end the stream.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use opshost_api::{EventKind, Operation, OperationEvent, OperationSnapshot, Snapshot};
use reqwest::Method;

use opshost_api::id::url_segment as segment;

use crate::{Client, ClientError, is_retryable};

/// How many reconnections in a row may fail before the stream gives up.
const MAX_RECONNECTS: u32 = 40;

type Raw = BoxStream<'static, Result<eventsource_stream::Event, String>>;

struct State {
    client: Client,
    id: String,
    last: Option<u64>,
    connection: Option<Raw>,
    failures: u32,
    pending: VecDeque<OperationEvent>,
    done: bool,
}

/// Untyped events of one operation (see the module docs).
pub struct EventStream {
    inner: BoxStream<'static, Result<OperationEvent, ClientError>>,
}

impl EventStream {
    pub(crate) fn new(client: Client, id: String, after: Option<u64>) -> Self {
        let state = State {
            client,
            id,
            last: after,
            connection: None,
            failures: 0,
            pending: VecDeque::new(),
            done: false,
        };
        Self {
            inner: futures::stream::unfold(state, next).boxed(),
        }
    }
}

impl Stream for EventStream {
    type Item = Result<OperationEvent, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

async fn next(mut state: State) -> Option<(Result<OperationEvent, ClientError>, State)> {
    loop {
        if let Some(event) = state.pending.pop_front() {
            state.done = event.snapshot().is_terminal();
            return Some((Ok(event), state));
        }
        if state.done {
            return None;
        }
        let connection = match state.connection.as_mut() {
            Some(connection) => connection,
            None => match connect(&state.client, &state.id, state.last).await {
                Ok(connection) => state.connection.insert(connection),
                Err(error) if reconnectable(&error) && state.failures < MAX_RECONNECTS => {
                    backoff(&mut state).await;
                    continue;
                }
                Err(error) => {
                    state.done = true;
                    return Some((Err(error), state));
                }
            },
        };
        match connection.next().await {
            Some(Ok(message)) => match parse(&message) {
                Ok(Some(event)) => {
                    state.failures = 0;
                    let revision = event.snapshot().revision;
                    if state.last.is_none_or(|last| revision > last) {
                        state.last = Some(revision);
                        state.pending.push_back(event);
                    }
                }
                Ok(None) => {}
                Err(error) => {
                    state.done = true;
                    return Some((Err(error), state));
                }
            },
            Some(Err(reason)) => {
                tracing::debug!(id = %state.id, %reason, "watch connection broke; reconnecting");
                state.connection = None;
                backoff(&mut state).await;
            }
            None => {
                // Closed before the terminal event, e.g. by a restarting host.
                state.connection = None;
                backoff(&mut state).await;
            }
        }
        if state.failures > MAX_RECONNECTS {
            state.done = true;
            return Some((
                Err(ClientError::Protocol(format!(
                    "watch of `{}` lost its connection {MAX_RECONNECTS} times in a row",
                    state.id
                ))),
                state,
            ));
        }
    }
}

async fn connect(client: &Client, id: &str, last: Option<u64>) -> Result<Raw, ClientError> {
    let mut request = client
        .request(
            Method::GET,
            &format!("/v1/operations/{}/events", segment(id)),
        )
        .header(reqwest::header::ACCEPT, "text/event-stream");
    if let Some(last) = last {
        request = request.header("last-event-id", last.to_string());
    }
    let response = request.send().await.map_err(ClientError::Transport)?;
    let status = response.status();
    if !status.is_success() {
        let body = response.bytes().await.map_err(ClientError::Transport)?;
        return Err(ClientError::from_body(status, &body, None));
    }
    Ok(response
        .bytes_stream()
        .eventsource()
        .map(|event| event.map_err(|error| error.to_string()))
        .boxed())
}

fn reconnectable(error: &ClientError) -> bool {
    match error {
        ClientError::Transport(_) => true,
        ClientError::Api { status, .. } => is_retryable(*status),
        _ => false,
    }
}

async fn backoff(state: &mut State) {
    state.failures += 1;
    let exponent = state.failures.min(6);
    let delay = Duration::from_millis(50 * (1 << exponent)).min(Duration::from_secs(2));
    tokio::time::sleep(delay).await;
}

/// One SSE message as an event; `None` for messages that carry none.
fn parse(message: &eventsource_stream::Event) -> Result<Option<OperationEvent>, ClientError> {
    if message.event == "error" {
        return Err(ClientError::from_body(
            reqwest::StatusCode::INTERNAL_SERVER_ERROR,
            message.data.as_bytes(),
            None,
        ));
    }
    let Some(kind) = EventKind::from_name(&message.event) else {
        return Ok(None);
    };
    let snapshot: Snapshot = serde_json::from_str(&message.data)
        .map_err(|e| ClientError::Protocol(format!("event data is not a snapshot: {e}")))?;
    Ok(Some(OperationEvent::new(kind, snapshot)))
}

/// Typed events of one operation of type `Op`. Yields events, not results: when the stream
/// ends before a terminal event, [`TypedEventStream::take_error`] tells why.
pub struct TypedEventStream<Op: Operation> {
    inner: EventStream,
    error: Option<ClientError>,
    marker: PhantomData<fn() -> Op>,
}

impl<Op: Operation> TypedEventStream<Op> {
    pub(crate) fn new(inner: EventStream) -> Self {
        Self {
            inner,
            error: None,
            marker: PhantomData,
        }
    }

    /// The error that ended the stream early, if any.
    pub fn take_error(&mut self) -> Option<ClientError> {
        self.error.take()
    }
}

impl<Op: Operation> Stream for TypedEventStream<Op> {
    type Item = OperationEvent<OperationSnapshot<Op>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.error.is_some() {
            return Poll::Ready(None);
        }
        match self.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(event))) => {
                match event.try_map(|snapshot| snapshot.typed::<Op>()) {
                    Ok(event) => Poll::Ready(Some(event)),
                    Err(error) => {
                        self.error = Some(ClientError::Codec(error));
                        Poll::Ready(None)
                    }
                }
            }
            Poll::Ready(Some(Err(error))) => {
                self.error = Some(error);
                Poll::Ready(None)
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
