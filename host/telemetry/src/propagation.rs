//! W3C trace context across boundaries: read from a caller's request headers, written on the
//! host's outbound requests, and kept with operations and jobs as a [`TraceContext`].

use std::str::FromStr;

use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opshost_api::TraceContext;

/// The context a caller's `traceparent` (and `tracestate`) header names; the empty context
/// when there is none or it is malformed.
pub fn extract(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Writes `cx`'s span as the `traceparent` (and `tracestate`) of an outbound request,
/// replacing any the request had. Writes nothing when `cx` has no valid span.
pub fn inject(cx: &Context, headers: &mut http::HeaderMap) {
    headers.remove("traceparent");
    headers.remove("tracestate");
    TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(headers));
}

/// The trace context of `cx`'s span, to keep; `None` when it has none.
pub fn trace_of(cx: &Context) -> Option<TraceContext> {
    let span = cx.span();
    let context = span.span_context();
    context.is_valid().then(|| {
        let state = context.trace_state().header();
        TraceContext {
            trace_id: context.trace_id().to_string(),
            span_id: context.span_id().to_string(),
            sampled: context.is_sampled(),
            state: (!state.is_empty()).then_some(state),
        }
    })
}

/// A context whose span is the kept `trace`'s (remote: it may have ended, or live on another
/// host); the empty context for `None` or a malformed one.
pub fn resume(trace: Option<&TraceContext>) -> Context {
    let Some(trace) = trace else {
        return Context::new();
    };
    let (Ok(trace_id), Ok(span_id)) = (
        TraceId::from_hex(&trace.trace_id),
        SpanId::from_hex(&trace.span_id),
    ) else {
        return Context::new();
    };
    let flags = if trace.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let state = trace
        .state
        .as_deref()
        .and_then(|state| TraceState::from_str(state).ok())
        .unwrap_or_default();
    let span = SpanContext::new(trace_id, span_id, flags, true, state);
    if span.is_valid() {
        Context::new().with_remote_span_context(span)
    } else {
        Context::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_callers_traceparent_is_kept_as_it_came() {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", PARENT.parse().unwrap());
        let kept = trace_of(&extract(&headers)).unwrap();
        assert_eq!(kept.traceparent(), PARENT);
    }

    #[test]
    fn a_callers_tracestate_is_kept_and_sent_on() {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", PARENT.parse().unwrap());
        headers.insert("tracestate", "vendor=opaque,other=1".parse().unwrap());
        let kept = trace_of(&extract(&headers)).unwrap();
        assert_eq!(kept.state.as_deref(), Some("vendor=opaque,other=1"));
        let mut outbound = http::HeaderMap::new();
        inject(&resume(Some(&kept)), &mut outbound);
        assert_eq!(outbound["tracestate"], "vendor=opaque,other=1");
    }

    #[test]
    fn a_malformed_traceparent_is_no_trace() {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", "00-zz-00f067aa0ba902b7-01".parse().unwrap());
        assert_eq!(trace_of(&extract(&headers)), None);
        assert_eq!(trace_of(&extract(&http::HeaderMap::new())), None);
    }

    #[test]
    fn a_kept_trace_is_resumed_and_sent_on() {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", PARENT.parse().unwrap());
        let kept = trace_of(&extract(&headers));
        let mut outbound = http::HeaderMap::new();
        outbound.insert("traceparent", "00-forged".parse().unwrap());
        inject(&resume(kept.as_ref()), &mut outbound);
        assert_eq!(outbound["traceparent"], PARENT);
    }
}
