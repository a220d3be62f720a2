//! Issue: the engine — scheduler, leases, workers, preflight, classification, retries,
//! audit log, restarts. In-process engines against a scripted provider.

use std::time::Duration;

use errand::store::attempts;

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
