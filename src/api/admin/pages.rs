//! The admin page's GET views: overview, accounts and credentials, notifications, triage.
//! Jobs, operations and channels have their own files.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::html::{badge, clip, esc, page, post_button, url_enc, when};
use super::session::Session;
use super::{channels, jobs, operations};
use crate::api::{Api, Reply, Req};
use crate::engine::limits::Circuit;
use crate::error::{Error, Result};
use crate::job::JobState;
use crate::store::attempts::Outcome;
use crate::store::{accounts, engine, notes, stats};

/// Answers a GET under `/admin` for a session.
pub(super) fn get(api: &Api, req: &Req, s: &Session) -> Reply {
    let path = req.path.trim_end_matches('/');
    let notice = notice(req);
    let notice = notice.as_deref();
    let result = match path {
        "/admin" => overview(api, s, notice),
        "/admin/jobs" => jobs::list(api, req, s, notice),
        "/admin/accounts" => accounts_page(api, s, notice),
        "/admin/notifications" => notifications(api, req, s, notice),
        "/admin/triage" => triage(api, s, notice),
        "/admin/operations" => operations::list(api, req, s, notice),
        "/admin/channels" => channels::list(api, req, s, notice),
        p => {
            let id = |prefix: &str| p.strip_prefix(prefix).and_then(|i| i.parse::<i64>().ok());
            if let Some(id) = id("/admin/jobs/") {
                jobs::detail(api, id, s, notice)
            } else if let Some(id) = id("/admin/operations/") {
                operations::detail(api, id, s, notice)
            } else {
                Err(Error::NotFound(format!("page {p}")))
            }
        }
    };
    result.unwrap_or_else(|e| error_page(s, &e))
}

/// The page for an error: 404 for a missing thing, else 500 (details in the log).
pub(super) fn error_page(s: &Session, e: &Error) -> Reply {
    let (status, text) = match e {
        Error::NotFound(what) => (404, format!("{what} not found.")),
        other => {
            log::error!("admin page: {other}");
            (
                500,
                "errand could not build this page; see its log.".to_string(),
            )
        }
    };
    page(
        status,
        "Error",
        Some(("", &s.csrf)),
        None,
        &format!("<h1>{}</h1>", esc(&text)),
    )
}

/// The line shown after an action (fixed texts chosen by a code, never echoed input).
fn notice(req: &Req) -> Option<String> {
    if let Some(done) = req.query.get("done") {
        let n = req.query.get("n").and_then(|n| n.parse::<u64>().ok());
        return Some(match done.as_str() {
            "approve" => "Job approved.".to_string(),
            "cancel" => "Job canceled.".to_string(),
            "retry" => "Job set to run now.".to_string(),
            "reopen" => "Job reopened as a draft for review.".to_string(),
            "bulk" => format!("{} held jobs set to run now.", n.unwrap_or(0)),
            "pause" => "Paused.".to_string(),
            "resume" => "Resumed.".to_string(),
            _ => return None,
        });
    }
    let err = req.query.get("err")?;
    let state = req
        .query
        .get("state")
        .and_then(|s| s.parse::<JobState>().ok());
    Some(match (err.as_str(), state) {
        ("conflict", Some(st)) => format!("Not done: the job is {st}, which does not allow that."),
        ("notfound", _) => "Not done: no such job.".to_string(),
        ("invalid", _) => "Not done: the form was incomplete.".to_string(),
        _ => "Not done: errand could not complete the action; see its log.".to_string(),
    })
}

fn overview(api: &Api, s: &Session, notice: Option<&str>) -> Result<Reply> {
    let conn = api.shared.store.read()?;
    let now = api.shared.now();
    let counts = crate::store::jobs::count_by_state(&conn)?;
    let (due, oldest) = engine::due_backlog(&conn, now)?;
    let alerts = stats::active_alerts(&conn)?;
    let paused = accounts::global_paused(&conn)?;
    let held = stats::held_by_provider(&conn)?;
    let failures = stats::recent_failures(&conn, 10)?;
    drop(conn);
    let attempts = api.shared.metrics.attempts();
    let mut b = String::with_capacity(8192);
    b.push_str("<h1>Overview</h1>");
    for a in &alerts {
        let _ = write!(
            b,
            "<p class=\"alert\" id=\"alert-{0}\">Alert: <strong>{0}</strong> is over its threshold (see [alerts] in the configuration).</p>",
            esc(a)
        );
    }
    if paused {
        let _ = write!(
            b,
            "<p class=\"paused\">All sending is paused (global kill switch). {}</p>",
            post_button("/admin/resume", "Resume all", &s.csrf, &[], "")
        );
    }
    b.push_str("<div class=\"cards\" id=\"counts\">");
    for st in JobState::ALL {
        let n = counts.iter().find(|(x, _)| *x == st).map_or(0, |(_, n)| *n);
        let _ = write!(
            b,
            "<a class=\"card\" id=\"count-{0}\" href=\"/admin/jobs?state={0}\"><div class=\"n\">{1}</div><div class=\"l\">{0}</div></a>",
            st.as_str(),
            n
        );
    }
    let oldest_txt = oldest.map_or("none".to_string(), |t| super::html::human_ms(now - t));
    let _ = write!(
        b,
        "<div class=\"card\" id=\"due\"><div class=\"n\">{due}</div><div class=\"l\">due now</div></div>\
         <div class=\"card\" id=\"oldest\"><div class=\"n\">{}</div><div class=\"l\">oldest due waits</div></div></div>",
        esc(&oldest_txt)
    );
    // Providers: configured, seen in attempts since start, or holding jobs.
    let mut names: BTreeSet<String> = api.shared.config.providers.keys().cloned().collect();
    names.extend(attempts.keys().map(|(p, _)| p.clone()));
    names.extend(held.iter().map(|(p, _)| p.clone()));
    b.push_str("<h2>Providers <span class=\"muted\">(attempts since errand started)</span></h2><div class=\"scroll\"><table id=\"providers\"><tr><th>Provider</th><th class=\"num\">Attempts</th>");
    for o in Outcome::ALL {
        let _ = write!(b, "<th class=\"num\">{}</th>", o.as_str());
    }
    b.push_str("<th>Circuit</th><th>Rate limit</th><th class=\"num\">Held</th><th></th></tr>");
    for p in &names {
        let by = |o: Outcome| attempts.get(&(p.clone(), o.as_str())).copied().unwrap_or(0);
        let total: u64 = Outcome::ALL.iter().map(|o| by(*o)).sum();
        let _ = write!(
            b,
            "<tr><td><a href=\"/admin/jobs?provider={}\">{}</a></td><td class=\"num\">{total}</td>",
            url_enc(p),
            esc(p)
        );
        for o in Outcome::ALL {
            let _ = write!(b, "<td class=\"num\">{}</td>", by(o));
        }
        let circuit = match api.shared.limits.circuit(p, now) {
            Circuit::Closed => badge("closed"),
            Circuit::HalfOpen => badge("half-open"),
            Circuit::Open { until_ms } => {
                format!(
                    "{} for {}",
                    badge("open"),
                    super::html::human_ms(until_ms - now)
                )
            }
        };
        let rate = api
            .shared
            .config
            .providers
            .get(p)
            .and_then(|c| c.rate_limit)
            .map_or("—".to_string(), |r| {
                format!(
                    "{}/s{}",
                    r.per_second,
                    if r.per_account { " per account" } else { "" }
                )
            });
        let n_held = held.iter().find(|(x, _)| x == p).map_or(0, |(_, n)| *n);
        let retry = if n_held > 0 {
            post_button(
                "/admin/bulk-retry",
                "Retry held",
                &s.csrf,
                &[("provider", p)],
                "secondary",
            )
        } else {
            String::new()
        };
        let _ = write!(
            b,
            "<td>{circuit}</td><td>{}</td><td class=\"num\">{n_held}</td><td>{retry}</td></tr>",
            esc(&rate)
        );
    }
    b.push_str("</table></div>");
    b.push_str("<h2>Recent failures</h2>");
    if failures.is_empty() {
        b.push_str("<p class=\"muted\">None among the latest attempts.</p>");
    } else {
        b.push_str("<div class=\"scroll\"><table id=\"failures\"><tr><th>Job</th><th>Account</th><th>Provider</th><th>Outcome</th><th class=\"num\">Status</th><th>Error</th><th>When</th></tr>");
        for f in &failures {
            let _ = write!(
                b,
                "<tr><td><a href=\"/admin/jobs/{0}\">{0}</a> #{1}</td><td>{2}</td><td>{3}</td><td>{4}</td><td class=\"num\">{5}</td><td>{6}</td><td>{7}</td></tr>",
                f.job_id,
                f.attempt,
                esc(&f.account),
                esc(&f.provider),
                badge(&f.outcome),
                f.status.map_or(String::new(), |s| s.to_string()),
                esc(&clip(f.error.as_deref().unwrap_or(""), 160)),
                when(f.started_at, now)
            );
        }
        b.push_str("</table></div>");
    }
    if !paused {
        let _ = write!(
            b,
            "<h2>Kill switch</h2><p>{}</p>",
            post_button("/admin/pause", "Pause all sending", &s.csrf, &[], "danger")
        );
    }
    Ok(page(200, "Overview", Some(("/admin", &s.csrf)), notice, &b))
}

fn accounts_page(api: &Api, s: &Session, notice: Option<&str>) -> Result<Reply> {
    let conn = api.shared.store.read()?;
    let paused = accounts::global_paused(&conn)?;
    let list = accounts::list(&conn)?;
    let creds = accounts::list_credentials(&conn, None)?;
    drop(conn);
    let mut b = String::from("<h1>Accounts and credentials</h1>");
    let _ = write!(
        b,
        "<p>Global switch: {} {}</p>",
        if paused {
            badge("paused")
        } else {
            badge("running")
        },
        if paused {
            post_button("/admin/resume", "Resume all", &s.csrf, &[], "")
        } else {
            post_button("/admin/pause", "Pause all", &s.csrf, &[], "danger")
        }
    );
    let _ = write!(
        b,
        "<form method=\"post\" action=\"/admin/pause\" class=\"filters\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <label>Account<input name=\"account\" required maxlength=\"200\"></label><button type=\"submit\" class=\"danger\">Pause account</button></form>",
        esc(&s.csrf)
    );
    b.push_str("<h2>Accounts</h2>");
    if list.is_empty() {
        b.push_str("<p class=\"muted\">No account was ever paused or suspended.</p>");
    } else {
        b.push_str("<div class=\"scroll\"><table id=\"accounts\"><tr><th>Account</th><th>Status</th><th>Sending</th><th></th></tr>");
        for a in &list {
            let (label, action, class) = if a.paused {
                ("Resume", "/admin/resume", "")
            } else {
                ("Pause", "/admin/pause", "danger")
            };
            let _ = write!(
                b,
                "<tr><td><a href=\"/admin/jobs?account={}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                url_enc(&a.account),
                esc(&a.account),
                badge(&a.status),
                if a.paused { badge("paused") } else { badge("running") },
                post_button(action, label, &s.csrf, &[("account", &a.account)], class)
            );
        }
        b.push_str("</table></div>");
    }
    b.push_str("<h2>Credentials <span class=\"muted\">(secrets are never shown)</span></h2>");
    if creds.is_empty() {
        b.push_str("<p class=\"muted\">None stored.</p>");
    } else {
        b.push_str("<div class=\"scroll\"><table id=\"credentials\"><tr><th>Account</th><th>Provider</th><th>Status</th><th>Reason</th><th>Header</th><th>Updated</th></tr>");
        for c in &creds {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&c.account),
                esc(&c.provider),
                badge(&c.status),
                esc(c.reason.as_deref().unwrap_or("")),
                esc(&c.header),
                esc(&c.updated_at)
            );
        }
        b.push_str("</table></div>");
    }
    Ok(page(
        200,
        "Accounts",
        Some(("/admin/accounts", &s.csrf)),
        notice,
        &b,
    ))
}

fn text<'a>(v: &'a serde_json::Value, k: &str) -> &'a str {
    v.get(k).and_then(|x| x.as_str()).unwrap_or("")
}

fn notifications(api: &Api, req: &Req, s: &Session, notice: Option<&str>) -> Result<Reply> {
    let account = req.query.get("account").filter(|a| !a.is_empty());
    let list = notes::list(&*api.shared.store.read()?, account.map(String::as_str), 100)?;
    let mut b = String::from("<h1>Notifications</h1>");
    if list.is_empty() {
        b.push_str("<p class=\"muted\">None.</p>");
    } else {
        b.push_str("<div class=\"scroll\"><table id=\"notifications\"><tr><th>When</th><th>Kind</th><th>Account</th><th>Provider</th><th>Job</th><th>Message</th></tr>");
        for n in &list {
            let job = text(n, "job_id");
            let job = if job.is_empty() {
                String::new()
            } else {
                format!("<a href=\"/admin/jobs/{0}\">{0}</a>", esc(job))
            };
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{job}</td><td>{}</td></tr>",
                esc(text(n, "created_at")),
                badge(text(n, "kind")),
                esc(text(n, "account")),
                esc(text(n, "provider")),
                esc(text(n, "message"))
            );
        }
        b.push_str("</table></div>");
    }
    Ok(page(
        200,
        "Notifications",
        Some(("/admin/notifications", &s.csrf)),
        notice,
        &b,
    ))
}

fn triage(api: &Api, s: &Session, notice: Option<&str>) -> Result<Reply> {
    let list = notes::list_triage(&*api.shared.store.read()?, 100)?;
    let mut b = String::from(
        "<h1>Triage</h1><p class=\"muted\">Answers no rule classifies, grouped by signature. Add a rule under [providers.NAME] to classify them.</p>",
    );
    if list.is_empty() {
        b.push_str("<p class=\"muted\">None.</p>");
    } else {
        b.push_str("<div class=\"scroll\"><table id=\"triage\"><tr><th>Provider</th><th>Signature</th><th class=\"num\">Count</th><th>Sample</th><th>First seen</th><th>Last seen</th></tr>");
        for t in &list {
            let job = text(t, "sample_job");
            let sample_link = if job.is_empty() {
                String::new()
            } else {
                format!("<a href=\"/admin/jobs/{0}\">job {0}</a>", esc(job))
            };
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{sample_link}<pre>{}</pre></td><td>{}</td><td>{}</td></tr>",
                esc(text(t, "provider")),
                esc(&clip(text(t, "signature"), 120)),
                t.get("count").and_then(|c| c.as_i64()).unwrap_or(0),
                esc(&clip(text(t, "sample"), 2000)),
                esc(text(t, "first_seen")),
                esc(text(t, "last_seen"))
            );
        }
        b.push_str("</table></div>");
    }
    Ok(page(
        200,
        "Triage",
        Some(("/admin/triage", &s.csrf)),
        notice,
        &b,
    ))
}
