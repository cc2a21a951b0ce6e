//! The change feed: every change to every operation, in the store's order, live and
//! resumable from any cursor.
//!
//! One follower per host reads the store's feed once per burst of changes and hands each
//! change to every subscriber, so a thousand subscribers cost one read, not a thousand.
//! A subscriber first catches up from the store (from its cursor), then takes the follower's
//! changes, skipping any it already has. One that falls behind the follower by more than the
//! channel holds catches up from the store again, so a slow subscriber loses nothing and
//! holds nothing back. The follower runs only while someone subscribes.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::sync::{Mutex, broadcast};

use crate::error::ServerError;
use crate::store::{Change, ChangeCursor, OperationStore};

/// Changes read from the store at once.
const BATCH: usize = 512;

/// Changes the follower holds for subscribers that are behind, before they lag.
const CAPACITY: usize = 16_384;

/// How often the follower reads without a ring: a change made visible by a transaction ending
/// elsewhere rings nothing (PostgreSQL), nor does a notice that was lost.
const POLL: Duration = Duration::from_millis(500);

/// How soon the follower reads again after a ring that showed nothing new yet.
const RECHECK: Duration = Duration::from_millis(25);

/// A stream of changes, oldest first.
pub type ChangeStream = Pin<Box<dyn Stream<Item = Result<Arc<Change>, ServerError>> + Send>>;

/// A subscription to the change feed: where it starts and what follows.
pub struct ChangeWatch {
    /// The cursor the stream starts after: resuming from it misses nothing.
    pub start: ChangeCursor,
    /// Every change after `start`, live.
    pub changes: ChangeStream,
}

/// The feed of one store, with its follower while anyone subscribes.
pub(crate) struct ChangeFeed {
    store: Arc<dyn OperationStore>,
    sender: broadcast::Sender<Arc<Change>>,
    /// Whether the follower runs; taken to start it and by the follower to stop.
    following: Mutex<bool>,
}

impl ChangeFeed {
    pub(crate) fn new(store: Arc<dyn OperationStore>) -> Arc<Self> {
        Arc::new(Self {
            store,
            sender: broadcast::channel(CAPACITY).0,
            following: Mutex::new(false),
        })
    }

    /// Every change after `after` (after the latest one when `None`), live.
    pub(crate) async fn subscribe(
        self: &Arc<Self>,
        after: Option<ChangeCursor>,
    ) -> Result<ChangeWatch, ServerError> {
        // Subscribed before the head is read: every change after it comes live or from the
        // store. A follower started now starts there too.
        let (live, head) = {
            let mut following = self.following.lock().await;
            let live = self.sender.subscribe();
            let head = self.store.change_head().await?;
            if !*following {
                *following = true;
                tokio::spawn(Arc::clone(self).follow(head));
            }
            (live, head)
        };
        let start = match after {
            Some(cursor) => {
                check_cursor(cursor, head)?;
                cursor
            }
            None => head,
        };
        let state = Subscriber {
            store: Arc::clone(&self.store),
            live,
            last: start,
            pending: VecDeque::new(),
            catching_up: true,
            failed: false,
        };
        let changes = futures::stream::unfold(state, |mut subscriber| async move {
            let next = subscriber.next().await?;
            Some((next, subscriber))
        });
        Ok(ChangeWatch {
            start,
            changes: Box::pin(changes),
        })
    }

    /// Reads the store's new changes at every ring (and every [`POLL`]) and hands them to the
    /// subscribers, until none is left.
    async fn follow(self: Arc<Self>, mut last: ChangeCursor) {
        let mut bell = self.store.subscribe_changes();
        let mut rang = false;
        loop {
            bell.borrow_and_update();
            let found = match self.store.changes_after(last, BATCH).await {
                Ok(changes) => {
                    let found = changes.len();
                    for change in changes {
                        last = change.cursor;
                        let _ = self.sender.send(Arc::new(change));
                    }
                    found
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot read the change feed");
                    0
                }
            };
            {
                let mut following = self.following.lock().await;
                if self.sender.receiver_count() == 0 {
                    *following = false;
                    return;
                }
            }
            if found == BATCH {
                continue;
            }
            let wait = if rang && found == 0 { RECHECK } else { POLL };
            rang = tokio::select! {
                changed = bell.changed() => changed.is_ok(),
                () = tokio::time::sleep(wait) => false,
            };
        }
    }
}

/// Refuses a cursor this store never gave: one ahead of the feed (a future number, or one of
/// another store or of an in-memory store before a restart), one with an epoch where the
/// store numbers changes by `seq` alone, or one without where it numbers them by epoch.
fn check_cursor(cursor: ChangeCursor, head: ChangeCursor) -> Result<(), ServerError> {
    // A store of epochs never gives epoch 0 but for the very start (`0`).
    let foreign = if head.epoch == 0 {
        cursor.epoch != 0
    } else {
        cursor.epoch == 0 && cursor.seq != 0
    };
    if cursor > head || foreign {
        return Err(ServerError::InvalidInput {
            message: format!(
                "change cursor `{cursor}` is not one of this store's (its latest is `{head}`): \
                 resume from a cursor this host gave, or watch from now without one"
            ),
            issues: Vec::new(),
        });
    }
    Ok(())
}

/// One subscriber's place in the feed.
struct Subscriber {
    store: Arc<dyn OperationStore>,
    live: broadcast::Receiver<Arc<Change>>,
    last: ChangeCursor,
    pending: VecDeque<Arc<Change>>,
    catching_up: bool,
    /// A read failed: the stream ended with that error, to be resumed from `last`.
    failed: bool,
}

impl Subscriber {
    /// The next change after `last`; `None` once the feed is gone or after an error.
    async fn next(&mut self) -> Option<Result<Arc<Change>, ServerError>> {
        if self.failed {
            return None;
        }
        loop {
            if let Some(change) = self.pending.pop_front() {
                self.last = change.cursor;
                return Some(Ok(change));
            }
            if self.catching_up {
                match self.store.changes_after(self.last, BATCH).await {
                    Ok(changes) => {
                        self.catching_up = changes.len() == BATCH;
                        self.pending.extend(changes.into_iter().map(Arc::new));
                    }
                    Err(error) => {
                        self.failed = true;
                        return Some(Err(error.into()));
                    }
                }
                continue;
            }
            match self.live.recv().await {
                Ok(change) if change.cursor > self.last => self.pending.push_back(change),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => self.catching_up = true,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use opshost_api::Snapshot;

    use super::*;
    use crate::store::{MemoryStore, Owner, StoredOperation};

    async fn create(store: &MemoryStore, id: &str) {
        let snapshot = Snapshot::accepted(id.into(), "svc".into(), "Op".into(), "v1".into());
        let operation = StoredOperation {
            snapshot,
            input: None,
            owner: Owner::default(),
        };
        store.create(operation).await.unwrap();
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_catches_up_from_the_store_in_order() {
        let store = Arc::new(MemoryStore::new());
        let feed = ChangeFeed::new(store.clone());
        let mut slow = feed.subscribe(None).await.unwrap();
        let count = CAPACITY + BATCH + 10;
        for n in 0..count {
            create(&store, &format!("op-{n:05}")).await;
            if n % 256 == 0 {
                // Lets the follower hand the changes out meanwhile, so that the slow
                // subscriber's channel overflows.
                tokio::task::yield_now().await;
            }
        }
        let mut ids = Vec::with_capacity(count);
        while ids.len() < count {
            let change = slow.changes.next().await.unwrap().unwrap();
            ids.push(change.event.snapshot().id.clone());
        }
        let expected: Vec<String> = (0..count).map(|n| format!("op-{n:05}")).collect();
        assert_eq!(ids, expected);
    }

    #[tokio::test]
    async fn the_follower_stops_once_nobody_subscribes_and_starts_again_for_the_next() {
        let store = Arc::new(MemoryStore::new());
        let feed = ChangeFeed::new(store.clone());
        let first = feed.subscribe(None).await.unwrap();
        drop(first);
        create(&store, "wakes-the-follower").await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while *feed.following.lock().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the follower runs on"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut second = feed.subscribe(None).await.unwrap();
        create(&store, "seen").await;
        let change = second.changes.next().await.unwrap().unwrap();
        assert_eq!(change.event.snapshot().id, "seen");
        assert!(change.cursor > second.start);
    }
}
