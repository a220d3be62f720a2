//! The command line's contract (SPEC §8): output to a reader that went away, `--json` on
//! every command, one-line usage errors, and the exit codes.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use errand::job::JobState;
use errand::spec::NewJob;
use errand::store::jobs;
use serde_json::{json, Value};

use crate::support::*;

/// Runs `errand ARGS` in `dir`, reads one line of its output and closes the pipe.
/// Returns (exit code, the line, stderr).
fn run_cli_reading_one_line(dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let mut child = Command::new(errand_bin())
        .args(args)
        .current_dir(dir)
        .env_remove("ERRAND_DB")
        .env_remove("ERRAND_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn errand");
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The reader is dropped: the read end closes with most of the output unread.
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        first,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn output_to_a_pipe_closed_early_exits_zero_without_a_panic() {
    let env = TestEnv::new();
    // Far more output than a pipe buffers (64 KiB on Linux), in either format.
    env.store
        .write(|tx| {
            for i in 0..2000 {
                jobs::insert(
                    tx,
                    &NewJob::get("acme", &format!("http://127.0.0.1:9/{i}")),
                    0,
                )?;
            }
            Ok(())
        })
        .unwrap();
    for args in [
        &["jobs", "--json", "--limit", "2000"][..],
        &["jobs", "--limit", "2000"][..],
    ] {
        let (code, first, err) = run_cli_reading_one_line(env.dir.path(), args);
        assert!(!first.is_empty(), "{args:?}: no output");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(code, 0, "{args:?}: {err}");
        assert_eq!(err, "", "{args:?}");
    }
}

#[test]
fn serve_on_a_port_in_use_fails_with_exit_1_not_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let (code, _, err) = run_cli(
        dir.path(),
        &["serve", "--db", "e.db", "--listen", &listen],
        None,
    );
    assert_eq!(code, 1, "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("errand:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        errors[0].contains("--listen") && errors[0].contains(&listen),
        "{err}"
    );
    assert!(errors[0].contains("choose another port"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn usage_errors_are_one_line_with_exit_2_and_help_still_prints() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["enqueue", "--url", "http://127.0.0.1:9/x"],
            "see errand enqueue --help",
        ),
        (&["frob"], "see errand --help"),
        (
            &["credentials", "set", "acct9"],
            "see errand credentials set --help",
        ),
        (
            &[
                "enqueue",
                "--account",
                "a",
                "--url",
                "http://127.0.0.1:9/x",
                "--json",
                "{}",
                "--data",
                "x",
            ],
            "see errand enqueue --help",
        ),
        (&["job"], "see errand job --help"),
        (&["jobs", "--limit", "many"], "see errand jobs --help"),
        (&[], "see errand --help"),
    ];
    for (args, hint) in cases {
        let (code, out, err) = run_cli(dir.path(), args, None);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(out, "", "{args:?}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(lines[0].starts_with("errand: "), "{args:?}: {err}");
        assert!(lines[0].ends_with(hint), "{args:?}: {err}");
    }
    for args in [&["--help"][..], &["enqueue", "--help"], &["--version"]] {
        let (code, out, err) = run_cli(dir.path(), args, None);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(out.contains("errand"), "{args:?}: {out}");
        assert_eq!(err, "", "{args:?}");
    }
}

#[test]
fn json_on_every_command_prints_one_object_and_errors_stay_one_line() {
    let env = TestEnv::new();
    let dir = env.dir.path();
    let mut draft = NewJob::get("acme", "http://127.0.0.1:9/x");
    draft.state = JobState::Draft;
    let id = env.insert(&draft).to_string();
    let id = id.as_str();
    // (arguments, standard input, fields the object must have)
    let cases: &[(&[&str], Option<&str>, Value)] = &[
        (
            &["job", "approve", id, "--json"],
            None,
            json!({"id": id, "state": "approved"}),
        ),
        (
            &["job", "cancel", id, "--json"],
            None,
            json!({"id": id, "state": "canceled"}),
        ),
        (
            &["job", "reopen", id, "--json"],
            None,
            json!({"id": id, "state": "draft"}),
        ),
        (
            &["job", "retry", id, "--json"],
            None,
            json!({"id": id, "state": "approved", "account": "acme"}),
        ),
        (
            &["pause", "--json"],
            None,
            json!({"paused": true, "account": null}),
        ),
        (
            &["resume", "--json"],
            None,
            json!({"paused": false, "account": null}),
        ),
        (
            &["pause", "--account", "acme", "--json"],
            None,
            json!({"account": "acme", "status": "active", "paused": true}),
        ),
        (
            &["resume", "--account", "acme", "--json"],
            None,
            json!({"account": "acme", "paused": false}),
        ),
        (
            &["credentials", "set", "acme", "pm", "--json"],
            Some("tok-SECRET-2\n"),
            json!({"account": "acme", "provider": "pm", "header": "Authorization"}),
        ),
        (
            &["prune", "--json"],
            None,
            json!({"pruned_attempts": 0, "pruned_jobs": 0}),
        ),
        (
            &["backup", "copy.db", "--json"],
            None,
            json!({"path": "copy.db"}),
        ),
        (
            &["check", "--json"],
            None,
            json!({"ok": true, "problems": []}),
        ),
    ];
    for (args, stdin, want) in cases {
        let (code, out, err) = run_cli(dir, args, *stdin);
        assert_eq!(code, 0, "{args:?}: {err}");
        let v: Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"));
        assert!(v.is_object(), "{args:?}: {out}");
        for (k, w) in want.as_object().unwrap() {
            assert_eq!(&v[k], w, "{args:?}: {k} in {out}");
        }
        assert!(!out.contains("SECRET"), "{args:?}: {out}");
    }
    let (code, out, _) = run_cli(dir, &["backup", "copy2.db", "--json"], None);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v["bytes"].as_u64().unwrap() > 0, "{out}");
    // A refused action is still a failure with one line on stderr, nothing on stdout.
    let (code, out, err) = run_cli(dir, &["job", "reopen", id, "--json"], None);
    assert_eq!(code, 1, "{err}");
    assert_eq!(out, "");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("approved"), "{err}");
}

#[test]
fn check_json_prints_the_problems_then_fails_with_exit_1() {
    let env = TestEnv::new();
    // An index whose definition no longer matches its entries: integrity_check reports
    // the rows missing from it.
    let conn = rusqlite::Connection::open(env.db_path()).unwrap();
    conn.execute_batch(
        "CREATE TABLE t (a INTEGER, b INTEGER);
         CREATE INDEX t_a ON t (a);
         INSERT INTO t VALUES (1, 10), (2, 20);
         PRAGMA writable_schema = ON;
         UPDATE sqlite_schema SET sql = 'CREATE INDEX t_a ON t (b)' WHERE name = 't_a';
         PRAGMA writable_schema = OFF;",
    )
    .unwrap();
    drop(conn);
    let (code, out, err) = run_cli(env.dir.path(), &["check", "--json"], None);
    assert_eq!(code, 1, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["ok"], false, "{out}");
    assert!(!v["problems"].as_array().unwrap().is_empty(), "{out}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("integrity check failed"), "{err}");
}

#[test]
fn reading_commands_refuse_a_db_path_with_no_database_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["--db", "typo.db", "jobs"],
        vec!["--db", "typo.db", "job", "show", "1"],
        vec!["--db", "typo.db", "stats"],
    ] {
        let (code, _, err) = run_cli(dir.path(), &args, None);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains("typo.db") && err.contains("--db"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            !dir.path().join("typo.db").exists(),
            "{args:?} created a database"
        );
    }
    // A configuration can be checked before the first start, without creating anything.
    let (code, out, err) = run_cli(dir.path(), &["--db", "typo.db", "check"], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("no database"), "{out}");
    assert!(!dir.path().join("typo.db").exists());
    // Enqueueing before the first serve still creates the database.
    let (code, _, err) = run_cli(
        dir.path(),
        &[
            "--db",
            "new.db",
            "enqueue",
            "--account",
            "a",
            "--url",
            "http://x.test/",
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(dir.path().join("new.db").exists());
}
