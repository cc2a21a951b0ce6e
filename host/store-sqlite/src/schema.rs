//! Connection settings and the embedded migrations, applied in order and tracked by
//! `PRAGMA user_version`.

use rusqlite::Connection;

/// Each entry migrates from `user_version = index` to `index + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: operations (owner, input, current revision), their event logs (one snapshot per
    // revision: the current snapshot is the event at the current revision) and their signals.
    "CREATE TABLE operations (
         id           TEXT PRIMARY KEY,
         operation    TEXT NOT NULL,
         state        TEXT NOT NULL,
         revision     INTEGER NOT NULL,
         tenant       TEXT NOT NULL,
         subject      TEXT NOT NULL,
         created_at   TEXT NOT NULL,
         completed_at TEXT,
         input        TEXT
     );
     CREATE INDEX operations_by_tenant ON operations (tenant, id);
     CREATE INDEX operations_by_completion ON operations (completed_at) WHERE completed_at IS NOT NULL;
     CREATE TABLE events (
         id       TEXT NOT NULL,
         revision INTEGER NOT NULL,
         kind     TEXT NOT NULL,
         snapshot TEXT NOT NULL,
         PRIMARY KEY (id, revision)
     );
     CREATE TABLE signals (
         id       TEXT NOT NULL,
         sequence INTEGER NOT NULL,
         name     TEXT NOT NULL,
         payload  TEXT NOT NULL,
         PRIMARY KEY (id, sequence)
     ) WITHOUT ROWID;",
    // 2: jobs. The record is JSON (the stores share their rules as changes to it); the
    // columns beside it are what leases, listings and retention look up. `due_at` (Unix ms) is
    // when a queued job may run or a running job's lease ends; final jobs have none.
    "CREATE TABLE jobs (
         id         TEXT PRIMARY KEY,
         queue      TEXT NOT NULL,
         state      TEXT NOT NULL,
         due_at     INTEGER,
         updated_ms INTEGER NOT NULL,
         operation  TEXT,
         record     TEXT NOT NULL
     ) WITHOUT ROWID;
     CREATE INDEX jobs_due ON jobs (queue, due_at) WHERE due_at IS NOT NULL;
     CREATE INDEX jobs_by_operation ON jobs (operation) WHERE operation IS NOT NULL AND due_at IS NOT NULL;",
    // 3: the log lines of operations (encoded JSON), numbered per operation.
    "CREATE TABLE logs (
         id   TEXT NOT NULL,
         seq  INTEGER NOT NULL,
         line TEXT NOT NULL,
         PRIMARY KEY (id, seq)
     ) WITHOUT ROWID;",
    // 4: deployments: the bytes of every component version deployed, and the log of changes
    // to which version serves each operation and queue (each record is JSON).
    "CREATE TABLE components (
         sha256 TEXT PRIMARY KEY,
         bytes  BLOB NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE deployments (
         seq    INTEGER PRIMARY KEY AUTOINCREMENT,
         record TEXT NOT NULL
     );",
    // 5: the feed of every change. Events get a number that only grows, never reused even
    // after a purge, so a follower resuming from one misses nothing written later.
    "CREATE TABLE events_numbered (
         seq      INTEGER PRIMARY KEY AUTOINCREMENT,
         id       TEXT NOT NULL,
         revision INTEGER NOT NULL,
         kind     TEXT NOT NULL,
         snapshot TEXT NOT NULL,
         UNIQUE (id, revision)
     );
     INSERT INTO events_numbered (id, revision, kind, snapshot)
         SELECT id, revision, kind, snapshot FROM events ORDER BY rowid;
     DROP TABLE events;
     ALTER TABLE events_numbered RENAME TO events;",
];

/// Per-connection settings: every commit synced, an 8 MiB page cache, temporary tables in memory.
pub(crate) const SETTINGS: &str = "PRAGMA synchronous = FULL; PRAGMA cache_size = -8192; \
     PRAGMA temp_store = MEMORY;";

/// Sets WAL and full sync, checks the file is a sound database, and migrates it.
pub(crate) fn prepare(db: &Connection) -> Result<(), String> {
    db.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    let mode: String = db
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(|e| format!("not a usable SQLite database: {e}"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("cannot switch to WAL (journal mode is {mode})"));
    }
    db.execute_batch(SETTINGS).map_err(|e| e.to_string())?;
    let check: String = db
        .query_row("PRAGMA quick_check", [], |row| row.get(0))
        .map_err(|e| format!("integrity check failed: {e}"))?;
    if check != "ok" {
        return Err(format!("integrity check failed: {check}"));
    }
    let version: usize = db
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(|e| e.to_string())?;
    if version > MIGRATIONS.len() {
        return Err(format!(
            "schema version {version} is newer than this opshost knows ({})",
            MIGRATIONS.len()
        ));
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(version) {
        let step = format!(
            "BEGIN; {migration}; PRAGMA user_version = {}; COMMIT;",
            index + 1
        );
        db.execute_batch(&step)
            .map_err(|e| format!("migration {} failed: {e}", index + 1))?;
        tracing::info!(version = index + 1, "store migrated");
    }
    Ok(())
}
