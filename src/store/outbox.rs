//! The transactional outbox (SPEC §5): rows applications insert in their own
//! transactions, drained here into jobs or channel events, or moved to
//! `outbox_rejected` with the reason.

use rusqlite::Connection;

use crate::error::Result;

/// One outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub id: i64,
    pub kind: String,
    pub payload: String,
    pub created_at: i64,
}

/// The oldest `limit` rows.
pub fn take(conn: &Connection, limit: usize) -> Result<Vec<Row>> {
    let mut stmt = conn
        .prepare_cached("SELECT id, kind, payload, created_at FROM outbox ORDER BY id LIMIT ?1")?;
    let rows = stmt.query_map([limit as i64], |r| {
        Ok(Row {
            id: r.get(0)?,
            kind: r.get(1)?,
            payload: r.get(2)?,
            created_at: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Removes a drained row.
pub fn delete(conn: &Connection, id: i64) -> Result<()> {
    conn.prepare_cached("DELETE FROM outbox WHERE id = ?1")?
        .execute([id])?;
    Ok(())
}

/// Moves a row that could not be drained to `outbox_rejected` with `reason`.
pub fn reject(conn: &Connection, row: &Row, reason: &str, now: i64) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO outbox_rejected (outbox_id, kind, payload, reason, created_at, rejected_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(rusqlite::params![
        row.id,
        row.kind,
        row.payload,
        reason,
        row.created_at,
        now
    ])?;
    delete(conn, row.id)
}

/// Inserts an outbox row (what an application does in its own SQL).
pub fn insert(conn: &Connection, kind: &str, payload: &str) -> Result<i64> {
    conn.prepare_cached("INSERT INTO outbox (kind, payload) VALUES (?1, ?2)")?
        .execute([kind, payload])?;
    Ok(conn.last_insert_rowid())
}
