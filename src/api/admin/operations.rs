//! Operations on the admin page: the newest operations (keyset paging) and one operation's
//! steps. State comes from `store::operations` (derived from the recovery point and the
//! current step's job), never recomputed here. A step's response is not rendered: it is
//! the job's stored result, and the job's page shows the redacted audit log instead.

use std::fmt::Write as _;

use serde_json::Value;

use super::html::{account_link, badge, esc, page, pager, url_enc, when};
use super::session::Session;
use crate::api::{Api, Reply, Req};
use crate::error::Result;
use crate::store::{operations, stats};

/// Operations per page.
const PAGE: i64 = 50;

pub(super) fn list(api: &Api, req: &Req, s: &Session, notice: Option<&str>) -> Result<Reply> {
    let before = req.query.get("before").and_then(|v| v.parse::<i64>().ok());
    let now = api.shared.now();
    let conn = api.shared.store.read()?;
    let mut ops = stats::recent_operations(&conn, before, PAGE + 1)?;
    let more = ops.len() as i64 > PAGE;
    ops.truncate(PAGE as usize);
    let states = ops
        .iter()
        .map(|op| operations::state(&conn, op))
        .collect::<Result<Vec<_>>>()?;
    drop(conn);

    let mut b = String::from(
        "<h1>Operations</h1><p class=\"muted\">Multi-step jobs, newest first. A step runs once the one before it succeeded.</p>",
    );
    if ops.is_empty() {
        b.push_str("<p class=\"muted\" id=\"no-operations\">No operations.</p>");
    } else {
        b.push_str("<div class=\"scroll\"><table id=\"operations\"><tr><th>Id</th><th>Account</th><th>State</th><th class=\"num\">Steps done</th><th>Created</th><th>Updated</th></tr>");
        for (op, state) in ops.iter().zip(&states) {
            let _ = write!(
                b,
                "<tr class=\"op\" data-id=\"{0}\"><td><a href=\"/admin/operations/{0}\">{0}</a></td><td><a href=\"/admin/jobs?account={1}\">{2}</a></td><td>{3}</td><td class=\"num\">{4} / {5}</td><td>{6}</td><td>{7}</td></tr>",
                op.id,
                url_enc(&op.account),
                esc(&op.account),
                badge(state.as_str()),
                op.completed,
                op.steps.len(),
                when(op.created_at, now),
                when(op.updated_at, now),
            );
        }
        b.push_str("</table></div>");
    }
    let next = match (more, ops.last()) {
        (true, Some(last)) => Some(format!("/admin/operations?before={}", last.id)),
        _ => None,
    };
    b.push_str(&pager(
        before
            .is_some()
            .then_some(("/admin/operations", "« Newest")),
        next.as_deref().map(|h| ("older", h, "Older »")),
    ));
    Ok(page(
        200,
        "Operations",
        Some(("/admin/operations", &s.csrf)),
        notice,
        &b,
    ))
}

fn text<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

/// `category (reason): message` of an error object, escaped; empty for null.
fn error_text(e: &Value) -> String {
    if e.is_null() {
        return String::new();
    }
    format!(
        "<strong>{}</strong> ({}): {}",
        esc(text(e, "category")),
        esc(text(e, "reason")),
        esc(text(e, "message"))
    )
}

pub(super) fn detail(api: &Api, id: i64, s: &Session, notice: Option<&str>) -> Result<Reply> {
    let conn = api.shared.store.read()?;
    let op = operations::get(&conn, id)?;
    let v = operations::to_json(&conn, &op)?;
    drop(conn);
    let now = api.shared.now();
    let mut b = format!(
        "<h1>Operation {} {}</h1><dl class=\"fields\" id=\"fields\">",
        op.id,
        badge(text(&v, "state"))
    );
    let mut field = |k: &str, v: String| {
        let _ = write!(b, "<dt>{}</dt><dd>{v}</dd>", esc(k));
    };
    field("account", account_link(&op.account));
    field(
        "steps done",
        format!("{} of {}", op.completed, op.steps.len()),
    );
    field("created", when(op.created_at, now));
    field("updated", when(op.updated_at, now));
    if !v["error"].is_null() {
        field("error", error_text(&v["error"]));
    }
    b.push_str("</dl><h2>Steps</h2><div class=\"scroll\"><table id=\"steps\"><tr><th class=\"num\">#</th><th>Name</th><th>State</th><th>Job</th><th class=\"num\">Attempts</th><th>Result</th><th>Error</th></tr>");
    let steps = v["steps"].as_array().map(Vec::as_slice).unwrap_or_default();
    for (i, step) in steps.iter().enumerate() {
        let job = match text(step, "job_id") {
            "" => "<span class=\"muted\">not yet</span>".to_string(),
            j => format!("<a href=\"/admin/jobs/{0}\">{0}</a>", esc(j)),
        };
        let result = step["result"]["status"]
            .as_u64()
            .map_or(String::new(), |s| format!("HTTP {s}"));
        let _ = write!(
            b,
            "<tr class=\"step\" data-index=\"{i}\"><td class=\"num\">{}</td><td>{}</td><td>{}</td><td>{job}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
            i + 1,
            esc(text(step, "name")),
            badge(text(step, "state")),
            step["attempts"].as_i64().unwrap_or(0),
            esc(&result),
            error_text(&step["error"])
        );
    }
    b.push_str("</table></div>");
    Ok(page(
        200,
        &format!("Operation {}", op.id),
        Some(("/admin/operations", &s.csrf)),
        notice,
        &b,
    ))
}
