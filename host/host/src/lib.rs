//! An opshost host put together from its config file, as `opshost serve` runs it, or as a
//! service embeds it.
//!
//! [`Host::open`] chooses the store (in memory, the SQLite file of `[store] data_dir`, or the
//! PostgreSQL database of `[store] url`), loads the deployment into a [`WasmHost`], resumes what
//! a previous run left unfinished, and starts the background work: taking over the operations
//! of dead hosts on a shared store, and purging what retention let go. [`Host::serve`] serves
//! the HTTP API until a stop is asked for, then drains the host gracefully.
//!
//! ```no_run
//! # async fn run() -> Result<(), opshost_host::HostError> {
//! use opshost_host::{Host, HostConfig, StoreChoice};
//! let config = HostConfig::from_path("contracts/orders.deploy.toml".as_ref())?;
//! let host = Host::open(config, StoreChoice::FromConfig).await?;
//! let listener = host.bind().await?;
//! let stopped = host.serve(listener, async { tokio::signal::ctrl_c().await.ok(); }).await?;
//! println!("{} runs left for recovery", stopped.drained.stopped);
//! # Ok(()) }
//! ```

mod config;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use opshost_api::DeployTarget;
use opshost_runtime::ServerError;
use opshost_sandbox::{SandboxError, WasmHost};
use opshost_server::tls::Certificates;
use opshost_server::{
    AuthConfigError, Authenticator, DeployError, Deployments, HttpApi, ServerConfig,
    ServerConfigError,
};
use opshost_store_postgres::PostgresStore;
use opshost_store_sqlite::SqliteStore;
use opshost_telemetry::Telemetry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use config::{ConfigError, HostConfig, StoreConfig, TelemetryTable};

/// Where a host keeps its operations and jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreChoice {
    /// As `[store]` says: PostgreSQL when it names a `url`, else the SQLite file in
    /// `data_dir`.
    FromConfig,
    /// In memory: nothing survives the process.
    Memory,
}

/// Why a host could not be opened or served.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The config file is refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `[auth]` names no usable key.
    #[error(transparent)]
    Auth(#[from] AuthConfigError),
    /// `[server]` cannot be served with (a CORS origin, the TLS certificate or key).
    #[error(transparent)]
    Server(#[from] ServerConfigError),
    /// The SQLite store cannot be opened.
    #[error(transparent)]
    Sqlite(#[from] opshost_store_sqlite::OpenError),
    /// The PostgreSQL store cannot be reached or set up.
    #[error(transparent)]
    Postgres(#[from] opshost_store_postgres::OpenError),
    /// The deployment cannot be loaded.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// What a previous run left could not be resumed, or the store could not be released.
    #[error("{what}: {source}")]
    Runtime {
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        source: ServerError,
    },
    /// The listen address cannot be bound.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// `[telemetry]` cannot be set up.
    #[error(transparent)]
    Telemetry(#[from] opshost_telemetry::TelemetryError),
    /// The HTTP server stopped on its own.
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// How long a stopping host waits for answers still being written.
const ANSWER_PATIENCE: Duration = Duration::from_secs(2);

/// A host, open and resumed: see the crate docs.
pub struct Host {
    wasm: WasmHost,
    /// The config file, read again on a reload.
    source: Option<PathBuf>,
    auth: Authenticator,
    server: ServerConfig,
    telemetry: Telemetry,
    background: Vec<JoinHandle<()>>,
}

impl Host {
    /// Opens the stores `choice` names, loads the deployment, resumes what a previous run left
    /// unfinished and starts the background work. Must run inside a tokio runtime.
    pub async fn open(mut config: HostConfig, choice: StoreChoice) -> Result<Self, HostError> {
        let auth = Authenticator::from_config(&config.auth)?;
        config.server.check()?;
        let lease = Duration::from_millis(config.store.host_lease_ms.max(100));
        let telemetry = match config.telemetry.config() {
            Some(telemetry) => Telemetry::otlp(&telemetry)?,
            None => Telemetry::off(),
        };
        let wasm = match (choice, &config.store.url) {
            (StoreChoice::Memory, _) => WasmHost::builder(&config.deployment)
                .telemetry(telemetry.clone())
                .build()?,
            (StoreChoice::FromConfig, Some(url)) => {
                let store = Arc::new(PostgresStore::connect_with_lease(url, lease).await?);
                WasmHost::builder(&config.deployment)
                    .stores(store)
                    .telemetry(telemetry.clone())
                    .build()?
            }
            (StoreChoice::FromConfig, None) => {
                let store = Arc::new(SqliteStore::open(&config.store.data_dir)?);
                let engine = &mut config.deployment.engine;
                if engine.cache_dir.is_none() {
                    engine.cache_dir = Some(config.store.data_dir.join("compiled"));
                }
                WasmHost::builder(&config.deployment)
                    .stores(store)
                    .telemetry(telemetry.clone())
                    .build()?
            }
        };
        wasm.recover().await.map_err(|source| HostError::Runtime {
            what: "cannot recover the operations of the previous run",
            source,
        })?;
        let mut background = vec![purge(&wasm, &config.store)];
        // On a shared store, what dead hosts left is taken over while this host runs.
        background.extend(wasm.take_over_orphans(lease / 2));
        // On a shared store, versions deployed through other hosts are served here too.
        background.extend(wasm.follow_deployments(FOLLOW_DEPLOYMENTS));
        Ok(Self {
            wasm,
            source: config.source,
            auth,
            server: config.server,
            telemetry,
            background,
        })
    }

    /// The wasm host: its runtime and jobs.
    pub fn wasm(&self) -> &WasmHost {
        &self.wasm
    }

    /// Whether it serves HTTPS (`[server] tls_cert` and `tls_key`).
    pub fn serves_tls(&self) -> bool {
        self.server.serves_tls()
    }

    /// A listener on `[server] listen`.
    pub async fn bind(&self) -> Result<TcpListener, HostError> {
        let address = self.server.listen;
        TcpListener::bind(address)
            .await
            .map_err(|source| HostError::Listen { address, source })
    }

    /// Serves the HTTP API on `listener` until `stop` resolves, then drains: new starts are
    /// refused and watches end, running work gets `[server] shutdown_grace_ms`, what is left
    /// is stopped for the next start or another host to resume, and the store is released.
    pub async fn serve(
        self,
        listener: TcpListener,
        stop: impl Future<Output = ()>,
    ) -> Result<Stopped, HostError> {
        let grace = self.server.shutdown_grace();
        let api = HttpApi::new(self.wasm.runtime().clone(), self.auth, self.server)
            .with_jobs(self.wasm.jobs().clone());
        let reload = self.source.clone().map(|source| Reload {
            wasm: self.wasm.clone(),
            source,
            certificates: api.certificates(),
        });
        let api = api.with_deployments(Arc::new(Versions {
            wasm: self.wasm.clone(),
            reload: reload.clone(),
        }));
        let reloads = reload.map(reload_on_hangup);
        let draining = api.draining();
        let closing = api.closing();
        let mut served = tokio::spawn(api.serve(listener));
        tokio::select! {
            served = &mut served => {
                return Err(HostError::Serve(match served {
                    Ok(Ok(())) => std::io::Error::other("the server ended"),
                    Ok(Err(error)) => error,
                    Err(error) => std::io::Error::other(error),
                }));
            }
            () = stop => {}
        }
        let began = Instant::now();
        tracing::info!(grace_ms = grace.as_millis(), "draining");
        draining.cancel();
        self.background
            .iter()
            .chain(&reloads)
            .for_each(JoinHandle::abort);
        let shutdown = self
            .wasm
            .shutdown(grace)
            .await
            .map_err(|source| HostError::Runtime {
                what: "cannot release the store",
                source,
            })?;
        // The server closes: waits answer with the operation as it stands, and answers still
        // being written get a moment to finish before their connections close.
        closing.cancel();
        if tokio::time::timeout(ANSWER_PATIENCE, served).await.is_err() {
            tracing::warn!("connections still open when the host stopped");
        }
        // The spans of the drained runs leave before the host does.
        let telemetry = self.telemetry;
        let flushed = tokio::task::spawn_blocking(move || telemetry.shutdown(ANSWER_PATIENCE));
        if flushed.await.is_err() {
            tracing::warn!("spans not sent at shutdown");
        }
        Ok(Stopped {
            drained: shutdown.drained,
            handed_back: shutdown.handed_back,
            took: began.elapsed(),
        })
    }
}

/// What [`Host::serve`] did once asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Runs running when the drain began, and how many were stopped at its end.
    pub drained: opshost_runtime::Drained,
    /// Job leases handed back.
    pub handed_back: usize,
    /// How long the drain took.
    pub took: Duration,
}

/// Purges terminal operations and final jobs past `[store] retention_days`, every
/// `purge_interval_secs`.
fn purge(wasm: &WasmHost, store: &StoreConfig) -> JoinHandle<()> {
    let (runtime, jobs) = (wasm.runtime().clone(), wasm.jobs().clone());
    let (retention, interval) = (store.retention(), store.purge_interval());
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        loop {
            ticks.tick().await;
            match runtime.purge_expired(retention).await {
                Ok(0) => {}
                Ok(purged) => tracing::info!(purged, "purged expired operations"),
                Err(error) => tracing::warn!(%error, "retention purge failed"),
            }
            match jobs.purge_expired(retention).await {
                Ok(0) => {}
                Ok(purged) => tracing::info!(purged, "purged expired jobs"),
                Err(error) => tracing::warn!(%error, "job retention purge failed"),
            }
        }
    })
}

/// `wasm`'s handler and worker versions, for the admin routes
/// ([`HttpApi::with_deployments`]); with no config file to reload.
pub fn deployments(wasm: &WasmHost) -> Arc<dyn Deployments> {
    Arc::new(Versions {
        wasm: wasm.clone(),
        reload: None,
    })
}

/// What a reload reads again, and what it changes: the config file's `[limits]` and grants,
/// applied to new runs, and its TLS certificate, served to new connections.
#[derive(Clone)]
struct Reload {
    wasm: WasmHost,
    source: PathBuf,
    certificates: Certificates,
}

impl Reload {
    /// Reads the config file again and applies it; answers what changed.
    fn run(&self) -> Result<Vec<String>, DeployError> {
        let config = HostConfig::from_path(&self.source).map_err(DeployError::refused)?;
        // The certificate is read first and served last, and the limits and grants are
        // applied whole or not at all: a refused reload changes nothing.
        let renewed = self
            .certificates
            .prepare(&config.server)
            .map_err(DeployError::refused)?;
        let mut changes = self.wasm.reload(&config.deployment).map_err(deploy_error)?;
        if let Some(renewed) = renewed {
            self.certificates.apply(renewed);
            changes.push("server.tls_cert: read again; new connections get it".to_owned());
        }
        Ok(changes)
    }
}

/// On SIGHUP, runs `reload` and logs what changed or why nothing did.
fn reload_on_hangup(reload: Reload) -> JoinHandle<()> {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut hangups = match signal(SignalKind::hangup()) {
                Ok(hangups) => hangups,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGHUP; reload through the API");
                    return;
                }
            };
            let config = reload.source.display().to_string();
            while hangups.recv().await.is_some() {
                let running = reload.clone();
                let reloaded = tokio::task::spawn_blocking(move || running.run())
                    .await
                    .unwrap_or_else(|error| Err(DeployError::Internal(error.to_string())));
                match reloaded {
                    Ok(changes) if changes.is_empty() => {
                        tracing::info!(%config, "config reloaded: nothing changed");
                    }
                    Ok(changes) => {
                        tracing::info!(%config, changes = %changes.join("; "), "config reloaded");
                    }
                    Err(error) => {
                        tracing::warn!(%config, %error, "config reload refused; nothing changed");
                    }
                }
            }
        }
        #[cfg(not(unix))]
        let _ = reload;
    })
}

/// How often a host on a shared store reads the deployment log.
const FOLLOW_DEPLOYMENTS: Duration = Duration::from_millis(250);

/// Changes of the deployment log `GET /v1/deployments` shows.
const HISTORY_SHOWN: usize = 50;

/// The wasm host's versions, as the admin routes see them.
struct Versions {
    wasm: WasmHost,
    /// What a reload reads again, if the host was started from a config file.
    reload: Option<Reload>,
}

impl Deployments for Versions {
    fn list(&self) -> BoxFuture<'_, Result<serde_json::Value, DeployError>> {
        Box::pin(async move {
            let mut listed = serde_json::json!({ "operations": {}, "queues": {} });
            for (target, versions) in self.wasm.deployments() {
                listed[target.collection()][target.name()] = serde_json::json!(versions);
            }
            let history = self
                .wasm
                .deployment_history(HISTORY_SHOWN)
                .await
                .map_err(deploy_error)?;
            listed["history"] = serde_json::json!(history);
            Ok(listed)
        })
    }

    fn deploy(
        &self,
        target: DeployTarget,
        component: bytes::Bytes,
        percent: u8,
        by: String,
    ) -> BoxFuture<'_, Result<String, DeployError>> {
        Box::pin(async move {
            self.wasm
                .deploy(&target, component.into(), percent, &by)
                .await
                .map_err(deploy_error)
        })
    }

    fn check(
        &self,
        target: DeployTarget,
        component: bytes::Bytes,
    ) -> BoxFuture<'_, Result<serde_json::Value, DeployError>> {
        Box::pin(async move {
            let report = self
                .wasm
                .check_deploy(&target, component.into())
                .await
                .map_err(deploy_error)?;
            Ok(serde_json::json!(report))
        })
    }

    fn reload(&self) -> BoxFuture<'_, Result<Vec<String>, DeployError>> {
        Box::pin(async move {
            let reload = self.reload.clone().ok_or_else(|| {
                DeployError::refused("this host was not started from a config file")
            })?;
            tokio::task::spawn_blocking(move || reload.run())
                .await
                .map_err(|error| DeployError::Internal(error.to_string()))?
        })
    }

    fn rollback(
        &self,
        target: DeployTarget,
        by: String,
    ) -> BoxFuture<'_, Result<String, DeployError>> {
        Box::pin(async move { self.wasm.rollback(&target, &by).await.map_err(deploy_error) })
    }
}

fn deploy_error(error: SandboxError) -> DeployError {
    match error {
        SandboxError::UnknownOperation { operation } => {
            DeployError::UnknownTarget(DeployTarget::Operation(operation))
        }
        SandboxError::UnknownQueue { queue } => {
            DeployError::UnknownTarget(DeployTarget::Queue(queue))
        }
        SandboxError::NoEarlierVersion { target } => DeployError::NoEarlierVersion(target),
        SandboxError::Store(error) => DeployError::Store(error),
        SandboxError::Internal(message) => DeployError::Internal(message),
        SandboxError::Refused { ref problems, .. }
        | SandboxError::ReloadRefused { ref problems } => DeployError::Refused {
            problems: problems.clone(),
            message: error.to_string(),
        },
        other => DeployError::refused(other),
    }
}
