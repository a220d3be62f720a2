//! Issue 5: the admin page, /metrics, /readyz, alerts, notify_url delivery and client.js.
//! The browser tests drive headless Chromium through chromedriver (see `webdriver`).

mod prom;
mod webdriver;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use errand::clock::SystemClock;
use errand::config::Config;
use errand::server::Server;
use errand::store::{accounts, channels, notes, operations, Store};
use serde_json::{json, Value};

use crate::support::*;
use webdriver::Browser;

const TOKEN: &str = "admin-test-token-0123456789";
const SECRET: &str = "cred-sekrit-9f8e7d6c5b4a";
const HOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// An in-process errand (engine + HTTP API) on 127.0.0.1:0, stopped on drop.
struct InProc {
    server: Option<Server>,
    base: String,
    store: Arc<Store>,
    _dir: tempfile::TempDir,
}

impl InProc {
    fn start(toml: &str, token: Option<&str>) -> InProc {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::from_toml(toml).unwrap();
        config.db = dir.path().join("errand.db");
        config.listen = "127.0.0.1:0".into();
        config.tick_ms = 50;
        config.workers = 2;
        config.api_token = token.map(str::to_string);
        let server = Server::start(config, Arc::new(SystemClock)).unwrap();
        let base = format!("http://{}", server.http.addr());
        let store = server.api.shared.store.clone();
        InProc {
            server: Some(server),
            base,
            store,
            _dir: dir,
        }
    }
    fn url(&self, p: &str) -> String {
        format!("{}{p}", self.base)
    }
    fn insert(&self, job: &errand::spec::NewJob) -> i64 {
        let id = self
            .store
            .write(|tx| errand::store::jobs::insert(tx, job, now_ms()))
            .unwrap()
            .id;
        self.shared().wake();
        id
    }
    fn shared(&self) -> &Arc<errand::engine::Shared> {
        &self.server.as_ref().unwrap().api.shared
    }
    fn state(&self, id: i64) -> String {
        state_in(&self.store, id)
    }
}

impl Drop for InProc {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop();
        }
    }
}

fn now_ms() -> i64 {
    errand::clock::Clock::now_ms(&SystemClock)
}

fn state_in(store: &Store, id: i64) -> String {
    errand::store::jobs::get(&store.read().unwrap(), id)
        .unwrap()
        .state
        .as_str()
        .to_string()
}

/// An agent that does not follow redirects, so a 303 can be checked.
fn no_redirects() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// A request without following redirects: (status, headers, body).
fn call(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut b = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(body.as_bytes().to_vec()).unwrap();
    let mut r = no_redirects().run(req).unwrap();
    Answer {
        status: r.status().as_u16(),
        headers: r
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body: r.body_mut().read_to_string().unwrap_or_default(),
    }
}

const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

/// Logs in with `token`; returns the `Cookie` header value.
fn login(base: &str, token: &str) -> String {
    let a = call(
        "POST",
        &format!("{base}/admin/login"),
        &[FORM],
        &format!("token={token}"),
    );
    assert_eq!(a.status, 303, "{}", a.body);
    let set = a
        .header("set-cookie")
        .expect("a session cookie")
        .to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/admin"] {
        assert!(set.contains(attr), "cookie lacks {attr}: {set}");
    }
    set.split(';').next().unwrap().to_string()
}

/// The `Cookie` header value for the session an answer's `Set-Cookie` opened (the page
/// opens one without a login when no API token is set).
fn session_cookie(a: &Answer) -> String {
    a.header("set-cookie")
        .expect("a session cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

/// The CSRF token in a page's forms.
fn csrf_of(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token");
    html[at + 19..].split('"').next().unwrap().to_string()
}

fn enqueue_cli(dir: &Path, db: &Path, account: &str, url: &str) -> i64 {
    let db = db.display().to_string();
    let (code, out, err) = run_cli(
        dir,
        &["--db", &db, "enqueue", "--account", account, "--url", url],
        None,
    );
    assert_eq!(code, 0, "{err}");
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("an id: {out}"))
}

#[test]
fn browser_logs_in_sees_counts_and_a_finished_job_then_retries_a_held_job() {
    let Some(browser) = Browser::start("admin browser test") else {
        return;
    };
    let p = MockProvider::start();
    p.script(
        "/flaky",
        vec![Step::status(418), Step::json(200, r#"{"ok":1}"#)],
    );
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("errand.db");
    let serve = ServeProcess::start(dir.path(), &db, &[], &[("ERRAND_API_TOKEN", TOKEN)]);
    let dbs = db.display().to_string();
    let (code, _, err) = run_cli(
        dir.path(),
        &["--db", &dbs, "credentials", "set", "acme", "default"],
        Some(SECRET),
    );
    assert_eq!(code, 0, "{err}");
    let done = enqueue_cli(dir.path(), &db, "acme", &p.url("/ok"));
    let held = enqueue_cli(dir.path(), &db, "acme", &p.url("/flaky"));
    let store = Store::open(&db, Default::default()).unwrap();
    wait_for(20, "one job done, one held", || {
        state_in(&store, done) == "succeeded" && state_in(&store, held) == "draft"
    });
    assert_eq!(
        p.requests("/ok")[0].header("authorization"),
        Some(format!("Bearer {SECRET}").as_str()),
        "the credential was injected"
    );

    // Not logged in: a login form and nothing else.
    browser.goto(&serve.url("/admin"));
    assert!(browser.find_all("#counts").is_empty());
    browser.fill("#token", TOKEN);
    browser.click("#login");
    assert_eq!(browser.text("#count-succeeded .n"), "1");
    assert_eq!(browser.text("#count-draft .n"), "1");
    let mut pages = vec![browser.source()];

    browser.goto(&serve.url("/admin/jobs?state=succeeded"));
    browser.click(&format!("tr.job[data-id=\"{done}\"] a"));
    wait_for(10, "the job's detail", || {
        browser.url().ends_with(&format!("/admin/jobs/{done}"))
    });
    let attempt = browser.text("#attempt-1 summary");
    assert!(
        attempt.contains("success") && attempt.contains("HTTP 200"),
        "{attempt}"
    );
    assert!(
        browser.source().contains("[redacted]"),
        "the Authorization header shows redacted"
    );
    pages.push(browser.source());

    browser.goto(&serve.url(&format!("/admin/jobs/{held}")));
    assert!(browser.text("h1").contains("draft"));
    browser.click(&format!("form[action=\"/admin/jobs/{held}/retry\"] button"));
    assert!(browser.text(".notice").contains("run now"));
    wait_for(20, "the retried job to succeed", || {
        state_in(&store, held) == "succeeded"
    });
    browser.goto(&serve.url(&format!("/admin/jobs/{held}")));
    assert!(browser.text("h1").contains("succeeded"));
    assert!(browser.text("#attempt-2 summary").contains("success"));
    pages.push(browser.source());
    browser.goto(&serve.url("/admin/accounts"));
    assert!(browser.text("#credentials").contains("valid"));
    pages.push(browser.source());

    for page in &pages {
        assert!(!page.contains(SECRET), "a credential on the admin page");
        assert!(!page.contains(TOKEN), "the API token on the admin page");
    }
    let log = serve.log();
    assert!(
        !log.contains(SECRET) && !log.contains(TOKEN),
        "a secret in the log"
    );
}

/// A stand-in for `/v1/jobs` that follows SPEC §4 (POST -> 202 with status_url; polls
/// answer 202 with Retry-After until done, then 200 with the job), plus a page that
/// loads errand's real `/client.js` from errand's origin: an application serving its own
/// page and forwarding `/v1` to errand. It counts polls exactly, which the real errand
/// (whose 202s depend on timing) cannot; the test against the real `/v1/jobs` follows.
struct FakeApi {
    server: Arc<tiny_http::Server>,
    port: u16,
    polls: Arc<std::sync::Mutex<Vec<String>>>,
}

impl FakeApi {
    fn start(client_js_url: String) -> FakeApi {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let port = server.server_addr().to_ip().unwrap().port();
        let polls: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let (s, log) = (server.clone(), polls.clone());
        std::thread::spawn(move || {
            let mut next_id = 0;
            let mut accounts: std::collections::HashMap<String, String> = Default::default();
            while let Ok(mut req) = s.recv() {
                let url = req.url().to_string();
                let path = url.split('?').next().unwrap_or("").to_string();
                let mut body = String::new();
                let _ = req.as_reader().read_to_string(&mut body);
                let json_h =
                    tiny_http::Header::from_bytes("Content-Type", "application/json").unwrap();
                let resp = |status: u16, v: Value| {
                    tiny_http::Response::from_string(v.to_string())
                        .with_status_code(status)
                        .with_header(json_h.clone())
                };
                let r = if path == "/" {
                    let html = format!(
                        "<!doctype html><title>t</title><script src=\"{client_js_url}\"></script>"
                    );
                    tiny_http::Response::from_string(html).with_header(
                        tiny_http::Header::from_bytes("Content-Type", "text/html").unwrap(),
                    )
                } else if req.method().as_str() == "POST" && path == "/v1/jobs" {
                    next_id += 1;
                    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                    let account = v["account"].as_str().unwrap_or("").to_string();
                    accounts.insert(next_id.to_string(), account);
                    let status_url = format!("/v1/jobs/{next_id}?token=t{next_id}");
                    resp(202, json!({"id": next_id.to_string(), "token": format!("t{next_id}"), "state": "approved", "status_url": status_url}))
                        .with_header(tiny_http::Header::from_bytes("Location", format!("/v1/jobs/{next_id}")).unwrap())
                } else if let Some(id) = path.strip_prefix("/v1/jobs/") {
                    let n = {
                        let mut l = log.lock().unwrap();
                        l.push(id.to_string());
                        l.iter().filter(|x| *x == id).count()
                    };
                    let account = accounts.get(id).cloned().unwrap_or_default();
                    let pending = json!({"id": id, "state": "running", "attempts": 1});
                    if n < 3 {
                        resp(202, pending)
                            .with_header(tiny_http::Header::from_bytes("Retry-After", "1").unwrap())
                    } else if account == "refused" {
                        resp(
                            200,
                            json!({"id": id, "state": "canceled", "attempts": 1, "result": null,
                            "error": {"category": "forbidden", "reason": "forbidden", "message": "the provider refused the request (403)"}}),
                        )
                    } else {
                        resp(
                            200,
                            json!({"id": id, "state": "succeeded", "attempts": 1, "error": null,
                            "result": {"status": 200, "headers": {}, "body": "{\"id\":\"m-1\"}", "json": {"id": "m-1"}}}),
                        )
                    }
                } else {
                    resp(
                        404,
                        json!({"error": {"code": "not_found", "message": "no"}}),
                    )
                };
                let _ = req.respond(r);
            }
        });
        FakeApi {
            server,
            port,
            polls,
        }
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

const RUN_REQUEST: &str = r#"
const [account, done] = arguments;
errand.request("/v1/jobs", {body: {account: account, request: {url: "https://example.com/x"}}, timeoutMs: 30000})
  .then(job => done({ok: job}), err => done({err: err.message, reason: err.reason, state: err.state}));
"#;

#[test]
fn browser_client_js_follows_202_polling_to_the_result_and_rejects_a_canceled_job() {
    let Some(browser) = Browser::start("client.js browser test") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let serve = ServeProcess::start(dir.path(), &dir.path().join("errand.db"), &[], &[]);
    let js = http_get(&serve.url("/client.js")).unwrap();
    assert_eq!(js.0, 200);
    let fake = FakeApi::start(serve.url("/client.js"));
    browser.goto(&format!("http://127.0.0.1:{}/", fake.port));
    let ok = browser.exec_async(RUN_REQUEST, json!(["acme"]));
    assert_eq!(ok["ok"]["state"], "succeeded", "{ok}");
    assert_eq!(ok["ok"]["result"]["json"]["id"], "m-1");
    let polls = fake.polls.lock().unwrap().clone();
    assert_eq!(
        polls.iter().filter(|p| *p == "1").count(),
        3,
        "two 202s, then the 200"
    );
    let refused = browser.exec_async(RUN_REQUEST, json!(["refused"]));
    assert_eq!(refused["state"], "canceled", "{refused}");
    assert_eq!(refused["reason"], "forbidden");
    assert_eq!(refused["err"], "the provider refused the request (403)");
}

/// Loads errand's `/client.js` into the current page (of errand's own origin), records
/// every response the script's `fetch` calls see, runs
/// `errand.request("/v1/jobs", {method: "POST", body, headers, timeoutMs})` and reports
/// the outcome with the recorded responses.
const REAL_REQUEST: &str = r#"
const [body, headers, done] = arguments;
const seen = [];
const loaded = window.errand ? Promise.resolve() : new Promise((resolve, reject) => {
  const s = document.createElement("script");
  s.src = "/client.js";
  s.onload = resolve;
  s.onerror = () => reject(new Error("could not load /client.js"));
  (document.head || document.documentElement).appendChild(s);
});
window.__realFetch = window.__realFetch || window.fetch;
window.fetch = (url, init) => window.__realFetch(url, init).then(r => {
  seen.push({method: (init && init.method) || "GET", url: String(url), status: r.status});
  return r;
});
loaded
  .then(() => errand.request("/v1/jobs", {method: "POST", body: body, headers: headers, timeoutMs: 20000}))
  .then(job => done({ok: job, seen: seen}),
        err => done({err: err.message, state: err.state || null, category: err.category || null,
                     reason: err.reason || null, status: err.status || null, seen: seen}));
"#;

/// The recorded responses' statuses and methods, for assertions and messages.
fn fetches(v: &Value) -> Vec<(String, u64)> {
    v["seen"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    (
                        s["method"].as_str().unwrap_or("").to_string(),
                        s["status"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn browser_client_js_on_errands_origin_follows_real_v1_jobs_polling_and_rejects_a_forbidden_job() {
    let Some(browser) = Browser::start("client.js against the real /v1/jobs") else {
        return;
    };
    let p = MockProvider::start();
    p.default_for(
        "/slow",
        Step::json(200, r#"{"id":"m-1","queued":true}"#).delay(1500),
    );
    p.default_for("/no", Step::json(403, r#"{"error":"not yours"}"#));
    let e = InProc::start("", Some(TOKEN));
    // A page of errand's own origin, so client.js's fetches are same-origin.
    browser.goto(&e.url("/healthz"));
    let job = |path: &str| {
        json!({"account": "acme", "timeout_ms": 10000,
               "request": {"method": "POST", "url": p.url(path), "json": {"to": "a@b.c"}}})
    };
    let auth = json!({"Authorization": format!("Bearer {TOKEN}")});

    // Without the API token errand refuses the POST and the Promise rejects with the 401.
    let denied = browser.exec_async(REAL_REQUEST, json!([job("/slow"), {}]));
    assert_eq!(denied["status"], 401, "{denied}");
    assert_eq!(denied["reason"], "unauthorized", "{denied}");
    assert_eq!(p.count("/slow"), 0, "nothing was enqueued");

    // (a) A slow job: 202 on the POST, 202 polls while it runs, then 200 with the job.
    let ok = browser.exec_async(REAL_REQUEST, json!([job("/slow"), auth]));
    let seen = fetches(&ok);
    assert_eq!(ok["ok"]["state"], "succeeded", "{ok}");
    assert_eq!(ok["ok"]["result"]["status"], 200, "{ok}");
    assert_eq!(ok["ok"]["result"]["json"]["id"], "m-1", "{ok}");
    assert_eq!(
        seen.first(),
        Some(&("POST".to_string(), 202)),
        "the enqueue: {seen:?}"
    );
    assert!(
        seen.iter().any(|s| *s == ("GET".to_string(), 202)),
        "at least one poll answered 202 before the result: {seen:?}"
    );
    assert_eq!(seen.last(), Some(&("GET".to_string(), 200)), "{seen:?}");
    assert_eq!(p.count("/slow"), 1);
    let sent = &p.requests("/slow")[0];
    assert_eq!(
        serde_json::from_slice::<Value>(&sent.body).unwrap(),
        json!({"to": "a@b.c"})
    );
    let id: i64 = ok["ok"]["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(e.state(id), "succeeded");

    // (b) The provider answers 403: the job is canceled and the Promise rejects with its
    // error.
    let refused = browser.exec_async(REAL_REQUEST, json!([job("/no"), auth]));
    assert_eq!(refused["state"], "canceled", "{refused}");
    assert_eq!(refused["category"], "forbidden", "{refused}");
    assert!(
        refused["err"].as_str().is_some_and(|m| !m.is_empty()),
        "{refused}"
    );
    assert_eq!(
        fetches(&refused).last(),
        Some(&("GET".to_string(), 200)),
        "the finished job came from a poll"
    );
    assert_eq!(p.count("/no"), 1, "a 403 is not retried");
}

#[test]
fn without_login_admin_shows_no_job_data_and_refuses_posts() {
    let e = InProc::start("", Some(TOKEN));
    let id = e.insert(&errand::spec::NewJob {
        state: errand::job::JobState::Draft,
        ..errand::spec::NewJob::get("secret-customer", "https://api.example.com/private-path")
    });
    for path in [
        "/admin",
        "/admin/jobs",
        &format!("/admin/jobs/{id}"),
        "/admin/accounts",
        "/admin/notifications",
        "/admin/triage",
        "/admin/operations",
        "/admin/operations/1",
        "/admin/channels",
    ] {
        let a = call("GET", &e.url(path), &[], "");
        assert_eq!(a.status, 200, "{path}");
        assert!(a.body.contains("name=\"token\""), "{path}: a login form");
        assert!(
            !a.body.contains("secret-customer") && !a.body.contains("private-path"),
            "{path} shows job data without login"
        );
        assert!(a.header("set-cookie").is_none(), "no session without login");
    }
    for path in [
        format!("/admin/jobs/{id}/cancel"),
        "/admin/pause".to_string(),
        "/admin/bulk-retry".to_string(),
    ] {
        let a = call("POST", &e.url(&path), &[FORM], "csrf=x&provider=default");
        assert_eq!(a.status, 401, "{path}");
    }
    let bad = call(
        "POST",
        &e.url("/admin/login"),
        &[FORM],
        "token=wrong-token-123456",
    );
    assert_eq!(bad.status, 401);
    assert!(bad.header("set-cookie").is_none());
    assert_eq!(e.state(id), "draft");

    // Logged in: a POST without the CSRF token, or with another one, is refused.
    let cookie = login(&e.base, TOKEN);
    let page = call(
        "GET",
        &e.url(&format!("/admin/jobs/{id}")),
        &[("Cookie", &cookie)],
        "",
    );
    assert!(page.body.contains("private-path"));
    let csrf = csrf_of(&page.body);
    let action = e.url(&format!("/admin/jobs/{id}/cancel"));
    for body in [
        "".to_string(),
        "csrf=".to_string(),
        format!("csrf={}x", csrf),
    ] {
        let a = call("POST", &action, &[FORM, ("Cookie", &cookie)], &body);
        assert_eq!(a.status, 403, "body {body:?}");
    }
    let cross = call(
        "POST",
        &action,
        &[FORM, ("Cookie", &cookie), ("Origin", "http://evil.example")],
        &format!("csrf={csrf}"),
    );
    assert_eq!(cross.status, 403, "a cross-site form");
    assert_eq!(e.state(id), "draft");
    let ok = call(
        "POST",
        &action,
        &[FORM, ("Cookie", &cookie)],
        &format!("csrf={csrf}"),
    );
    assert_eq!(ok.status, 303);
    assert_eq!(e.state(id), "canceled");
    // Logging out ends the session.
    let out = call(
        "POST",
        &e.url("/admin/logout"),
        &[FORM, ("Cookie", &cookie)],
        &format!("csrf={csrf}"),
    );
    assert_eq!(out.status, 303);
    let after = call("GET", &e.url("/admin/jobs"), &[("Cookie", &cookie)], "");
    assert!(!after.body.contains("private-path"));
}

#[test]
fn retry_held_retries_jobs_held_for_review_and_leaves_drafts_awaiting_approval() {
    let p = MockProvider::start();
    p.script("/held", vec![Step::status(418), Step::status(200)]);
    let e = InProc::start("", None);
    let held = e.insert(&errand::spec::NewJob::get("acme", &p.url("/held")));
    e.shared().wake();
    wait_for(10, "the 418 to hold the job", || e.state(held) == "draft");
    let waiting = e.insert(&errand::spec::NewJob {
        state: errand::job::JobState::Draft,
        ..errand::spec::NewJob::get("acme", &p.url("/awaiting"))
    });
    let page = call("GET", &e.url("/admin"), &[], "");
    let cookie = session_cookie(&page);
    let r = call(
        "POST",
        &e.url("/admin/bulk-retry"),
        &[FORM, ("Cookie", &cookie)],
        &format!("csrf={}&provider=default", csrf_of(&page.body)),
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some("/admin?done=bulk&n=1"));
    wait_for(10, "the held job to succeed", || {
        e.state(held) == "succeeded"
    });
    assert_eq!(
        e.state(waiting),
        "draft",
        "a draft awaiting approval is not approved"
    );
    assert_eq!(p.count("/awaiting"), 0);
}

#[test]
fn without_a_token_the_page_is_open_but_posts_still_need_the_csrf_token() {
    let e = InProc::start("", None);
    let id = e.insert(&errand::spec::NewJob {
        state: errand::job::JobState::Draft,
        ..errand::spec::NewJob::get("acme", "https://api.example.com/x")
    });
    let a = call("GET", &e.url("/admin"), &[], "");
    assert_eq!(a.status, 200);
    let cookie = session_cookie(&a);
    let csrf = csrf_of(&a.body);
    let action = e.url(&format!("/admin/jobs/{id}/approve"));
    assert_eq!(
        call("POST", &action, &[FORM], &format!("csrf={csrf}")).status,
        403
    );
    assert_eq!(
        call("POST", &action, &[FORM, ("Cookie", &cookie)], "").status,
        403
    );
    assert_eq!(e.state(id), "draft");
    let ok = call(
        "POST",
        &action,
        &[FORM, ("Cookie", &cookie)],
        &format!("csrf={csrf}"),
    );
    assert_eq!(ok.status, 303);
    assert_eq!(
        ok.header("location"),
        Some(format!("/admin/jobs/{id}?done=approve").as_str())
    );
    wait_for(10, "approved job to leave draft", || e.state(id) != "draft");
}

#[test]
fn metrics_count_two_successes_and_one_forbidden_in_valid_prometheus_text() {
    let p = MockProvider::start();
    p.default_for("/no", Step::status(403));
    let e = InProc::start("", Some(TOKEN));
    let ids = [
        e.insert(&fast_job("acme", &p.url("/ok"))),
        e.insert(&fast_job("acme", &p.url("/ok"))),
        e.insert(&fast_job("acme", &p.url("/no"))),
    ];
    wait_for(20, "three jobs finished", || {
        ids.iter()
            .all(|id| ["succeeded", "canceled"].contains(&e.state(*id).as_str()))
    });
    assert_eq!(call("GET", &e.url("/metrics"), &[], "").status, 401);
    let bearer = format!("Bearer {TOKEN}");
    let a = call("GET", &e.url("/metrics"), &[("Authorization", &bearer)], "");
    assert_eq!(a.status, 200);
    assert!(a
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let samples = prom::parse(&a.body).unwrap_or_else(|err| panic!("{err}\n{}", a.body));
    let attempts = |outcome| {
        prom::value(
            &samples,
            "errand_attempts_total",
            &[("provider", "default"), ("outcome", outcome)],
        )
    };
    assert_eq!(attempts("success"), Some(2.0), "{}", a.body);
    assert_eq!(attempts("forbidden"), Some(1.0));
    assert_eq!(attempts("unavailable"), Some(0.0));
    assert_eq!(
        prom::value(&samples, "errand_jobs", &[("state", "succeeded")]),
        Some(2.0)
    );
    assert_eq!(
        prom::value(&samples, "errand_jobs", &[("state", "canceled")]),
        Some(1.0)
    );
    assert_eq!(prom::value(&samples, "errand_due_backlog", &[]), Some(0.0));
    assert_eq!(
        prom::value(&samples, "errand_oldest_due_seconds", &[]),
        Some(0.0)
    );
    assert_eq!(
        prom::value(
            &samples,
            "errand_attempt_duration_seconds_count",
            &[("provider", "default")]
        ),
        Some(3.0)
    );
    assert_eq!(
        prom::value(&samples, "errand_thread_restarts_total", &[]),
        Some(0.0)
    );
    // Three outcomes went through the writer: at least one batch, time in its outcomes
    // phase, and every phase reported.
    assert!(prom::value(&samples, "errand_writer_batches_total", &[]).unwrap_or(0.0) >= 1.0);
    for phase in ["begin", "outcomes", "writes", "claim", "commit", "handoff"] {
        let secs = prom::value(&samples, "errand_writer_seconds_total", &[("phase", phase)]);
        assert!(secs.is_some_and(|s| s >= 0.0), "{phase}: {}", a.body);
    }
    assert!(
        prom::value(
            &samples,
            "errand_writer_seconds_total",
            &[("phase", "outcomes")]
        )
        .unwrap_or(0.0)
            > 0.0
    );
    for family in [
        "errand_attempts_total",
        "errand_jobs",
        "errand_due_backlog",
        "errand_oldest_due_seconds",
        "errand_attempt_duration_seconds",
        "errand_thread_restarts_total",
        "errand_writer_seconds_total",
        "errand_writer_batches_total",
    ] {
        assert!(a.body.contains(&format!("# HELP {family} ")), "{family}");
        assert!(a.body.contains(&format!("# TYPE {family} ")), "{family}");
    }
    assert!(!a.body.contains(TOKEN));
}

#[test]
fn alert_is_notified_once_per_episode_and_named_by_readyz_and_the_page() {
    let p = MockProvider::start();
    let e = InProc::start("[alerts]\nmax_due_backlog = 5\n", None);
    assert_eq!(call("GET", &e.url("/readyz"), &[], "").status, 200);
    e.store
        .write(|tx| accounts::set_global_pause(tx, true))
        .unwrap();
    let ids: Vec<i64> = (0..10)
        .map(|_| e.insert(&fast_job("acme", &p.url("/ok"))))
        .collect();
    let alerts = || {
        notes::list(&e.store.read().unwrap(), None, 100)
            .unwrap()
            .into_iter()
            .filter(|n| n["kind"] == "alert")
            .count()
    };
    // The supervisor evaluates every second; passes of our own on top must not add more.
    wait_for(10, "an alert notification", || alerts() >= 1);
    for _ in 0..5 {
        let active = errand::engine::alerts::check_once(e.shared(), now_ms()).unwrap();
        assert_eq!(active, vec!["due_backlog".to_string()]);
    }
    let ready = call("GET", &e.url("/readyz"), &[], "");
    assert_eq!(ready.status, 503);
    assert_eq!(
        ready.json()["alerts"],
        json!(["due_backlog"]),
        "{}",
        ready.body
    );
    let page = call("GET", &e.url("/admin"), &[], "");
    assert!(page.body.contains("id=\"alert-due_backlog\""));
    assert_eq!(
        alerts(),
        1,
        "one notification for the episode, not one per pass"
    );

    // The backlog drains: the episode ends; a new crossing is a new episode.
    e.store
        .write(|tx| accounts::set_global_pause(tx, false))
        .unwrap();
    e.shared().wake();
    wait_for(20, "jobs to run", || {
        ids.iter().all(|id| e.state(*id) == "succeeded")
    });
    wait_for(10, "readyz to be ready again", || {
        call("GET", &e.url("/readyz"), &[], "").status == 200
    });
    e.store
        .write(|tx| accounts::set_global_pause(tx, true))
        .unwrap();
    for _ in 0..10 {
        e.insert(&fast_job("acme", &p.url("/ok")));
    }
    wait_for(10, "a second alert", || alerts() >= 2);
    errand::engine::alerts::check_once(e.shared(), now_ms()).unwrap();
    assert_eq!(alerts(), 2);
}

#[test]
fn notify_url_delivers_each_notification_as_a_signed_job_with_a_stable_id() {
    let p = MockProvider::start();
    p.default_for("/no", Step::status(403));
    p.script("/hook", vec![Step::status(503), Step::status(204)]);
    let toml = format!(
        "notify_url = \"{}\"\nnotify_secret = \"{HOOK_SECRET}\"\n\
         [providers.errand-notify]\nbackoff = {{ initial_ms = 50, multiplier = 2.0, max_ms = 200 }}\n",
        p.url("/hook")
    );
    let e = InProc::start(&toml, None);
    let id = e.insert(&fast_job("acme", &p.url("/no")));
    wait_for(20, "the delivery to be retried and accepted", || {
        p.count("/hook") >= 2
    });
    let seen = p.requests("/hook");
    let secret = errand::webhook::Secret::parse(HOOK_SECRET).unwrap();
    for s in &seen {
        assert_eq!(s.method, "POST");
        errand::webhook::verify(
            &secret,
            s.header("webhook-id").unwrap(),
            s.header("webhook-timestamp").unwrap(),
            s.header("webhook-signature").unwrap(),
            &s.body,
            now_ms() / 1000,
            errand::webhook::DEFAULT_TOLERANCE_S,
        )
        .unwrap();
    }
    assert_eq!(
        seen[0].header("webhook-id"),
        seen[1].header("webhook-id"),
        "stable across retries"
    );
    let body: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(body["type"], "notification.forbidden");
    assert_eq!(body["data"]["kind"], "forbidden");
    assert_eq!(body["data"]["job_id"], id.to_string());
    assert_eq!(body["data"]["account"], "acme");
    let delivery: i64 = e
        .store
        .read()
        .unwrap()
        .query_row(
            "SELECT delivery_job FROM notifications WHERE job_id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    wait_for(10, "the delivery job to succeed", || {
        e.state(delivery) == "succeeded"
    });
    assert_eq!(p.count("/hook"), 2, "delivered once, no duplicate");
}

#[test]
fn secrets_never_appear_on_admin_pages_metrics_readyz_or_logs() {
    let p = MockProvider::start();
    p.default_for(
        "/echo",
        Step::json(200, &format!("{{\"echo\":\"{SECRET}\"}}")),
    );
    p.default_for("/hook", Step::status(204));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("errand.db");
    let cfg = dir.path().join("errand.toml");
    std::fs::write(
        &cfg,
        format!(
            "notify_url = \"{}\"\nnotify_secret = \"{HOOK_SECRET}\"\n",
            p.url("/hook")
        ),
    )
    .unwrap();
    let cfgs = cfg.display().to_string();
    let serve = ServeProcess::start(
        dir.path(),
        &db,
        &["--config", &cfgs],
        &[("ERRAND_API_TOKEN", TOKEN)],
    );
    let dbs = db.display().to_string();
    let (code, _, err) = run_cli(
        dir.path(),
        &["--db", &dbs, "credentials", "set", "acme", "default"],
        Some(SECRET),
    );
    assert_eq!(code, 0, "{err}");
    p.default_for("/no", Step::status(401));
    let id = enqueue_cli(dir.path(), &db, "acme", &p.url("/echo"));
    let denied = enqueue_cli(dir.path(), &db, "other", &format!("{}?k=1", p.url("/no")));
    let store = Store::open(&db, Default::default()).unwrap();
    wait_for(20, "jobs to finish", || {
        state_in(&store, id) == "succeeded" && state_in(&store, denied) == "canceled"
    });
    wait_for(20, "notifications to be delivered", || {
        p.count("/hook") >= 1
    });
    let cookie = login(&format!("http://{}", serve.addr), TOKEN);
    let mut seen = String::new();
    for path in [
        "/admin".to_string(),
        "/admin/jobs".to_string(),
        format!("/admin/jobs/{id}"),
        format!("/admin/jobs/{denied}"),
        "/admin/accounts".to_string(),
        "/admin/notifications".to_string(),
        "/admin/triage".to_string(),
        "/admin/operations".to_string(),
        "/admin/channels".to_string(),
    ] {
        let a = call("GET", &serve.url(&path), &[("Cookie", &cookie)], "");
        assert_eq!(a.status, 200, "{path}");
        seen.push_str(&a.body);
    }
    assert!(
        seen.contains(&format!("/admin/jobs/{id}")),
        "the pages show the jobs"
    );
    seen.push_str(
        &call(
            "GET",
            &serve.url("/metrics"),
            &[("Authorization", &format!("Bearer {TOKEN}"))],
            "",
        )
        .body,
    );
    seen.push_str(&call("GET", &serve.url("/readyz"), &[], "").body);
    seen.push_str(&serve.log());
    for (what, s) in [
        ("credential", SECRET),
        ("API token", TOKEN),
        ("webhook secret", &HOOK_SECRET[6..]),
    ] {
        assert!(
            !seen.contains(s),
            "the {what} leaked into a page, metrics or the log"
        );
    }
}

/// Creates an operation through the store, as `POST /v1/operations` would.
fn create_operation(store: &Store, body: &Value) -> i64 {
    let (account, steps) = errand::operation::validate(body).unwrap();
    store
        .write(|tx| operations::create(tx, &account, &steps, now_ms()))
        .unwrap()
        .id
}

fn operation_state(store: &Store, id: i64) -> Value {
    let conn = store.read().unwrap();
    let op = operations::get(&conn, id).unwrap();
    operations::to_json(&conn, &op).unwrap()
}

#[test]
fn operations_pages_list_an_operation_and_show_its_steps_with_names_escaped() {
    let p = MockProvider::start();
    p.default_for("/charges", Step::json(201, r#"{"id":"ch_1"}"#));
    p.default_for("/tokens/ch_1", Step::status(418));
    let e = InProc::start("", Some(TOKEN));
    let account = "acme<script>alert(1)";
    let id = create_operation(
        &e.store,
        &json!({"account": account, "steps": [
            {"name": "charge", "request": {"method": "POST", "url": p.url("/charges")}},
            {"name": "<b>tokenize</b> & \"quote\"",
             "request": {"url": format!("{}/{{{{steps.charge.json.id}}}}", p.url("/tokens"))}},
            {"name": "receipt", "request": {"url": p.url("/receipts")}}
        ]}),
    );
    e.shared().wake();
    wait_for(20, "the operation to be held at its second step", || {
        operation_state(&e.store, id)["state"] == "held"
    });
    let v = operation_state(&e.store, id);
    let held_job = v["steps"][1]["job_id"].as_str().unwrap().to_string();
    let first_job = v["steps"][0]["job_id"].as_str().unwrap().to_string();

    let cookie = login(&e.base, TOKEN);
    let get = |path: &str| call("GET", &e.url(path), &[("Cookie", &cookie)], "");
    let overview = get("/admin");
    for href in ["href=\"/admin/operations\"", "href=\"/admin/channels\""] {
        assert!(overview.body.contains(href), "the navigation links {href}");
    }

    let list = get("/admin/operations");
    assert_eq!(list.status, 200);
    let row = list
        .body
        .split(&format!("<tr class=\"op\" data-id=\"{id}\">"))
        .nth(1)
        .and_then(|r| r.split("</tr>").next())
        .unwrap_or_else(|| panic!("a row for operation {id}: {}", list.body));
    assert!(
        row.contains(&format!("href=\"/admin/operations/{id}\"")),
        "{row}"
    );
    assert!(row.contains("acme&lt;script&gt;alert(1)"), "{row}");
    assert!(row.contains(">held<"), "{row}");
    assert!(row.contains("1 / 3"), "{row}");
    assert!(row.contains("<time"), "the creation time: {row}");
    assert!(!list.body.contains("<script>"), "unescaped account");

    let detail = get(&format!("/admin/operations/{id}"));
    assert_eq!(detail.status, 200);
    let b = &detail.body;
    assert!(b.contains(">held<"), "the operation's state");
    assert!(
        !b.contains("<script>") && !b.contains("<b>tokenize"),
        "unescaped markup"
    );
    assert!(
        b.contains("&lt;b&gt;tokenize&lt;/b&gt; &amp; &quot;quote&quot;"),
        "{b}"
    );
    let step = |i: usize| {
        b.split(&format!("<tr class=\"step\" data-index=\"{i}\">"))
            .nth(1)
            .and_then(|r| r.split("</tr>").next())
            .unwrap_or_else(|| panic!("step {i}: {b}"))
            .to_string()
    };
    let (charge, tokenize, receipt) = (step(0), step(1), step(2));
    assert!(
        charge.contains("charge") && charge.contains(">succeeded<"),
        "{charge}"
    );
    assert!(
        charge.contains(&format!("href=\"/admin/jobs/{first_job}\"")),
        "{charge}"
    );
    assert!(charge.contains("HTTP 201"), "{charge}");
    assert!(
        !charge.contains("ch_1"),
        "a step's response body is not rendered: {charge}"
    );
    assert!(tokenize.contains(">draft<"), "{tokenize}");
    assert!(
        tokenize.contains(&format!("href=\"/admin/jobs/{held_job}\"")),
        "{tokenize}"
    );
    assert!(tokenize.contains("HTTP 418"), "{tokenize}");
    assert!(
        receipt.contains(">pending<") && receipt.contains("not yet"),
        "{receipt}"
    );
    assert_eq!(p.count("/receipts"), 0);
    let job_page = get(&format!("/admin/jobs/{held_job}"));
    assert!(
        job_page.body.contains(&format!(
            "<a href=\"/admin/operations/{id}\">{id}</a>, step 2"
        )),
        "a step's job links back to its operation"
    );

    assert_eq!(get("/admin/operations/999999").status, 404);
    assert_eq!(get("/admin/operations/x").status, 404);
}

#[test]
fn operations_list_pages_by_id_without_a_count() {
    let e = InProc::start("", None);
    // Paused: the steps stay approved and nothing is sent.
    e.store
        .write(|tx| accounts::set_global_pause(tx, true))
        .unwrap();
    let ids: Vec<i64> = (0..51)
        .map(|i| {
            create_operation(
                &e.store,
                &json!({"account": format!("a{i}"), "steps": [
                    {"name": "only", "request": {"url": "https://api.example.com/x"}}]}),
            )
        })
        .collect();
    let first = call("GET", &e.url("/admin/operations"), &[], "");
    let cookie = session_cookie(&first);
    assert_eq!(first.body.matches("<tr class=\"op\"").count(), 50);
    assert!(first.body.contains(&format!("data-id=\"{}\"", ids[50])));
    assert!(!first.body.contains(&format!("data-id=\"{}\"", ids[0])));
    assert!(
        first.body.contains(">running<"),
        "an approved step: running"
    );
    let older = format!("/admin/operations?before={}", ids[1]);
    assert!(
        first.body.contains(&format!("href=\"{older}\"")),
        "an Older link"
    );
    let second = call("GET", &e.url(&older), &[("Cookie", &cookie)], "");
    assert_eq!(second.body.matches("<tr class=\"op\"").count(), 1);
    assert!(second.body.contains(&format!("data-id=\"{}\"", ids[0])));
    assert!(!second.body.contains("id=\"older\""));
}

#[test]
fn channels_page_lists_subscriptions_with_status_escaped_and_never_the_secret() {
    let e = InProc::start("", Some(TOKEN));
    let channel = "orders<&>\"'";
    let now = now_ms();
    e.store
        .write(|tx| {
            channels::put_subscription(
                tx,
                channel,
                "<img src=x onerror=alert(1)>",
                "https://hooks.example.com/in?a=1&b='2'",
                HOOK_SECRET,
                now,
            )?;
            channels::put_subscription(
                tx,
                channel,
                "gone",
                "https://old.example.com/hook",
                HOOK_SECRET,
                now,
            )?;
            channels::disable(
                tx,
                &format!("subscription:{channel}/gone"),
                "the subscriber answered 410 Gone",
                now,
            )
        })
        .unwrap();
    let cookie = login(&e.base, TOKEN);
    let a = call("GET", &e.url("/admin/channels"), &[("Cookie", &cookie)], "");
    assert_eq!(a.status, 200);
    let b = &a.body;
    assert_eq!(b.matches("<tr class=\"subscription\">").count(), 2, "{b}");
    assert!(b.contains("orders&lt;&amp;&gt;&quot;&#39;"), "{b}");
    assert!(b.contains("&lt;img src=x onerror=alert(1)&gt;"), "{b}");
    assert!(!b.contains("<img"), "unescaped markup");
    // Shown up to the first path segment: webhook URLs often carry a token.
    assert!(b.contains("https://hooks.example.com/in…"), "{b}");
    assert!(
        !b.contains("a=1"),
        "the query of a subscriber URL on the page: {b}"
    );
    let gone = b
        .split("<tr class=\"subscription\">")
        .find(|r| r.contains(">gone<"))
        .and_then(|r| r.split("</tr>").next())
        .unwrap_or_else(|| panic!("a row for the disabled subscription: {b}"));
    assert!(gone.contains(">disabled<"), "{gone}");
    assert!(gone.contains("the subscriber answered 410 Gone"), "{gone}");
    assert!(b.contains(">active<"));
    assert!(
        b.contains("href=\"/admin/jobs?account=orders%3C%26%3E%22%27&amp;provider=webhook\""),
        "the channel links to its delivery jobs: {b}"
    );
    assert!(!b.contains(&HOOK_SECRET[6..]), "the secret on the page");
    assert!(!b.contains("whsec_"), "the secret on the page");
}
