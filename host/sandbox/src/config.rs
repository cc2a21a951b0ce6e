//! The deployment config: which component handles which operation, and with what limits.
//!
//! ```toml
//! contract = "contracts/orders_service.manifest.json"
//! cancel_grace_ms = 5000
//! max_concurrent_operations = 256   # handlers running at once; later starts wait as pending
//! max_backlog = 10000               # pending starts beyond this are refused as overloaded
//!
//! [engine]
//! cache_dir = "data/compiled"   # precompiled components, keyed by sha256 and engine
//!
//! [limits]   # defaults for every handler and worker
//! memory_mb = 64
//! cpu_ms = 30000
//! deadline_ms = 86400000
//! progress_per_second = 20
//! max_payload_bytes = 1048576
//! max_history_bytes = 16777216   # progress one operation records over its life
//! max_events = 10000             # events in one operation's history
//! log_lines_per_second = 100     # stdout, stderr and log lines of one run; more are dropped; 0: none kept
//! log_bytes_per_second = 65536
//!
//! [[handlers]]
//! operation = "Orders.Process"
//! component = "target/wasm32-wasip2/release/orders_process.wasm"
//! sha256 = "…"           # optional: refuse any other file
//! on_restart = "retry"   # or "fail"; what a restarted host does with unfinished runs
//! max_attempts = 3
//! limits = { memory_mb = 32 }
//! grants = { env = { REGION = "eu" }, dirs = [{ host = "catalog", guest = "/catalog" }] }
//!
//! [handlers.grants.http]   # outbound HTTP; nothing else is reachable
//! allow = ["https://payments.example.com"]
//! headers = { "https://payments.example.com" = { authorization = "Bearer {{ secrets.PAYMENTS_TOKEN }}" } }
//!
//! [secrets]   # read at load; a missing one stops the load, naming it
//! PAYMENTS_TOKEN = { env = "PAYMENTS_TOKEN" }   # or { file = "secrets/payments" }
//!
//! [egress]
//! hosts = { "payments.internal" = ["10.0.0.7"] }   # fixed answers instead of DNS
//! ca_file = "certs/internal-ca.pem"                # trusted besides the Mozilla roots
//! max_connections = 1024                           # outbound requests in flight, all runs
//!
//! [[workers]]
//! queue = "fulfillment"
//! component = "target/wasm32-wasip2/release/orders_fulfillment.wasm"
//! concurrency = 4
//!
//! [jobs]
//! lease_ms = 30000   # a dead worker's job comes back after this
//! poll_ms = 1000
//! ```
//!
//! Relative paths are resolved against the config file's directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use opshost_jobs::JobsConfig;
use opshost_runtime::RestartPolicy;
use serde::Deserialize;

use crate::egress::{EgressSettings, SecretSource};
use crate::error::SandboxError;
use crate::grants::Grants;
use crate::limits::LimitsTable;

/// A deployment: one contract and the components that handle its operations.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    /// The contract manifest.
    pub contract: PathBuf,
    /// Grace period for a cancelled handler before it is stopped by force.
    #[serde(default = "default_grace_ms")]
    pub cancel_grace_ms: u64,
    /// How many handlers run at once; further accepted operations wait as `pending`.
    #[serde(default = "default_concurrency_limit")]
    pub max_concurrent_operations: usize,
    /// How many accepted operations may wait for a slot; further starts are refused with
    /// `Overloaded`.
    #[serde(default = "default_backlog")]
    pub max_backlog: usize,
    /// Engine settings.
    #[serde(default)]
    pub engine: EngineSettings,
    /// Default limits of every handler and worker.
    #[serde(default)]
    pub limits: LimitsTable,
    /// One entry per operation served by a component.
    #[serde(default)]
    pub handlers: Vec<HandlerConfig>,
    /// One entry per job queue worked by a component.
    #[serde(default)]
    pub workers: Vec<WorkerConfig>,
    /// How workers hold and look for jobs.
    #[serde(default)]
    pub jobs: JobsSettings,
    /// Values grants build outbound headers from, read at load and never shown to guests.
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretSource>,
    /// How outbound requests reach the origins grants allow.
    #[serde(default)]
    pub egress: EgressSettings,
}

/// One job queue and the component that works it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// The queue's name in the contract.
    pub queue: String,
    /// The component file (`.wasm`), exporting the `worker` world.
    pub component: PathBuf,
    /// Jobs of this queue run at once on this host.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// The component's sha256 (hex); any other file is refused.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Overrides of the deployment's limits.
    #[serde(default)]
    pub limits: LimitsTable,
    /// What the component may reach through WASI.
    #[serde(default)]
    pub grants: Grants,
}

impl WorkerConfig {
    /// A worker of `queue` with `concurrency` slots, default limits and no grants.
    pub fn new(
        queue: impl Into<String>,
        component: impl Into<PathBuf>,
        concurrency: usize,
    ) -> Self {
        Self {
            queue: queue.into(),
            component: component.into(),
            concurrency,
            sha256: None,
            limits: LimitsTable::default(),
            grants: Grants::default(),
        }
    }
}

/// The `[engine]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSettings {
    /// Where compiled components are cached; none means compile at every start.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
}

/// The `[jobs]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsSettings {
    /// Lease (visibility timeout) of a running job, renewed every third of it.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// Longest an idle worker waits before it looks for due jobs again.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
}

impl Default for JobsSettings {
    fn default() -> Self {
        Self {
            lease_ms: default_lease_ms(),
            poll_ms: default_poll_ms(),
        }
    }
}

impl JobsSettings {
    /// The jobs service's configuration.
    pub fn config(&self) -> JobsConfig {
        JobsConfig {
            lease: Duration::from_millis(self.lease_ms.max(30)),
            poll: Duration::from_millis(self.poll_ms.max(1)),
        }
    }
}

fn default_concurrency() -> usize {
    4
}

fn default_concurrency_limit() -> usize {
    256
}

fn default_backlog() -> usize {
    10_000
}

fn default_lease_ms() -> u64 {
    30_000
}

fn default_poll_ms() -> u64 {
    1_000
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
    /// The component's sha256 (hex); any other file is refused.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Overrides of the deployment's limits.
    #[serde(default)]
    pub limits: LimitsTable,
    /// What the component may reach through WASI.
    #[serde(default)]
    pub grants: Grants,
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
            sha256: None,
            limits: LimitsTable::default(),
            grants: Grants::default(),
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
    /// A deployment of `contract` with no components and every default.
    pub fn new(contract: impl Into<PathBuf>) -> Self {
        Self {
            contract: contract.into(),
            cancel_grace_ms: default_grace_ms(),
            max_concurrent_operations: default_concurrency_limit(),
            max_backlog: default_backlog(),
            engine: EngineSettings::default(),
            limits: LimitsTable::default(),
            handlers: Vec::new(),
            workers: Vec::new(),
            jobs: JobsSettings::default(),
            secrets: BTreeMap::new(),
            egress: EgressSettings::default(),
        }
    }

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
            handler.grants.resolve(base);
        }
        for worker in &mut config.workers {
            worker.component = base.join(&worker.component);
            worker.grants.resolve(base);
        }
        if let Some(dir) = &mut config.engine.cache_dir {
            *dir = base.join(&*dir);
        }
        for secret in config.secrets.values_mut() {
            secret.resolve(base);
        }
        config.egress.resolve(base);
        Ok(config)
    }

    /// The cancel grace period.
    pub fn cancel_grace(&self) -> Duration {
        Duration::from_millis(self.cancel_grace_ms)
    }
}
