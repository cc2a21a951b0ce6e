//! Deployments in SQLite: component bytes by sha256 and the deployment log. They change a few
//! times a day, so each write opens a connection of its own on a blocking thread and commits
//! with a full sync, away from the writer thread's pipeline.

use async_trait::async_trait;
use opshost_api::DeploymentRecord;
use opshost_runtime::store::{DeploymentStore, StoreError};
use rusqlite::{Connection, OptionalExtension, params};

use crate::{SqliteStore, decode, failed, schema};

impl SqliteStore {
    /// Runs `write` in one transaction on a fresh read-write connection, on a blocking thread.
    async fn write_deployment<T, F>(&self, write: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T> + Send + 'static,
    {
        let path = self.path().to_path_buf();
        tokio::task::spawn_blocking(move || {
            let mut db = Connection::open(&path)?;
            db.busy_timeout(std::time::Duration::from_secs(5))?;
            db.execute_batch(schema::SETTINGS)?;
            let tx = db.transaction()?;
            let answer = write(&tx)?;
            tx.commit()?;
            Ok(answer)
        })
        .await
        .map_err(|e| StoreError::internal("the deployment writer stopped").caused_by(e))?
        .map_err(failed)
    }
}

#[async_trait]
impl DeploymentStore for SqliteStore {
    async fn put_component(&self, sha256: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        let sha256 = sha256.to_owned();
        self.write_deployment(move |tx| {
            tx.execute(
                "INSERT INTO components (sha256, bytes) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                params![sha256, bytes],
            )
            .map(drop)
        })
        .await
    }

    async fn component(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let sha256 = sha256.to_owned();
        self.read(move |db| {
            db.query_row(
                "SELECT bytes FROM components WHERE sha256 = ?1",
                params![sha256],
                |row| row.get(0),
            )
            .optional()
        })
        .await
    }

    async fn record_deployment(&self, record: DeploymentRecord) -> Result<u64, StoreError> {
        let text = serde_json::to_string(&record)
            .map_err(|e| StoreError::internal("cannot encode a deployment").caused_by(e))?;
        self.write_deployment(move |tx| {
            tx.execute(
                "INSERT INTO deployments (record) VALUES (?1)",
                params![text],
            )?;
            Ok(u64::try_from(tx.last_insert_rowid()).unwrap_or_default())
        })
        .await
    }

    async fn deployments_after(&self, after: u64) -> Result<Vec<DeploymentRecord>, StoreError> {
        self.read(move |db| {
            let mut select = db.prepare_cached(
                "SELECT seq, record FROM deployments WHERE seq > ?1 ORDER BY seq",
            )?;
            let rows = select.query_map(params![after], |row| {
                let seq: u64 = row.get(0)?;
                let text: String = row.get(1)?;
                let mut record: DeploymentRecord = decode(&text)?;
                record.seq = seq;
                Ok(record)
            })?;
            rows.collect()
        })
        .await
    }
}
