//! Log lines in SQLite: appended by the writer thread, numbered per operation, read back in
//! order after a sequence number.

use rusqlite::{Connection, params};

/// Appends `lines` (encoded JSON) to operation `id`'s logs, numbered after its last one.
/// Lines of an operation that does not exist (purged meanwhile) are dropped.
pub(crate) fn append(db: &Connection, id: &str, lines: &[String]) -> rusqlite::Result<()> {
    let exists = db
        .prepare_cached("SELECT 1 FROM operations WHERE id = ?1")?
        .exists(params![id])?;
    if !exists {
        return Ok(());
    }
    let last: u64 = db
        .prepare_cached("SELECT coalesce(max(seq), 0) FROM logs WHERE id = ?1")?
        .query_row(params![id], |row| row.get(0))?;
    let mut insert = db.prepare_cached("INSERT INTO logs (id, seq, line) VALUES (?1, ?2, ?3)")?;
    for (offset, line) in lines.iter().enumerate() {
        insert.execute(params![id, last + offset as u64 + 1, line])?;
    }
    Ok(())
}

/// At most `limit` lines of operation `id` after `after`, with their sequence numbers.
pub(crate) fn after(
    db: &Connection,
    id: &str,
    after: u64,
    limit: usize,
) -> rusqlite::Result<Vec<(u64, String)>> {
    let mut select = db.prepare_cached(
        "SELECT seq, line FROM logs WHERE id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = select.query_map(params![id, after, limit], |row| {
        Ok((row.get(0)?, row.get(1)?))
    })?;
    rows.collect()
}
