//! [`Egress`]: the `wasi:http` hooks of one store, and [`EgressRun`]: what one run sent.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use http::{Method, Request, Response};
use http_body_util::BodyExt;
use opshost_api::{LogLevel, LogStream};
use opshost_runtime::Run;
use opshost_telemetry::{Span, propagation};
use tokio_rustls::rustls::pki_types::ServerName;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use super::EgressPolicy;
use super::allow::{Origin, Scheme};
use super::send::{self, BodyEnd, Bounded, OnEnd, Outgoing, Timeouts};
use crate::capture::Capture;
use crate::limits::{HttpLimits, LimitBreach};

/// Refusals for a limit a run may ignore before it is stopped with `LimitExceeded`.
const TOLERATED_REFUSALS: u32 = 10;

/// What one run (a handler's attempt or a job's) sent: counts against its limits, refusals,
/// and the run's capture, where each request is written as a log line.
pub(crate) struct EgressRun {
    limits: HttpLimits,
    capture: Arc<Capture>,
    /// The run of the operation whose handler sends, if a handler's.
    operation: Option<Arc<Run>>,
    requests: AtomicU64,
    in_flight: AtomicU32,
    waited: Arc<AtomicBool>,
    refusals: AtomicU32,
    breach: Mutex<Option<LimitBreach>>,
}

impl EgressRun {
    /// The outbound accounting of the run `capture` writes for, under `limits`: a handler's
    /// of `operation`, or a job's.
    pub(crate) fn new(
        limits: HttpLimits,
        capture: Arc<Capture>,
        operation: Option<Arc<Run>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            limits,
            capture,
            operation,
            requests: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            waited: Arc::default(),
            refusals: AtomicU32::new(0),
            breach: Mutex::new(None),
        })
    }

    /// The limit the run kept breaking, once it broke it too often.
    pub(crate) fn breach(&self) -> Option<LimitBreach> {
        self.breach
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Counts a refusal for `limit`; past the tolerated number, the run is to be stopped.
    fn refuse(&self, limit: &'static str, detail: &str) {
        let refusals = self.refusals.fetch_add(1, Ordering::SeqCst) + 1;
        if refusals > TOLERATED_REFUSALS {
            self.breach
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_or_insert_with(|| LimitBreach::Http {
                    limit,
                    detail: detail.to_owned(),
                    refusals,
                });
        }
    }

    async fn send(
        self: Arc<Self>,
        policy: Option<Arc<EgressPolicy>>,
        request: Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<(Response<WasiBody>, send::Io), Error> {
        let uri = request.uri().clone();
        let origin = match (uri.scheme_str().and_then(Scheme::parse), uri.host()) {
            (Some(scheme), Some(host)) => Some(Origin::new(scheme, host, uri.port_u16())),
            _ => None,
        };
        let record = Pending::new(
            Arc::clone(&self),
            request.method().as_str(),
            origin.as_ref().map_or_else(
                || uri.authority().map_or("", |a| a.as_str()).to_owned(),
                Origin::to_string,
            ),
            &uri,
        );
        // Every request counts against the run's total, refused or not.
        let limits = self.limits;
        if self.requests.fetch_add(1, Ordering::SeqCst) >= limits.max_requests {
            let detail = format!("the run already sent its {} requests", limits.max_requests);
            self.refuse("http_max_requests", &detail);
            return Err(record.deny(format!("{detail} (limits.http_max_requests)")));
        }
        let Some(policy) = policy else {
            return Err(record.deny("the component has no grants.http".into()));
        };
        let Some(origin) = origin else {
            return Err(record.deny(format!("`{uri}` has no http or https origin")));
        };
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(record.deny("a URL with user information is refused".into()));
        }
        if matches!(*request.method(), Method::TRACE | Method::CONNECT) {
            return Err(record.deny(format!("method {} is refused", request.method())));
        }
        // Nothing leaves the host for an operation whose accept a crash could still lose; the
        // wait holds none of the run's or the host's request slots.
        if let Some(run) = &self.operation
            && let Err(error) = run.accept_durable().await
        {
            return Err(record.deny(format!("the operation was not accepted durably: {error}")));
        }
        let Some(in_flight) = InFlight::enter(&self) else {
            let detail = format!(
                "the run already has {} requests in flight",
                limits.max_in_flight
            );
            self.refuse("http_max_in_flight", &detail);
            record.deny(format!("{detail} (limits.http_max_in_flight)"));
            return Err(Error::ConnectionLimitReached);
        };
        if !policy.allow.admits(&origin) {
            return Err(record.deny(format!("{origin} is not in grants.http.allow")));
        }
        let Ok(host_slot) = Arc::clone(&policy.network.slots).try_acquire_owned() else {
            record.deny(format!(
                "the host already has {} outbound requests in flight ([egress] max_connections)",
                policy.network.max_connections
            ));
            return Err(Error::ConnectionLimitReached);
        };
        let foreign = policy.foreign_secrets(&origin);
        let (mut parts, body) = request.into_parts();
        let query = parts.uri.query().unwrap_or_default().as_bytes();
        if send::carries(query, &foreign)
            || send::carries(parts.uri.path().as_bytes(), &foreign)
            || parts
                .headers
                .values()
                .any(|value| send::carries(value.as_bytes(), &foreign))
        {
            return Err(record.deny(format!(
                "the request carries a secret held for another origin than {origin}"
            )));
        }
        // From here on the guest waits on the network: that time is not its CPU time.
        self.waited.store(true, Ordering::Relaxed);
        let address = match policy
            .network
            .resolver
            .address(&origin, &policy.allow, limits.connect_timeout)
            .await
        {
            Ok(address) => address,
            Err(why) => return Err(record.deny(why)),
        };
        if let Some(own) = policy.headers_of(&origin) {
            for (name, value) in &own.headers {
                parts.headers.insert(name, value.clone());
            }
        }
        // The service called joins the run's trace, as a child of this request's span.
        propagation::inject(record.span.context(), &mut parts.headers);
        let tls = match origin.scheme {
            Scheme::Https => match ServerName::try_from(origin.host.clone()) {
                Ok(name) => Some((policy.network.tls.clone(), name)),
                Err(_) => {
                    let why = format!("`{}` is not a TLS server name", origin.host);
                    return Err(record.deny(why));
                }
            },
            Scheme::Http => None,
        };
        let options = options.unwrap_or_default();
        let clamp = |asked: Option<std::time::Duration>, most| asked.map_or(most, |a| a.min(most));
        let timeouts = Timeouts {
            connect: clamp(options.connect_timeout, limits.connect_timeout),
            first_byte: clamp(options.first_byte_timeout, limits.first_byte_timeout),
            between_bytes: clamp(options.between_bytes_timeout, limits.between_bytes_timeout),
        };
        let max_request = limits.max_request_bytes;
        let body = if foreign.is_empty() {
            Outgoing::new(body, max_request).boxed_unsync()
        } else {
            // Another origin's secret must not leave in the body either: it is read whole and
            // checked before anything is sent.
            let whole = match send::read_whole(body, max_request).await {
                Ok(whole) => whole,
                Err(error) => return Err(record.fail(None, error)),
            };
            if send::carries(&whole, &foreign) {
                return Err(record.deny(format!(
                    "the request body carries a secret held for another origin than {origin}"
                )));
            }
            http_body_util::Full::new(whole)
                .map_err(|never| match never {})
                .boxed_unsync()
        };
        let request = Request::from_parts(parts, body);
        let sent = send::send(request, &origin.host_header(), address, tls, &timeouts).await;
        self.waited.store(true, Ordering::Relaxed);
        let (response, io) = match sent {
            Ok(sent) => sent,
            Err(error) => {
                if let Some(limit) = timeout_limit(&error) {
                    self.refuse(limit, &error.to_string());
                }
                return Err(record.fail(None, error));
            }
        };
        let status = response.status().as_u16();
        let (mut parts, body) = response.into_parts();
        send::strip_secrets(&mut parts.headers, &policy.secrets);
        let max = limits.max_response_bytes;
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if let Some(length) = declared.filter(|length| *length > max) {
            self.refuse(
                "http_max_response_bytes",
                &format!("a response of {length} bytes is over {max}"),
            );
            return Err(record.fail(Some(status), Error::HttpResponseBodySize(Some(max))));
        }
        let run = Arc::clone(&self);
        let on_end: OnEnd = Box::new(move |bytes, end| {
            drop((in_flight, host_slot));
            let failure = match end {
                BodyEnd::Complete => None,
                BodyEnd::Stopped { why, limit } => {
                    if let Some(limit) = limit {
                        run.refuse(limit, &why);
                    }
                    Some(why)
                }
            };
            record.end(Some(status), bytes, failure);
        });
        let body = Bounded::new(
            body,
            max,
            timeouts.between_bytes,
            Arc::clone(&policy.secrets),
            Arc::clone(&self.waited),
            on_end,
        )
        .boxed_unsync();
        Ok((Response::from_parts(parts, body), io))
    }

    /// Whether the guest waited for the network since the last call: that time is not its
    /// CPU time.
    pub(crate) fn take_waited(&self) -> bool {
        self.waited.swap(false, Ordering::Relaxed)
    }
}

/// The limit a failed request ran into, if it was one of the run's timeouts.
fn timeout_limit(error: &Error) -> Option<&'static str> {
    match error {
        Error::ConnectionTimeout => Some("http_connect_timeout_ms"),
        Error::ConnectionReadTimeout => Some("http_first_byte_timeout_ms"),
        _ => None,
    }
}

/// A request counted as in flight until dropped.
struct InFlight(Arc<EgressRun>);

impl InFlight {
    fn enter(run: &Arc<EgressRun>) -> Option<Self> {
        let before = run.in_flight.fetch_add(1, Ordering::SeqCst);
        let entered = Self(Arc::clone(run));
        (before < run.limits.max_in_flight).then_some(entered)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Longest text kept in a record's field.
const FIELD_BYTES: usize = 512;

/// `text`, cut to [`FIELD_BYTES`] at a character boundary.
fn field(text: &str) -> String {
    let mut end = text.len().min(FIELD_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// The record of one request, saved once when it ends, or as abandoned when the guest or the
/// run drops it before.
struct Pending {
    run: Arc<EgressRun>,
    /// The request's client span, under the run's.
    span: Span,
    began: Instant,
    method: String,
    origin: String,
    path: String,
    saved: bool,
}

impl Pending {
    fn new(run: Arc<EgressRun>, method: &str, origin: String, uri: &http::Uri) -> Self {
        let capture = &run.capture;
        let span = capture
            .telemetry()
            .outbound(capture.span().context(), method, uri);
        let path = uri.path();
        Self {
            run,
            span,
            began: Instant::now(),
            method: field(method),
            origin: field(&origin),
            path: field(path),
            saved: false,
        }
    }

    /// Writes the request as a line of the run's logs (stream `http`), and as a line of the
    /// host's own.
    fn write(
        &mut self,
        status: Option<u16>,
        bytes: u64,
        denied: Option<String>,
        error: Option<String>,
    ) {
        self.saved = true;
        let duration_ms = u64::try_from(self.began.elapsed().as_millis()).unwrap_or(u64::MAX);
        let capture = &self.run.capture;
        let _in_run = capture.host_span().enter();
        tracing::info!(
            operation = capture.operation().unwrap_or(""),
            job = capture.job().unwrap_or(""),
            attempt = capture.attempt(),
            method = %self.method,
            origin = %self.origin,
            path = %self.path,
            status,
            duration_ms,
            bytes,
            denied = denied.as_deref().unwrap_or(""),
            error = error.as_deref().unwrap_or(""),
            "outbound request"
        );
        let outcome = match (&denied, &error, status) {
            (Some(why), _, _) => format!("denied: {why}"),
            (None, Some(error), _) => format!("failed after {duration_ms} ms: {error}"),
            (None, None, status) => format!(
                "{} in {duration_ms} ms, {bytes} bytes",
                status.map_or_else(|| "-".to_owned(), |s| s.to_string())
            ),
        };
        match (&denied, &error, status) {
            (Some(why), _, _) => self.span.end_with("denied", Some(why)),
            (None, Some(error), _) => self.span.end_with("failed", Some(error)),
            (None, None, Some(status)) => self.span.end_http(status),
            (None, None, None) => self.span.end(),
        }
        let level = if denied.is_some() || error.is_some() {
            LogLevel::Warn
        } else {
            LogLevel::Info
        };
        let message = format!("{} {}{}  {outcome}", self.method, self.origin, self.path);
        let mut fields = BTreeMap::from([
            ("method".to_owned(), std::mem::take(&mut self.method)),
            ("origin".to_owned(), std::mem::take(&mut self.origin)),
            ("path".to_owned(), std::mem::take(&mut self.path)),
            ("duration_ms".to_owned(), duration_ms.to_string()),
            ("bytes".to_owned(), bytes.to_string()),
        ]);
        let optional = [
            ("status", status.map(|s| s.to_string())),
            ("denied", denied.as_deref().map(field)),
            ("error", error.as_deref().map(field)),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                fields.insert(name.to_owned(), value);
            }
        }
        capture.line(LogStream::Http, level, &message, fields);
    }

    /// Records a refusal; answers the error the guest reads (`HTTP-request-denied`).
    fn deny(mut self, why: String) -> Error {
        self.write(None, 0, Some(why), None);
        Error::HttpRequestDenied
    }

    /// Records a failure after the request was sent; answers `error` for the guest.
    fn fail(mut self, status: Option<u16>, error: Error) -> Error {
        self.write(status, 0, None, Some(error.to_string()));
        error
    }

    fn end(mut self, status: Option<u16>, bytes: u64, failure: Option<String>) {
        self.write(status, bytes, None, failure);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.saved {
            let abandoned = "abandoned before it ended (the guest dropped it, or its run ended)";
            self.write(None, 0, None, Some(abandoned.into()));
        }
    }
}

/// The `wasi:http` hooks of one store: its component's policy and its run's accounting.
pub(crate) struct Egress {
    policy: Option<Arc<EgressPolicy>>,
    run: Arc<EgressRun>,
}

impl Egress {
    pub(crate) fn new(policy: Option<Arc<EgressPolicy>>, run: Arc<EgressRun>) -> Self {
        Self { policy, run }
    }

    /// The limit the run kept breaking, once it broke it too often.
    pub(crate) fn breach(&self) -> Option<LimitBreach> {
        self.run.breach()
    }

    /// Whether the guest waited for the network since the last call.
    pub(crate) fn take_waited(&self) -> bool {
        self.run.take_waited()
    }
}

impl WasiHttpHooks for Egress {
    fn send_request(
        &mut self,
        request: Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_result: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        Response<WasiBody>,
                        Box<dyn Future<Output = Result<(), Error>> + Send>,
                    ),
                    Error,
                >,
            > + Send,
    > {
        let (policy, run) = (self.policy.clone(), Arc::clone(&self.run));
        Box::new(async move {
            let (response, io) = run.send(policy, request, options).await?;
            Ok((
                response,
                Box::new(io) as Box<dyn Future<Output = Result<(), Error>> + Send>,
            ))
        })
    }
}
