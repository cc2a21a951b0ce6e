//! Log lines in PostgreSQL: appended in one transaction per batch under the operation's row
//! lock (so two hosts writing one operation's logs number them without gaps or clashes), read
//! back in order after a sequence number.

use deadpool_postgres::Object;
use opshost_api::LogLine;
use opshost_runtime::store::StoreError;

use crate::sql::{count, decode, failed, json, prepared};

/// Appends `lines` to operation `id`'s logs, numbered after its last one. Lines of an
/// operation that does not exist (purged meanwhile) are dropped.
pub(crate) async fn append(db: &mut Object, id: &str, lines: &[LogLine]) -> Result<(), StoreError> {
    let encoded = lines.iter().map(json).collect::<Result<Vec<_>, _>>()?;
    let tx = db.transaction().await.map_err(failed)?;
    let exists = tx
        .query_opt(
            &prepared(&tx, "SELECT 1 FROM operations WHERE id = $1 FOR UPDATE").await?,
            &[&id],
        )
        .await
        .map_err(failed)?;
    if exists.is_none() {
        return Ok(());
    }
    let last: i64 = tx
        .query_one(
            &prepared(&tx, "SELECT coalesce(max(seq), 0) FROM logs WHERE id = $1").await?,
            &[&id],
        )
        .await
        .map_err(failed)?
        .get(0);
    // One statement for the batch: the row lock is held for one round trip more.
    tx.execute(
        &prepared(
            &tx,
            "INSERT INTO logs (id, seq, line)
             SELECT $1, $2 + ord, line FROM unnest($3::text[]) WITH ORDINALITY AS lines(line, ord)",
        )
        .await?,
        &[&id, &last, &encoded],
    )
    .await
    .map_err(failed)?;
    tx.commit().await.map_err(failed)
}

/// At most `limit` lines of operation `id` after `after`.
pub(crate) async fn after(
    db: &Object,
    id: &str,
    after: u64,
    limit: usize,
) -> Result<Vec<LogLine>, StoreError> {
    let rows = db
        .query(
            &prepared(
                db,
                "SELECT seq, line FROM logs WHERE id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            )
            .await?,
            &[&id, &count(after), &count(limit as u64)],
        )
        .await
        .map_err(failed)?;
    rows.iter()
        .map(|row| {
            let seq: i64 = row.get(0);
            let mut line: LogLine = decode(row.get(1))?;
            line.seq = seq.unsigned_abs();
            Ok(line)
        })
        .collect()
}
