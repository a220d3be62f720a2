//! The job model: its states, the one transition table (SPEC §2), and the stored row.

use std::fmt;
use std::str::FromStr;

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::time::format_rfc3339;

/// The state of a job. Mirrored by a CHECK and a trigger in `schema.sql`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JobState {
    /// Waiting for a person: created as a draft, held after exhausting retries, or
    /// reopened. Left by the user's approve or cancel.
    Draft,
    /// Due at `run_at`. Left when the scheduler claims it, or the user cancels it.
    Approved,
    /// Claimed by a worker under a lease. Left only by the worker's recorded outcome, a
    /// release before sending, or the reaper when the lease expires.
    Running,
    /// Waiting for its backoff to pass. Left when claimed again, by "retry now", or cancel.
    Retry,
    /// Finished with a 2xx response. Terminal.
    Succeeded,
    /// Stopped for good: refused, unauthorized, a preflight failure, or by the user. Left
    /// only by the user's reopen.
    Canceled,
}

impl JobState {
    /// Every state, in the order of the SPEC.
    pub const ALL: [JobState; 6] = [
        JobState::Draft,
        JobState::Approved,
        JobState::Running,
        JobState::Retry,
        JobState::Succeeded,
        JobState::Canceled,
    ];

    /// The name stored in the database and shown in the API (contract).
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Draft => "draft",
            JobState::Approved => "approved",
            JobState::Running => "running",
            JobState::Retry => "retry",
            JobState::Succeeded => "succeeded",
            JobState::Canceled => "canceled",
        }
    }

    /// True while errand still owes the job an attempt: a poll answers 202.
    pub fn is_pending(self) -> bool {
        matches!(
            self,
            JobState::Approved | JobState::Running | JobState::Retry
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = Error;
    fn from_str(s: &str) -> Result<JobState> {
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                Error::invalid(
                    "state",
                    format!(
                        "unknown state {s:?}; use one of draft, approved, running, retry, succeeded, canceled"
                    ),
                )
            })
    }
}

/// The transition table of SPEC §2: (from, to) pairs that may happen. `schema.sql`'s
/// trigger holds the same list.
pub const TRANSITIONS: [(JobState, JobState); 13] = {
    use JobState::*;
    [
        (Draft, Approved),
        (Approved, Running),
        (Retry, Running),
        (Running, Succeeded),
        (Running, Retry),
        (Running, Canceled),
        (Running, Draft),
        (Running, Approved),
        (Draft, Canceled),
        (Approved, Canceled),
        (Retry, Canceled),
        (Canceled, Draft),
        (Retry, Approved),
    ]
};

/// True when the state machine allows moving a job from `from` to `to`.
pub fn can_transition(from: JobState, to: JobState) -> bool {
    TRANSITIONS.contains(&(from, to))
}

/// A user's action on a job (API, CLI or admin page), each a single transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserAction {
    /// draft -> approved.
    Approve,
    /// draft, approved, retry -> canceled.
    Cancel,
    /// retry -> approved with run_at = now ("retry now"); draft -> approved as well, so a
    /// held job can be re-run in one step.
    Retry,
    /// canceled -> draft, for review.
    Reopen,
}

impl UserAction {
    /// The action's name in URLs and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            UserAction::Approve => "approve",
            UserAction::Cancel => "cancel",
            UserAction::Retry => "retry",
            UserAction::Reopen => "reopen",
        }
    }

    /// The state the action moves a job in state `from` to, if the table allows it.
    pub fn target(self, from: JobState) -> Option<JobState> {
        let to = match (self, from) {
            (UserAction::Approve, _) => JobState::Approved,
            (UserAction::Cancel, _) => JobState::Canceled,
            (UserAction::Retry, _) => JobState::Approved,
            (UserAction::Reopen, _) => JobState::Draft,
        };
        let allowed = match self {
            UserAction::Approve => from == JobState::Draft,
            UserAction::Retry => matches!(from, JobState::Retry | JobState::Draft),
            UserAction::Cancel => {
                matches!(from, JobState::Draft | JobState::Approved | JobState::Retry)
            }
            UserAction::Reopen => from == JobState::Canceled,
        };
        (allowed && can_transition(from, to)).then_some(to)
    }
}

impl FromStr for UserAction {
    type Err = Error;
    fn from_str(s: &str) -> Result<UserAction> {
        match s {
            "approve" => Ok(UserAction::Approve),
            "cancel" => Ok(UserAction::Cancel),
            "retry" => Ok(UserAction::Retry),
            "reopen" => Ok(UserAction::Reopen),
            _ => Err(Error::invalid(
                "action",
                format!("unknown action {s:?}; use approve, cancel, retry or reopen"),
            )),
        }
    }
}

/// Why a job stopped or was held: shown as the job's `error`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobError {
    /// The outcome category (`unavailable`, `unauthorized`, ...) or `preflight`/`user`.
    pub category: String,
    /// A stable machine-readable reason, e.g. `credential_invalid`, `exhausted`.
    pub reason: String,
    /// A sentence for a person.
    pub message: String,
}

/// A job as stored.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: i64,
    pub token: String,
    pub account: String,
    pub provider: String,
    pub state: JobState,
    pub run_at: i64,
    pub attempts: i64,
    /// Attempts made before a person last re-ran the job: `max_attempts` counts from here.
    pub attempts_base: i64,
    pub max_attempts: Option<i64>,
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout_ms: Option<i64>,
    pub backoff: Option<crate::backoff::Backoff>,
    pub idempotency_key: Option<String>,
    pub expires_at: Option<i64>,
    pub callback_url: Option<String>,
    pub metadata: Value,
    pub lease_owner: Option<String>,
    pub lease_until: Option<i64>,
    pub last_error: Option<JobError>,
    pub result: Option<JobResult>,
    pub created_at: i64,
    pub updated_at: i64,
    pub operation_id: Option<i64>,
    pub step_index: Option<i64>,
    pub webhook_id: Option<String>,
    pub signing_key: Option<String>,
}

/// The stored response of a finished job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobResult {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub truncated: bool,
}

/// Renders response fields `{status, headers, body, json, truncated}` as the API shows them.
pub fn response_json(
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
    truncated: bool,
) -> Value {
    let hdrs: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let text = String::from_utf8_lossy(body).into_owned();
    let parsed = serde_json::from_slice::<Value>(body).ok();
    json!({
        "status": status,
        "headers": hdrs,
        "body": text,
        "json": parsed,
        "truncated": truncated,
    })
}

impl Job {
    /// The job as the API and `--json` show it (contract fields of SPEC §4). Never holds
    /// a credential: jobs do not carry them.
    pub fn to_json(&self) -> Value {
        let result = self
            .result
            .as_ref()
            .map(|r| response_json(r.status, &r.headers, &r.body, r.truncated));
        let next_run_at = self.state.is_pending().then(|| format_rfc3339(self.run_at));
        json!({
            "id": self.id.to_string(),
            "state": self.state.as_str(),
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "account": self.account,
            "provider": self.provider,
            "request": {"method": self.method, "url": self.url},
            "result": result,
            "error": self.last_error,
            "next_run_at": next_run_at,
            "expires_at": self.expires_at.map(format_rfc3339),
            "metadata": self.metadata,
            "operation_id": self.operation_id.map(|i| i.to_string()),
            "created_at": format_rfc3339(self.created_at),
            "updated_at": format_rfc3339(self.updated_at),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_round_trip() {
        for s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>().unwrap(), s);
        }
        assert!("done".parse::<JobState>().is_err());
    }

    #[test]
    fn user_actions_follow_the_table() {
        use JobState::*;
        for from in JobState::ALL {
            for action in [
                UserAction::Approve,
                UserAction::Cancel,
                UserAction::Retry,
                UserAction::Reopen,
            ] {
                if let Some(to) = action.target(from) {
                    assert!(can_transition(from, to), "{action:?} {from} -> {to}");
                }
            }
        }
        assert_eq!(UserAction::Approve.target(Canceled), None);
        assert_eq!(UserAction::Cancel.target(Running), None);
        assert_eq!(UserAction::Cancel.target(Retry), Some(Canceled));
        assert_eq!(UserAction::Retry.target(Retry), Some(Approved));
        assert_eq!(UserAction::Reopen.target(Canceled), Some(Draft));
        assert_eq!(UserAction::Reopen.target(Succeeded), None);
    }
}
