//! The `[server]` table of the host config.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

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
    /// Origins whose pages may call the `/v1` API from a browser (CORS), such as
    /// `https://console.example.com`, or `*` for any; none unless listed.
    pub cors_origins: Vec<String>,
    /// A PEM file of the certificate chain to serve HTTPS with; with `tls_key`, the host serves
    /// HTTPS only. Relative to the config file.
    pub tls_cert: Option<PathBuf>,
    /// The PEM file of `tls_cert`'s private key.
    pub tls_key: Option<PathBuf>,
    /// How long a watch token (`POST /v1/operations/{id}/watch-token`) lets its holder start
    /// watching, in seconds.
    pub watch_token_ttl_secs: u64,
    /// A token the console offers to whoever opens it: for a developer's own machine only
    /// (`./dev run` sets it from `OPSHOST_CONSOLE_DEV_TOKEN`); never read from the file.
    #[serde(skip)]
    pub console_dev_token: Option<String>,
}

/// A `[server]` table the host cannot serve with.
#[derive(Debug, thiserror::Error)]
pub enum ServerConfigError {
    /// An entry of `cors_origins` is not an origin.
    #[error("server.cors_origins[{index}] `{origin}`: {reason}")]
    CorsOrigin {
        /// Its place in the list.
        index: usize,
        /// The entry.
        origin: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The certificate or key cannot be used.
    #[error("server.{field}: {message}")]
    Tls {
        /// `tls_cert` or `tls_key`.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
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
            shutdown_grace_ms: 25_000,
            cors_origins: Vec::new(),
            tls_cert: None,
            tls_key: None,
            watch_token_ttl_secs: 300,
            console_dev_token: None,
        }
    }
}

impl ServerConfig {
    pub(crate) fn max_wait(&self) -> Duration {
        Duration::from_secs(self.max_wait_secs)
    }

    pub(crate) fn keep_alive(&self) -> Duration {
        Duration::from_secs(self.keep_alive_secs.max(1))
    }

    pub(crate) fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms.max(1))
    }

    /// Checks what the host can only find wrong when it serves: the CORS origins, and the TLS
    /// certificate and key.
    pub fn check(&self) -> Result<(), ServerConfigError> {
        crate::cors::layer(&self.cors_origins)?;
        crate::tls::acceptor(self)?;
        Ok(())
    }

    /// Whether the host serves HTTPS.
    pub fn serves_tls(&self) -> bool {
        self.tls_cert.is_some() || self.tls_key.is_some()
    }

    pub(crate) fn watch_token_ttl(&self) -> Duration {
        Duration::from_secs(self.watch_token_ttl_secs.clamp(1, 3600))
    }

    /// See [`ServerConfig::shutdown_grace_ms`].
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}
