//! Applies `schema.sql` and upgrades older databases in place, versioned by
//! `PRAGMA user_version`.

use rusqlite::{Connection, TransactionBehavior};

use crate::error::{Error, Result};

/// The schema every table is defined by.
pub const SCHEMA: &str = include_str!("../../schema.sql");

/// The version `schema.sql` describes.
pub const SCHEMA_VERSION: i64 = 3;

/// ALTER steps from version `i + 1` to `i + 2`, run before `schema.sql` is re-applied
/// (its statements are all `IF NOT EXISTS`, so new tables and indexes arrive by it).
const UPGRADES: &[&str] = &[
    // 1 -> 2: the transition trigger is rewritten as a CASE (same table, cheaper); the
    // old one goes, schema.sql creates the new one.
    "DROP TRIGGER IF EXISTS jobs_state_transition;",
    // 2 -> 3: a replayed Idempotency-Key answers 200 when the first call was answered
    // 200 (it waited and saw the job or operation finish).
    "ALTER TABLE idempotency_keys ADD COLUMN first_status INTEGER;",
];

/// Brings the database to [`SCHEMA_VERSION`] in one immediate transaction, so two
/// processes opening a new file at once cannot both create it.
pub fn migrate(conn: &mut Connection) -> Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(Error::Database {
            path: tx.path().unwrap_or("database").to_string(),
            reason: format!(
                "was written by a newer errand (schema {version}, this one knows {SCHEMA_VERSION}); upgrade errand"
            ),
        });
    }
    if version > 0 {
        for step in UPGRADES.iter().skip(version as usize - 1) {
            tx.execute_batch(step)?;
        }
    }
    tx.execute_batch(SCHEMA)?;
    tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))?;
    tx.commit()?;
    Ok(())
}
