//! Doorbells: how a store tells the watchers of one operation that it changed.
//!
//! A [`Doorbell`] is held by whoever waits on an operation (a watch, a wait, a handler's
//! `next-signal`). Its value changes after every write to the operation, and it closes once the
//! operation is terminal. The map entry behind it lives exactly as long as someone holds a
//! doorbell for that operation: the last one dropped removes it, and a terminal write removes
//! it at once. So a subscription made after the end, or abandoned by a watcher that went away,
//! leaves nothing behind.
//!
//! A ring says what a store knows of the change: a change short of the end, an end (with the
//! last snapshot when the store has it at hand), or that changes may have been missed. So a
//! waiter for the end reads the store only when it has to.
//!
//! One more bell rings after a change to any operation: followers of the whole store's feed
//! wait on it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use opshost_api::Snapshot;
use tokio::sync::watch;

/// What the latest rings of one doorbell said.
#[derive(Default)]
struct Chime {
    /// How many times changes may have been missed ([`Doorbells::ring_all`]).
    unsure: u64,
    /// The operation's last snapshot, once it ended and the store said it.
    last: Option<Arc<Snapshot>>,
}

type Bells = HashMap<String, watch::Sender<Chime>>;

/// What a doorbell heard (see [`Doorbell::rang`]).
#[derive(Debug)]
pub enum Rang {
    /// The operation changed, short of its end as far as the ring said.
    Changed,
    /// Changes may have been missed: read the operation to know where it stands.
    Unsure,
    /// The operation ended; with its last snapshot, unless the store did not have it at hand.
    Ended(Option<Arc<Snapshot>>),
}

/// The doorbells of one store, by operation id.
pub struct Doorbells {
    bells: Arc<Mutex<Bells>>,
    any: watch::Sender<()>,
}

impl Default for Doorbells {
    fn default() -> Self {
        Self {
            bells: Arc::default(),
            any: watch::channel(()).0,
        }
    }
}

impl Doorbells {
    /// No doorbells.
    pub fn new() -> Self {
        Self::default()
    }

    /// A doorbell for operation `id`.
    pub fn subscribe(&self, id: &str) -> Doorbell {
        let mut bells = lock(&self.bells);
        let sender = bells
            .entry(id.to_owned())
            .or_insert_with(|| watch::channel(Chime::default()).0);
        let receiver = sender.subscribe();
        let unsure = receiver.borrow().unsure;
        Doorbell {
            receiver: Some(receiver),
            unsure,
            id: id.to_owned(),
            bells: Arc::clone(&self.bells),
        }
    }

    /// A bell that rings after every change to any operation.
    pub fn any(&self) -> watch::Receiver<()> {
        self.any.subscribe()
    }

    /// Rings the doorbells of `id`; when `terminal`, closes them too, for nothing rings after
    /// a terminal change.
    pub fn ring(&self, id: &str, terminal: bool) {
        bump(&self.any);
        let mut bells = lock(&self.bells);
        if terminal {
            if let Some(sender) = bells.remove(id) {
                bump(&sender);
            }
        } else if let Some(sender) = bells.get(id) {
            bump(sender);
        }
    }

    /// Rings the doorbells of the operation `snapshot` is the latest of; when it is terminal,
    /// closes them with it, so that a waiter for the end has it without reading.
    pub fn changed(&self, snapshot: &Snapshot) {
        if !snapshot.is_terminal() {
            return self.ring(&snapshot.id, false);
        }
        bump(&self.any);
        let removed = lock(&self.bells).remove(&snapshot.id);
        if let Some(sender) = removed {
            let last = Arc::new(snapshot.clone());
            sender.send_modify(|chime| chime.last = Some(last));
        }
    }

    /// Rings every doorbell (after changes may have been missed).
    pub fn ring_all(&self) {
        bump(&self.any);
        lock(&self.bells)
            .values()
            .for_each(|sender| sender.send_modify(|chime| chime.unsure += 1));
    }

    /// How many operations have a doorbell held right now.
    pub fn len(&self) -> usize {
        lock(&self.bells).len()
    }

    /// Whether no doorbell is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn bump<T>(sender: &watch::Sender<T>) {
    sender.send_modify(|_| {});
}

fn lock(bells: &Mutex<Bells>) -> MutexGuard<'_, Bells> {
    bells.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A subscription to the changes of one operation; see [`Doorbells`].
pub struct Doorbell {
    /// Taken (and so dropped) under the map's lock when the doorbell is dropped.
    receiver: Option<watch::Receiver<Chime>>,
    /// How many unsure rings were heard so far.
    unsure: u64,
    id: String,
    bells: Arc<Mutex<Bells>>,
}

impl Doorbell {
    /// Waits for the next ring; an error means the doorbell closed (the operation ended).
    pub async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        match &mut self.receiver {
            Some(receiver) => receiver.changed().await,
            None => std::future::pending().await,
        }
    }

    /// Waits for the next ring and says what it meant.
    pub async fn rang(&mut self) -> Rang {
        let Some(receiver) = &mut self.receiver else {
            return std::future::pending().await;
        };
        if receiver.changed().await.is_err() {
            return Rang::Ended(None);
        }
        let (last, unsure) = {
            let chime = receiver.borrow_and_update();
            (chime.last.clone(), chime.unsure)
        };
        if last.is_some() || receiver.has_changed().is_err() {
            return Rang::Ended(last);
        }
        if unsure != self.unsure {
            self.unsure = unsure;
            return Rang::Unsure;
        }
        Rang::Changed
    }

    /// Marks every ring so far as seen.
    pub fn mark_seen(&mut self) {
        if let Some(receiver) = &mut self.receiver {
            receiver.borrow_and_update();
        }
    }
}

impl Drop for Doorbell {
    fn drop(&mut self) {
        let mut bells = lock(&self.bells);
        // Released under the lock, so that of holders dropped at once the last one sees no
        // receiver left and removes the entry. An entry made after a terminal ring removed this
        // doorbell's has receivers of its own, so it stays.
        drop(self.receiver.take());
        if bells
            .get(&self.id)
            .is_some_and(|sender| sender.receiver_count() == 0)
        {
            bells.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_doorbell_dropped_removes_its_entry() {
        let bells = Doorbells::new();
        let first = bells.subscribe("a");
        let second = bells.subscribe("a");
        assert_eq!(bells.len(), 1);
        drop(first);
        assert_eq!(bells.len(), 1);
        drop(second);
        assert!(bells.is_empty());
    }

    #[tokio::test]
    async fn a_terminal_ring_closes_and_removes_at_once() {
        let bells = Doorbells::new();
        let mut bell = bells.subscribe("a");
        bells.ring("a", false);
        assert!(bell.changed().await.is_ok());
        bells.ring("a", true);
        assert!(bells.is_empty());
        assert!(bell.changed().await.is_ok(), "the terminal ring is seen");
        assert!(bell.changed().await.is_err(), "then the doorbell is closed");
    }

    #[tokio::test]
    async fn a_change_to_its_end_closes_the_bells_with_the_last_snapshot() {
        let bells = Doorbells::new();
        let mut bell = bells.subscribe("a");
        let mut snapshot = Snapshot::accepted("a".into(), "s".into(), "T.Op".into(), "1".into());
        bells.changed(&snapshot);
        assert!(matches!(bell.rang().await, Rang::Changed));
        snapshot.state = opshost_api::OperationState::Completed;
        bells.changed(&snapshot);
        assert!(bells.is_empty(), "the end removes the entry");
        match bell.rang().await {
            Rang::Ended(Some(last)) => assert_eq!(last.state, snapshot.state),
            other => panic!("expected the end with its snapshot, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_ring_of_every_bell_is_heard_as_unsure_and_an_end_without_snapshot_as_such() {
        let bells = Doorbells::new();
        let mut bell = bells.subscribe("a");
        bells.ring_all();
        assert!(matches!(bell.rang().await, Rang::Unsure));
        bells.ring("a", false);
        assert!(matches!(bell.rang().await, Rang::Changed), "heard once");
        bells.ring("a", true);
        assert!(matches!(bell.rang().await, Rang::Ended(None)));
    }

    #[test]
    fn holders_dropped_at_once_on_many_threads_leave_no_entry() {
        let bells = Arc::new(Doorbells::new());
        for _ in 0..200 {
            let holders: Vec<Doorbell> = (0..8).map(|_| bells.subscribe("a")).collect();
            let barrier = Arc::new(std::sync::Barrier::new(holders.len()));
            let threads: Vec<_> = holders
                .into_iter()
                .map(|holder| {
                    let barrier = Arc::clone(&barrier);
                    std::thread::spawn(move || {
                        barrier.wait();
                        drop(holder);
                    })
                })
                .collect();
            threads
                .into_iter()
                .for_each(|thread| thread.join().unwrap());
            assert!(bells.is_empty());
        }
    }

    #[test]
    fn an_old_doorbell_dropped_leaves_a_newer_entry_alone() {
        let bells = Doorbells::new();
        let old = bells.subscribe("a");
        bells.ring("a", true);
        let new = bells.subscribe("a");
        drop(old);
        assert_eq!(bells.len(), 1);
        drop(new);
        assert!(bells.is_empty());
    }
}
