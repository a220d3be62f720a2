//! errand makes an application's calls to third-party HTTP APIs reliable: it stores each
//! request in SQLite, runs it from worker threads, retries it with backoff while the
//! provider is unavailable, cancels and notifies when credentials are bad or the request
//! is refused, logs every attempt, and lets the application poll for the result.
//!
//! # Layout
//!
//! - [`job`]: states, the transition table, the stored job. [`spec`]: a new job, validated.
//! - [`store`]: the only module that speaks SQL (`schema.sql` is the one definition).
//! - [`engine`]: scheduler, workers, writer and supervisor threads.
//! - [`classify`], [`backoff`]: pure decisions. [`http_call`]: one outbound request.
//! - [`api`]: the HTTP API on tiny_http. [`cli`]: the command line. [`config`]: settings.
//! - [`bench`]: `errand bench`, the self-contained benchmark with its local target.
//!
//! # Enqueue inside your own transaction
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! let store = errand::store::Store::open(dir.path().join("app.db"), Default::default()).unwrap();
//! let job = errand::spec::NewJob::get("acme", "https://api.example.com/ping");
//! let mut conn = store.writer();
//! let tx = conn.transaction().unwrap();
//! // ... the application's own writes in `tx` ...
//! let id = errand::enqueue(&tx, &job).unwrap();
//! tx.commit().unwrap(); // the job exists only if this commits
//! assert!(id > 0);
//! ```

pub mod api;
pub mod backoff;
pub mod bench;
pub mod classify;
pub mod cli;
pub mod clock;
pub mod config;
pub mod engine;
pub mod error;
pub mod http_call;
pub mod job;
pub mod rand;
pub mod server;
pub mod spec;
pub mod store;
pub mod time;

pub use error::{Error, Result};

/// Enqueues `job` inside the caller's transaction on an errand database: the job is
/// created only if that transaction commits. Returns the new job's id. A running errand
/// notices the commit through `PRAGMA data_version` and runs the job.
pub fn enqueue(tx: &rusqlite::Transaction<'_>, job: &spec::NewJob) -> Result<i64> {
    let now = clock::Clock::now_ms(&clock::SystemClock);
    Ok(store::jobs::insert(tx, job, now)?.id)
}
