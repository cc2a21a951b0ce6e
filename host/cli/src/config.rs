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
//! ```

use std::path::Path;

use anyhow::{Context, Result};
use opshost_sandbox::DeploymentConfig;
use opshost_server::{AuthConfig, ServerConfig};

/// Everything `opshost serve` reads from its config file.
pub struct HostConfig {
    pub deployment: DeploymentConfig,
    pub server: ServerConfig,
    pub auth: AuthConfig,
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
        })
    }
}
