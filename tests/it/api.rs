//! Issue 4: the HTTP API. An in-process server (engine + API on 127.0.0.1:0) against a
//! scripted provider, and the real binary where the process matters.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use errand::api::routes::ROUTES;
use errand::clock::SystemClock;
use errand::server::Server;
use serde_json::{json, Value};

use crate::support::*;

/// An in-process errand serving on 127.0.0.1:0; stopped on drop.
pub(crate) struct Api {
    server: Option<Server>,
    base: String,
    pub(crate) env: TestEnv,
}

impl Api {
    pub(crate) fn start() -> Api {
        Self::with_config("")
    }

    pub(crate) fn with_config(toml: &str) -> Api {
        let env = TestEnv::with_config(toml);
        let mut config = env.config.clone();
        config.listen = "127.0.0.1:0".into();
        let server = Server::start(config, Arc::new(SystemClock)).expect("server");
        let base = format!("http://{}", server.http.addr());
        Api {
            server: Some(server),
            base,
            env,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) fn get(&self, path: &str) -> Answer {
        http("GET", &self.url(path), &[], None)
    }

    pub(crate) fn post(&self, path: &str, body: &Value) -> Answer {
        self.post_with(path, &[], body)
    }

    pub(crate) fn post_with(&self, path: &str, headers: &[(&str, &str)], body: &Value) -> Answer {
        http("POST", &self.url(path), headers, Some(&body.to_string()))
    }

    fn jobs(&self) -> i64 {
        self.env.count_sql("SELECT COUNT(*) FROM jobs")
    }

    fn server(&self) -> &Server {
        self.server.as_ref().expect("running")
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop();
        }
    }
}

fn job_body(url: &str) -> Value {
    json!({"account": "acme", "provider": "pm", "request": {"method": "POST", "url": url, "json": {"to": "a@b.c"}}})
}

/// Each `{param}` of a route pattern replaced by a plausible value.
fn concrete(path: &str) -> String {
    path.replace("{id}", "1")
        .replace("{account}", "acme")
        .replace("{provider}", "pm")
        .replace("{channel}", "orders")
        .replace("{name}", "sub")
}

// --- Done when: 202 + Location, poll 202 with Retry-After, then 200 with the result;
// wrong token and unknown id both 404.

#[test]
fn post_answers_202_with_location_and_poll_answers_202_with_retry_after_then_200_with_the_result() {
    let p = MockProvider::start();
    p.script(
        "/slow",
        vec![Step::json(200, r#"{"id":"m-1"}"#).delay(1500)],
    );
    let api = Api::start();
    let a = api.post("/v1/jobs", &job_body(&p.url("/slow")));
    assert_eq!(a.status, 202, "{}", a.body);
    let v = a.json();
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(
        a.header("location"),
        Some(format!("/v1/jobs/{id}").as_str())
    );
    assert_eq!(v["state"], "approved");
    let status_url = v["status_url"].as_str().unwrap().to_string();
    assert_eq!(
        status_url,
        format!("/v1/jobs/{id}?token={}", v["token"].as_str().unwrap())
    );
    assert!(
        v["token"].as_str().unwrap().len() >= 32,
        "token of 128 bits or more"
    );

    let poll = api.get(&status_url);
    assert_eq!(poll.status, 202, "{}", poll.body);
    let secs: u64 = poll.header("retry-after").unwrap().parse().unwrap();
    assert!(secs >= 1);
    assert!(["approved", "running"].contains(&poll.json()["state"].as_str().unwrap()));

    let mut done = None;
    wait_for(15, "the poll to answer 200", || {
        let a = api.get(&status_url);
        let ok = a.status == 200;
        done = Some(a);
        ok
    });
    let job = done.unwrap().json();
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["id"], id.as_str());
    assert_eq!(job["result"]["status"], 200);
    assert_eq!(job["result"]["body"], r#"{"id":"m-1"}"#);
    assert_eq!(job["result"]["json"]["id"], "m-1");
}

#[test]
fn a_wrong_token_and_an_unknown_id_both_answer_404_alike() {
    let p = MockProvider::start();
    let api = Api::start();
    let v = api.post("/v1/jobs", &job_body(&p.url("/x"))).json();
    let id = v["id"].as_str().unwrap();
    let wrong = api.get(&format!(
        "/v1/jobs/{id}?token=0123456789abcdef0123456789abcdef"
    ));
    let unknown = api.get("/v1/jobs/999999?token=0123456789abcdef0123456789abcdef");
    let garbage = api.get("/v1/jobs/abc?token=x");
    assert_eq!(wrong.status, 404);
    assert_eq!(unknown.status, 404);
    assert_eq!(garbage.status, 404);
    assert_eq!(
        wrong.json()["error"]["code"],
        unknown.json()["error"]["code"]
    );
    assert!(!wrong.body.contains(v["token"].as_str().unwrap()));
}

// --- Done when: Prefer: wait.

#[test]
fn post_with_prefer_wait_to_a_fast_provider_answers_200_with_the_finished_job_in_one_call() {
    let p = MockProvider::start();
    p.script("/fast", vec![Step::json(200, r#"{"ok":1}"#)]);
    let api = Api::start();
    let a = api.post_with(
        "/v1/jobs",
        &[("Prefer", "wait=10")],
        &job_body(&p.url("/fast")),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let job = a.json();
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["result"]["json"]["ok"], 1);
    assert_eq!(p.count("/fast"), 1);
}

#[test]
fn post_with_wait_1_to_a_3_second_provider_answers_202_and_a_later_get_with_wait_10_answers_200() {
    let p = MockProvider::start();
    p.script("/slow", vec![Step::json(200, r#"{"ok":2}"#).delay(3000)]);
    let api = Api::start();
    let a = api.post_with(
        "/v1/jobs",
        &[("Prefer", "wait=1")],
        &job_body(&p.url("/slow")),
    );
    assert_eq!(a.status, 202, "{}", a.body);
    let v = a.json();
    assert!(v["token"].is_string());
    let url = v["status_url"].as_str().unwrap().to_string();
    let b = http("GET", &api.url(&url), &[("Prefer", "wait=10")], None);
    assert_eq!(b.status, 200, "{}", b.body);
    assert_eq!(b.json()["state"], "succeeded");
    assert_eq!(b.json()["result"]["json"]["ok"], 2);
}

#[test]
fn a_long_poll_on_a_job_that_does_not_finish_answers_202_when_its_wait_passes() {
    let api = Api::start();
    let mut body = job_body("http://127.0.0.1:9/never");
    body["delay_ms"] = json!(600_000);
    let v = api.post("/v1/jobs", &body).json();
    let url = v["status_url"].as_str().unwrap();
    let a = http("GET", &api.url(url), &[("Prefer", "wait=1")], None);
    assert_eq!(a.status, 202);
    assert!(a.header("retry-after").is_some());
    assert_eq!(api.server().api.parking.parked(), 0);
}

// --- Done when: incoming Idempotency-Key.

#[test]
fn the_same_body_twice_with_an_idempotency_key_is_one_job_and_the_second_answer_is_replayed() {
    let p = MockProvider::start();
    let api = Api::start();
    let body = job_body(&p.url("/order"));
    let key = [("Idempotency-Key", "order-77")];
    let first = api.post_with("/v1/jobs", &key, &body);
    assert_eq!(first.status, 202, "{}", first.body);
    assert_eq!(first.header("idempotent-replayed"), None);
    let id = first.json()["id"].clone();
    wait_for(10, "the job to succeed", || {
        api.env.state(id.as_str().unwrap().parse().unwrap()) == "succeeded"
    });
    let second = api.post_with("/v1/jobs", &key, &body);
    assert_eq!(second.status, 202, "{}", second.body);
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_eq!(second.json()["id"], id);
    assert_eq!(second.json()["token"], first.json()["token"]);
    assert_eq!(
        second.json(),
        first.json(),
        "the first answer again, though the job has succeeded since"
    );
    assert_eq!(second.header("location"), first.header("location"));
    assert_eq!(api.jobs(), 1);
    assert_eq!(p.count("/order"), 1);

    let mut other = body.clone();
    other["request"]["json"] = json!({"to": "someone@else"});
    let third = api.post_with("/v1/jobs", &key, &other);
    assert_eq!(third.status, 422, "{}", third.body);
    assert!(third.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Idempotency-Key"));
    assert_eq!(api.jobs(), 1);
    // Keys are per account: another account may use the same key.
    let mut beta = body.clone();
    beta["account"] = json!("beta");
    assert_eq!(api.post_with("/v1/jobs", &key, &beta).status, 202);
    assert_eq!(api.jobs(), 2);
}

#[test]
fn a_first_call_that_waited_for_its_200_is_replayed_as_that_200() {
    let p = MockProvider::start();
    let api = Api::start();
    let body = job_body(&p.url("/quick"));
    let key = [("Idempotency-Key", "quick-1")];
    let waited = [("Idempotency-Key", "quick-1"), ("Prefer", "wait=10")];
    let first = api.post_with("/v1/jobs", &waited, &body);
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.json()["state"], "succeeded");
    // The retry of a client that never saw that answer, without Prefer: wait, gets the
    // same status and the finished job: the first answer again.
    let again = api.post_with("/v1/jobs", &key, &body);
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json()["id"], first.json()["id"]);
    assert_eq!(again.json()["state"], "succeeded");
    assert_eq!(again.json()["result"], first.json()["result"]);
    assert_eq!(p.count("/quick"), 1);
    assert_eq!(api.jobs(), 1);
    // A first call that waited but whose job was not over within the wait got 202, and
    // so does its replay, though the job has finished since.
    p.default_for("/slowish", Step::status(200).delay(1_500));
    let body = job_body(&p.url("/slowish"));
    let key = [("Idempotency-Key", "slowish-1")];
    let waited = [("Idempotency-Key", "slowish-1"), ("Prefer", "wait=1")];
    let first = api.post_with("/v1/jobs", &waited, &body);
    assert_eq!(first.status, 202, "{}", first.body);
    let id: i64 = first.json()["id"].as_str().unwrap().parse().unwrap();
    wait_for(10, "the slow job to succeed", || {
        api.env.state(id) == "succeeded"
    });
    let again = api.post_with("/v1/jobs", &key, &body);
    assert_eq!(again.status, 202, "{}", again.body);
    for field in ["id", "token", "status_url"] {
        assert_eq!(again.json()[field], first.json()[field], "{field}");
    }
    // (Its state is the one the job was created in: the first 202 gave the state at the
    // end of its wait, which nothing kept.)
    assert_eq!(again.json()["state"], "approved");
}

#[test]
fn concurrent_duplicates_of_an_idempotency_key_create_one_job_and_answer_202_or_409() {
    let p = MockProvider::start();
    let api = Arc::new(Api::start());
    let body = job_body(&p.url("/dup"));
    let barrier = Arc::new(Barrier::new(8));
    let answers: Vec<(u16, Option<String>)> = (0..8)
        .map(|_| {
            let (api, body, barrier) = (api.clone(), body.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let a = api.post_with("/v1/jobs", &[("Idempotency-Key", "dup-1")], &body);
                let id = (a.status == 202).then(|| a.json()["id"].as_str().unwrap().to_string());
                (a.status, id)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    assert!(
        answers.iter().all(|(s, _)| *s == 202 || *s == 409),
        "{answers:?}"
    );
    let ids: std::collections::BTreeSet<_> =
        answers.iter().filter_map(|(_, id)| id.clone()).collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    assert_eq!(api.jobs(), 1);
    wait_for(10, "the one job to run", || p.count("/dup") == 1);
}

// --- Done when: bad input gets a 4xx naming the field and writes nothing; 413; 404.

#[test]
fn a_replay_is_not_refused_because_its_delay_now_runs_past_expires_at() {
    // The first call is judged by its own clock; a retry with the same key, later, is a
    // replay of the job it created, even though the same body would now be refused.
    let env = TestEnv::new();
    let mut config = env.config.clone();
    config.listen = "127.0.0.1:0".into();
    let start = 1_800_000_000_000;
    let clock = Arc::new(errand::clock::ManualClock::new(start));
    let server = Server::start(config, clock.clone()).expect("server");
    let url = format!("http://{}/v1/jobs", server.http.addr());
    let body = format!(
        r#"{{"account": "a", "request": {{"url": "http://h/x"}}, "delay_ms": 3600000, "expires_at": "{}"}}"#,
        errand::time::format_rfc3339(start + 3_600_000 + 1_000)
    );
    let key = [("Idempotency-Key", "late-but-fine")];
    let first = http("POST", &url, &key, Some(&body));
    assert_eq!(first.status, 202, "{}", first.body);
    clock.advance(5_000);
    let again = http("POST", &url, &key, Some(&body));
    assert_eq!(again.status, 202, "{}", again.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json()["id"], first.json()["id"]);
    // A new key for the same body now is refused: it could only expire.
    let fresh = http("POST", &url, &[("Idempotency-Key", "new")], Some(&body));
    assert_eq!(fresh.status, 400, "{}", fresh.body);
}

#[test]
fn every_bad_input_gets_a_4xx_naming_the_field_and_writes_no_row() {
    let api = Api::start();
    let url = api.url("/v1/jobs");
    let cases: Vec<(&str, &str)> = vec![
        (
            r#"{"account": "a", "request": {"url": "http://h/x"}"#,
            "body",
        ),
        (r#"{"request": {"url": "http://h/x"}}"#, "account"),
        (r#"{"account": "a", "request": {}}"#, "request.url"),
        (r#"{"account": "a"}"#, "request.url"),
        (
            r#"{"account": "a", "request": {"url": "ftp://h/x"}}"#,
            "request.url",
        ),
        (
            r#"{"account": "a", "request": {"url": "http://h/x", "method": "BREW"}}"#,
            "request.method",
        ),
        (
            r#"{"account": "a", "request": {"url": "http://h/x"}, "max_attempts": -1}"#,
            "max_attempts",
        ),
        (
            r#"{"account": "a", "request": {"url": "http://h/x"}, "run_at": "tomorrow"}"#,
            "run_at",
        ),
        (r#"[1, 2]"#, "body"),
        ("", "body"),
    ];
    for (body, field) in cases {
        let a = http("POST", &url, &[], Some(body));
        assert!(
            (400..500).contains(&a.status),
            "{body}: {} {}",
            a.status,
            a.body
        );
        let msg = a.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(
            msg.contains(field),
            "{body}: message {msg:?} does not name {field}"
        );
        assert!(a.json()["error"]["code"].is_string());
    }
    // A job that could only expire: its delay takes it past its expires_at. Refused with
    // or without an Idempotency-Key, and the key is not spent on it.
    let soon = errand::time::format_rfc3339(errand::clock::Clock::now_ms(&SystemClock) + 60_000);
    let late = format!(
        r#"{{"account": "a", "request": {{"url": "http://h/x"}}, "delay_ms": 3600000, "expires_at": "{soon}"}}"#
    );
    for headers in [vec![], vec![("Idempotency-Key", "late-1")]] {
        let a = http("POST", &url, &headers, Some(&late));
        assert_eq!(a.status, 400, "{}", a.body);
        let msg = a.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(msg.starts_with("expires_at"), "{msg}");
    }
    assert_eq!(api.jobs(), 0);

    let huge = "x".repeat(20 << 20);
    let a = http(
        "POST",
        &url,
        &[("Content-Type", "application/json")],
        Some(&huge),
    );
    assert_eq!(a.status, 413, "{}", a.body);
    assert_eq!(a.json()["error"]["code"], "body_too_large");

    for path in ["/nope", "/v1/nope", "/v1/jobs/1/frobnicate", "/v1"] {
        let a = api.get(path);
        assert_eq!(a.status, 404, "{path}");
        assert_eq!(a.json()["error"]["code"], "no_route");
    }
    let a = http("PATCH", &url, &[], Some("{}"));
    assert_eq!(a.status, 405);
    assert!(a.header("allow").unwrap().contains("POST"));
    // A literal route is not read as an id of the pattern beside it.
    let a = api.get("/v1/jobs/bulk");
    assert_eq!(a.status, 405, "{}", a.body);
    assert_eq!(a.header("allow"), Some("POST"));
    assert_eq!(api.jobs(), 0);
    assert_eq!(api.get("/healthz").status, 200);
    assert_eq!(api.get("/v1/status").status, 200);
}

#[test]
fn bad_query_and_path_values_are_400_naming_the_field() {
    let api = Api::start();
    for (path, field) in [
        ("/v1/jobs?state=done", "state"),
        ("/v1/jobs?limit=0", "limit"),
        ("/v1/jobs?after=x", "after"),
        ("/v1/notifications?limit=100000", "limit"),
    ] {
        let a = api.get(path);
        assert_eq!(a.status, 400, "{path}: {}", a.body);
        assert!(
            a.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains(field),
            "{path}"
        );
    }
    let a = http(
        "PUT",
        &api.url("/v1/accounts/acme"),
        &[],
        Some(r#"{"status": "gone"}"#),
    );
    assert_eq!(a.status, 400);
    assert!(a.body.contains("status"));
    let a = http(
        "PUT",
        &api.url("/v1/accounts/acme/credentials/pm"),
        &[],
        Some(r#"{"secret": 5}"#),
    );
    assert_eq!(a.status, 400);
    assert!(a.body.contains("secret"));
    let a = api.post("/v1/jobs/bulk", &json!({"action": "explode"}));
    assert_eq!(a.status, 400);
    assert!(a.body.contains("action"));
}

// --- Done when: the API token.

#[test]
fn without_the_bearer_token_every_v1_call_is_401_and_with_it_none_is() {
    let api = Api::with_config(r#"api_token = "sesame-123""#);
    for r in ROUTES.iter().filter(|r| r.path.starts_with("/v1")) {
        let url = api.url(&concrete(r.path));
        for headers in [vec![], vec![("Authorization", "Bearer wrong")]] {
            let a = http(r.method, &url, &headers, Some("{}"));
            assert_eq!(
                a.status, 401,
                "{} {} {headers:?}: {}",
                r.method, r.path, a.body
            );
            assert_eq!(a.json()["error"]["code"], "unauthorized");
        }
        let a = http(
            r.method,
            &url,
            &[("Authorization", "Bearer sesame-123")],
            Some("{}"),
        );
        assert_ne!(a.status, 401, "{} {} with the token", r.method, r.path);
    }
    assert_eq!(api.get("/v1/nowhere").status, 401);
    assert_eq!(api.get("/healthz").status, 200);

    // Polling with the job's own token needs no API token.
    let auth = [("Authorization", "Bearer sesame-123")];
    let v = api
        .post_with(
            "/v1/jobs",
            &auth,
            &json!({"account": "a", "state": "draft", "request": {"url": "http://127.0.0.1:9/"}}),
        )
        .json();
    let id = v["id"].as_str().unwrap();
    assert_eq!(api.get(v["status_url"].as_str().unwrap()).status, 200);
    assert_eq!(api.get(&format!("/v1/jobs/{id}")).status, 401);
    assert_eq!(api.get(&format!("/v1/jobs/{id}?token=nope")).status, 404);
    assert_eq!(
        api.get(&format!(
            "/v1/jobs/{id}/attempts?token={}",
            v["token"].as_str().unwrap()
        ))
        .status,
        401
    );
}

#[test]
fn serve_on_a_non_loopback_address_without_a_token_exits_non_zero_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("0.0.0.0:{}", free_port());
    let (code, _, stderr) = run_cli(
        dir.path(),
        &["serve", "--db", "e.db", "--listen", &listen],
        None,
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("token"), "{stderr}");
    assert!(stderr.contains("ERRAND_API_TOKEN"), "{stderr}");
}

// --- Done when: drafts, cancel in retry, 409.

#[test]
fn a_draft_job_is_not_run_until_approved() {
    let p = MockProvider::start();
    let api = Api::start();
    let mut draft = job_body(&p.url("/draft"));
    draft["state"] = json!("draft");
    let d = api.post("/v1/jobs", &draft);
    assert_eq!(d.status, 202);
    assert_eq!(d.json()["state"], "draft");
    let id = d.json()["id"].as_str().unwrap().to_string();
    // A job enqueued after the draft runs; the draft does not.
    let later = api.post_with(
        "/v1/jobs",
        &[("Prefer", "wait=10")],
        &job_body(&p.url("/later")),
    );
    assert_eq!(later.status, 200);
    assert_eq!(p.count("/draft"), 0);
    assert_eq!(api.get(&format!("/v1/jobs/{id}")).json()["state"], "draft");

    let a = api.post(&format!("/v1/jobs/{id}/approve"), &json!({}));
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["state"], "approved");
    let done = http(
        "GET",
        &api.url(&format!("/v1/jobs/{id}")),
        &[("Prefer", "wait=10")],
        None,
    );
    assert_eq!(done.status, 200);
    assert_eq!(done.json()["state"], "succeeded");
    assert_eq!(p.count("/draft"), 1);
}

#[test]
fn a_job_in_retry_can_be_canceled_and_is_not_run_again() {
    let p = MockProvider::start();
    p.default_for("/down", Step::status(503));
    let api = Api::start();
    let mut body = job_body(&p.url("/down"));
    body["backoff"] = json!({"initial_ms": 600000, "multiplier": 2, "max_ms": 600000});
    let id = api.post("/v1/jobs", &body).json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for(10, "the job to be in retry", || {
        api.env.state(id.parse().unwrap()) == "retry"
    });
    let a = http("DELETE", &api.url(&format!("/v1/jobs/{id}")), &[], None);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["state"], "canceled");
    assert_eq!(a.json()["error"]["reason"], "canceled_by_user");
    assert_eq!(p.count("/down"), 1);
    let attempts = api.get(&format!("/v1/jobs/{id}/attempts")).json();
    assert_eq!(attempts["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(attempts["attempts"][0]["outcome"], "unavailable");
}

#[test]
fn approving_a_canceled_job_answers_409_with_its_state() {
    let api = Api::start();
    let mut body = job_body("http://127.0.0.1:9/x");
    body["state"] = json!("draft");
    let id = api.post("/v1/jobs", &body).json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        api.post(&format!("/v1/jobs/{id}/cancel"), &json!({}))
            .status,
        200
    );
    let a = api.post(&format!("/v1/jobs/{id}/approve"), &json!({}));
    assert_eq!(a.status, 409, "{}", a.body);
    assert_eq!(a.json()["error"]["state"], "canceled");
    assert_eq!(api.env.state(id.parse().unwrap()), "canceled");
    let r = api.post(&format!("/v1/jobs/{id}/reopen"), &json!({}));
    assert_eq!(r.json()["state"], "draft");
    assert_eq!(api.post("/v1/jobs/424242/approve", &json!({})).status, 404);
}

// --- Concurrency.

#[test]
fn sixty_four_clients_at_once_are_all_answered_while_fifty_long_polls_are_parked() {
    let api = Arc::new(Api::start());
    let mut body = job_body("http://127.0.0.1:9/later");
    body["delay_ms"] = json!(600_000);
    let urls: Vec<String> = (0..50)
        .map(|_| {
            api.post("/v1/jobs", &body).json()["status_url"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let polls: Vec<_> = urls
        .into_iter()
        .map(|u| {
            let url = api.url(&u);
            std::thread::spawn(move || http("GET", &url, &[("Prefer", "wait=60")], None).status)
        })
        .collect();
    wait_for(20, "50 parked long polls", || {
        api.server().api.parking.parked() == 50
    });

    let barrier = Arc::new(Barrier::new(64));
    let start = Instant::now();
    let clients: Vec<_> = (0..64)
        .map(|i| {
            let (api, barrier) = (api.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                if i % 2 == 0 {
                    api.get("/v1/status").status
                } else {
                    let mut b = job_body("http://127.0.0.1:9/burst");
                    b["state"] = json!("draft");
                    api.post("/v1/jobs", &b).status
                }
            })
        })
        .collect();
    for c in clients {
        let status = c.join().unwrap();
        assert!(status == 200 || status == 202, "{status}");
    }
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "64 clients took {took:?} with 50 polls parked"
    );
    assert_eq!(
        api.server().api.parking.parked(),
        50,
        "the long polls are still parked"
    );
    // Stopping answers every parked poll with the job as it is (202, still pending).
    let api = Arc::try_unwrap(api).ok().expect("sole owner");
    drop(api);
    for p in polls {
        assert_eq!(p.join().unwrap(), 202);
    }
}

#[test]
fn v1_answers_503_with_retry_after_while_shutting_down() {
    let api = Api::start();
    api.server().api.begin_shutdown();
    let a = api.get("/v1/status");
    assert_eq!(a.status, 503);
    assert!(a.header("retry-after").is_some());
    assert_eq!(a.json()["error"]["code"], "shutting_down");
}

// --- Secrets.

#[test]
fn secrets_never_appear_in_any_api_answer() {
    let p = MockProvider::start();
    let api = Api::start();
    let secret = "s3cr3t-Zq9-never-shown";
    let put = http(
        "PUT",
        &api.url("/v1/accounts/acme/credentials/pm"),
        &[],
        Some(&json!({"secret": secret}).to_string()),
    );
    assert_eq!(put.status, 204, "{}", put.body);
    let a = api.post_with(
        "/v1/jobs",
        &[("Prefer", "wait=10")],
        &job_body(&p.url("/auth")),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let id = a.json()["id"].as_str().unwrap().to_string();
    assert_eq!(
        p.requests("/auth")[0].header("authorization"),
        Some(format!("Bearer {secret}").as_str()),
        "the provider got the credential"
    );
    let cred = api.get("/v1/accounts/acme/credentials/pm");
    assert_eq!(cred.status, 200);
    assert_eq!(cred.json()["status"], "valid");
    let answers = [
        a.body.clone(),
        cred.body,
        api.get(&format!("/v1/jobs/{id}")).body,
        api.get(&format!("/v1/jobs/{id}/attempts")).body,
        api.get("/v1/jobs").body,
        api.get("/v1/status").body,
        api.get("/v1/notifications").body,
    ];
    for body in answers {
        assert!(!body.contains(secret), "secret leaked in {body}");
        assert!(!body.contains("s3cr3t"), "secret leaked in {body}");
    }
    let attempts = api.get(&format!("/v1/jobs/{id}/attempts")).json();
    assert_eq!(attempts["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(
        http(
            "DELETE",
            &api.url("/v1/accounts/acme/credentials/pm"),
            &[],
            None
        )
        .status,
        204
    );
    assert_eq!(api.get("/v1/accounts/acme/credentials/pm").status, 404);
}

// --- The rest of SPEC §4.

#[test]
fn listing_filters_and_pages_with_a_next_cursor() {
    let api = Api::start();
    for i in 0..5 {
        let mut b = job_body("http://127.0.0.1:9/x");
        b["state"] = json!("draft");
        b["account"] = json!(if i < 3 { "acme" } else { "beta" });
        assert_eq!(api.post("/v1/jobs", &b).status, 202);
    }
    let page1 = api.get("/v1/jobs?account=acme&limit=2").json();
    assert_eq!(page1["jobs"].as_array().unwrap().len(), 2);
    let next = page1["next"].as_str().unwrap();
    let page2 = api
        .get(&format!("/v1/jobs?account=acme&limit=2&after={next}"))
        .json();
    assert_eq!(page2["jobs"].as_array().unwrap().len(), 1);
    assert!(page2["next"].is_null());
    let ids: Vec<i64> = page1["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .chain(page2["jobs"].as_array().unwrap())
        .map(|j| j["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    let drafts = api.get("/v1/jobs?state=draft&provider=pm").json();
    assert_eq!(drafts["jobs"].as_array().unwrap().len(), 5);
    assert!(
        drafts["jobs"][0].get("token").is_none(),
        "listing never shows tokens"
    );
    assert_eq!(
        api.get("/v1/jobs?state=succeeded").json()["jobs"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn bulk_retry_re_runs_held_jobs_of_a_provider_and_counts_the_skipped() {
    let p = MockProvider::start();
    let api = Api::start();
    let mut ids = Vec::new();
    for prov in ["pm", "pm", "other"] {
        let mut b = job_body(&p.url("/held"));
        b["state"] = json!("draft");
        b["provider"] = json!(prov);
        ids.push(
            api.post("/v1/jobs", &b).json()["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // One pm job is canceled: its state forbids retry.
    assert_eq!(
        api.post(&format!("/v1/jobs/{}/cancel", ids[0]), &json!({}))
            .status,
        200
    );
    let a = api.post(
        "/v1/jobs/bulk",
        &json!({"action": "retry", "filter": {"provider": "pm", "since": "2020-01-01T00:00:00Z"}}),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    assert_eq!(v["changed"], 1);
    assert_eq!(v["skipped"], 1);
    assert_eq!(v["ids"], json!([ids[1]]));
    wait_for(10, "the retried job to run", || p.count("/held") == 1);
    assert_eq!(api.env.state(ids[2].parse().unwrap()), "draft");
    let bad = api.post(
        "/v1/jobs/bulk",
        &json!({"action": "retry", "filter": {"since": "yesterday"}}),
    );
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("filter.since"));
    // Without a filter nothing happens: acting on every job takes `"filter": {}`.
    let unfiltered = api.post("/v1/jobs/bulk", &json!({"action": "cancel"}));
    assert_eq!(unfiltered.status, 400, "{}", unfiltered.body);
    assert!(unfiltered.json()["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("filter"));
    assert_eq!(api.env.state(ids[2].parse().unwrap()), "draft");
}

#[test]
fn accounts_pause_resume_suspend_and_the_global_switch_show_in_status() {
    let p = MockProvider::start();
    let api = Api::start();
    let a = api.post("/v1/accounts/acme/pause", &json!({}));
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["paused"], true);
    let id = api.post("/v1/jobs", &job_body(&p.url("/paused"))).json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let s = api.get("/v1/status").json();
    assert_eq!(s["paused_accounts"], json!(["acme"]));
    assert_eq!(s["jobs"]["approved"], 1);
    assert_eq!(s["jobs"]["succeeded"], 0);
    assert_eq!(
        api.post("/v1/accounts/acme/resume", &json!({})).json()["paused"],
        false
    );
    let done = http(
        "GET",
        &api.url(&format!("/v1/jobs/{id}")),
        &[("Prefer", "wait=10")],
        None,
    );
    assert_eq!(done.json()["state"], "succeeded");

    assert_eq!(api.post("/v1/pause", &json!({})).json()["paused"], true);
    assert_eq!(api.get("/v1/status").json()["paused"], true);
    assert_eq!(api.post("/v1/resume", &json!({})).json()["paused"], false);

    let s = http(
        "PUT",
        &api.url("/v1/accounts/acme"),
        &[],
        Some(r#"{"status": "suspended"}"#),
    );
    assert_eq!(s.status, 200, "{}", s.body);
    assert_eq!(s.json()["status"], "suspended");
    assert_eq!(api.get("/v1/accounts/acme").json()["status"], "suspended");
    let c = api.post_with(
        "/v1/jobs",
        &[("Prefer", "wait=10")],
        &job_body(&p.url("/suspended")),
    );
    assert_eq!(c.status, 200);
    assert_eq!(c.json()["state"], "canceled");
    assert_eq!(p.count("/suspended"), 0);
}

#[test]
fn notifications_and_triage_are_listed() {
    let p = MockProvider::start();
    p.script("/teapot", vec![Step::status(418)]);
    p.script("/refused", vec![Step::status(403)]);
    let api = Api::start();
    let held = api.post_with(
        "/v1/jobs",
        &[("Prefer", "wait=10")],
        &job_body(&p.url("/teapot")),
    );
    assert_eq!(held.status, 200);
    assert_eq!(held.json()["state"], "draft");
    let refused = api.post_with(
        "/v1/jobs",
        &[("Prefer", "wait=10")],
        &job_body(&p.url("/refused")),
    );
    assert_eq!(refused.json()["state"], "canceled");
    let t = api.get("/v1/triage").json();
    assert_eq!(t["triage"].as_array().unwrap().len(), 1);
    assert_eq!(t["triage"][0]["provider"], "pm");
    let n = api.get("/v1/notifications?account=acme").json();
    let kinds: Vec<&str> = n["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"forbidden"), "{kinds:?}");
    assert_eq!(
        api.get("/v1/notifications?account=nobody").json()["notifications"],
        json!([])
    );
}

#[test]
fn every_route_in_openapi_json_is_served_over_http() {
    let api = Api::start();
    let doc = api.get("/openapi.json").json();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    assert_eq!(
        paths
            .values()
            .map(|p| p.as_object().unwrap().len())
            .sum::<usize>(),
        ROUTES.len()
    );
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let m = method.to_ascii_uppercase();
            let a = http(&m, &api.url(&concrete(path)), &[], Some("{}"));
            assert_ne!(a.status, 405, "{m} {path}");
            if a.status == 404 {
                assert_ne!(
                    a.json()["error"]["code"],
                    "no_route",
                    "{m} {path} is not routed"
                );
            }
            assert!(a.status < 500, "{m} {path}: {} {}", a.status, a.body);
        }
    }
}

#[test]
fn beyond_the_parked_wait_cap_a_poll_answers_503_and_an_enqueue_answers_202_at_once() {
    let p = MockProvider::start();
    p.default_for("/slow", Step::status(200).delay(3_000));
    let api = Api::with_config("max_parked_waits = 2\n");
    let body = json_body(&p.url("/slow"));
    let waits: Vec<_> = (0..2)
        .map(|_| {
            let url = api.url("/v1/jobs");
            let b = body.to_string();
            std::thread::spawn(move || http("POST", &url, &[("Prefer", "wait=20")], Some(&b)))
        })
        .collect();
    wait_for(10, "two waits parked", || {
        api.server().api.parking.parked() == 2
    });
    // A poll beyond the cap is told to come back...
    let created = api.post("/v1/jobs", &body).json();
    let status_url = created["status_url"].as_str().unwrap().to_string();
    let poll = http("GET", &api.url(&status_url), &[("Prefer", "wait=20")], None);
    assert_eq!(poll.status, 503, "{}", poll.body);
    assert_eq!(poll.header("retry-after"), Some("1"));
    assert_eq!(poll.json()["error"]["code"], "too_many_waits");
    // ...while an enqueue, whose job is already written, answers 202 at once instead of
    // an error a client would retry into a duplicate.
    let jobs_before = api.jobs();
    let keyed = [("Prefer", "wait=20"), ("Idempotency-Key", "over-the-cap")];
    let third = api.post_with("/v1/jobs", &keyed, &body);
    assert_eq!(third.status, 202, "{}", third.body);
    assert!(third.json()["token"].is_string());
    assert_eq!(api.jobs(), jobs_before + 1);
    for w in waits {
        assert_eq!(w.join().unwrap().status, 200);
    }
    // Its replay, once the job has finished within the wait it asked for, is still that
    // first 202: what was answered is kept with the key, not inferred from the wait.
    let id: i64 = third.json()["id"].as_str().unwrap().parse().unwrap();
    wait_for(20, "the third job to succeed", || {
        api.env.state(id) == "succeeded"
    });
    let again = api.post_with("/v1/jobs", &[("Idempotency-Key", "over-the-cap")], &body);
    assert_eq!(again.status, 202, "{}", again.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json()["id"], third.json()["id"]);
}

fn json_body(url: &str) -> Value {
    json!({"account": "acme", "request": {"url": url}})
}

#[test]
fn hundreds_of_mangled_bodies_never_get_a_5xx() {
    // A deterministic fuzz of the JSON endpoints: byte flips, truncations and fields of
    // the wrong type must all answer a 4xx (or succeed), never a 5xx or a dead server.
    let api = Api::start();
    let seeds: Vec<(&str, &str, Value)> = vec![
        ("POST", "/v1/jobs", job_body("http://127.0.0.1:9/x")),
        (
            "POST",
            "/v1/operations",
            json!({"account": "a", "steps": [{"name": "s", "request": {"url": "http://127.0.0.1:9/{{steps.s.json.id}}"}}]}),
        ),
        (
            "PUT",
            "/v1/accounts/acme/credentials/pm",
            json!({"secret": "s3cret", "header": "X-K", "format": "{secret}"}),
        ),
        (
            "PUT",
            "/v1/channels/c/subscriptions/s",
            json!({"url": "http://127.0.0.1:9/h", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}),
        ),
        (
            "POST",
            "/v1/channels/c/events",
            json!({"payload": {"a": 1}}),
        ),
        (
            "POST",
            "/v1/jobs/bulk",
            json!({"action": "retry", "filter": {"state": "draft"}}),
        ),
    ];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let odd = [
        json!(null),
        json!(-1),
        json!(1e300),
        json!("\u{0}"),
        json!([]),
        json!({}),
        json!(true),
        json!("x".repeat(5000)),
    ];
    for round in 0..300 {
        let (method, path, seed) = &seeds[round % seeds.len()];
        let text = match next() % 3 {
            0 => {
                // Replace one field (or a nested one) with an odd value.
                let mut v = seed.clone();
                if let Some(obj) = v.as_object_mut() {
                    let keys: Vec<String> = obj.keys().cloned().collect();
                    let k = &keys[(next() as usize) % keys.len()];
                    obj.insert(k.clone(), odd[(next() as usize) % odd.len()].clone());
                }
                v.to_string()
            }
            1 => {
                let s = seed.to_string();
                let cut = (next() as usize) % s.len();
                s[..cut].to_string()
            }
            _ => {
                let mut b = seed.to_string().into_bytes();
                let i = (next() as usize) % b.len();
                b[i] = (next() % 256) as u8;
                String::from_utf8_lossy(&b).into_owned()
            }
        };
        let a = http(method, &api.url(path), &[], Some(&text));
        assert!(
            a.status < 500,
            "{method} {path} {text:?}: {} {}",
            a.status,
            a.body
        );
        if a.status >= 400 {
            assert!(a.json()["error"]["message"].is_string(), "{}", a.body);
        }
    }
    assert_eq!(api.get("/healthz").status, 200);
}

/// Reads `stream` to EOF (the server closed it), failing after `secs`.
fn read_to_close(stream: &mut std::net::TcpStream, secs: u64) -> String {
    use std::io::Read;
    stream
        .set_read_timeout(Some(Duration::from_secs(secs)))
        .unwrap();
    let mut got = Vec::new();
    match stream.read_to_end(&mut got) {
        Ok(_) => String::from_utf8_lossy(&got).into_owned(),
        Err(e) => panic!(
            "the server did not close the connection within {secs} s ({e}); read so far: {}",
            String::from_utf8_lossy(&got)
        ),
    }
}

#[test]
fn idle_and_stalled_connections_are_closed_after_http_timeout_ms_but_a_long_poll_is_answered() {
    use std::io::Write;
    use std::net::TcpStream;
    let p = MockProvider::start();
    p.default_for("/slow", Step::status(200).delay(1_000));
    let api = Api::with_config("http_timeout_ms = 300\n");
    let addr = api.base.trim_start_matches("http://").to_string();

    // Idle from the start: closed without a word.
    let mut idle = TcpStream::connect(&addr).unwrap();
    assert_eq!(read_to_close(&mut idle, 10), "");

    // A request stalled half-way through its headers: 408, then closed.
    let mut stalled = TcpStream::connect(&addr).unwrap();
    stalled
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    assert!(read_to_close(&mut stalled, 10).starts_with("HTTP/1.1 408"));

    // Keep-alive: answered, then closed once idle.
    let mut kept = TcpStream::connect(&addr).unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let answer = read_to_close(&mut kept, 10);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{answer}");

    // A long poll waiting longer than the timeout still gets its answer.
    let body = job_body(&p.url("/slow")).to_string();
    let mut poll = TcpStream::connect(&addr).unwrap();
    write!(
        poll,
        "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nPrefer: wait=10\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let answer = read_to_close(&mut poll, 15);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"succeeded\""), "{answer}");

    // The server is still healthy.
    assert_eq!(api.get("/healthz").status, 200);
}
