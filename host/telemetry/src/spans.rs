//! The spans the host makes, in one place. One trace of an operation reads:
//!
//! ```text
//! POST /v1/operations/{key}        server   the caller's request (child of its traceparent),
//! │                                           kept as the operation's trace
//! ├─ Orders.Process                  internal one per attempt; live (sent at start and end);
//! │  │                                        events: started, progress, signal,
//! │  │                                        cancel requested
//! │  └─ hand-off fulfillment         producer the handler hands its terminal path to a job
//! │     └─ job fulfillment           consumer one per job attempt; live; events as above
//! │        └─ POST                   client   an outbound request of the guest
//! └─ Orders.Process                  internal a later attempt, after a restart
//! ```
//!
//! An operation accepted outside any trace (in-process, no current span) gets an
//! `accept Orders.Process` root span in the place of the request's; a job enqueued in-process
//! (not handed off) gets an `enqueue {queue}` span, under the current span if there is one.
//!
//! Attributes follow the OpenTelemetry HTTP conventions where they apply (`http.route`,
//! `http.response.status_code`, `url.full`, ...) and are `opshost.*` otherwise. A span that
//! ends in error has an error status with the error's message.

use std::borrow::Cow;

use opentelemetry::context::{FutureExt as _, WithContext};
use opentelemetry::trace::{Span as _, SpanId, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opshost_api::{JobRecord, Snapshot, TraceContext};

use crate::Telemetry;
use crate::export::ExportAtStart;
use crate::propagation::{extract, resume, trace_of};

/// Longest progress payload (bytes of JSON) kept on a `progress` event.
pub const MAX_EVENT_PAYLOAD: usize = 1024;

/// Longest outbound URL (and unknown method) kept on a client span, in bytes.
pub const MAX_URL: usize = 512;

/// The attributes of a span that makes job `job` on `queue`.
fn job_attributes(queue: &str, job: &str) -> Vec<KeyValue> {
    vec![
        KeyValue::new("opshost.job.id", job.to_owned()),
        KeyValue::new("opshost.job.queue", queue.to_owned()),
    ]
}

/// `text`, cut to at most `max` bytes at a character boundary.
fn cut(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// A span the host made, and the context its children start from. With telemetry off it
/// is the context it would have hung from (a caller's, or none), so the trace still travels.
/// Clones are the same span; it ends when [`Span::end`] (or one of the `end_*`) is called,
/// else when its last clone drops. Events and ends touch only spans this host made: never a
/// caller's or an embedding service's own span.
#[derive(Clone, Debug, Default)]
pub struct Span {
    cx: Context,
}

/// Kept in the context of each span the host makes: which span it is, and whether it is a
/// request's. A context derived from it (an embedder's span under one of ours) keeps the
/// value but not the span, so it is not taken for ours.
#[derive(Clone, Copy, Debug)]
struct Made {
    span: SpanId,
    request: bool,
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

    /// Whether events and attributes are recorded: a span this host made, in a sampled trace.
    pub fn is_recording(&self) -> bool {
        self.made().is_some() && self.cx.span().is_recording()
    }

    /// What this host knows of the span, when it made it.
    fn made(&self) -> Option<Made> {
        let made = *self.cx.get::<Made>()?;
        (made.span == self.cx.span().span_context().span_id()).then_some(made)
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
            vec![KeyValue::new(
                "opshost.progress",
                cut(progress.to_string(), MAX_EVENT_PAYLOAD),
            )]
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
        if self.made().is_none() {
            return;
        }
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
        if self.made().is_none() {
            return;
        }
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
        if self.made().is_some() {
            self.cx.span().end();
        }
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
        let request = kind == SpanKind::Server;
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
        let made = Made {
            span: span.span_context().span_id(),
            request,
        };
        Span {
            cx: parent.with_span(span).with_value(made),
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
            let current = Span::from(parent.clone());
            if current.made().is_some_and(|made| made.request) && current.is_recording() {
                parent.span().set_attributes(attributes());
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
            || job_attributes(queue, job),
        );
        span.end();
        span.trace()
    }

    /// One attempt of the operation `snapshot` shows, of `tenant`: live, under the operation's
    /// trace. It starts when the attempt is launched, its wait for a handler slot included.
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
            || job_attributes(queue, job),
        )
    }

    /// One attempt of `job` (its `attempt` counts it already), working an operation of
    /// `tenant` if it owns one: live, under the job's trace.
    pub fn job_attempt(&self, job: &JobRecord, tenant: Option<&str>) -> Span {
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
                if let Some(tenant) = tenant {
                    attributes.push(KeyValue::new("opshost.tenant", tenant.to_owned()));
                }
                attributes
            },
        )
    }

    /// An outbound request of a guest, `method` to `url` (without its query, which may carry
    /// secrets), under the run's span `parent`.
    /// The guest chooses both: a method that is not one of HTTP's own is named `_OTHER` (its
    /// text kept, cut, in `http.request.method_original`), and the URL is cut at
    /// [`MAX_URL`] bytes.
    pub fn outbound(&self, parent: &Context, method: &str, url: &http::Uri) -> Span {
        const KNOWN: [&str; 9] = [
            "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
        ];
        let known = KNOWN.iter().find(|known| **known == method).copied();
        let name = known.unwrap_or("HTTP");
        self.start(parent, name, SpanKind::Client, false, || {
            let full = format!(
                "{}://{}{}{}",
                url.scheme_str().unwrap_or("http"),
                url.host().unwrap_or(""),
                url.port().map_or(String::new(), |port| format!(":{port}")),
                url.path()
            );
            let mut attributes = vec![
                KeyValue::new("http.request.method", known.unwrap_or("_OTHER")),
                KeyValue::new("url.full", cut(full, MAX_URL)),
            ];
            if known.is_none() {
                attributes.push(KeyValue::new(
                    "http.request.method_original",
                    cut(method.to_owned(), MAX_URL),
                ));
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_cut_at_a_character_boundary() {
        assert_eq!(cut("héllo".into(), 2), "h");
        assert_eq!(cut("héllo".into(), 3), "hé");
        assert_eq!(cut("short".into(), 512), "short");
    }

    #[test]
    fn a_span_the_host_did_not_make_is_never_ended() {
        use opentelemetry::trace::TracerProvider as _;
        // An embedding service's own tracer and span, current where opshost is called.
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let theirs = provider.tracer("embedder").start("embedder's work");
        let cx = Context::current_with_span(theirs);
        let current = Span::from(cx.clone());
        assert!(!current.is_recording(), "not one of the host's");
        let off = Telemetry::off();
        let hand_off = off.hand_off(&current, "queue", "job-1");
        hand_off.end_with("refused", Some("no"));
        off.enqueued(&cx, "queue", "job-2");
        current.progress(&serde_json::json!({ "step": 1 }));
        current.end();
        current.end_http(500);
        assert!(cx.span().is_recording(), "their span is still open");
    }
}
