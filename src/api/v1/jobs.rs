//! Jobs: enqueue (with incoming `Idempotency-Key` and `Prefer: wait`), poll, list,
//! attempts, user actions and bulk actions.

use std::time::Instant;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{
    answer, idempotency_key, job_id, key_in_use, key_reused, limit, object, opt_str, prefer_wait,
    write,
};
use crate::api::park::{Wait, WaitKind};
use crate::api::request::constant_time_eq;
use crate::api::routes::{api_token_ok, Params};
use crate::api::{Answer, Api, Reply, Req};
use crate::error::{Error, Result};
use crate::job::{Job, JobState, UserAction};
use crate::spec::NewJob;
use crate::store::{attempts, idempotency, jobs};
use crate::time::parse_rfc3339;

/// `/v1/jobs/{id}?token=...`: where to poll a job.
fn status_url(job: &Job) -> String {
    format!("/v1/jobs/{}?token={}", job.id, job.token)
}

/// Seconds a poller should wait before asking again.
fn retry_after(job: &Job, now: i64) -> i64 {
    if job.state == JobState::Running {
        return 1;
    }
    ((job.run_at - now + 999) / 1000).clamp(1, 3600)
}

/// 202 with `{id, token, state, status_url}` and `Location`: the enqueue answer.
fn created(job: &Job) -> Reply {
    Reply::json(
        202,
        &json!({"id": job.id.to_string(), "token": job.token, "state": job.state.as_str(),
                "status_url": status_url(job)}),
    )
    .header("Location", &format!("/v1/jobs/{}", job.id))
}

/// 200 with the job when it is done, else 202 with the job and `Retry-After`.
fn polled(api: &Api, job: &Job) -> Reply {
    if job.state.is_pending() {
        Reply::json(202, &job.to_json()).header(
            "Retry-After",
            &retry_after(job, api.shared.now()).to_string(),
        )
    } else {
        Reply::json(200, &job.to_json())
    }
}

/// A create answered with the job (it waited and saw it finish): 200 and `Location`.
fn finished(job: &Job) -> Reply {
    Reply::json(200, &job.to_json()).header("Location", &format!("/v1/jobs/{}", job.id))
}

/// The answer to a request that waited (or would have) for `job`.
pub(crate) fn wait_reply(api: &Api, kind: WaitKind, job: &Job) -> Reply {
    match kind {
        WaitKind::Created if job.state.is_pending() => created(job),
        WaitKind::Created => finished(job),
        WaitKind::Poll | WaitKind::Operation { .. } => polled(api, job),
    }
}

/// Answers for `job` now, or parks the request when `Prefer: wait` asks for it and the
/// job is still pending. Without `Prefer: wait` an enqueue always answers 202.
fn reply_or_wait(
    api: &Api,
    req: &Req,
    kind: WaitKind,
    job: &Job,
    headers: Vec<(String, String)>,
) -> Answer {
    if let Some(d) = prefer_wait(req).filter(|_| job.state.is_pending()) {
        return Answer::Wait(Wait {
            job_id: job.id,
            deadline: Instant::now() + d,
            kind,
            headers,
            key: None,
        });
    }
    let mut reply = match kind {
        WaitKind::Created if prefer_wait(req).is_none() => created(job),
        _ => wait_reply(api, kind, job),
    };
    reply.headers.extend(headers);
    reply.into()
}

fn read(api: &Api, id: i64) -> Result<Job> {
    jobs::get(&*api.shared.store.read()?, id)
}

/// What an enqueue with an `Idempotency-Key` found.
enum Keyed {
    Created(i64),
    /// The job the key created (None: pruned since), and the first call's status when it
    /// was not the create's 202.
    Replay(Option<i64>, Option<u16>),
    Mismatch,
}

/// `POST /v1/jobs`.
pub fn create(api: &Api, req: &Req, _: &Params) -> Answer {
    let body = match req.json() {
        Ok(v) => v,
        Err(r) => return r.into(),
    };
    let job = match NewJob::from_json(&body) {
        Ok(j) => j,
        Err(e) => return Reply::from_error(&e).into(),
    };
    let key = match idempotency_key(req) {
        Ok(k) => k,
        Err(r) => return r.into(),
    };
    let now = api.shared.now();
    let Some(key) = key else {
        if let Err(e) = job.check_expiry(now) {
            return Reply::from_error(&e).into();
        }
        let state = job.state;
        let r = write(api, move |c| jobs::insert(c, &job, now));
        if prefer_wait(req).is_none() {
            // The common case answers from what was written, without reading it back.
            return answer(r, |ins| {
                api.shared.wake();
                let status_url = format!("/v1/jobs/{}?token={}", ins.id, ins.token);
                Reply::json(
                    202,
                    &json!({"id": ins.id.to_string(), "token": ins.token,
                            "state": state.as_str(), "status_url": status_url}),
                )
                .header("Location", &format!("/v1/jobs/{}", ins.id))
            });
        }
        return match r.and_then(|ins| read(api, ins.id)) {
            Ok(job) => {
                api.shared.wake();
                reply_or_wait(api, req, WaitKind::Created, &job, Vec::new())
            }
            Err(e) => Reply::from_error(&e).into(),
        };
    };
    // The body is the same as the first one's (its hash is checked), so the state the job
    // was created in is this body's: a replay answers exactly what the first call did.
    let first_state = job.state;
    let Some(_claim) = api.claim_key(&job.account, &key) else {
        return key_in_use().into();
    };
    let hash = format!("{:x}", Sha256::digest(body.to_string().as_bytes()));
    let account = job.account.clone();
    let first = (account.clone(), key.clone());
    let outcome = write(api, move |c| {
        if let Some(row) = idempotency::find(c, &account, &key, now)? {
            return Ok(if row.request_hash == hash {
                Keyed::Replay(row.job_id, row.first_status)
            } else {
                Keyed::Mismatch
            });
        }
        // Checked only for a job about to be written: a replay is judged by the first
        // call's clock, which accepted it.
        job.check_expiry(now)?;
        let ins = jobs::insert(c, &job, now)?;
        idempotency::remember(c, &account, &key, &hash, ins.id, now)?;
        Ok(Keyed::Created(ins.id))
    });
    let replayed = vec![("Idempotent-Replayed".to_string(), "true".to_string())];
    match outcome {
        Err(e) => Reply::from_error(&e).into(),
        Ok(Keyed::Mismatch) => key_reused().into(),
        Ok(Keyed::Created(id)) => match read(api, id) {
            Ok(job) => {
                api.shared.wake();
                let answer = reply_or_wait(api, req, WaitKind::Created, &job, Vec::new());
                super::note_first_answer(api, answer, first.0, first.1)
            }
            Err(e) => Reply::from_error(&e).into(),
        },
        Ok(Keyed::Replay(Some(id), first_status)) => match read(api, id) {
            // The first call waited and was answered 200 with the finished job: so is its
            // replay, with the job as it is now.
            Ok(job) if prefer_wait(req).is_none() && first_status == Some(200) => {
                let mut reply = finished(&job);
                reply.headers.extend(replayed);
                reply.into()
            }
            Ok(job) if prefer_wait(req).is_none() => {
                let first = Job {
                    state: first_state,
                    ..job
                };
                let mut reply = created(&first);
                reply.headers.extend(replayed);
                reply.into()
            }
            Ok(job) => reply_or_wait(api, req, WaitKind::Created, &job, replayed),
            Err(Error::NotFound(_)) => replay_gone(),
            Err(e) => Reply::from_error(&e).into(),
        },
        Ok(Keyed::Replay(None, _)) => replay_gone(),
    }
}

fn replay_gone() -> Answer {
    Reply::error(
        409,
        "idempotency_key_in_use",
        "Idempotency-Key: the job first created with this key no longer exists (pruned); use a new key",
    )
    .into()
}

/// `GET /v1/jobs/{id}`: with the job's `?token=` or the API token. An unknown id and a
/// wrong token answer the same 404.
pub fn poll(api: &Api, req: &Req, p: &Params) -> Answer {
    let r = job_id(p.get("id")).and_then(|id| {
        let job = read(api, id)?;
        let allowed = match req.query.get("token") {
            Some(t) => constant_time_eq(t.as_bytes(), job.token.as_bytes()),
            None => api_token_ok(api, req),
        };
        if allowed {
            Ok(job)
        } else {
            Err(Error::NotFound(format!("job {id}")))
        }
    });
    match r {
        Ok(job) => reply_or_wait(api, req, WaitKind::Poll, &job, Vec::new()),
        Err(e) => Reply::from_error(&e).into(),
    }
}

/// The filter of a listing or a bulk action, from strings.
fn filter(
    state: Option<&str>,
    account: Option<&str>,
    provider: Option<&str>,
    since: Option<&str>,
    prefix: &str,
) -> Result<jobs::JobFilter> {
    Ok(jobs::JobFilter {
        state: state
            .map(|s| s.parse::<JobState>())
            .transpose()
            .map_err(|e| rename(e, &format!("{prefix}state")))?,
        account: account
            .map(|a| super::name(&format!("{prefix}account"), a))
            .transpose()?,
        provider: provider
            .map(|a| super::name(&format!("{prefix}provider"), a))
            .transpose()?,
        since: since
            .map(|s| parse_rfc3339(&format!("{prefix}since"), s))
            .transpose()?,
    })
}

fn rename(e: Error, field: &str) -> Error {
    match e {
        Error::Invalid { message, .. } => Error::invalid(field, message),
        other => other,
    }
}

/// `GET /v1/jobs?state=&account=&provider=&limit=&after=`: newest first; `next` is the
/// cursor for the following page (`after=`), null on the last.
pub fn list(api: &Api, req: &Req, _: &Params) -> Answer {
    let q = |k: &str| {
        req.query
            .get(k)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    };
    let r = (|| {
        let f = filter(q("state"), q("account"), q("provider"), q("since"), "")?;
        let limit = limit(req, 50)?;
        let after = q("after")
            .map(|s| {
                s.parse::<i64>().map_err(|_| {
                    Error::invalid("after", "must be the `next` cursor of a previous page")
                })
            })
            .transpose()?;
        let page = jobs::list(&*api.shared.store.read()?, &f, after, limit)?;
        let next = (page.len() as i64 == limit)
            .then(|| page.last().map(|j| j.id.to_string()))
            .flatten();
        Ok(json!({"jobs": page.iter().map(Job::to_json).collect::<Vec<_>>(), "next": next}))
    })();
    answer(r, |v| Reply::json(200, &v))
}

/// `GET /v1/jobs/{id}/attempts`: the audit log of one job, secrets redacted.
pub fn attempts(api: &Api, _: &Req, p: &Params) -> Answer {
    let r = job_id(p.get("id")).and_then(|id| {
        let conn = api.shared.store.read()?;
        jobs::get(&conn, id)?;
        attempts::list_json(&conn, id)
    });
    answer(r, |a| Reply::json(200, &json!({"attempts": a})))
}

fn act(api: &Api, p: &Params, action: UserAction) -> Answer {
    let now = api.shared.now();
    let r = job_id(p.get("id"))
        .and_then(|id| write(api, move |c| jobs::user_action(c, id, action, now)));
    if let Ok(job) = &r {
        api.shared.waiters.notify(job.id);
        if job.state.is_pending() {
            api.shared.wake();
        }
    }
    answer(r, |job| Reply::json(200, &job.to_json()))
}

/// `POST /v1/jobs/{id}/approve`.
pub fn approve(api: &Api, _: &Req, p: &Params) -> Answer {
    act(api, p, UserAction::Approve)
}

/// `POST /v1/jobs/{id}/cancel` and `DELETE /v1/jobs/{id}`.
pub fn cancel(api: &Api, _: &Req, p: &Params) -> Answer {
    act(api, p, UserAction::Cancel)
}

/// `POST /v1/jobs/{id}/retry`: "retry now".
pub fn retry(api: &Api, _: &Req, p: &Params) -> Answer {
    act(api, p, UserAction::Retry)
}

/// `POST /v1/jobs/{id}/reopen`.
pub fn reopen(api: &Api, _: &Req, p: &Params) -> Answer {
    act(api, p, UserAction::Reopen)
}

/// Jobs acted on per write transaction in a bulk action.
const BULK_PAGE: i64 = 500;

/// `POST /v1/jobs/bulk` `{"action": "retry", "filter": {"state", "account", "provider",
/// "since"}}`: applies the action to every matching job; jobs whose state forbids it are
/// skipped and counted.
pub fn bulk(api: &Api, req: &Req, _: &Params) -> Answer {
    let obj = match object(req, &["action", "filter"]) {
        Ok(o) => o,
        Err(r) => return r.into(),
    };
    let r = (|| {
        let action: UserAction = opt_str(&obj, "action")?
            .ok_or_else(|| {
                Error::invalid("action", "is required: approve, cancel, retry or reopen")
            })?
            .parse()?;
        let f = match obj.get("filter") {
            // An action on every job must be asked for: `"filter": {}`.
            None | Some(Value::Null) => {
                return Err(Error::invalid(
                    "filter",
                    "is required: say which jobs, e.g. {\"state\": \"draft\", \"provider\": \"x\"}, or {} for every job",
                ))
            }
            Some(Value::Object(f)) => {
                let known = ["state", "account", "provider", "since"];
                if let Some(k) = f.keys().find(|k| !known.contains(&k.as_str())) {
                    return Err(Error::invalid(
                        format!("filter.{k}"),
                        "unknown field; known fields are state, account, provider, since",
                    ));
                }
                let s = |k: &str| opt_str(f, k).map_err(|e| rename(e, &format!("filter.{k}")));
                filter(
                    s("state")?.as_deref(),
                    s("account")?.as_deref(),
                    s("provider")?.as_deref(),
                    s("since")?.as_deref(),
                    "filter.",
                )?
            }
            Some(_) => return Err(Error::invalid("filter", "must be an object")),
        };
        let mut changed: Vec<i64> = Vec::new();
        let mut skipped = 0usize;
        let mut before = None;
        loop {
            let ids: Vec<i64> = jobs::list(&*api.shared.store.read()?, &f, before, BULK_PAGE)?
                .iter()
                .map(|j| j.id)
                .collect();
            let Some(&last) = ids.last() else { break };
            before = Some(last);
            let now = api.shared.now();
            let (ch, sk) = write(api, move |c| {
                let (mut ch, mut sk) = (Vec::new(), 0usize);
                for id in ids {
                    match jobs::user_action(c, id, action, now) {
                        Ok(_) => ch.push(id),
                        Err(
                            Error::Conflict { .. } | Error::Expired { .. } | Error::NotFound(_),
                        ) => sk += 1,
                        Err(e) => return Err(e),
                    }
                }
                Ok((ch, sk))
            })?;
            for &id in &ch {
                api.shared.waiters.notify(id);
            }
            changed.extend(ch);
            skipped += sk;
        }
        if !changed.is_empty() {
            api.shared.wake();
        }
        Ok(json!({
            "action": action.as_str(),
            "changed": changed.len(),
            "skipped": skipped,
            "ids": changed.iter().map(i64::to_string).collect::<Vec<_>>(),
        }))
    })();
    answer(r, |v| Reply::json(200, &v))
}
