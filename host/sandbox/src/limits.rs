//! Per-operation limits: what one guest may use before its operation fails with
//! `LimitExceeded` naming the limit.
//!
//! Three steps, as for grants: the deployment's `[limits]` table gives defaults and each
//! handler's or worker's `limits` table overrides them field by field ([`LimitsTable`]); the
//! result is resolved once per component ([`Limits`]); each store gets its own accounting
//! ([`StoreLimits`]): every linear memory counted against `memory_mb`, and CPU time counted in
//! epoch ticks the guest spent running. Payload sizes, the progress rate and the operation's
//! history budget are checked by the control imports; the wall-clock deadline by the task
//! running the store.

use std::time::Duration;

use serde::Deserialize;
use wasmtime::ResourceLimiter;

use crate::engine::EPOCH_TICK;

/// The `[limits]` table of a deployment, or a handler's or worker's override of it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsTable {
    /// All linear memories of one store together, in MiB.
    pub memory_mb: Option<u64>,
    /// CPU time one run may spend in wasm, in milliseconds.
    pub cpu_ms: Option<u64>,
    /// Wall-clock time one handler run may take, in milliseconds.
    pub deadline_ms: Option<u64>,
    /// Progress events recorded per second; faster progress is coalesced to the latest.
    pub progress_per_second: Option<u32>,
    /// Largest input, progress, output, signal or job payload, in bytes of JSON.
    pub max_payload_bytes: Option<usize>,
    /// Progress one operation may record over its whole life, in bytes of JSON.
    pub max_history_bytes: Option<u64>,
    /// Events one operation's history may hold, its terminal event included.
    pub max_events: Option<u64>,
    /// Longest an outbound connection (TCP and TLS) may take to open, in milliseconds.
    pub http_connect_timeout_ms: Option<u64>,
    /// Longest from sending an outbound request to its response's head, in milliseconds.
    pub http_first_byte_timeout_ms: Option<u64>,
    /// Longest wait between two reads of an outbound response's body, in milliseconds.
    pub http_between_bytes_timeout_ms: Option<u64>,
    /// Largest outbound response body, in bytes.
    pub http_max_response_bytes: Option<u64>,
    /// Largest outbound request body, in bytes.
    pub http_max_request_bytes: Option<u64>,
    /// Outbound requests one run may have in flight at once.
    pub http_max_in_flight: Option<u32>,
    /// Outbound requests one run may send in all.
    pub http_max_requests: Option<u64>,
    /// Log lines (stdout, stderr and the `log` import together) one run may write a second;
    /// 0 keeps none.
    pub log_lines_per_second: Option<u32>,
    /// Bytes of log lines one run may write a second.
    pub log_bytes_per_second: Option<u64>,
}

/// The limits of one component's runs, every field resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// All linear memories of one store together, in bytes.
    pub memory_bytes: usize,
    /// CPU time one run may spend in wasm.
    pub cpu: Duration,
    /// Wall-clock time one handler run may take.
    pub deadline: Duration,
    /// Progress events recorded per second.
    pub progress_per_second: u32,
    /// Largest payload, in bytes of JSON.
    pub max_payload_bytes: usize,
    /// Progress one operation may record over its whole life, in bytes of JSON.
    pub max_history_bytes: u64,
    /// Events one operation's history may hold, its terminal event included.
    pub max_events: u64,
    /// Outbound HTTP: timeouts, response size and request counts of one run.
    pub http: HttpLimits,
    /// Log lines one run may write a second; more are dropped and counted. 0 turns capture
    /// off: none of the run's lines is kept (its outbound records included) or counted.
    pub log_lines_per_second: u32,
    /// Bytes of log lines one run may write a second.
    pub log_bytes_per_second: u64,
}

/// What one run may do over outbound HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Longest a connection (TCP and TLS) may take to open.
    pub connect_timeout: Duration,
    /// Longest from sending a request to its response's head.
    pub first_byte_timeout: Duration,
    /// Longest wait between two reads of a response's body.
    pub between_bytes_timeout: Duration,
    /// Largest response body, in bytes.
    pub max_response_bytes: u64,
    /// Largest request body, in bytes.
    pub max_request_bytes: u64,
    /// Requests in flight at once.
    pub max_in_flight: u32,
    /// Requests in all.
    pub max_requests: u64,
}

impl Default for HttpLimits {
    /// 5 s to connect, 30 s to the first byte and between bytes, 16 MiB responses and
    /// requests, 16 requests at once and 1,000 in all.
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            first_byte_timeout: Duration::from_secs(30),
            between_bytes_timeout: Duration::from_secs(30),
            max_response_bytes: 16 << 20,
            max_request_bytes: 16 << 20,
            max_in_flight: 16,
            max_requests: 1_000,
        }
    }
}

impl Default for Limits {
    /// 64 MiB, 30 s of CPU, a 24 h deadline, 20 progress events a second, 1 MiB payloads, a
    /// history of at most 16 MiB of progress in 10,000 events, and 100 log lines or 64 KiB of
    /// them a second.
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            cpu: Duration::from_secs(30),
            deadline: Duration::from_secs(24 * 3600),
            progress_per_second: 20,
            max_payload_bytes: 1 << 20,
            max_history_bytes: 16 << 20,
            max_events: 10_000,
            http: HttpLimits::default(),
            log_lines_per_second: 100,
            log_bytes_per_second: 64 << 10,
        }
    }
}

impl Limits {
    /// `own` over `defaults` over the built-in defaults.
    pub fn resolve(defaults: &LimitsTable, own: &LimitsTable) -> Self {
        let base = Self::default();
        Self {
            memory_bytes: own
                .memory_mb
                .or(defaults.memory_mb)
                .map_or(base.memory_bytes, |mb| (mb.max(1) as usize) << 20),
            cpu: own
                .cpu_ms
                .or(defaults.cpu_ms)
                .map_or(base.cpu, |ms| Duration::from_millis(ms.max(1))),
            deadline: own
                .deadline_ms
                .or(defaults.deadline_ms)
                .map_or(base.deadline, |ms| Duration::from_millis(ms.max(1))),
            progress_per_second: own
                .progress_per_second
                .or(defaults.progress_per_second)
                .map_or(base.progress_per_second, |rate| rate.max(1)),
            max_payload_bytes: own
                .max_payload_bytes
                .or(defaults.max_payload_bytes)
                .unwrap_or(base.max_payload_bytes),
            max_history_bytes: own
                .max_history_bytes
                .or(defaults.max_history_bytes)
                .unwrap_or(base.max_history_bytes),
            max_events: own
                .max_events
                .or(defaults.max_events)
                .unwrap_or(base.max_events),
            http: HttpLimits::resolve(defaults, own),
            log_lines_per_second: own
                .log_lines_per_second
                .or(defaults.log_lines_per_second)
                .unwrap_or(base.log_lines_per_second),
            log_bytes_per_second: own
                .log_bytes_per_second
                .or(defaults.log_bytes_per_second)
                .map_or(base.log_bytes_per_second, |n| n.max(1)),
        }
    }

    /// The shortest time between two recorded progress events.
    pub fn progress_interval(&self) -> Duration {
        Duration::from_secs(1) / self.progress_per_second.max(1)
    }

    /// Refuses a payload larger than `max_payload_bytes`.
    pub fn check_payload(&self, what: &str, bytes: usize) -> Result<(), LimitBreach> {
        if bytes > self.max_payload_bytes {
            return Err(LimitBreach::Payload {
                what: what.to_owned(),
                bytes,
                limit: self.max_payload_bytes,
            });
        }
        Ok(())
    }

    /// Refuses a progress of `bytes` that would take the operation's history beyond its
    /// budget: `recorded` bytes of progress so far, and its event at revision `revision + 1`,
    /// with room left for a cancel request and the terminal event.
    pub fn check_history(
        &self,
        recorded: u64,
        bytes: u64,
        revision: u64,
    ) -> Result<(), LimitBreach> {
        if revision + 3 > self.max_events {
            return Err(LimitBreach::Events {
                limit: self.max_events,
            });
        }
        if recorded + bytes > self.max_history_bytes {
            return Err(LimitBreach::History {
                bytes: recorded + bytes,
                limit: self.max_history_bytes,
            });
        }
        Ok(())
    }
}

impl HttpLimits {
    fn resolve(defaults: &LimitsTable, own: &LimitsTable) -> Self {
        let base = Self::default();
        let millis = |own: Option<u64>, default: Option<u64>, base: Duration| {
            own.or(default)
                .map_or(base, |ms| Duration::from_millis(ms.max(1)))
        };
        Self {
            connect_timeout: millis(
                own.http_connect_timeout_ms,
                defaults.http_connect_timeout_ms,
                base.connect_timeout,
            ),
            first_byte_timeout: millis(
                own.http_first_byte_timeout_ms,
                defaults.http_first_byte_timeout_ms,
                base.first_byte_timeout,
            ),
            between_bytes_timeout: millis(
                own.http_between_bytes_timeout_ms,
                defaults.http_between_bytes_timeout_ms,
                base.between_bytes_timeout,
            ),
            max_response_bytes: own
                .http_max_response_bytes
                .or(defaults.http_max_response_bytes)
                .unwrap_or(base.max_response_bytes),
            max_request_bytes: own
                .http_max_request_bytes
                .or(defaults.http_max_request_bytes)
                .unwrap_or(base.max_request_bytes),
            max_in_flight: own
                .http_max_in_flight
                .or(defaults.http_max_in_flight)
                .map_or(base.max_in_flight, |n| n.max(1)),
            max_requests: own
                .http_max_requests
                .or(defaults.http_max_requests)
                .unwrap_or(base.max_requests),
        }
    }
}

/// A limit a guest ran into: the trap (or refusal) that fails its operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitBreach {
    /// Linear memory would grow beyond `memory_mb`.
    #[error(
        "linear memory would grow to {desired} bytes, beyond the limit of {limit} bytes (limits.memory_mb)"
    )]
    Memory {
        /// All memories together after the growth asked for.
        desired: usize,
        /// The limit.
        limit: usize,
    },
    /// Tables would grow beyond what the memory limit allows.
    #[error(
        "a table would grow to {desired} elements, beyond the limit of {limit} (limits.memory_mb)"
    )]
    Table {
        /// Elements asked for.
        desired: usize,
        /// The limit.
        limit: usize,
    },
    /// The guest ran in wasm longer than `cpu_ms`.
    #[error("the guest used more than {} ms of CPU time (limits.cpu_ms)", .limit.as_millis())]
    Cpu {
        /// The limit.
        limit: Duration,
    },
    /// The run took longer than `deadline_ms`.
    #[error("the run took longer than its deadline of {} ms (limits.deadline_ms)", .limit.as_millis())]
    Deadline {
        /// The limit.
        limit: Duration,
    },
    /// A payload was larger than `max_payload_bytes`.
    #[error(
        "{what} of {bytes} bytes is larger than the limit of {limit} bytes (limits.max_payload_bytes)"
    )]
    Payload {
        /// Which payload, e.g. `output`.
        what: String,
        /// Its size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The operation's progress would exceed `max_history_bytes`.
    #[error(
        "the operation's progress would reach {bytes} bytes, beyond its history budget of {limit} bytes (limits.max_history_bytes)"
    )]
    History {
        /// Progress bytes with the refused one.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// The guest kept sending outbound requests after the host refused them for `limit`.
    #[error("{detail}; the guest kept on after {refusals} refusals (limits.{limit})")]
    Http {
        /// The limit, e.g. `http_max_requests`.
        limit: &'static str,
        /// The last refusal.
        detail: String,
        /// Refusals before the run was stopped.
        refusals: u32,
    },
    /// The operation's history would exceed `max_events`.
    #[error(
        "the operation's history would exceed {limit} events, its terminal event included (limits.max_events)"
    )]
    Events {
        /// The limit.
        limit: u64,
    },
}

impl LimitBreach {
    /// The name of the limit, as in the deployment config.
    pub fn limit(&self) -> &'static str {
        match self {
            Self::Memory { .. } | Self::Table { .. } => "memory_mb",
            Self::Cpu { .. } => "cpu_ms",
            Self::Deadline { .. } => "deadline_ms",
            Self::Payload { .. } => "max_payload_bytes",
            Self::History { .. } => "max_history_bytes",
            Self::Events { .. } => "max_events",
            Self::Http { limit, .. } => limit,
        }
    }

    /// The breach as the runtime's error.
    pub fn to_server_error(&self) -> opshost_runtime::ServerError {
        opshost_runtime::ServerError::LimitExceeded {
            limit: self.limit().to_owned(),
            message: self.to_string(),
        }
    }

    /// The breach behind a trap, if the trap is one.
    pub fn of_trap(trap: &wasmtime::Error) -> Option<&Self> {
        trap.chain().find_map(|cause| cause.downcast_ref::<Self>())
    }
}

/// Table elements allowed per MiB of the memory limit (a pointer each).
const TABLE_ELEMENTS_PER_MIB: usize = (1 << 20) / std::mem::size_of::<usize>();

/// One store's accounting: memory across all its linear memories, and CPU ticks.
#[derive(Debug)]
pub struct StoreLimits {
    limits: Limits,
    memory: usize,
    peak_memory: usize,
    ticks: u32,
}

impl StoreLimits {
    /// Fresh accounting under `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            memory: 0,
            peak_memory: 0,
            ticks: 0,
        }
    }

    /// The limits this store runs under.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The CPU time counted so far, and the most linear memory held at once.
    pub fn used(&self) -> (Duration, usize) {
        (EPOCH_TICK * self.ticks, self.peak_memory)
    }

    /// Called at each epoch tick the guest was running: counts it, and refuses once the CPU
    /// budget is spent.
    pub fn tick(&mut self) -> Result<(), LimitBreach> {
        self.ticks = self.ticks.saturating_add(1);
        if EPOCH_TICK * self.ticks > self.limits.cpu {
            return Err(LimitBreach::Cpu {
                limit: self.limits.cpu,
            });
        }
        Ok(())
    }
}

impl ResourceLimiter for StoreLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.memory - current + desired;
        if total > self.limits.memory_bytes {
            return Err(LimitBreach::Memory {
                desired: total,
                limit: self.limits.memory_bytes,
            }
            .into());
        }
        self.memory = total;
        self.peak_memory = self.peak_memory.max(total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let limit = (self.limits.memory_bytes >> 20).max(1) * TABLE_ELEMENTS_PER_MIB;
        if desired > limit {
            return Err(LimitBreach::Table { desired, limit }.into());
        }
        Ok(true)
    }
}
