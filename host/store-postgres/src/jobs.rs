//! Jobs in PostgreSQL: the [`JobStore`] of the same database, shared by every host.
//!
//! Each change locks the job's row (`FOR UPDATE`), applies the shared rules of
//! `opshost_jobs::store::rules` to the record and writes it back in one transaction. A lease
//! takes the first due job with `FOR UPDATE SKIP LOCKED`, so hosts leasing at once never wait
//! on each other nor take the same job.

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use deadpool_postgres::{GenericClient, Object};
use opshost_jobs::store::{JobStore, QueueCount, apply_finish, page, queue_counts, rules};
use opshost_jobs::{
    CancelOutcome, Finish, Heartbeat, JobFilter, JobPage, JobRecord, JobStoreError,
};
use serde_json::Value;

use crate::PostgresStore;

use crate::sql::{decode, failed, json, prepared, unavailable};

fn millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

/// The job `id`, its row locked until the transaction ends.
async fn locked(db: &impl GenericClient, id: &str) -> Result<Option<JobRecord>, JobStoreError> {
    db.query_opt(
        &prepared(db, "SELECT record FROM jobs WHERE id = $1 FOR UPDATE").await?,
        &[&id],
    )
    .await
    .map_err(failed)?
    .map(|row| decode(row.get(0)))
    .transpose()
}

async fn save(db: &impl GenericClient, job: &JobRecord) -> Result<(), JobStoreError> {
    let record = json(job)?;
    db.execute(
        &prepared(
            db,
            "INSERT INTO jobs (id, queue, state, due_at, updated_ms, operation, record)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (id) DO UPDATE SET state = $3, due_at = $4, updated_ms = $5, record = $7",
        )
        .await?,
        &[
            &job.id,
            &job.queue,
            &job.state.as_str(),
            &rules::due_at(job).map(millis),
            &millis(job.updated_at),
            &job.operation,
            &record,
        ],
    )
    .await
    .map_err(failed)?;
    Ok(())
}

impl PostgresStore {
    async fn job_db(&self) -> Result<Object, JobStoreError> {
        self.pool.get().await.map_err(unavailable)
    }

    /// Locks job `id`, lets `change` decide on it, and saves it when `change` says so.
    async fn change<R: Send>(
        &self,
        id: &str,
        change: impl FnOnce(Option<&mut JobRecord>) -> (R, bool) + Send,
    ) -> Result<R, JobStoreError> {
        let mut db = self.job_db().await?;
        let tx = db.transaction().await.map_err(failed)?;
        let mut job = locked(&tx, id).await?;
        let (answer, save_it) = change(job.as_mut());
        if let (Some(job), true) = (&job, save_it) {
            save(&tx, job).await?;
        }
        tx.commit().await.map_err(failed)?;
        Ok(answer)
    }

    async fn beat(
        &self,
        id: &str,
        attempt: u32,
        change: impl FnOnce(&mut JobRecord) + Send,
    ) -> Result<Heartbeat, JobStoreError> {
        self.change(id, |job| match job {
            Some(job) => {
                let beat = rules::beat(job, attempt, change);
                (beat, beat != Heartbeat::Lost)
            }
            None => (Heartbeat::Lost, false),
        })
        .await
    }
}

#[async_trait]
impl JobStore for PostgresStore {
    async fn enqueue(&self, job: JobRecord) -> Result<JobRecord, JobStoreError> {
        let record = json(&job)?;
        let db = self.job_db().await?;
        let inserted = db
            .execute(
                &prepared(
                    &db,
                    "INSERT INTO jobs (id, queue, state, due_at, updated_ms, operation, record)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
                )
                .await?,
                &[
                    &job.id,
                    &job.queue,
                    &job.state.as_str(),
                    &rules::due_at(&job).map(millis),
                    &millis(job.updated_at),
                    &job.operation,
                    &record,
                ],
            )
            .await
            .map_err(failed)?;
        if inserted == 1 {
            return Ok(job);
        }
        self.get(&job.id).await?.ok_or_else(|| {
            JobStoreError::conflict(format!("job `{}` vanished during enqueue", job.id))
        })
    }

    async fn lease(
        &self,
        queue: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Option<JobRecord>, JobStoreError> {
        let mut db = self.job_db().await?;
        let tx = db.transaction().await.map_err(failed)?;
        let row = tx
            .query_opt(
                &prepared(&tx, "SELECT record FROM jobs WHERE queue = $1 AND due_at IS NOT NULL AND due_at <= $2
                 ORDER BY due_at, id LIMIT 1 FOR UPDATE SKIP LOCKED").await?,
                &[&queue, &millis(now)],
            )
            .await
            .map_err(failed)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut job = decode(row.get(0))?;
        rules::lease(&mut job, now, until);
        save(&tx, &job).await?;
        tx.commit().await.map_err(failed)?;
        Ok(Some(job))
    }

    async fn heartbeat(
        &self,
        id: &str,
        attempt: u32,
        until: DateTime<Utc>,
    ) -> Result<Heartbeat, JobStoreError> {
        self.beat(id, attempt, |job| job.lease_until = Some(until))
            .await
    }

    async fn hand_back(
        &self,
        id: &str,
        attempt: u32,
        now: DateTime<Utc>,
    ) -> Result<Heartbeat, JobStoreError> {
        self.beat(id, attempt, |job| rules::hand_back(job, now))
            .await
    }

    async fn progress(
        &self,
        id: &str,
        attempt: u32,
        progress: Value,
        now: DateTime<Utc>,
    ) -> Result<Heartbeat, JobStoreError> {
        self.beat(id, attempt, |job| {
            job.progress = Some(progress);
            job.updated_at = now;
        })
        .await
    }

    async fn finish(
        &self,
        id: &str,
        attempt: u32,
        finish: Finish,
        now: DateTime<Utc>,
    ) -> Result<Option<JobRecord>, JobStoreError> {
        self.change(id, |job| match job {
            Some(job) if rules::holds(job, attempt) => {
                apply_finish(job, finish, now);
                (Some(job.clone()), true)
            }
            _ => (None, false),
        })
        .await
    }

    async fn cancel(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<CancelOutcome>, JobStoreError> {
        self.change(id, |job| match job {
            Some(job) => {
                let outcome = rules::cancel(job, now);
                let changed = !matches!(outcome, CancelOutcome::Final(_));
                (Some(outcome), changed)
            }
            None => (None, false),
        })
        .await
    }

    async fn retry(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<JobRecord>, JobStoreError> {
        self.change(id, |job| match job {
            Some(job) => {
                let changed = rules::retry(job, now);
                (Some(job.clone()), changed)
            }
            None => (None, false),
        })
        .await
    }

    async fn purge(&self, cutoff: DateTime<Utc>) -> Result<u64, JobStoreError> {
        let (db, statement) = self
            .statement("DELETE FROM jobs WHERE due_at IS NULL AND updated_ms < $1")
            .await?;
        db.execute(&statement, &[&millis(cutoff)])
            .await
            .map_err(failed)
    }

    async fn get(&self, id: &str) -> Result<Option<JobRecord>, JobStoreError> {
        let (db, statement) = self
            .statement("SELECT record FROM jobs WHERE id = $1")
            .await?;
        db.query_opt(&statement, &[&id])
            .await
            .map_err(failed)?
            .map(|row| decode(row.get(0)))
            .transpose()
    }

    async fn list(&self, filter: &JobFilter) -> Result<JobPage, JobStoreError> {
        let limit = filter.limit.max(1);
        let (db, statement) = self
            .statement(
                "SELECT record FROM jobs WHERE ($1::TEXT IS NULL OR queue = $1)
                 AND ($2::TEXT IS NULL OR state = $2) AND ($3::TEXT IS NULL OR id > $3)
                 ORDER BY id LIMIT $4",
            )
            .await?;
        let rows = db
            .query(
                &statement,
                &[
                    &filter.queue,
                    &filter.state.map(|s| s.as_str()),
                    &filter.after,
                    &i64::try_from(limit + 1).unwrap_or(i64::MAX),
                ],
            )
            .await
            .map_err(failed)?;
        let items = rows
            .iter()
            .map(|row| decode(row.get(0)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(page(items, limit))
    }

    async fn owner_of(&self, operation_id: &str) -> Result<Option<JobRecord>, JobStoreError> {
        let (db, statement) = self
            .statement(
                "SELECT record FROM jobs WHERE operation = $1 AND due_at IS NOT NULL LIMIT 1",
            )
            .await?;
        db.query_opt(&statement, &[&operation_id])
            .await
            .map_err(failed)?
            .map(|row| decode(row.get(0)))
            .transpose()
    }

    async fn count_by_state(&self) -> Result<Vec<QueueCount>, JobStoreError> {
        let (db, statement) = self.statement("SELECT queue, state, count(*) FROM jobs GROUP BY queue, state ORDER BY queue, state").await?;
        let rows = db.query(&statement, &[]).await.map_err(failed)?;
        Ok(queue_counts(
            rows.iter()
                .map(|row| {
                    let count: i64 = row.get(2);
                    (row.get(0), row.get(1), count.unsigned_abs())
                })
                .collect(),
        ))
    }

    async fn next_due(&self, queue: &str) -> Result<Option<DateTime<Utc>>, JobStoreError> {
        let (db, statement) = self
            .statement("SELECT min(due_at) FROM jobs WHERE queue = $1 AND due_at IS NOT NULL")
            .await?;
        let at: Option<i64> = db
            .query_one(&statement, &[&queue])
            .await
            .map_err(failed)?
            .get(0);
        Ok(at.and_then(|ms| Utc.timestamp_millis_opt(ms).single()))
    }
}
