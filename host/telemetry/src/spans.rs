//! The spans the host makes, in one place. One trace of an operation reads:
//!
//! ```text
//! POST /v1/operations/{key}        server   the caller's request (child of its traceparent),
//! │                                           kept as the operation's trace
//! ├─ Orders.Process                  internal one per attempt; live (sent at start and end);
//! │  │                                        events: started, progress, signal
//! │  └─ hand-off fulfillment         producer the handler hands its terminal path to a job
//! │     └─ job fulfillment           consumer one per job attempt; live; events as above
//! │        └─ POST                   client   an outbound request of the guest
//! └─ Orders.Process                  internal a later attempt, after a restart
//! ```
//!
//! An operation accepted outside any trace (in-process, no current span) gets an
//! `accept Orders.Process` root span in the place of the request's.
//!
//! Attributes follow the OpenTelemetry HTTP conventions where they apply (`http.route`,
//! `http.response.status_code`, `url.full`, ...) and are `opshost.*` otherwise. A span that
//! ends in error has an error status with the error's message.

use std::borrow::Cow;

use opentelemetry::context::{FutureExt as _, WithContext};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opshost_api::{JobRecord, Snapshot, TraceContext};

use crate::Telemetry;
use crate::export::ExportAtStart;
use crate::propagation::{extract, resume, trace_of};

/// Longest progress payload (bytes of JSON) kept on a `progress` event.
pub const MAX_EVENT_PAYLOAD: usize = 1024;

/// A span the host made, and the context its children start from. With telemetry off it
/// is the context it would have hung from (a caller's, or none), so the trace still travels.
/// Clones are the same span; it ends when [`Span::end`] (or one of the `end_*`) is called,
/// else when its last clone drops.
#[derive(Clone, Debug, Default)]
pub struct Span {
    cx: Context,
}

impl Span {
    /// The span current where this is called (see [`Span::scope`]): e.g. a job attempt's,
    /// within its worker.
    pub fn current() -> Self {
        Self {
            cx: Context::current(),
        }
    }

    /// `future`, with this span current while it is polled: what it accepts or attaches to
    /// hangs from this span.
    pub fn scope<F: Future>(&self, future: F) -> WithContext<F> {
        future.with_context(self.cx.clone())
    }

    /// The context children start from (with this span as their parent).
    pub fn context(&self) -> &Context {
        &self.cx
    }

    /// This span as the parent of work kept for later (an operation, a job); `None` outside
    /// any trace.
    pub fn trace(&self) -> Option<TraceContext> {
        trace_of(&self.cx)
    }

    /// Whether events and attributes are recorded (telemetry on, trace sampled).
    pub fn is_recording(&self) -> bool {
        self.cx.span().is_recording()
    }

    /// Records event `name` now, with the attributes `attributes` makes (only when recorded).
    pub fn event(&self, name: &'static str, attributes: impl FnOnce() -> Vec<KeyValue>) {
        if self.is_recording() {
            self.cx.span().add_event(name, attributes());
        }
    }

    /// The `progress` event of an attempt, with the payload's JSON (cut at
    /// [`MAX_EVENT_PAYLOAD`] bytes).
    pub fn progress(&self, progress: &serde_json::Value) {
        self.event("progress", || {
            let mut json = progress.to_string();
            if json.len() > MAX_EVENT_PAYLOAD {
                let mut end = MAX_EVENT_PAYLOAD;
                while !json.is_char_boundary(end) {
                    end -= 1;
                }
                json.truncate(end);
            }
            vec![KeyValue::new("opshost.progress", json)]
        });
    }

    /// The `signal` event of an attempt that received signal `name`, the `sequence`-th.
    pub fn signal(&self, name: &str, sequence: u64) {
        self.event("signal", || {
            vec![
                KeyValue::new("opshost.signal.name", name.to_owned()),
                KeyValue::new("opshost.signal.sequence", sequence as i64),
            ]
        });
    }

    /// Ends the span with outcome `outcome` (`opshost.outcome`: `completed`, `failed`,
    /// `handed-off`, ...), in error with `error` when there is one.
    pub fn end_with(&self, outcome: &str, error: Option<&str>) {
        let span = self.cx.span();
        if span.is_recording() {
            span.set_attribute(KeyValue::new("opshost.outcome", outcome.to_owned()));
            if let Some(error) = error {
                span.set_status(Status::error(error.to_owned()));
            }
        }
        span.end();
    }

    /// Ends a request span (server or client) with the status it was answered.
    pub fn end_http(&self, status: u16) {
        let span = self.cx.span();
        if span.is_recording() {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
            if status >= 500 {
                span.set_status(Status::error(format!("answered {status}")));
            }
        }
        span.end();
    }

    /// Ends the span as it is.
    pub fn end(&self) {
        self.cx.span().end();
    }
}

impl From<Context> for Span {
    /// The span of `cx` (e.g. a caller's, resumed with [`crate::propagation::resume`]).
    fn from(cx: Context) -> Self {
        Self { cx }
    }
}

impl Telemetry {
    /// A span under `parent` named `name`; `parent` itself when telemetry is off. A live span
    /// is also sent, as open, when it starts.
    fn start(
        &self,
        parent: &Context,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        live: bool,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Span {
        let Some(exporting) = &self.exporting else {
            return Span { cx: parent.clone() };
        };
        let builder = exporting
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes());
        let span = if live {
            builder.start_with_context(&exporting.tracer, &parent.with_value(ExportAtStart))
        } else {
            builder.start_with_context(&exporting.tracer, parent)
        };
        Span {
            cx: parent.with_span(span),
        }
    }

    /// A caller's request to the HTTP API, `method` on route `route` (e.g.
    /// `/v1/operations/{key}`), under the trace its `traceparent` header names, if any.
    pub fn request(&self, headers: &http::HeaderMap, method: &str, route: &str) -> Span {
        let parent = extract(headers);
        self.start(
            &parent,
            format!("{method} {route}"),
            SpanKind::Server,
            false,
            || {
                vec![
                    KeyValue::new("http.request.method", method.to_owned()),
                    KeyValue::new("http.route", route.to_owned()),
                ]
            },
        )
    }

    /// The acceptance of operation `id` (`operation`, of `tenant`) under `parent`; answers
    /// what the operation keeps as its trace. Within a trace (a request's span, a caller's),
    /// that is `parent` itself, which gets the operation's attributes when it is recorded
    /// here; outside any, an `accept` span starts a trace of its own (none when off).
    pub fn accepted(
        &self,
        parent: &Context,
        operation: &str,
        id: &str,
        tenant: &str,
    ) -> Option<TraceContext> {
        let attributes = || {
            vec![
                KeyValue::new("opshost.operation.id", id.to_owned()),
                KeyValue::new("opshost.operation.name", operation.to_owned()),
                KeyValue::new("opshost.tenant", tenant.to_owned()),
            ]
        };
        if let Some(trace) = trace_of(parent) {
            let span = parent.span();
            if span.is_recording() {
                span.set_attributes(attributes());
            }
            return Some(trace);
        }
        let span = self.start(
            parent,
            format!("accept {operation}"),
            SpanKind::Internal,
            false,
            attributes,
        );
        span.end();
        span.trace()
    }

    /// The enqueueing of job `job` on `queue` under `parent`; answers what the job keeps as
    /// its trace.
    pub fn enqueued(&self, parent: &Context, queue: &str, job: &str) -> Option<TraceContext> {
        let span = self.start(
            parent,
            format!("enqueue {queue}"),
            SpanKind::Producer,
            false,
            || {
                vec![
                    KeyValue::new("opshost.job.id", job.to_owned()),
                    KeyValue::new("opshost.job.queue", queue.to_owned()),
                ]
            },
        );
        span.end();
        span.trace()
    }

    /// One attempt of the operation `snapshot` shows, of `tenant`: live, under the operation's
    /// trace.
    pub fn attempt(&self, snapshot: &Snapshot, tenant: &str) -> Span {
        let parent = resume(snapshot.trace.as_ref());
        self.start(
            &parent,
            snapshot.operation.clone(),
            SpanKind::Internal,
            true,
            || {
                vec![
                    KeyValue::new("opshost.operation.id", snapshot.id.clone()),
                    KeyValue::new("opshost.operation.name", snapshot.operation.clone()),
                    KeyValue::new("opshost.operation.version", snapshot.version.clone()),
                    KeyValue::new("opshost.attempt", i64::from(snapshot.attempt)),
                    KeyValue::new("opshost.tenant", tenant.to_owned()),
                ]
            },
        )
    }

    /// The hand-off of an attempt's terminal path to job `job` on `queue`.
    pub fn hand_off(&self, attempt: &Span, queue: &str, job: &str) -> Span {
        self.start(
            attempt.context(),
            format!("hand-off {queue}"),
            SpanKind::Producer,
            false,
            || {
                vec![
                    KeyValue::new("opshost.job.id", job.to_owned()),
                    KeyValue::new("opshost.job.queue", queue.to_owned()),
                ]
            },
        )
    }

    /// One attempt of `job` (its `attempt` counts it already): live, under the job's trace.
    pub fn job_attempt(&self, job: &JobRecord) -> Span {
        let parent = resume(job.trace.as_ref());
        self.start(
            &parent,
            format!("job {}", job.queue),
            SpanKind::Consumer,
            true,
            || {
                let mut attributes = vec![
                    KeyValue::new("opshost.job.id", job.id.clone()),
                    KeyValue::new("opshost.job.queue", job.queue.clone()),
                    KeyValue::new("opshost.attempt", i64::from(job.attempt)),
                ];
                if let Some(operation) = &job.operation {
                    attributes.push(KeyValue::new("opshost.operation.id", operation.clone()));
                }
                attributes
            },
        )
    }

    /// An outbound request of a guest, `method` to `url` (without its query, which may carry
    /// secrets), under the run's span `parent`.
    pub fn outbound(&self, parent: &Context, method: &str, url: &http::Uri) -> Span {
        self.start(parent, method.to_owned(), SpanKind::Client, false, || {
            let mut attributes = vec![
                KeyValue::new("http.request.method", method.to_owned()),
                KeyValue::new(
                    "url.full",
                    format!(
                        "{}://{}{}{}",
                        url.scheme_str().unwrap_or("http"),
                        url.host().unwrap_or(""),
                        url.port().map_or(String::new(), |port| format!(":{port}")),
                        url.path()
                    ),
                ),
            ];
            if let Some(host) = url.host() {
                attributes.push(KeyValue::new("server.address", host.to_owned()));
            }
            if let Some(port) = url.port_u16() {
                attributes.push(KeyValue::new("server.port", i64::from(port)));
            }
            attributes
        })
    }
}
