//! Sending one checked request: a connection to the address that was checked, TLS for
//! `https`, HTTP/1.1, the run's timeouts, and a response body bounded in size and in the time
//! between two reads.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep, timeout};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use wasmtime_wasi_http::{Error, WasiBody};

/// How long each step of a request may take.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub(crate) connect: Duration,
    pub(crate) first_byte: Duration,
    pub(crate) between_bytes: Duration,
}

/// The connection's I/O, driven for as long as the response body is read.
pub(crate) type Io = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

/// Sends `request` to `address` (over TLS, checking the certificate against `tls`'s name,
/// when given), with `Host: host` whatever the guest set; the URL is sent in origin form.
pub(crate) async fn send(
    mut request: Request<WasiBody>,
    host: &str,
    address: SocketAddr,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    timeouts: &Timeouts,
) -> Result<(Response<Incoming>, Io), Error> {
    let host = HeaderValue::from_str(host).map_err(|_| Error::HttpRequestUriInvalid)?;
    request.headers_mut().remove(http::header::HOST);
    request.headers_mut().insert(http::header::HOST, host);
    let path: Uri = request
        .uri()
        .path_and_query()
        .map_or("/", |path| path.as_str())
        .parse()
        .map_err(|_| Error::HttpRequestUriInvalid)?;
    *request.uri_mut() = path;

    let tcp = timeout(timeouts.connect, TcpStream::connect(address))
        .await
        .map_err(|_| Error::ConnectionTimeout)?
        .map_err(Error::Connect)?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, io) = match tls {
        Some((connector, name)) => {
            let stream = timeout(timeouts.connect, connector.connect(name, tcp))
                .await
                .map_err(|_| Error::ConnectionTimeout)?
                .map_err(Error::Tls)?;
            handshake(stream, timeouts.connect).await?
        }
        None => handshake(tcp, timeouts.connect).await?,
    };
    let mut io = Some(io);
    let response = {
        let send = sender.send_request(request);
        let io_ref = io.as_mut().expect("set above");
        tokio::select! {
            response = timeout(timeouts.first_byte, send) => response
                .map_err(|_| Error::ConnectionReadTimeout)?
                .map_err(Error::Hyper)?,
            ended = io_ref => {
                ended?;
                return Err(Error::HttpResponseIncomplete);
            }
        }
    };
    Ok((response, io.expect("set above")))
}

async fn handshake<S>(
    stream: S,
    limit: Duration,
) -> Result<(hyper::client::conn::http1::SendRequest<WasiBody>, Io), Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = timeout(
        limit,
        hyper::client::conn::http1::Builder::new()
            .max_buf_size(64 << 10)
            .handshake(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)?
    .map_err(Error::Hyper)?;
    let io: Io = Box::pin(async move { connection.await.map_err(Error::Hyper) });
    Ok((sender, io))
}

/// How a response body ended.
pub(crate) enum BodyEnd {
    /// Its last byte was read.
    Complete,
    /// It stopped early: why, and the run's limit it went past, if that was the reason.
    Stopped {
        why: String,
        limit: Option<&'static str>,
    },
}

/// Told once how a response body ended, with the bytes it gave.
pub(crate) type OnEnd = Box<dyn FnOnce(u64, BodyEnd) + Send>;

/// Whether `haystack` holds one of `secrets`.
pub(crate) fn carries(haystack: &[u8], secrets: &[Arc<str>]) -> bool {
    secrets.iter().any(|secret| {
        let secret = secret.as_bytes();
        !secret.is_empty()
            && haystack
                .windows(secret.len())
                .any(|window| window == secret)
    })
}

/// A response body that fails once it passes `max` bytes or waits longer than `gap` for the
/// next bytes (counted from the guest's first read), drops trailers that carry a secret, and
/// reports how it ended once (at its end, its failure, or its drop). Each wait for the network
/// is flagged in `waited`, so that it is not counted as the guest's CPU time.
pub(crate) struct Bounded {
    inner: Incoming,
    read: u64,
    max: u64,
    gap: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    secrets: Arc<[Arc<str>]>,
    waited: Arc<AtomicBool>,
    on_end: Option<OnEnd>,
    failed: bool,
}

impl Bounded {
    pub(crate) fn new(
        inner: Incoming,
        max: u64,
        gap: Duration,
        secrets: Arc<[Arc<str>]>,
        waited: Arc<AtomicBool>,
        on_end: OnEnd,
    ) -> Self {
        Self {
            inner,
            read: 0,
            max,
            gap,
            timer: None,
            secrets,
            waited,
            on_end: Some(on_end),
            failed: false,
        }
    }

    fn end(&mut self, end: BodyEnd) {
        if let Some(on_end) = self.on_end.take() {
            on_end(self.read, end);
        }
    }

    fn fail(
        &mut self,
        error: Error,
        why: String,
        limit: Option<&'static str>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.failed = true;
        self.end(BodyEnd::Stopped { why, limit });
        Poll::Ready(Some(Err(error)))
    }
}

impl Body for Bounded {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        let gap = this.gap;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(mut frame))) => {
                if let Some(trailers) = frame.trailers_mut() {
                    strip_secrets(trailers, &this.secrets);
                }
                if let Some(data) = frame.data_ref() {
                    this.read += data.len() as u64;
                    if this.read > this.max {
                        let max = this.max;
                        return this.fail(
                            Error::HttpResponseBodySize(Some(max)),
                            format!(
                                "response body over {max} bytes (limits.http_max_response_bytes)"
                            ),
                            Some("http_max_response_bytes"),
                        );
                    }
                }
                match &mut this.timer {
                    Some(timer) => timer.as_mut().reset(Instant::now() + gap),
                    None => this.timer = Some(Box::pin(tokio::time::sleep(gap))),
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                let why = format!("response body failed: {error}");
                this.fail(Error::Hyper(error), why, None)
            }
            Poll::Ready(None) => {
                this.end(BodyEnd::Complete);
                Poll::Ready(None)
            }
            Poll::Pending => {
                this.waited.store(true, Ordering::Relaxed);
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(gap)));
                if timer.as_mut().poll(cx).is_ready() {
                    return this.fail(
                        Error::ConnectionReadTimeout,
                        format!(
                            "no response bytes for {} ms (limits.http_between_bytes_timeout_ms)",
                            gap.as_millis()
                        ),
                        Some("http_between_bytes_timeout_ms"),
                    );
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Bounded {
    fn drop(&mut self) {
        if self.on_end.is_some() {
            let end = if self.inner.is_end_stream() {
                BodyEnd::Complete
            } else {
                BodyEnd::Stopped {
                    why: "the guest dropped the response before its end".to_owned(),
                    limit: None,
                }
            };
            self.end(end);
        }
    }
}

/// Removes every header whose value carries one of `secrets`.
pub(crate) fn strip_secrets(headers: &mut http::HeaderMap, secrets: &[Arc<str>]) {
    if secrets.is_empty() {
        return;
    }
    let carrying: Vec<http::HeaderName> = headers
        .iter()
        .filter(|(_, value)| carries(value.as_bytes(), secrets))
        .map(|(name, _)| name.clone())
        .collect();
    for name in carrying {
        headers.remove(&name);
    }
}

/// A request body bounded to `max` bytes.
pub(crate) struct Outgoing {
    inner: WasiBody,
    sent: u64,
    max: u64,
}

impl Outgoing {
    pub(crate) fn new(inner: WasiBody, max: u64) -> Self {
        Self {
            inner,
            sent: 0,
            max,
        }
    }
}

impl Body for Outgoing {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.sent += data.len() as u64;
            if this.sent > this.max {
                return Poll::Ready(Some(Err(Error::HttpRequestBodySize(Some(this.max)))));
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Reads the whole of `body`, refusing more than `max` bytes.
pub(crate) async fn read_whole(mut body: WasiBody, max: u64) -> Result<Bytes, Error> {
    use http_body_util::BodyExt;
    let mut whole = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if whole.len() as u64 + data.len() as u64 > max {
                return Err(Error::HttpRequestBodySize(Some(max)));
            }
            whole.extend_from_slice(&data);
        }
    }
    Ok(whole.freeze())
}

/// The TLS client of every `https` request: the Mozilla roots plus the deployment's own.
pub(crate) fn tls_connector(extra_roots: &[u8]) -> Result<TlsConnector, String> {
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if !extra_roots.is_empty() {
        for cert in pem_certificates(extra_roots)? {
            roots
                .add(cert)
                .map_err(|e| format!("egress.ca_file: a certificate is not usable: {e}"))?;
        }
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

fn pem_certificates(
    pem: &[u8],
) -> Result<Vec<tokio_rustls::rustls::pki_types::CertificateDer<'static>>, String> {
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("egress.ca_file: not PEM certificates: {e}"))
}
