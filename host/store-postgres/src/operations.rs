//! [`OperationStore`] on PostgreSQL: operations, their events and signals, listing, purge,
//! and the hand-over of operations between hosts.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use opshost_api::{EventKind, LogLine, OperationEvent, OperationState, Snapshot};
use opshost_runtime::store::{
    Change, ChangeCursor, CreateOutcome, Doorbell, ListFilter, OperationStore, Owner, Page,
    SignalOutcome, SignalRecord, StateCount, StoreError, StoredOperation, UpdateOutcome,
    is_unscoped,
};
use serde_json::Value;

use crate::doorbell;
use crate::sql::{count, decode, failed, json, prepared, state};
use crate::{PostgresStore, logs};

/// Columns of [`stored`], from `operations`.
const SELECT_STORED: &str = "SELECT snapshot, input, tenant, subject FROM operations";

/// [`SELECT_STORED`] of one operation.
const SELECT_ONE: &str = "SELECT snapshot, input, tenant, subject FROM operations WHERE id = $1";

fn stored(row: &tokio_postgres::Row) -> Result<StoredOperation, StoreError> {
    let input: Option<String> = row.get(1);
    Ok(StoredOperation {
        snapshot: decode(row.get(0))?,
        input: input.as_deref().map(decode).transpose()?,
        owner: Owner {
            tenant: row.get(2),
            subject: row.get(3),
        },
    })
}

/// An event read back from its `kind` and `snapshot` columns.
fn event(kind: &str, snapshot: &str) -> Result<OperationEvent, StoreError> {
    let kind = EventKind::from_name(kind)
        .ok_or_else(|| StoreError::corrupt(format!("postgres: unknown event kind `{kind}`")))?;
    Ok(OperationEvent::new(kind, decode(snapshot)?))
}

/// A transaction id (`xid8`) read as text.
fn transaction(text: &str) -> Result<u64, StoreError> {
    text.parse()
        .map_err(|_| StoreError::corrupt(format!("postgres: `{text}` is not a transaction id")))
}

async fn current(db: &impl GenericClient, id: &str) -> Result<Option<Snapshot>, StoreError> {
    let select = prepared(db, "SELECT snapshot FROM operations WHERE id = $1").await?;
    db.query_opt(&select, &[&id])
        .await
        .map_err(failed)?
        .map(|row| decode(row.get(0)))
        .transpose()
}

#[async_trait]
impl OperationStore for PostgresStore {
    async fn create(&self, operation: StoredOperation) -> Result<CreateOutcome, StoreError> {
        if is_unscoped(&operation) {
            self.unscoped
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let snapshot = &operation.snapshot;
        let text = json(snapshot)?;
        let input = operation.input.as_ref().map(json).transpose()?;
        let db = self.db().await?;
        // One statement, so one round trip and one implicit transaction: the row and its
        // first event, or nothing when the id exists.
        let inserted = db
            .execute(
                &prepared(
                    &db,
                    "WITH created AS (
                         INSERT INTO operations (id, operation, state, revision, tenant, subject,
                             created_at, completed_at, input, snapshot, owner_host)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                         ON CONFLICT (id) DO NOTHING RETURNING id)
                     INSERT INTO events (id, revision, kind, snapshot)
                     SELECT id, $4, $12, $10 FROM created",
                )
                .await?,
                &[
                    &snapshot.id,
                    &snapshot.operation,
                    &snapshot.state.as_str(),
                    &count(snapshot.revision),
                    &operation.owner.tenant,
                    &operation.owner.subject,
                    &snapshot.created_at,
                    &snapshot.completed_at,
                    &input,
                    &text,
                    &self.host,
                    &EventKind::Accepted.as_str(),
                ],
            )
            .await
            .map_err(failed)?;
        if inserted == 0 {
            let row = db
                .query_one(&prepared(&db, SELECT_ONE).await?, &[&snapshot.id])
                .await
                .map_err(failed)?;
            return Ok(CreateOutcome::Existing(stored(&row)?));
        }
        self.bells.changed(&snapshot.id);
        Ok(CreateOutcome::Created(snapshot.clone()))
    }

    async fn load(&self, id: &str) -> Result<Option<StoredOperation>, StoreError> {
        let db = self.db().await?;
        db.query_opt(&prepared(&db, SELECT_ONE).await?, &[&id])
            .await
            .map_err(failed)?
            .as_ref()
            .map(stored)
            .transpose()
    }

    async fn update(&self, next: Snapshot, kind: EventKind) -> Result<UpdateOutcome, StoreError> {
        let text = json(&next)?;
        let id = next.id.clone();
        if let Some(next) = self.updates.apply(next, text, kind).await? {
            return Ok(UpdateOutcome::Updated(next));
        }
        let db = self.db().await?;
        match current(&db, &id).await? {
            Some(current) => Ok(UpdateOutcome::Conflict(current)),
            None => Err(StoreError::conflict(format!(
                "update of unknown operation `{id}`"
            ))),
        }
    }

    async fn events_after(&self, id: &str, after: u64) -> Result<Vec<OperationEvent>, StoreError> {
        let db = self.db().await?;
        let rows = db
            .query(
                &prepared(
                    &db,
                    "SELECT kind, snapshot FROM events WHERE id = $1 AND revision > $2
                     ORDER BY revision",
                )
                .await?,
                &[&id, &count(after)],
            )
            .await
            .map_err(failed)?;
        rows.iter()
            .map(|row| event(row.get(0), row.get(1)))
            .collect()
    }

    async fn append_signal(
        &self,
        id: &str,
        name: &str,
        payload: Value,
    ) -> Result<SignalOutcome, StoreError> {
        let payload = json(&payload)?;
        let mut db = self.db().await?;
        let tx = db.transaction().await.map_err(failed)?;
        // The row lock orders signals among themselves and against the terminal change.
        let row = tx
            .query_opt(
                &prepared(&tx, "SELECT state FROM operations WHERE id = $1 FOR UPDATE").await?,
                &[&id],
            )
            .await
            .map_err(failed)?;
        let Some(row) = row else {
            return Err(StoreError::conflict(format!(
                "signal to unknown operation `{id}`"
            )));
        };
        let current = state(row.get(0))?;
        if current.is_terminal() {
            return Ok(SignalOutcome::Terminal(current));
        }
        let sequence: i64 = tx
            .query_one(
                &prepared(
                    &tx,
                    "INSERT INTO signals (id, sequence, name, payload)
                 SELECT $1, coalesce(max(sequence), 0) + 1, $2, $3 FROM signals WHERE id = $1
                 RETURNING sequence",
                )
                .await?,
                &[&id, &name, &payload],
            )
            .await
            .map_err(failed)?
            .get(0);
        tx.commit().await.map_err(failed)?;
        self.bells.changed(id);
        Ok(SignalOutcome::Appended(sequence.unsigned_abs()))
    }

    async fn append_logs(&self, id: &str, lines: Vec<LogLine>) -> Result<(), StoreError> {
        let mut db = self.db().await?;
        logs::append(&mut db, id, &lines).await
    }

    async fn logs_after(
        &self,
        id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogLine>, StoreError> {
        let db = self.db().await?;
        logs::after(&db, id, after, limit).await
    }

    async fn signals_after(&self, id: &str, after: u64) -> Result<Vec<SignalRecord>, StoreError> {
        let db = self.db().await?;
        let rows = db
            .query(
                &prepared(
                    &db,
                    "SELECT sequence, name, payload FROM signals WHERE id = $1 AND sequence > $2
                     ORDER BY sequence",
                )
                .await?,
                &[&id, &count(after)],
            )
            .await
            .map_err(failed)?;
        rows.iter()
            .map(|row| {
                let sequence: i64 = row.get(0);
                Ok(SignalRecord {
                    sequence: sequence.unsigned_abs(),
                    name: row.get(1),
                    payload: decode(row.get(2))?,
                })
            })
            .collect()
    }

    async fn changes_after(
        &self,
        after: ChangeCursor,
        limit: usize,
    ) -> Result<Vec<Change>, StoreError> {
        let db = self.db().await?;
        // Only transactions older than the oldest one still running: none of them can still
        // commit a change that sorts before what is read here.
        let rows = db
            .query(
                &prepared(
                    &db,
                    "SELECT e.tx::text, e.seq, e.kind, e.snapshot, o.tenant FROM events e
                     JOIN operations o ON o.id = e.id
                     WHERE (e.tx, e.seq) > ($1::text::xid8, $2)
                       AND e.tx < pg_snapshot_xmin(pg_current_snapshot())
                     ORDER BY e.tx, e.seq LIMIT $3",
                )
                .await?,
                &[
                    &after.epoch.to_string(),
                    &count(after.seq),
                    &count(limit as u64),
                ],
            )
            .await
            .map_err(failed)?;
        rows.iter()
            .map(|row| {
                Ok(Change {
                    cursor: ChangeCursor {
                        epoch: transaction(row.get(0))?,
                        seq: u64::try_from(row.get::<_, i64>(1)).unwrap_or_default(),
                    },
                    event: event(row.get(2), row.get(3))?,
                    tenant: row.get(4),
                })
            })
            .collect()
    }

    async fn change_head(&self) -> Result<ChangeCursor, StoreError> {
        let db = self.db().await?;
        let row = db
            .query_one(
                &prepared(&db, "SELECT pg_snapshot_xmin(pg_current_snapshot())::text").await?,
                &[],
            )
            .await
            .map_err(failed)?;
        Ok(ChangeCursor {
            epoch: transaction(row.get(0))?,
            seq: 0,
        })
    }

    fn subscribe_changes(&self) -> tokio::sync::watch::Receiver<()> {
        self.bells.bells.any()
    }

    fn holds_unscoped_keys(&self) -> bool {
        self.unscoped.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn list(&self, filter: &ListFilter) -> Result<Page, StoreError> {
        let limit = count(filter.limit as u64).saturating_add(1);
        let (db, statement) = self
            .statement(
                "SELECT snapshot FROM operations
                 WHERE ($1::TEXT IS NULL OR tenant = $1) AND ($2::TEXT IS NULL OR operation = $2)
                   AND ($3::TEXT IS NULL OR state = $3) AND ($4::TEXT IS NULL OR id > $4)
                   AND ($6::TEXT IS NULL OR left(id, length($6)) = $6)
                   AND ($7::TIMESTAMPTZ IS NULL OR created_at >= $7)
                   AND ($8::TIMESTAMPTZ IS NULL OR created_at < $8)
                 ORDER BY id LIMIT $5",
            )
            .await?;
        let rows = db
            .query(
                &statement,
                &[
                    &filter.tenant,
                    &filter.operation,
                    &filter.state.map(OperationState::as_str),
                    &filter.after,
                    &limit,
                    &filter.id_prefix,
                    &filter.created_from,
                    &filter.created_until,
                ],
            )
            .await
            .map_err(failed)?;
        let mut items = rows
            .iter()
            .map(|row| decode::<Snapshot>(row.get(0)))
            .collect::<Result<Vec<_>, _>>()?;
        let next = if items.len() > filter.limit {
            items.truncate(filter.limit);
            items.last().map(|last| last.id.clone())
        } else {
            None
        };
        Ok(Page { items, next })
    }

    async fn count_by_state(&self) -> Result<Vec<StateCount>, StoreError> {
        let (db, statement) = self
            .statement(
                "SELECT operation, state, count(*) FROM operations
                 GROUP BY operation, state ORDER BY operation, state",
            )
            .await?;
        let rows = db.query(&statement, &[]).await.map_err(failed)?;
        rows.iter()
            .map(|row| {
                let n: i64 = row.get(2);
                Ok(StateCount {
                    operation: row.get(0),
                    state: state(row.get(1))?,
                    count: n.unsigned_abs(),
                })
            })
            .collect()
    }

    async fn unfinished(&self) -> Result<Vec<StoredOperation>, StoreError> {
        let (db, statement) = self
            .statement(&format!(
                "{SELECT_STORED} WHERE state IN ('pending', 'running') ORDER BY created_at, id"
            ))
            .await?;
        let rows = db.query(&statement, &[]).await.map_err(failed)?;
        rows.iter().map(stored).collect()
    }

    async fn claim_orphans(&self) -> Result<Vec<StoredOperation>, StoreError> {
        let (db, statement) = self
            .statement(
                "UPDATE operations SET owner_host = $1 WHERE id IN (
                     SELECT o.id FROM operations o LEFT JOIN hosts h ON h.host = o.owner_host
                     WHERE o.state IN ('pending', 'running')
                       AND (h.host IS NULL OR h.alive_until < now())
                     FOR UPDATE OF o SKIP LOCKED)
                 RETURNING snapshot, input, tenant, subject, created_at",
            )
            .await?;
        let rows = db.query(&statement, &[&self.host]).await.map_err(failed)?;
        let mut claimed = rows
            .iter()
            .map(|row| Ok((row.get::<_, DateTime<Utc>>(4), stored(row)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        claimed.sort_by(|(a, x), (b, y)| (a, &x.snapshot.id).cmp(&(b, &y.snapshot.id)));
        Ok(claimed.into_iter().map(|(_, stored)| stored).collect())
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn purge(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut db = self.db().await?;
        let tx = db.transaction().await.map_err(failed)?;
        let expired =
            "SELECT id FROM operations WHERE completed_at IS NOT NULL AND completed_at < $1";
        for table in ["events", "signals", "logs"] {
            let delete = format!("DELETE FROM {table} WHERE id IN ({expired})");
            tx.execute(&prepared(&tx, &delete).await?, &[&cutoff])
                .await
                .map_err(failed)?;
        }
        let purged = tx
            .execute(
                &prepared(
                    &tx,
                    "DELETE FROM operations WHERE completed_at IS NOT NULL AND completed_at < $1",
                )
                .await?,
                &[&cutoff],
            )
            .await
            .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        Ok(purged)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Every write is committed before it is answered.
        Ok(())
    }

    fn subscribe(&self, id: &str) -> Doorbell {
        self.bells.bells.subscribe(id)
    }

    fn subscribe_elsewhere(&self, id: &str) -> Doorbell {
        self.bells.elsewhere.subscribe(id)
    }

    /// Tells the other hosts of the changes not yet announced, stops renewing this host's
    /// lease, ends it for good and names this host on the hosts channel, so that another host
    /// claims its unfinished operations at once.
    async fn release(&self) -> Result<(), StoreError> {
        self.lease.abort();
        let db = self.db().await?;
        doorbell::send_unsent(&self.bells, &db).await;
        db.execute(
            &prepared(
                &db,
                "UPDATE hosts SET alive_until = '-infinity' WHERE host = $1",
            )
            .await?,
            &[&self.host],
        )
        .await
        .map_err(failed)?;
        db.execute(
            &prepared(&db, "SELECT pg_notify($1, $2)").await?,
            &[&doorbell::HOSTS_CHANNEL, &self.host],
        )
        .await
        .map_err(failed)?;
        tracing::info!(host = %self.host, "host lease released");
        Ok(())
    }

    async fn orphans_released(&self) {
        self.bells.released.notified().await
    }

    fn doorbells(&self) -> usize {
        // A run's doorbell for the other hosts' changes counts too, so that a leak of either
        // shows.
        self.bells.bells.len() + self.bells.elsewhere.len()
    }
}
