//! The `opshost:operation/control` and `opshost:operation/job` imports, bound to the one
//! operation a store handles (a handler's, or the one a worker's job owns or resumed).
//!
//! Each call goes through the [`OperationRuntime`] (and for jobs the [`Job`] handle), so
//! guests get the same validation and state rules as native code; a refused call returns a
//! `control-error` and leaves the operation unchanged. Two limits are enforced here: payload
//! sizes (a breach fails the run with `LimitExceeded`) and the progress rate (progress faster
//! than it is coalesced: the latest is recorded when the rate allows).

use std::sync::Arc;
use std::time::Duration;

use opshost_api::{ErrorCode, ErrorInfo, LogLevel, LogStream};
use opshost_jobs::{Job, WorkerError};
use opshost_runtime::{OperationRuntime, Run, ServerError, SignalWait, until_stored};
use tokio_util::sync::CancellationToken;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::bindings::opshost::operation::control::Host;
use crate::bindings::opshost::operation::log;
use crate::bindings::opshost::operation::types::{self, ControlError, Failure, Signal};
use crate::bindings::worker::opshost::operation::job;
use crate::capture::Capture;
use crate::clock::{Clock, SystemClock};
use crate::egress::Egress;
use crate::faults::{Fault, Faults, Import};
use crate::limits::{LimitBreach, Limits, StoreLimits};

/// What every store of a host shares: its clock, and the faults a test injects.
#[derive(Clone)]
pub struct RunEnv {
    /// Time for `sleep`, `next-signal` timeouts and the WASI clocks.
    pub clock: Arc<dyn Clock>,
    /// Faults to inject into the control imports (tests only).
    pub faults: Option<Arc<Faults>>,
}

impl Default for RunEnv {
    /// The system clock and no faults.
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            faults: None,
        }
    }
}

/// The operation a store's control imports act on.
enum Binding {
    /// None yet: a worker whose job owns no operation, until it resumes one.
    Unbound,
    /// Known by id; its run on this host is joined at the first call that needs it.
    Id(String),
    /// Its run.
    Run(Arc<Run>),
}

/// Per-store state of one guest: WASI, outbound HTTP, limits, the operation its store is bound
/// to (through that operation's [`Run`]), and a worker's job.
pub struct GuestState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    egress: Egress,
    capture: Arc<Capture>,
    table: ResourceTable,
    runtime: OperationRuntime,
    bound: Binding,
    signal_cursor: u64,
    job: Option<Job>,
    limits: StoreLimits,
    breach: Option<LimitBreach>,
    progress: Arc<tokio::sync::Mutex<ProgressGate>>,
    env: RunEnv,
}

/// Progress recorded last (on the run's clock), the latest one waiting for the rate to allow
/// it, and how many bytes of progress the operation recorded (read once, then counted).
#[derive(Default)]
struct ProgressGate {
    last: Option<Duration>,
    pending: Option<(serde_json::Value, u64)>,
    scheduled: bool,
    recorded: Option<u64>,
}

impl ProgressGate {
    /// Records `value` (`bytes` of JSON) and counts it.
    async fn record(
        &mut self,
        run: &Run,
        value: serde_json::Value,
        bytes: u64,
    ) -> Result<(), ServerError> {
        run.progress(value).await?;
        self.recorded = Some(self.recorded.unwrap_or(0) + bytes);
        Ok(())
    }
}

impl GuestState {
    /// State of a handler bound to `run`'s operation.
    pub fn new(
        runtime: OperationRuntime,
        run: Arc<Run>,
        wasi: WasiCtx,
        egress: Egress,
        capture: Arc<Capture>,
        limits: Limits,
        env: RunEnv,
    ) -> Self {
        Self {
            env,
            wasi,
            http: WasiHttpCtx::new(),
            egress,
            capture,
            table: ResourceTable::new(),
            runtime,
            bound: Binding::Run(run),
            signal_cursor: 0,
            job: None,
            limits: StoreLimits::new(limits),
            breach: None,
            progress: Default::default(),
        }
    }

    /// State of a worker running `job`, bound to the operation it owns, if any.
    pub fn for_job(
        runtime: OperationRuntime,
        job: Job,
        wasi: WasiCtx,
        egress: Egress,
        capture: Arc<Capture>,
        limits: Limits,
        env: RunEnv,
    ) -> Self {
        Self {
            env,
            wasi,
            http: WasiHttpCtx::new(),
            egress,
            capture,
            table: ResourceTable::new(),
            runtime,
            bound: match job.operation_id() {
                Some(id) => Binding::Id(id.to_owned()),
                None => Binding::Unbound,
            },
            signal_cursor: 0,
            job: Some(job),
            limits: StoreLimits::new(limits),
            breach: None,
            progress: Default::default(),
        }
    }

    /// The run of the operation this store is bound to, joined on first use.
    async fn run(&mut self) -> Result<Arc<Run>, ControlError> {
        let id = match &self.bound {
            Binding::Run(run) => return Ok(Arc::clone(run)),
            Binding::Id(id) => id.clone(),
            Binding::Unbound => {
                return Err(ControlError::Internal(
                    "no operation is bound: this job owns none (call `job.resume` first)".into(),
                ));
            }
        };
        let run = self.runtime.attach(&id).await.map_err(control_error)?;
        self.bound = Binding::Run(Arc::clone(&run));
        Ok(run)
    }

    /// Applies the fault planned for this call of `import`, if any.
    async fn fault(&mut self, import: Import) -> Result<(), ControlError> {
        let Some(fault) = self.env.faults.as_ref().and_then(|f| f.before(import)) else {
            return Ok(());
        };
        match fault {
            Fault::Refuse(message) => Err(ControlError::Internal(message)),
            Fault::RequestCancel => {
                let id = self.run().await?.id().to_owned();
                self.runtime
                    .request_cancel(&id)
                    .await
                    .map(drop)
                    .map_err(control_error)
            }
        }
    }

    /// This store's memory and CPU accounting.
    pub fn limits_mut(&mut self) -> &mut StoreLimits {
        &mut self.limits
    }

    /// What the run used so far: CPU time in wasm and the most linear memory held.
    pub fn used(&self) -> (std::time::Duration, usize) {
        self.limits.used()
    }

    /// Called at each epoch tick the guest was running: counts CPU, and stops a guest that
    /// ran out of it or kept on sending requests the host refused.
    pub fn tick(&mut self) -> Result<(), LimitBreach> {
        if let Some(breach) = self.egress.breach() {
            self.breach.get_or_insert_with(|| breach.clone());
            return Err(breach);
        }
        if self.egress.take_waited() {
            // The tick passed while the guest waited for the network, not while it ran.
            return Ok(());
        }
        self.limits.tick()
    }

    /// The limit a control call or outbound HTTP ran into, if any: it decides how the run
    /// ends.
    pub fn breach(&self) -> Option<LimitBreach> {
        self.breach.clone().or_else(|| self.egress.breach())
    }

    /// Refuses a payload beyond the size limit. A handler's operation fails at once; a
    /// worker's attempt fails when it returns.
    async fn check_payload(&mut self, what: &str, text: &str) -> Result<(), ControlError> {
        match self.limits.limits().check_payload(what, text.len()) {
            Ok(()) => Ok(()),
            Err(breach) => Err(self.breached(breach).await),
        }
    }

    /// Records a breach: a handler's operation fails with it at once; a worker's attempt fails
    /// when it returns. Returns the error the guest gets.
    async fn breached(&mut self, breach: LimitBreach) -> ControlError {
        let message = breach.to_string();
        if self.job.is_none()
            && let Binding::Run(run) = &self.bound
        {
            let error = breach.to_server_error().to_info();
            if let Err(failed) = run.fail(error).await {
                tracing::debug!(id = %run.id(), %failed, "cannot fail the operation for a limit");
            }
        }
        self.breach = Some(breach);
        ControlError::LimitExceeded(message)
    }

    /// Checks `value` (`bytes` of JSON) against the schema and the operation's history
    /// budget, then records it now if the rate allows, else keeps it as the latest waiting one,
    /// to be recorded by a timer once the interval since the last one has passed. The gate
    /// stays locked while a progress is written, so the timer and [`Self::flush_progress`]
    /// never both write one, nor one after the other's terminal write.
    async fn gated_progress(
        &mut self,
        run: Arc<Run>,
        value: serde_json::Value,
        bytes: u64,
    ) -> Result<(), ControlError> {
        let interval = self.limits.limits().progress_interval();
        let clock = Arc::clone(&self.env.clock);
        let now = clock.monotonic();
        let progress = Arc::clone(&self.progress);
        let mut gate = progress.lock().await;
        let current = run.check_progress(&value).await.map_err(control_error)?;
        let recorded = match gate.recorded {
            Some(recorded) => recorded,
            None if current.progress.is_none() => 0,
            None => run.progress_bytes().await.map_err(control_error)?,
        };
        gate.recorded = Some(recorded);
        let budget = self
            .limits
            .limits()
            .check_history(recorded, bytes, current.revision);
        if let Err(breach) = budget {
            return Err(self.breached(breach).await);
        }
        if !gate.scheduled && gate.last.is_none_or(|last| now >= last + interval) {
            gate.last = Some(now);
            return gate.record(&run, value, bytes).await.map_err(control_error);
        }
        gate.pending = Some((value, bytes));
        if !gate.scheduled {
            gate.scheduled = true;
            let at = gate.last.map_or(now, |last| last + interval);
            let gate = Arc::clone(&self.progress);
            tokio::spawn(async move {
                clock.timer(at.saturating_sub(now)).await;
                let mut gate = gate.lock().await;
                gate.scheduled = false;
                gate.last = Some(clock.monotonic());
                if let Some((value, bytes)) = gate.pending.take()
                    && let Err(error) = gate.record(&run, value, bytes).await
                {
                    tracing::debug!(id = %run.id(), %error, "coalesced progress not recorded");
                }
            });
        }
        Ok(())
    }

    /// Records the progress still waiting for the rate, if any: called before the guest ends
    /// its operation, so the terminal snapshot carries the last progress it reported.
    async fn flush_progress(&mut self, run: &Run) {
        let mut gate = self.progress.lock().await;
        if let Some((value, bytes)) = gate.pending.take()
            && let Err(error) = gate.record(run, value, bytes).await
        {
            tracing::debug!(id = %run.id(), %error, "latest progress not recorded before the end");
        }
    }

    /// Fires when the job (if any) is cancelled; never otherwise.
    fn job_cancellation(&self) -> CancellationToken {
        self.job.as_ref().map(Job::cancellation).unwrap_or_default()
    }
}

impl WasiHttpView for GuestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.egress,
        }
    }
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn control_error(error: ServerError) -> ControlError {
    match error {
        ServerError::InvalidInput { .. } => ControlError::InvalidPayload(error.to_string()),
        ServerError::OperationTerminal { .. } | ServerError::Superseded { .. } => {
            ControlError::Terminal(error.to_string())
        }
        ServerError::LimitExceeded { .. } => ControlError::LimitExceeded(error.to_string()),
        other => ControlError::Internal(other.to_string()),
    }
}

fn json(text: &str, what: &str) -> Result<serde_json::Value, ControlError> {
    serde_json::from_str(text)
        .map_err(|e| ControlError::InvalidPayload(format!("{what} is not JSON: {e}")))
}

impl types::Host for GuestState {}

impl log::Host for GuestState {
    async fn write(&mut self, level: log::Level, message: String, fields: Vec<(String, String)>) {
        let level = match level {
            log::Level::Trace => LogLevel::Trace,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        self.capture.line(
            LogStream::Log,
            level,
            &message,
            fields.into_iter().collect(),
        );
    }
}

impl Host for GuestState {
    async fn started(&mut self) -> Result<(), ControlError> {
        self.fault(Import::Started).await?;
        self.run()
            .await?
            .started()
            .await
            .map(drop)
            .map_err(control_error)
    }

    async fn progress(&mut self, payload: String) -> Result<(), ControlError> {
        self.fault(Import::Progress).await?;
        self.check_payload("progress", &payload).await?;
        let value = json(&payload, "progress")?;
        let run = self.run().await?;
        let bytes = opshost_runtime::json_len(&value);
        self.gated_progress(run, value, bytes).await
    }

    async fn complete(&mut self, output: String) -> Result<(), ControlError> {
        self.fault(Import::Complete).await?;
        self.check_payload("output", &output).await?;
        let value = json(&output, "output")?;
        let run = self.run().await?;
        self.flush_progress(&run).await;
        self.capture.finish().await;
        until_stored(|| run.complete(value.clone()))
            .await
            .map(drop)
            .map_err(control_error)
    }

    async fn fail(&mut self, failure: Failure) -> Result<(), ControlError> {
        self.fault(Import::Fail).await?;
        let details = match failure.details {
            Some(text) => {
                self.check_payload("failure details", &text).await?;
                Some(json(&text, "failure details")?)
            }
            None => None,
        };
        let error = ErrorInfo {
            code: ErrorCode::HandlerFailed,
            message: failure.message,
            details,
        };
        let run = self.run().await?;
        self.flush_progress(&run).await;
        self.capture.finish().await;
        until_stored(|| run.fail(error.clone()))
            .await
            .map(drop)
            .map_err(control_error)
    }

    async fn cancel_requested(&mut self) -> bool {
        if self.job.as_ref().is_some_and(Job::is_cancelled) {
            return true;
        }
        match self.run().await {
            Ok(run) => run.cancel_requested().await.unwrap_or(false),
            Err(_) => false,
        }
    }

    async fn acknowledge_cancel(&mut self) -> Result<(), ControlError> {
        let run = self.run().await?;
        self.flush_progress(&run).await;
        self.capture.finish().await;
        until_stored(|| run.acknowledge_cancel())
            .await
            .map(drop)
            .map_err(control_error)
    }

    async fn next_signal(
        &mut self,
        timeout_ms: Option<u64>,
    ) -> Result<Option<Signal>, ControlError> {
        self.fault(Import::NextSignal).await?;
        let run = self.run().await?;
        let job = self.job_cancellation();
        let timeout: futures::future::BoxFuture<'static, ()> = match timeout_ms {
            Some(ms) => self.env.clock.sleep(Duration::from_millis(ms)),
            None => Box::pin(std::future::pending()),
        };
        let waited = tokio::select! {
            waited = run.next_signal(self.signal_cursor, None) => waited,
            _ = job.cancelled() => Ok(SignalWait::Cancelled),
            _ = timeout => Ok(SignalWait::TimedOut),
        };
        match waited {
            Ok(SignalWait::Signal(signal)) => {
                self.signal_cursor = signal.sequence;
                Ok(Some(Signal {
                    sequence: signal.sequence,
                    name: signal.name,
                    payload: signal.payload.to_string(),
                }))
            }
            Ok(SignalWait::TimedOut) => Ok(None),
            Ok(SignalWait::Cancelled) => Err(ControlError::Cancelled),
            Err(error) => Err(control_error(error)),
        }
    }

    async fn sleep(&mut self, ms: u64) -> Result<(), ControlError> {
        self.fault(Import::Sleep).await?;
        let token = match self.run().await {
            Ok(run) => run.cancellation(),
            Err(_) => CancellationToken::new(),
        };
        let job = self.job_cancellation();
        tokio::select! {
            biased;
            _ = token.cancelled() => Err(ControlError::Cancelled),
            _ = job.cancelled() => Err(ControlError::Cancelled),
            _ = self.env.clock.sleep(Duration::from_millis(ms)) => Ok(()),
        }
    }

    async fn hand_off(&mut self, queue: String, payload: String) -> Result<String, ControlError> {
        self.fault(Import::HandOff).await?;
        self.check_payload("job payload", &payload).await?;
        let value = json(&payload, "job payload")?;
        let run = self.run().await?;
        until_stored(|| run.hand_off(&queue, value.clone()))
            .await
            .map_err(control_error)
    }
}

impl job::Host for GuestState {
    async fn progress(&mut self, payload: String) -> Result<(), ControlError> {
        self.check_payload("job progress", &payload).await?;
        let value = json(&payload, "job progress")?;
        let Some(job) = &self.job else {
            return Err(ControlError::Internal("this store runs no job".into()));
        };
        job.progress(value)
            .await
            .map_err(|WorkerError(error)| match error.code {
                ErrorCode::InvalidInput => ControlError::InvalidPayload(error.message),
                _ => ControlError::Internal(error.message),
            })
    }

    async fn cancel_requested(&mut self) -> bool {
        Host::cancel_requested(self).await
    }

    async fn resume(&mut self, operation_id: String) -> Result<(), ControlError> {
        let run = self
            .runtime
            .attach(&operation_id)
            .await
            .map_err(control_error)?;
        // What was reported for the operation bound so far stays with it.
        if let Binding::Run(previous) = &self.bound {
            let previous = Arc::clone(previous);
            self.flush_progress(&previous).await;
        }
        self.progress = Default::default();
        self.bound = Binding::Run(run);
        self.signal_cursor = 0;
        Ok(())
    }
}
