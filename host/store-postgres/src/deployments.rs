//! Deployments in PostgreSQL: component bytes by sha256 and the deployment log, which every
//! host sharing the database reads. Appends take an advisory lock, so that records commit in
//! the order of their `seq` and a host following the log never skips one.

use async_trait::async_trait;
use opshost_api::DeploymentRecord;
use opshost_runtime::store::{DeploymentStore, StoreError};

use crate::PostgresStore;
use crate::sql::{count, decode, failed, json, prepared};

/// Key of the advisory lock appends to the deployment log take ("deploys" in ASCII).
const APPEND_LOCK: i64 = 0x0064_6570_6c6f_7973;

#[async_trait]
impl DeploymentStore for PostgresStore {
    async fn put_component(&self, sha256: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        let db = self.db().await?;
        let insert = prepared(
            &db,
            "INSERT INTO components (sha256, bytes) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .await?;
        db.execute(&insert, &[&sha256, &bytes])
            .await
            .map_err(failed)?;
        Ok(())
    }

    async fn component(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let db = self.db().await?;
        let select = prepared(&db, "SELECT bytes FROM components WHERE sha256 = $1").await?;
        let row = db.query_opt(&select, &[&sha256]).await.map_err(failed)?;
        Ok(row.map(|row| row.get(0)))
    }

    async fn record_deployment(&self, record: DeploymentRecord) -> Result<u64, StoreError> {
        let text = json(&record)?;
        let mut db = self.db().await?;
        let tx = db.transaction().await.map_err(failed)?;
        // Appends one at a time: a `seq` taken by one transaction and committed after a later
        // one's would be skipped by a host that read the later one first.
        let lock = prepared(&tx, "SELECT pg_advisory_xact_lock($1)").await?;
        tx.execute(&lock, &[&APPEND_LOCK]).await.map_err(failed)?;
        let insert = prepared(
            &tx,
            "INSERT INTO deployments (record) VALUES ($1) RETURNING seq",
        )
        .await?;
        let seq: i64 = tx
            .query_one(&insert, &[&text])
            .await
            .map_err(failed)?
            .get(0);
        tx.commit().await.map_err(failed)?;
        u64::try_from(seq).map_err(|_| StoreError::corrupt(format!("deployment seq {seq}")))
    }

    async fn deployments_after(&self, after: u64) -> Result<Vec<DeploymentRecord>, StoreError> {
        let db = self.db().await?;
        let select = prepared(
            &db,
            "SELECT seq, record FROM deployments WHERE seq > $1 ORDER BY seq",
        )
        .await?;
        let rows = db.query(&select, &[&count(after)]).await.map_err(failed)?;
        rows.iter()
            .map(|row| {
                let seq: i64 = row.get(0);
                let text: String = row.get(1);
                let mut record: DeploymentRecord = decode(&text)?;
                record.seq = u64::try_from(seq)
                    .map_err(|_| StoreError::corrupt(format!("deployment seq {seq}")))?;
                Ok(record)
            })
            .collect()
    }
}
