//! The engine's state changes: claim (approved/retry -> running), record an outcome
//! (running -> anything), extend and reap leases. Every UPDATE is guarded by the state,
//! lease owner and attempt it expects; zero rows changed is `Expired`, never silence.

use rusqlite::{named_params, params, params_from_iter, Connection};

use super::jobs::{from_row, COLUMNS};
use crate::error::Result;
use crate::job::{Job, JobError, JobResult, JobState};
use crate::store::attempts::{self, AttemptRecord, Outcome};
use crate::store::{accounts, notes, placeholders};

/// A due job's routing fields, read before the claim so limits can be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: i64,
    pub account: String,
    pub provider: String,
}

/// The due-job query (public so a test can check its plan).
pub const CANDIDATES: &str = r#"
SELECT id, account, provider FROM jobs INDEXED BY jobs_due
 WHERE state IN ('approved', 'retry') AND run_at <= :now
   AND NOT EXISTS (SELECT 1 FROM accounts a WHERE a.account = jobs.account AND a.paused = 1)
 ORDER BY run_at
 LIMIT :limit
"#;

/// Due jobs in order of `run_at`, skipping paused accounts, `limit` at most. Served by
/// the partial index `jobs_due` (forced with INDEXED BY: with no statistics the planner
/// may prefer the state index and sort, which grows with the table).
pub fn due_candidates(conn: &Connection, now: i64, limit: usize) -> Result<Vec<Candidate>> {
    due_candidates_except(conn, now, limit, &[], &[])
}

/// [`due_candidates`] without the jobs of `providers` and of the (provider, account)
/// pairs in `pairs`: those the limits refuse now, so that a backlog of theirs cannot
/// hide the jobs behind it. Same index, same order.
pub fn due_candidates_except(
    conn: &Connection,
    now: i64,
    limit: usize,
    providers: &[String],
    pairs: &[(String, String)],
) -> Result<Vec<Candidate>> {
    let map = |r: &rusqlite::Row<'_>| {
        Ok(Candidate {
            id: r.get(0)?,
            account: r.get(1)?,
            provider: r.get(2)?,
        })
    };
    if providers.is_empty() && pairs.is_empty() {
        let mut stmt = conn.prepare_cached(CANDIDATES)?;
        let rows = stmt.query_map(named_params! {":now": now, ":limit": limit as i64}, map)?;
        return Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?);
    }
    let mut extra = String::new();
    let mut values: Vec<rusqlite::types::Value> = vec![now.into()];
    if !providers.is_empty() {
        extra.push_str(&format!(
            "   AND provider NOT IN ({})\n",
            placeholders(providers.len())
        ));
        values.extend(providers.iter().map(|p| p.clone().into()));
    }
    // One term per provider, its accounts in an IN list: the expression stays shallow
    // (SQLite refuses a tree deeper than 1,000) however many accounts are refused.
    let mut by_provider: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for (provider, account) in pairs {
        by_provider.entry(provider).or_default().push(account);
    }
    for (provider, accounts) in by_provider {
        extra.push_str(&format!(
            "   AND NOT (provider = ? AND account IN ({}))\n",
            placeholders(accounts.len())
        ));
        values.push(provider.to_string().into());
        values.extend(accounts.iter().map(|a| a.to_string().into()));
    }
    values.push((limit as i64).into());
    let sql = CANDIDATES
        .replace(":now", "?")
        .replace(" ORDER BY", &format!("{extra} ORDER BY"))
        .replace(":limit", "?");
    // Not cached: the shape depends on what is refused, and it is the rare path.
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(params_from_iter(values), map)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// The earliest `run_at` of a job waiting in approved or retry, if any.
pub fn next_due_at(conn: &Connection) -> Result<Option<i64>> {
    let mut stmt = conn.prepare_cached(
        "SELECT MIN(run_at) FROM jobs INDEXED BY jobs_due WHERE state IN ('approved', 'retry')",
    )?;
    Ok(stmt.query_row([], |r| r.get(0))?)
}

/// Claims the given jobs if they are still due and unclaimed: sets `running`, the lease
/// and `attempts + 1` in one statement, and returns the claimed rows.
pub fn claim(
    conn: &Connection,
    ids: &[i64],
    owner: &str,
    lease_until: i64,
    now: i64,
) -> Result<Vec<Job>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    // The IN list has a power-of-two length (padded by repeating the first id: IN is a
    // set), so the claims of a busy engine share a handful of cached statements instead
    // of evicting each other: one per batch size would re-prepare most claims.
    let slots = ids.len().next_power_of_two();
    let sql = format!(
        "UPDATE jobs SET state = 'running', lease_owner = ?, lease_until = ?, attempts = attempts + 1,
                updated_at = ?
          WHERE id IN ({}) AND state IN ('approved', 'retry') AND run_at <= ?
         RETURNING {COLUMNS}",
        placeholders(slots)
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut values: Vec<rusqlite::types::Value> =
        vec![owner.to_string().into(), lease_until.into(), now.into()];
    values.extend(ids.iter().map(|&i| i.into()));
    values.extend(std::iter::repeat_n(ids[0].into(), slots - ids.len()));
    values.push(now.into());
    let rows = stmt.query_map(params_from_iter(values), from_row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// What an attempt (or a decision not to make one) does to a running job.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// running -> succeeded, with the response kept as the result.
    Succeed(JobResult),
    /// running -> retry at `run_at`.
    Retry { run_at: i64 },
    /// running -> draft: held for a person.
    Hold,
    /// running -> canceled.
    Cancel,
    /// running -> approved: released before any request was sent; no attempt counted.
    Release,
}

impl Next {
    /// The state the job moves to.
    pub fn state(&self) -> JobState {
        match self {
            Next::Succeed(_) => JobState::Succeeded,
            Next::Retry { .. } => JobState::Retry,
            Next::Hold => JobState::Draft,
            Next::Cancel => JobState::Canceled,
            Next::Release => JobState::Approved,
        }
    }
}

/// Everything one finished attempt writes, in one savepoint of the writer's batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub job_id: i64,
    pub account: String,
    pub provider: String,
    /// The lease this process holds; the update is guarded by it.
    pub lease_owner: String,
    /// The job's `attempts` as claimed (this attempt's number).
    pub attempt: i64,
    pub next: Next,
    pub error: Option<JobError>,
    /// False when no request was sent (preflight, release): the attempt is not counted.
    pub counted: bool,
    /// The audit row; None when no request was sent.
    pub record: Option<AttemptRecord>,
    pub notices: Vec<notes::Notice>,
    /// (signature, sample) of an unclassified answer.
    pub triage: Option<(String, String)>,
    /// The credential version a 401 answered; it is marked invalid.
    pub invalidate_credential: Option<i64>,
    /// (operation, step) this job is: a success moves the operation's recovery point and
    /// creates the next step's job in the same transaction.
    pub operation: Option<(i64, i64)>,
    /// The signing key of a subscription that answered 410 Gone: it is disabled.
    pub disable_subscription: Option<String>,
    /// The job's `callback_url`: when the job finishes or is held, the job as the API
    /// shows it is POSTed there (as an errand job itself, with retries).
    pub callback_url: Option<String>,
}

impl Finished {
    /// The outcome of `job`'s current attempt, guarded by the lease and attempt it was
    /// claimed with, carrying its operation step and callback, with no audit row and no
    /// side effects yet (set them on the result).
    pub fn for_job(job: &Job, next: Next, error: Option<JobError>, counted: bool) -> Finished {
        Finished {
            job_id: job.id,
            account: job.account.clone(),
            provider: job.provider.clone(),
            lease_owner: job.lease_owner.clone().unwrap_or_default(),
            attempt: job.attempts,
            next,
            error,
            counted,
            record: None,
            notices: Vec::new(),
            triage: None,
            invalidate_credential: None,
            operation: job.operation_id.zip(job.step_index),
            disable_subscription: None,
            callback_url: job.callback_url.clone(),
        }
    }
}

/// Enqueues the callback of job `id` (state `to`) to `url`, in the outcome's transaction.
fn enqueue_callback(conn: &Connection, id: i64, attempt: i64, url: &str, now: i64) -> Result<()> {
    let job = super::jobs::get(conn, id)?;
    let mut cb = crate::spec::NewJob::get(&job.account, url);
    cb.provider = "callback".into();
    cb.method = "POST".into();
    cb.headers = vec![("Content-Type".into(), "application/json".into())];
    cb.body = Some(serde_json::to_vec(&job.to_json()).unwrap_or_default());
    cb.idempotency_key = crate::spec::OutboundKey::Given(format!("errand-callback-{id}-{attempt}"));
    cb.metadata = serde_json::json!({"callback_for": id.to_string()});
    super::jobs::insert(conn, &cb, now)?;
    Ok(())
}

const RECORD: &str = r#"
UPDATE jobs SET state = ?1,
       run_at = COALESCE(?2, run_at),
       attempts = attempts - ?3,
       lease_owner = NULL, lease_until = NULL,
       last_error = CASE WHEN ?1 = 'succeeded' THEN NULL
                         WHEN ?4 IS NULL THEN last_error ELSE ?4 END,
       result_status = COALESCE(?5, result_status),
       result_headers = COALESCE(?6, result_headers),
       result_body = COALESCE(?7, result_body),
       result_truncated = COALESCE(?8, result_truncated),
       updated_at = ?9,
       finished_at = CASE WHEN ?1 IN ('succeeded', 'canceled') THEN ?9 ELSE NULL END
 WHERE id = ?10 AND state = 'running' AND lease_owner = ?11 AND attempts = ?12
"#;

/// Writes a finished attempt: the job's new state (guarded by state, owner and attempt),
/// the audit row, notifications, triage and credential invalidation. When the lease was
/// lost meanwhile (the reaper took the job back) only the audit row is written, so the
/// log stays complete, and `Ok(false)` is returned.
pub fn record(conn: &Connection, f: &Finished, now: i64) -> Result<bool> {
    let to = f.next.state();
    let (run_at, result) = match &f.next {
        Next::Retry { run_at } => (Some(*run_at), None),
        Next::Succeed(r) => (None, Some(r)),
        _ => (None, None),
    };
    let error = f.error.as_ref().and_then(|e| serde_json::to_string(e).ok());
    let mut stmt = conn.prepare_cached(RECORD)?;
    // Positional parameters: binding by name costs a lookup per name per job, and this
    // runs once for every attempt.
    let n = stmt.execute(params![
        to.as_str(),
        run_at,
        i64::from(!f.counted),
        error,
        result.map(|r| r.status),
        result.and_then(|r| serde_json::to_string(&r.headers).ok()),
        result.map(|r| r.body.as_slice()),
        result.map(|r| r.truncated),
        now,
        f.job_id,
        f.lease_owner,
        f.attempt,
    ])?;
    if let Some(rec) = &f.record {
        attempts::insert(conn, rec)?;
    }
    if n == 0 {
        return Ok(false);
    }
    if let Some(version) = f.invalidate_credential {
        accounts::invalidate_credential(
            conn,
            &f.account,
            &f.provider,
            version,
            "the provider answered 401 Unauthorized",
            now,
        )?;
    }
    for n in &f.notices {
        notes::notify(conn, n, now)?;
    }
    if let Some((sig, sample)) = &f.triage {
        notes::triage(conn, &f.provider, sig, sample, f.job_id, now)?;
    }
    if let (Some((op, step)), Some(r)) = (f.operation, result) {
        super::operations::step_succeeded(conn, op, step, r, now)?;
    }
    if let Some(url) = &f.callback_url {
        if matches!(
            to,
            JobState::Succeeded | JobState::Canceled | JobState::Draft
        ) {
            enqueue_callback(conn, f.job_id, f.attempt, url, now)?;
        }
    }
    if let Some(key) = &f.disable_subscription {
        if super::channels::disable(conn, key, "the subscriber answered 410 Gone", now)? {
            notes::notify(
                conn,
                &notes::Notice {
                    kind: "subscription_disabled",
                    account: Some(f.account.clone()),
                    provider: Some(f.provider.clone()),
                    job_id: Some(f.job_id),
                    message: format!(
                        "{} answered 410 Gone: subscription disabled",
                        key.trim_start_matches("subscription:")
                    ),
                    dedupe_key: None,
                },
                now,
            )?;
        }
    }
    Ok(true)
}

/// Extends every lease `owner` holds to `until`, but those of the jobs in `except`.
/// Returns how many.
pub fn extend_leases(conn: &Connection, owner: &str, until: i64, except: &[i64]) -> Result<usize> {
    if except.is_empty() {
        let mut stmt = conn.prepare_cached(
            "UPDATE jobs SET lease_until = :until WHERE state = 'running' AND lease_owner = :owner",
        )?;
        return Ok(stmt.execute(named_params! {":until": until, ":owner": owner})?);
    }
    let sql = format!(
        "UPDATE jobs SET lease_until = ? WHERE state = 'running' AND lease_owner = ?
            AND id NOT IN ({})",
        placeholders(except.len())
    );
    let mut values: Vec<rusqlite::types::Value> = vec![until.into(), owner.to_string().into()];
    values.extend(except.iter().map(|&i| i.into()));
    Ok(conn.prepare(&sql)?.execute(params_from_iter(values))?)
}

/// The distinct owners of leases currently held.
pub fn lease_owners(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT lease_owner FROM jobs WHERE state = 'running' AND lease_owner IS NOT NULL",
    )?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Running jobs whose lease expired before `now`, or whose owner is in `dead_owners`.
pub fn lost_jobs(
    conn: &Connection,
    now: i64,
    dead_owners: &[String],
    limit: usize,
) -> Result<Vec<Job>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM jobs WHERE state = 'running'
            AND (lease_until < ? OR lease_owner IN ({}))
          ORDER BY lease_until LIMIT ?",
        placeholders(dead_owners.len().max(1))
    );
    let mut values: Vec<rusqlite::types::Value> = vec![now.into()];
    if dead_owners.is_empty() {
        values.push(rusqlite::types::Value::Null);
    } else {
        values.extend(dead_owners.iter().map(|o| o.clone().into()));
    }
    values.push((limit as i64).into());
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params_from_iter(values), from_row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// The audit row of an attempt whose outcome is unknown because its lease was lost.
pub fn lost_record(job: &Job, now: i64) -> AttemptRecord {
    AttemptRecord {
        job_id: job.id,
        attempt: job.attempts,
        started_at: job.updated_at,
        duration_ms: (now - job.updated_at).max(0),
        outcome: Outcome::Lost,
        ambiguous: true,
        request_method: job.method.clone(),
        request_url: job.url.clone(),
        request_headers: crate::http_call::redact_headers(&job.headers, None, None),
        request_body: None,
        response_status: None,
        response_headers: None,
        response_body: None,
        response_truncated: false,
        error: Some(format!(
            "lease of {} expired: the process running the attempt stopped; the request may have been sent",
            job.lease_owner.as_deref().unwrap_or("unknown")
        )),
        runner: job.lease_owner.clone().unwrap_or_default(),
    }
}

/// Counts jobs that are due now (the backlog) and the oldest due `run_at`.
pub fn due_backlog(conn: &Connection, now: i64) -> Result<(i64, Option<i64>)> {
    let mut stmt = conn.prepare_cached(
        "SELECT COUNT(*), MIN(run_at) FROM jobs INDEXED BY jobs_due
          WHERE state IN ('approved', 'retry') AND run_at <= ?1",
    )?;
    Ok(stmt.query_row([now], |r| Ok((r.get(0)?, r.get(1)?)))?)
}

/// Deletes attempt rows older than `attempts_before` and finished jobs (with their
/// attempts) older than `jobs_before`; idempotency keys older than `keys_before`.
pub fn prune(
    conn: &Connection,
    attempts_before: Option<i64>,
    jobs_before: Option<i64>,
    keys_before: i64,
) -> Result<(usize, usize)> {
    let mut attempts_deleted = 0;
    let mut jobs_deleted = 0;
    if let Some(t) = attempts_before {
        attempts_deleted += conn.execute("DELETE FROM attempts WHERE started_at < ?1", [t])?;
    }
    if let Some(t) = jobs_before {
        attempts_deleted += conn.execute(
            "DELETE FROM attempts WHERE job_id IN (SELECT id FROM jobs WHERE finished_at < ?1)",
            [t],
        )?;
        jobs_deleted = conn.execute("DELETE FROM jobs WHERE finished_at < ?1", [t])?;
    }
    conn.execute(
        "DELETE FROM idempotency_keys WHERE created_at < ?1",
        [keys_before],
    )?;
    Ok((attempts_deleted, jobs_deleted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::NewJob;
    use crate::store::{jobs, Store, Synchronous};

    #[test]
    fn a_claim_of_any_size_takes_exactly_its_jobs_through_a_padded_in_list() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().join("c.db"), Synchronous::Normal).expect("store");
        let now = 1_000;
        let ids: Vec<i64> = store
            .write(|tx| {
                (0..9)
                    .map(|_| Ok(jobs::insert(tx, &NewJob::get("acme", "http://x/"), now)?.id))
                    .collect()
            })
            .expect("insert");
        // 5 ids use the 8-slot statement, 1 the 1-slot one, 3 the 4-slot one.
        for (take, slots) in [(&ids[0..5], 8), (&ids[5..6], 1), (&ids[6..9], 4)] {
            let claimed = store
                .write(|tx| claim(tx, take, "me", now + 60_000, now))
                .expect("claim");
            let mut got: Vec<i64> = claimed.iter().map(|j| j.id).collect();
            got.sort_unstable();
            assert_eq!(got, take, "{slots} slots");
        }
        // Claimed once each: nothing is left to claim.
        let again = store
            .write(|tx| claim(tx, &ids, "me", now + 60_000, now))
            .expect("claim");
        assert!(again.is_empty());
    }
}
