//! The embedded migrations, applied in order under an advisory lock (hosts starting together
//! migrate once) and tracked in `opshost_schema`.

use deadpool_postgres::Object;

/// Each entry migrates from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: operations with their current snapshot, their event logs, their signals, and jobs.
    // Payloads are JSON text, exactly as written. A job's record is JSON (the stores share
    // their rules as changes to it); the columns beside it are what leases, listings and
    // retention look up. `due_at` (Unix ms) is when a queued job may run or a running job's
    // lease ends; final jobs have none.
    "CREATE TABLE operations (
         id           TEXT PRIMARY KEY,
         operation    TEXT NOT NULL,
         state        TEXT NOT NULL,
         revision     BIGINT NOT NULL,
         tenant       TEXT NOT NULL,
         subject      TEXT NOT NULL,
         created_at   TIMESTAMPTZ NOT NULL,
         completed_at TIMESTAMPTZ,
         input        TEXT,
         snapshot     TEXT NOT NULL
     );
     CREATE INDEX operations_by_tenant ON operations (tenant, id);
     CREATE INDEX operations_by_completion ON operations (completed_at) WHERE completed_at IS NOT NULL;
     CREATE INDEX operations_unfinished ON operations (created_at, id) WHERE state IN ('pending', 'running');
     CREATE TABLE events (
         id       TEXT NOT NULL,
         revision BIGINT NOT NULL,
         kind     TEXT NOT NULL,
         snapshot TEXT NOT NULL,
         PRIMARY KEY (id, revision)
     );
     CREATE TABLE signals (
         id       TEXT NOT NULL,
         sequence BIGINT NOT NULL,
         name     TEXT NOT NULL,
         payload  TEXT NOT NULL,
         PRIMARY KEY (id, sequence)
     );
     CREATE TABLE jobs (
         id         TEXT PRIMARY KEY,
         queue      TEXT NOT NULL,
         state      TEXT NOT NULL,
         due_at     BIGINT,
         updated_ms BIGINT NOT NULL,
         operation  TEXT,
         record     TEXT NOT NULL
     );
     CREATE INDEX jobs_due ON jobs (queue, due_at, id) WHERE due_at IS NOT NULL;
     CREATE INDEX jobs_by_operation ON jobs (operation) WHERE operation IS NOT NULL AND due_at IS NOT NULL;",
    // 2: ownership. Each host has a row it keeps alive; each operation names the host running
    // it. An unfinished operation whose host is gone or no longer alive is an orphan.
    "CREATE TABLE hosts (
         host        TEXT PRIMARY KEY,
         alive_until TIMESTAMPTZ NOT NULL
     );
     ALTER TABLE operations ADD COLUMN owner_host TEXT;",
    // 3: the log lines of operations (encoded JSON), numbered per operation.
    "CREATE TABLE logs (
         id   TEXT NOT NULL,
         seq  BIGINT NOT NULL,
         line TEXT NOT NULL,
         PRIMARY KEY (id, seq)
     );",
    // 4: deployments: the bytes of every component version deployed, and the log of changes
    // to which version serves each operation and queue (each record is JSON). Every host
    // reads the same log, so a version deployed through one is served by all.
    "CREATE TABLE components (
         sha256 TEXT PRIMARY KEY,
         bytes  BYTEA NOT NULL
     );
     CREATE TABLE deployments (
         seq    BIGSERIAL PRIMARY KEY,
         record TEXT NOT NULL
     );",
    // 5: the feed of every change. Sequence numbers are taken in one order and committed in
    // another, so a follower reads by the writing transaction's id first: every change of a
    // transaction older than the oldest one still running is visible, and no later commit
    // can add one before it.
    "ALTER TABLE events
         ADD COLUMN tx  xid8 NOT NULL DEFAULT pg_current_xact_id(),
         ADD COLUMN seq BIGSERIAL;
     CREATE INDEX events_feed ON events (tx, seq);",
];

/// Key of the advisory lock migrations run under ("opshost" in ASCII).
const MIGRATION_LOCK: i64 = 0x006f_7073_686f_7374;

/// Brings the database to the newest schema, refusing one newer than this opshost knows.
pub(crate) async fn migrate(db: &mut Object) -> Result<(), String> {
    let tx = db.transaction().await.map_err(|e| e.to_string())?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| e.to_string())?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS opshost_schema (version BIGINT NOT NULL)")
        .await
        .map_err(|e| e.to_string())?;
    let version: i64 = tx
        .query_opt("SELECT version FROM opshost_schema", &[])
        .await
        .map_err(|e| e.to_string())?
        .map_or(0, |row| row.get(0));
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(format!(
            "schema version {version} is newer than this opshost knows ({known})"
        ));
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.batch_execute(migration)
            .await
            .map_err(|e| format!("migration {} failed: {e}", index + 1))?;
        tracing::info!(version = index + 1, "store migrated");
    }
    tx.execute("DELETE FROM opshost_schema", &[])
        .await
        .map_err(|e| e.to_string())?;
    tx.execute(
        "INSERT INTO opshost_schema (version) VALUES ($1)",
        &[&known],
    )
    .await
    .map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())
}
