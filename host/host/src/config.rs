//! The host config file: the deployment (contract, handlers, limits) at the
//! top level, plus optional `[server]` (HTTP) and `[auth]` (token keys) tables.
//!
//! ```toml
//! contract = "orders_service.manifest.json"
//!
//! [[handlers]]
//! operation = "Orders.Process"
//! component = "../target/wasm32-wasip2/release/orders_process.wasm"
//!
//! [server]
//! listen = "127.0.0.1:8080"
//!
//! [auth]
//! hs256_secret_env = "OPSHOST_JWT_SECRET"
//!
//! [store]
//! data_dir = "data"          # the SQLite store; relative to the working directory
//! # url = "postgres://opshost@db.internal/opshost"   # PostgreSQL instead of SQLite
//! # host_lease_ms = 10000     # with PostgreSQL: how soon other hosts take over a dead one's work
//! retention_days = 7         # terminal operations and final jobs are purged after this long
//!
//! [telemetry]
//! otlp_endpoint = "http://127.0.0.1:4318"   # export traces over OTLP/HTTP; off when absent
//! service_name = "orders"    # `service.name` of the spans (default "opshost")
//! export_interval_ms = 1000  # how long ended spans wait to be sent in one batch
//! max_queue = 8192           # spans held while the collector is away; then new ones are dropped
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use opshost_sandbox::{DeploymentConfig, SandboxError};
use opshost_server::{AuthConfig, ServerConfig};
use opshost_telemetry::TelemetryConfig;
use serde::Deserialize;

/// Where operations are kept and for how long (the `[store]` table).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The SQLite store's directory.
    pub data_dir: PathBuf,
    /// A PostgreSQL URL (`postgres://...`): keep operations and jobs there instead of SQLite.
    pub url: Option<String>,
    /// With PostgreSQL: how long this host owns its operations without renewing its lease;
    /// another host takes over a dead host's operations this long after its last renewal.
    pub host_lease_ms: u64,
    /// Terminal operations and final jobs are purged this many days after they ended.
    pub retention_days: f64,
    /// How often the purge runs, in seconds.
    pub purge_interval_secs: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            url: None,
            host_lease_ms: 10_000,
            retention_days: 7.0,
            purge_interval_secs: 3600,
        }
    }
}

impl StoreConfig {
    /// The retention period.
    pub fn retention(&self) -> Duration {
        Duration::try_from_secs_f64(self.retention_days * 86_400.0).unwrap_or(Duration::MAX)
    }

    /// The purge interval.
    pub fn purge_interval(&self) -> Duration {
        Duration::from_secs(self.purge_interval_secs.max(1))
    }
}

/// Traces (the `[telemetry]` table): exported over OTLP/HTTP when `otlp_endpoint` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryTable {
    /// The collector's OTLP/HTTP endpoint, e.g. `http://127.0.0.1:4318`.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the spans.
    pub service_name: String,
    /// How long ended spans wait to be sent in one batch, in milliseconds.
    pub export_interval_ms: u64,
    /// Spans held while the collector is slow or away; beyond it, new spans are dropped.
    pub max_queue: usize,
}

impl Default for TelemetryTable {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "opshost".into(),
            export_interval_ms: 1000,
            max_queue: 8192,
        }
    }
}

impl TelemetryTable {
    /// The exporter's config, when traces are exported.
    pub fn config(&self) -> Option<TelemetryConfig> {
        let endpoint = self.otlp_endpoint.as_ref()?;
        Some(TelemetryConfig {
            export_interval: Duration::from_millis(self.export_interval_ms.max(1)),
            max_queue: self.max_queue.max(1),
            ..TelemetryConfig::new(endpoint, &self.service_name)
        })
    }
}

/// Everything a host reads from its config file.
pub struct HostConfig {
    /// The contract, its handlers and workers, limits and grants (the top level).
    pub deployment: DeploymentConfig,
    /// `[server]`: the HTTP API.
    pub server: ServerConfig,
    /// `[auth]`: the keys tokens are checked with.
    pub auth: AuthConfig,
    /// `[store]`: where operations and jobs are kept.
    pub store: StoreConfig,
    /// `[telemetry]`: where traces go.
    pub telemetry: TelemetryTable,
    /// The file it was read from, if any: read again on a reload.
    pub source: Option<PathBuf>,
}

impl HostConfig {
    /// Reads the file, resolving relative paths against its directory.
    pub fn from_path(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut table: toml::Table = toml::from_str(&text).map_err(|source| ConfigError::Toml {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        let mut server: ServerConfig = table_of(&mut table, "server", path)?;
        let mut auth: AuthConfig = table_of(&mut table, "auth", path)?;
        let store: StoreConfig = table_of(&mut table, "store", path)?;
        let telemetry: TelemetryTable = table_of(&mut table, "telemetry", path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        for key in [
            &mut auth.ed25519_public_key,
            &mut auth.rs256_public_key,
            &mut server.tls_cert,
            &mut server.tls_key,
        ]
        .into_iter()
        .flatten()
        {
            *key = base.join(&*key);
        }
        let deployment = DeploymentConfig::from_table(table, path).map_err(Box::new)?;
        Ok(Self {
            deployment,
            server,
            auth,
            store,
            telemetry,
            source: Some(path.to_owned()),
        })
    }
}

/// Table `name` of `table`, taken out of it, or its defaults when absent.
fn table_of<T: Default + serde::de::DeserializeOwned>(
    table: &mut toml::Table,
    name: &'static str,
    path: &Path,
) -> Result<T, ConfigError> {
    match table.remove(name) {
        Some(value) => value.try_into().map_err(|source| ConfigError::Table {
            path: path.to_owned(),
            table: name,
            source: Box::new(source),
        }),
        None => Ok(T::default()),
    }
}

/// Why a host config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("{}: {source}", .path.display())]
    Toml {
        /// The file.
        path: PathBuf,
        /// Where and why.
        source: Box<toml::de::Error>,
    },
    /// A table does not hold what it should.
    #[error("{}: [{table}]: {source}", .path.display())]
    Table {
        /// The file.
        path: PathBuf,
        /// The table.
        table: &'static str,
        /// Where and why.
        source: Box<toml::de::Error>,
    },
    /// The deployment (contract, handlers, workers, limits) is refused.
    #[error(transparent)]
    Deployment(#[from] Box<SandboxError>),
}
