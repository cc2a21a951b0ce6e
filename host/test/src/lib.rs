//! Test harness for guest authors: a component under the real host, in-process, in a plain
//! `#[tokio::test]`.
//!
//! The harness loads a contract and components like `opshost serve` does (same sandbox, same
//! limits and grants unless a test overrides them) on the in-memory stores, with a
//! [`VirtualClock`]: a guest's `sleep` and `next-signal` timeouts wait until the test calls
//! [`Harness::advance`], so time-based paths run at once and the same way every time.
//! [`Faults`] make chosen control calls fail.
//!
//! ```no_run
//! # async fn example() -> Result<(), opshost_test::HarnessError> {
//! # use std::time::Duration;
//! # struct OrdersProcess;
//! # impl opshost_api::Operation for OrdersProcess {
//! #     const SERVICE: &'static str = "orders"; const NAME: &'static str = "Orders.Process";
//! #     const VERSION: &'static str = "v1"; type Input = (); type Progress = (); type Output = ();
//! #     fn manifest() -> &'static str { "" }
//! # }
//! let harness = opshost_test::Harness::builder("contracts/orders_service.manifest.json")
//!     .handler("Orders.Process", "target/wasm32-wasip2/release/orders_process.wasm")
//!     .build()?;
//! let order = harness.start::<OrdersProcess>(()).await?;
//! harness.advance(Duration::from_secs(1)).await?;
//! let done = order.wait().await?;
//! # Ok(()) }
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use opshost_api::{Operation, OperationEvent, OperationSnapshot, Signal};
use opshost_runtime::{OperationRuntime, Operations, Owner, ServerError};
use opshost_sandbox::{
    DeploymentConfig, Grants, HandlerConfig, LimitsTable, RunEnv, SandboxError, WasmHost,
    WorkerConfig,
};

mod component;

pub use component::build_component;
pub use opshost_api::{ErrorCode, OperationState};
pub use opshost_sandbox::{Clock, Fault, Faults, Import, VirtualClock};

/// How long (real time) the harness waits for a guest before it reports a timeout.
const PATIENCE: Duration = Duration::from_secs(30);

/// Why a harness call failed.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The contract or a component did not load.
    #[error(transparent)]
    Load(#[from] SandboxError),
    /// The runtime refused a call.
    #[error(transparent)]
    Runtime(#[from] ServerError),
    /// A payload did not match the facade's types.
    #[error("payload does not match the facade types: {0}")]
    Codec(#[from] serde_json::Error),
    /// A guest crate did not build into a component.
    #[error("{0}")]
    Build(String),
    /// Nothing happened within the harness's patience.
    #[error("timed out: {0}")]
    Timeout(String),
}

/// Builds a [`Harness`].
pub struct HarnessBuilder {
    config: DeploymentConfig,
    faults: Option<Faults>,
}

impl HarnessBuilder {
    /// Serves `operation` with the component at `component`.
    pub fn handler(mut self, operation: &str, component: impl Into<PathBuf>) -> Self {
        self.config
            .handlers
            .push(HandlerConfig::new(operation, component));
        self
    }

    /// Works `queue` with the component at `component`, `concurrency` jobs at once.
    pub fn worker(
        mut self,
        queue: &str,
        component: impl Into<PathBuf>,
        concurrency: usize,
    ) -> Self {
        self.config
            .workers
            .push(WorkerConfig::new(queue, component, concurrency));
        self
    }

    /// Overrides the default limits of every component (fields left `None` keep theirs).
    pub fn limits(mut self, limits: LimitsTable) -> Self {
        self.config.limits = limits;
        self
    }

    /// Gives every component loaded so far these grants.
    pub fn grants(mut self, grants: Grants) -> Self {
        for handler in &mut self.config.handlers {
            handler.grants = grants.clone();
        }
        for worker in &mut self.config.workers {
            worker.grants = grants.clone();
        }
        self
    }

    /// Injects `faults` into the control imports.
    pub fn faults(mut self, faults: Faults) -> Self {
        self.faults = Some(faults);
        self
    }

    /// Loads the contract and every component. Call it within a tokio runtime when there are
    /// workers.
    pub fn build(self) -> Result<Harness, HarnessError> {
        let clock = VirtualClock::new();
        let env = RunEnv {
            clock: Arc::new(clock.clone()),
            faults: self.faults.map(Arc::new),
        };
        let host = WasmHost::builder(&self.config).env(env).build()?;
        Ok(Harness { host, clock })
    }
}

/// A host under test: the real runtime and sandbox, in memory, on virtual time.
pub struct Harness {
    host: WasmHost,
    clock: VirtualClock,
}

impl Harness {
    /// A harness for the contract manifest at `contract`; add components to the builder.
    /// Compiled components are cached in the system's temporary directory, so only the first
    /// test of a component pays for Cranelift.
    pub fn builder(contract: impl Into<PathBuf>) -> HarnessBuilder {
        let mut config = DeploymentConfig::new(contract);
        config.cancel_grace_ms = 1_000;
        config.engine.cache_dir = Some(std::env::temp_dir().join("opshost-compiled"));
        HarnessBuilder {
            config,
            faults: None,
        }
    }

    /// A harness for an existing deployment config (its limits and grants included).
    pub fn from_config(config: DeploymentConfig) -> HarnessBuilder {
        HarnessBuilder {
            config,
            faults: None,
        }
    }

    /// The runtime, for anything the harness does not wrap.
    pub fn runtime(&self) -> &OperationRuntime {
        self.host.runtime()
    }

    /// The virtual clock guests see.
    pub fn clock(&self) -> &VirtualClock {
        &self.clock
    }

    /// Waits until a guest sleeps or waits with a timeout, then moves virtual time forward by
    /// `by`, waking what ends within it.
    pub async fn advance(&self, by: Duration) -> Result<(), HarnessError> {
        self.sleeping().await?;
        self.clock.advance(by);
        Ok(())
    }

    /// Waits until at least one guest sleeps or waits with a timeout on the virtual clock.
    pub async fn sleeping(&self) -> Result<(), HarnessError> {
        let waited = tokio::time::timeout(PATIENCE, async {
            while self.clock.sleepers() == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        waited.map_err(|_| HarnessError::Timeout("no guest started to sleep".into()))
    }

    /// Starts operation `Op` with `input` and runs its handler.
    pub async fn start<Op: Operation>(
        &self,
        input: Op::Input,
    ) -> Result<TestOperation<Op>, HarnessError> {
        let input = serde_json::to_value(input)?;
        let accepted = self
            .runtime()
            .start(Owner::default(), Op::NAME, None, input)
            .await?;
        Ok(TestOperation {
            id: accepted.snapshot.id,
            operations: self.runtime().operation::<Op>(),
        })
    }
}

/// One operation started through a [`Harness`].
pub struct TestOperation<Op: Operation> {
    id: String,
    operations: Operations<Op>,
}

impl<Op: Operation> TestOperation<Op> {
    /// The operation's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The current snapshot.
    pub async fn get(&self) -> Result<OperationSnapshot<Op>, HarnessError> {
        Ok(self.operations.get(&self.id).await?)
    }

    /// The terminal snapshot.
    pub async fn wait(&self) -> Result<OperationSnapshot<Op>, HarnessError> {
        let waited = tokio::time::timeout(PATIENCE, self.operations.wait(&self.id)).await;
        match waited {
            Ok(snapshot) => Ok(snapshot?),
            Err(_) => Err(HarnessError::Timeout(format!(
                "operation {} is still {}",
                self.id,
                self.get().await?.state.as_str()
            ))),
        }
    }

    /// Every event so far, from `accepted` on.
    pub async fn events(&self) -> Result<Vec<OperationEvent<OperationSnapshot<Op>>>, HarnessError> {
        let revision = self.get().await?.revision;
        let mut events = Vec::new();
        let mut stream = Box::pin(self.operations.watch(&self.id, Some(0)));
        while let Some(event) = stream.next().await {
            let event = event?;
            let last = event.snapshot().revision >= revision;
            events.push(event);
            if last {
                break;
            }
        }
        Ok(events)
    }

    /// Every progress payload recorded so far, in order.
    pub async fn progress(&self) -> Result<Vec<Op::Progress>, HarnessError> {
        Ok(self
            .events()
            .await?
            .into_iter()
            .filter(|event| event.kind() == opshost_api::EventKind::Progress)
            .filter_map(|event| event.snapshot().progress.clone())
            .collect())
    }

    /// Waits for the first snapshot (current or later) that satisfies `condition`.
    pub async fn until(
        &self,
        condition: impl Fn(&OperationSnapshot<Op>) -> bool,
    ) -> Result<OperationSnapshot<Op>, HarnessError> {
        let mut stream = Box::pin(self.operations.watch(&self.id, Some(0)));
        let found = tokio::time::timeout(PATIENCE, async {
            while let Some(event) = stream.next().await {
                let snapshot = event?.snapshot().clone();
                if condition(&snapshot) {
                    return Ok(Some(snapshot));
                }
            }
            Ok::<_, HarnessError>(None)
        })
        .await;
        match found {
            Ok(Ok(Some(snapshot))) => Ok(snapshot),
            Ok(Ok(None)) => Err(HarnessError::Timeout(format!(
                "operation {} ended without the condition holding",
                self.id
            ))),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(HarnessError::Timeout(format!(
                "the condition did not hold for operation {}",
                self.id
            ))),
        }
    }

    /// Sends signal `S`; returns its sequence number.
    pub async fn signal<S: Signal<Operation = Op>>(
        &self,
        input: &S::Input,
    ) -> Result<u64, HarnessError> {
        Ok(self.operations.signal::<S>(&self.id, input).await?)
    }

    /// Cancels the operation (the guest has the grace period to acknowledge) and returns its
    /// terminal snapshot.
    pub async fn cancel(&self) -> Result<OperationSnapshot<Op>, HarnessError> {
        Ok(self.operations.cancel(&self.id).await?)
    }
}
