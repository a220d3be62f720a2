//! The `/v1` handlers (SPEC §4), routed by [`super::routes::ROUTES`].

pub mod accounts;
pub mod channels;
pub mod jobs;
pub mod misc;
pub mod operations;

use std::time::Duration;

use serde_json::{Map, Value};

use super::park::MAX_WAIT_S;
use super::{Answer, Api, Reply, Req};
use crate::error::{Error, Result};

/// Runs `f` in the writer's next group commit.
pub(crate) fn write<T: Send + 'static>(
    api: &Api,
    f: impl FnOnce(&rusqlite::Connection) -> Result<T> + Send + 'static,
) -> Result<T> {
    api.shared.writer.call(f)
}

/// The answer for a handler's result: `ok` on success, the error's status otherwise.
pub(crate) fn answer<T>(r: Result<T>, ok: impl FnOnce(T) -> Reply) -> Answer {
    match r {
        Ok(v) => ok(v).into(),
        Err(e) => Reply::from_error(&e).into(),
    }
}

/// `Prefer: wait=N` (RFC 7240), capped at 60 s; `None` without it. A value that is not
/// a whole number of seconds is ignored, as a preference may be.
pub(crate) fn prefer_wait(req: &Req) -> Option<Duration> {
    req.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("prefer"))
        .flat_map(|(_, v)| v.split([',', ';']))
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("wait")
                .then(|| v.trim().trim_matches('"').parse::<u64>().ok())
                .flatten()
        })
        .next()
        .filter(|&n| n > 0)
        .map(|n| Duration::from_secs(n.min(MAX_WAIT_S)))
}

/// A job id from the path: 404 for anything that is not one (never a hint).
pub(crate) fn job_id(s: &str) -> Result<i64> {
    s.parse::<i64>()
        .ok()
        .filter(|&i| i > 0)
        .ok_or_else(|| Error::NotFound(format!("job {s}")))
}

/// The body as a JSON object, with only the `known` fields.
pub(crate) fn object(req: &Req, known: &[&str]) -> std::result::Result<Map<String, Value>, Reply> {
    let v = if req.body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Map::new())
    } else {
        req.json()?
    };
    let Value::Object(obj) = v else {
        return Err(Reply::from_error(&Error::invalid(
            "body",
            "must be a JSON object",
        )));
    };
    if let Some(k) = obj.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(Reply::from_error(&Error::invalid(
            k.as_str(),
            format!("unknown field; known fields are {}", known.join(", ")),
        )));
    }
    Ok(obj)
}

/// An optional string field.
pub(crate) fn opt_str(obj: &Map<String, Value>, field: &str) -> Result<Option<String>> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Error::invalid(field, "must be a string")),
    }
}

/// A name from the path or query (account, provider), checked like the body's.
pub(crate) fn name(field: &str, s: &str) -> Result<String> {
    crate::spec::check_name(field, s)?;
    Ok(s.to_string())
}

/// `?limit=` from 1 to 1000, `default` when absent.
pub(crate) fn limit(req: &Req, default: i64) -> Result<i64> {
    match req.query.get("limit") {
        None => Ok(default),
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| Error::invalid("limit", "must be a whole number from 1 to 1000")),
    }
}

/// The incoming `Idempotency-Key` header (SPEC §4): None without one, a 400 when it is
/// not 1 to 200 printable ASCII characters.
pub(crate) fn idempotency_key(req: &Req) -> std::result::Result<Option<String>, Reply> {
    match req.header("idempotency-key") {
        None => Ok(None),
        Some(k)
            if !k.is_empty() && k.len() <= 200 && k.bytes().all(|b| (0x20..0x7f).contains(&b)) =>
        {
            Ok(Some(k.to_string()))
        }
        Some(_) => Err(Reply::from_error(&Error::invalid(
            "Idempotency-Key",
            "must be 1 to 200 printable ASCII characters",
        ))),
    }
}

/// Notes how the first call with an `Idempotency-Key` (`account`, stored `key`) is
/// answered, so that its replays answer the same: a 200 given now is written before it
/// is sent; a parked wait carries the key, and its answer is noted if it is a 200.
pub(crate) fn note_first_answer(api: &Api, answer: Answer, account: String, key: String) -> Answer {
    match answer {
        Answer::Wait(mut wait) => {
            wait.key = Some((account, key));
            Answer::Wait(wait)
        }
        Answer::Reply(reply) if reply.status == 200 => {
            if let Err(e) = write(api, move |c| {
                crate::store::idempotency::answered(c, &account, &key, 200)
            }) {
                log::warn!("noting an Idempotency-Key's first answer: {e}");
            }
            Answer::Reply(reply)
        }
        other => other,
    }
}

/// 409: a request with the same key is still being written.
pub(crate) fn key_in_use() -> Reply {
    Reply::error(
        409,
        "idempotency_key_in_use",
        "Idempotency-Key: a request with this key is still being processed; retry it shortly",
    )
    .header("Retry-After", "1")
}

/// 422: the key was used before with a different body.
pub(crate) fn key_reused() -> Reply {
    Reply::error(
        422,
        "idempotency_key_reused",
        "Idempotency-Key: this key was already used with a different body; use a new key for a new request",
    )
}
