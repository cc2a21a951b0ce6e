//! The host config file of `opshost serve`: the deployment (contract, handlers, limits) at the
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
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use opshost_sandbox::DeploymentConfig;
use opshost_server::{AuthConfig, ServerConfig};
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

/// Everything `opshost serve` reads from its config file.
pub struct HostConfig {
    pub deployment: DeploymentConfig,
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub store: StoreConfig,
}

impl HostConfig {
    /// Reads the file, resolving relative paths against its directory.
    pub fn from_path(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        let mut table: toml::Table =
            toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
        let server: ServerConfig = match table.remove("server") {
            Some(value) => value
                .try_into()
                .with_context(|| format!("{}: [server]", path.display()))?,
            None => ServerConfig::default(),
        };
        let mut auth: AuthConfig = match table.remove("auth") {
            Some(value) => value
                .try_into()
                .with_context(|| format!("{}: [auth]", path.display()))?,
            None => AuthConfig::default(),
        };
        let store: StoreConfig = match table.remove("store") {
            Some(value) => value
                .try_into()
                .with_context(|| format!("{}: [store]", path.display()))?,
            None => StoreConfig::default(),
        };
        let base = path.parent().unwrap_or(Path::new("."));
        for key in [&mut auth.ed25519_public_key, &mut auth.rs256_public_key]
            .into_iter()
            .flatten()
        {
            *key = base.join(&*key);
        }
        let deployment = DeploymentConfig::from_table(table, path)?;
        Ok(Self {
            deployment,
            server,
            auth,
            store,
        })
    }
}
