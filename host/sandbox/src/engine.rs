//! The one wasmtime `Engine` of a host, and the epoch ticker that lets guests be preempted.
//!
//! Every store yields to tokio at each epoch tick, so a guest that never calls the host still
//! lets other operations and timers run, and can be stopped by force when cancelled.

use std::time::Duration;

use wasmtime::{Config, Engine};

use crate::error::SandboxError;

/// How often the epoch advances.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Creates the engine: components, async host calls, epoch interruption.
pub fn new_engine() -> Result<Engine, SandboxError> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    let engine = Engine::new(&config).map_err(|e| SandboxError::Engine(e.to_string()))?;
    start_ticker(&engine);
    Ok(engine)
}

fn start_ticker(engine: &Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new()
        .name("opshost-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start the epoch ticker; guests will not be preempted");
    }
}
