//! The one wasmtime `Engine` of a host, and the epoch ticker that lets guests be preempted.
//!
//! Instances come from the pooling allocator when the machine's address space allows it (the
//! pool is reserved when the engine is built; if that fails the engine falls back to
//! on-demand allocation), with copy-on-write memory images either way. The pool has one slot
//! per store that may run at once, so the runtime's handler slots and the workers'
//! concurrency keep it from ever running out.
//!
//! Every store yields to tokio at each epoch tick, so a guest that never calls the host still
//! lets other operations and timers run, can be stopped by force when cancelled, and has its
//! CPU time counted.

use std::time::Duration;

use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::error::SandboxError;

/// How often the epoch advances.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Core instances, memories and tables a component may hold per slot of the pool.
const CORE_INSTANCES_PER_SLOT: u32 = 16;
const MEMORIES_PER_SLOT: u32 = 1;
const TABLES_PER_SLOT: u32 = 4;

/// Bytes of each memory, table and stack reset in place when its slot is reused.
const KEEP_RESIDENT: usize = 1 << 20;

/// How the engine allocates instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// From a pool reserved up front, with this many slots.
    Pooling {
        /// Stores that may exist at once.
        slots: u32,
    },
    /// On demand, because the pool could not be reserved (or was not asked for).
    OnDemand,
}

/// What the engine must hold at once.
#[derive(Debug, Clone, Copy)]
pub struct EngineShape {
    /// Stores that may exist at once: handler slots plus worker slots. `None`: no pool.
    pub slots: Option<u32>,
    /// The largest linear memory one store may have.
    pub max_memory_bytes: usize,
}

/// Creates the engine (components, async host calls, epoch interruption, copy-on-write
/// memory images), pooled when `shape.slots` is set and the address space allows it.
pub fn new_engine(shape: EngineShape) -> Result<(Engine, Allocation), SandboxError> {
    let pooled = shape.slots.and_then(|slots| {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(slots)
            .total_core_instances(slots.saturating_mul(CORE_INSTANCES_PER_SLOT))
            .max_core_instances_per_component(CORE_INSTANCES_PER_SLOT)
            .total_memories(slots.saturating_mul(MEMORIES_PER_SLOT))
            .max_memories_per_component(MEMORIES_PER_SLOT)
            .total_tables(slots.saturating_mul(TABLES_PER_SLOT))
            .max_tables_per_component(TABLES_PER_SLOT)
            .total_stacks(slots)
            .max_memory_size(shape.max_memory_bytes)
            // Reset a finished instance's pages with memset, not madvise: no page faults for
            // the next instance, and no TLB shootdowns across cores. With `pagemap_scan`
            // (Linux 6.7+) only the pages the guest touched are reset.
            .pagemap_scan(Enabled::Auto)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT)
            .async_stack_keep_resident(KEEP_RESIDENT);
        let mut config = base_config();
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        match Engine::new(&config) {
            Ok(engine) => Some((engine, Allocation::Pooling { slots })),
            Err(error) => {
                tracing::warn!(%error, slots, "cannot reserve the instance pool; allocating on demand");
                None
            }
        }
    });
    let (engine, allocation) = match pooled {
        Some(pooled) => pooled,
        None => (
            Engine::new(&base_config()).map_err(|e| SandboxError::Engine(e.to_string()))?,
            Allocation::OnDemand,
        ),
    };
    start_ticker(&engine);
    Ok((engine, allocation))
}

fn base_config() -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.memory_init_cow(true);
    config
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
