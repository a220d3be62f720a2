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
//! - [`api`]: the HTTP API on tiny_http, the admin page, `/metrics`, `/readyz`,
//!   `/client.js`. [`cli`]: the command line. [`config`]: settings.
//! - [`webhook`]: Standard Webhooks signatures for `notify_url` and channel deliveries.
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
pub mod channel;
pub mod classify;
pub mod cli;
pub mod clock;
pub mod config;
pub mod engine;
pub mod error;
pub mod http_call;
pub mod job;
pub mod operation;
pub mod rand;
pub mod server;
pub mod spec;
pub mod store;
pub mod time;
pub mod webhook;

pub use error::{Error, Result};

/// Publishes `payload` on `channel` inside the caller's transaction, through the outbox:
/// if the transaction commits, a running errand checks the payload against the channel's
/// schema and creates one signed delivery per subscriber (or moves the row to
/// `outbox_rejected` with the reason). Returns the outbox row id.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let store = errand::store::Store::open(dir.path().join("app.db"), Default::default()).unwrap();
/// let mut conn = store.writer();
/// let tx = conn.transaction().unwrap();
/// errand::publish(&tx, "email", &serde_json::json!({"to": "a@b.c", "subject": "hi"})).unwrap();
/// tx.commit().unwrap();
/// ```
pub fn publish(
    tx: &rusqlite::Transaction<'_>,
    channel: &str,
    payload: &serde_json::Value,
) -> Result<i64> {
    spec::check_name("channel", channel)?;
    let row = serde_json::json!({"channel": channel, "payload": payload});
    store::outbox::insert(tx, "event", &row.to_string())
}

/// Enqueues `job` inside the caller's transaction on an errand database: the job is
/// created only if that transaction commits. Returns the new job's id. A running errand
/// notices the commit through `PRAGMA data_version` and runs the job.
pub fn enqueue(tx: &rusqlite::Transaction<'_>, job: &spec::NewJob) -> Result<i64> {
    let now = clock::Clock::now_ms(&clock::SystemClock);
    Ok(store::jobs::insert(tx, job, now)?.id)
}
