//! The admin page's POST actions (CSRF already checked): job transitions through
//! `store::jobs::user_action` in the writer's group commit, bulk retry of held jobs,
//! pause and resume. Each answers 303 to the page to show, with a fixed notice code.

use std::collections::HashMap;

use super::html::{redirect, url_enc};
use crate::api::{Api, Reply};
use crate::error::Error;
use crate::job::UserAction;
use crate::store::{accounts, jobs, stats};

/// Held jobs retried per writer call (one savepoint of a batch).
const BULK_CHUNK: i64 = 500;
/// The most held jobs one click retries.
const BULK_MAX: usize = 50_000;

fn failed(to: &str, e: &Error) -> Reply {
    let sep = if to.contains('?') { '&' } else { '?' };
    match e {
        Error::Conflict { state, .. } => {
            redirect(&format!("{to}{sep}err=conflict&state={}", state.as_str()))
        }
        Error::Expired { expected, .. } => redirect(&format!(
            "{to}{sep}err=conflict&state={}",
            expected.as_str()
        )),
        Error::NotFound(_) => redirect(&format!("{to}{sep}err=notfound")),
        Error::Invalid { .. } => redirect(&format!("{to}{sep}err=invalid")),
        other => {
            log::error!("admin action: {other}");
            redirect(&format!("{to}{sep}err=internal"))
        }
    }
}

/// Dispatches a POST under `/admin`.
pub(super) fn post(api: &Api, path: &str, form: &HashMap<String, String>) -> Reply {
    let field = |k: &str| {
        form.get(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    match path {
        "/admin/pause" | "/admin/resume" => {
            let pause = path == "/admin/pause";
            let account = field("account");
            let back = if account.is_some() {
                "/admin/accounts"
            } else {
                "/admin"
            };
            let now = api.shared.now();
            let r = api.shared.writer.call(move |c| match &account {
                Some(a) => {
                    crate::spec::check_name("account", a)?;
                    accounts::set_paused(c, a, pause, now)
                }
                None => accounts::set_global_pause(c, pause),
            });
            match r {
                Ok(()) => {
                    api.shared.wake();
                    redirect(&format!(
                        "{back}?done={}",
                        if pause { "pause" } else { "resume" }
                    ))
                }
                Err(e) => failed(back, &e),
            }
        }
        "/admin/bulk-retry" => {
            let Some(provider) = field("provider") else {
                return failed("/admin", &Error::invalid("provider", "missing"));
            };
            let mut done: Vec<i64> = Vec::new();
            while done.len() < BULK_MAX {
                let p = provider.clone();
                let now = api.shared.now();
                let after = done.last().copied().unwrap_or(0);
                let r = api.shared.writer.call(move |c| {
                    let mut ids = Vec::new();
                    for id in stats::held_ids(c, &p, after, BULK_CHUNK)? {
                        jobs::user_action(c, id, UserAction::Retry, now)?;
                        ids.push(id);
                    }
                    Ok(ids)
                });
                match r {
                    Ok(ids) if ids.is_empty() => break,
                    Ok(ids) => done.extend(ids),
                    Err(e) => return failed("/admin", &e),
                }
            }
            for id in &done {
                api.shared.waiters.notify(*id);
            }
            api.shared.wake();
            redirect(&format!("/admin?done=bulk&n={}", done.len()))
        }
        p => {
            let Some((id, action)) = p
                .strip_prefix("/admin/jobs/")
                .and_then(|rest| rest.split_once('/'))
                .and_then(|(id, a)| Some((id.parse::<i64>().ok()?, a.parse::<UserAction>().ok()?)))
            else {
                return super::html::secure(Reply::error(404, "not_found", "no such action"));
            };
            let back = format!("/admin/jobs/{id}");
            let now = api.shared.now();
            match api
                .shared
                .writer
                .call(move |c| jobs::user_action(c, id, action, now))
            {
                Ok(_) => {
                    api.shared.waiters.notify(id);
                    api.shared.wake();
                    redirect(&format!("{back}?done={}", url_enc(action.as_str())))
                }
                Err(e) => failed(&back, &e),
            }
        }
    }
}
