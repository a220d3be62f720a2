//! Operations: create (with the first step's job), read with per-step state, and advance
//! the recovery point when a step succeeds (in the writer's transaction, together with
//! the insert of the next step's job).

use rusqlite::{named_params, Connection, OptionalExtension};
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::job::{Job, JobError, JobResult, JobState};
use crate::spec::OutboundKey;
use crate::store::jobs::{self, Inserted};
use crate::time::format_rfc3339;

/// An operation as stored.
#[derive(Debug, Clone)]
pub struct Operation {
    pub id: i64,
    pub token: String,
    pub account: String,
    pub steps: Vec<Value>,
    pub completed: i64,
    pub results: Vec<Value>,
    pub error: Option<JobError>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Where an operation stands, derived from its recovery point and its current step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpState {
    /// The current step is approved, running or waiting to retry.
    Running,
    /// Every step succeeded.
    Succeeded,
    /// The current step is held in draft for a person.
    Held,
    /// The current step was canceled, or could not be built.
    Canceled,
}

impl OpState {
    /// The name shown by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            OpState::Running => "running",
            OpState::Succeeded => "succeeded",
            OpState::Held => "held",
            OpState::Canceled => "canceled",
        }
    }
}

fn step_name(step: &Value) -> String {
    step["name"].as_str().unwrap_or("").to_string()
}

/// Inserts the job of step `index`, built from the results so far. When a placeholder
/// has no value the operation records the error and no job is created.
fn insert_step(conn: &Connection, op: &Operation, index: usize, now: i64) -> Result<Option<i64>> {
    match crate::operation::build_step(&op.account, &op.steps, index, &op.results) {
        Ok(mut job) => {
            if job.idempotency_key == OutboundKey::Generate {
                let short = op.token.get(..8).unwrap_or(&op.token);
                job.idempotency_key = OutboundKey::Given(format!(
                    "errand-op-{}-{short}-{}",
                    op.id,
                    step_name(&op.steps[index])
                ));
            }
            job.internal.operation = Some((op.id, index as i64));
            Ok(Some(jobs::insert(conn, &job, now)?.id))
        }
        Err(e) => {
            let err = JobError {
                category: "preflight".into(),
                reason: "template".into(),
                message: format!("step {:?}: {e}", step_name(&op.steps[index])),
            };
            conn.execute(
                "UPDATE operations SET error = ?1, updated_at = ?2 WHERE id = ?3",
                rusqlite::params![serde_json::to_string(&err).ok(), now, op.id],
            )?;
            Ok(None)
        }
    }
}

/// Creates an operation from validated steps and inserts its first step's job.
pub fn create(conn: &Connection, account: &str, steps: &[Value], now: i64) -> Result<Inserted> {
    let token = crate::rand::token();
    conn.execute(
        "INSERT INTO operations (token, account, steps, step_count, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
        rusqlite::params![
            token,
            account,
            Value::Array(steps.to_vec()).to_string(),
            steps.len() as i64,
            now
        ],
    )?;
    let id = conn.last_insert_rowid();
    let op = get(conn, id)?;
    insert_step(conn, &op, 0, now)?;
    Ok(Inserted { id, token })
}

/// The columns [`from_row`] reads, in its order.
pub(crate) const COLUMNS: &str =
    "id, token, account, steps, completed, results, error, created_at, updated_at";

/// An operation from a row of [`COLUMNS`].
pub(crate) fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Operation> {
    Ok(Operation {
        id: r.get(0)?,
        token: r.get(1)?,
        account: r.get(2)?,
        steps: serde_json::from_str(&r.get::<_, String>(3)?).unwrap_or_default(),
        completed: r.get(4)?,
        results: serde_json::from_str(&r.get::<_, String>(5)?).unwrap_or_default(),
        error: r
            .get::<_, Option<String>>(6)?
            .and_then(|e| serde_json::from_str(&e).ok()),
        created_at: r.get(7)?,
        updated_at: r.get(8)?,
    })
}

/// Reads an operation; `NotFound` if there is none.
pub fn get(conn: &Connection, id: i64) -> Result<Operation> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {COLUMNS} FROM operations WHERE id = ?1"))?;
    stmt.query_row([id], from_row)
        .optional()?
        .ok_or_else(|| Error::NotFound(format!("operation {id}")))
}

/// The newest job of each step that has one, by step index.
pub fn step_jobs(conn: &Connection, op_id: i64) -> Result<Vec<Job>> {
    let sql = format!(
        "SELECT {} FROM jobs WHERE operation_id = ?1 ORDER BY step_index, id",
        jobs::COLUMNS
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map([op_id], jobs::from_row)?;
    let mut out: Vec<Job> = Vec::new();
    for j in rows {
        let j = j?;
        if let Some(last) = out.last_mut() {
            if last.step_index == j.step_index {
                *last = j;
                continue;
            }
        }
        out.push(j);
    }
    Ok(out)
}

/// The job of the step the operation is at (None when finished or not built).
pub fn current_job(conn: &Connection, op: &Operation) -> Result<Option<Job>> {
    Ok(step_jobs(conn, op.id)?
        .into_iter()
        .find(|j| j.step_index == Some(op.completed)))
}

/// The operation's state, derived from its recovery point and its current step's job.
pub fn state(conn: &Connection, op: &Operation) -> Result<OpState> {
    if op.completed as usize >= op.steps.len() {
        return Ok(OpState::Succeeded);
    }
    if op.error.is_some() {
        return Ok(OpState::Canceled);
    }
    Ok(match current_job(conn, op)?.map(|j| j.state) {
        Some(JobState::Draft) => OpState::Held,
        Some(JobState::Canceled) => OpState::Canceled,
        Some(_) => OpState::Running,
        // The step's job is written with the step before it, so a missing one was pruned
        // (only finished jobs are): it ended canceled, or the operation would have moved on.
        None => OpState::Canceled,
    })
}

/// Records that step `index` succeeded with `result`: moves the recovery point and inserts
/// the next step's job, in the caller's transaction. A step already recorded is ignored.
pub fn step_succeeded(
    conn: &Connection,
    op_id: i64,
    index: i64,
    result: &JobResult,
    now: i64,
) -> Result<()> {
    let mut op = get(conn, op_id)?;
    if op.completed != index {
        return Ok(());
    }
    let entry = json!({
        "name": step_name(&op.steps[index as usize]),
        "status": result.status,
        "json": serde_json::from_slice::<Value>(&result.body).ok(),
    });
    op.results.push(entry);
    let n = conn.execute(
        "UPDATE operations SET completed = :next, results = :results, updated_at = :now
          WHERE id = :id AND completed = :index",
        named_params! {
            ":next": index + 1,
            ":results": Value::Array(op.results.clone()).to_string(),
            ":now": now,
            ":id": op_id,
            ":index": index,
        },
    )?;
    op.completed = index + 1;
    if n == 1 && (op.completed as usize) < op.steps.len() {
        insert_step(conn, &op, op.completed as usize, now)?;
    }
    Ok(())
}

/// The operation as the API shows it, with each step's state and result.
pub fn to_json(conn: &Connection, op: &Operation) -> Result<Value> {
    let jobs = step_jobs(conn, op.id)?;
    let steps: Vec<Value> = op
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let job = jobs.iter().find(|j| j.step_index == Some(i as i64));
            let state = match (i < op.completed as usize, job) {
                (true, _) => "succeeded".to_string(),
                (false, Some(j)) => j.state.as_str().to_string(),
                (false, None) => "pending".to_string(),
            };
            json!({
                "name": step_name(s),
                "state": state,
                "job_id": job.map(|j| j.id.to_string()),
                "attempts": job.map_or(0, |j| j.attempts),
                "result": job.and_then(|j| j.to_json().get("result").cloned()).filter(|r| !r.is_null()),
                "error": job.and_then(|j| j.last_error.clone()),
            })
        })
        .collect();
    let st = state(conn, op)?;
    // A held or canceled operation says why: its own error (a template that could not be
    // filled), else that of the step it stopped at.
    let error = match &op.error {
        Some(e) => json!(e),
        None if matches!(st, OpState::Held | OpState::Canceled) => json!(jobs
            .iter()
            .find(|j| j.step_index == Some(op.completed))
            .and_then(|j| j.last_error.clone())),
        None => Value::Null,
    };
    Ok(json!({
        "id": op.id.to_string(),
        "state": st.as_str(),
        "account": op.account,
        "completed_steps": op.completed,
        "steps": steps,
        "error": error,
        "created_at": format_rfc3339(op.created_at),
        "updated_at": format_rfc3339(op.updated_at),
    }))
}
