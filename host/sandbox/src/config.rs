//! The deployment config: which component handles which operation, and with what limits.
//!
//! ```toml
//! contract = "contracts/orders_service.manifest.json"
//! cancel_grace_ms = 5000
//!
//! [[handlers]]
//! operation = "Orders.Process"
//! component = "target/wasm32-wasip2/release/orders_process.wasm"
//! on_restart = "retry"   # or "fail"; what a restarted host does with unfinished runs
//! max_attempts = 3
//! ```
//!
//! Relative paths are resolved against the config file's directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use opshost_runtime::RestartPolicy;
use serde::Deserialize;

use crate::error::SandboxError;

/// A deployment: one contract and the components that handle its operations.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    /// The contract manifest.
    pub contract: PathBuf,
    /// Grace period for a cancelled handler before it is stopped by force.
    #[serde(default = "default_grace_ms")]
    pub cancel_grace_ms: u64,
    /// How many operations may run at once; further starts are refused as overloaded.
    #[serde(default)]
    pub max_active_operations: Option<usize>,
    /// One entry per operation served by a component.
    #[serde(default)]
    pub handlers: Vec<HandlerConfig>,
}

/// One operation and the component that handles it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerConfig {
    /// The operation's name in the contract.
    pub operation: String,
    /// The component file (`.wasm`).
    pub component: PathBuf,
    /// What a restarted host does with this operation's unfinished runs.
    #[serde(default)]
    pub on_restart: OnRestart,
    /// Attempts in all (the first included) when `on_restart = "retry"`.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

/// `on_restart` of a handler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnRestart {
    /// Run the handler again with `attempt + 1`.
    #[default]
    Retry,
    /// Fail the operation with `HostRestarted`.
    Fail,
}

impl HandlerConfig {
    /// A handler with the default restart policy (retry, 3 attempts).
    pub fn new(operation: impl Into<String>, component: impl Into<PathBuf>) -> Self {
        Self {
            operation: operation.into(),
            component: component.into(),
            on_restart: OnRestart::default(),
            max_attempts: default_max_attempts(),
        }
    }

    /// The runtime's restart policy for this handler.
    pub fn restart_policy(&self) -> RestartPolicy {
        match self.on_restart {
            OnRestart::Retry => RestartPolicy::Retry {
                max_attempts: self.max_attempts.max(1),
            },
            OnRestart::Fail => RestartPolicy::Fail,
        }
    }
}

fn default_max_attempts() -> u32 {
    3
}

fn default_grace_ms() -> u64 {
    5_000
}

impl DeploymentConfig {
    /// Reads a config file, resolving relative paths against its directory.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self, SandboxError> {
        let path = path.as_ref();
        let error = |message: String| SandboxError::Config {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| error(e.to_string()))?;
        Self::from_table(table, path)
    }

    /// Reads a config already parsed from the file at `path` (other tools' tables removed),
    /// resolving relative paths against its directory.
    pub fn from_table(table: toml::Table, path: &Path) -> Result<Self, SandboxError> {
        let mut config: Self =
            table
                .try_into()
                .map_err(|e: toml::de::Error| SandboxError::Config {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.contract = base.join(&config.contract);
        for handler in &mut config.handlers {
            handler.component = base.join(&handler.component);
        }
        Ok(config)
    }

    /// The cancel grace period.
    pub fn cancel_grace(&self) -> Duration {
        Duration::from_millis(self.cancel_grace_ms)
    }
}
