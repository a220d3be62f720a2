//! Issue: the engine — scheduler, leases, workers, preflight, classification, retries,
//! audit log, restarts. In-process engines against a scripted provider.

use std::time::Duration;

use std::sync::Arc;

use errand::clock::{Clock, SystemClock};
use errand::spec::NewJob;
use errand::store::{accounts, attempts};

use crate::support::*;

#[test]
fn retries_503_twice_then_succeeds_with_one_idempotency_key() {
    let p = MockProvider::start();
    p.script(
        "/send",
        vec![
            Step::status(503),
            Step::status(503),
            Step::json(200, r#"{"id":"m-1"}"#),
        ],
    );
    let env = TestEnv::new();
    let engine = env.engine();
    let id = env.insert(&fast_job("acme", &p.url("/send")));
    engine.shared().wake();
    wait_for(10, "job to succeed", || env.state(id) == "succeeded");
    let seen = p.requests("/send");
    assert_eq!(seen.len(), 3);
    let key = seen[0].header("idempotency-key").unwrap().to_string();
    assert!(seen
        .iter()
        .all(|s| s.header("idempotency-key") == Some(key.as_str())));
    // Spaced by the backoff: 50 ms·2ⁿ with equal jitter -> at least 25 ms, then 50 ms.
    assert!(seen[1].at - seen[0].at >= Duration::from_millis(25));
    assert!(seen[2].at - seen[1].at >= Duration::from_millis(50));
    let job = env.job(id);
    assert_eq!(job.attempts, 3);
    let result = job.result.unwrap();
    assert_eq!(result.status, 200);
    assert_eq!(result.body, br#"{"id":"m-1"}"#);
    let log = attempts::list_json(&env.store.read().unwrap(), id).unwrap();
    let outcomes: Vec<&str> = log.iter().map(|a| a["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["unavailable", "unavailable", "success"]);
    engine.shutdown(Duration::from_secs(5));
}

fn notifications(env: &TestEnv, kind: &str) -> i64 {
    env.count_sql(&format!(
        "SELECT COUNT(*) FROM notifications WHERE kind = '{kind}'"
    ))
}

#[test]
fn always_503_exhausts_max_attempts_and_holds_with_a_notification() {
    let p = MockProvider::start();
    p.default_for("/down", Step::status(503));
    let env = TestEnv::new();
    let engine = env.engine();
    let mut job = fast_job("acme", &p.url("/down"));
    job.max_attempts = Some(3);
    let id = env.insert(&job);
    engine.shared().wake();
    wait_for(10, "job held in draft", || env.state(id) == "draft");
    assert_eq!(p.count("/down"), 3);
    let j = env.job(id);
    let err = j.last_error.unwrap();
    assert_eq!(err.category, "unavailable");
    assert_eq!(err.reason, "exhausted");
    assert_eq!(notifications(&env, "exhausted"), 1);
    engine.shutdown(Duration::from_secs(5));
}

#[test]
fn a_refused_connection_and_a_timeout_are_unavailable() {
    let p = MockProvider::start();
    p.default_for("/slow", Step::status(200).delay(2_000));
    let env = TestEnv::new();
    let engine = env.engine();
    let closed = format!("http://127.0.0.1:{}/x", free_port());
    let mut refused = fast_job("acme", &closed);
    refused.max_attempts = Some(1);
    let mut slow = fast_job("acme", &p.url("/slow"));
    slow.max_attempts = Some(1);
    slow.timeout_ms = Some(200);
    let (a, b) = (env.insert(&refused), env.insert(&slow));
    engine.shared().wake();
    wait_for(10, "both held", || {
        env.state(a) == "draft" && env.state(b) == "draft"
    });
    let log_a = attempts::list_json(&env.store.read().unwrap(), a).unwrap();
    let log_b = attempts::list_json(&env.store.read().unwrap(), b).unwrap();
    assert_eq!(log_a[0]["outcome"], "unavailable");
    assert_eq!(
        log_a[0]["ambiguous"], false,
        "a refused connection was never sent"
    );
    assert_eq!(log_b[0]["outcome"], "unavailable");
    assert_eq!(
        log_b[0]["ambiguous"], true,
        "a timeout may have been processed"
    );
    assert_eq!(env.job(a).last_error.unwrap().category, "unavailable");
    engine.shutdown(Duration::from_secs(5));
}

#[test]
fn unauthorized_cancels_invalidates_the_credential_and_a_new_secret_is_used() {
    let p = MockProvider::start();
    p.script("/me", vec![Step::status(401)]);
    let env = TestEnv::new();
    env.put_bearer("acme", "mail", "old-secret-1");
    let engine = env.engine();
    let mut job = fast_job("acme", &p.url("/me"));
    job.provider = "mail".into();
    let first = env.insert(&job);
    engine.shared().wake();
    wait_for(10, "first canceled", || env.state(first) == "canceled");
    assert_eq!(env.job(first).last_error.unwrap().category, "unauthorized");
    let status = accounts::credential_status(&env.store.read().unwrap(), "acme", "mail").unwrap();
    assert_eq!(status.status, "invalid");
    assert_eq!(notifications(&env, "reauthorize"), 1);
    // The next job on that credential is canceled at preflight, with no request.
    let second = env.insert(&job);
    engine.shared().wake();
    wait_for(10, "second canceled", || env.state(second) == "canceled");
    assert_eq!(
        env.job(second).last_error.unwrap().reason,
        "credential_invalid"
    );
    assert_eq!(p.count("/me"), 1);
    assert_eq!(notifications(&env, "reauthorize"), 1, "one per credential");
    // A new secret: the next job carries it.
    env.put_bearer("acme", "mail", "new-secret-2");
    let third = env.insert(&job);
    engine.shared().wake();
    wait_for(10, "third succeeded", || env.state(third) == "succeeded");
    let seen = p.requests("/me");
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].header("authorization"), Some("Bearer old-secret-1"));
    assert_eq!(seen[1].header("authorization"), Some("Bearer new-secret-2"));
    engine.shutdown(Duration::from_secs(5));
}

#[test]
fn forbidden_cancels_after_one_request_and_unclassified_goes_to_triage() {
    let p = MockProvider::start();
    p.default_for("/no", Step::status(403));
    p.default_for("/tea", Step::json(418, r#"{"error":"teapot"}"#));
    let env = TestEnv::new();
    let engine = env.engine();
    let f = env.insert(&fast_job("acme", &p.url("/no")));
    let t1 = env.insert(&fast_job("acme", &p.url("/tea")));
    engine.shared().wake();
    wait_for(10, "forbidden canceled, teapot held", || {
        env.state(f) == "canceled" && env.state(t1) == "draft"
    });
    assert_eq!(p.count("/no"), 1);
    assert_eq!(notifications(&env, "forbidden"), 1);
    assert_eq!(env.job(t1).last_error.unwrap().category, "unclassified");
    assert_eq!(env.count_sql("SELECT count FROM triage"), 1);
    let t2 = env.insert(&fast_job("acme", &p.url("/tea")));
    engine.shared().wake();
    wait_for(10, "second teapot held", || env.state(t2) == "draft");
    assert_eq!(
        env.count_sql("SELECT COUNT(*) FROM triage"),
        1,
        "same signature, one entry"
    );
    assert_eq!(env.count_sql("SELECT count FROM triage"), 2);
    engine.shutdown(Duration::from_secs(5));
}

#[test]
fn retry_after_on_429_delays_the_next_attempt() {
    let p = MockProvider::start();
    p.script(
        "/rl",
        vec![
            Step::status(429).header("Retry-After", "2"),
            Step::status(200),
        ],
    );
    let env = TestEnv::new();
    let engine = env.engine();
    let id = env.insert(&fast_job("acme", &p.url("/rl")));
    engine.shared().wake();
    wait_for(15, "succeeded", || env.state(id) == "succeeded");
    let seen = p.requests("/rl");
    assert_eq!(seen.len(), 2);
    assert!(
        seen[1].at - seen[0].at >= Duration::from_secs(2),
        "{:?}",
        seen[1].at - seen[0].at
    );
    engine.shutdown(Duration::from_secs(5));
}

/// Waits until the scheduler has run `n` more passes (its heartbeat moved n times).
fn scheduler_passes(engine: &errand::engine::Engine, n: usize) {
    for _ in 0..n {
        let before = engine.shared().scheduler_beat.last();
        wait_for(5, "a scheduler pass", || {
            engine.shared().scheduler_beat.last() > before
        });
    }
}

#[test]
fn nothing_is_sent_while_paused_globally_or_per_account() {
    let p = MockProvider::start();
    let env = TestEnv::new();
    let engine = env.engine();
    env.store
        .write(|tx| accounts::set_global_pause(tx, true))
        .unwrap();
    let a = env.insert(&fast_job("acme", &p.url("/a")));
    engine.shared().wake();
    scheduler_passes(&engine, 3);
    assert_eq!(p.count("/a"), 0);
    assert_eq!(env.state(a), "approved");
    env.store
        .write(|tx| accounts::set_global_pause(tx, false))
        .unwrap();
    env.store
        .write(|tx| accounts::set_paused(tx, "acme", true, 1))
        .unwrap();
    let b = env.insert(&fast_job("globex", &p.url("/b")));
    engine.shared().wake();
    wait_for(10, "the other account's job runs", || {
        env.state(b) == "succeeded"
    });
    scheduler_passes(&engine, 3);
    assert_eq!(p.count("/a"), 0, "acme is paused");
    env.store
        .write(|tx| accounts::set_paused(tx, "acme", false, 2))
        .unwrap();
    engine.shared().wake();
    wait_for(10, "resumed job runs", || env.state(a) == "succeeded");
    assert_eq!(p.count("/a"), 1);
    assert_eq!(env.job(a).attempts, 1);
    engine.shutdown(Duration::from_secs(5));
}

#[test]
fn suspended_accounts_and_expired_jobs_are_canceled_without_a_request() {
    let p = MockProvider::start();
    let env = TestEnv::new();
    env.store
        .write(|tx| accounts::set_status(tx, "deadbeat", "suspended", 1))
        .unwrap();
    let engine = env.engine();
    let s = env.insert(&fast_job("deadbeat", &p.url("/s")));
    let mut exp = fast_job("acme", &p.url("/e"));
    exp.expires_at = Some(1_000); // 1970
    let e = env.insert(&exp);
    let mut missing = fast_job("acme", &p.url("/m"));
    missing.provider = "strict".into();
    engine.shared().wake();
    wait_for(10, "both canceled", || {
        env.state(s) == "canceled" && env.state(e) == "canceled"
    });
    assert_eq!(env.job(s).last_error.unwrap().reason, "account_suspended");
    assert_eq!(env.job(e).last_error.unwrap().reason, "expired");
    assert_eq!(env.job(s).attempts, 0, "no attempt counted");
    assert_eq!(p.seen.lock().unwrap().len(), 0);
    assert_eq!(env.count_sql("SELECT COUNT(*) FROM attempts"), 0);
    engine.shutdown(Duration::from_secs(5));
}

#[test]
fn a_provider_requiring_a_credential_cancels_a_job_without_one() {
    let p = MockProvider::start();
    let env = TestEnv::with_config("[providers.strict]\nrequires_credential = true\n");
    let engine = env.engine();
    let mut job = fast_job("acme", &p.url("/m"));
    job.provider = "strict".into();
    let id = env.insert(&job);
    engine.shared().wake();
    wait_for(10, "canceled", || env.state(id) == "canceled");
    assert_eq!(env.job(id).last_error.unwrap().reason, "credential_missing");
    assert_eq!(p.count("/m"), 0);
    engine.shutdown(Duration::from_secs(5));
}

#[test]
fn a_panicking_thread_is_restarted_and_the_engine_keeps_working() {
    let p = MockProvider::start();
    let env = TestEnv::new();
    let engine = env.engine();
    let shared = engine.shared().clone();
    shared
        .faults
        .panic_scheduler
        .store(true, std::sync::atomic::Ordering::SeqCst);
    shared.wake();
    wait_for(10, "scheduler restart counted", || {
        shared
            .metrics
            .thread_restarts
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1
    });
    shared
        .faults
        .panic_worker
        .store(true, std::sync::atomic::Ordering::SeqCst);
    wait_for(10, "worker restart counted", || {
        shared
            .metrics
            .thread_restarts
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 2
    });
    let ids: Vec<i64> = (0..20)
        .map(|_| env.insert(&fast_job("acme", &p.url("/ok"))))
        .collect();
    shared.wake();
    wait_for(10, "all jobs done after restarts", || {
        ids.iter().all(|&id| env.state(id) == "succeeded")
    });
    engine.shutdown(Duration::from_secs(5));
}

#[test]
fn an_expired_lease_is_reaped_as_lost_and_retried_with_its_key() {
    use errand::clock::ManualClock;
    let p = MockProvider::start();
    let env = TestEnv::new();
    let clock = ManualClock::new(1_000_000);
    // A job claimed by a process that vanished (another host: only expiry can free it).
    let id = env.insert(&fast_job("acme", &p.url("/x")));
    let key = env.job(id).idempotency_key.unwrap();
    env.store
        .write(|tx| {
            errand::store::engine::claim(
                tx,
                &[id],
                "otherhost:1:1:abcd",
                1_000_000 + 60_000,
                2_000_000_000_000,
            )
            .map(|_| ())
        })
        .unwrap();
    let engine = env.engine_with_clock(Arc::new(clock.clone()));
    assert_eq!(
        errand::engine::reap_once(engine.shared(), clock.now_ms()).unwrap(),
        0,
        "lease still valid"
    );
    clock.advance(61_000);
    assert_eq!(
        errand::engine::reap_once(engine.shared(), clock.now_ms()).unwrap(),
        1
    );
    let log = attempts::list_json(&env.store.read().unwrap(), id).unwrap();
    assert_eq!(log[0]["outcome"], "lost");
    assert_eq!(log[0]["ambiguous"], true);
    assert_eq!(env.state(id), "retry");
    // Reaping again finds nothing: the guard on state, owner and attempt holds.
    assert_eq!(
        errand::engine::reap_once(engine.shared(), clock.now_ms()).unwrap(),
        0
    );
    clock.advance(1_000);
    engine.shared().wake();
    wait_for(10, "retried and succeeded", || env.state(id) == "succeeded");
    assert_eq!(
        p.requests("/x")[0].header("idempotency-key"),
        Some(key.as_str())
    );
    engine.shutdown(Duration::from_secs(5));
}

#[test]
fn a_job_inserted_by_another_connection_is_picked_up_through_data_version() {
    let p = MockProvider::start();
    let env = TestEnv::with_config("[scheduler]\ntick_ms = 60000\n");
    let engine = env.engine();
    scheduler_passes(&engine, 1);
    // Another connection, as another process or an app would write.
    let other = errand::store::Store::open(env.db_path(), Default::default()).unwrap();
    let id = other
        .write(|tx| errand::store::jobs::insert(tx, &fast_job("acme", &p.url("/dv")), 0))
        .unwrap()
        .id;
    wait_for(5, "picked up without a wake or a tick", || {
        env.state(id) == "succeeded"
    });
    engine.shutdown(Duration::from_secs(5));
}

#[test]
fn max_attempts_and_timeouts_come_from_the_provider_when_the_job_has_none() {
    let p = MockProvider::start();
    p.default_for("/down", Step::status(500));
    let env = TestEnv::with_config(
        "[providers.flaky]\nmax_attempts = 2\nbackoff = { initial_ms = 10, multiplier = 1.0, max_ms = 10 }\n",
    );
    let engine = env.engine();
    let mut job = NewJob::get("acme", &p.url("/down"));
    job.provider = "flaky".into();
    let id = env.insert(&job);
    engine.shared().wake();
    wait_for(10, "held after the provider's 2 attempts", || {
        env.state(id) == "draft"
    });
    assert_eq!(p.count("/down"), 2);
    engine.shutdown(Duration::from_secs(5));
}

#[test]
fn an_outcome_whose_side_effects_fail_holds_the_job_instead_of_leaving_it_running() {
    let p = MockProvider::start();
    let env = TestEnv::new();
    let engine = env.engine();
    let mut job = fast_job("acme", &p.url("/orphan"));
    job.internal.operation = Some((987_654, 0)); // no such operation: advancing it fails
    let id = env.insert(&job);
    engine.shared().wake();
    wait_for(10, "held for review", || env.state(id) == "draft");
    let j = env.job(id);
    assert_eq!(j.last_error.unwrap().reason, "internal_error");
    assert_eq!(j.lease_owner, None);
    let log = attempts::list_json(&env.store.read().unwrap(), id).unwrap();
    assert_eq!(log.len(), 1, "the attempt is still in the audit log");
    engine.shutdown(Duration::from_secs(5));
}

#[test]
fn max_concurrency_caps_requests_in_flight_to_a_provider() {
    let p = MockProvider::start();
    p.default_for("/capped", Step::status(200).delay(100));
    let env = TestEnv::with_config("[providers.capped]\nmax_concurrency = 2\n");
    let engine = env.engine();
    let ids: Vec<i64> = (0..10)
        .map(|_| {
            let mut j = fast_job("acme", &p.url("/capped"));
            j.provider = "capped".into();
            env.insert(&j)
        })
        .collect();
    engine.shared().wake();
    wait_for(15, "all done", || {
        ids.iter().all(|&i| env.state(i) == "succeeded")
    });
    assert_eq!(p.max_in_flight.load(std::sync::atomic::Ordering::SeqCst), 2);
    engine.shutdown(Duration::from_secs(5));
}

#[test]
fn a_rate_limit_spaces_requests_per_account() {
    let p = MockProvider::start();
    let env = TestEnv::with_config(
        "[providers.rl]\nrate_limit = { per_second = 10.0, burst = 1, per_account = true }\n",
    );
    let engine = env.engine();
    let mut ids = vec![];
    for account in ["a", "b"] {
        for _ in 0..5 {
            let mut j = fast_job(account, &p.url(&format!("/rl-{account}")));
            j.provider = "rl".into();
            ids.push(env.insert(&j));
        }
    }
    engine.shared().wake();
    wait_for(15, "all done", || {
        ids.iter().all(|&i| env.state(i) == "succeeded")
    });
    for account in ["a", "b"] {
        let seen = p.requests(&format!("/rl-{account}"));
        assert_eq!(seen.len(), 5);
        // 10/s with a burst of 1: five requests span at least four refills (400 ms). The
        // span is checked rather than each gap, which a worker's pickup delay can shift.
        let span = seen[4].at - seen[0].at;
        assert!(span >= Duration::from_millis(350), "{span:?}");
    }
    // The two accounts have their own buckets: b's requests interleave with a's rather
    // than waiting behind them.
    let (a, b) = (p.requests("/rl-a"), p.requests("/rl-b"));
    assert!(b[0].at < a[4].at && a[0].at < b[4].at);
    engine.shutdown(Duration::from_secs(5));
}

#[test]
fn a_failing_provider_opens_its_circuit_and_a_probe_closes_it() {
    let p = MockProvider::start();
    p.script("/cb", vec![Step::status(503); 4]);
    let env = TestEnv::with_config(
        "[providers.cb]\ncircuit_breaker = { failure_ratio = 0.5, min_calls = 4, open_s = 1 }\nbackoff = { initial_ms = 10, multiplier = 1.0, max_ms = 10 }\n",
    );
    let engine = env.engine();
    let ids: Vec<i64> = (0..4)
        .map(|_| {
            let mut j = NewJob::get("acme", &p.url("/cb"));
            j.provider = "cb".into();
            env.insert(&j)
        })
        .collect();
    engine.shared().wake();
    wait_for(10, "circuit opened", || {
        notifications(&env, "provider_down") == 1
    });
    let sent_when_open = p.count("/cb");
    assert_eq!(sent_when_open, 4);
    wait_for(10, "a probe closed it", || {
        notifications(&env, "provider_recovered") == 1
    });
    wait_for(10, "all jobs done", || {
        ids.iter().all(|&i| env.state(i) == "succeeded")
    });
    assert_eq!(
        p.count("/cb"),
        8,
        "no attempt was spent while the circuit was open"
    );
    engine.shutdown(Duration::from_secs(5));
}

#[test]
fn a_finished_job_posts_itself_to_its_callback_url() {
    let p = MockProvider::start();
    let env = TestEnv::new();
    let engine = env.engine();
    let mut job = fast_job("acme", &p.url("/work"));
    job.callback_url = Some(p.url("/callback"));
    let id = env.insert(&job);
    engine.shared().wake();
    wait_for(10, "callback delivered", || p.count("/callback") == 1);
    let body: serde_json::Value = serde_json::from_slice(&p.requests("/callback")[0].body).unwrap();
    assert_eq!(body["id"], id.to_string());
    assert_eq!(body["state"], "succeeded");
    assert_eq!(body["result"]["status"], 200);
    engine.shutdown(Duration::from_secs(5));
}

#[test]
fn a_credential_replaced_by_another_process_is_used_by_the_next_job() {
    // Workers cache what preflight reads; a commit by another process must drop it.
    let p = MockProvider::start();
    let env = TestEnv::new();
    env.put_bearer("acme", "mail", "first-secret");
    let engine = env.engine();
    let mut job = fast_job("acme", &p.url("/cred"));
    job.provider = "mail".into();
    for _ in 0..3 {
        let id = env.insert(&job);
        engine.shared().wake();
        wait_for(10, "sent with the first secret", || {
            env.state(id) == "succeeded"
        });
    }
    let db = env.db_path();
    let (code, _, err) = run_cli(
        env.dir.path(),
        &[
            "--db",
            db.to_str().unwrap(),
            "credentials",
            "set",
            "acme",
            "mail",
        ],
        Some("second-secret"),
    );
    assert_eq!(code, 0, "{err}");
    // The CLI's commit is seen through PRAGMA data_version within a scheduler poll.
    let before = engine.shared().store.generation();
    wait_for(5, "the engine to see the other process's commit", || {
        engine.shared().store.generation() > before
    });
    let id = env.insert(&job);
    engine.shared().wake();
    wait_for(10, "sent", || env.state(id) == "succeeded");
    let seen = p.requests("/cred");
    assert_eq!(
        seen.last().unwrap().header("authorization"),
        Some("Bearer second-secret")
    );
    engine.shutdown(Duration::from_secs(5));
}

#[test]
fn a_response_with_20_kib_of_headers_is_read_whole() {
    // The agent's input buffer bounds response headers at 32 KiB to keep memory flat.
    let p = MockProvider::start();
    let big = "a".repeat(20 * 1024);
    p.default_for("/big", Step::json(200, r#"{"ok":1}"#).header("X-Big", &big));
    let env = TestEnv::new();
    let engine = env.engine();
    let id = env.insert(&fast_job("acme", &p.url("/big")));
    engine.shared().wake();
    wait_for(10, "succeeded", || env.state(id) == "succeeded");
    let result = env.job(id).result.unwrap();
    assert!(result
        .headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("x-big") && v.len() == big.len()));
    engine.shutdown(Duration::from_secs(5));
}

#[test]
fn a_new_triage_entry_is_delivered_once_to_the_triage_url() {
    let p = MockProvider::start();
    p.default_for("/tea", Step::json(418, r#"{"error":"teapot"}"#));
    let env = TestEnv::with_config(&format!("triage_url = \"{}\"\n", p.url("/triage")));
    let engine = env.engine();
    let first = env.insert(&fast_job("acme", &p.url("/tea")));
    engine.shared().wake();
    wait_for(10, "triage delivered", || p.count("/triage") == 1);
    let body: serde_json::Value = serde_json::from_slice(&p.requests("/triage")[0].body).unwrap();
    assert_eq!(body["type"], "notification.triage");
    assert_eq!(body["data"]["job_id"], first.to_string());
    // The same signature again counts the entry up but is not delivered again; other
    // notifications (here `forbidden`) have nowhere to go without notify_url.
    let second = env.insert(&fast_job("acme", &p.url("/tea")));
    p.default_for("/no", Step::status(403));
    let third = env.insert(&fast_job("acme", &p.url("/no")));
    engine.shared().wake();
    wait_for(10, "both done", || {
        env.state(second) == "draft" && env.state(third) == "canceled"
    });
    wait_for(10, "every notification handled", || {
        env.count_sql("SELECT COUNT(*) FROM notifications WHERE delivery_job IS NULL") == 0
    });
    assert_eq!(env.count_sql("SELECT count FROM triage"), 2);
    assert_eq!(p.count("/triage"), 1);
    engine.shutdown(Duration::from_secs(5));
}

#[test]
fn an_outcome_survives_a_batch_whose_transaction_cannot_start() {
    // Regression: a writer batch that met SQLITE_BUSY past the busy timeout used to be
    // dropped whole, leaving its jobs running under a lease the process kept extending.
    let p = MockProvider::start();
    p.default_for("/slow", Step::json(200, r#"{"ok":1}"#).delay(1_000));
    let env = TestEnv::new();
    let engine = env.engine();
    let id = env.insert(&fast_job("acme", &p.url("/slow")));
    engine.shared().wake();
    wait_for(10, "the call is in flight", || p.count("/slow") == 1);
    // Another connection (an app, the CLI) holds the write lock longer than the busy
    // timeout while the outcome waits to be written.
    let db = env.db_path();
    let holder = std::thread::spawn(move || {
        let c = rusqlite::Connection::open(db).unwrap();
        c.execute_batch("BEGIN IMMEDIATE").unwrap();
        std::thread::sleep(errand::store::BUSY_TIMEOUT + Duration::from_secs(1));
        c.execute_batch("COMMIT").unwrap();
    });
    holder.join().unwrap();
    wait_for(15, "the outcome written after the lock is released", || {
        env.state(id) == "succeeded"
    });
    assert_eq!(p.count("/slow"), 1);
    engine.shutdown(Duration::from_secs(5));
}

#[test]
fn a_url_outside_the_providers_base_url_is_canceled_before_the_credential_is_sent() {
    let p = MockProvider::start();
    let env = TestEnv::with_config(&format!(
        "[providers.pay]\nbase_url = \"http://127.0.0.1:{}\"\n",
        free_port()
    ));
    env.put_bearer("acme", "pay", "sk_live");
    let engine = env.engine();
    // Userinfo tricks a string prefix check; the parsed host is the mock's.
    let base = env.config.provider("pay").base_urls[0].clone();
    let tricky = format!("{base}@127.0.0.1:{}/steal", p.port);
    let mut job = fast_job("acme", &tricky);
    job.provider = "pay".into();
    let id = env.insert(&job);
    engine.shared().wake();
    wait_for(10, "canceled at preflight", || env.state(id) == "canceled");
    assert_eq!(env.job(id).last_error.unwrap().reason, "url_not_allowed");
    assert_eq!(
        p.seen.lock().unwrap().len(),
        0,
        "nothing sent, no credential leaked"
    );
    engine.shutdown(Duration::from_secs(5));
}

#[test]
fn a_401_to_a_deleted_secret_does_not_condemn_the_secret_stored_after_it() {
    // Regression: versions restarted at 1 after a DELETE, so a late 401 to the old secret
    // matched the new credential's version.
    let env = TestEnv::new();
    let put = |secret: &str| env.put_bearer("acme", "mail", secret);
    let version = |env: &TestEnv| {
        accounts::credential(&env.store.read().unwrap(), "acme", "mail")
            .unwrap()
            .unwrap()
            .version
    };
    put("old");
    let old = version(&env);
    env.store
        .write(|tx| accounts::delete_credential(tx, "acme", "mail"))
        .unwrap();
    put("new");
    assert_ne!(version(&env), old);
    let changed = env
        .store
        .write(|tx| accounts::invalidate_credential(tx, "acme", "mail", old, "401", 2))
        .unwrap();
    assert!(!changed);
    let status = accounts::credential_status(&env.store.read().unwrap(), "acme", "mail").unwrap();
    assert_eq!(status.status, "valid");
}

#[test]
fn retrying_a_held_job_gives_it_its_whole_attempt_budget_again() {
    let p = MockProvider::start();
    p.default_for("/down", Step::status(503));
    let env = TestEnv::new();
    let engine = env.engine();
    let mut job = fast_job("acme", &p.url("/down"));
    job.max_attempts = Some(2);
    let id = env.insert(&job);
    engine.shared().wake();
    wait_for(10, "held after 2 attempts", || env.state(id) == "draft");
    assert_eq!(p.count("/down"), 2);
    // "The provider is back: re-run what was held" — it still fails here, so the job
    // gets its 2 attempts again before it is held once more, not just one.
    env.store
        .write(|tx| {
            errand::store::jobs::user_action(
                tx,
                id,
                errand::job::UserAction::Retry,
                SystemClock.now_ms(),
            )
        })
        .unwrap();
    engine.shared().wake();
    wait_for(10, "held again", || {
        env.state(id) == "draft" && p.count("/down") == 4
    });
    assert_eq!(env.job(id).attempts, 4);
    assert_eq!(notifications(&env, "exhausted"), 2);
    engine.shutdown(Duration::from_secs(5));
}

/// Inserts `n` jobs of `provider` for `account` to `url` in one transaction.
fn backlog(env: &TestEnv, provider: &str, account: &str, url: &str, n: usize) {
    let mut j = fast_job(account, url);
    j.provider = provider.into();
    let now = errand::clock::Clock::now_ms(&errand::clock::SystemClock);
    env.store
        .write(|tx| {
            for _ in 0..n {
                errand::store::jobs::insert(tx, &j, now)?;
            }
            Ok(())
        })
        .expect("backlog");
}

#[test]
fn a_rate_limited_accounts_backlog_does_not_hold_back_another_account() {
    let p = MockProvider::start();
    let env = TestEnv::with_config(
        "[providers.rl]\nrate_limit = { per_second = 1.0, burst = 1, per_account = true }\n",
    );
    // More due jobs of account a than one candidate query returns, all older than b's.
    backlog(&env, "rl", "a", &p.url("/rl-a"), 400);
    let mut b = fast_job("b", &p.url("/rl-b"));
    b.provider = "rl".into();
    let b = env.insert(&b);
    let engine = env.engine();
    engine.shared().wake();
    wait_for(10, "account b's job, behind a's backlog", || {
        env.state(b) == "succeeded"
    });
    assert!(p.count("/rl-a") <= 12, "account a is held to 1/s");
    engine.shutdown(Duration::from_secs(5));
}

#[test]
fn a_saturated_providers_backlog_does_not_hold_back_another_provider() {
    let p = MockProvider::start();
    p.default_for("/capped", Step::status(200).delay(2_000));
    let env = TestEnv::with_config("[providers.capped]\nmax_concurrency = 1\n");
    backlog(&env, "capped", "a", &p.url("/capped"), 400);
    let other = env.insert(&fast_job("a", &p.url("/other")));
    let engine = env.engine();
    engine.shared().wake();
    wait_for(
        10,
        "the other provider's job, behind the capped backlog",
        || env.state(other) == "succeeded",
    );
    assert!(
        p.count("/capped") <= 2,
        "the capped provider runs one at a time"
    );
    engine.shutdown(Duration::from_secs(5));
}

#[test]
fn the_queue_count_returns_to_zero_after_a_drain_with_failures_limits_and_a_shutdown() {
    let p = MockProvider::start();
    p.default_for("/flaky", Step::status(503));
    let env = TestEnv::with_config(
        "[providers.rl]\nmax_attempts = 2\nbackoff = { initial_ms = 10, multiplier = 1.0, max_ms = 10 }\nmax_concurrency = 2\nrate_limit = { per_second = 200.0, burst = 5, per_account = true }\n",
    );
    backlog(&env, "rl", "a", &p.url("/ok"), 150);
    backlog(&env, "rl", "b", &p.url("/flaky"), 20);
    backlog(&env, "default", "c", &p.url("/ok"), 150);
    let engine = env.engine();
    engine.shared().wake();
    wait_for(30, "every job finished or held", || {
        env.count_sql("SELECT COUNT(*) FROM jobs WHERE state IN ('approved', 'retry', 'running')")
            == 0
    });
    wait_for(5, "the queue count back at zero", || {
        engine.shared().outstanding() == 0
    });
    // And once more after a shutdown that finds jobs queued behind slow calls.
    p.default_for("/slow", Step::status(200).delay(300));
    backlog(&env, "default", "c", &p.url("/slow"), 300);
    engine.shared().wake();
    wait_for(
        10,
        "slow calls running with jobs queued behind them",
        || p.count("/slow") > 0 && engine.shared().outstanding() > 8,
    );
    let shared = engine.shared().clone();
    engine.shutdown(Duration::from_secs(5));
    assert_eq!(shared.outstanding(), 0);
    assert_eq!(
        env.count_sql("SELECT COUNT(*) FROM jobs WHERE state = 'running'"),
        0,
        "nothing left running under this process's lease"
    );
    // Each slow job either ran to success or was put back unchanged: none was left
    // running, and none counted an attempt it did not make.
    let slow = |cond: &str| {
        env.count_sql(&format!(
            "SELECT COUNT(*) FROM jobs WHERE url LIKE '%/slow' AND {cond}"
        ))
    };
    assert_eq!(
        slow("NOT (state = 'succeeded' OR (state = 'approved' AND attempts = 0))"),
        0
    );
    assert!(slow("state = 'succeeded'") > 0);
}

#[test]
fn outbox_rows_committed_on_errands_own_connection_are_drained_while_the_queue_is_full() {
    let p = MockProvider::start();
    p.default_for("/slow", Step::status(200).delay(5_000));
    // The production tick: passes every 50 ms while the queue is full must not put off
    // the tick's drain.
    let env = TestEnv::with_config("[scheduler]\ntick_ms = 1000\n");
    backlog(&env, "default", "a", &p.url("/slow"), 300);
    let engine = env.engine();
    engine.shared().wake();
    wait_for(10, "the queue to fill", || p.count("/slow") > 0);
    // Committed on the engine's own write connection (as a Rust app embedding errand
    // does): PRAGMA data_version does not change, only the tick drains it.
    let payload = serde_json::json!({"account": "b", "request": {"url": p.url("/from-outbox")}});
    env.store
        .write(|tx| {
            tx.execute(
                "INSERT INTO outbox (payload) VALUES (?1)",
                [payload.to_string()],
            )?;
            Ok(())
        })
        .unwrap();
    wait_for(5, "the outbox row drained into a job", || {
        env.count_sql("SELECT COUNT(*) FROM outbox") == 0
    });
    engine.shutdown(Duration::from_millis(100));
}

#[test]
fn a_job_refused_at_preflight_gives_its_rate_limit_token_back() {
    let p = MockProvider::start();
    // One token per 100 s: a job that only gets the token back can run in this test.
    let env = TestEnv::with_config(
        "[providers.rl]\nrate_limit = { per_second = 0.01, burst = 1, per_account = true }\n",
    );
    let mut expired = fast_job("a", &p.url("/never"));
    expired.provider = "rl".into();
    expired.expires_at = Some(1);
    let expired = env.insert(&expired);
    let mut next = fast_job("a", &p.url("/next"));
    next.provider = "rl".into();
    let next = env.insert(&next);
    let engine = env.engine();
    engine.shared().wake();
    wait_for(
        10,
        "the next job, on the token the expired one gave back",
        || env.state(next) == "succeeded",
    );
    assert_eq!(env.state(expired), "canceled");
    assert_eq!(p.count("/never"), 0);
    engine.shutdown(Duration::from_secs(5));
}

#[test]
fn the_checkpointer_copies_the_wal_so_the_writers_commits_need_not() {
    let env = TestEnv::new();
    let engine = env.engine();
    // The writer's own commits checkpoint only as a backstop.
    let frames: i64 = env
        .store
        .writer()
        .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
        .unwrap();
    assert_eq!(frames, 10_000);
    // In WAL mode the database file is written only by checkpoints: ~1 MB of drafts (not
    // run) committed through the writer's connection, far below its backstop, reaches
    // the file only if the checkpointer copies it there.
    let size = || std::fs::metadata(env.db_path()).unwrap().len();
    let before = size();
    let mut job = NewJob::get("acme", "http://127.0.0.1:9/never");
    job.state = errand::job::JobState::Draft;
    job.body = Some(vec![b'x'; 2_000]);
    let now = SystemClock.now_ms();
    env.store
        .write(|tx| {
            for _ in 0..500 {
                errand::store::jobs::insert(tx, &job, now)?;
            }
            Ok(())
        })
        .unwrap();
    wait_for(10, "the WAL copied into the database file", || {
        size() > before + 900_000
    });
    engine.shutdown(Duration::from_secs(5));
}
