//! Issue: the foundation — schema, state machine in Rust and SQL, store, command line.

use errand::job::{can_transition, JobState, UserAction};
use errand::spec::NewJob;
use errand::store::{engine, jobs, Store};
use rusqlite::Connection;

use crate::support::*;

/// Puts a fresh job into `state` by legal transitions, with raw SQL.
fn job_in_state(conn: &Connection, state: JobState) -> i64 {
    let initial = if state == JobState::Draft {
        JobState::Draft
    } else {
        JobState::Approved
    };
    let mut job = NewJob::get("acme", "http://127.0.0.1:9/x");
    job.state = initial;
    let id = jobs::insert(conn, &job, 0).unwrap().id;
    let path: &[&str] = match state {
        JobState::Draft | JobState::Approved => &[],
        JobState::Running => &["running"],
        JobState::Retry => &["running", "retry"],
        JobState::Succeeded => &["running", "succeeded"],
        JobState::Canceled => &["canceled"],
    };
    for s in path {
        conn.execute(
            "UPDATE jobs SET state = ?1 WHERE id = ?2",
            rusqlite::params![s, id],
        )
        .unwrap();
    }
    id
}

#[test]
fn every_transition_pair_agrees_between_rust_and_the_sql_trigger() {
    let env = TestEnv::new();
    let conn = env.store.writer();
    let mut allowed = 0;
    for from in JobState::ALL {
        for to in JobState::ALL {
            if from == to {
                continue;
            }
            let id = job_in_state(&conn, from);
            let sql = conn.execute(
                "UPDATE jobs SET state = ?1 WHERE id = ?2",
                rusqlite::params![to.as_str(), id],
            );
            assert_eq!(
                sql.is_ok(),
                can_transition(from, to),
                "{from} -> {to}: SQL said {sql:?}"
            );
            if let Err(e) = sql {
                assert!(e.to_string().contains("transition not allowed"), "{e}");
            } else {
                allowed += 1;
            }
        }
    }
    assert_eq!(allowed, errand::job::TRANSITIONS.len());
}

#[test]
fn a_hand_written_update_to_an_impossible_state_fails_and_changes_nothing() {
    let env = TestEnv::new();
    let conn = env.store.writer();
    let id = job_in_state(&conn, JobState::Draft);
    let e = conn
        .execute("UPDATE jobs SET state='succeeded' WHERE state='draft'", [])
        .unwrap_err();
    assert!(e.to_string().contains("not allowed"));
    let state: String = conn
        .query_row("SELECT state FROM jobs WHERE id = ?1", [id], |r| r.get(0))
        .unwrap();
    assert_eq!(state, "draft");
    assert!(conn
        .execute("UPDATE jobs SET state='finished' WHERE id = ?1", [id])
        .is_err());
    let mut running = NewJob::get("a", "http://h/");
    running.state = JobState::Draft;
    let ok = jobs::insert(&conn, &running, 0);
    assert!(ok.is_ok());
    assert!(conn
        .execute(
            "INSERT INTO jobs (token, account, state, run_at, method, url, created_at, updated_at)
             VALUES ('t', 'a', 'running', 0, 'GET', 'http://h/', 0, 0)",
            []
        )
        .is_err());
}

#[test]
fn schema_is_versioned_idempotent_and_refuses_a_newer_database() {
    let env = TestEnv::new();
    let v: i64 = env.count_sql("PRAGMA user_version");
    assert_eq!(v, errand::store::SCHEMA_VERSION);
    let mode: String = env
        .store
        .read()
        .unwrap()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    // Opening again is a no-op.
    drop(Store::open(env.db_path(), Default::default()).unwrap());
    env.store
        .writer()
        .execute_batch("PRAGMA user_version = 99")
        .unwrap();
    let e = Store::open(env.db_path(), Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("newer errand"), "{e}");
}

#[test]
fn an_old_database_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        // A database with only the jobs table of a first release and no version.
        let c = Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE jobs (id INTEGER PRIMARY KEY, token TEXT NOT NULL, account TEXT NOT NULL, provider TEXT NOT NULL DEFAULT 'default', state TEXT NOT NULL, run_at INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, max_attempts INTEGER, method TEXT NOT NULL, url TEXT NOT NULL, headers TEXT NOT NULL DEFAULT '[]', body BLOB, timeout_ms INTEGER, backoff TEXT, idempotency_key TEXT, expires_at INTEGER, callback_url TEXT, metadata TEXT NOT NULL DEFAULT '{}', lease_owner TEXT, lease_until INTEGER, last_error TEXT, result_status INTEGER, result_headers TEXT, result_body BLOB, result_truncated INTEGER NOT NULL DEFAULT 0, operation_id INTEGER, step_index INTEGER, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, finished_at INTEGER);").unwrap();
    }
    let store = Store::open(&path, Default::default()).unwrap();
    let n: i64 = store
        .read()
        .unwrap()
        .query_row("SELECT COUNT(*) FROM sqlite_master WHERE name IN ('outbox', 'attempts', 'jobs_state_transition')", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 3);
}

/// Opens the database at `path` again and checks it was brought to the current version.
fn reopened_at_the_current_version(path: &std::path::Path) -> Store {
    let store = Store::open(path, Default::default()).unwrap();
    let version: i64 = store
        .read()
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, errand::store::SCHEMA_VERSION);
    store
}

/// What schema version 2 did not have yet.
const WITHOUT_V3: &str = "ALTER TABLE idempotency_keys DROP COLUMN first_status;";

/// The transition trigger as schema version 1 wrote it (and nothing of version 3).
const TRIGGER_V1: &str = "
ALTER TABLE idempotency_keys DROP COLUMN first_status;
DROP TRIGGER jobs_state_transition;
CREATE TRIGGER jobs_state_transition
BEFORE UPDATE OF state ON jobs
FOR EACH ROW WHEN OLD.state IS NOT NEW.state AND (OLD.state || '>' || NEW.state) NOT IN (
    'draft>approved', 'approved>running', 'retry>running', 'running>succeeded',
    'running>retry', 'running>canceled', 'running>draft', 'running>approved',
    'draft>canceled', 'approved>canceled', 'retry>canceled', 'canceled>draft',
    'retry>approved')
BEGIN
    SELECT RAISE(ABORT, 'errand: job state transition not allowed by the state machine');
END;
PRAGMA user_version = 1;";

#[test]
fn a_version_1_database_gets_the_version_2_trigger_and_keeps_its_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    let id = {
        let store = Store::open(&path, Default::default()).unwrap();
        let id = store
            .write(|tx| jobs::insert(tx, &NewJob::get("acme", "http://h/"), 1))
            .unwrap()
            .id;
        store.write(|tx| Ok(tx.execute_batch(TRIGGER_V1)?)).unwrap();
        id
    };
    let store = reopened_at_the_current_version(&path);
    let conn = store.read().unwrap();
    let sql: String = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE name = 'jobs_state_transition'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(sql.contains("CASE NEW.state"), "{sql}");
    drop(conn);
    assert_eq!(
        jobs::get(&store.read().unwrap(), id).unwrap().account,
        "acme"
    );
    let refused = store
        .write(|tx| Ok(tx.execute("UPDATE jobs SET state = 'succeeded' WHERE id = ?1", [id])?));
    assert!(
        refused.is_err(),
        "the upgraded trigger still guards the table"
    );
}

#[test]
fn a_version_2_database_gets_the_idempotency_wait_column_and_keeps_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v2.db");
    {
        let store = Store::open(&path, Default::default()).unwrap();
        store
            .write(|tx| {
                tx.execute_batch(WITHOUT_V3)?;
                tx.execute(
                    "INSERT INTO idempotency_keys (account, key, request_hash, job_id, created_at)
                     VALUES ('acme', 'k', 'h', 7, 1000)",
                    [],
                )?;
                Ok(tx.execute_batch("PRAGMA user_version = 2")?)
            })
            .unwrap();
    }
    let store = reopened_at_the_current_version(&path);
    let conn = store.read().unwrap();
    let row = errand::store::idempotency::find(&conn, "acme", "k", 1000)
        .unwrap()
        .expect("the key survives the upgrade");
    assert_eq!((row.job_id, row.first_status), (Some(7), None));
}

#[test]
fn a_corrupt_or_foreign_file_gives_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.db");
    std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
    let e = Store::open(&path, Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("not an SQLite database"), "{e}");
    assert!(!e.contains('\n'));
    let e = Store::open(dir.path().join("no/such/dir/x.db"), Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot be opened"), "{e}");
}

#[test]
fn list_filters_and_pages_by_keyset() {
    let env = TestEnv::new();
    let mut ids = vec![];
    for i in 0..25 {
        let mut j = NewJob::get(if i % 2 == 0 { "acme" } else { "globex" }, "http://h/");
        if i % 5 == 0 {
            j.state = JobState::Draft;
        }
        ids.push(env.insert(&j));
    }
    let conn = env.store.read().unwrap();
    let f = jobs::JobFilter {
        account: Some("acme".into()),
        ..Default::default()
    };
    let page1 = jobs::list(&conn, &f, None, 5).unwrap();
    let page2 = jobs::list(&conn, &f, Some(page1.last().unwrap().id), 5).unwrap();
    let page3 = jobs::list(&conn, &f, Some(page2.last().unwrap().id), 5).unwrap();
    assert_eq!(page1.len() + page2.len() + page3.len(), 13);
    assert!(page1.iter().chain(&page2).all(|j| j.account == "acme"));
    assert!(page1[0].id > page2[0].id);
    let drafts = jobs::list(
        &conn,
        &jobs::JobFilter {
            state: Some(JobState::Draft),
            ..Default::default()
        },
        None,
        100,
    )
    .unwrap();
    assert_eq!(drafts.len(), 5);
}

#[test]
fn user_actions_follow_the_table_and_a_forbidden_one_names_the_state() {
    let env = TestEnv::new();
    let mut j = NewJob::get("acme", "http://h/");
    j.state = JobState::Draft;
    let id = env.insert(&j);
    let w = |a| env.store.write(|tx| jobs::user_action(tx, id, a, 1));
    assert_eq!(w(UserAction::Approve).unwrap().state, JobState::Approved);
    assert_eq!(w(UserAction::Cancel).unwrap().state, JobState::Canceled);
    let e = w(UserAction::Approve).unwrap_err();
    assert!(
        matches!(
            e,
            errand::Error::Conflict {
                state: JobState::Canceled,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(w(UserAction::Reopen).unwrap().state, JobState::Draft);
    assert!(matches!(
        env.store
            .write(|tx| jobs::user_action(tx, 999_999, UserAction::Approve, 1)),
        Err(errand::Error::NotFound(_))
    ));
}

#[test]
fn the_due_job_query_uses_the_partial_index() {
    let env = TestEnv::new();
    let conn = env.store.read().unwrap();
    let plan: Vec<String> = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {}", engine::CANDIDATES))
        .unwrap()
        .query_map(rusqlite::named_params! {":now": 1, ":limit": 10}, |r| {
            r.get::<_, String>(3)
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(
        plan.iter().any(|p| p.contains("USING INDEX jobs_due")),
        "{plan:?}"
    );
    assert!(!plan.iter().any(|p| p.contains("TEMP B-TREE")), "{plan:?}");
    // The engine's own queries run (INDEXED BY fails loudly if the index cannot serve them).
    assert!(engine::due_candidates(&conn, 1, 10).unwrap().is_empty());
    let skipped = engine::due_candidates_except(
        &conn,
        1,
        10,
        &["capped".to_string()],
        &[("rl".to_string(), "acme".to_string())],
    );
    assert!(skipped.unwrap().is_empty());
    assert_eq!(engine::next_due_at(&conn).unwrap(), None);

    assert_eq!(engine::due_backlog(&conn, 1).unwrap(), (0, None));
    drop(conn);
    // Thousands of refused accounts still make a query SQLite accepts (it refuses an
    // expression tree deeper than 1,000), and it leaves exactly them out.
    let mut pairs = Vec::new();
    env.store
        .write(|tx| {
            for i in 0..2_000 {
                let account = format!("acct-{i}");
                let mut j = NewJob::get(&account, "http://x.test/");
                j.provider = "rl".into();
                jobs::insert(tx, &j, 1)?;
                pairs.push(("rl".to_string(), account));
            }
            let mut j = NewJob::get("free", "http://x.test/");
            j.provider = "rl".into();
            jobs::insert(tx, &j, 1)?;
            Ok(())
        })
        .unwrap();
    let conn = env.store.read().unwrap();
    let left =
        engine::due_candidates_except(&conn, 10, 100, &["capped".to_string()], &pairs).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].account, "free");
}

#[test]
fn cli_enqueue_show_and_list() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run_cli(
        dir.path(),
        &[
            "enqueue",
            "--account",
            "acme",
            "--url",
            "http://127.0.0.1:9999/x",
            "--method",
            "POST",
            "--json",
            r#"{"a":1}"#,
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let id = out.trim().to_string();
    assert!(id.parse::<i64>().is_ok(), "{out}");
    assert!(dir.path().join("errand.db").exists());
    let (code, out, _) = run_cli(dir.path(), &["job", "show", &id, "--json"], None);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["state"], "approved");
    assert_eq!(v["request"]["method"], "POST");
    let (code, out, _) = run_cli(dir.path(), &["jobs", "--state", "approved", "--json"], None);
    assert_eq!(code, 0);
    let list: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert!(list.iter().any(|j| j["id"] == id.as_str()));
    let (code, out, _) = run_cli(dir.path(), &["job", "cancel", &id], None);
    assert_eq!(code, 0);
    assert!(out.contains("canceled"));
    let (code, _, err) = run_cli(dir.path(), &["job", "approve", &id], None);
    assert_eq!(code, 1);
    assert!(err.contains("canceled"), "{err}");
}

#[test]
fn cli_errors_are_one_line_with_the_right_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run_cli(dir.path(), &["job", "show", "no-such-id"], None);
    assert_eq!(code, 1);
    assert!(err.contains("not found"), "{err}");
    assert_eq!(err.trim().lines().count(), 1);
    let (code, _, err) = run_cli(dir.path(), &["enqueue", "--account", "acme"], None);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--url"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let (code, _, err) = run_cli(
        dir.path(),
        &["enqueue", "--account", "a", "--url", "ftp://x/"],
        None,
    );
    assert_eq!(code, 2);
    assert!(err.contains("--url"), "{err}");
    let (code, _, err) = run_cli(dir.path(), &["jobs", "--state", "done"], None);
    assert_eq!(code, 2);
    assert!(err.contains("state"), "{err}");
    std::fs::write(dir.path().join("bad.db"), vec![7u8; 4096]).unwrap();
    let (code, _, err) = run_cli(dir.path(), &["--db", "bad.db", "jobs"], None);
    assert_eq!(code, 1);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("bad.db") && err.contains("not an SQLite database"),
        "{err}"
    );
    assert!(!err.contains("panicked"));
}

#[test]
fn cli_pause_credentials_stats_backup_check() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(run_cli(dir.path(), &["pause"], None).0, 0);
    assert_eq!(
        run_cli(dir.path(), &["pause", "--account", "acme"], None).0,
        0
    );
    let (code, out, _) = run_cli(dir.path(), &["stats", "--json"], None);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["paused"], true);
    assert_eq!(run_cli(dir.path(), &["resume"], None).0, 0);
    let (code, out, err) = run_cli(
        dir.path(),
        &["credentials", "set", "acme", "postmark"],
        Some("tok-SECRET-1\n"),
    );
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("tok-SECRET-1"));
    let (code, out, _) = run_cli(dir.path(), &["backup", "copy.db"], None);
    assert_eq!(code, 0, "{out}");
    let copy = Store::open(dir.path().join("copy.db"), Default::default()).unwrap();
    let n: i64 = copy
        .read()
        .unwrap()
        .query_row("SELECT COUNT(*) FROM credentials", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
    let (code, out, _) = run_cli(dir.path(), &["check"], None);
    assert_eq!(code, 0);
    assert!(out.starts_with("ok"));
    std::fs::write(dir.path().join("bad.toml"), "workers = 0\n").unwrap();
    let (code, _, err) = run_cli(dir.path(), &["--config", "bad.toml", "check"], None);
    assert_eq!(code, 2);
    assert!(err.contains("workers"), "{err}");
    // Regression: a channel schema errand cannot use passed `check` (and `serve`).
    std::fs::write(
        dir.path().join("bad.toml"),
        "[channels.bad]\nschema = { required = [\"to\"], properties = { to = \"strng\" } }\n",
    )
    .unwrap();
    let (code, _, err) = run_cli(dir.path(), &["--config", "bad.toml", "check"], None);
    assert_eq!(code, 2);
    assert!(
        err.contains("config: channels.bad.schema.properties.to: must be one of string"),
        "{err}"
    );
}

#[test]
fn the_packaged_example_config_is_valid() {
    let text = include_str!("../../packaging/errand.example.toml");
    let c = errand::config::Config::from_toml(text).unwrap();
    assert!(c.provider("twitter").requires_credential);
    assert_eq!(c.provider("twitter").rules.len(), 2);
}

#[test]
fn the_reaper_and_lease_queries_find_running_jobs_through_the_state_index() {
    let env = TestEnv::new();
    let conn = env.store.read().unwrap();
    for sql in [
        "SELECT id FROM jobs WHERE state = 'running' AND (lease_until < 1 OR lease_owner IN ('x'))",
        "SELECT DISTINCT lease_owner FROM jobs WHERE state = 'running' AND lease_owner IS NOT NULL",
    ] {
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(
            plan.iter().any(|p| p.contains("jobs_state_id")),
            "{sql}: {plan:?}"
        );
        assert!(
            !plan.iter().any(|p| p.starts_with("SCAN jobs")),
            "{sql}: {plan:?}"
        );
    }
}

#[test]
fn prune_deletes_finished_jobs_and_attempts_past_retention_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("errand.db");
    let store = Store::open(&db, Default::default()).unwrap();
    let day = 86_400_000i64;
    let now = errand::clock::Clock::now_ms(&errand::clock::SystemClock);
    let (old, recent, pending) = store
        .write(|tx| {
            let mut ids = vec![];
            for _ in 0..3 {
                ids.push(jobs::insert(tx, &NewJob::get("acme", "http://h/"), now)?.id);
            }
            for (id, finished) in [(ids[0], now - 10 * day), (ids[1], now - day / 2)] {
                tx.execute("UPDATE jobs SET state = 'running' WHERE id = ?1", [id])?;
                tx.execute(
                    "UPDATE jobs SET state = 'succeeded', finished_at = ?2 WHERE id = ?1",
                    [id, finished],
                )?;
                tx.execute(
                    "INSERT INTO attempts (job_id, attempt, started_at, duration_ms, outcome, request_method, request_url)
                     VALUES (?1, 1, ?2, 1, 'success', 'GET', 'http://h/')",
                    [id, finished],
                )?;
            }
            Ok((ids[0], ids[1], ids[2]))
        })
        .unwrap();
    drop(store);
    std::fs::write(dir.path().join("c.toml"), "[retention]\njobs_days = 1\n").unwrap();
    let (code, out, err) = run_cli(dir.path(), &["--config", "c.toml", "prune"], None);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("pruned 1 finished jobs and 1 attempt rows"),
        "{out}"
    );
    let store = Store::open(&db, Default::default()).unwrap();
    let conn = store.read().unwrap();
    assert!(jobs::find(&conn, old).unwrap().is_none());
    assert!(jobs::find(&conn, recent).unwrap().is_some());
    assert!(
        jobs::find(&conn, pending).unwrap().is_some(),
        "unfinished jobs are never pruned"
    );
    let attempts: i64 = conn
        .query_row("SELECT COUNT(*) FROM attempts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(attempts, 1);
}
