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

/// See the module docs.
#[derive(Default)]
pub struct OutboundLog {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_operation: HashMap<String, OutboundPage>,
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
        let page = inner.by_operation.entry(operation.to_owned()).or_default();
        if page.records.len() >= PER_OPERATION {
            page.records.remove(0);
            page.dropped += 1;
        }
        page.records.push(record);
    }

    /// The requests of operation `operation` kept here, oldest first.
    pub fn page(&self, operation: &str) -> OutboundPage {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner
            .by_operation
            .get(operation)
            .cloned()
            .unwrap_or_default()
    }
}
