//! The global kill switch, status, notifications and triage.

use serde_json::{json, Map, Value};

use super::{answer, limit, name, write};
use crate::api::routes::Params;
use crate::api::{Answer, Api, Reply, Req};
use crate::job::JobState;
use crate::store::{accounts, engine, jobs, notes};

fn set_global(api: &Api, paused: bool) -> Answer {
    let r = write(api, move |c| accounts::set_global_pause(c, paused));
    if r.is_ok() && !paused {
        api.shared.wake();
    }
    answer(r, |()| Reply::json(200, &json!({"paused": paused})))
}

/// `POST /v1/pause`: the global kill switch; nothing is claimed until resumed.
pub fn pause(api: &Api, _: &Req, _: &Params) -> Answer {
    set_global(api, true)
}

/// `POST /v1/resume`.
pub fn resume(api: &Api, _: &Req, _: &Params) -> Answer {
    set_global(api, false)
}

/// `GET /v1/status`: jobs by state, pauses, and the due backlog.
pub fn status(api: &Api, _: &Req, _: &Params) -> Answer {
    let now = api.shared.now();
    let r = (|| {
        let conn = api.shared.store.read()?;
        let mut by_state: Map<String, Value> = JobState::ALL
            .iter()
            .map(|s| (s.as_str().to_string(), json!(0)))
            .collect();
        for (s, n) in jobs::count_by_state(&conn)? {
            by_state.insert(s.as_str().to_string(), json!(n));
        }
        let (backlog, oldest) = engine::due_backlog(&conn, now)?;
        Ok(json!({
            "jobs": by_state,
            "paused": accounts::global_paused(&conn)?,
            "paused_accounts": accounts::paused_accounts(&conn)?,
            "due_backlog": backlog,
            "oldest_due_seconds": oldest.map(|t| (now - t).max(0) as f64 / 1000.0),
            "parked_waits": api.parking.parked(),
        }))
    })();
    answer(r, |v| Reply::json(200, &v))
}

/// `GET /v1/notifications?account=&limit=`: newest first.
pub fn notifications(api: &Api, req: &Req, _: &Params) -> Answer {
    let r = (|| {
        let account = req
            .query
            .get("account")
            .filter(|a| !a.is_empty())
            .map(|a| name("account", a))
            .transpose()?;
        let limit = limit(req, 100)?;
        notes::list(&*api.shared.store.read()?, account.as_deref(), limit)
    })();
    answer(r, |n| Reply::json(200, &json!({"notifications": n})))
}

/// `GET /v1/triage?limit=`: unclassified errors grouped by signature.
pub fn triage(api: &Api, req: &Req, _: &Params) -> Answer {
    let r = limit(req, 100).and_then(|l| notes::list_triage(&*api.shared.store.read()?, l));
    answer(r, |t| Reply::json(200, &json!({"triage": t})))
}
