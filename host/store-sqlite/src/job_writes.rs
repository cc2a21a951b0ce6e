//! Changes to the jobs table, made on the writer thread: each reads the job, applies the
//! shared rules of `opshost_jobs::store::rules` to the record, and writes it back, all on the one
//! writer connection, so that it is atomic.

use chrono::{DateTime, Utc};
use opshost_jobs::store::{apply_finish, rules};
use opshost_jobs::{CancelOutcome, Finish, Heartbeat, JobRecord};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

/// A change to the jobs table, made on the writer thread.
pub(crate) enum JobWrite {
    Enqueue(Box<JobRecord>),
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
    HandBack {
        id: String,
        attempt: u32,
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

pub(crate) fn load(db: &Connection, id: &str) -> rusqlite::Result<Option<JobRecord>> {
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
                JobWritten::Record(Some(JobRecord::clone(job)))
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
        JobWrite::HandBack { id, attempt, now } => {
            JobWritten::Beat(beat(db, id, *attempt, |job| rules::hand_back(job, *now))?)
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
