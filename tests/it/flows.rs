//! Issue: flows — multi-step operations with recovery points, the transactional outbox,
//! channels with signed deliveries, and the Rust library API.

use std::time::Duration;

use errand::clock::{Clock, SystemClock};
use errand::store::{channels, operations, Store};
use serde_json::{json, Value};

use crate::support::*;

fn now() -> i64 {
    SystemClock.now_ms()
}

fn three_steps(p: &MockProvider) -> Value {
    json!({"account": "acme", "steps": [
        {"name": "charge", "request": {"method": "POST", "url": p.url("/charges"), "json": {"amount": 500}}},
        {"name": "tokenize", "request": {"method": "POST",
            "url": format!("{}/{{{{steps.charge.json.id}}}}", p.url("/tokens"))}},
        {"name": "receipt", "request": {"method": "POST", "url": p.url("/receipts"),
            "json": {"token": "{{steps.tokenize.json.token}}", "charge": "{{steps.charge.json.id}}"}},
         "backoff": {"initial_ms": 50, "multiplier": 2, "max_ms": 200}}
    ]})
}

fn create_op(store: &Store, body: &Value) -> i64 {
    let (account, steps) = errand::operation::validate(body).unwrap();
    store
        .write(|tx| operations::create(tx, &account, &steps, now()))
        .unwrap()
        .id
}

fn op_json(store: &Store, id: i64) -> Value {
    let conn = store.read().unwrap();
    let op = operations::get(&conn, id).unwrap();
    operations::to_json(&conn, &op).unwrap()
}

#[test]
fn a_three_step_operation_retries_its_last_step_and_sends_each_earlier_step_once() {
    let p = MockProvider::start();
    p.default_for("/charges", Step::json(201, r#"{"id":"ch_42"}"#));
    p.default_for("/tokens/ch_42", Step::json(200, r#"{"token":"tok_7"}"#));
    p.script("/receipts", vec![Step::status(503), Step::status(503)]);
    p.default_for("/receipts", Step::json(200, r#"{"sent":true}"#));
    let env = TestEnv::new();
    let engine = env.engine();
    let id = create_op(&env.store, &three_steps(&p));
    engine.shared().wake();
    wait_for(15, "operation succeeded", || {
        op_json(&env.store, id)["state"] == "succeeded"
    });
    assert_eq!(p.count("/charges"), 1);
    assert_eq!(p.count("/tokens/ch_42"), 1);
    assert_eq!(p.count("/receipts"), 3);
    let receipt: Value = serde_json::from_slice(&p.requests("/receipts")[2].body).unwrap();
    assert_eq!(receipt, json!({"token": "tok_7", "charge": "ch_42"}));
    let v = op_json(&env.store, id);
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3);
    assert_eq!(steps[0]["result"]["json"]["id"], "ch_42");
    assert_eq!(steps[1]["result"]["json"]["token"], "tok_7");
    assert_eq!(steps[2]["result"]["json"]["sent"], true);
    assert_eq!(steps[2]["attempts"], 3);
    // Each step's outbound key is derived from the operation and the step, stable on retries.
    let keys: Vec<String> = p
        .requests("/receipts")
        .iter()
        .map(|r| r.header("idempotency-key").unwrap().to_string())
        .collect();
    assert!(keys
        .iter()
        .all(|k| k == &keys[0] && k.ends_with("-receipt")));
    assert_ne!(
        p.requests("/charges")[0].header("idempotency-key"),
        Some(keys[0].as_str())
    );
    engine.shutdown(Duration::from_secs(5));
}

#[test]
fn a_step_whose_template_has_no_value_is_never_sent() {
    let p = MockProvider::start();
    p.default_for("/charges", Step::json(201, r#"{"other":"x"}"#));
    let env = TestEnv::new();
    let engine = env.engine();
    let id = create_op(&env.store, &three_steps(&p));
    engine.shared().wake();
    wait_for(10, "operation canceled", || {
        op_json(&env.store, id)["state"] == "canceled"
    });
    let v = op_json(&env.store, id);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("steps.charge.json.id"),
        "{v}"
    );
    assert_eq!(p.count("/charges"), 1);
    assert_eq!(
        p.seen.lock().unwrap().len(),
        1,
        "nothing after the charge was sent"
    );
    engine.shutdown(Duration::from_secs(5));
}

#[test]
fn a_held_step_holds_the_operation_and_retrying_it_resumes_there() {
    let p = MockProvider::start();
    p.default_for("/charges", Step::json(201, r#"{"id":"ch_1"}"#));
    p.script("/tokens/ch_1", vec![Step::status(418)]);
    p.default_for("/tokens/ch_1", Step::json(200, r#"{"token":"t"}"#));
    let env = TestEnv::new();
    let engine = env.engine();
    let id = create_op(&env.store, &three_steps(&p));
    engine.shared().wake();
    wait_for(10, "operation held", || {
        op_json(&env.store, id)["state"] == "held"
    });
    let job_id: i64 = op_json(&env.store, id)["steps"][1]["job_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    env.store
        .write(|tx| {
            errand::store::jobs::user_action(tx, job_id, errand::job::UserAction::Retry, now())
        })
        .unwrap();
    engine.shared().wake();
    wait_for(10, "operation succeeded", || {
        op_json(&env.store, id)["state"] == "succeeded"
    });
    assert_eq!(p.count("/charges"), 1);
    assert_eq!(p.count("/tokens/ch_1"), 2);
    engine.shutdown(Duration::from_secs(5));
}

#[test]
fn sigkill_between_steps_resumes_at_the_next_step_without_resending_completed_ones() {
    let p = MockProvider::start();
    p.default_for("/charges", Step::json(201, r#"{"id":"ch_9"}"#));
    p.script(
        "/tokens/ch_9",
        vec![Step::json(200, r#"{"token":"tk"}"#).delay(3_000)],
    );
    p.default_for("/tokens/ch_9", Step::json(200, r#"{"token":"tk"}"#));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ops.db");
    let store = Store::open(&db, Default::default()).unwrap();
    let mut body = three_steps(&p);
    body["steps"][1]["backoff"] = json!({"initial_ms": 50, "multiplier": 2, "max_ms": 200});
    let id = create_op(&store, &body);
    let mut first = ServeProcess::start(dir.path(), &db, &[], &[]);
    wait_for(10, "charge done and tokenize in flight", || {
        op_json(&store, id)["completed_steps"] == 1 && p.count("/tokens/ch_9") == 1
    });
    first.signal("KILL");
    first.wait_exit(10);
    let _second = ServeProcess::start(dir.path(), &db, &[], &[]);
    wait_for(20, "operation succeeded after restart", || {
        op_json(&store, id)["state"] == "succeeded"
    });
    assert_eq!(p.count("/charges"), 1, "the completed step was not re-sent");
    let tokens = p.requests("/tokens/ch_9");
    assert_eq!(
        tokens.len(),
        2,
        "the step in flight at the kill was resumed"
    );
    assert_eq!(
        tokens[0].header("idempotency-key"),
        tokens[1].header("idempotency-key")
    );
    assert_eq!(p.count("/receipts"), 1);
}

/// The reason of the one row in `outbox_rejected`.
fn rejected_reason(env: &TestEnv) -> String {
    env.store
        .read()
        .unwrap()
        .query_row("SELECT reason FROM outbox_rejected", [], |r| r.get(0))
        .unwrap()
}

fn python_sqlite(db: &std::path::Path, script: &str) {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(db)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn outbox_rows_committed_by_python_are_sent_rolled_back_ones_never_and_bad_ones_rejected() {
    let p = MockProvider::start();
    let env = TestEnv::with_config("[scheduler]\ntick_ms = 60000\n");
    let engine = env.engine();
    let good = json!({"account": "acme", "request": {"url": p.url("/from-outbox")}}).to_string();
    let rolled = json!({"account": "acme", "request": {"url": p.url("/rolled-back")}}).to_string();
    let script = format!(
        r#"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN")
db.execute("INSERT INTO outbox (payload) VALUES (?)", ({good:?},))
db.execute("COMMIT")
db.execute("BEGIN")
db.execute("INSERT INTO outbox (payload) VALUES (?)", ({rolled:?},))
db.execute("ROLLBACK")
db.execute("INSERT INTO outbox (payload) VALUES ('{{not json')")
"#
    );
    let start = std::time::Instant::now();
    python_sqlite(&env.db_path(), &script);
    wait_for(2, "the committed row is sent within 2 s", || {
        p.count("/from-outbox") == 1
    });
    eprintln!(
        "outbox row sent {:?} after the python insert finished",
        start.elapsed()
    );
    wait_for(2, "the bad row is rejected", || {
        env.count_sql("SELECT COUNT(*) FROM outbox_rejected") == 1
    });
    let reason = rejected_reason(&env);
    assert!(reason.contains("not valid JSON"), "{reason}");
    assert_eq!(env.count_sql("SELECT COUNT(*) FROM outbox"), 0);
    // A few more data_version polls: the rolled-back row never appears.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(p.count("/rolled-back"), 0);
    engine.shutdown(Duration::from_secs(5));
}

#[test]
fn the_rust_library_enqueues_and_publishes_inside_the_callers_transaction() {
    let p = MockProvider::start();
    let env = TestEnv::new();
    let engine = env.engine();
    {
        let mut conn = env.store.writer();
        let tx = conn.transaction().unwrap();
        errand::enqueue(&tx, &fast_job("acme", &p.url("/rolled"))).unwrap();
        drop(tx); // rolled back
        let tx = conn.transaction().unwrap();
        let id = errand::enqueue(&tx, &fast_job("acme", &p.url("/kept"))).unwrap();
        tx.commit().unwrap();
        assert!(id > 0);
    }
    engine.shared().wake();
    wait_for(5, "committed job sent", || p.count("/kept") == 1);
    assert_eq!(env.count_sql("SELECT COUNT(*) FROM jobs"), 1);
    assert_eq!(p.count("/rolled"), 0);
    engine.shutdown(Duration::from_secs(5));
}

const SECRET_A: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SECRET_B: &str = "whsec_C2VjcmV0LWZvci1zdWJzY3JpYmVyLWI=";

fn verify(secret: &str, seen: &Seen) -> bool {
    let key = errand::webhook::Secret::parse(secret).unwrap();
    errand::webhook::verify(
        &key,
        seen.header("webhook-id").unwrap(),
        seen.header("webhook-timestamp").unwrap(),
        seen.header("webhook-signature").unwrap(),
        &seen.body,
        now() / 1000,
        errand::webhook::DEFAULT_TOLERANCE_S,
    )
    .is_ok()
}

#[test]
fn an_event_reaches_each_subscriber_signed_and_a_down_one_gets_it_after_recovering() {
    let p = MockProvider::start();
    p.script("/hook-b", vec![Step::status(503), Step::status(503)]);
    let env = TestEnv::with_config(
        "[providers.webhook]\nbackoff = { initial_ms = 50, multiplier = 2.0, max_ms = 200 }\n\n[channels.email]\nschema = { required = [\"to\", \"subject\"], properties = { to = \"string\", subject = \"string\" } }\n",
    );
    env.store
        .write(|tx| {
            channels::put_subscription(tx, "email", "a", &p.url("/hook-a"), SECRET_A, 1)?;
            channels::put_subscription(tx, "email", "b", &p.url("/hook-b"), SECRET_B, 1)
        })
        .unwrap();
    let engine = env.engine();
    let config = engine.shared().config.clone();
    let bad = env.store.write(|tx| {
        errand::engine::outbox::publish(tx, &config, "email", &json!({"to": "x@y.z"}), now())
    });
    let e = bad.unwrap_err().to_string();
    assert!(e.starts_with("payload.subject:"), "{e}");
    assert_eq!(
        env.count_sql("SELECT COUNT(*) FROM jobs"),
        0,
        "nothing written for a refused event"
    );
    let ids = env
        .store
        .write(|tx| {
            errand::engine::outbox::publish(
                tx,
                &config,
                "email",
                &json!({"to": "x@y.z", "subject": "hi"}),
                now(),
            )
        })
        .unwrap();
    assert_eq!(ids.len(), 2);
    engine.shared().wake();
    wait_for(10, "both delivered", || {
        ids.iter().all(|&i| env.state(i) == "succeeded")
    });
    let a = p.requests("/hook-a");
    let b = p.requests("/hook-b");
    assert_eq!(a.len(), 1, "the healthy subscriber got it once");
    assert_eq!(b.len(), 3);
    assert!(verify(SECRET_A, &a[0]));
    assert!(
        !verify(SECRET_B, &a[0]),
        "signed with the subscriber's own secret"
    );
    assert!(b.iter().all(|r| verify(SECRET_B, r)));
    assert!(b
        .iter()
        .all(|r| r.header("webhook-id") == a[0].header("webhook-id")));
    let body: Value = serde_json::from_slice(&a[0].body).unwrap();
    assert_eq!(body["type"], "email");
    assert_eq!(body["data"], json!({"to": "x@y.z", "subject": "hi"}));
    // The healthy one was not held back by the other's failures.
    assert!(a[0].at <= b[1].at);
    // No secret in the stored jobs or attempts.
    for secret in [SECRET_A, SECRET_B] {
        let n = env.count_sql(&format!(
            "SELECT COUNT(*) FROM attempts WHERE instr(request_headers, '{secret}') OR instr(CAST(request_body AS TEXT), '{secret}')"
        ));
        assert_eq!(n, 0);
    }
    engine.shutdown(Duration::from_secs(5));
}

#[test]
fn a_subscriber_answering_410_is_disabled_with_a_notification() {
    let p = MockProvider::start();
    p.default_for("/gone", Step::status(410));
    let env = TestEnv::new();
    env.store
        .write(|tx| channels::put_subscription(tx, "orders", "old", &p.url("/gone"), SECRET_A, 1))
        .unwrap();
    let engine = env.engine();
    let config = engine.shared().config.clone();
    let ids = env
        .store
        .write(|tx| errand::engine::outbox::publish(tx, &config, "orders", &json!({"n": 1}), now()))
        .unwrap();
    engine.shared().wake();
    wait_for(10, "delivery canceled", || env.state(ids[0]) == "canceled");
    let subs = channels::list_subscriptions(&env.store.read().unwrap(), Some("orders")).unwrap();
    assert_eq!(subs[0].status, "disabled");
    assert_eq!(
        env.count_sql("SELECT COUNT(*) FROM notifications WHERE kind = 'subscription_disabled'"),
        1
    );
    let again = env
        .store
        .write(|tx| errand::engine::outbox::publish(tx, &config, "orders", &json!({"n": 2}), now()))
        .unwrap();
    assert!(again.is_empty(), "no delivery to a disabled subscription");
    assert_eq!(p.count("/gone"), 1);
    engine.shutdown(Duration::from_secs(5));
}

#[test]
fn an_event_row_in_the_outbox_is_published() {
    let p = MockProvider::start();
    let env = TestEnv::new();
    env.store
        .write(|tx| channels::put_subscription(tx, "orders", "s", &p.url("/sub"), SECRET_A, 1))
        .unwrap();
    let engine = env.engine();
    {
        let mut conn = env.store.writer();
        let tx = conn.transaction().unwrap();
        errand::publish(&tx, "orders", &json!({"order": 7})).unwrap();
        tx.commit().unwrap();
    }
    engine.shared().wake();
    wait_for(5, "delivered", || p.count("/sub") == 1);
    assert!(verify(SECRET_A, &p.requests("/sub")[0]));
    engine.shutdown(Duration::from_secs(5));
}

// --- Over HTTP: POST /v1/operations, GET /v1/operations/{id}, channels.

#[test]
fn over_http_an_operation_answers_202_then_200_with_the_three_results() {
    let p = MockProvider::start();
    p.default_for("/charges", Step::json(201, r#"{"id":"ch_42"}"#));
    p.default_for("/tokens/ch_42", Step::json(200, r#"{"token":"tok_7"}"#));
    p.script("/receipts", vec![Step::status(503)]);
    p.default_for("/receipts", Step::json(200, r#"{"sent":true}"#).delay(300));
    let api = crate::api::Api::start();
    let created = api.post("/v1/operations", &three_steps(&p));
    assert_eq!(created.status, 202, "{}", created.body);
    let c = created.json();
    let status_url = c["status_url"].as_str().unwrap().to_string();
    assert_eq!(
        created.header("location"),
        Some(format!("/v1/operations/{}", c["id"].as_str().unwrap()).as_str())
    );
    let first = api.get(&status_url);
    assert_eq!(first.status, 202);
    assert!(first.header("retry-after").is_some());
    let done = http("GET", &api.url(&status_url), &[("Prefer", "wait=20")], None);
    assert_eq!(done.status, 200, "{}", done.body);
    let v = done.json();
    assert_eq!(v["state"], "succeeded");
    let results: Vec<&Value> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["result"])
        .collect();
    assert_eq!(results[0]["json"]["id"], "ch_42");
    assert_eq!(results[1]["json"]["token"], "tok_7");
    assert_eq!(results[2]["json"]["sent"], true);
    assert_eq!(p.count("/charges"), 1);
    assert_eq!(p.count("/tokens/ch_42"), 1);
    assert_eq!(p.count("/receipts"), 2);
    // A wrong token is a 404 like an unknown id.
    let id = c["id"].as_str().unwrap();
    assert_eq!(
        api.get(&format!("/v1/operations/{id}?token=nope")).status,
        404
    );
    assert_eq!(api.get("/v1/operations/999999?token=nope").status, 404);
}

#[test]
fn over_http_prefer_wait_and_idempotency_keys_work_for_operations() {
    let p = MockProvider::start();
    p.default_for("/charges", Step::json(201, r#"{"id":"ch_42"}"#));
    p.default_for("/tokens/ch_42", Step::json(200, r#"{"token":"tok_7"}"#));
    let api = crate::api::Api::start();
    let body = three_steps(&p);
    let h = [("Prefer", "wait=20"), ("Idempotency-Key", "op-1")];
    let a = api.post_with("/v1/operations", &h, &body);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["state"], "succeeded");
    let b = api.post_with("/v1/operations", &h, &body);
    assert_eq!(b.status, 200);
    assert_eq!(b.header("idempotent-replayed"), Some("true"));
    assert_eq!(a.json()["id"], b.json()["id"]);
    assert_eq!(p.count("/charges"), 1);
    // Its replay without Prefer: wait is the first answer too: that call waited and got
    // the finished operation, 200.
    let b2 = api.post_with("/v1/operations", &[("Idempotency-Key", "op-1")], &body);
    assert_eq!(b2.status, 200, "{}", b2.body);
    assert_eq!(b2.header("idempotent-replayed"), Some("true"));
    assert_eq!(b2.json()["state"], "succeeded");
    assert_eq!(b2.json()["id"], a.json()["id"]);
    assert_eq!(p.count("/charges"), 1);
    // Without Prefer: wait, a replay is the first answer of a create without it: 202
    // with the id, token and status URL, though the operation has succeeded since.
    let plain = [("Idempotency-Key", "op-2")];
    let c = api.post_with("/v1/operations", &plain, &body);
    assert_eq!(c.status, 202, "{}", c.body);
    let c_id: i64 = c.json()["id"].as_str().unwrap().parse().unwrap();
    crate::support::wait_for(20, "the second operation to finish", || {
        let r = api.get(&format!("/v1/operations/{c_id}"));
        r.status == 200
    });
    let d = api.post_with("/v1/operations", &plain, &body);
    assert_eq!(d.status, 202, "{}", d.body);
    assert_eq!(d.json(), c.json());
    assert_eq!(d.header("idempotent-replayed"), Some("true"));
    assert_eq!(d.header("location"), c.header("location"));
    let mut other = body.clone();
    other["steps"][0]["request"]["json"]["amount"] = json!(9);
    assert_eq!(api.post_with("/v1/operations", &h, &other).status, 422);
    let bad = api.post(
        "/v1/operations",
        &json!({"account": "a", "steps": [{"request": {"url": "http://x/"}}]}),
    );
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("steps[0].name"));
}

#[test]
fn over_http_an_event_reaches_subscribers_and_a_bad_payload_is_422() {
    let p = MockProvider::start();
    let api = crate::api::Api::with_config(
        "[channels.email]\nschema = { required = [\"to\", \"subject\"], properties = { to = \"string\", subject = \"string\" } }\n",
    );
    for (name, secret) in [("a", SECRET_A), ("b", SECRET_B)] {
        let r = http(
            "PUT",
            &api.url(&format!("/v1/channels/email/subscriptions/{name}")),
            &[],
            Some(&json!({"url": p.url(&format!("/hook-{name}")), "secret": secret}).to_string()),
        );
        assert_eq!(r.status, 204, "{}", r.body);
    }
    let bad_secret = http(
        "PUT",
        &api.url("/v1/channels/email/subscriptions/c"),
        &[],
        Some(&json!({"url": p.url("/c"), "secret": "hunter2"}).to_string()),
    );
    assert_eq!(bad_secret.status, 400);
    let listed = api.get("/v1/channels/email/subscriptions");
    assert_eq!(listed.json()["subscriptions"].as_array().unwrap().len(), 2);
    assert!(!listed.body.contains("whsec_"));
    let missing = api.post(
        "/v1/channels/email/events",
        &json!({"payload": {"to": "x@y.z"}}),
    );
    assert_eq!(missing.status, 422, "{}", missing.body);
    assert!(missing.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("payload.subject"));
    assert_eq!(api.env.count_sql("SELECT COUNT(*) FROM jobs"), 0);
    let ok = api.post(
        "/v1/channels/email/events",
        &json!({"payload": {"to": "x@y.z", "subject": "hi"}}),
    );
    assert_eq!(ok.status, 202, "{}", ok.body);
    assert_eq!(ok.json()["deliveries"].as_array().unwrap().len(), 2);
    wait_for(10, "both delivered", || {
        p.count("/hook-a") == 1 && p.count("/hook-b") == 1
    });
    assert!(verify(SECRET_A, &p.requests("/hook-a")[0]));
    assert!(verify(SECRET_B, &p.requests("/hook-b")[0]));
    let del = http(
        "DELETE",
        &api.url("/v1/channels/email/subscriptions/b"),
        &[],
        None,
    );
    assert_eq!(del.status, 204);
    let again = api.post(
        "/v1/channels/email/events",
        &json!({"payload": {"to": "x@y.z", "subject": "2"}}),
    );
    assert_eq!(again.json()["deliveries"].as_array().unwrap().len(), 1);
}

#[test]
fn an_outbox_row_that_is_not_text_is_rejected_and_does_not_block_the_rows_behind_it() {
    // Regression: one BLOB payload made every drain pass fail.
    let p = MockProvider::start();
    let env = TestEnv::new();
    let engine = env.engine();
    let good = json!({"account": "acme", "request": {"url": p.url("/after-blob")}}).to_string();
    let script = format!(
        r#"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("INSERT INTO outbox (payload) VALUES (?)", (b"\xff\xfe not text",))
db.execute("INSERT INTO outbox (payload, created_at) VALUES (?, 'yesterday')", ({good:?},))
"#
    );
    python_sqlite(&env.db_path(), &script);
    wait_for(5, "the row behind the blob is sent", || {
        p.count("/after-blob") == 1
    });
    wait_for(5, "the blob is rejected", || {
        env.count_sql("SELECT COUNT(*) FROM outbox_rejected") == 1
    });
    let reason = rejected_reason(&env);
    assert!(reason.contains("BLOB"), "{reason}");
    assert_eq!(env.count_sql("SELECT COUNT(*) FROM outbox"), 0);
    engine.shutdown(Duration::from_secs(5));
}

#[test]
fn an_operation_whose_canceled_step_was_pruned_reads_canceled_not_running() {
    // Regression: a missing current step job made the operation poll 202 forever.
    let p = MockProvider::start();
    let env = TestEnv::new();
    let id = create_op(&env.store, &three_steps(&p));
    let job_id: i64 = op_json(&env.store, id)["steps"][0]["job_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    env.store
        .write(|tx| {
            errand::store::jobs::user_action(tx, job_id, errand::job::UserAction::Cancel, now())?;
            // What retention does to finished jobs.
            errand::store::engine::prune(tx, None, Some(now() + 1), 0)
        })
        .unwrap();
    assert_eq!(env.count_sql("SELECT COUNT(*) FROM jobs"), 0);
    assert_eq!(op_json(&env.store, id)["state"], "canceled");
}

#[test]
fn over_http_an_operation_stopped_by_a_refused_step_says_why() {
    let p = MockProvider::start();
    p.default_for("/charges", Step::json(201, r#"{"id":"ch_42"}"#));
    p.default_for("/tokens/ch_42", Step::status(403));
    let api = crate::api::Api::start();
    let a = api.post_with("/v1/operations", &[("Prefer", "wait=20")], &three_steps(&p));
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    assert_eq!(v["state"], "canceled");
    assert_eq!(v["steps"][1]["state"], "canceled");
    assert_eq!(v["error"]["category"], "forbidden", "{v}");
    assert_eq!(v["error"], v["steps"][1]["error"]);
    assert_eq!(p.count("/receipts"), 0);
}
