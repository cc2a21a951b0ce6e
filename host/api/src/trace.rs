//! Where an operation's or a job's spans hang in a distributed trace.

use serde::{Deserialize, Serialize};

/// The W3C trace context that an operation's (or a job's) spans descend from: the trace and
/// the span that is their parent. Kept with the operation, so that every attempt, on any host,
/// joins the same trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceContext {
    /// The trace: 32 lowercase hex digits.
    pub trace_id: String,
    /// The parent span: 16 lowercase hex digits.
    pub span_id: String,
    /// Whether the trace is sampled (recorded and exported).
    #[serde(default)]
    pub sampled: bool,
    /// The caller's W3C `tracestate`, passed on as it came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

impl TraceContext {
    /// The context as a W3C `traceparent` header value (version `00`).
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_the_w3c_form() {
        let trace = TraceContext {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            span_id: "00f067aa0ba902b7".into(),
            sampled: true,
            state: None,
        };
        assert_eq!(
            trace.traceparent(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
    }
}
