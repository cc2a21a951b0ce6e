//! Watching an operation: its events from a revision on, live, ending with the terminal one.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use opshost_api::OperationEvent;

use crate::error::ServerError;
use crate::log::OperationLog;
use crate::store::Doorbell;

/// A stream of an operation's events.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<OperationEvent, ServerError>> + Send>>;

impl OperationLog {
    /// Events of the operation, ending with the terminal event. See
    /// [`crate::OperationRuntime::watch`].
    pub(crate) fn watch(self: &Arc<Self>, id: &str, after: Option<u64>) -> EventStream {
        struct Watch {
            log: Arc<OperationLog>,
            id: String,
            last: u64,
            bell: Doorbell,
            pending: VecDeque<OperationEvent>,
            done: bool,
            first: bool,
            closed: bool,
            end_checked: bool,
        }
        let state = Watch {
            bell: self.subscribe(id),
            log: Arc::clone(self),
            id: id.to_owned(),
            last: after.unwrap_or(0),
            pending: VecDeque::new(),
            done: false,
            first: after.is_none(),
            closed: false,
            end_checked: false,
        };
        Box::pin(futures::stream::unfold(state, |mut w| async move {
            loop {
                if w.done {
                    return None;
                }
                if let Some(event) = w.pending.pop_front() {
                    w.last = event.snapshot().revision;
                    w.done = event.snapshot().is_terminal();
                    return Some((Ok(event), w));
                }
                w.bell.mark_seen();
                let mut events = match w.log.events_after(&w.id, w.last).await {
                    Ok(events) => events,
                    Err(error) => {
                        w.done = true;
                        return Some((Err(error), w));
                    }
                };
                if events.is_empty() {
                    if w.last == 0 {
                        w.done = true;
                        return Some((Err(ServerError::OperationNotFound { id: w.id.clone() }), w));
                    }
                    if w.closed {
                        return None;
                    }
                    // Resumed at or past the end: nothing more will come. Checked once: a later
                    // end closes the doorbell, which was taken before the first read.
                    if !std::mem::replace(&mut w.end_checked, true) {
                        match w.log.get(&w.id).await {
                            Ok(snapshot)
                                if snapshot.is_terminal() && snapshot.revision <= w.last =>
                            {
                                return None;
                            }
                            Ok(_) => {}
                            Err(error) => {
                                w.done = true;
                                return Some((Err(error), w));
                            }
                        }
                    }
                    // A closed doorbell means the operation is terminal: read once more.
                    w.closed = w.bell.changed().await.is_err();
                    continue;
                }
                if std::mem::take(&mut w.first) && events.len() > 1 {
                    events.drain(..events.len() - 1);
                }
                w.pending.extend(events);
            }
        }))
    }
}
