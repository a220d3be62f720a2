//! SQL used only by `errand bench`: bulk history, outbox rows for the enqueue figure, and
//! the counts that check a run. Kept here because only `store` speaks SQL.

use rusqlite::{named_params, Connection};

use crate::error::Result;

/// Inserts `count` jobs of account `history`, ids from `start`, as `approved` at `run_at`,
/// in one statement (a recursive CTE, so no per-row round trip).
fn insert_history(conn: &Connection, count: usize, run_at: i64, url: &str, now: i64) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < :count)
         INSERT INTO jobs (token, account, provider, state, run_at, method, url, headers,
                           idempotency_key, metadata, created_at, updated_at)
         SELECT lower(hex(randomblob(16))), 'history', 'bench', 'approved', :run_at, 'GET',
                :url, '[]', 'errand-' || lower(hex(randomblob(16))), '{}', :now, :now
           FROM n",
    )?;
    stmt.execute(named_params! {
        ":count": count as i64, ":run_at": run_at, ":url": url, ":now": now,
    })?;
    Ok(())
}

/// Adds a chunk of history: `finished` jobs that ran once and succeeded (each with its
/// audit row), and `future` jobs scheduled at `future_at`. The finished jobs go through
/// the legal transitions (approved -> running -> succeeded) so the state-machine trigger
/// sees nothing it would refuse. Run it in a write transaction.
pub fn add_history(
    conn: &Connection,
    finished: usize,
    future: usize,
    future_at: i64,
    url: &str,
    now: i64,
) -> Result<()> {
    let first: i64 = conn.query_row("SELECT COALESCE(MAX(id), 0) + 1 FROM jobs", [], |r| {
        r.get(0)
    })?;
    if finished > 0 {
        insert_history(conn, finished, now, url, now)?;
        let params = named_params! {":first": first, ":now": now};
        conn.execute(
            "UPDATE jobs SET state = 'running', attempts = 1, lease_owner = 'history',
                    lease_until = :now
              WHERE id >= :first AND account = 'history' AND state = 'approved'",
            params,
        )?;
        conn.execute(
            "UPDATE jobs SET state = 'succeeded', lease_owner = NULL, lease_until = NULL,
                    result_status = 200, result_headers = '[]', result_body = CAST('{\"ok\":true}' AS BLOB),
                    finished_at = :now
              WHERE id >= :first AND account = 'history' AND state = 'running'",
            params,
        )?;
        conn.execute(
            "INSERT INTO attempts (job_id, attempt, started_at, duration_ms, outcome, request_method,
                                   request_url, request_headers, response_status,
                                   response_headers, response_body, runner)
             SELECT id, 1, :now, 0, 'success', 'GET', url, '[]', 200, '[]',
                    CAST('{\"ok\":true}' AS BLOB), 'history'
               FROM jobs WHERE id >= :first AND account = 'history'",
            params,
        )?;
    }
    if future > 0 {
        insert_history(conn, future, future_at, url, now)?;
    }
    Ok(())
}

/// (jobs of `account` that succeeded, jobs of `account` in any other state, attempt rows
/// of those jobs).
pub fn account_counts(conn: &Connection, account: &str) -> Result<(i64, i64, i64)> {
    let (ok, other) = conn.query_row(
        "SELECT COALESCE(SUM(state = 'succeeded'), 0), COALESCE(SUM(state <> 'succeeded'), 0)
           FROM jobs INDEXED BY jobs_account_id WHERE account = ?1",
        [account],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let attempts = conn.query_row(
        "SELECT COUNT(*) FROM attempts
          WHERE job_id IN (SELECT id FROM jobs INDEXED BY jobs_account_id WHERE account = ?1)",
        [account],
        |r| r.get(0),
    )?;
    Ok((ok, other, attempts))
}

/// Appends `count` rows of `payload` to the outbox, as an application would.
pub fn fill_outbox(conn: &Connection, count: usize, payload: &str) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < :count)
         INSERT INTO outbox (kind, payload) SELECT 'job', :payload FROM n",
    )?;
    stmt.execute(named_params! {":count": count as i64, ":payload": payload})?;
    Ok(())
}

/// Takes (deletes and returns) up to `limit` of the oldest outbox rows as (id, payload).
/// Run it in a write transaction together with the inserts the rows become.
pub fn take_outbox(conn: &Connection, limit: usize) -> Result<Vec<(i64, String)>> {
    let mut stmt = conn.prepare_cached(
        "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?1)
         RETURNING id, payload",
    )?;
    let rows = stmt.query_map([limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Rows waiting in the outbox.
pub fn outbox_len(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_goes_through_legal_transitions() {
        let dir = tempfile::tempdir().expect("dir");
        let store =
            crate::store::Store::open(dir.path().join("h.db"), Default::default()).expect("open");
        store
            .write(|tx| add_history(tx, 30, 10, 9_000, "http://127.0.0.1:1/", 1_000))
            .expect("history");
        store
            .write(|tx| add_history(tx, 5, 0, 9_000, "http://127.0.0.1:1/", 2_000))
            .expect("history");
        let conn = store.read().expect("read");
        assert_eq!(
            account_counts(&conn, "history").expect("counts"),
            (35, 10, 35)
        );
        store.write(|tx| fill_outbox(tx, 7, "{}")).expect("outbox");
        let taken = store.write(|tx| take_outbox(tx, 5)).expect("take");
        assert_eq!(taken.len(), 5);
        assert_eq!(outbox_len(&conn).expect("len"), 2);
    }
}
