//! Jobs in SQLite: the [`JobStore`] of the same file, written by the same writer thread (the
//! changes themselves are in `job_writes`). Leases, heartbeats and progress are answered at
//! commit, everything else once durable (see `writer`).

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use opshost_jobs::store::{JobStore, QueueCount, page, queue_counts};
use opshost_jobs::{
    CancelOutcome, Finish, Heartbeat, JobFilter, JobPage, JobRecord, JobStoreError,
};
use rusqlite::{OptionalExtension, params};
use serde_json::Value;

use crate::SqliteStore;
use crate::job_writes::{JobWrite, JobWritten, load};
use crate::writer::{Write, Written};

impl SqliteStore {
    async fn job_write(&self, write: JobWrite) -> Result<JobWritten, JobStoreError> {
        match self.write(Write::Job(write)).await? {
            Written::Job(written) => Ok(written),
            other => Err(JobStoreError::internal(format!(
                "store writer answered out of turn: {other:?}"
            ))),
        }
    }

    async fn job_record(&self, write: JobWrite) -> Result<Option<JobRecord>, JobStoreError> {
        match self.job_write(write).await? {
            JobWritten::Record(record) => Ok(record),
            other => Err(JobStoreError::internal(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    async fn job_beat(&self, write: JobWrite) -> Result<Heartbeat, JobStoreError> {
        match self.job_write(write).await? {
            JobWritten::Beat(beat) => Ok(beat),
            other => Err(JobStoreError::internal(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }
}

#[async_trait]
impl JobStore for SqliteStore {
    async fn enqueue(&self, job: JobRecord) -> Result<JobRecord, JobStoreError> {
        self.job_record(JobWrite::Enqueue(Box::new(job)))
            .await?
            .ok_or_else(|| JobStoreError::internal("enqueue stored nothing"))
    }

    async fn lease(
        &self,
        queue: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Option<JobRecord>, JobStoreError> {
        let queue = queue.to_owned();
        self.job_record(JobWrite::Lease { queue, now, until }).await
    }

    async fn heartbeat(
        &self,
        id: &str,
        attempt: u32,
        until: DateTime<Utc>,
    ) -> Result<Heartbeat, JobStoreError> {
        let id = id.to_owned();
        self.job_beat(JobWrite::Heartbeat { id, attempt, until })
            .await
    }

    async fn hand_back(
        &self,
        id: &str,
        attempt: u32,
        now: DateTime<Utc>,
    ) -> Result<Heartbeat, JobStoreError> {
        let id = id.to_owned();
        self.job_beat(JobWrite::HandBack { id, attempt, now }).await
    }

    async fn progress(
        &self,
        id: &str,
        attempt: u32,
        progress: Value,
        now: DateTime<Utc>,
    ) -> Result<Heartbeat, JobStoreError> {
        let id = id.to_owned();
        self.job_beat(JobWrite::Progress {
            id,
            attempt,
            progress,
            now,
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
        let id = id.to_owned();
        self.job_record(JobWrite::Finish {
            id,
            attempt,
            finish,
            now,
        })
        .await
    }

    async fn cancel(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<CancelOutcome>, JobStoreError> {
        let id = id.to_owned();
        match self.job_write(JobWrite::Cancel { id, now }).await? {
            JobWritten::Cancel(outcome) => Ok(outcome),
            other => Err(JobStoreError::internal(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    async fn retry(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<JobRecord>, JobStoreError> {
        let id = id.to_owned();
        self.job_record(JobWrite::Retry { id, now }).await
    }

    async fn purge(&self, cutoff: DateTime<Utc>) -> Result<u64, JobStoreError> {
        match self.job_write(JobWrite::Purge(cutoff)).await? {
            JobWritten::Purged(count) => Ok(count),
            other => Err(JobStoreError::internal(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    async fn get(&self, id: &str) -> Result<Option<JobRecord>, JobStoreError> {
        let id = id.to_owned();
        self.read(move |db| load(db, &id)).await
    }

    async fn list(&self, filter: &JobFilter) -> Result<JobPage, JobStoreError> {
        let filter = filter.clone();
        let limit = filter.limit.max(1);
        let items: Vec<JobRecord> = self
            .read(move |db| {
                let mut statement = db.prepare_cached(
                    "SELECT record FROM jobs WHERE (?1 IS NULL OR queue = ?1)
                     AND (?2 IS NULL OR state = ?2) AND (?3 IS NULL OR id > ?3)
                     ORDER BY id LIMIT ?4",
                )?;
                let rows = statement.query_map(
                    params![
                        filter.queue,
                        filter.state.map(|s| s.as_str()),
                        filter.after,
                        (limit + 1) as i64
                    ],
                    |row| row.get::<_, String>(0),
                )?;
                rows.map(|text| crate::decode(&text?)).collect()
            })
            .await?;
        Ok(page(items, limit))
    }

    async fn owner_of(&self, operation_id: &str) -> Result<Option<JobRecord>, JobStoreError> {
        let operation = operation_id.to_owned();
        self.read(move |db| {
            let id: Option<String> = db
                .prepare_cached(
                    "SELECT id FROM jobs WHERE operation = ?1 AND due_at IS NOT NULL LIMIT 1",
                )?
                .query_row(params![operation], |row| row.get(0))
                .optional()?;
            match id {
                Some(id) => load(db, &id),
                None => Ok(None),
            }
        })
        .await
    }

    async fn count_by_state(&self) -> Result<Vec<QueueCount>, JobStoreError> {
        let rows: Vec<(String, String, u64)> = self
            .read(|db| {
                let mut select = db.prepare_cached(
                    "SELECT queue, state, count(*) FROM jobs GROUP BY queue, state ORDER BY queue, state",
                )?;
                let rows = select.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
                rows.collect()
            })
            .await?;
        Ok(queue_counts(rows))
    }

    async fn next_due(&self, queue: &str) -> Result<Option<DateTime<Utc>>, JobStoreError> {
        let queue = queue.to_owned();
        let at: Option<i64> = self
            .read(move |db| {
                db.prepare_cached(
                    "SELECT min(due_at) FROM jobs WHERE queue = ?1 AND due_at IS NOT NULL",
                )?
                .query_row(params![queue], |row| row.get(0))
            })
            .await?;
        Ok(at.and_then(|ms| Utc.timestamp_millis_opt(ms).single()))
    }
}
