//! `opshost serve`: the host of the config file, served until SIGTERM or SIGINT, then drained
//! gracefully (see `opshost_host`).

use std::path::PathBuf;

use anyhow::Result;
use opshost_host::{Host, HostConfig, StoreChoice};

use crate::exit;

/// Serves the deployment of the host config at `path`, with the command line's overrides.
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
    if let Ok(token) = std::env::var("OPSHOST_CONSOLE_DEV_TOKEN") {
        if config.server.listen.ip().is_loopback() {
            tracing::warn!(
                "OPSHOST_CONSOLE_DEV_TOKEN is set: the console offers its token to whoever \
                 opens it on this machine"
            );
            config.server.console_dev_token = Some(token);
        } else {
            tracing::warn!(
                listen = %config.server.listen,
                "OPSHOST_CONSOLE_DEV_TOKEN is ignored: the host listens beyond this machine"
            );
        }
    }
    let grace = config.server.shutdown_grace();
    let choice = if memory {
        StoreChoice::Memory
    } else {
        StoreChoice::FromConfig
    };
    let host = Host::open(config, choice).await?;
    let listener = host.bind().await?;
    let scheme = if host.serves_tls() { "https" } else { "http" };
    let address = listener.local_addr()?;
    println!("opshost listening on {scheme}://{address}");
    tracing::info!("the console is at {scheme}://{address}/console");
    let stop = async {
        let signal = stop_signal().await;
        eprintln!("{signal}: draining for up to {} ms", grace.as_millis());
        // A second signal does not wait for the drain.
        tokio::spawn(async {
            let again = stop_signal().await;
            eprintln!("{again} again: stopping now; what ran is resumed at the next start");
            std::process::exit(i32::from(exit::NOT_COMPLETED));
        });
    };
    let stopped = host.serve(listener, stop).await?;
    eprintln!(
        "stopped after {} ms: {} of {} runs finished, {} left for recovery, {} job leases handed back",
        stopped.took.as_millis(),
        stopped.drained.running - stopped.drained.stopped,
        stopped.drained.running,
        stopped.drained.stopped,
        stopped.handed_back
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
