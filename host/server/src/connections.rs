//! Accepting connections: how many, from whom, and for how long a silent one is kept.
//!
//! The server accepts connections itself rather than through `axum::serve`, so that no client
//! can hold the host:
//! - at most `max_connections` are open (lowered to fit the file-descriptor limit, which is
//!   raised to its hard limit first), and at most `max_connections_per_client` from one IPv4
//!   address or IPv6 /64; a connection beyond either is answered `503` with `Retry-After` and
//!   closed at once, while the open ones carry on;
//! - a connection must send a complete request head within `header_timeout_ms` of opening or
//!   of its previous response ending, so a half-sent request and an idle keep-alive connection
//!   are both closed then. A response being written (a wait, an SSE watch) is not idle: watches
//!   are never cut by this timeout;
//! - with TLS, the handshake must end within the same `header_timeout_ms`;
//! - TCP keep-alive probes and `TCP_USER_TIMEOUT` find peers that vanished without closing, so
//!   an SSE watch whose keep-alive comments go unacknowledged ends instead of waiting forever.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::gauge::Gauge;
use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::config::ServerConfig;
use crate::tls::Certificates;

/// How long the host waits before accepting again when it has no file descriptor left.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What a refused connection is told before it is closed.
static REFUSAL: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let body =
        r#"{"error":{"code":"Overloaded","message":"too many connections; retry after a second"}}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-type: application/json\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
});

/// Connections open now, in all and by client address.
struct Open {
    max: usize,
    max_per_client: usize,
    total: usize,
    by_client: HashMap<IpAddr, usize>,
    gauge: Gauge,
}

/// Who a connection counts against: its IPv4 address, or the /64 of its IPv6 address (one
/// host usually holds a whole /64).
fn client_of(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

/// File descriptors kept free of connections: the store, the compiled-component cache, logs.
const RESERVED_DESCRIPTORS: u64 = 256;

/// `wanted`, lowered to fit the process's file-descriptor limit (raised to its hard limit
/// first), so that the cap is reached before the host runs out of descriptors.
fn fit_descriptors(wanted: usize) -> usize {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!(%error, "cannot read the file-descriptor limit");
            return wanted;
        }
    };
    let room = usize::try_from(limit.saturating_sub(RESERVED_DESCRIPTORS)).unwrap_or(usize::MAX);
    if room < wanted {
        tracing::warn!(
            wanted,
            allowed = room,
            limit,
            "max_connections lowered to fit the file-descriptor limit"
        );
    }
    wanted.min(room).max(1)
}

/// A connection counted in [`Open`] until it is dropped.
struct Admitted {
    open: Arc<Mutex<Open>>,
    client: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = lock(&self.open);
        open.total -= 1;
        open.gauge.dec();
        if let Some(count) = open.by_client.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                open.by_client.remove(&self.client);
            }
        }
    }
}

fn lock(open: &Mutex<Open>) -> MutexGuard<'_, Open> {
    open.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counts `client`'s new connection, unless a cap is reached.
fn admit(open: &Arc<Mutex<Open>>, client: IpAddr) -> Option<Admitted> {
    let mut guard = lock(open);
    let from_client = guard.by_client.get(&client).copied().unwrap_or(0);
    if guard.total >= guard.max || from_client >= guard.max_per_client {
        return None;
    }
    guard.total += 1;
    guard.gauge.inc();
    *guard.by_client.entry(client).or_default() += 1;
    Some(Admitted {
        open: Arc::clone(open),
        client,
    })
}

/// Serves `router` on `listener` under the limits of `config` until `closing` is cancelled:
/// then accepts nothing more, lets each connection finish the answer it is writing, closes
/// idle ones, and returns once all are closed. `gauge` follows the number of open
/// connections.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    config: &ServerConfig,
    gauge: Gauge,
    closing: CancellationToken,
    certificates: Certificates,
) -> std::io::Result<()> {
    let open = Arc::new(Mutex::new(Open {
        max: fit_descriptors(config.max_connections.max(1)),
        max_per_client: config.max_connections_per_client.max(1),
        total: 0,
        by_client: HashMap::new(),
        gauge,
    }));
    let header_timeout = config.header_timeout();
    let dead_peer = Duration::from_secs(config.keep_alive_secs.max(1) * 2);
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = closing.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) if is_connection_error(&error) => continue,
            Err(error) => {
                // Out of file descriptors, or the like: give open connections time to close.
                tracing::warn!(%error, "cannot accept a connection");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let tls = certificates.current();
        let Some(admitted) = admit(&open, client_of(peer.ip())) else {
            tracing::debug!(%peer, "connection refused: too many open");
            if tls.is_some() {
                // A TLS client cannot read a plain answer: it is closed.
                drop(stream);
            } else {
                refuse(stream);
            }
            continue;
        };
        tune(&stream, dead_peer);
        let service = TowerToHyperService::new(router.clone());
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(header_timeout);
        let Some(acceptor) = &tls else {
            let served = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                let _admitted = admitted;
                if let Err(error) = served.await {
                    tracing::debug!(%peer, %error, "connection ended");
                }
            });
            continue;
        };
        let (acceptor, watcher) = (acceptor.clone(), graceful.watcher());
        tokio::spawn(async move {
            let _admitted = admitted;
            let stream = match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let connection = http.serve_connection(TokioIo::new(stream), service);
            if let Err(error) = watcher.watch(connection).await {
                tracing::debug!(%peer, %error, "connection ended");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Answers 503 and closes. A fresh socket's send buffer is empty, so the answer is written at
/// once; the request bytes already sent are read away briefly before the close, so that the
/// client gets the answer rather than a reset.
fn refuse(stream: TcpStream) {
    let _ = stream.try_write(&REFUSAL);
    tokio::spawn(async move {
        let mut stream = stream;
        let _ = stream.shutdown().await;
        let mut sink = [0u8; 4096];
        let drain = async {
            while let Ok(read) = stream.read(&mut sink).await {
                if read == 0 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(REFUSAL_DRAIN, drain).await;
    });
}

/// How long a refused connection is read from before it is closed.
const REFUSAL_DRAIN: Duration = Duration::from_millis(200);

/// No Nagle delay (responses are small and latency-bound), and dead peers found within about
/// `dead_peer`: keep-alive probes on an idle connection, and a cap on how long written data may
/// go unacknowledged.
fn tune(stream: &TcpStream, dead_peer: Duration) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
    let socket = SockRef::from(stream);
    let probes = TcpKeepalive::new()
        .with_time(dead_peer)
        .with_interval(dead_peer / 4)
        .with_retries(3);
    if let Err(error) = socket.set_tcp_keepalive(&probes) {
        tracing::debug!(%error, "cannot set TCP keep-alive");
    }
    #[cfg(target_os = "linux")]
    if let Err(error) = socket.set_tcp_user_timeout(Some(dead_peer)) {
        tracing::debug!(%error, "cannot set TCP_USER_TIMEOUT");
    }
}

/// Errors of one connection being accepted, not of the listener.
fn is_connection_error(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}
