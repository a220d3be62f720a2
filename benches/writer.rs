//! The writer's database work per job, without HTTP or threads: `cargo bench --bench writer`.
//!
//! What one drained job costs the writer thread in SQLite: its share of a batch claim
//! (UPDATE … RETURNING), the guarded outcome UPDATE and the audit INSERT, committed in
//! batches as the engine does (`store::engine::{claim, record}`), on a fresh database in
//! the system's temp directory at `synchronous=NORMAL`. Each phase is also timed alone,
//! so a schema or statement change shows where it saves. Medians of `RUNS` runs.
//!
//! Environment: `JOBS` (default 20000), `BATCH` (default 50), `RUNS` (default 5),
//! `HISTORY` (finished jobs already in the table, default 0), `AUTOCHECKPOINT` (the
//! writer's `wal_autocheckpoint` in pages: 0 by default, since the engine's supervisor
//! checkpoints on its own thread; 1,000, SQLite's default, adds the checkpoints' cost), and
//! `EXPERIMENT`: SQL run once after the schema is in place, to measure a schema change
//! before making it (`EXPERIMENT='DROP INDEX attempts_started' cargo bench --bench writer`).

use std::time::Instant;

use errand::job::{Job, JobResult};
use errand::spec::NewJob;
use errand::store::attempts::{AttemptRecord, Outcome};
use errand::store::engine::{self, Finished, Next};
use errand::store::{jobs, Store, Synchronous};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn job() -> NewJob {
    let mut j = NewJob::get("acme", "http://127.0.0.1:40000/bench");
    j.method = "POST".into();
    j.headers = vec![("Content-Type".into(), "application/json".into())];
    j.body = Some(br#"{"to":"a@example.com","subject":"hello"}"#.to_vec());
    j
}

/// What a worker hands the writer for a 200 to a claimed `job`: the outcome and its
/// audit row.
fn finished(job: &Job, now: i64) -> Finished {
    let headers = vec![
        ("content-type".to_string(), "application/json".to_string()),
        ("content-length".to_string(), "11".to_string()),
        (
            "date".to_string(),
            "Mon, 23 Nov 2026 10:00:00 GMT".to_string(),
        ),
    ];
    let body = br#"{"ok":true}"#.to_vec();
    let result = JobResult {
        status: 200,
        headers: headers.clone(),
        body: body.clone(),
        truncated: false,
    };
    let mut f = Finished::for_job(job, Next::Succeed(result), None, true);
    f.record = Some(AttemptRecord {
        job_id: job.id,
        attempt: job.attempts,
        started_at: now,
        duration_ms: 0,
        outcome: Outcome::Success,
        ambiguous: false,
        request_method: job.method.clone(),
        request_url: job.url.clone(),
        request_headers: vec![
            ("Content-Type".into(), "application/json".into()),
            ("Idempotency-Key".into(), format!("errand-{}", job.id)),
        ],
        request_body: job.body.clone(),
        response_status: Some(200),
        response_headers: Some(headers),
        response_body: Some(body),
        response_truncated: false,
        error: None,
        runner: format!("{}:3", f.lease_owner),
    });
    f
}

/// Microseconds per job for (whole lifecycle, claim alone, record alone).
fn run(jobs_n: usize, batch: usize, history: usize) -> errand::Result<(f64, f64, f64)> {
    let dir = std::env::temp_dir().join(format!("errand-bench-writer-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("writer.db");
    let _ = std::fs::remove_file(&path);
    let store = Store::open(&path, Synchronous::Normal)?;
    if let Ok(sql) = std::env::var("EXPERIMENT") {
        store.writer().execute_batch(&sql)?;
    }
    let owner = "bench:1:1";
    let now = 1_800_000_000_000_i64;
    {
        let mut conn = store.writer();
        let tx = conn.transaction()?;
        for _ in 0..history {
            let id = jobs::insert(&tx, &job(), now)?.id;
            for j in engine::claim(&tx, &[id], owner, now + 60_000, now)? {
                engine::record(&tx, &finished(&j, now), now)?;
            }
        }
        for _ in 0..jobs_n {
            jobs::insert(&tx, &job(), now)?;
        }
        tx.commit()?;
    }
    let mut conn = store.writer();
    // The engine's supervisor checkpoints on its own thread: not the writer's work.
    let pages = env("AUTOCHECKPOINT", 0);
    conn.execute_batch(&format!("PRAGMA wal_autocheckpoint = {pages}"))?;
    let mut claim_time = 0.0;
    let mut record_time = 0.0;
    let start = Instant::now();
    let mut done = 0;
    while done < jobs_n {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let t = Instant::now();
        let ids: Vec<i64> = engine::due_candidates(&tx, now, batch)?
            .into_iter()
            .map(|c| c.id)
            .collect();
        let claimed = engine::claim(&tx, &ids, owner, now + 60_000, now)?;
        claim_time += t.elapsed().as_secs_f64();
        let t = Instant::now();
        for j in &claimed {
            engine::record(&tx, &finished(j, now), now)?;
        }
        record_time += t.elapsed().as_secs_f64();
        tx.commit()?;
        done += claimed.len();
    }
    let total = start.elapsed().as_secs_f64();
    drop(conn);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    let per = |s: f64| s * 1e6 / jobs_n as f64;
    Ok((per(total), per(claim_time), per(record_time)))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> errand::Result<()> {
    let jobs_n = env("JOBS", 20_000);
    let batch = env("BATCH", 50);
    let runs = env("RUNS", 5).max(1);
    let history = env("HISTORY", 0);
    let (mut all, mut claims, mut records) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let (a, c, r) = run(jobs_n, batch, history)?;
        all.push(a);
        claims.push(c);
        records.push(r);
    }
    println!(
        "writer: {jobs_n} jobs, batch {batch}, {history} rows of history, medians of {runs} runs"
    );
    println!(
        "  per job: {:.1} us in all (claim {:.1}, outcome + audit row {:.1}, commit and rest {:.1})",
        median(all.clone()),
        median(claims.clone()),
        median(records.clone()),
        median(all) - median(claims) - median(records)
    );
    Ok(())
}
