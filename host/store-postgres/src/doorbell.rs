//! Doorbells across hosts. A committed write rings this host's watchers at once and joins the
//! next notice to the other hosts: one `NOTIFY` carries every operation changed since the
//! previous one, so a burst of progress costs one notice, not one per event. Each host listens
//! on its own connection and rings its watchers of the operations named: a notice says *which*
//! operations changed, and which of them ended (a waiter for the end reads the store only
//! then; a watcher reads the new events).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use deadpool_postgres::{GenericClient, Pool};
use futures::StreamExt;
use opshost_api::Snapshot;
use tokio::sync::{Notify, mpsc};
use tokio_postgres::{AsyncMessage, NoTls};

/// The channel every host notifies and listens on.
const CHANNEL: &str = "opshost_changes";

/// The channel on which a host that shuts down names itself: it gave up its operations.
pub(crate) const HOSTS_CHANNEL: &str = "opshost_hosts";

/// Room for one notice's payload (PostgreSQL allows just under 8000 bytes).
const NOTICE_BYTES: usize = 7000;

/// How long a lost listener waits before it connects again.
const RECONNECT: Duration = Duration::from_secs(1);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// This host's doorbells, and the changes not yet told to the other hosts.
pub(crate) struct Doorbells {
    /// Names this host in its notices, so that it skips its own.
    host: String,
    pub(crate) bells: opshost_runtime::store::Doorbells,
    /// Rung only for the changes the other hosts announce.
    pub(crate) elsewhere: opshost_runtime::store::Doorbells,
    /// Changed operations since the last notice, and whether each became terminal.
    unsent: Mutex<BTreeMap<String, bool>>,
    wake: Notify,
    /// Told when another host gave up its operations.
    pub(crate) released: Notify,
}

impl Doorbells {
    /// Doorbells of host `host`.
    pub(crate) fn new(host: String) -> Self {
        Self {
            host,
            bells: Default::default(),
            elsewhere: Default::default(),
            unsent: Mutex::default(),
            wake: Notify::new(),
            released: Notify::new(),
        }
    }

    /// After a commit that changed `id` (short of its end): rings here, and queues the change
    /// for the others.
    pub(crate) fn changed(&self, id: &str) {
        self.bells.ring(id, false);
        self.queue(id, false);
    }

    /// After a commit that moved an operation to `snapshot`: rings here (closing the bells
    /// with it at the end), and queues the change for the others.
    pub(crate) fn moved(&self, snapshot: &Snapshot) {
        self.bells.changed(snapshot);
        self.queue(&snapshot.id, snapshot.is_terminal());
    }

    fn queue(&self, id: &str, terminal: bool) {
        *lock(&self.unsent).entry(id.to_owned()).or_default() |= terminal;
        self.wake.notify_one();
    }
}

/// Sends the queued changes, one notice per burst, until the store is dropped. Changes that
/// could not be sent are sent again a little later.
pub(crate) async fn notify(bells: Arc<Doorbells>, pool: Pool) {
    loop {
        bells.wake.notified().await;
        let sent = match pool.get().await {
            Ok(db) => send_unsent(&bells, &db).await,
            Err(error) => {
                tracing::warn!(%error, "cannot notify the other hosts");
                false
            }
        };
        if !sent {
            tokio::time::sleep(RECONNECT).await;
            bells.wake.notify_one();
        }
    }
}

/// Sends every change queued so far, in as few notices as fit; those that could not be sent
/// are queued again. Answers whether all were sent.
pub(crate) async fn send_unsent(bells: &Doorbells, db: &impl GenericClient) -> bool {
    let changes = std::mem::take(&mut *lock(&bells.unsent));
    if changes.is_empty() {
        return true;
    }
    let sent = send(bells, db, &changes).await;
    if !sent {
        let mut unsent = lock(&bells.unsent);
        for (id, terminal) in changes {
            *unsent.entry(id).or_default() |= terminal;
        }
    }
    sent
}

/// Sends `changes` in as few notices as fit; answers whether all were sent.
async fn send(
    bells: &Doorbells,
    db: &impl GenericClient,
    changes: &BTreeMap<String, bool>,
) -> bool {
    let mut notices = vec![bells.host.clone()];
    for (id, &terminal) in changes {
        let line = if terminal {
            format!("{id}\t!")
        } else {
            id.clone()
        };
        let last = notices.last_mut().expect("one notice at least");
        if last.len() + line.len() + 1 > NOTICE_BYTES {
            notices.push(format!("{}\n{line}", bells.host));
        } else {
            last.push('\n');
            last.push_str(&line);
        }
    }
    let notify = match db.prepare_cached("SELECT pg_notify($1, $2)").await {
        Ok(notify) => notify,
        Err(error) => {
            tracing::warn!(%error, "cannot notify the other hosts");
            return false;
        }
    };
    let mut sent = true;
    for notice in &notices {
        if let Err(error) = db.execute(&notify, &[&CHANNEL, notice]).await {
            tracing::warn!(%error, "cannot notify the other hosts");
            sent = false;
        }
    }
    sent
}

/// A connection listening for the other hosts' notices, and the notices' channels and
/// payloads.
pub(crate) type Listener = (
    tokio_postgres::Client,
    mpsc::UnboundedReceiver<(String, String)>,
);

/// Rings the watchers here for the other hosts' notices arriving on `listener`, connecting
/// again when the connection is lost (and then ringing every watcher, as notices may have been
/// missed meanwhile).
pub(crate) async fn listen(
    bells: Arc<Doorbells>,
    config: tokio_postgres::Config,
    listener: Listener,
) {
    let mut listener = Some(listener);
    loop {
        if let Some((client, mut notices)) = listener.take() {
            while let Some((channel, notice)) = notices.recv().await {
                if channel == HOSTS_CHANNEL {
                    if notice != bells.host {
                        bells.released.notify_one();
                    }
                    continue;
                }
                let mut lines = notice.lines();
                if lines.next() == Some(bells.host.as_str()) {
                    continue;
                }
                for line in lines {
                    let (id, terminal) = match line.strip_suffix("\t!") {
                        Some(id) => (id, true),
                        None => (line, false),
                    };
                    bells.bells.ring(id, terminal);
                    bells.elsewhere.ring(id, terminal);
                }
            }
            drop(client);
            tracing::warn!("lost the notice connection; connecting again");
        }
        tokio::time::sleep(RECONNECT).await;
        match subscribe_notices(&config).await {
            Ok(renewed) => {
                listener = Some(renewed);
                bells.bells.ring_all();
                bells.elsewhere.ring_all();
            }
            Err(error) => tracing::warn!(%error, "cannot listen for the other hosts' notices"),
        }
    }
}

/// A connection listening on [`CHANNEL`], and its notices' payloads.
pub(crate) async fn subscribe_notices(
    config: &tokio_postgres::Config,
) -> Result<Listener, tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(notice)) => {
                    let message = (notice.channel().to_owned(), notice.payload().to_owned());
                    if sender.send(message).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "notice connection failed");
                    break;
                }
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {CHANNEL}; LISTEN {HOSTS_CHANNEL}"))
        .await?;
    Ok((client, receiver))
}
