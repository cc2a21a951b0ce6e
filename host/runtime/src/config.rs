//! The runtime's tunables, and what a host does with operations it finds unfinished.

use std::time::Duration;

/// Tunables of a runtime.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// How long a cancelled handler has to clean up before it is stopped by force.
    pub cancel_grace: Duration,
    /// How many handlers run on this host at once; further accepted operations wait as
    /// `pending` for a slot. `None` means no limit.
    pub concurrency: Option<usize>,
    /// How many accepted operations may wait for a slot; further starts are refused with
    /// `Overloaded`.
    pub backlog: usize,
    /// Largest input or signal payload a caller may send, in bytes of JSON.
    pub max_payload_bytes: usize,
}

impl Default for RuntimeConfig {
    /// A 5 s cancel grace, no concurrency limit, a backlog of 10,000 and 1 MiB payloads.
    fn default() -> Self {
        Self {
            cancel_grace: Duration::from_secs(5),
            concurrency: None,
            backlog: 10_000,
            max_payload_bytes: 1 << 20,
        }
    }
}

/// What a host does with an operation it finds unfinished when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Run its handler again with `attempt + 1`; once `max_attempts` ran, fail it.
    Retry {
        /// Attempts in all, the first included.
        max_attempts: u32,
    },
    /// Fail it with `HostRestarted`.
    Fail,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self::Retry { max_attempts: 3 }
    }
}
