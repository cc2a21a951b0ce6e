//! Traces of operations, from the caller's request down to a guest's outbound calls.
//!
//! Three parts, each in its own module:
//! - [`spans`]: the catalogue of spans the host makes (what each is named, its attributes,
//!   when it starts and ends). Components call it; none builds spans of its own.
//! - [`propagation`]: W3C `traceparent` in and out of HTTP headers, and the
//!   [`TraceContext`] kept with operations and jobs.
//! - `export`: the OTLP/HTTP pipeline, set up when `[telemetry] otlp_endpoint` is set.
//!
//! A [`Telemetry`] that is off makes no spans at all: each span call answers its parent's
//! context, so a caller's trace is still carried to the operation, its jobs and its outbound
//! requests.

mod export;
pub mod propagation;
pub mod spans;

use std::sync::Arc;
use std::time::Duration;

pub use opentelemetry::Context;
pub use opshost_api::TraceContext;
pub use spans::Span;

/// Where and how spans are exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP endpoint, e.g. `http://127.0.0.1:4318` (spans go to
    /// `/v1/traces` beneath it, unless it names that path already).
    pub otlp_endpoint: String,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// How long finished spans wait before they are sent in one batch.
    pub export_interval: Duration,
    /// Spans held while the collector is slow or away; beyond it, new spans are dropped.
    pub max_queue: usize,
}

impl TelemetryConfig {
    /// Export to `otlp_endpoint` as `service_name`, every second, holding up to 8,192 spans.
    pub fn new(otlp_endpoint: impl Into<String>, service_name: impl Into<String>) -> Self {
        Self {
            otlp_endpoint: otlp_endpoint.into(),
            service_name: service_name.into(),
            export_interval: Duration::from_secs(1),
            max_queue: 8192,
        }
    }
}

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `otlp_endpoint` is not an `http://` URL the exporter can send to.
    #[error("telemetry.otlp_endpoint `{endpoint}`: {reason}")]
    Endpoint {
        /// The endpoint as configured.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The OTLP exporter could not be built.
    #[error("telemetry: cannot build the OTLP exporter")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
}

/// The host's tracer: off, or exporting over OTLP. Cheap to clone; clones share the pipeline.
#[derive(Clone, Default)]
pub struct Telemetry {
    exporting: Option<Arc<export::Exporting>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("on", &self.is_on())
            .finish()
    }
}

impl Telemetry {
    /// Telemetry that makes no spans (the default).
    pub fn off() -> Self {
        Self::default()
    }

    /// Telemetry that exports spans as `config` says. Must be called within a tokio runtime
    /// or outside one alike: the exporter sends from a thread of its own.
    pub fn otlp(config: &TelemetryConfig) -> Result<Self, TelemetryError> {
        Ok(Self {
            exporting: Some(Arc::new(export::Exporting::start(config)?)),
        })
    }

    /// Whether spans are made and exported.
    pub fn is_on(&self) -> bool {
        self.exporting.is_some()
    }

    /// Sends the spans that have ended and stops the exporter, waiting up to `timeout`.
    /// Spans ended later are dropped. Blocks: call it from a blocking thread.
    pub fn shutdown(&self, timeout: Duration) {
        if let Some(exporting) = &self.exporting {
            exporting.shutdown(timeout);
        }
    }

    /// Sends the spans that have ended now, instead of at the next interval. Blocks.
    pub fn flush(&self) {
        if let Some(exporting) = &self.exporting {
            exporting.flush();
        }
    }
}
