//! The real binary as a process: serve on the defaults, signals, crashes, two processes.

use crate::support::*;

#[test]
fn serve_with_no_arguments_creates_the_database_and_answers_healthz_on_the_default_port() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(errand_bin())
        .arg("serve")
        .current_dir(dir.path())
        .env_remove("ERRAND_DB")
        .env_remove("ERRAND_LISTEN")
        .env_remove("ERRAND_CONFIG")
        .env_remove("ERRAND_API_TOKEN")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(20, "healthz on 127.0.0.1:8717", || {
        http_get("http://127.0.0.1:8717/healthz").is_some_and(|(s, _)| s == 200)
    });
    let db = dir.path().join("errand.db");
    assert!(db.exists());
    assert!(
        dir.path().join("errand.db-wal").exists(),
        "WAL mode leaves a -wal file"
    );
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

use std::collections::HashMap;

use errand::store::Store;

/// Inserts `n` fast-retrying jobs to `url` straight into the database file.
fn insert_jobs(db: &std::path::Path, n: usize, url: &str) -> Vec<i64> {
    let store = Store::open(db, Default::default()).unwrap();
    store
        .write(|tx| {
            (0..n)
                .map(|_| errand::store::jobs::insert(tx, &fast_job("acme", url), 0).map(|i| i.id))
                .collect()
        })
        .unwrap()
}

fn count_state(db: &std::path::Path, state: &str) -> i64 {
    let store = Store::open(db, Default::default()).unwrap();
    let conn = store.read().unwrap();
    conn.query_row("SELECT COUNT(*) FROM jobs WHERE state = ?1", [state], |r| {
        r.get(0)
    })
    .unwrap()
}

/// Requests per job, keyed by the job's Idempotency-Key.
fn per_key(p: &MockProvider, path: &str) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for s in p.requests(path) {
        *m.entry(s.header("idempotency-key").unwrap_or("").to_string())
            .or_default() += 1;
    }
    m
}

#[test]
fn two_serve_processes_on_one_file_send_every_job_exactly_once() {
    let p = MockProvider::start();
    p.default_for("/once", Step::status(200).delay(50));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    drop(Store::open(&db, Default::default()).unwrap());
    let a = ServeProcess::start(dir.path(), &db, &[], &[]);
    let b = ServeProcess::start(dir.path(), &db, &[], &[]);
    insert_jobs(&db, 300, &p.url("/once"));
    wait_for(60, "300 jobs succeeded", || {
        count_state(&db, "succeeded") == 300
    });
    let keys = per_key(&p, "/once");
    assert_eq!(keys.len(), 300);
    assert!(keys.values().all(|&n| n == 1), "a job was sent twice");
    assert_eq!(p.count("/once"), 300);
    // Both processes took part (each attempt row names the process that ran it).
    let runners: i64 = Store::open(&db, Default::default())
        .unwrap()
        .read()
        .unwrap()
        .query_row("SELECT COUNT(DISTINCT runner) FROM attempts", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(runners, 2);
    drop((a, b));
}

#[test]
fn sigkill_mid_run_then_restart_finishes_every_job_resending_at_most_the_in_flight_ones() {
    let p = MockProvider::start();
    p.default_for("/slow", Step::status(200).delay(300));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    drop(Store::open(&db, Default::default()).unwrap());
    insert_jobs(&db, 300, &p.url("/slow"));
    let mut first = ServeProcess::start(dir.path(), &db, &["--workers", "16"], &[]);
    wait_for(30, "some jobs done", || count_state(&db, "succeeded") >= 40);
    first.signal("KILL");
    first.wait_exit(10);
    // Requests the provider had seen but errand never recorded: in flight at the kill.
    wait_for(5, "the provider to answer what it held", || {
        p.answered.load(std::sync::atomic::Ordering::SeqCst) == p.seen.lock().unwrap().len()
    });
    let seen_at_kill = p.seen.lock().unwrap().len();
    let succeeded_at_kill = count_state(&db, "succeeded") as usize;
    // In flight = sent but not recorded: calls under way plus outcomes still waiting for
    // the writer's commit when the process died.
    let in_flight = seen_at_kill - succeeded_at_kill;
    let _second = ServeProcess::start(dir.path(), &db, &["--workers", "16"], &[]);
    wait_for(
        30,
        "all 300 succeeded after the restart (well before the 60 s lease expires)",
        || count_state(&db, "succeeded") == 300,
    );
    let keys = per_key(&p, "/slow");
    assert_eq!(keys.len(), 300, "every job was sent");
    let twice: usize = keys.values().filter(|&&n| n > 1).count();
    assert!(keys.values().all(|&n| n <= 2));
    assert!(twice <= in_flight, "resent {twice} > in flight {in_flight}");
    // Each resend carried its job's key: the map is by key and no key has > 2 sends.
    let lost: i64 = Store::open(&db, Default::default())
        .unwrap()
        .read()
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM attempts WHERE outcome = 'lost'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        lost as usize >= twice,
        "each resend follows a logged lost attempt"
    );
}

#[test]
fn sigterm_with_calls_in_flight_records_them_and_exits_zero() {
    let p = MockProvider::start();
    p.default_for("/four", Step::status(200).delay(1_500));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("term.db");
    drop(Store::open(&db, Default::default()).unwrap());
    let mut s = ServeProcess::start(dir.path(), &db, &[], &[]);
    insert_jobs(&db, 4, &p.url("/four"));
    wait_for(10, "4 calls in flight", || p.count("/four") == 4);
    s.signal("TERM");
    assert_eq!(s.wait_exit(20), Some(0), "{}", s.log());
    assert_eq!(count_state(&db, "succeeded"), 4);
    assert_eq!(p.count("/four"), 4);
}

#[test]
fn a_credential_secret_reaches_the_provider_and_nowhere_else() {
    let secret = "sk_live_TOPSECRET_4242";
    let p = MockProvider::start();
    p.script("/auth", vec![Step::status(503), Step::status(401)]);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("secret.db");
    let store = Store::open(&db, Default::default()).unwrap();
    store
        .write(|tx| {
            errand::store::accounts::put_credential(
                tx,
                "acme",
                "mail",
                secret,
                "X-Api-Token",
                "{secret}",
                1,
            )
        })
        .unwrap();
    let mut job = fast_job("acme", &p.url("/auth"));
    job.provider = "mail".into();
    job.headers.push(("X-Echo".into(), "hello".into()));
    let id = store
        .write(|tx| errand::store::jobs::insert(tx, &job, 0))
        .unwrap()
        .id;
    let s = ServeProcess::start(dir.path(), &db, &[], &[("ERRAND_LOG", "debug")]);
    wait_for(10, "canceled by the 401", || {
        errand::store::jobs::get(&store.read().unwrap(), id)
            .unwrap()
            .state
            .as_str()
            == "canceled"
    });
    assert!(p
        .requests("/auth")
        .iter()
        .all(|r| r.header("x-api-token") == Some(secret)));
    // Nowhere in the database but the credentials table.
    let conn = store.read().unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'credentials'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for t in tables {
        let cols: Vec<String> = conn
            .prepare(&format!("SELECT name FROM pragma_table_info('{t}')"))
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        for c in cols {
            let n: i64 = conn
                .query_row(
                    &format!("SELECT COUNT(*) FROM \"{t}\" WHERE instr(CAST(\"{c}\" AS BLOB), CAST(?1 AS BLOB)) > 0"),
                    [secret],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(n, 0, "secret found in {t}.{c}");
        }
    }
    let attempts = errand::store::attempts::list_json(&conn, id).unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(
        attempts[0]["request"]["headers"]["X-Api-Token"],
        "[redacted]"
    );
    let log = s.log();
    assert!(!log.is_empty());
    assert!(!log.contains(secret), "secret in the log");
    // Nor in the job as the CLI shows it.
    let (_, out, _) = run_cli(
        dir.path(),
        &[
            "--db",
            db.to_str().unwrap(),
            "job",
            "show",
            &id.to_string(),
            "--json",
        ],
        None,
    );
    assert!(out.contains("X-Api-Token") && !out.contains(secret));
}
