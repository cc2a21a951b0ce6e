//! `opshost serve`: the host config's stores, wasm host and HTTP API put together, run until
//! SIGTERM or SIGINT, then drained gracefully.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use opshost_sandbox::WasmHost;
use opshost_server::{Authenticator, HttpApi};
use opshost_store_postgres::PostgresStore;
use opshost_store_sqlite::SqliteStore;

use crate::config::HostConfig;
use crate::exit;

/// Serves the deployment of the host config at `path`; see the module docs.
pub(crate) async fn serve(
    path: &std::path::Path,
    listen: Option<std::net::SocketAddr>,
    data_dir: Option<PathBuf>,
    store: Option<String>,
    memory: bool,
) -> Result<u8> {
    let mut config = HostConfig::from_path(path)?;
    if let Some(listen) = listen {
        config.server.listen = listen;
    }
    if let Some(data_dir) = data_dir {
        config.store.data_dir = data_dir;
    }
    if store.is_some() {
        config.store.url = store;
    }
    let auth = Authenticator::from_config(&config.auth)?;
    let host = if memory {
        WasmHost::from_config(&config.deployment)?
    } else if let Some(url) = &config.store.url {
        let lease = Duration::from_millis(config.store.host_lease_ms.max(100));
        let store = Arc::new(PostgresStore::connect_with_lease(url, lease).await?);
        WasmHost::builder(&config.deployment)
            .stores(store)
            .build()?
    } else {
        let store = Arc::new(SqliteStore::open(&config.store.data_dir)?);
        let engine = &mut config.deployment.engine;
        if engine.cache_dir.is_none() {
            engine.cache_dir = Some(config.store.data_dir.join("compiled"));
        }
        WasmHost::builder(&config.deployment)
            .stores(store)
            .build()?
    };
    host.recover()
        .await
        .context("cannot recover the operations of the previous run")?;
    // On a shared store, what dead hosts left is taken over while this host runs.
    let lease = Duration::from_millis(config.store.host_lease_ms.max(100));
    let _take_over = host.take_over_orphans(lease / 2);
    let (runtime, jobs) = (host.runtime().clone(), host.jobs().clone());
    let (retention, interval) = (config.store.retention(), config.store.purge_interval());
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
    });
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let address = listener.local_addr()?;
    println!("opshost listening on http://{address}");
    let grace = config.server.shutdown_grace();
    let api =
        HttpApi::new(host.runtime().clone(), auth, config.server).with_jobs(host.jobs().clone());
    let draining = api.draining();
    let served = tokio::spawn(api.serve(listener));
    tokio::select! {
        served = served => {
            served.context("the server task failed")??;
            return Ok(exit::OK);
        }
        signal = stop_signal() => eprintln!("{signal}: draining for up to {} ms", grace.as_millis()),
    }
    // New starts get 503, watches end; running work gets the grace period; then the store
    // is made durable and, when shared, this host's claim released.
    let began = std::time::Instant::now();
    draining.cancel();
    let shutdown = host.shutdown(grace).await?;
    eprintln!(
        "stopped after {} ms: {} of {} runs finished, {} left for recovery, {} job leases handed back",
        began.elapsed().as_millis(),
        shutdown.drained.running - shutdown.drained.stopped,
        shutdown.drained.running,
        shutdown.drained.stopped,
        shutdown.handed_back
    );
    Ok(exit::OK)
}

/// Resolves with the name of the first of SIGTERM or SIGINT to arrive.
async fn stop_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => tokio::select! {
                _ = terminate.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "interrupt"
    }
}
