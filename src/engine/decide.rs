//! Pure: a classified attempt -> what happens to the job (SPEC §3.7). The attempt limit
//! is applied after the category ("decide purely, then normalise").

use crate::backoff;
use crate::classify::Classified;
use crate::config::{OnOutcome, Provider};
use crate::job::{Job, JobError};
use crate::store::attempts::Outcome;
use crate::store::engine::Next;
use crate::store::notes::Notice;

/// The decision for one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub next: Next,
    pub error: Option<JobError>,
    pub notices: Vec<Notice>,
    /// The credential (by version) a 401 condemns.
    pub invalidate_credential: bool,
    /// An unclassified answer goes to triage.
    pub triage: bool,
}

fn err(category: &str, reason: &str, message: String) -> Option<JobError> {
    Some(JobError {
        category: category.to_string(),
        reason: reason.to_string(),
        message,
    })
}

fn notice(kind: &'static str, job: &Job, message: String, dedupe: Option<String>) -> Notice {
    Notice {
        kind,
        account: Some(job.account.clone()),
        provider: Some(job.provider.clone()),
        job_id: Some(job.id),
        message,
        dedupe_key: dedupe,
    }
}

/// Decides what an attempt means for `job` (whose `attempts` counts this one).
/// `detail` describes the answer for messages; `result` is the response kept on success.
#[allow(clippy::too_many_arguments)]
pub fn decide(
    job: &Job,
    provider: &Provider,
    c: &Classified,
    detail: &str,
    result: Option<crate::job::JobResult>,
    credential_version: Option<i64>,
    now_ms: i64,
    unit_random: f64,
) -> Decision {
    let max_attempts = job
        .max_attempts
        .or(provider.max_attempts)
        .unwrap_or(backoff::DEFAULT_MAX_ATTEMPTS);
    let policy = job.backoff.as_ref().or(provider.backoff.as_ref());
    let mut d = Decision {
        next: Next::Hold,
        error: None,
        notices: Vec::new(),
        invalidate_credential: false,
        triage: false,
    };
    let retry_or_exhaust = |d: &mut Decision, category: &str, reason: &str| {
        // Attempts count from the last time a person re-ran the job, so approving or
        // retrying a held job gives it its whole budget again.
        let made = job.attempts - job.attempts_base;
        if made >= max_attempts {
            d.next = Next::Hold;
            d.error = err(
                category,
                "exhausted",
                format!("{detail}; gave up after {} attempts", job.attempts),
            );
            d.notices.push(notice(
                "exhausted",
                job,
                format!(
                    "job {} held for review after {} attempts: {detail}",
                    job.id, job.attempts
                ),
                None,
            ));
        } else {
            let retry_index = (made - 1).max(0) as u32;
            d.next = Next::Retry {
                run_at: backoff::next_run_at(
                    now_ms,
                    retry_index,
                    policy,
                    max_attempts,
                    c.retry_after_ms,
                    unit_random,
                ),
            };
            d.error = err(category, reason, detail.to_string());
        }
    };
    match c.outcome {
        Outcome::Success => {
            d.next = Next::Succeed(result.unwrap_or(crate::job::JobResult {
                status: 200,
                headers: Vec::new(),
                body: Vec::new(),
                truncated: false,
            }));
        }
        Outcome::Unavailable | Outcome::Lost => {
            if c.ambiguous && provider.on_timeout == OnOutcome::Hold {
                d.next = Next::Hold;
                d.error = err(
                    "unavailable",
                    "ambiguous_timeout",
                    format!("{detail}; the request may have been processed: check before retrying"),
                );
                d.notices.push(notice(
                    "held",
                    job,
                    format!(
                        "job {} held: timed out and the provider does not deduplicate",
                        job.id
                    ),
                    None,
                ));
            } else {
                retry_or_exhaust(&mut d, "unavailable", "unavailable");
            }
        }
        Outcome::Unauthorized => {
            d.next = Next::Cancel;
            d.error = err("unauthorized", "unauthorized", detail.to_string());
            d.invalidate_credential = credential_version.is_some();
            let dedupe = credential_version
                .map(|v| format!("reauthorize:{}:{}:{v}", job.account, job.provider));
            d.notices.push(notice(
                "reauthorize",
                job,
                format!(
                    "{} refused the credentials of account {}: store a new secret",
                    job.provider, job.account
                ),
                dedupe,
            ));
        }
        Outcome::Forbidden => {
            d.next = Next::Cancel;
            d.error = err("forbidden", "forbidden", detail.to_string());
            d.notices.push(notice(
                "forbidden",
                job,
                format!("{} refused job {}: {detail}", job.provider, job.id),
                None,
            ));
        }
        Outcome::Unclassified => {
            d.triage = true;
            match provider.on_unclassified {
                OnOutcome::Hold => {
                    d.next = Next::Hold;
                    d.error = err("unclassified", "held", format!("{detail}; held for review"));
                }
                OnOutcome::Retry => retry_or_exhaust(&mut d, "unclassified", "unclassified"),
            }
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobState;

    fn job(attempts: i64, max: Option<i64>) -> Job {
        Job {
            id: 7,
            token: String::new(),
            account: "acme".into(),
            provider: "p".into(),
            state: JobState::Running,
            run_at: 0,
            attempts,
            attempts_base: 0,
            max_attempts: max,
            method: "GET".into(),
            url: "http://x/".into(),
            headers: vec![],
            body: None,
            timeout_ms: None,
            backoff: None,
            idempotency_key: None,
            expires_at: None,
            callback_url: None,
            metadata: serde_json::Value::Null,
            lease_owner: None,
            lease_until: None,
            last_error: None,
            result: None,
            created_at: 0,
            updated_at: 0,
            operation_id: None,
            step_index: None,
            webhook_id: None,
            signing_key: None,
        }
    }

    fn c(outcome: Outcome) -> Classified {
        Classified {
            outcome,
            ambiguous: false,
            retry_after_ms: None,
        }
    }

    #[test]
    fn unavailable_retries_then_holds_when_exhausted() {
        let p = Provider::default();
        let d = decide(
            &job(1, Some(3)),
            &p,
            &c(Outcome::Unavailable),
            "503",
            None,
            None,
            1000,
            0.0,
        );
        assert_eq!(
            d.next,
            Next::Retry {
                run_at: 1000 + 15_000
            }
        );
        let d = decide(
            &job(3, Some(3)),
            &p,
            &c(Outcome::Unavailable),
            "503",
            None,
            None,
            1000,
            0.0,
        );
        assert_eq!(d.next, Next::Hold);
        assert_eq!(d.error.unwrap().reason, "exhausted");
        assert_eq!(d.notices[0].kind, "exhausted");
    }

    #[test]
    fn unauthorized_cancels_and_condemns_the_credential_once() {
        let p = Provider::default();
        let d = decide(
            &job(1, None),
            &p,
            &c(Outcome::Unauthorized),
            "401",
            None,
            Some(4),
            0,
            0.0,
        );
        assert_eq!(d.next, Next::Cancel);
        assert!(d.invalidate_credential);
        assert_eq!(
            d.notices[0].dedupe_key.as_deref(),
            Some("reauthorize:acme:p:4")
        );
    }

    #[test]
    fn unclassified_follows_the_provider_policy() {
        let mut p = Provider::default();
        let d = decide(
            &job(1, None),
            &p,
            &c(Outcome::Unclassified),
            "418",
            None,
            None,
            0,
            0.0,
        );
        assert_eq!(d.next, Next::Hold);
        assert!(d.triage);
        p.on_unclassified = OnOutcome::Retry;
        let d = decide(
            &job(1, None),
            &p,
            &c(Outcome::Unclassified),
            "418",
            None,
            None,
            0,
            0.0,
        );
        assert!(matches!(d.next, Next::Retry { .. }));
    }

    #[test]
    fn ambiguous_timeout_can_be_held() {
        let mut p = Provider {
            on_timeout: OnOutcome::Hold,
            ..Provider::default()
        };
        let mut cl = c(Outcome::Unavailable);
        cl.ambiguous = true;
        let d = decide(&job(1, None), &p, &cl, "timeout", None, None, 0, 0.0);
        assert_eq!(d.next, Next::Hold);
        p.on_timeout = OnOutcome::Retry;
        let d = decide(&job(1, None), &p, &cl, "timeout", None, None, 0, 0.0);
        assert!(matches!(d.next, Next::Retry { .. }));
    }
}
