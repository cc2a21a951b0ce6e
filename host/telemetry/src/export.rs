//! The OTLP/HTTP pipeline: a batch of ended spans is sent every export interval from the
//! exporter's own thread, so that a slow or absent collector never holds up an operation.
//! Spans the catalogue marks live are also sent, as open, when they start.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider, SpanData, SpanProcessor,
};

use crate::{TelemetryConfig, TelemetryError};

/// Attribute set on the copy of a live span sent when it starts: the span is still open, and
/// its `endTimeUnixNano` is its start. The copy sent when it ends has the same span id and
/// lacks it.
pub(crate) const OPEN: &str = "opshost.span.open";

/// How long a pipeline dropped without being shut down may take to send its last spans.
const SHUTDOWN_ON_DROP: Duration = Duration::from_secs(2);

/// Spans sent in one request, at most: a request costs both ends more than a span does.
const MAX_BATCH: usize = 2048;

/// Marks, in the parent context a span is started from, that the span is live.
pub(crate) struct ExportAtStart;

/// The running pipeline.
pub(crate) struct Exporting {
    provider: SdkTracerProvider,
    pub(crate) tracer: SdkTracer,
    /// Whether [`Exporting::shutdown`] ran.
    stopped: AtomicBool,
}

impl Exporting {
    pub(crate) fn start(config: &TelemetryConfig) -> Result<Self, TelemetryError> {
        let endpoint = traces_url(&config.otlp_endpoint)?;
        // The exporter's HTTP client takes the process's rustls provider: ring, as the rest
        // of the host (installing it again changes nothing).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .with_timeout(Duration::from_secs(10))
            .build()
            .map_err(TelemetryError::Exporter)?;
        let batch = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_scheduled_delay(config.export_interval)
                    .with_max_queue_size(config.max_queue)
                    .with_max_export_batch_size(config.max_queue.min(MAX_BATCH))
                    .build(),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(LiveSpans { next: batch })
            .with_resource(
                Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("opshost");
        Ok(Self {
            provider,
            tracer,
            stopped: AtomicBool::new(false),
        })
    }

    pub(crate) fn flush(&self) {
        if let Err(error) = self.provider.force_flush() {
            tracing::warn!(%error, "cannot send spans");
        }
    }

    pub(crate) fn shutdown(&self, timeout: Duration) {
        self.stopped.store(true, Ordering::SeqCst);
        if let Err(error) = self.provider.shutdown_with_timeout(timeout) {
            tracing::warn!(%error, "spans not sent at shutdown");
        }
    }
}

impl Drop for Exporting {
    /// A pipeline dropped without [`Exporting::shutdown`] (a host that failed to start, an
    /// embedder's) is shut down on a thread of its own: the SDK would otherwise block whatever
    /// thread drops it, a tokio worker maybe, while the last batch is sent.
    fn drop(&mut self) {
        if self.stopped.load(Ordering::SeqCst) {
            return;
        }
        let provider = self.provider.clone();
        let stopping = std::thread::Builder::new()
            .name("opshost-otlp-stop".into())
            .spawn(move || {
                let _ = provider.shutdown_with_timeout(SHUTDOWN_ON_DROP);
            });
        if let Err(error) = stopping {
            tracing::warn!(%error, "cannot stop the span exporter");
        }
    }
}

/// The OTLP/HTTP traces URL of a collector's `endpoint`.
fn traces_url(endpoint: &str) -> Result<String, TelemetryError> {
    let invalid = |reason: &str| TelemetryError::Endpoint {
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|error: http::uri::InvalidUri| invalid(&error.to_string()))?;
    if uri.scheme_str() != Some("http") {
        return Err(invalid(
            "expected an http:// URL (OTLP/HTTP with protobuf; run a collector beside the host for TLS)",
        ));
    }
    if uri.host().is_none() {
        return Err(invalid("the URL names no host"));
    }
    let base = endpoint.trim_end_matches('/');
    Ok(if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    })
}

/// Sends a copy of each live span when it starts, then passes everything on to the batch.
#[derive(Debug)]
struct LiveSpans<P> {
    next: P,
}

impl<P: SpanProcessor> SpanProcessor for LiveSpans<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.next.on_start(span, cx);
        if cx.get::<ExportAtStart>().is_some()
            && let Some(mut open) = span.exported_data()
        {
            open.attributes.push(KeyValue::new(OPEN, true));
            self.next.on_end(open);
        }
    }

    fn on_end(&self, span: SpanData) {
        self.next.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.next.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.next.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.next.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_go_beneath_the_collector_endpoint() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/v1/traces").unwrap(),
            "http://collector:4318/v1/traces"
        );
    }

    #[test]
    fn an_endpoint_that_is_not_http_is_refused_with_its_reason() {
        let error = traces_url("https://collector:4318")
            .unwrap_err()
            .to_string();
        assert!(error.contains("https://collector:4318"), "{error}");
        assert!(error.contains("http://"), "{error}");
        let error = traces_url("not a url").unwrap_err().to_string();
        assert!(error.contains("`not a url`"), "{error}");
    }
}
