//! The only module that speaks SQL.
//!
//! A [`Store`] owns a pool of read connections and one write connection. Every write is
//! a short `BEGIN IMMEDIATE` transaction through [`Store::write`], which rolls back
//! unless the closure returns `Ok`. The engine's writer thread batches many writes into
//! one such transaction (group commit); other processes on the same file (the CLI, a
//! second `errand serve`, an application writing the outbox) wait on SQLite's busy
//! timeout.

pub mod accounts;
pub mod attempts;
pub mod bench;
pub mod channels;
pub mod engine;
pub mod idempotency;
pub mod jobs;
mod migrate;
pub mod notes;
pub mod operations;
pub mod outbox;
pub mod stats;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::error::{Error, Result};

pub use migrate::SCHEMA_VERSION;

/// Read connections in the pool (workers cache their preflight reads, so few are busy).
pub const READ_CONNECTIONS: u32 = 8;

/// How long a connection waits for another process's write lock before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Durability of commits (SPEC §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// Durable across a process crash; WAL commits do not fsync (the default).
    #[default]
    Normal,
    /// Durable across power loss: every commit fsyncs the WAL.
    Full,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

/// The database: a read pool and the process's single write connection.
pub struct Store {
    path: PathBuf,
    pool: r2d2::Pool<SqliteConnectionManager>,
    writer: Mutex<Connection>,
    /// Moves after any write that may change what preflight reads (pauses, accounts,
    /// credentials, subscriptions): workers cache those reads until it moves.
    generation: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

fn setup(conn: &Connection, sync: Synchronous) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {}; PRAGMA foreign_keys = ON; PRAGMA temp_store = MEMORY;",
        sync.pragma()
    ))?;
    conn.set_prepared_statement_cache_capacity(64);
    // Query planner stability: plans do not depend on bound values. Without it the
    // bundled SQLite (built with STAT4) marks `run_at <= :now` and `LIMIT :limit` as
    // plan-relevant and re-prepares a cached statement whenever their value changes,
    // i.e. the due-job query on every scheduler pass (most of its cost in a profile).
    // Our plans are fixed by design (INDEXED BY), so nothing is lost.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

/// Turns an SQLite error met while opening into a one-line message about the file.
fn open_error(path: &Path, e: rusqlite::Error) -> Error {
    let reason = match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => {
            "is not an SQLite database (or is corrupt); point --db at another file or restore a backup".to_string()
        }
        Some(rusqlite::ErrorCode::DatabaseCorrupt) => {
            "is corrupt; restore a backup (errand backup) or run errand check".to_string()
        }
        Some(rusqlite::ErrorCode::CannotOpen) | Some(rusqlite::ErrorCode::PermissionDenied) => {
            "cannot be opened; check that the directory exists and is writable".to_string()
        }
        Some(rusqlite::ErrorCode::ReadOnly) => {
            "is read-only; errand needs to write it (check file permissions)".to_string()
        }
        _ => e.to_string(),
    };
    Error::Database {
        path: path.display().to_string(),
        reason,
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path`: WAL mode, the given durability,
    /// a busy timeout, foreign keys, and the schema migrated to [`SCHEMA_VERSION`].
    pub fn open(path: impl AsRef<Path>, sync: Synchronous) -> Result<Store> {
        let path = path.as_ref().to_path_buf();
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let mut conn =
            Connection::open_with_flags(&path, flags).map_err(|e| open_error(&path, e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| open_error(&path, e))?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|e| open_error(&path, e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Database {
                path: path.display().to_string(),
                reason: format!("cannot use WAL mode (got {mode}); use a local filesystem"),
            });
        }
        setup(&conn, sync).map_err(|e| open_error(&path, e))?;
        migrate::migrate(&mut conn).map_err(|e| match e {
            Error::Sqlite(e) => open_error(&path, e),
            other => other,
        })?;
        // Read connections serve point lookups and short pages: a small page cache each
        // (1 MiB, against SQLite's default 2 MiB) keeps memory flat with many of them.
        let manager = SqliteConnectionManager::file(&path)
            .with_flags(flags)
            .with_init(move |c| {
                setup(c, sync)?;
                c.execute_batch("PRAGMA cache_size = -1024")
            });
        let pool = r2d2::Pool::builder()
            .max_size(READ_CONNECTIONS)
            .min_idle(Some(1))
            .connection_timeout(Duration::from_secs(30))
            .build(manager)
            .map_err(|e| Error::Database {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        Ok(Store {
            path,
            pool,
            writer: Mutex::new(conn),
            generation: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A pooled connection for reads.
    pub fn read(&self) -> Result<r2d2::PooledConnection<SqliteConnectionManager>> {
        Ok(self.pool.get()?)
    }

    /// Locks the process's write connection (for a writer that manages its own
    /// transactions, such as the group-commit loop).
    pub fn writer(&self) -> MutexGuard<'_, Connection> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction, committed only if `f` returns Ok.
    /// Any such write may change what preflight reads, so it moves [`Store::generation`]
    /// after the commit.
    pub fn write<T>(&self, f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>) -> Result<T> {
        let out = self.write_quiet(f)?;
        self.bump();
        Ok(out)
    }

    /// [`Store::write`] for the engine's own bookkeeping (claims, leases, reaping, the
    /// outbox drain), which never changes pauses, accounts, credentials or
    /// subscriptions: it leaves the generation alone.
    pub fn write_quiet<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut conn = self.writer();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Copies what the WAL holds into the database file without waiting for or blocking
    /// the writer or any reader (`wal_checkpoint(PASSIVE)`, on a read connection), so the
    /// writer's commits need not do it. Returns the WAL's frames and how many of them are
    /// now in the file; None, without waiting, when every read connection is in use (the
    /// next call will do it, and the writer's own backstop bounds the WAL meanwhile).
    pub fn checkpoint(&self) -> Result<Option<(i64, i64)>> {
        let Some(conn) = self.pool.try_get() else {
            return Ok(None);
        };
        let mut stmt = conn.prepare_cached("PRAGMA wal_checkpoint(PASSIVE)")?;
        Ok(Some(stmt.query_row([], |r| Ok((r.get(1)?, r.get(2)?)))?))
    }

    /// How many WAL frames the write connection lets accumulate before one of its commits
    /// checkpoints (`PRAGMA wal_autocheckpoint`, SQLite's default 1,000).
    pub fn set_writer_autocheckpoint(&self, frames: u32) -> Result<()> {
        self.writer()
            .execute_batch(&format!("PRAGMA wal_autocheckpoint = {frames}"))?;
        Ok(())
    }

    /// The current generation of the data preflight reads.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Moves the generation: call after committing a write that may change what
    /// preflight reads (or on seeing another process commit).
    pub fn bump(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// `PRAGMA data_version` of the write connection: changes when another connection
    /// (another process, the CLI, an app writing the outbox) commits.
    pub fn data_version(&self) -> Result<i64> {
        let conn = self.writer();
        let mut stmt = conn.prepare_cached("PRAGMA data_version")?;
        Ok(stmt.query_row([], |r| r.get(0))?)
    }

    /// Runs SQLite's integrity check; `Ok(vec![])` when the file is sound.
    pub fn integrity_check(&self) -> Result<Vec<String>> {
        let conn = self.read()?;
        let mut stmt = conn.prepare("PRAGMA integrity_check")?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows.into_iter().filter(|r| r != "ok").collect())
    }

    /// Writes a consistent copy of the live database to `dest` (online backup).
    pub fn backup_to(&self, dest: &Path) -> Result<()> {
        let conn = self.read()?;
        conn.execute("VACUUM INTO ?1", [dest.display().to_string()])?;
        Ok(())
    }
}

/// A savepoint opened and closed through cached statements. rusqlite's own `Savepoint`
/// parses its SQL on every use, which cost the writer more than the outcome it guarded.
/// Dropped without [`Savepoint::release`], it rolls back.
pub struct Savepoint<'c> {
    conn: &'c Connection,
    open: bool,
}

impl<'c> Savepoint<'c> {
    /// Opens a savepoint on `conn` (which must be in a transaction to make it nest).
    pub fn new(conn: &'c Connection) -> Result<Savepoint<'c>> {
        conn.prepare_cached("SAVEPOINT errand_sp")?.execute([])?;
        Ok(Savepoint { conn, open: true })
    }

    /// Undoes everything since the savepoint was opened; the savepoint stays open.
    pub fn rollback_to(&self) -> Result<()> {
        self.conn
            .prepare_cached("ROLLBACK TO errand_sp")?
            .execute([])?;
        Ok(())
    }

    /// Keeps the writes and closes the savepoint.
    pub fn release(mut self) -> Result<()> {
        self.open = false;
        self.conn.prepare_cached("RELEASE errand_sp")?.execute([])?;
        Ok(())
    }
}

impl Drop for Savepoint<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self.rollback_to();
            let _ = self
                .conn
                .prepare_cached("RELEASE errand_sp")
                .and_then(|mut s| s.execute([]));
        }
    }
}

/// Builds an `IN (?, ?, ...)` placeholder list for `n` values.
pub(crate) fn placeholders(n: usize) -> String {
    let mut s = String::with_capacity(n * 2);
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push('?');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_copies_the_wal_or_skips_at_once_when_no_read_connection_is_free() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path().join("c.db"), Synchronous::Normal).expect("store");
        store
            .write(|tx| Ok(tx.execute_batch("INSERT INTO settings VALUES ('k', 'v')")?))
            .expect("write");
        let (frames, copied) = store.checkpoint().expect("checkpoint").expect("ran");
        assert!(frames > 0 && copied == frames, "{frames} {copied}");
        // Every read connection busy: no wait for one (the pool's timeout is 30 s).
        let held: Vec<_> = (0..READ_CONNECTIONS)
            .map(|_| store.read().expect("read"))
            .collect();
        assert_eq!(store.checkpoint().expect("checkpoint"), None);
        drop(held);
        assert!(store.checkpoint().expect("checkpoint").is_some());
    }
}
