//! [`Usage`]: what one run of a component used, announced as it ends, for metrics.

use std::time::Duration;

use tokio::sync::broadcast;

/// What one run used: its CPU time in wasm and the most linear memory it held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// `handler` or `worker`.
    pub kind: &'static str,
    /// The operation (for a handler) or the queue (for a worker).
    pub name: String,
    /// CPU time spent running wasm.
    pub cpu: Duration,
    /// The most linear memory held at once, in bytes.
    pub peak_memory_bytes: usize,
}

/// Announces runs' usage to whoever listens (metrics); nothing is kept.
pub(crate) struct UsageFeed {
    sender: broadcast::Sender<Usage>,
}

impl UsageFeed {
    pub(crate) fn new() -> Self {
        Self {
            sender: broadcast::channel(1024).0,
        }
    }

    pub(crate) fn record(&self, usage: Usage) {
        let _ = self.sender.send(usage);
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Usage> {
        self.sender.subscribe()
    }
}
