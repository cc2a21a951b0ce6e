//! A real OTLP/HTTP collector on 127.0.0.1: it decodes every `ExportTraceServiceRequest` it
//! is sent (protobuf, as the host's exporter sends them) and keeps the spans, so that tests
//! can assert the span tree a host exported.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;

/// One span as exported (a live span arrives twice: open at its start, then ended).
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// `service.name` of the resource that sent it.
    pub service: String,
    /// The trace, as 32 hex digits.
    pub trace_id: String,
    /// The span, as 16 hex digits.
    pub span_id: String,
    /// The parent span, as 16 hex digits; empty for a root.
    pub parent_span_id: String,
    /// Its name.
    pub name: String,
    /// Its kind, as OTLP numbers it (1 internal, 2 server, 3 client, 4 producer, 5 consumer).
    pub kind: i32,
    /// Its attributes, each value as text.
    pub attributes: BTreeMap<String, String>,
    /// The names of its events, in order.
    pub events: Vec<String>,
    /// Its status message when its status is an error.
    pub error: Option<String>,
    /// Start and end, in Unix nanoseconds.
    pub start: u64,
    /// End; equal to the start in the open copy of a live span.
    pub end: u64,
}

impl ReceivedSpan {
    /// Whether this is the copy of a live span sent when it started.
    pub fn is_open(&self) -> bool {
        self.attributes.get("opshost.span.open").map(String::as_str) == Some("true")
    }

    /// Attribute `key`, or `""`.
    pub fn attribute(&self, key: &str) -> &str {
        self.attributes.get(key).map_or("", String::as_str)
    }
}

/// A running collector; it stops when the test's runtime does.
#[derive(Clone)]
pub struct Collector {
    /// Where it listens.
    pub address: SocketAddr,
    kept: Arc<Kept>,
}

/// What a collector keeps: every span, or (for benches) only how many it decoded.
#[derive(Default)]
struct Kept {
    spans: Mutex<Vec<ReceivedSpan>>,
    keep: bool,
    count: AtomicUsize,
}

impl Collector {
    /// Starts a collector on a free port of 127.0.0.1 that keeps every span.
    pub async fn start() -> Self {
        Self::listen(true).await
    }

    /// Starts a collector that decodes every request as [`Collector::start`]'s does but keeps
    /// only the count of spans, as a receiver passing them on would (for benches).
    pub async fn start_counting() -> Self {
        Self::listen(false).await
    }

    async fn listen(keep: bool) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let address = listener.local_addr().expect("bound");
        let kept = Arc::new(Kept {
            keep,
            ..Kept::default()
        });
        let router = Router::new()
            .route("/v1/traces", post(export))
            .with_state(Arc::clone(&kept));
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { address, kept }
    }

    /// How many spans it decoded so far.
    pub fn count(&self) -> usize {
        self.kept.count.load(Ordering::Relaxed)
    }

    /// The endpoint to configure: `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Every span received so far, in order of arrival.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.kept
            .spans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The spans received once `done` holds of them, polling for up to 30 s; panics with
    /// what arrived otherwise.
    pub async fn wait_until(&self, done: impl Fn(&[ReceivedSpan]) -> bool) -> Vec<ReceivedSpan> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            if tokio::time::Instant::now() > deadline {
                let names: Vec<String> = spans
                    .iter()
                    .map(|s| {
                        format!(
                            "{} ({}{})",
                            s.name,
                            s.span_id,
                            if s.is_open() { ", open" } else { "" }
                        )
                    })
                    .collect();
                panic!("the collector did not get the spans expected; it got {names:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The ended spans received so far (the last copy of each span id).
    pub fn ended(&self) -> Vec<ReceivedSpan> {
        let mut ended: Vec<ReceivedSpan> = Vec::new();
        for span in self.spans().into_iter().filter(|s| !s.is_open()) {
            ended.retain(|kept| kept.span_id != span.span_id);
            ended.push(span);
        }
        ended
    }
}

async fn export(State(kept): State<Arc<Kept>>, body: Bytes) -> (StatusCode, Vec<u8>) {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, Vec::new());
    };
    let answer = ExportTraceServiceResponse {
        partial_success: None,
    }
    .encode_to_vec();
    if !kept.keep {
        let spans = request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum::<usize>();
        kept.count.fetch_add(spans, Ordering::Relaxed);
        return (StatusCode::OK, answer);
    }
    let mut received = Vec::new();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .map(value)
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                let error = span
                    .status
                    .as_ref()
                    .filter(|status| status.code == 2)
                    .map(|status| status.message.clone());
                received.push(ReceivedSpan {
                    service: service.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name,
                    kind: span.kind,
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), value(kv)))
                        .collect(),
                    events: span.events.into_iter().map(|e| e.name).collect(),
                    error,
                    start: span.start_time_unix_nano,
                    end: span.end_time_unix_nano,
                });
            }
        }
    }
    kept.count.fetch_add(received.len(), Ordering::Relaxed);
    kept.spans
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .extend(received);
    (StatusCode::OK, answer)
}

fn value(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
