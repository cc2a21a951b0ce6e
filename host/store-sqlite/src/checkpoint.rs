//! WAL checkpoints off the write path: the writer connection never checkpoints
//! (`wal_autocheckpoint = 0`); this thread copies committed WAL frames into the database file
//! every 200 ms with its own connection, and restarts the WAL so that it stays small.

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
                    if let Err(error) = checkpoint(&connection) {
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

/// Copies the WAL into the database without blocking anyone (`PASSIVE`), then finishes the
/// last frames with `RESTART`, which holds off the writer only for those, so that the next
/// commit writes the WAL from its beginning again. Without the restart a store under steady
/// load never catches up: the WAL grows without bound, and every sync of it gets slower.
fn checkpoint(connection: &Connection) -> rusqlite::Result<()> {
    connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
    connection.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))
}
