//! Operations (SPEC §4): create with `Idempotency-Key` and `Prefer: wait`, poll like a
//! job (202 while running, 200 with per-step results after), and act on the step the
//! operation stands at.

use std::time::Instant;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{answer, idempotency_key, key_in_use, key_reused, prefer_wait, write};
use crate::api::park::{Wait, WaitKind};
use crate::api::request::constant_time_eq;
use crate::api::routes::{api_token_ok, Params};
use crate::api::{Answer, Api, Reply, Req};
use crate::error::{Error, Result};
use crate::job::UserAction;
use crate::store::operations::{self, OpState, Operation};
use crate::store::{idempotency, jobs};

/// Idempotency keys of operations share the table with jobs' under this prefix.
const KEY_PREFIX: &str = "operation:";

fn op_id(s: &str) -> Result<i64> {
    s.parse::<i64>()
        .ok()
        .filter(|&i| i > 0)
        .ok_or_else(|| Error::NotFound(format!("operation {s}")))
}

fn status_url(op: &Operation) -> String {
    format!("/v1/operations/{}?token={}", op.id, op.token)
}

/// The job id of the step a running operation stands at; None once it is not running.
pub(crate) fn current_step_job(api: &Api, id: i64) -> Result<Option<i64>> {
    let conn = api.shared.store.read()?;
    let op = operations::get(&conn, id)?;
    if operations::state(&conn, &op)? != OpState::Running {
        return Ok(None);
    }
    Ok(operations::current_job(&conn, &op)?.map(|j| j.id))
}

/// The answer to a create: 202 with the id, token and status URL.
fn created_answer(op: &Operation) -> Reply {
    Reply::json(
        202,
        &json!({"id": op.id.to_string(), "token": op.token, "state": "running",
                "status_url": status_url(op)}),
    )
    .header("Location", &format!("/v1/operations/{}", op.id))
}

/// A create answered with the operation `v` (it waited and saw it finish): 200 and
/// `Location`.
fn finished(id: i64, v: &Value) -> Reply {
    Reply::json(200, v).header("Location", &format!("/v1/operations/{id}"))
}

/// 200 with the operation as it is now (a replay of a create first answered 200).
fn finished_answer(api: &Api, id: i64) -> Reply {
    let v = api.shared.store.read().and_then(|conn| {
        let op = operations::get(&conn, id)?;
        operations::to_json(&conn, &op)
    });
    match v {
        Ok(v) => finished(id, &v),
        Err(e) => Reply::from_error(&e),
    }
}

/// 200 with the operation once it is no longer running; else 202 (with id, token and
/// status_url for a create, with the operation and `Retry-After` for a poll).
pub(crate) fn wait_reply(api: &Api, id: i64, created: bool) -> Reply {
    let r = (|| {
        let conn = api.shared.store.read()?;
        let op = operations::get(&conn, id)?;
        let state = operations::state(&conn, &op)?;
        Ok((operations::to_json(&conn, &op)?, state, op))
    })();
    match r {
        Err(e) => Reply::from_error(&e),
        Ok((_, OpState::Running, op)) if created => created_answer(&op),
        Ok((v, OpState::Running, _)) => Reply::json(202, &v).header("Retry-After", "1"),
        Ok((v, _, op)) if created => finished(op.id, &v),
        Ok((v, _, _)) => Reply::json(200, &v),
    }
}

fn reply_or_wait(
    api: &Api,
    req: &Req,
    id: i64,
    created: bool,
    headers: Vec<(String, String)>,
) -> Answer {
    if let Some(d) = prefer_wait(req) {
        if let Ok(Some(job_id)) = current_step_job(api, id) {
            return Answer::Wait(Wait {
                job_id,
                deadline: Instant::now() + d,
                kind: WaitKind::Operation { op_id: id, created },
                headers,
                key: None,
            });
        }
    }
    let mut reply = wait_reply(api, id, created);
    reply.headers.extend(headers);
    reply.into()
}

/// `POST /v1/operations` `{account, steps: [{name, request, ...}]}`.
pub fn create(api: &Api, req: &Req, _: &Params) -> Answer {
    let body = match req.json() {
        Ok(v) => v,
        Err(r) => return r.into(),
    };
    let (account, steps) = match crate::operation::validate(&body) {
        Ok(v) => v,
        Err(e) => return Reply::from_error(&e).into(),
    };
    let now = api.shared.now();
    let key = match idempotency_key(req) {
        Ok(k) => k,
        Err(r) => return r.into(),
    };
    let claim = match &key {
        Some(k) => match api.claim_key(&account, &format!("{KEY_PREFIX}{k}")) {
            Some(c) => Some(c),
            None => return key_in_use().into(),
        },
        None => None,
    };
    let hash = format!("{:x}", Sha256::digest(body.to_string().as_bytes()));
    let acc = account.clone();
    let stored_key = key.as_ref().map(|k| format!("{KEY_PREFIX}{k}"));
    let first = stored_key.clone().map(|k| (account.clone(), k));
    // (operation id, Some(the first call's status when it was not the create's 202) if
    // replayed), or None for a key reused with another body.
    let r = write(api, move |c| {
        if let Some(stored) = &stored_key {
            if let Some(row) = idempotency::find(c, &acc, stored, now)? {
                return Ok(if row.request_hash == hash {
                    row.job_id.map(|id| (id, Some(row.first_status)))
                } else {
                    None
                });
            }
            let ins = operations::create(c, &acc, &steps, now)?;
            idempotency::remember(c, &acc, stored, &hash, ins.id, now)?;
            return Ok(Some((ins.id, None)));
        }
        Ok(Some((operations::create(c, &acc, &steps, now)?.id, None)))
    });
    drop(claim);
    match r {
        Err(e) => Reply::from_error(&e).into(),
        Ok(None) => key_reused().into(),
        Ok(Some((id, Some(first_status)))) => {
            let replayed = ("Idempotent-Replayed".to_string(), "true".to_string());
            if prefer_wait(req).is_some() {
                return reply_or_wait(api, req, id, true, vec![replayed]);
            }
            // The first answer again, whatever the operation has done since: 200 with the
            // operation if the first call waited and was answered 200, else the create's
            // 202.
            let mut reply = if first_status == Some(200) {
                finished_answer(api, id)
            } else {
                match api
                    .shared
                    .store
                    .read()
                    .and_then(|c| operations::get(&c, id))
                {
                    Ok(op) => created_answer(&op),
                    Err(e) => Reply::from_error(&e),
                }
            };
            reply.headers.push(replayed);
            reply.into()
        }
        Ok(Some((id, None))) => {
            api.shared.wake();
            let answer = reply_or_wait(api, req, id, true, Vec::new());
            match first {
                Some((account, key)) => super::note_first_answer(api, answer, account, key),
                None => answer,
            }
        }
    }
}

fn authorized(api: &Api, req: &Req, id: i64) -> Result<Operation> {
    let op = operations::get(&*api.shared.store.read()?, id)?;
    let ok = match req.query.get("token") {
        Some(t) => constant_time_eq(t.as_bytes(), op.token.as_bytes()),
        None => api_token_ok(api, req),
    };
    if ok {
        Ok(op)
    } else {
        Err(Error::NotFound(format!("operation {id}")))
    }
}

/// `GET /v1/operations/{id}`: with the operation's `?token=` or the API token.
pub fn poll(api: &Api, req: &Req, p: &Params) -> Answer {
    match op_id(p.get("id")).and_then(|id| authorized(api, req, id)) {
        Ok(op) => reply_or_wait(api, req, op.id, false, Vec::new()),
        Err(e) => Reply::from_error(&e).into(),
    }
}

/// Applies `action` to the job of the step the operation stands at.
fn act(api: &Api, p: &Params, action: UserAction) -> Answer {
    let now = api.shared.now();
    let r = op_id(p.get("id")).and_then(|id| {
        let job = {
            let conn = api.shared.store.read()?;
            let op = operations::get(&conn, id)?;
            operations::current_job(&conn, &op)?.ok_or_else(|| {
                Error::invalid(
                    "operation",
                    "has no step waiting: it finished or a step could not be built",
                )
            })?
        };
        let job = write(api, move |c| jobs::user_action(c, job.id, action, now))?;
        api.shared.waiters.notify(job.id);
        api.shared.wake();
        let conn = api.shared.store.read()?;
        operations::to_json(&conn, &operations::get(&conn, id)?)
    });
    answer(r, |v: Value| Reply::json(200, &v))
}

/// `POST /v1/operations/{id}/approve`: approve the held (draft) step.
pub fn approve(api: &Api, _: &Req, p: &Params) -> Answer {
    act(api, p, UserAction::Approve)
}

/// `POST /v1/operations/{id}/retry`: run the held or waiting step now.
pub fn retry(api: &Api, _: &Req, p: &Params) -> Answer {
    act(api, p, UserAction::Retry)
}

/// `POST /v1/operations/{id}/cancel`: cancel the step it stands at (and so the operation).
pub fn cancel(api: &Api, _: &Req, p: &Params) -> Answer {
    act(api, p, UserAction::Cancel)
}
