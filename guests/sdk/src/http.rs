//! Outbound HTTP from a handler or worker, through `wasi:http`:
//! `ctx.http().post(url).json(&body).send()?`.
//!
//! The host sends each request: only to origins the component's `grants.http` allows, with
//! the `Host` header of the URL, never following redirects, adding the grant's secret headers
//! itself (the guest never sees them), and within the run's timeouts and size limits. A
//! request the host refuses fails with code `HTTP-request-denied`.
//!
//! ```no_run
//! # use opshost_guest::{Context, HandlerError};
//! # use orders_participant::operations::OrdersProcess;
//! # fn charge(ctx: &Context<OrdersProcess>) -> Result<(), HandlerError> {
//! #[derive(serde::Serialize)]
//! struct Charge<'a> { order: &'a str, amount_cents: u64 }
//! #[derive(serde::Deserialize)]
//! struct Receipt { id: String }
//!
//! let response = ctx
//!     .http()
//!     .post("https://payments.example.com/v1/charges")
//!     .json(&Charge { order: "ord_1", amount_cents: 4200 })
//!     .send()?;
//! if !response.is_success() {
//!     return Err(HandlerError::new(format!("payments answered {}", response.status())));
//! }
//! let receipt: Receipt = response.json()?;
//! # let _ = receipt.id;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::time::Duration;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, HeaderError, IncomingBody, Method, OutgoingBody, OutgoingRequest,
    RequestOptions, Scheme,
};
use wasip2::io::streams::StreamError;

/// Bytes written to a request body per call (the most `blocking-write-and-flush` takes).
const WRITE_CHUNK: usize = 4096;

/// Bytes read from a response body per call.
const READ_CHUNK: u64 = 64 * 1024;

/// The outbound HTTP client of a run; get it from `Context::http` or `JobContext::http`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Http;

impl Http {
    /// A `GET` of `url`.
    pub fn get(&self, url: &str) -> RequestBuilder {
        RequestBuilder::new(Method::Get, url)
    }

    /// A `POST` to `url`.
    pub fn post(&self, url: &str) -> RequestBuilder {
        RequestBuilder::new(Method::Post, url)
    }

    /// A `PUT` to `url`.
    pub fn put(&self, url: &str) -> RequestBuilder {
        RequestBuilder::new(Method::Put, url)
    }

    /// A `PATCH` of `url`.
    pub fn patch(&self, url: &str) -> RequestBuilder {
        RequestBuilder::new(Method::Patch, url)
    }

    /// A `DELETE` of `url`.
    pub fn delete(&self, url: &str) -> RequestBuilder {
        RequestBuilder::new(Method::Delete, url)
    }
}

/// A request being built; [`RequestBuilder::send`] sends it.
#[derive(Debug)]
pub struct RequestBuilder {
    method: Method,
    url: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Option<Vec<u8>>,
    timeout: Option<Duration>,
    error: Option<HttpError>,
}

impl RequestBuilder {
    fn new(method: Method, url: &str) -> Self {
        Self {
            method,
            url: url.to_owned(),
            headers: Vec::new(),
            body: None,
            timeout: None,
            error: None,
        }
    }

    /// Adds header `name: value`. `Host` and hop-by-hop headers are the host's to set: such a
    /// request fails with an error naming the header.
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    /// Sends `body` as JSON (`content-type: application/json`).
    pub fn json<T: serde::Serialize>(mut self, body: &T) -> Self {
        match serde_json::to_vec(body) {
            Ok(bytes) => {
                self.body = Some(bytes);
                self.header("content-type", "application/json")
            }
            Err(error) => {
                self.error = Some(HttpError::local(format!(
                    "the body does not encode: {error}"
                )));
                self
            }
        }
    }

    /// Sends `bytes` as the body.
    pub fn body(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.body = Some(bytes.into());
        self
    }

    /// Waits at most `timeout` for the response to start, and as long between two reads of
    /// its body (the host's limits still apply when they are shorter).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sends the request and reads the whole response.
    pub fn send(self) -> Result<Response, HttpError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let (scheme, authority, path) = split_url(&self.url)?;
        let headers = Fields::new();
        for (name, value) in &self.headers {
            headers
                .append(name, value)
                .map_err(|error| HttpError::header(name, &error))?;
        }
        let request = OutgoingRequest::new(headers);
        let unset = |what: &str| HttpError::local(format!("{what} of `{}` is refused", self.url));
        request
            .set_method(&self.method)
            .map_err(|()| unset("the method"))?;
        request
            .set_scheme(Some(&scheme))
            .map_err(|()| unset("the scheme"))?;
        request
            .set_authority(Some(authority))
            .map_err(|()| unset("the authority"))?;
        request
            .set_path_with_query(Some(path))
            .map_err(|()| unset("the path"))?;
        let body = request
            .body()
            .map_err(|()| HttpError::local("the request body is taken".into()))?;
        let options = RequestOptions::new();
        if let Some(timeout) = self.timeout {
            let nanos = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
            let _ = options.set_first_byte_timeout(Some(nanos));
            let _ = options.set_between_bytes_timeout(Some(nanos));
        }
        let pending = outgoing_handler::handle(request, Some(options)).map_err(HttpError::code)?;
        if let Some(bytes) = &self.body {
            let stream = body
                .write()
                .map_err(|()| HttpError::local("the request body is taken".into()))?;
            for chunk in bytes.chunks(WRITE_CHUNK) {
                // A refused request closes its body; its response says why.
                if stream.blocking_write_and_flush(chunk).is_err() {
                    break;
                }
            }
        }
        let _ = OutgoingBody::finish(body, None);
        pending.subscribe().block();
        let response = match pending.get() {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(code))) => return Err(HttpError::code(code)),
            Some(Err(())) | None => {
                return Err(HttpError::local("the response was already taken".into()));
            }
        };
        let status = response.status();
        let headers = response.headers().entries();
        let incoming = response
            .consume()
            .map_err(|()| HttpError::local("the response body is taken".into()))?;
        let stream = incoming
            .stream()
            .map_err(|()| HttpError::local("the response body is taken".into()))?;
        let mut body = Vec::new();
        loop {
            match stream.blocking_read(READ_CHUNK) {
                Ok(chunk) => body.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(error)) => {
                    // The host reports a body's failure with its own error, whose debug text
                    // names the code when `http-error-code` does not.
                    return Err(match wasip2::http::types::http_error_code(&error) {
                        Some(code) => HttpError::code(code),
                        None => HttpError::named(&error.to_debug_string()),
                    });
                }
            }
        }
        drop(stream);
        let _ = IncomingBody::finish(incoming);
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

fn split_url(url: &str) -> Result<(Scheme, &str, &str), HttpError> {
    let bad = || HttpError::local(format!("`{url}` is not an http or https URL"));
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        _ => return Err(bad()),
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    if authority.is_empty() {
        return Err(bad());
    }
    let path = if path.is_empty() { "/" } else { path };
    Ok((scheme, authority, path))
}

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Response {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Response {
    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The first header named `name` (case-insensitive), if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
    }

    /// Every header, in order.
    pub fn headers(&self) -> &[(String, Vec<u8>)] {
        &self.headers
    }

    /// The body.
    pub fn bytes(&self) -> &[u8] {
        &self.body
    }

    /// The body as text.
    pub fn text(&self) -> Result<&str, HttpError> {
        std::str::from_utf8(&self.body)
            .map_err(|e| HttpError::local(format!("the body is not UTF-8: {e}")))
    }

    /// The body decoded from JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, HttpError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| HttpError::local(format!("the body is not the JSON expected: {e}")))
    }
}

/// Why a request failed: a `wasi:http` error code, such as `HTTP-request-denied` when the
/// host refused to send it, or a problem found before it was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    code: String,
    message: String,
}

impl HttpError {
    fn code(code: ErrorCode) -> Self {
        Self::named(&format!("{code:?}"))
    }

    /// An error whose debug text is `debug`: the host's error code when it names one.
    fn named(debug: &str) -> Self {
        let code = wit_name(debug)
            .or_else(|| described(debug))
            .unwrap_or("internal-error");
        Self {
            message: format!("{code}: {debug}"),
            code: code.to_owned(),
        }
    }

    fn header(name: &str, error: &HeaderError) -> Self {
        let why = match error {
            HeaderError::Forbidden => "is set by the host, not the guest",
            HeaderError::InvalidSyntax => "is not a valid header",
            HeaderError::Immutable => "cannot be changed",
        };
        Self {
            code: "header-refused".into(),
            message: format!("header `{name}` {why}"),
        }
    }

    fn local(message: String) -> Self {
        Self {
            code: "request-invalid".into(),
            message,
        }
    }

    /// The `wasi:http` error code (e.g. `HTTP-request-denied`, `connection-timeout`), or
    /// `header-refused` and `request-invalid` for requests that were never sent.
    pub fn error_code(&self) -> &str {
        &self.code
    }

    /// Whether the host refused to send the request (its origin or address is not granted,
    /// or a limit of the run was reached).
    pub fn is_denied(&self) -> bool {
        self.code == "HTTP-request-denied" || self.code == "connection-limit-reached"
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for HttpError {}

/// The `wasi:http` name of each error code, by its variant's name.
const CODE_NAMES: &[(&str, &str)] = &[
    ("DnsTimeout", "DNS-timeout"),
    ("DnsError", "DNS-error"),
    ("DestinationNotFound", "destination-not-found"),
    ("DestinationUnavailable", "destination-unavailable"),
    ("DestinationIpProhibited", "destination-IP-prohibited"),
    ("DestinationIpUnroutable", "destination-IP-unroutable"),
    ("ConnectionRefused", "connection-refused"),
    ("ConnectionTerminated", "connection-terminated"),
    ("ConnectionTimeout", "connection-timeout"),
    ("ConnectionReadTimeout", "connection-read-timeout"),
    ("ConnectionWriteTimeout", "connection-write-timeout"),
    ("ConnectionLimitReached", "connection-limit-reached"),
    ("TlsProtocolError", "TLS-protocol-error"),
    ("TlsCertificateError", "TLS-certificate-error"),
    ("TlsAlertReceived", "TLS-alert-received"),
    ("HttpRequestDenied", "HTTP-request-denied"),
    ("HttpRequestLengthRequired", "HTTP-request-length-required"),
    ("HttpRequestBodySize", "HTTP-request-body-size"),
    ("HttpRequestMethodInvalid", "HTTP-request-method-invalid"),
    ("HttpRequestUriInvalid", "HTTP-request-URI-invalid"),
    ("HttpRequestUriTooLong", "HTTP-request-URI-too-long"),
    (
        "HttpRequestHeaderSectionSize",
        "HTTP-request-header-section-size",
    ),
    ("HttpRequestHeaderSize", "HTTP-request-header-size"),
    (
        "HttpRequestTrailerSectionSize",
        "HTTP-request-trailer-section-size",
    ),
    ("HttpRequestTrailerSize", "HTTP-request-trailer-size"),
    ("HttpResponseIncomplete", "HTTP-response-incomplete"),
    (
        "HttpResponseHeaderSectionSize",
        "HTTP-response-header-section-size",
    ),
    ("HttpResponseHeaderSize", "HTTP-response-header-size"),
    ("HttpResponseBodySize", "HTTP-response-body-size"),
    (
        "HttpResponseTrailerSectionSize",
        "HTTP-response-trailer-section-size",
    ),
    ("HttpResponseTrailerSize", "HTTP-response-trailer-size"),
    (
        "HttpResponseTransferCoding",
        "HTTP-response-transfer-coding",
    ),
    ("HttpResponseContentCoding", "HTTP-response-content-coding"),
    ("HttpResponseTimeout", "HTTP-response-timeout"),
    ("HttpUpgradeFailed", "HTTP-upgrade-failed"),
    ("HttpProtocolError", "HTTP-protocol-error"),
    ("LoopDetected", "loop-detected"),
    ("ConfigurationError", "configuration-error"),
    ("InternalError", "internal-error"),
];

/// The `wasi:http` name of the code whose debug text is `debug` (e.g.
/// `ErrorCode::ConnectionTimeout` or `HttpResponseBodySize(Some(1024))`), if it names one.
fn wit_name(debug: &str) -> Option<&'static str> {
    let path = debug.split(['(', ' ', '{']).next().unwrap_or_default();
    let variant = path.rsplit("::").next().unwrap_or_default();
    CODE_NAMES
        .iter()
        .find(|(name, _)| *name == variant)
        .map(|(_, wit)| *wit)
}

/// The code a host's description of a failed body names (`connection read timeout`, `HTTP
/// response body size exceeds limit: ...`), if it names one.
fn described(text: &str) -> Option<&'static str> {
    let text = text.to_ascii_lowercase();
    if text.starts_with("incomplete http response") {
        return Some("HTTP-response-incomplete");
    }
    if text.starts_with("hyper error") {
        return Some("HTTP-protocol-error");
    }
    CODE_NAMES
        .iter()
        .map(|(_, wit)| *wit)
        .find(|wit| text.starts_with(&wit.to_ascii_lowercase().replace('-', " ")))
}
