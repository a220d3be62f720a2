//! Drain scenarios: N jobs enqueued up front and run to `succeeded` by a real engine, the
//! raw ureq ceiling against the same target, the same drain over a large history, and a
//! slow target with many workers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::report::{DrainReport, FullReport, HistoryReport, SlowReport, WriterSplit};
use super::target::{Target, TargetConfig};
use super::{
    check_all_succeeded, config, cpu_time, enqueue_up_front, median, percentile, remove_db,
    wait_for_successes, Options, Workspace,
};
use crate::clock::{Clock, SystemClock};
use crate::engine::metrics::WriterPhase;
use crate::engine::Engine;
use crate::error::Result;
use crate::http_call::{self, Call, Reply};
use crate::store::{engine as store_engine, Store, Synchronous};

/// How long a bench engine may take to finish its last calls at shutdown.
const GRACE: Duration = Duration::from_secs(10);

/// What one drain measured.
struct Drained {
    per_s: f64,
    /// CPU time of the whole process (engine and target) per job, in microseconds.
    cpu_us: f64,
    split: super::report::CpuSplit,
    writer: WriterSplit,
    attempts: i64,
}

/// The writer's time per job by phase over a drain of `n` jobs that took `elapsed`.
fn writer_split(engine: &Engine, n: usize, elapsed: Duration) -> WriterSplit {
    let w = &engine.shared().metrics.writer;
    let secs = w.seconds();
    let per_job = |s: f64| s * 1e6 / n.max(1) as f64;
    WriterSplit {
        us_per_job: secs.iter().map(|s| per_job(*s)).collect(),
        phases: WriterPhase::ALL.iter().map(|p| p.as_str()).collect(),
        jobs_per_batch: n as f64 / w.batches().max(1) as f64,
        busy_share: secs.iter().sum::<f64>() / elapsed.as_secs_f64().max(1e-9),
    }
}

/// One drain on `store`: `n` due jobs of `account` enqueued, then an engine with
/// `workers` started and timed until every job's success is committed.
fn drain_once(
    store: &Arc<Store>,
    sync: Synchronous,
    workers: usize,
    url: &str,
    account: &str,
    n: usize,
) -> Result<Drained> {
    let now = SystemClock.now_ms();
    enqueue_up_front(store, account, url, n, now)?;
    let cfg = Arc::new(config(store.path(), workers, sync));
    let cpu = cpu_time();
    let threads = super::thread_cpu();
    let start = Instant::now();
    let engine = Engine::start(store.clone(), cfg, Arc::new(SystemClock))?;
    let waited = super::wait_for_successes(&engine, n as u64, "drain");
    let elapsed = start.elapsed();
    let cpu = cpu_time().zip(cpu).map(|(b, a)| b.saturating_sub(a));
    let split = super::cpu_split(&threads, &super::thread_cpu(), n);
    let writer = writer_split(&engine, n, elapsed);
    engine.shutdown(GRACE);
    waited?;
    let attempts = check_all_succeeded(store, account, n)?;
    Ok(Drained {
        per_s: n as f64 / elapsed.as_secs_f64(),
        cpu_us: cpu.map_or(0.0, |c| c.as_secs_f64() * 1e6 / n as f64),
        split,
        writer,
        attempts,
    })
}

/// The raw ceiling: `n` requests to `url` from `threads` threads in a bare loop over one
/// agent built like the engine's (same settings, same timeouts). Returns
/// requests/s and CPU microseconds per request.
pub fn raw(url: &str, threads: usize, n: usize) -> (f64, f64) {
    let agent = http_call::agent(threads);
    let call = Call {
        method: "GET".into(),
        url: url.into(),
        headers: Vec::new(),
        body: None,
        timeout_ms: 30_000, // the engine's default call timeout
        body_cap: crate::config::Config::default().response_body_cap,
    };
    let next = AtomicUsize::new(0);
    let cpu = cpu_time();
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    let (reply, _) = http_call::send(&agent, &call);
                    if let Reply::Transport { message, .. } = reply {
                        log::warn!("bench raw: {message}");
                    }
                }
            });
        }
    });
    let per_s = n as f64 / start.elapsed().as_secs_f64();
    let cpu = cpu_time().zip(cpu).map(|(b, a)| b.saturating_sub(a));
    (per_s, cpu.map_or(0.0, |c| c.as_secs_f64() * 1e6 / n as f64))
}

/// Scenario 1 and 2: the drain and the raw ceiling, `runs` times on fresh databases.
pub fn drain(
    opts: &Options,
    ws: &Workspace,
    target: &Target,
    progress: &mut dyn FnMut(&str),
) -> Result<DrainReport> {
    let url = target.url("/drain");
    let mut errand = Vec::new();
    let mut raw_runs = Vec::new();
    let mut cpu = Vec::new();
    let mut raw_cpu = Vec::new();
    let mut splits = Vec::new();
    let mut writers = Vec::new();
    let mut attempts = 0;
    for run in 0..opts.runs {
        let (store, path) = ws.fresh(opts.synchronous)?;
        let account = format!("drain-{run}");
        let d = drain_once(
            &store,
            opts.synchronous,
            opts.workers,
            &url,
            &account,
            opts.jobs,
        )?;
        drop(store);
        remove_db(&path);
        attempts += d.attempts;
        let (r, r_cpu) = raw(&url, opts.workers, opts.jobs);
        progress(&format!(
            "drain run {}: errand {:.0} jobs/s ({:.0} us CPU/job), raw {r:.0} req/s ({r_cpu:.0} us CPU/req)",
            run + 1,
            d.per_s,
            d.cpu_us
        ));
        errand.push(d.per_s);
        cpu.push(d.cpu_us);
        splits.push(d.split);
        writers.push(d.writer);
        raw_runs.push(r);
        raw_cpu.push(r_cpu);
    }
    let ratios: Vec<f64> = errand.iter().zip(&raw_runs).map(|(e, r)| e / r).collect();
    Ok(DrainReport {
        jobs: opts.jobs,
        workers: opts.workers,
        jobs_per_s: median(&errand),
        raw_per_s: median(&raw_runs),
        ratio_to_raw: median(&ratios),
        attempt_rows: attempts,
        cpu_us_per_job: median(&cpu),
        raw_cpu_us_per_req: median(&raw_cpu),
        cpu_split: super::report::CpuSplit::median(&splits),
        writer: WriterSplit::median(&writers),
        runs: errand,
        raw_runs,
    })
}

/// The drain at `synchronous=NORMAL` next to the main one at FULL.
pub fn full_vs_normal(
    opts: &Options,
    ws: &Workspace,
    target: &Target,
    full: Option<&DrainReport>,
    progress: &mut dyn FnMut(&str),
) -> Result<FullReport> {
    let url = target.url("/drain");
    let mut normal = Vec::new();
    for run in 0..opts.runs {
        let (store, path) = ws.fresh(Synchronous::Normal)?;
        let account = format!("normal-{run}");
        let rate = drain_once(
            &store,
            Synchronous::Normal,
            opts.workers,
            &url,
            &account,
            opts.jobs,
        )?
        .per_s;
        drop(store);
        remove_db(&path);
        progress(&format!(
            "drain run {} at NORMAL: {rate:.0} jobs/s",
            run + 1
        ));
        normal.push(rate);
    }
    let normal = median(&normal);
    let full = full.map_or(0.0, |d| d.jobs_per_s);
    Ok(FullReport {
        full_jobs_per_s: full,
        normal_jobs_per_s: normal,
        full_to_normal: if normal > 0.0 { full / normal } else { 0.0 },
    })
}

/// Times the due-job query on `store` (as the scheduler runs it) `samples` times;
/// returns (p50, p99) in microseconds.
fn time_due_query(store: &Store, workers: usize, samples: usize) -> Result<(f64, f64)> {
    let conn = store.read()?;
    let limit = 4 * workers + 16; // the scheduler's limit at full capacity
    let mut us = Vec::with_capacity(samples);
    for _ in 0..samples {
        let now = SystemClock.now_ms();
        let t = Instant::now();
        let c = store_engine::due_candidates(&conn, now, limit)?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box(c);
    }
    Ok((percentile(&us, 50.0), percentile(&us, 99.0)))
}

/// Scenario 5, the table: a database with `history_rows` rows (90 % finished with their
/// audit rows, 10 % scheduled a month ahead). Returns it and the seconds it took.
pub fn history_table(
    opts: &Options,
    ws: &Workspace,
    target: &Target,
    progress: &mut dyn FnMut(&str),
) -> Result<(Arc<Store>, f64)> {
    let url = target.url("/history");
    let (store, _) = ws.fresh(opts.synchronous)?;
    let now = SystemClock.now_ms();
    let start = Instant::now();
    let chunk = 50_000;
    let mut left = opts.history_rows;
    while left > 0 {
        let rows = left.min(chunk);
        let finished = rows * 9 / 10;
        store.write(|tx| {
            crate::store::bench::add_history(
                tx,
                finished,
                rows - finished,
                now + 30 * 86_400_000,
                &url,
                now,
            )
        })?;
        left -= rows;
    }
    let fill_s = start.elapsed().as_secs_f64();
    progress(&format!(
        "history: {} rows written in {fill_s:.1} s",
        opts.history_rows
    ));
    Ok((store, fill_s))
}

/// Scenario 5, the drains: on `store` (the history table, filled in `fill_s`), the drain
/// `runs` times, each paired with the same drain on an empty table, and the due-job
/// query timed with N jobs due and with none.
pub fn history(
    opts: &Options,
    ws: &Workspace,
    target: &Target,
    store: &Arc<Store>,
    fill_s: f64,
    progress: &mut dyn FnMut(&str),
) -> Result<HistoryReport> {
    let url = target.url("/history");
    let mut runs = Vec::new();
    let mut empty_runs = Vec::new();
    let mut ratios = Vec::new();
    let mut due_busy = Vec::new();
    let mut history_drain = |run: usize| -> Result<f64> {
        let account = format!("history-drain-{run}");
        enqueue_up_front(store, &account, &url, opts.jobs, SystemClock.now_ms())?;
        // The due query is timed with the jobs waiting, then the same drain as drain_once.
        due_busy.push(time_due_query(store, opts.workers, 200)?);
        let cfg = Arc::new(config(store.path(), opts.workers, opts.synchronous));
        let t = Instant::now();
        let engine = Engine::start(store.clone(), cfg, Arc::new(SystemClock))?;
        let waited = wait_for_successes(&engine, opts.jobs as u64, "history drain");
        let elapsed = t.elapsed();
        engine.shutdown(GRACE);
        waited?;
        check_all_succeeded(store, &account, opts.jobs)?;
        Ok(opts.jobs as f64 / elapsed.as_secs_f64())
    };
    let empty_drain = |run: usize| -> Result<f64> {
        let (fresh, path) = ws.fresh(opts.synchronous)?;
        let account = format!("history-empty-{run}");
        let d = drain_once(
            &fresh,
            opts.synchronous,
            opts.workers,
            &url,
            &account,
            opts.jobs,
        );
        drop(fresh);
        remove_db(&path);
        Ok(d?.per_s)
    };
    for run in 0..opts.runs {
        // Each history drain is paired with the same drain on an empty table, run next
        // to it (first after, then before, in turn): VM noise moves a drain's rate by a
        // fifth between minutes, so the comparison is made pair by pair.
        let (rate, empty) = if run % 2 == 0 {
            let rate = history_drain(run)?;
            (rate, empty_drain(run)?)
        } else {
            let empty = empty_drain(run)?;
            (history_drain(run)?, empty)
        };
        progress(&format!(
            "history drain run {}: {rate:.0} jobs/s; on an empty table next to it: {empty:.0} jobs/s",
            run + 1
        ));
        runs.push(rate);
        empty_runs.push(empty);
        ratios.push(rate / empty.max(1e-9));
    }
    let (idle_p50, idle_p99) = time_due_query(store, opts.workers, 200)?;
    let jobs_per_s = median(&runs);
    Ok(HistoryReport {
        rows: opts.history_rows,
        fill_s,
        jobs_per_s,
        runs,
        empty_jobs_per_s: median(&empty_runs),
        empty_runs,
        to_empty: median(&ratios),
        due_query_busy_p50_us: median(&due_busy.iter().map(|d| d.0).collect::<Vec<_>>()),
        due_query_busy_p99_us: median(&due_busy.iter().map(|d| d.1).collect::<Vec<_>>()),
        due_query_idle_p50_us: idle_p50,
        due_query_idle_p99_us: idle_p99,
    })
}

/// Scenario 6: a target answering after `slow_latency` and `slow_workers` workers,
/// against the ideal workers / latency. Runs on the history database when there is one
/// (so the peak RSS read after it is "with the history and 256 workers").
pub fn slow(
    opts: &Options,
    ws: &Workspace,
    history: Option<&Arc<Store>>,
    progress: &mut dyn FnMut(&str),
) -> Result<SlowReport> {
    let target = Target::start(TargetConfig {
        latency: opts.slow_latency,
        fail_rate: 0.0,
    })?;
    let url = target.url("/slow");
    let fresh;
    let (store, table_rows) = match history {
        Some(s) => (s, opts.history_rows),
        None => {
            fresh = ws.fresh(opts.synchronous)?;
            (&fresh.0, 0)
        }
    };
    let mut runs = Vec::new();
    for run in 0..opts.runs {
        let account = format!("slow-{run}");
        let rate = drain_once(
            store,
            opts.synchronous,
            opts.slow_workers,
            &url,
            &account,
            opts.slow_jobs,
        )?
        .per_s;
        progress(&format!("slow run {}: {rate:.0} jobs/s", run + 1));
        runs.push(rate);
    }
    let latency_s = opts.slow_latency.as_secs_f64();
    let ideal = if latency_s > 0.0 {
        opts.slow_workers as f64 / latency_s
    } else {
        0.0
    };
    let jobs_per_s = median(&runs);
    Ok(SlowReport {
        jobs: opts.slow_jobs,
        workers: opts.slow_workers,
        latency_ms: opts.slow_latency.as_millis() as u64,
        jobs_per_s,
        ideal_jobs_per_s: ideal,
        to_ideal: if ideal > 0.0 { jobs_per_s / ideal } else { 0.0 },
        table_rows,
        runs,
    })
}
