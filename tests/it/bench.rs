//! `errand bench` in a tiny configuration: the report is complete and every job
//! succeeded. Correctness only: no timing is asserted (the machine may be busy).

use std::time::Duration;

use errand::bench::{self, Options, Scenario};
use errand::store::Synchronous;

use crate::support::run_cli;

fn tiny(dir: &std::path::Path) -> Options {
    Options {
        jobs: 200,
        workers: 4,
        runs: 1,
        scenarios: Scenario::ALL.to_vec(),
        synchronous: Synchronous::Normal,
        target_latency: Duration::ZERO,
        fail_rate: 0.0,
        history_rows: 2_000,
        enqueue_clients: 8,
        enqueue_jobs: 200,
        latency_rate: 500,
        latency_jobs: 50,
        slow_jobs: 200,
        slow_workers: 16,
        slow_latency: Duration::from_millis(5),
        dir: Some(dir.to_path_buf()),
    }
}

fn number(v: &serde_json::Value, pointer: &str) -> f64 {
    v.pointer(pointer)
        .and_then(serde_json::Value::as_f64)
        .unwrap_or_else(|| panic!("{pointer} missing or not a number in {v:#}"))
}

#[test]
fn bench_report_is_complete_and_every_job_succeeded() {
    let dir = tempfile::tempdir().unwrap();
    let report = bench::run(&tiny(dir.path()), &mut |_| {}).expect("bench");
    assert!(report.all_succeeded);
    let v = report.to_json();
    for p in [
        "/drain/jobs_per_s",
        "/drain/raw_per_s",
        "/drain/ratio_to_raw",
        "/enqueue/writer_jobs_per_s",
        "/enqueue/outbox_rows_per_s",
        "/enqueue/http_jobs_per_s",
        "/latency/p50_ms",
        "/latency/p99_ms",
        "/history/jobs_per_s",
        "/history/to_empty",
        "/history/empty_jobs_per_s",
        "/history/due_query_busy_p50_us",
        "/history/due_query_idle_p50_us",
        "/slow/jobs_per_s",
        "/slow/ideal_jobs_per_s",
        "/slow/to_ideal",
        "/rss/process_peak_mib",
    ] {
        assert!(number(&v, p) >= 0.0, "{p}");
    }
    // Each history drain has its empty-table drain, and the ratio is theirs.
    let h = |k: &str| v["history"][k].as_array().map_or(0, Vec::len);
    assert_eq!((h("runs"), h("empty_runs")), (1, 1));
    assert!(number(&v, "/history/empty_jobs_per_s") > 0.0);
    // The writer's time is split by phase, and it did all the drain's writing.
    let phases = v["drain"]["writer"]["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 6, "{v:#}");
    assert!(
        number(&v, "/drain/writer/us_per_job/1") > 0.0,
        "outcomes phase"
    );
    let busy = number(&v, "/drain/writer/busy_share");
    assert!(busy > 0.0 && busy <= 1.05, "busy share {busy}");
    assert!(number(&v, "/drain/writer/jobs_per_batch") >= 1.0);
    assert!(report.table().contains("writer wall time per job"));
    // Every drained job wrote its audit row.
    assert!(number(&v, "/drain/attempt_rows") >= 200.0);
    assert_eq!(number(&v, "/slow/table_rows"), 2_000.0);
    assert!(number(&v, "/enqueue/http_jobs_per_s") > 0.0);
    assert!(!v["checks"].as_array().unwrap().is_empty());
    assert!(report
        .table()
        .contains("every job succeeded with its audit rows: yes"));
    // The temporary databases are gone.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn bench_command_prints_json_and_compares_full_with_normal() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (code, out, err) = run_cli(
        dir.path(),
        &[
            "bench",
            "--json",
            "-n",
            "100",
            "--workers",
            "4",
            "--runs",
            "1",
            "--scenario",
            "drain",
            "--synchronous",
            "full",
            "--dir",
            d,
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["all_succeeded"], true);
    assert!(number(&v, "/synchronous_full/full_to_normal") > 0.0);
    assert!(v["latency"].is_null());
}

#[test]
fn bench_refuses_a_bad_flag_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run_cli(dir.path(), &["bench", "--scenario", "fast"], None);
    assert_eq!(code, 2);
    assert!(err.contains("--scenario"), "{err}");
}
