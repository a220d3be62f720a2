//! Drains the outbox: each row becomes a job (or a channel event) and is deleted in the
//! same transaction; a row that is not valid moves to `outbox_rejected` with the reason.
//! Run by the scheduler when `PRAGMA data_version` shows another connection committed.

use rusqlite::Connection;
use serde_json::Value;

use super::Shared;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::spec::NewJob;
use crate::store::outbox::Row;
use crate::store::{channels, jobs, outbox, Savepoint};

/// Rows per transaction.
const BATCH: usize = 1000;

/// Checks an event payload against `channel`'s schema from the config (any JSON object
/// when the channel has none). The error names the field.
pub fn check_payload(config: &Config, channel: &str, payload: &Value) -> Result<()> {
    match config.channels.get(channel) {
        Some(schema) => schema.check(payload),
        None if payload.is_object() => Ok(()),
        None => Err(Error::invalid("payload", "must be a JSON object")),
    }
}

/// Validates and publishes an event payload on `channel` (API and outbox alike): checks
/// the channel's schema from the config, then creates the deliveries.
pub fn publish(
    conn: &rusqlite::Connection,
    config: &Config,
    channel: &str,
    payload: &Value,
    now: i64,
) -> Result<Vec<i64>> {
    crate::spec::check_name("channel", channel)?;
    check_payload(config, channel, payload)?;
    channels::publish(conn, channel, payload, now)
}

fn event(
    config: &Config,
    conn: &rusqlite::Connection,
    payload: &str,
    now: i64,
) -> Result<Vec<i64>> {
    let v: Value = serde_json::from_str(payload)
        .map_err(|e| Error::invalid("payload", format!("not valid JSON: {e}")))?;
    let channel = v["channel"]
        .as_str()
        .ok_or_else(|| Error::invalid("channel", "is required for kind = 'event'"))?;
    let inner = v
        .get("payload")
        .ok_or_else(|| Error::invalid("payload.payload", "is required for kind = 'event'"))?;
    publish(conn, config, channel, inner, now)
}

fn job(config: &Config, conn: &rusqlite::Connection, payload: &str, now: i64) -> Result<i64> {
    let v: Value = serde_json::from_str(payload)
        .map_err(|e| Error::invalid("payload", format!("not valid JSON: {e}")))?;
    // No check of expires_at against delay_ms here: the row was written when the app
    // committed, maybe long before this drain, so its delay is not measured from now.
    // A job that expires before it can run is canceled as expired at preflight.
    let job = NewJob::from_json(&v)?;
    if !config.provider(&job.provider).allows(&job.url) {
        return Err(Error::invalid(
            "request.url",
            format!("is outside provider {}'s base_url allowlist", job.provider),
        ));
    }
    Ok(jobs::insert(conn, &job, now)?.id)
}

/// Turns one row into a job or a channel event.
fn apply(config: &Config, conn: &Connection, row: &Row, now: i64) -> Result<()> {
    if let Some(why) = &row.unreadable {
        return Err(Error::invalid("payload", why.clone()));
    }
    match row.kind.as_str() {
        "job" => job(config, conn, &row.payload, now).map(|_| ()),
        "event" => event(config, conn, &row.payload, now).map(|_| ()),
        other => Err(Error::invalid(
            "kind",
            format!("{other:?} is neither 'job' nor 'event'"),
        )),
    }
}

/// True when `e` is about the row it was met on, not about the database: the row is
/// rejected and the drain goes on. A database failure (I/O, a lock, a full disk, the
/// pool) would fail every row the same way, so it stops the pass and keeps the rows for
/// the next one; but a constraint the row's values break, or a value too big to store,
/// is the row's own.
fn belongs_to_the_row(e: &Error) -> bool {
    match e {
        Error::Sqlite(s) => matches!(
            s.sqlite_error_code(),
            Some(rusqlite::ErrorCode::ConstraintViolation | rusqlite::ErrorCode::TooBig)
        ),
        Error::Pool(_) | Error::Database { .. } | Error::Io(_) | Error::ShuttingDown => false,
        Error::Invalid { .. }
        | Error::Config { .. }
        | Error::NotFound(_)
        | Error::Conflict { .. }
        | Error::Expired { .. } => true,
    }
}

/// Settles `rows` in order, each under its own savepoint: a row `apply` accepts is
/// deleted; a row it fails for a reason of the row's own has its writes undone and moves
/// to `outbox_rejected` with the reason, and the drain goes on, so one bad row can never
/// hold back the rows behind it. Any other error stops the pass (its transaction rolls
/// back whole). Returns how many rows became jobs or events.
fn settle(
    conn: &Connection,
    rows: &[Row],
    now: i64,
    mut apply: impl FnMut(&Row) -> Result<()>,
) -> Result<usize> {
    let mut done = 0;
    for row in rows {
        let sp = Savepoint::new(conn)?;
        match apply(row) {
            Ok(()) => {
                outbox::delete(conn, row.id)?;
                done += 1;
            }
            Err(e) if belongs_to_the_row(&e) => {
                sp.rollback_to()?;
                if matches!(e, Error::Invalid { .. }) {
                    log::warn!("outbox row {} rejected: {e}", row.id);
                } else {
                    // Not the application's mistake alone: errand could not use the row.
                    log::error!("outbox row {} rejected: {e}", row.id);
                }
                outbox::reject(conn, row, &e.to_string(), now)?;
            }
            Err(e) => return Err(e),
        }
        sp.release()?;
    }
    Ok(done)
}

/// Drains every row now in the outbox. Returns how many rows became jobs or events.
pub fn drain_once(shared: &Shared, now: i64) -> Result<usize> {
    let mut total = 0;
    loop {
        let (taken, done) = shared.store.write_quiet(|tx| {
            let rows = outbox::take(tx, BATCH)?;
            let done = settle(tx, &rows, now, |row| apply(&shared.config, tx, row, now))?;
            Ok((rows.len(), done))
        })?;
        total += done;
        if taken < BATCH {
            break;
        }
    }
    if total > 0 {
        shared.wake();
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, Synchronous};

    const NOW: i64 = 1_000_000;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path().join("o.db"), Synchronous::Normal).expect("store");
        (dir, store)
    }

    fn count(c: &Connection, table: &str) -> i64 {
        c.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .expect("count")
    }

    /// Three job rows: the first fails the way a channel schema the config could not
    /// parse once failed every drain pass, after writing a job of its own.
    fn three_rows(c: &Connection) -> Vec<Row> {
        let job = r#"{"account": "acme", "request": {"url": "http://127.0.0.1:9/x"}}"#;
        for _ in 0..3 {
            outbox::insert(c, "job", job).expect("insert");
        }
        outbox::take(c, 10).expect("take")
    }

    #[test]
    fn a_row_failing_with_a_config_error_is_rejected_and_the_rows_behind_it_are_drained() {
        // Regression: `config: channels.bad...` from one event row stopped every drain
        // pass, so no row behind it was ever drained or rejected.
        let (_dir, store) = store();
        let mut c = store.writer();
        let tx = c.transaction().expect("tx");
        let rows = three_rows(&tx);
        let config = Config::default();
        let done = settle(&tx, &rows, NOW, |row| {
            if row.id == rows[0].id {
                apply(&config, &tx, row, NOW)?;
                return Err(Error::Config {
                    key: "channels.bad.schema.properties.to".into(),
                    reason: "must be one of string, ...".into(),
                });
            }
            apply(&config, &tx, row, NOW)
        })
        .expect("the drain goes on");
        tx.commit().expect("commit");
        assert_eq!(done, 2);
        assert_eq!(count(&c, "outbox"), 0);
        assert_eq!(count(&c, "jobs"), 2, "the failed row's own job is undone");
        let (id, reason): (i64, String) = c
            .query_row("SELECT outbox_id, reason FROM outbox_rejected", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .expect("rejected");
        assert_eq!(id, rows[0].id);
        assert!(
            reason.starts_with("config: channels.bad.schema.properties.to:"),
            "{reason}"
        );
    }

    #[test]
    fn a_constraint_the_row_breaks_rejects_the_row_but_a_database_failure_keeps_every_row() {
        let sqlite = |code| {
            Error::Sqlite(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(code),
                None,
            ))
        };
        let (_dir, store) = store();
        let mut c = store.writer();
        let tx = c.transaction().expect("tx");
        let rows = three_rows(&tx);
        let config = Config::default();
        let done = settle(&tx, &rows, NOW, |row| match row.id == rows[1].id {
            true => Err(sqlite(rusqlite::ffi::SQLITE_CONSTRAINT_CHECK)),
            false => apply(&config, &tx, row, NOW),
        })
        .expect("the drain goes on");
        assert_eq!(done, 2);
        assert_eq!(count(&tx, "outbox_rejected"), 1);
        drop(tx);

        let tx = c.transaction().expect("tx");
        let rows = three_rows(&tx);
        tx.commit().expect("commit");
        let tx = c.transaction().expect("tx");
        let e = settle(&tx, &rows, NOW, |row| match row.id == rows[1].id {
            true => Err(sqlite(rusqlite::ffi::SQLITE_IOERR)),
            false => apply(&config, &tx, row, NOW),
        })
        .expect_err("a database failure stops the pass");
        assert!(matches!(e, Error::Sqlite(_)), "{e}");
        drop(tx);
        assert_eq!(count(&c, "outbox"), 3, "every row stays for the next pass");
        assert_eq!(count(&c, "outbox_rejected"), 0);
        assert_eq!(count(&c, "jobs"), 0);
    }
}
