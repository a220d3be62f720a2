//! The audit log: one row per attempt.

use rusqlite::{params, Connection};
use serde_json::{json, Value};

use crate::error::Result;
use crate::time::format_rfc3339;

/// The outcome category of an attempt (contract names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Success,
    Unavailable,
    Unauthorized,
    Forbidden,
    Unclassified,
    /// The lease expired while the attempt ran: it may or may not have been sent.
    Lost,
}

impl Outcome {
    /// Every outcome, for metrics.
    pub const ALL: [Outcome; 6] = [
        Outcome::Success,
        Outcome::Unavailable,
        Outcome::Unauthorized,
        Outcome::Forbidden,
        Outcome::Unclassified,
        Outcome::Lost,
    ];

    /// The stored and shown name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Unavailable => "unavailable",
            Outcome::Unauthorized => "unauthorized",
            Outcome::Forbidden => "forbidden",
            Outcome::Unclassified => "unclassified",
            Outcome::Lost => "lost",
        }
    }

    /// Parses a category name (as in config rules).
    pub fn parse(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// One attempt as written to the audit log. Headers are already redacted.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    pub job_id: i64,
    pub attempt: i64,
    pub started_at: i64,
    pub duration_ms: i64,
    pub outcome: Outcome,
    pub ambiguous: bool,
    pub request_method: String,
    pub request_url: String,
    pub request_headers: Vec<(String, String)>,
    pub request_body: Option<Vec<u8>>,
    pub response_status: Option<u16>,
    pub response_headers: Option<Vec<(String, String)>>,
    pub response_body: Option<Vec<u8>>,
    pub response_truncated: bool,
    pub error: Option<String>,
    /// The lease owner (process) that ran the attempt.
    pub runner: String,
}

const INSERT: &str = r#"
INSERT INTO attempts (job_id, attempt, started_at, duration_ms, outcome, ambiguous,
    request_method, request_url, request_headers, request_body, response_status,
    response_headers, response_body, response_truncated, error, runner)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
"#;

/// Appends one attempt.
pub fn insert(conn: &Connection, a: &AttemptRecord) -> Result<()> {
    let mut stmt = conn.prepare_cached(INSERT)?;
    // Positional: one audit row per attempt, and binding by name costs a lookup each.
    stmt.execute(params![
        a.job_id,
        a.attempt,
        a.started_at,
        a.duration_ms,
        a.outcome.as_str(),
        a.ambiguous,
        a.request_method,
        a.request_url,
        serde_json::to_string(&a.request_headers).unwrap_or_default(),
        a.request_body,
        a.response_status,
        a.response_headers
            .as_ref()
            .and_then(|h| serde_json::to_string(h).ok()),
        a.response_body,
        a.response_truncated,
        a.error,
        a.runner,
    ])?;
    Ok(())
}

/// The attempts of one job, oldest first, as the API shows them.
pub fn list_json(conn: &Connection, job_id: i64) -> Result<Vec<Value>> {
    let mut stmt = conn.prepare_cached(
        "SELECT attempt, started_at, duration_ms, outcome, ambiguous, request_method, request_url,
                request_headers, request_body, response_status, response_headers, response_body,
                response_truncated, error, runner
           FROM attempts WHERE job_id = ?1 ORDER BY attempt, id",
    )?;
    let rows = stmt.query_map([job_id], |r| {
        let req_headers: String = r.get(7)?;
        let req_body: Option<Vec<u8>> = r.get(8)?;
        let status: Option<u16> = r.get(9)?;
        let resp_headers: Option<String> = r.get(10)?;
        let resp_body: Option<Vec<u8>> = r.get(11)?;
        let truncated: bool = r.get(12)?;
        let headers_obj = |s: &str| -> Value {
            let pairs: Vec<(String, String)> = serde_json::from_str(s).unwrap_or_default();
            Value::Object(
                pairs
                    .into_iter()
                    .map(|(k, v)| (k, Value::String(v)))
                    .collect(),
            )
        };
        let response = status.map(|st| {
            let hdrs: Vec<(String, String)> = resp_headers
                .as_deref()
                .and_then(|s| serde_json::from_str(s).ok())
                .unwrap_or_default();
            crate::job::response_json(
                st,
                &hdrs,
                resp_body.as_deref().unwrap_or_default(),
                truncated,
            )
        });
        Ok(json!({
            "attempt": r.get::<_, i64>(0)?,
            "started_at": format_rfc3339(r.get(1)?),
            "duration_ms": r.get::<_, i64>(2)?,
            "outcome": r.get::<_, String>(3)?,
            "ambiguous": r.get::<_, bool>(4)?,
            "request": {
                "method": r.get::<_, String>(5)?,
                "url": r.get::<_, String>(6)?,
                "headers": headers_obj(&req_headers),
                "body": req_body.map(|b| String::from_utf8_lossy(&b).into_owned()),
            },
            "response": response,
            "error": r.get::<_, Option<String>>(13)?,
            "runner": r.get::<_, Option<String>>(14)?,
        }))
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}
