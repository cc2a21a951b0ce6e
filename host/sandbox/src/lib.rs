//! Runs operation handlers shipped as wasm components under wasmtime.
//!
//! - [`config`]: the deployment config (TOML) mapping operations to components.
//! - `engine`: the one wasmtime `Engine` (pooled when possible) and its epoch ticker.
//! - `cache`: loading components: sha256 pins and the precompiled-component cache.
//! - [`grants`]: what WASI a handler may use — nothing beyond WASI's defaults unless granted.
//! - [`egress`]: outbound HTTP through allow-lists, with secrets the guest never sees.
//! - [`limits`]: memory, CPU, deadline, progress rate and payload size of each run.
//! - `control`: the `opshost:operation/control` and `job` imports, bound to one operation.
//! - [`clock`]: time as guests see it (system, or virtual in tests).
//! - [`faults`]: faults a test injects into the control imports.
//! - [`check_component`]: every problem a deployment would have with a component.
//! - `deploys`: new versions of a handler or worker without a restart, kept in the store.
//! - [`versions`]: the versions of one handler or worker, and which one runs what.
//! - [`WasmHost`]: compiles each component once, then runs every operation (and every job
//!   attempt of a worker component) in a fresh `Store`.

mod bindings;
mod cache;
mod capture;
mod check;
pub mod clock;
pub mod config;
mod control;
mod deploys;
pub mod egress;
mod engine;
mod error;
pub mod faults;
pub mod grants;
mod host;
pub mod limits;
pub mod versions;

pub use check::check_component;
pub use clock::{Clock, SystemClock, VirtualClock};
pub use config::{
    DeploymentConfig, EngineSettings, HandlerConfig, JobsSettings, OnRestart, WorkerConfig,
};
pub use control::RunEnv;
pub use deploys::DeployCheck;
pub use engine::Allocation;
pub use error::SandboxError;
pub use faults::{Fault, Faults, Import};
pub use grants::{DirGrant, Grants};
pub use host::{Shutdown, WasmHost, WasmHostBuilder};
pub use limits::{HttpLimits, LimitBreach, Limits, LimitsTable};

/// The engine and the component loader, for tests and benches that measure them directly.
#[cfg(feature = "testing")]
pub mod testing {
    pub use crate::cache::{ComponentLoader, Origin, sha256_hex};
    pub use crate::engine::{EngineShape, new_engine};
}
