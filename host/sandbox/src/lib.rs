//! Runs operation handlers shipped as wasm components under wasmtime.
//!
//! - [`config`]: the deployment config (TOML) mapping operations to components.
//! - [`engine`]: the one wasmtime `Engine` and its epoch ticker.
//! - [`control`]: the `opshost:operation/control` and `job` imports, bound to one operation.
//! - [`grants`]: what WASI a handler may use — nothing beyond WASI's defaults unless granted.
//! - [`WasmHost`]: compiles each component once, then runs every operation (and every job
//!   attempt of a worker component) in a fresh `Store`.

mod bindings;
pub mod config;
pub mod control;
pub mod engine;
mod error;
pub mod grants;
mod host;

pub use config::{DeploymentConfig, HandlerConfig, JobsSettings, OnRestart, WorkerConfig};
pub use error::SandboxError;
pub use host::WasmHost;
