//! A worker: preflight (no network I/O before it passes) -> execute -> classify ->
//! decide -> hand the outcome to the writer. Only workers do network I/O.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;

use super::decide::decide;
use super::limits::{Admission, CircuitEvent};
use super::{Queued, Shared};
use crate::classify::{classify, signature};
use crate::config::Provider;
use crate::error::Result;
use crate::http_call::{self, Call, Reply};
use crate::job::{Job, JobError, JobResult};
use crate::store::accounts::{self, Credential};
use crate::store::attempts::{AttemptRecord, Outcome};
use crate::store::engine::{Finished, Next};
use crate::store::notes::Notice;

/// The default timeout of a whole call.
pub const DEFAULT_TIMEOUT_MS: i64 = 30_000;

pub(super) fn spawn(shared: Arc<Shared>, index: usize) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(format!("errand-worker-{index}"))
        .spawn(move || run(&shared))
        .unwrap_or_else(|e| panic!("cannot start a worker thread: {e}"))
}

fn run(shared: &Shared) {
    let mut standing = Standing::default();
    loop {
        if shared.faults.panic_worker.swap(false, Ordering::SeqCst) {
            panic!("injected fault: worker panic");
        }
        let Queued { job, admission } = match shared.job_rx.recv_timeout(Duration::from_millis(100))
        {
            Ok(q) => q,
            Err(RecvTimeoutError::Timeout) => {
                if shared.shutting_down() {
                    return;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let finished = if shared.shutting_down() {
            shared.limits.give_back(&job.provider, &admission);
            release(&job, "errand is shutting down")
        } else {
            // A bug in one job must not take the worker (and the job's lease) with it.
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                execute(shared, &mut standing, &job, &admission)
            }))
            .unwrap_or_else(|_| {
                log::error!(
                    "job {}: worker panicked; holding the job for review",
                    job.id
                );
                shared.limits.give_back(&job.provider, &admission);
                internal_error(&job)
            })
        };
        // The slot is free before the outcome reaches the writer, so the claim the writer
        // runs after writing it can fill the slot.
        shared.outstanding.fetch_sub(1, Ordering::SeqCst);
        shared.writer.finished(finished);
    }
}

fn job_error(category: &str, reason: &str, message: &str) -> Option<JobError> {
    Some(JobError {
        category: category.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
    })
}

/// Puts a claimed job back unchanged: no request was sent, no attempt is counted.
pub(super) fn release(job: &Job, why: &str) -> Finished {
    log::debug!("job {}: released ({why})", job.id);
    Finished::for_job(job, Next::Release, None, false)
}

/// Cancels a job at preflight: no request was sent.
fn refuse(job: &Job, reason: &str, message: &str) -> Finished {
    Finished::for_job(
        job,
        Next::Cancel,
        job_error("preflight", reason, message),
        false,
    )
}

fn internal_error(job: &Job) -> Finished {
    let mut f = Finished::for_job(
        job,
        Next::Hold,
        job_error(
            "unclassified",
            "internal_error",
            "errand failed while running this job; see the log",
        ),
        false,
    );
    f.triage = Some(("internal error".into(), format!("job {}", job.id)));
    f
}

/// What preflight reads, cached by each worker until the store's generation moves
/// (after any write that may change it, or a commit by another process). Under load this
/// turns three reads per job into none.
#[derive(Default)]
struct Standing {
    generation: u64,
    global_paused: Option<bool>,
    accounts: HashMap<String, accounts::Account>,
    credentials: HashMap<(String, String), Option<Credential>>,
    secrets: HashMap<String, Option<String>>,
}

/// Entries a worker keeps before it starts over.
const STANDING_MAX: usize = 4096;

impl Standing {
    fn refresh(&mut self, generation: u64) {
        let size = self.accounts.len() + self.credentials.len() + self.secrets.len();
        if generation != self.generation || size > STANDING_MAX {
            *self = Standing {
                generation,
                ..Standing::default()
            };
        }
    }
}

/// A pooled read connection, taken only when the cache misses.
struct LazyConn<'a> {
    shared: &'a Shared,
    conn: Option<r2d2::PooledConnection<r2d2_sqlite::SqliteConnectionManager>>,
}

impl LazyConn<'_> {
    fn get(&mut self) -> Result<&rusqlite::Connection> {
        let conn = match self.conn.take() {
            Some(c) => c,
            None => self.shared.store.read()?,
        };
        Ok(self.conn.insert(conn))
    }
}

/// What preflight hands to the call: the credential and the webhook signing key.
struct Cleared {
    credential: Option<Credential>,
    signing_key: Option<crate::webhook::Secret>,
}

/// The preflight checks of SPEC §3.4: Ok(cleared) to go ahead, Err(outcome) not to.
fn cached_secret(
    standing: &mut Standing,
    conn: &mut LazyConn<'_>,
    key: &str,
) -> Result<Option<String>> {
    if let Some(s) = standing.secrets.get(key) {
        return Ok(s.clone());
    }
    let s = crate::store::channels::signing_secret(conn.get()?, key)?;
    standing.secrets.insert(key.to_string(), s.clone());
    Ok(s)
}

fn preflight(
    shared: &Shared,
    standing: &mut Standing,
    job: &Job,
    provider: &Provider,
    now: i64,
) -> Result<Result<Cleared, Finished>> {
    // The generation is read before the data, so a write that lands in between moves
    // it and the next job reads again.
    standing.refresh(shared.store.generation());
    let mut conn = LazyConn { shared, conn: None };
    let global_paused = match standing.global_paused {
        Some(p) => p,
        None => {
            let p = accounts::global_paused(conn.get()?)?;
            standing.global_paused = Some(p);
            p
        }
    };
    let account = match standing.accounts.get(&job.account) {
        Some(a) => a.clone(),
        None => {
            let a = accounts::get(conn.get()?, &job.account)?;
            standing.accounts.insert(job.account.clone(), a.clone());
            a
        }
    };
    if global_paused || account.paused {
        return Ok(Err(release(job, "paused")));
    }
    if account.status == "suspended" {
        return Ok(Err(refuse(
            job,
            "account_suspended",
            "the account is suspended",
        )));
    }
    if job.expires_at.is_some_and(|t| t <= now) {
        return Ok(Err(refuse(
            job,
            "expired",
            "the job passed its expires_at before it could run",
        )));
    }
    if !provider.allows(&job.url) {
        return Ok(Err(refuse(
            job,
            "url_not_allowed",
            "the URL is outside the provider's base_url allowlist",
        )));
    }
    let signing_key = match &job.signing_key {
        None => None,
        Some(key) if key == super::notify::NOTIFY_SIGNING_KEY => {
            shared.config.notify_secret.clone()
        }
        Some(key) => match cached_secret(standing, &mut conn, key)?
            .and_then(|s| crate::webhook::Secret::parse(&s).ok())
        {
            Some(k) => Some(k),
            None => {
                return Ok(Err(refuse(
                    job,
                    "subscription_disabled",
                    "the subscription was deleted or disabled before this delivery",
                )))
            }
        },
    };
    let ckey = (job.account.clone(), job.provider.clone());
    let credential = match standing.credentials.get(&ckey) {
        Some(c) => c.clone(),
        None => {
            let c = accounts::credential(conn.get()?, &job.account, &job.provider)?;
            standing.credentials.insert(ckey, c.clone());
            c
        }
    };
    match &credential {
        Some(c) if !c.valid => Ok(Err(refuse(
            job,
            "credential_invalid",
            "the account's credential for this provider was refused earlier; store a new secret",
        ))),
        None if provider.requires_credential => Ok(Err(refuse(
            job,
            "credential_missing",
            "the provider requires a credential and the account has none; store one",
        ))),
        _ => Ok(Ok(Cleared {
            credential,
            signing_key,
        })),
    }
}

fn describe(reply: &Reply) -> String {
    match reply {
        Reply::Response { status, .. } => format!("HTTP {status}"),
        Reply::Transport { kind, message } => format!("{kind:?}: {message}"),
    }
}

/// Runs one claimed job to an outcome.
fn execute(shared: &Shared, standing: &mut Standing, job: &Job, admission: &Admission) -> Finished {
    let now = shared.now();
    let provider = shared.config.provider(&job.provider);
    let Cleared {
        credential,
        signing_key,
    } = match preflight(shared, standing, job, &provider, now) {
        Ok(Ok(c)) => c,
        Ok(Err(f)) => {
            shared.limits.give_back(&job.provider, admission);
            return f;
        }
        Err(e) => {
            log::error!("job {}: preflight could not read the database: {e}", job.id);
            shared.limits.give_back(&job.provider, admission);
            return release(job, "database unavailable");
        }
    };
    let mut headers: Vec<(String, String)> = job.headers.clone();
    if let Some(key) = &job.idempotency_key {
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("idempotency-key"))
        {
            headers.push(("Idempotency-Key".to_string(), key.clone()));
        }
    }
    if let Some(c) = &credential {
        headers.retain(|(k, _)| !k.eq_ignore_ascii_case(&c.header));
        headers.push((c.header.clone(), c.header_value()));
    }
    // Deliveries are signed per attempt: the timestamp is the send time, so a receiver's
    // replay window holds for late retries; the message id is the same on every attempt.
    if let Some(msg_id) = &job.webhook_id {
        let ts = shared.now() / 1000;
        let body = job.body.as_deref().unwrap_or_default();
        match &signing_key {
            Some(key) => headers.extend(crate::webhook::headers(key, msg_id, ts, body)),
            None => {
                // notify_url without notify_secret: identified, not signed.
                headers.push(("webhook-id".into(), msg_id.clone()));
                headers.push(("webhook-timestamp".into(), ts.to_string()));
            }
        }
    }
    let call = Call {
        method: job.method.clone(),
        url: job.url.clone(),
        headers,
        body: job.body.clone(),
        timeout_ms: job
            .timeout_ms
            .or(provider.timeout_ms)
            .unwrap_or(DEFAULT_TIMEOUT_MS) as u64,
        body_cap: shared.config.response_body_cap,
    };
    let started_at = shared.now();
    let deadline = Instant::now()
        + Duration::from_millis(call.timeout_ms)
        + Duration::from_millis(shared.config.lease_ms.max(0) as u64);
    let in_flight = shared.in_flight.start(job.id, job.attempts, deadline);
    let (reply, elapsed) = http_call::send(&shared.agent, &call);
    drop(in_flight);
    let done_at = shared.now();
    let classified = classify(&reply, &provider, done_at);
    let detail = describe(&reply);
    // The stored result is redacted like the audit log: a provider that echoes the
    // credential must not make the API show it.
    let secret = credential.as_ref().map(|c| c.secret.as_str());
    let result = match &reply {
        Reply::Response {
            status,
            headers,
            body,
            truncated,
        } => Some(JobResult {
            status: *status,
            headers: http_call::redact_headers(headers, None, secret),
            body: http_call::redact_bytes(body, secret),
            truncated: *truncated,
        }),
        Reply::Transport { .. } => None,
    };
    let decision = decide(
        job,
        &provider,
        &classified,
        &detail,
        result.clone(),
        credential.as_ref().map(|c| c.version),
        done_at,
        crate::rand::unit(),
    );
    let cred_header = credential.as_ref().map(|c| c.header.as_str());
    let record = AttemptRecord {
        job_id: job.id,
        attempt: job.attempts,
        started_at,
        duration_ms: elapsed.as_millis() as i64,
        outcome: classified.outcome,
        ambiguous: classified.ambiguous,
        request_method: call.method.clone(),
        request_url: http_call::redact_text(&call.url, secret),
        request_headers: http_call::redact_headers(&call.headers, cred_header, secret),
        request_body: call.body.as_ref().map(|b| {
            http_call::redact_bytes(&b[..b.len().min(shared.config.response_body_cap)], secret)
        }),
        response_status: result.as_ref().map(|r| r.status),
        response_headers: result
            .as_ref()
            .map(|r| http_call::redact_headers(&r.headers, None, secret)),
        response_body: result
            .as_ref()
            .map(|r| http_call::redact_bytes(&r.body, secret)),
        response_truncated: result.as_ref().is_some_and(|r| r.truncated),
        error: match &reply {
            Reply::Transport { .. } => Some(http_call::redact_text(&detail, secret)),
            Reply::Response { .. } => None,
        },
        runner: shared.owner.clone(),
    };
    let mut notices = decision.notices;
    match shared
        .limits
        .finish(&job.provider, Some(classified.outcome), done_at)
    {
        Some(CircuitEvent::Opened) => notices.push(Notice {
            kind: "provider_down",
            account: None,
            provider: Some(job.provider.clone()),
            job_id: None,
            message: format!(
                "{} is failing: its circuit is open, its jobs wait",
                job.provider
            ),
            dedupe_key: None,
        }),
        Some(CircuitEvent::Closed) => notices.push(Notice {
            kind: "provider_recovered",
            account: None,
            provider: Some(job.provider.clone()),
            job_id: None,
            message: format!("{} answers again: its circuit is closed", job.provider),
            dedupe_key: None,
        }),
        None => {}
    }
    let mut triage = decision.triage.then(|| {
        (
            signature(&reply),
            http_call::redact_text(
                &format!(
                    "{detail} {}",
                    String::from_utf8_lossy(
                        result
                            .as_ref()
                            .map(|r| &r.body[..r.body.len().min(500)])
                            .unwrap_or_default()
                    )
                ),
                secret,
            ),
        )
    });
    let mut f = Finished::for_job(job, decision.next, decision.error, true);
    // A subscriber that answers 410 Gone does not want deliveries any more.
    if job
        .signing_key
        .as_deref()
        .is_some_and(|k| k.starts_with("subscription:"))
        && matches!(&reply, Reply::Response { status: 410, .. })
    {
        f.next = Next::Cancel;
        f.error = job_error(
            "forbidden",
            "subscription_gone",
            "the subscriber answered 410 Gone; its subscription is disabled",
        );
        f.disable_subscription = job.signing_key.clone();
        triage = None;
    }
    f.record = Some(record);
    f.notices = notices;
    f.triage = triage;
    if decision.invalidate_credential {
        f.invalidate_credential = credential.as_ref().map(|c| c.version);
    }
    if classified.outcome == Outcome::Unauthorized && credential.is_none() {
        log::info!(
            "job {}: 401 with no stored credential for {}/{}",
            job.id,
            job.account,
            job.provider
        );
    }
    f
}
