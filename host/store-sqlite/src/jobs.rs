//! Jobs in SQLite: the [`JobStore`] of the same file, written by the same writer thread.
//!
//! Each change reads the job, applies the shared rules of `opshost_jobs::store::rules` to the
//! record, and writes it back, all on the one writer connection, so that it is atomic. Leases,
//! heartbeats and progress are answered at commit, everything else once durable (see
//! `writer`).

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use opshost_jobs::store::{JobStore, apply_finish, page, rules};
use opshost_jobs::{
    CancelOutcome, Finish, Heartbeat, JobFilter, JobPage, JobRecord, JobStoreError,
};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use crate::SqliteStore;
use crate::writer::{Write, Written};

/// A change to the jobs table, made on the writer thread.
pub(crate) enum JobWrite {
    Enqueue(JobRecord),
    Lease {
        queue: String,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    },
    Heartbeat {
        id: String,
        attempt: u32,
        until: DateTime<Utc>,
    },
    Progress {
        id: String,
        attempt: u32,
        progress: Value,
        now: DateTime<Utc>,
    },
    Finish {
        id: String,
        attempt: u32,
        finish: Finish,
        now: DateTime<Utc>,
    },
    Cancel {
        id: String,
        now: DateTime<Utc>,
    },
    Retry {
        id: String,
        now: DateTime<Utc>,
    },
    Purge(DateTime<Utc>),
}

/// The outcome of a [`JobWrite`].
#[derive(Debug)]
pub(crate) enum JobWritten {
    Record(Option<JobRecord>),
    Beat(Heartbeat),
    Cancel(Option<CancelOutcome>),
    Purged(u64),
}

impl JobWrite {
    /// Whether the caller waits for the sync: a lost lease or heartbeat only means the job
    /// runs again.
    pub(crate) fn must_be_durable(&self) -> bool {
        !matches!(
            self,
            Self::Lease { .. } | Self::Heartbeat { .. } | Self::Progress { .. }
        )
    }
}

fn millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

fn load(db: &Connection, id: &str) -> rusqlite::Result<Option<JobRecord>> {
    db.prepare_cached("SELECT record FROM jobs WHERE id = ?1")?
        .query_row(params![id], |row| row.get::<_, String>(0))
        .optional()?
        .map(|text| crate::decode(&text))
        .transpose()
}

fn save(db: &Connection, job: &JobRecord) -> rusqlite::Result<()> {
    let record = serde_json::to_string(job)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    db.prepare_cached(
        "INSERT INTO jobs (id, queue, state, due_at, updated_ms, operation, record)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (id) DO UPDATE SET state = ?3, due_at = ?4, updated_ms = ?5, record = ?7",
    )?
    .execute(params![
        job.id,
        job.queue,
        job.state.as_str(),
        rules::due_at(job).map(millis),
        millis(job.updated_at),
        job.operation,
        record
    ])?;
    Ok(())
}

/// A heartbeat or progress of `attempt` on job `id`, saved only while it holds the lease.
fn beat(
    db: &Connection,
    id: &str,
    attempt: u32,
    change: impl FnOnce(&mut JobRecord),
) -> rusqlite::Result<Heartbeat> {
    let Some(mut job) = load(db, id)? else {
        return Ok(Heartbeat::Lost);
    };
    let beat = rules::beat(&mut job, attempt, change);
    if beat != Heartbeat::Lost {
        save(db, &job)?;
    }
    Ok(beat)
}

/// Applies `write` on the writer's transaction.
pub(crate) fn apply(db: &Connection, write: &JobWrite) -> rusqlite::Result<JobWritten> {
    Ok(match write {
        JobWrite::Enqueue(job) => match load(db, &job.id)? {
            Some(existing) => JobWritten::Record(Some(existing)),
            None => {
                save(db, job)?;
                JobWritten::Record(Some(job.clone()))
            }
        },
        JobWrite::Lease { queue, now, until } => {
            let id: Option<String> = db
                .prepare_cached(
                    "SELECT id FROM jobs WHERE queue = ?1 AND due_at IS NOT NULL AND due_at <= ?2
                     ORDER BY due_at, id LIMIT 1",
                )?
                .query_row(params![queue, millis(*now)], |row| row.get(0))
                .optional()?;
            let job = match id {
                Some(id) => load(db, &id)?,
                None => None,
            };
            JobWritten::Record(match job {
                Some(mut job) => {
                    rules::lease(&mut job, *now, *until);
                    save(db, &job)?;
                    Some(job)
                }
                None => None,
            })
        }
        JobWrite::Heartbeat { id, attempt, until } => {
            JobWritten::Beat(beat(db, id, *attempt, |job| {
                job.lease_until = Some(*until)
            })?)
        }
        JobWrite::Progress {
            id,
            attempt,
            progress,
            now,
        } => JobWritten::Beat(beat(db, id, *attempt, |job| {
            job.progress = Some(progress.clone());
            job.updated_at = *now;
        })?),
        JobWrite::Finish {
            id,
            attempt,
            finish,
            now,
        } => JobWritten::Record(match load(db, id)? {
            Some(mut job) if rules::holds(&job, *attempt) => {
                apply_finish(&mut job, finish.clone(), *now);
                save(db, &job)?;
                Some(job)
            }
            _ => None,
        }),
        JobWrite::Cancel { id, now } => JobWritten::Cancel(match load(db, id)? {
            Some(mut job) => {
                let outcome = rules::cancel(&mut job, *now);
                if !matches!(outcome, CancelOutcome::Final(_)) {
                    save(db, &job)?;
                }
                Some(outcome)
            }
            None => None,
        }),
        JobWrite::Purge(cutoff) => JobWritten::Purged(
            db.prepare_cached("DELETE FROM jobs WHERE due_at IS NULL AND updated_ms < ?1")?
                .execute(params![millis(*cutoff)])? as u64,
        ),
        JobWrite::Retry { id, now } => JobWritten::Record(match load(db, id)? {
            Some(mut job) => {
                if rules::retry(&mut job, *now) {
                    save(db, &job)?;
                }
                Some(job)
            }
            None => None,
        }),
    })
}

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
        self.job_record(JobWrite::Enqueue(job))
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
