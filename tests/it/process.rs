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
