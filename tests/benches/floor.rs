//! Per-operation cost of the host against the wasmtime floor, measured in one run.
//!
//! - floor: bare wasmtime instantiating the test-handlers component (pre-linked once) in a
//!   fresh store and calling `handle` for the `complete` scenario, with no-op control imports,
//!   once with wasmtime's default settings and once with the host's own engine (pooled
//!   instances reset in place, epoch interruption);
//! - host: `WasmHost::start` + `wait` of the same scenario on the in-memory store (accept,
//!   validation, a fresh store, real control imports, events).
//!
//! Run with `./dev bench`. Prints mean, p50 and p99 per operation and the ratio host/floor.
//! `FLOOR_EPOCH=1` gives the floor's engine epoch interruption too, to isolate its cost.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

use opshost_sandbox::testing::{EngineShape, new_engine};
use opshost_tests::{guest, testing_host};
use serde_json::json;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

wasmtime::component::bindgen!({
    path: "../wit",
    world: "handler",
    imports: { default: async },
    exports: { default: async },
});

use opshost::operation::types::{ControlError, Signal};

const ITERATIONS: usize = 400;
const WARMUP: usize = 20;

struct Bare {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for Bare {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl opshost::operation::types::Host for Bare {}

impl opshost::operation::log::Host for Bare {
    async fn write(
        &mut self,
        _level: opshost::operation::log::Level,
        _message: String,
        _fields: Vec<(String, String)>,
    ) {
    }
}

impl opshost::operation::control::Host for Bare {
    async fn started(&mut self) -> Result<(), ControlError> {
        Ok(())
    }
    async fn progress(&mut self, _payload: String) -> Result<(), ControlError> {
        Ok(())
    }
    async fn complete(&mut self, _output: String) -> Result<(), ControlError> {
        Ok(())
    }
    async fn fail(&mut self, _failure: Failure) -> Result<(), ControlError> {
        Ok(())
    }
    async fn cancel_requested(&mut self) -> bool {
        false
    }
    async fn acknowledge_cancel(&mut self) -> Result<(), ControlError> {
        Ok(())
    }
    async fn next_signal(
        &mut self,
        _timeout_ms: Option<u64>,
    ) -> Result<Option<Signal>, ControlError> {
        Ok(None)
    }
    async fn sleep(&mut self, _ms: u64) -> Result<(), ControlError> {
        Ok(())
    }
    async fn hand_off(&mut self, _queue: String, _payload: String) -> Result<String, ControlError> {
        Ok(String::new())
    }
}

struct Stats {
    mean: Duration,
    p50: Duration,
    p99: Duration,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    Stats {
        mean,
        p50: at(0.50),
        p99: at(0.99),
    }
}

fn wasm<T>(result: wasmtime::Result<T>) -> anyhow::Result<T> {
    result.map_err(|error| anyhow::anyhow!("{error:?}"))
}

/// Bare wasmtime: the default engine settings (`pooled: false`) or the host's own engine
/// (pooled instances reset in place, epoch interruption), without anything of the host above.
async fn floor(pooled: bool) -> anyhow::Result<Vec<Duration>> {
    let engine = if pooled {
        let shape = EngineShape {
            slots: Some(16),
            max_memory_bytes: 64 << 20,
        };
        new_engine(shape)?.0
    } else {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(std::env::var_os("FLOOR_EPOCH").is_some());
        wasm(Engine::new(&config))?
    };
    let mut linker = Linker::<Bare>::new(&engine);
    wasm(wasmtime_wasi::p2::add_to_linker_async(&mut linker))?;
    wasm(Handler::add_to_linker::<_, HasSelf<Bare>>(
        &mut linker,
        |state| state,
    ))?;
    let component = wasm(Component::from_file(&engine, guest("test_handlers")))?;
    let pre = wasm(linker.instantiate_pre(&component).and_then(HandlerPre::new))?;
    let invocation = Invocation {
        operation_id: "bench".into(),
        operation: "Testing.Scenario".into(),
        version: "v1".into(),
        attempt: 1,
        input: json!({ "scenario": "complete" }).to_string(),
    };
    let mut samples = Vec::with_capacity(ITERATIONS);
    for i in 0..WARMUP + ITERATIONS {
        let started = Instant::now();
        let mut store = Store::new(
            &engine,
            Bare {
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
            },
        );
        store.set_epoch_deadline(u64::MAX / 2);
        let handler = wasm(pre.instantiate_async(&mut store).await)?;
        wasm(handler.call_handle(&mut store, &invocation).await)?
            .map_err(|f| anyhow::anyhow!(f.message))?;
        if i >= WARMUP {
            samples.push(started.elapsed());
        }
    }
    Ok(samples)
}

async fn host() -> anyhow::Result<Vec<Duration>> {
    let host = testing_host(Duration::from_secs(5));
    let mut samples = Vec::with_capacity(ITERATIONS);
    for i in 0..WARMUP + ITERATIONS {
        let started = Instant::now();
        let accepted = host
            .start("Testing.Scenario", None, json!({ "scenario": "complete" }))
            .await?;
        let terminal = host.runtime().wait(&accepted.id, None).await?;
        anyhow::ensure!(
            terminal.output.is_some(),
            "operation did not complete: {terminal:?}"
        );
        if i >= WARMUP {
            samples.push(started.elapsed());
        }
    }
    Ok(samples)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let floor_default = stats(floor(false).await?);
    let floor_pooled = stats(floor(true).await?);
    let host = stats(host().await?);
    println!("trivial operation, {ITERATIONS} sequential runs each (after {WARMUP} warm-up)");
    println!(
        "{:<34} {:>10} {:>10} {:>10} {:>10}",
        "", "mean", "p50", "p99", "ops/s"
    );
    for (name, s) in [
        ("floor: bare wasmtime inst+call", &floor_default),
        ("floor: same, host's engine config", &floor_pooled),
        ("host: start -> terminal (memory)", &host),
    ] {
        println!(
            "{:<34} {:>10.1?} {:>10.1?} {:>10.1?} {:>10.0}",
            name,
            s.mean,
            s.p50,
            s.p99,
            1.0 / s.mean.as_secs_f64()
        );
    }
    for (name, floor) in [("floor", &floor_default), ("pooled floor", &floor_pooled)] {
        println!(
            "ratio host/{name}: mean {:.2}x, p50 {:.2}x",
            host.mean.as_secs_f64() / floor.mean.as_secs_f64(),
            host.p50.as_secs_f64() / floor.p50.as_secs_f64()
        );
    }
    Ok(())
}
