//! The admin page (`/admin`, SPEC §6): server-rendered HTML, no scripts, no external
//! assets. Access: with an API token configured, a login form trades the token for a
//! session cookie; without one (errand then listens only on loopback) a session is
//! handed out on the first visit. Either way every POST must carry the session's CSRF
//! token, and a request without a session sees no data and can change nothing.

mod actions;
mod channels;
pub mod html;
mod jobs;
mod operations;
mod pages;
pub mod session;

use super::request::{constant_time_eq, parse_query};
use super::{Api, Reply, Req};
use html::{esc, page, redirect, secure};
use session::Session;

pub use session::Sessions;

/// The form fields of a POST body (`application/x-www-form-urlencoded`).
fn form(req: &Req) -> std::collections::HashMap<String, String> {
    parse_query(&String::from_utf8_lossy(&req.body))
}

/// A refusal page; says nothing about the data.
fn refused(status: u16, why: &str) -> Reply {
    page(
        status,
        "Refused",
        None,
        None,
        &format!(
            "<h1>Refused</h1><p>{}</p><p><a href=\"/admin\">Back to the admin page</a></p>",
            esc(why)
        ),
    )
}

fn login_page(status: u16, message: Option<&str>) -> Reply {
    let body = format!(
        "<form class=\"login\" method=\"post\" action=\"/admin/login\">\
         <h1>Log in</h1>{}<label for=\"token\">API token</label>\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required autofocus>\
         <button type=\"submit\" id=\"login\">Log in</button></form>",
        message
            .map(|m| format!("<p class=\"alert\">{}</p>", esc(m)))
            .unwrap_or_default()
    );
    page(status, "Log in", None, None, &body)
}

/// True when a browser's `Origin` (sent with POSTs) is not this host (as the browser saw
/// it: `X-Forwarded-Host` behind a proxy, else `Host`): a cross-site form.
fn cross_origin(req: &Req) -> bool {
    let host = req
        .header("x-forwarded-host")
        .or_else(|| req.header("host"));
    let (Some(origin), Some(host)) = (req.header("origin"), host) else {
        return false;
    };
    let origin_host = origin
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(origin);
    origin == "null" || !origin_host.eq_ignore_ascii_case(host)
}

/// Answers every request under `/admin`.
pub fn handle(api: &Api, req: &Req) -> Reply {
    let path = req.path.as_str();
    let method = req.method.as_str();
    if path == "/admin/admin.css" {
        return match method {
            "GET" | "HEAD" => secure(Reply::with_type(
                200,
                "text/css; charset=utf-8",
                html::CSS.as_bytes().to_vec(),
            ))
            .header("Cache-Control", "max-age=300"),
            _ => Reply::error(405, "method_not_allowed", "use GET"),
        };
    }
    if method == "POST" && cross_origin(req) {
        return refused(403, "This form was sent from another site.");
    }
    let token = api.shared.config.api_token.as_deref();
    if path == "/admin/login" {
        return match (method, token) {
            ("POST", Some(t)) => login(api, req, t),
            ("GET", Some(_)) => login_page(200, None),
            _ => redirect("/admin"),
        };
    }
    let session = api.admin_sessions.get(req);
    let (session, new_cookie) = match (session, token) {
        (Some(s), _) => (s, None),
        (None, Some(_)) => {
            return match method {
                "GET" | "HEAD" => login_page(200, None),
                _ => refused(401, "Log in first."),
            }
        }
        (None, None) => {
            if method != "GET" && method != "HEAD" {
                return refused(403, "No session: reload the admin page and try again.");
            }
            let s = api.admin_sessions.create();
            let c = session::set_cookie(req, &s.id);
            (s, Some(c))
        }
    };
    let reply = match method {
        "GET" | "HEAD" => pages::get(api, req, &session),
        "POST" => {
            let f = form(req);
            if !session.csrf_ok(f.get("csrf").map(String::as_str)) {
                return refused(
                    403,
                    "The form's CSRF token is missing or stale: reload the page and try again.",
                );
            }
            if path == "/admin/logout" {
                api.admin_sessions.remove(&session.id);
                return redirect("/admin").header("Set-Cookie", &session::clear_cookie());
            }
            actions::post(api, path, &f)
        }
        _ => Reply::error(405, "method_not_allowed", "use GET or POST"),
    };
    match new_cookie {
        Some(c) => reply.header("Set-Cookie", &c),
        None => reply,
    }
}

fn login(api: &Api, req: &Req, token: &str) -> Reply {
    let f = form(req);
    let given = f.get("token").map(String::as_str).unwrap_or("");
    if !constant_time_eq(given.trim().as_bytes(), token.as_bytes()) {
        log::warn!("admin: a login with a wrong token was refused");
        // Slows down guessing a little; the token is long enough that this is a courtesy.
        std::thread::sleep(std::time::Duration::from_millis(200));
        return login_page(401, Some("That is not the API token."));
    }
    let s: Session = api.admin_sessions.create();
    redirect("/admin").header("Set-Cookie", &session::set_cookie(req, &s.id))
}
