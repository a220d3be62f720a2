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
    /// Why the payload could not be read as text, if it could not.
    pub unreadable: Option<String>,
}

/// The oldest `limit` rows. A row whose payload is not text (a BLOB, invalid UTF-8) is
/// still returned, with `payload` describing the problem in `unreadable`, so the drain
/// can move it to `outbox_rejected` instead of failing on it forever.
pub fn take(conn: &Connection, limit: usize) -> Result<Vec<Row>> {
    use rusqlite::types::ValueRef;
    let mut stmt = conn
        .prepare_cached("SELECT id, kind, payload, created_at FROM outbox ORDER BY id LIMIT ?1")?;
    let rows = stmt.query_map([limit as i64], |r| {
        let text = |v: ValueRef<'_>| -> std::result::Result<String, String> {
            match v {
                ValueRef::Text(t) => std::str::from_utf8(t)
                    .map(str::to_string)
                    .map_err(|_| "is not valid UTF-8".to_string()),
                ValueRef::Blob(b) => std::str::from_utf8(b)
                    .map(str::to_string)
                    .map_err(|_| "is a BLOB that is not UTF-8 text".to_string()),
                ValueRef::Null => Err("is NULL".to_string()),
                ValueRef::Integer(i) => Ok(i.to_string()),
                ValueRef::Real(f) => Ok(f.to_string()),
            }
        };
        let (payload, unreadable) = match text(r.get_ref(2)?) {
            Ok(p) => (p, None),
            Err(why) => (String::new(), Some(format!("payload {why}"))),
        };
        let kind = text(r.get_ref(1)?).unwrap_or_else(|_| "?".to_string());
        let created_at = match r.get_ref(3)? {
            ValueRef::Integer(i) => i,
            _ => 0,
        };
        Ok(Row {
            id: r.get(0)?,
            kind,
            payload,
            created_at,
            unreadable,
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
    // Copied with SQL so the stored values move as they are, whatever their type.
    conn.prepare_cached(
        "INSERT INTO outbox_rejected (outbox_id, kind, payload, reason, created_at, rejected_at)
         SELECT id, kind, payload, ?2, created_at, ?3 FROM outbox WHERE id = ?1",
    )?
    .execute(rusqlite::params![row.id, reason, now])?;
    delete(conn, row.id)
}

/// Inserts an outbox row (what an application does in its own SQL).
pub fn insert(conn: &Connection, kind: &str, payload: &str) -> Result<i64> {
    conn.prepare_cached("INSERT INTO outbox (kind, payload) VALUES (?1, ?2)")?
        .execute([kind, payload])?;
    Ok(conn.last_insert_rowid())
}
