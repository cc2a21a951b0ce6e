//! [`OutboundLog`]: the outbound requests of the operations run on this host.
//!
//! Kept in memory and bounded: the last [`PER_OPERATION`] requests of each of the last
//! [`OPERATIONS`] operations that sent any; older ones are counted as dropped. A host keeps
//! what its own runs sent, so on a shared store each host answers for the attempts it ran.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use opshost_api::{OutboundPage, OutboundRecord};

/// Requests kept per operation.
pub const PER_OPERATION: usize = 256;

/// Operations whose requests are kept.
pub const OPERATIONS: usize = 4096;

/// The requests kept for one operation, and how many older ones were dropped.
#[derive(Default)]
struct Kept {
    records: VecDeque<OutboundRecord>,
    dropped: u64,
}

/// See the module docs.
#[derive(Default)]
pub struct OutboundLog {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_operation: HashMap<String, Kept>,
    /// Operations in the order of their first request, to forget the oldest.
    order: VecDeque<String>,
}

impl OutboundLog {
    /// Records a request of operation `operation`.
    pub fn record(&self, operation: &str, record: OutboundRecord) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if !inner.by_operation.contains_key(operation) {
            if inner.order.len() >= OPERATIONS
                && let Some(oldest) = inner.order.pop_front()
            {
                inner.by_operation.remove(&oldest);
            }
            inner.order.push_back(operation.to_owned());
        }
        let kept = inner.by_operation.entry(operation.to_owned()).or_default();
        if kept.records.len() >= PER_OPERATION {
            kept.records.pop_front();
            kept.dropped += 1;
        }
        kept.records.push_back(record);
    }

    /// The requests of operation `operation` kept here, oldest first.
    pub fn page(&self, operation: &str) -> OutboundPage {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner
            .by_operation
            .get(operation)
            .map(|kept| OutboundPage {
                records: kept.records.iter().cloned().collect(),
                dropped: kept.dropped,
            })
            .unwrap_or_default()
    }
}
