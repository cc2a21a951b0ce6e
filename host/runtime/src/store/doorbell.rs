//! Doorbells: how a store tells the watchers of one operation that it changed.
//!
//! A [`Doorbell`] is held by whoever waits on an operation (a watch, a wait, a handler's
//! `next-signal`). Its value changes after every write to the operation, and it closes once the
//! operation is terminal. The map entry behind it lives exactly as long as someone holds a
//! doorbell for that operation: the last one dropped removes it, and a terminal write removes
//! it at once. So a subscription made after the end, or abandoned by a watcher that went away,
//! leaves nothing behind.
//!
//! One more bell rings after a change to any operation: followers of the whole store's feed
//! wait on it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

type Bells = HashMap<String, watch::Sender<u64>>;

/// The doorbells of one store, by operation id.
pub struct Doorbells {
    bells: Arc<Mutex<Bells>>,
    any: watch::Sender<u64>,
}

impl Default for Doorbells {
    fn default() -> Self {
        Self {
            bells: Arc::default(),
            any: watch::channel(0).0,
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
            .or_insert_with(|| watch::channel(0).0);
        Doorbell {
            receiver: Some(sender.subscribe()),
            id: id.to_owned(),
            bells: Arc::clone(&self.bells),
        }
    }

    /// A bell that rings after every change to any operation.
    pub fn any(&self) -> watch::Receiver<u64> {
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

    /// Rings every doorbell (after changes may have been missed).
    pub fn ring_all(&self) {
        bump(&self.any);
        lock(&self.bells).values().for_each(bump);
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

fn bump(sender: &watch::Sender<u64>) {
    sender.send_modify(|n| *n = n.wrapping_add(1));
}

fn lock(bells: &Mutex<Bells>) -> MutexGuard<'_, Bells> {
    bells.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A subscription to the changes of one operation; see [`Doorbells`].
pub struct Doorbell {
    /// Taken (and so dropped) under the map's lock when the doorbell is dropped.
    receiver: Option<watch::Receiver<u64>>,
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
