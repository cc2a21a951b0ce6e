//! WAL checkpoints off the write path: the writer connection never checkpoints
//! (`wal_autocheckpoint = 0`); this thread copies committed WAL frames into the database file
//! every 200 ms with its own connection (`PASSIVE`: it never blocks the writer or readers).

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::Connection;

const INTERVAL: Duration = Duration::from_millis(200);

/// Stops the checkpoint thread when dropped.
pub(crate) struct Checkpointer {
    _stop: mpsc::Sender<()>,
}

impl Checkpointer {
    pub(crate) fn start(path: &Path) -> rusqlite::Result<Self> {
        let connection = Connection::open(path)?;
        connection.busy_timeout(Duration::from_secs(5))?;
        // A checkpoint syncs the WAL before copying it and the database after.
        connection.execute_batch("PRAGMA synchronous = FULL;")?;
        let (stop, stopped) = mpsc::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("opshost-sqlite-checkpoint".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(INTERVAL) {
                    if let Err(error) =
                        connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::warn!(%error, "WAL checkpoint failed");
                    }
                }
            });
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start the SQLite checkpoint thread");
        }
        Ok(Self { _stop: stop })
    }
}
