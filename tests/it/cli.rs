//! The command line's contract (SPEC §8): output to a reader that went away, `--json` on
//! every command, one-line usage errors, and the exit codes.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use errand::spec::NewJob;
use errand::store::jobs;

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
