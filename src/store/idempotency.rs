//! Incoming `Idempotency-Key`s of `POST /v1/jobs`: per account, kept 24 h (pruned by
//! `store::engine::prune`). The key row is written in the same transaction as its job,
//! so a key never points at a job that was not created.

use rusqlite::{named_params, Connection, OptionalExtension};

use crate::error::Result;

/// How long a key is remembered.
pub const KEEP_MS: i64 = 24 * 3600 * 1000;

/// A remembered key: the hash of the body it came with, the job (or operation) it
/// created, and the status the first call was answered with when that was not the
/// create's 202 (a 200 after `Prefer: wait`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    pub request_hash: String,
    pub job_id: Option<i64>,
    pub first_status: Option<u16>,
}

/// The key `key` of `account` if it was used at or after `now - KEEP_MS`.
pub fn find(conn: &Connection, account: &str, key: &str, now: i64) -> Result<Option<KeyRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT request_hash, job_id, first_status FROM idempotency_keys
          WHERE account = :account AND key = :key AND created_at >= :since",
    )?;
    Ok(stmt
        .query_row(
            named_params! {":account": account, ":key": key, ":since": now - KEEP_MS},
            |r| {
                Ok(KeyRow {
                    request_hash: r.get(0)?,
                    job_id: r.get(1)?,
                    first_status: r.get(2)?,
                })
            },
        )
        .optional()?)
}

/// Remembers `key` of `account` for the job `job_id`, replacing an expired row.
pub fn remember(
    conn: &Connection,
    account: &str,
    key: &str,
    request_hash: &str,
    job_id: i64,
    now: i64,
) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO idempotency_keys (account, key, request_hash, job_id, created_at)
         VALUES (:account, :key, :hash, :job, :now)
         ON CONFLICT (account, key) DO UPDATE SET request_hash = :hash, job_id = :job,
             created_at = :now, first_status = NULL",
    )?;
    stmt.execute(named_params! {
        ":account": account, ":key": key, ":hash": request_hash, ":job": job_id, ":now": now,
    })?;
    Ok(())
}

/// Notes that the first call with `key` of `account` was answered `status` (a 200 after
/// `Prefer: wait`), so that its replays answer the same.
pub fn answered(conn: &Connection, account: &str, key: &str, status: u16) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "UPDATE idempotency_keys SET first_status = ?3 WHERE account = ?1 AND key = ?2",
    )?;
    stmt.execute(rusqlite::params![account, key, status])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_found_within_a_day_and_forgotten_after() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(include_str!("../../schema.sql"))
            .unwrap();
        remember(&conn, "acme", "k1", "h1", 7, 1_000).unwrap();
        let row = find(&conn, "acme", "k1", 1_000 + KEEP_MS).unwrap().unwrap();
        assert_eq!(row.job_id, Some(7));
        assert_eq!(row.request_hash, "h1");
        assert_eq!(row.first_status, None);
        answered(&conn, "acme", "k1", 200).unwrap();
        let row = find(&conn, "acme", "k1", 1_000).unwrap().unwrap();
        assert_eq!(row.first_status, Some(200));
        assert_eq!(find(&conn, "acme", "k1", 1_001 + KEEP_MS).unwrap(), None);
        assert_eq!(find(&conn, "other", "k1", 1_000).unwrap(), None);
        // An expired key used again starts over: its first answer is the new one's.
        remember(&conn, "acme", "k1", "h2", 8, 2_000 + KEEP_MS).unwrap();
        let row = find(&conn, "acme", "k1", 2_000 + KEEP_MS).unwrap().unwrap();
        assert_eq!(row.job_id, Some(8));
        assert_eq!(row.first_status, None);
    }
}
