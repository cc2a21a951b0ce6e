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
mod config;
mod connections;
mod console;
mod cors;
pub mod deployments;
mod error;
mod feed;
mod http;
mod logs;
mod metrics;
pub mod openapi;
mod router;
mod sse;
mod state;
pub mod tls;
mod watch_token;

use std::sync::Arc;

use opshost_jobs::Jobs;
use opshost_runtime::OperationRuntime;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use auth::{AuthConfig, AuthConfigError, AuthError, Authenticator, Principal};
pub use config::{ServerConfig, ServerConfigError};
pub use console::console_size;
pub use deployments::{DeployError, Deployments};
pub use error::ApiError;
pub use metrics::Metrics;

/// The HTTP API over one runtime (and its jobs, for operators).
pub struct HttpApi {
    runtime: OperationRuntime,
    jobs: Option<Jobs>,
    deployments: Option<Arc<dyn Deployments>>,
    auth: Authenticator,
    config: ServerConfig,
    draining: CancellationToken,
    closing: CancellationToken,
    in_flight: Arc<tokio::sync::Semaphore>,
    certificates: tls::Certificates,
}

impl HttpApi {
    /// An API serving `runtime`, checking callers with `auth`.
    pub fn new(runtime: OperationRuntime, auth: Authenticator, config: ServerConfig) -> Self {
        Self {
            runtime,
            jobs: None,
            deployments: None,
            auth,
            in_flight: Arc::new(tokio::sync::Semaphore::new(config.max_in_flight.max(1))),
            config,
            draining: CancellationToken::new(),
            closing: CancellationToken::new(),
            certificates: tls::Certificates::default(),
        }
    }

    /// The token that puts the API into drain when cancelled: starts are answered 503 with
    /// `Retry-After`, `/healthz` answers 503 so that load balancers look elsewhere, and every
    /// open watch ends (a client resumes it with `Last-Event-ID` on another host). Reads,
    /// waits, cancels and signals are still served.
    pub fn draining(&self) -> CancellationToken {
        self.draining.clone()
    }

    /// The token that closes the server when cancelled: [`HttpApi::serve`] accepts no more
    /// connections, open waits answer with the operation as it stands, each connection
    /// finishes the answer it is writing and is closed, and `serve` returns once all are.
    pub fn closing(&self) -> CancellationToken {
        self.closing.clone()
    }

    /// The certificate it serves (with `[server] tls_cert`), to reload without a restart.
    pub fn certificates(&self) -> tls::Certificates {
        self.certificates.clone()
    }

    /// Also serves the operator routes over `jobs` (list, get, retry, cancel), to callers
    /// with the `admin_capability`.
    pub fn with_jobs(mut self, jobs: Jobs) -> Self {
        self.jobs = Some(jobs);
        self
    }

    /// Also serves the deployment routes over `deployments` (list, deploy, roll back), to
    /// callers with the `admin_capability`.
    pub fn with_deployments(mut self, deployments: Arc<dyn Deployments>) -> Self {
        self.deployments = Some(deployments);
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
        let router = router::router(Arc::new(state::Shared {
            in_flight: self.in_flight,
            runtime: self.runtime,
            jobs: self.jobs,
            deployments: self.deployments,
            auth: self.auth,
            config: self.config,
            metrics: Arc::clone(&metrics),
            frames: Default::default(),
            change_frames: Default::default(),
            draining: self.draining,
            closing: self.closing.clone(),
        }));
        (router, metrics)
    }

    /// Serves on `listener` until [`HttpApi::closing`] is cancelled (then closes gracefully)
    /// or the listener fails, under the connection limits of the config: `max_connections` in
    /// all and `max_connections_per_client` from one address, `header_timeout_ms` for a
    /// request head or an idle connection, and dead peers found by TCP keep-alive.
    pub async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        let config = self.config.clone();
        let closing = self.closing.clone();
        let refused = |error| std::io::Error::new(std::io::ErrorKind::InvalidInput, error);
        config.check().map_err(refused)?;
        let certificates = self.certificates.clone();
        certificates.set(tls::acceptor(&config).map_err(refused)?);
        let (router, metrics) = self.build();
        connections::serve(
            listener,
            router,
            &config,
            metrics.connections(),
            closing,
            certificates,
        )
        .await
    }
}
