//! Scenario 4: latency from enqueue to the target receiving the request, at a steady
//! rate. Each job is enqueued through the engine's writer (committed before the call
//! returns, then the scheduler is woken, as the API does) and asks for `/mark/<i>`; the
//! target notes when request `i` arrives.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::report::LatencyReport;
use super::target::Target;
use super::{config, job, median, percentile, remove_db, wait_for_successes, Options, Workspace};
use crate::clock::SystemClock;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::store::jobs;

/// One paced run: returns every job's latency in milliseconds.
fn once(opts: &Options, ws: &Workspace, target: &Target, run: usize) -> Result<Vec<f64>> {
    let (store, path) = ws.fresh(opts.synchronous)?;
    let cfg = Arc::new(config(&path, opts.workers, opts.synchronous));
    let engine = Engine::start(store.clone(), cfg, Arc::new(SystemClock))?;
    let shared = engine.shared().clone();
    let n = opts.latency_jobs;
    let interval = Duration::from_secs_f64(1.0 / f64::from(opts.latency_rate));
    let mut sent = Vec::with_capacity(n);
    target.take_marks();
    let start = Instant::now();
    let mut failed = None;
    for i in 0..n {
        let due = start + interval * i as u32;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let j = job(
            &format!("latency-{run}"),
            &target.url(&format!("/mark/{i}")),
        );
        let t0 = Instant::now();
        let at = shared.now();
        if let Err(e) = shared.writer.call(move |c| jobs::insert(c, &j, at)) {
            failed = Some(e);
            break;
        }
        shared.wake();
        sent.push(t0);
    }
    let waited = match failed {
        Some(e) => Err(e),
        None => wait_for_successes(&engine, n as u64, "latency"),
    };
    engine.shutdown(Duration::from_secs(10));
    drop(shared);
    waited?;
    super::check_all_succeeded(&store, &format!("latency-{run}"), n)?;
    drop(store);
    remove_db(&path);
    let marks = target.take_marks();
    let mut out = Vec::with_capacity(n);
    for (i, at) in marks {
        if let Some(t0) = sent.get(i) {
            out.push(at.saturating_duration_since(*t0).as_secs_f64() * 1000.0);
        }
    }
    if out.len() < n {
        return Err(Error::invalid(
            "latency",
            format!("the target saw {} of {n} requests", out.len()),
        ));
    }
    Ok(out)
}

/// Scenario 4, `runs` times; the report holds the medians of each run's percentiles.
pub fn latency(
    opts: &Options,
    ws: &Workspace,
    target: &Target,
    progress: &mut dyn FnMut(&str),
) -> Result<LatencyReport> {
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    let mut max = Vec::new();
    for run in 0..opts.runs {
        let ms = once(opts, ws, target, run)?;
        let (a, b, c) = (
            percentile(&ms, 50.0),
            percentile(&ms, 99.0),
            percentile(&ms, 100.0),
        );
        progress(&format!(
            "latency run {}: p50 {a:.2} ms, p99 {b:.2} ms, max {c:.2} ms",
            run + 1
        ));
        p50.push(a);
        p99.push(b);
        max.push(c);
    }
    Ok(LatencyReport {
        rate: opts.latency_rate,
        jobs: opts.latency_jobs,
        p50_ms: median(&p50),
        p99_ms: median(&p99),
        max_ms: median(&max),
        p50_runs: p50,
        p99_runs: p99,
    })
}
