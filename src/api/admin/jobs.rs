//! The jobs list (filters, keyset paging: no COUNT per page view) and a job's detail with
//! its attempts. Attempt rows are stored with secrets already redacted; the job's own
//! headers are redacted here, since an application may have put a token in them.

use std::fmt::Write as _;

use serde_json::Value;

use super::html::{account_link, badge, clip, esc, page, pager, post_button, url_enc, when};
use super::session::Session;
use crate::api::{Api, Reply, Req};
use crate::error::Result;
use crate::http_call::is_secret_header;
use crate::job::{JobState, UserAction};
use crate::store::attempts;
use crate::store::jobs::{self, JobFilter};

/// Jobs per page.
const PAGE: i64 = 50;
/// Bodies longer than this are cut on the page.
const BODY_SHOWN: usize = 16 * 1024;

pub(super) fn list(api: &Api, req: &Req, s: &Session, notice: Option<&str>) -> Result<Reply> {
    let q = |k: &str| req.query.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let state = q("state").and_then(|v| v.parse::<JobState>().ok());
    let filter = JobFilter {
        state,
        account: q("account").map(str::to_string),
        provider: q("provider").map(str::to_string),
        since: None,
    };
    let before = q("before").and_then(|v| v.parse::<i64>().ok());
    let now = api.shared.now();
    let mut rows = jobs::list(&*api.shared.store.read()?, &filter, before, PAGE + 1)?;
    let more = rows.len() as i64 > PAGE;
    rows.truncate(PAGE as usize);

    let mut b = String::from("<h1>Jobs</h1><form class=\"filters\" method=\"get\" action=\"/admin/jobs\"><label>State<select name=\"state\"><option value=\"\">any</option>");
    for st in JobState::ALL {
        let sel = if state == Some(st) { " selected" } else { "" };
        let _ = write!(b, "<option{sel}>{}</option>", st.as_str());
    }
    let _ = write!(
        b,
        "</select></label><label>Account<input name=\"account\" value=\"{}\"></label>\
         <label>Provider<input name=\"provider\" value=\"{}\"></label><button type=\"submit\">Filter</button></form>",
        esc(filter.account.as_deref().unwrap_or("")),
        esc(filter.provider.as_deref().unwrap_or(""))
    );
    if rows.is_empty() {
        b.push_str("<p class=\"muted\" id=\"no-jobs\">No jobs match.</p>");
    } else {
        b.push_str("<div class=\"scroll\"><table id=\"jobs\"><tr><th>Id</th><th>State</th><th>Account</th><th>Provider</th><th class=\"num\">Attempts</th><th>Request</th><th>Updated</th><th>Next run</th></tr>");
        for j in &rows {
            let next = if j.state.is_pending() {
                when(j.run_at, now)
            } else {
                String::new()
            };
            let _ = write!(
                b,
                "<tr class=\"job\" data-id=\"{0}\"><td><a href=\"/admin/jobs/{0}\">{0}</a></td><td>{1}</td><td>{2}</td><td>{3}</td><td class=\"num\">{4}</td><td class=\"url\">{5} {6}</td><td>{7}</td><td>{next}</td></tr>",
                j.id,
                badge(j.state.as_str()),
                esc(&j.account),
                esc(&j.provider),
                j.attempts,
                esc(&j.method),
                esc(&clip(&j.url, 120)),
                when(j.updated_at, now),
            );
        }
        b.push_str("</table></div>");
    }
    // Keyset paging: the next page starts below the last id shown.
    let mut keep = String::new();
    for (k, v) in [
        ("state", state.map(JobState::as_str)),
        ("account", filter.account.as_deref()),
        ("provider", filter.provider.as_deref()),
    ] {
        if let Some(v) = v {
            let _ = write!(keep, "&{k}={}", url_enc(v));
        }
    }
    let first = format!("/admin/jobs?{}", keep.trim_start_matches('&'));
    let next = match (more, rows.last()) {
        (true, Some(last)) => Some(format!("/admin/jobs?before={}{keep}", last.id)),
        _ => None,
    };
    b.push_str(&pager(
        before.is_some().then_some((first.as_str(), "« Newest")),
        next.as_deref().map(|h| ("older", h, "Older »")),
    ));
    Ok(page(
        200,
        "Jobs",
        Some(("/admin/jobs", &s.csrf)),
        notice,
        &b,
    ))
}

fn headers_table(headers: &[(String, String)]) -> String {
    if headers.is_empty() {
        return "<span class=\"muted\">none</span>".to_string();
    }
    let mut h = String::from("<pre>");
    for (k, v) in headers {
        let v = if is_secret_header(k, None) {
            "[redacted]"
        } else {
            v.as_str()
        };
        let _ = writeln!(h, "{}: {}", esc(k), esc(v));
    }
    h.push_str("</pre>");
    h
}

fn body_block(body: &str) -> String {
    if body.is_empty() {
        "<span class=\"muted\">empty</span>".to_string()
    } else {
        format!("<pre>{}</pre>", esc(&clip(body, BODY_SHOWN)))
    }
}

fn json_headers(v: &Value) -> Vec<(String, String)> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn detail(api: &Api, id: i64, s: &Session, notice: Option<&str>) -> Result<Reply> {
    let conn = api.shared.store.read()?;
    let job = jobs::get(&conn, id)?;
    let log = attempts::list_json(&conn, id)?;
    drop(conn);
    let now = api.shared.now();
    let mut b = format!(
        "<h1>Job {} {}</h1><div class=\"actions\" id=\"actions\">",
        job.id,
        badge(job.state.as_str())
    );
    for (action, label, class) in [
        (UserAction::Approve, "Approve", ""),
        (UserAction::Retry, "Retry now", ""),
        (UserAction::Reopen, "Reopen", "secondary"),
        (UserAction::Cancel, "Cancel", "danger"),
    ] {
        if action.target(job.state).is_some() {
            b.push_str(&post_button(
                &format!("/admin/jobs/{}/{}", job.id, action.as_str()),
                label,
                &s.csrf,
                &[],
                class,
            ));
        }
    }
    b.push_str("</div><dl class=\"fields\" id=\"fields\">");
    let mut field = |k: &str, v: String| {
        let _ = write!(b, "<dt>{}</dt><dd>{v}</dd>", esc(k));
    };
    field("account", account_link(&job.account));
    field("provider", esc(&job.provider));
    if let Some(op) = job.operation_id {
        field(
            "operation",
            format!(
                "<a href=\"/admin/operations/{op}\">{op}</a>, step {}",
                job.step_index.map_or(0, |i| i + 1)
            ),
        );
    }
    field(
        "attempts",
        format!(
            "{} of {}",
            job.attempts,
            job.max_attempts
                .map_or("the provider's maximum".to_string(), |m| m.to_string())
        ),
    );
    field(
        "request",
        format!(
            "{} <span class=\"url\">{}</span>",
            esc(&job.method),
            esc(&job.url)
        ),
    );
    field("headers", headers_table(&job.headers));
    if let Some(body) = &job.body {
        field("body", body_block(&String::from_utf8_lossy(body)));
    }
    if job.state.is_pending() {
        field("next run", when(job.run_at, now));
    }
    field("created", when(job.created_at, now));
    field("updated", when(job.updated_at, now));
    if let Some(t) = job.expires_at {
        field("expires", when(t, now));
    }
    if let Some(k) = &job.idempotency_key {
        field("idempotency key", esc(k));
    }
    if let Some(u) = &job.callback_url {
        field("callback", esc(u));
    }
    if job.metadata.as_object().is_some_and(|m| !m.is_empty()) {
        field(
            "metadata",
            format!("<pre>{}</pre>", esc(&job.metadata.to_string())),
        );
    }
    if let Some(e) = &job.last_error {
        field(
            "error",
            format!(
                "<strong>{}</strong> ({}): {}",
                esc(&e.category),
                esc(&e.reason),
                esc(&e.message)
            ),
        );
    }
    if let Some(r) = &job.result {
        // The response itself is shown from the attempt's audit row below, which is
        // stored redacted; the job's own copy is not, so it is never rendered here.
        field(
            "result",
            format!(
                "HTTP {} <span class=\"muted\">(the response is under its attempt below)</span>",
                r.status
            ),
        );
    }
    b.push_str("</dl>");
    let _ = write!(b, "<h2>Attempts ({})</h2>", log.len());
    if log.is_empty() {
        b.push_str("<p class=\"muted\">No request was sent yet.</p>");
    }
    let last = log.len().saturating_sub(1);
    for (i, a) in log.iter().enumerate() {
        let t = |k: &str| a.get(k).and_then(|v| v.as_str()).unwrap_or("");
        let resp = a.get("response").filter(|r| !r.is_null());
        let status = resp
            .and_then(|r| r.get("status"))
            .and_then(|s| s.as_u64())
            .map_or("no answer".to_string(), |s| format!("HTTP {s}"));
        let _ = write!(
            b,
            "<details class=\"attempt\" id=\"attempt-{}\"{}><summary>Attempt {} · {} · {} · {} ms · {}</summary>",
            a["attempt"],
            if i == last { " open" } else { "" },
            a["attempt"],
            badge(t("outcome")),
            esc(&status),
            a.get("duration_ms").and_then(|d| d.as_i64()).unwrap_or(0),
            esc(t("started_at"))
        );
        let req = &a["request"];
        let _ = write!(
            b,
            "<h3>Request</h3><p>{} <span class=\"url\">{}</span></p>{}{}",
            esc(req["method"].as_str().unwrap_or("")),
            esc(req["url"].as_str().unwrap_or("")),
            headers_table(&json_headers(&req["headers"])),
            req["body"].as_str().map(body_block).unwrap_or_default()
        );
        if let Some(r) = resp {
            let _ = write!(
                b,
                "<h3>Response</h3><p>{}{}</p>{}{}",
                esc(&status),
                if r["truncated"].as_bool() == Some(true) {
                    " (body cut at the cap)"
                } else {
                    ""
                },
                headers_table(&json_headers(&r["headers"])),
                body_block(r["body"].as_str().unwrap_or(""))
            );
        }
        if let Some(e) = a.get("error").and_then(|e| e.as_str()) {
            let _ = write!(b, "<p><strong>Error:</strong> {}</p>", esc(e));
        }
        b.push_str("</details>");
    }
    Ok(page(
        200,
        &format!("Job {}", job.id),
        Some(("/admin/jobs", &s.csrf)),
        notice,
        &b,
    ))
}
