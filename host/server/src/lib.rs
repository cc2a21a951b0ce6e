//! The opshost HTTP API: JSON routes under `/v1`, watch as Server-Sent Events,
//! bearer JWT authentication with per-action capability checks, the contract, an OpenAPI 3.1
//! document, health and Prometheus metrics; for operators, the jobs under `/v1/jobs`.
//!
//! Data flows one way: request → [`auth`] (who is calling) → capability and tenant checks →
//! the [`OperationRuntime`] → store and handlers; changes come back through the runtime's
//! watch streams and event feed.
//!
//! ```no_run
//! # async fn serve(runtime: opshost_runtime::OperationRuntime) -> std::io::Result<()> {
//! use opshost_server::{AuthConfig, Authenticator, HttpApi, ServerConfig};
//! let auth = Authenticator::from_config(&AuthConfig {
//!     hs256_secret_env: Some("OPSHOST_JWT_SECRET".into()),
//!     ..AuthConfig::default()
//! })
//! .expect("a key");
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! HttpApi::new(runtime, auth, ServerConfig::default()).serve(listener).await
//! # }
//! ```

mod admin;
pub mod auth;
mod connections;
mod error;
mod http;
mod metrics;
pub mod openapi;
mod sse;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use opshost_jobs::Jobs;
use opshost_runtime::OperationRuntime;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use auth::{AuthConfig, AuthConfigError, AuthError, Authenticator, Principal};
pub use error::ApiError;
pub use metrics::Metrics;

/// HTTP tunables (the `[server]` table of the host config).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on; loopback unless set.
    pub listen: SocketAddr,
    /// Largest request body accepted (413 above it).
    pub max_body_bytes: usize,
    /// Longest `Prefer: wait=N` or `/wait?timeout=N` honoured, in seconds.
    pub max_wait_secs: u64,
    /// Interval of SSE keep-alive comments, in seconds.
    pub keep_alive_secs: u64,
    /// Short requests served at once before answering 503 `Overloaded`.
    pub max_in_flight: usize,
    /// Largest page of a listing.
    pub page_limit: usize,
    /// The capability the operator routes (`/v1/jobs`) require.
    pub admin_capability: String,
    /// Connections open at once; further ones are answered 503 and closed.
    pub max_connections: usize,
    /// Connections open at once from one IP address (set it to `max_connections` behind a
    /// proxy, whose address every connection shares).
    pub max_connections_per_client: usize,
    /// How long a connection may take to send a complete request head, counted from when it
    /// opens or its previous response ends; so also how long an idle keep-alive connection is
    /// kept. A request body must arrive within the same time once its head has. Responses being
    /// written (waits, watches) are not cut by it.
    pub header_timeout_ms: u64,
    /// How long a host that is asked to stop (SIGTERM, SIGINT) lets its running handlers and
    /// job attempts finish before it stops them for the next start or another host to resume.
    pub shutdown_grace_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 1024 * 1024,
            max_wait_secs: 60,
            keep_alive_secs: 15,
            max_in_flight: 1024,
            page_limit: 100,
            admin_capability: "opshost.admin".into(),
            max_connections: 16_384,
            max_connections_per_client: 256,
            header_timeout_ms: 10_000,
            shutdown_grace_ms: 30_000,
        }
    }
}

impl ServerConfig {
    fn max_wait(&self) -> Duration {
        Duration::from_secs(self.max_wait_secs)
    }

    fn keep_alive(&self) -> Duration {
        Duration::from_secs(self.keep_alive_secs.max(1))
    }

    fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms.max(1))
    }

    /// See [`ServerConfig::shutdown_grace_ms`].
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

/// The HTTP API over one runtime (and its jobs, for operators).
pub struct HttpApi {
    runtime: OperationRuntime,
    jobs: Option<Jobs>,
    auth: Authenticator,
    config: ServerConfig,
    draining: CancellationToken,
}

impl HttpApi {
    /// An API serving `runtime`, checking callers with `auth`.
    pub fn new(runtime: OperationRuntime, auth: Authenticator, config: ServerConfig) -> Self {
        Self {
            runtime,
            jobs: None,
            auth,
            config,
            draining: CancellationToken::new(),
        }
    }

    /// The token that puts the API into drain when cancelled: starts are answered 503 with
    /// `Retry-After`, `/healthz` answers 503 so that load balancers look elsewhere, and every
    /// open watch ends (a client resumes it with `Last-Event-ID` on another host). Reads,
    /// waits, cancels and signals are still served.
    pub fn draining(&self) -> CancellationToken {
        self.draining.clone()
    }

    /// Also serves the operator routes over `jobs` (list, get, retry, cancel), to callers
    /// with the `admin_capability`.
    pub fn with_jobs(mut self, jobs: Jobs) -> Self {
        self.jobs = Some(jobs);
        self
    }

    /// The axum router, e.g. to nest in a service's own router. Must be called within a tokio
    /// runtime: it starts the task that feeds the metrics.
    pub fn into_router(self) -> axum::Router {
        self.build().0
    }

    fn build(self) -> (axum::Router, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        metrics.follow(&self.runtime);
        let router = http::router(Arc::new(http::Shared {
            in_flight: tokio::sync::Semaphore::new(self.config.max_in_flight.max(1)),
            runtime: self.runtime,
            jobs: self.jobs,
            auth: self.auth,
            config: self.config,
            metrics: Arc::clone(&metrics),
            frames: Default::default(),
            draining: self.draining,
        }));
        (router, metrics)
    }

    /// Serves on `listener` until the listener fails, under the connection limits of the
    /// config: `max_connections` in all and `max_connections_per_client` from one address,
    /// `header_timeout_ms` for a request head or an idle connection, and dead peers found by
    /// TCP keep-alive.
    pub async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        let config = self.config.clone();
        let (router, metrics) = self.build();
        connections::serve(listener, router, &config, metrics.connections()).await
    }
}
