//! [`LogSink`]: guests' log lines on their way to the store.
//!
//! A line is queued without waiting (a guest never waits on the store to log); one task per
//! runtime writes queued lines in batches, per operation and in order (the operations of one
//! batch at once, so that a store that commits in groups writes them in one), then tells
//! followers which operations have new lines. At most [`QUEUED`] lines wait; beyond that they are dropped
//! and counted, so a flood slows nothing down.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use futures::StreamExt;
use opshost_api::LogLine;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::store::OperationStore;

/// Lines that may wait for the store.
pub const QUEUED: usize = 65_536;

/// Lines written in one batch, at most.
const BATCH: usize = 1024;

/// Operations whose lines are written at once.
const CONCURRENT_APPENDS: usize = 32;

enum Queued {
    Line(String, LogLine),
    Flush(oneshot::Sender<()>),
}

/// See the module docs.
pub struct LogSink {
    store: Arc<dyn OperationStore>,
    queue: OnceLock<mpsc::Sender<Queued>>,
    appended: broadcast::Sender<String>,
    dropped: Arc<AtomicU64>,
}

impl LogSink {
    pub(crate) fn new(store: Arc<dyn OperationStore>) -> Self {
        Self {
            store,
            queue: OnceLock::new(),
            appended: broadcast::channel(1024).0,
            dropped: Arc::default(),
        }
    }

    /// The queue, its writer started on first use (from within a tokio runtime).
    fn queue(&self) -> &mpsc::Sender<Queued> {
        self.queue.get_or_init(|| {
            let (sender, receiver) = mpsc::channel(QUEUED);
            tokio::spawn(write(
                Arc::clone(&self.store),
                receiver,
                self.appended.clone(),
            ));
            sender
        })
    }

    /// Queues `line` for operation `id`; drops it (and counts it) when the queue is full.
    pub fn log(&self, id: &str, line: LogLine) {
        if self
            .queue()
            .try_send(Queued::Line(id.to_owned(), line))
            .is_err()
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Resolves once every line queued before the call is written (or could not be).
    pub async fn flush(&self) {
        let Some(queue) = self.queue.get() else {
            return;
        };
        let (done, written) = oneshot::channel();
        if queue.send(Queued::Flush(done)).await.is_ok() {
            let _ = written.await;
        }
    }

    /// The ids of operations as lines are written for them.
    pub fn appended(&self) -> broadcast::Receiver<String> {
        self.appended.subscribe()
    }

    /// Counts `lines` a run dropped over its rate.
    pub fn count_dropped(&self, lines: u64) {
        self.dropped.fetch_add(lines, Ordering::Relaxed);
    }

    /// Lines dropped since the host started: over a run's rate, or with the queue full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Writes queued lines in batches until every sender is gone.
async fn write(
    store: Arc<dyn OperationStore>,
    mut queue: mpsc::Receiver<Queued>,
    appended: broadcast::Sender<String>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while queue.recv_many(&mut batch, BATCH).await > 0 {
        let mut flushed = Vec::new();
        // Each operation's lines of the batch, in the order they came.
        let mut runs: Vec<(String, Vec<LogLine>)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for queued in batch.drain(..) {
            match queued {
                Queued::Line(id, line) => match index.get(&id) {
                    Some(&at) => runs[at].1.push(line),
                    None => {
                        index.insert(id.clone(), runs.len());
                        runs.push((id, vec![line]));
                    }
                },
                Queued::Flush(done) => flushed.push(done),
            }
        }
        let store = &store;
        let mut appends = futures::stream::iter(runs)
            .map(|(id, lines)| async move {
                let count = lines.len();
                (store.append_logs(&id, lines).await, id, count)
            })
            .buffer_unordered(CONCURRENT_APPENDS);
        while let Some((appended_now, id, count)) = appends.next().await {
            match appended_now {
                Ok(()) => {
                    let _ = appended.send(id);
                }
                Err(error) => {
                    tracing::warn!(operation = %id, lines = count, %error, "cannot store log lines");
                }
            }
        }
        for done in flushed {
            let _ = done.send(());
        }
    }
}
