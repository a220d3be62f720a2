//! Jobs: insert, read, list, and user-driven transitions. Engine transitions (claim,
//! outcome, reap) live in `store::engine`.

use rusqlite::{named_params, Connection, OptionalExtension, Row};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::job::{Job, JobError, JobResult, JobState, UserAction};
use crate::spec::{Due, NewJob, OutboundKey};

/// The columns [`from_row`] reads, in order.
pub(crate) const COLUMNS: &str = "id, token, account, provider, state, run_at, attempts, \
    max_attempts, method, url, headers, body, timeout_ms, backoff, idempotency_key, \
    expires_at, callback_url, metadata, lease_owner, lease_until, last_error, result_status, \
    result_headers, result_body, result_truncated, created_at, updated_at, operation_id, \
    step_index, webhook_id, signing_key, attempts_base";

fn json_col<T: serde::de::DeserializeOwned>(r: &Row, i: usize) -> rusqlite::Result<Option<T>> {
    let s: Option<String> = r.get(i)?;
    match s {
        None => Ok(None),
        Some(s) => serde_json::from_str(&s).map(Some).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
        }),
    }
}

/// Reads a job from a row selected with [`COLUMNS`].
pub(crate) fn from_row(r: &Row) -> rusqlite::Result<Job> {
    let state: String = r.get(4)?;
    let state = state.parse::<JobState>().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, Box::new(e))
    })?;
    let result = match r.get::<_, Option<i64>>(21)? {
        None => None,
        Some(status) => Some(JobResult {
            status: status as u16,
            headers: json_col(r, 22)?.unwrap_or_default(),
            body: r.get::<_, Option<Vec<u8>>>(23)?.unwrap_or_default(),
            truncated: r.get(24)?,
        }),
    };
    Ok(Job {
        id: r.get(0)?,
        token: r.get(1)?,
        account: r.get(2)?,
        provider: r.get(3)?,
        state,
        run_at: r.get(5)?,
        attempts: r.get(6)?,
        max_attempts: r.get(7)?,
        method: r.get(8)?,
        url: r.get(9)?,
        headers: json_col(r, 10)?.unwrap_or_default(),
        body: r.get(11)?,
        timeout_ms: r.get(12)?,
        backoff: json_col(r, 13)?,
        idempotency_key: r.get(14)?,
        expires_at: r.get(15)?,
        callback_url: r.get(16)?,
        metadata: json_col(r, 17)?.unwrap_or(Value::Null),
        lease_owner: r.get(18)?,
        lease_until: r.get(19)?,
        last_error: json_col::<JobError>(r, 20)?,
        result,
        created_at: r.get(25)?,
        updated_at: r.get(26)?,
        operation_id: r.get(27)?,
        step_index: r.get(28)?,
        webhook_id: r.get(29)?,
        signing_key: r.get(30)?,
        attempts_base: r.get(31)?,
    })
}

/// The id and polling token of a job just written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inserted {
    pub id: i64,
    pub token: String,
}

const INSERT: &str = r#"
INSERT INTO jobs (token, account, provider, state, run_at, max_attempts, method, url, headers,
                  body, timeout_ms, backoff, idempotency_key, expires_at, callback_url, metadata,
                  operation_id, step_index, webhook_id, signing_key, created_at, updated_at)
VALUES (:token, :account, :provider, :state, :run_at, :max_attempts, :method, :url, :headers,
        :body, :timeout_ms, :backoff, :idempotency_key, :expires_at, :callback_url, :metadata,
        :operation_id, :step_index, :webhook_id, :signing_key, :now, :now)
"#;

/// Inserts a validated job at `now` (Unix ms) and returns its id and token. Run it in
/// the caller's transaction: the job exists only if that transaction commits.
pub fn insert(conn: &Connection, job: &NewJob, now: i64) -> Result<Inserted> {
    let token = crate::rand::token();
    let run_at = match job.due {
        Due::After(d) => now.saturating_add(d),
        Due::At(t) => t,
    };
    let key = match &job.idempotency_key {
        OutboundKey::Generate => Some(format!("errand-{}", crate::rand::token())),
        OutboundKey::Given(k) => Some(k.clone()),
        OutboundKey::Disabled => None,
    };
    let headers = serde_json::to_string(&job.headers).unwrap_or_else(|_| "[]".into());
    let backoff = job
        .backoff
        .as_ref()
        .and_then(|b| serde_json::to_string(b).ok());
    let metadata = job.metadata.to_string();
    let mut stmt = conn.prepare_cached(INSERT)?;
    stmt.execute(named_params! {
        ":token": token,
        ":account": job.account,
        ":provider": job.provider,
        ":state": job.state.as_str(),
        ":run_at": run_at,
        ":max_attempts": job.max_attempts,
        ":method": job.method,
        ":url": job.url,
        ":headers": headers,
        ":body": job.body,
        ":timeout_ms": job.timeout_ms,
        ":backoff": backoff,
        ":idempotency_key": key,
        ":expires_at": job.expires_at,
        ":callback_url": job.callback_url,
        ":metadata": metadata,
        ":operation_id": job.internal.operation.map(|o| o.0),
        ":step_index": job.internal.operation.map(|o| o.1),
        ":webhook_id": job.internal.webhook_id,
        ":signing_key": job.internal.signing_key,
        ":now": now,
    })?;
    Ok(Inserted {
        id: conn.last_insert_rowid(),
        token,
    })
}

/// Reads one job; `NotFound` when there is none with that id.
pub fn get(conn: &Connection, id: i64) -> Result<Job> {
    find(conn, id)?.ok_or_else(|| Error::NotFound(format!("job {id}")))
}

/// Reads one job if it exists.
pub fn find(conn: &Connection, id: i64) -> Result<Option<Job>> {
    let sql = format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1");
    let mut stmt = conn.prepare_cached(&sql)?;
    Ok(stmt.query_row([id], from_row).optional()?)
}

/// Which jobs to list or act on in bulk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub account: Option<String>,
    pub provider: Option<String>,
    /// Only jobs created at or after this time (Unix ms).
    pub since: Option<i64>,
}

/// Lists jobs matching `filter`, newest first, `limit` at most, with ids below `before`
/// (keyset paging: pass the last id of the previous page).
pub fn list(
    conn: &Connection,
    filter: &JobFilter,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<Job>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM jobs
          WHERE (:state IS NULL OR state = :state)
            AND (:account IS NULL OR account = :account)
            AND (:provider IS NULL OR provider = :provider)
            AND (:since IS NULL OR created_at >= :since)
            AND (:before IS NULL OR id < :before)
          ORDER BY id DESC LIMIT :limit"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(
        named_params! {
            ":state": filter.state.map(JobState::as_str),
            ":account": filter.account,
            ":provider": filter.provider,
            ":since": filter.since,
            ":before": before,
            ":limit": limit.clamp(1, 1000),
        },
        from_row,
    )?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Number of jobs in each state (states with none are left out).
pub fn count_by_state(conn: &Connection) -> Result<Vec<(JobState, i64)>> {
    let mut stmt = conn.prepare_cached("SELECT state, COUNT(*) FROM jobs GROUP BY state")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (s, n) = row?;
        if let Ok(st) = s.parse() {
            out.push((st, n));
        }
    }
    Ok(out)
}

const USER_TRANSITION: &str = r#"
UPDATE jobs SET state = :to, updated_at = :now,
       run_at = :run_at,
       attempts_base = CASE WHEN :from = 'draft' AND :to = 'approved' THEN attempts ELSE attempts_base END,
       last_error = CASE WHEN :to = 'canceled' THEN :error ELSE last_error END,
       finished_at = CASE WHEN :to = 'canceled' THEN :now ELSE NULL END
 WHERE id = :id AND state = :from
"#;

/// Applies a user's action to job `id` at `now`: the state machine decides, the UPDATE
/// is guarded by the state read, and a forbidden action is a `Conflict` naming the
/// current state. Returns the job as it is afterwards.
pub fn user_action(conn: &Connection, id: i64, action: UserAction, now: i64) -> Result<Job> {
    let job = get(conn, id)?;
    let to = action.target(job.state).ok_or_else(|| Error::Conflict {
        id,
        state: job.state,
        action: action.as_str().to_string(),
    })?;
    let error = (to == JobState::Canceled).then(|| {
        serde_json::json!({"category": "user", "reason": "canceled_by_user",
                           "message": "canceled by a user"})
        .to_string()
    });
    // "Retry now" makes the job due at once; approving keeps a draft's scheduled time.
    let run_at = if action == UserAction::Retry {
        now
    } else {
        job.run_at
    };
    let mut stmt = conn.prepare_cached(USER_TRANSITION)?;
    let n = stmt.execute(named_params! {
        ":to": to.as_str(), ":now": now, ":id": id, ":from": job.state.as_str(),
        ":error": error, ":run_at": run_at,
    })?;
    if n == 0 {
        return Err(Error::Expired {
            id,
            expected: job.state,
        });
    }
    get(conn, id)
}
