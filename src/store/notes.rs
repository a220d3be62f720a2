//! Notifications (things a person must act on) and triage entries (errors no rule
//! classifies, grouped by signature).

use rusqlite::{named_params, Connection};
use serde_json::{json, Value};

use crate::error::Result;
use crate::time::format_rfc3339;

/// A notification to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// `reauthorize`, `forbidden`, `exhausted`, `held`, `alert`, ...
    pub kind: &'static str,
    pub account: Option<String>,
    pub provider: Option<String>,
    pub job_id: Option<i64>,
    pub message: String,
    /// At most one notification per key is ever written ("once per credential").
    pub dedupe_key: Option<String>,
}

/// Writes a notification unless one with the same dedupe key exists. True if written.
pub fn notify(conn: &Connection, n: &Notice, now: i64) -> Result<bool> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO notifications (kind, account, provider, job_id, message, dedupe_key, created_at)
         VALUES (:kind, :account, :provider, :job_id, :message, :dedupe, :now)
         ON CONFLICT (dedupe_key) DO NOTHING",
    )?;
    let n = stmt.execute(named_params! {
        ":kind": n.kind, ":account": n.account, ":provider": n.provider, ":job_id": n.job_id,
        ":message": n.message, ":dedupe": n.dedupe_key, ":now": now,
    })?;
    Ok(n > 0)
}

/// Lists notifications, newest first, optionally for one account.
pub fn list(conn: &Connection, account: Option<&str>, limit: i64) -> Result<Vec<Value>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, kind, account, provider, job_id, message, created_at FROM notifications
          WHERE (?1 IS NULL OR account = ?1) ORDER BY id DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(rusqlite::params![account, limit.clamp(1, 1000)], |r| {
        Ok(json!({
            "id": r.get::<_, i64>(0)?.to_string(),
            "kind": r.get::<_, String>(1)?,
            "account": r.get::<_, Option<String>>(2)?,
            "provider": r.get::<_, Option<String>>(3)?,
            "job_id": r.get::<_, Option<i64>>(4)?.map(|i| i.to_string()),
            "message": r.get::<_, String>(5)?,
            "created_at": format_rfc3339(r.get(6)?),
        }))
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Counts a triage entry for (provider, signature): a new row, or count + 1.
pub fn triage(
    conn: &Connection,
    provider: &str,
    signature: &str,
    sample: &str,
    job_id: i64,
    now: i64,
) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO triage (provider, signature, count, sample_job, sample, first_seen, last_seen)
         VALUES (:p, :sig, 1, :job, :sample, :now, :now)
         ON CONFLICT (provider, signature) DO UPDATE SET count = count + 1, last_seen = :now,
             sample_job = :job, sample = :sample
         RETURNING count",
    )?;
    let count: i64 = stmt.query_row(
        named_params! {":p": provider, ":sig": signature, ":job": job_id, ":sample": sample, ":now": now},
        |r| r.get(0),
    )?;
    if count == 1 {
        // A new kind of error: one `triage` notification per signature, delivered to
        // `triage_url` (or `notify_url`) like any notification.
        let short: String = signature.chars().take(120).collect();
        notify(
            conn,
            &Notice {
                kind: "triage",
                account: None,
                provider: Some(provider.to_string()),
                job_id: Some(job_id),
                message: format!("new unclassified error from {provider}: {short}"),
                dedupe_key: Some(format!("triage:{provider}:{signature}")),
            },
            now,
        )?;
    }
    Ok(())
}

/// Lists triage entries, most recent first.
pub fn list_triage(conn: &Connection, limit: i64) -> Result<Vec<Value>> {
    let mut stmt = conn.prepare_cached(
        "SELECT provider, signature, count, sample_job, sample, first_seen, last_seen FROM triage
          ORDER BY last_seen DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit.clamp(1, 1000)], |r| {
        Ok(json!({
            "provider": r.get::<_, String>(0)?,
            "signature": r.get::<_, String>(1)?,
            "count": r.get::<_, i64>(2)?,
            "sample_job": r.get::<_, Option<i64>>(3)?.map(|i| i.to_string()),
            "sample": r.get::<_, String>(4)?,
            "first_seen": format_rfc3339(r.get(5)?),
            "last_seen": format_rfc3339(r.get(6)?),
        }))
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}
