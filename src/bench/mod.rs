//! `errand bench`: a self-contained benchmark of the engine (issue #7). It starts a local
//! target ([`target`]), fresh databases in a temporary directory and real engines
//! ([`crate::engine::Engine::start`]), runs each scenario `runs` times and reports medians
//! ([`report`]).
//!
//! Scenarios: `drain` (N jobs enqueued up front, and the raw ureq ceiling against the
//! same target with the same threads), `enqueue` (32 clients through the group-commit
//! writer, and the outbox), `latency` (enqueue to arrival at a steady rate), `history`
//! (the drain with a million rows already stored, and the due-job query on that table),
//! `slow` (a 50 ms target and 256 workers). Peak RSS is always reported.

mod drain;
mod enqueue;
mod latency;
pub mod report;
pub mod target;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Config, Provider};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::spec::NewJob;
use crate::store::{jobs, Store, Synchronous};

pub use enqueue::{enqueue_http, time_outbox};
pub use report::Report;

/// The provider every bench job uses: a fast fixed backoff, so a failed attempt (with
/// `--fail-rate`) is retried in milliseconds, not after Sidekiq's 15 s.
pub const PROVIDER: &str = "bench";

/// One part of the bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// N jobs enqueued up front and drained; the raw ureq ceiling in the same run.
    Drain,
    /// Enqueue throughput: 32 clients through the writer, and the outbox.
    Enqueue,
    /// Enqueue-to-request latency at a steady rate.
    Latency,
    /// The drain with a large history in the table; the due-job query's time.
    History,
    /// A slow target (50 ms) with many workers.
    Slow,
}

impl Scenario {
    /// Every scenario, in the order they run.
    pub const ALL: [Scenario; 5] = [
        Scenario::Drain,
        Scenario::Enqueue,
        Scenario::Latency,
        Scenario::History,
        Scenario::Slow,
    ];

    /// The name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::Drain => "drain",
            Scenario::Enqueue => "enqueue",
            Scenario::Latency => "latency",
            Scenario::History => "history",
            Scenario::Slow => "slow",
        }
    }
}

impl FromStr for Scenario {
    type Err = Error;
    fn from_str(s: &str) -> Result<Scenario> {
        Scenario::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| {
                Error::invalid(
                    "--scenario",
                    format!("{s:?} is not one of drain, enqueue, latency, history, slow"),
                )
            })
    }
}

/// What to run. [`Options::default`] is the full bench of issue #7.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Jobs per drain (N).
    pub jobs: usize,
    /// Engine workers for the drain, latency and history scenarios (and raw threads).
    pub workers: usize,
    /// Repetitions of each scenario; figures are medians.
    pub runs: usize,
    pub scenarios: Vec<Scenario>,
    /// Durability of every scenario; `Full` also runs the drain at `Normal` for the ratio.
    pub synchronous: Synchronous,
    /// Target latency of the drain, latency and history scenarios.
    pub target_latency: Duration,
    /// Share of the target's answers that are 503 (retried by the engine).
    pub fail_rate: f64,
    /// Rows of history (90 % finished, 10 % scheduled in the future).
    pub history_rows: usize,
    /// Concurrent enqueue clients.
    pub enqueue_clients: usize,
    /// Jobs enqueued (and outbox rows drained) per run.
    pub enqueue_jobs: usize,
    /// Steady enqueue rate of the latency scenario (jobs/s), and how many jobs.
    pub latency_rate: u32,
    pub latency_jobs: usize,
    /// The slow scenario: jobs, workers and target latency.
    pub slow_jobs: usize,
    pub slow_workers: usize,
    pub slow_latency: Duration,
    /// Where the temporary databases go (default: the system's temporary directory).
    pub dir: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            jobs: 50_000,
            workers: 16,
            runs: 3,
            scenarios: Scenario::ALL.to_vec(),
            synchronous: Synchronous::Normal,
            target_latency: Duration::ZERO,
            fail_rate: 0.0,
            history_rows: 1_000_000,
            enqueue_clients: 32,
            enqueue_jobs: 50_000,
            latency_rate: 500,
            latency_jobs: 2_500,
            slow_jobs: 20_000,
            slow_workers: 256,
            slow_latency: Duration::from_millis(50),
            dir: None,
        }
    }
}

impl Options {
    /// Refuses values the bench cannot run with, naming the flag.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("--jobs", self.jobs),
            ("--workers", self.workers),
            ("--runs", self.runs),
            ("--enqueue-clients", self.enqueue_clients),
            ("--enqueue-jobs", self.enqueue_jobs),
            ("--latency-jobs", self.latency_jobs),
            ("--slow-jobs", self.slow_jobs),
            ("--slow-workers", self.slow_workers),
        ];
        for (flag, v) in positive {
            if v == 0 {
                return Err(Error::invalid(flag, "must be at least 1"));
            }
        }
        if self.workers > 4096 || self.slow_workers > 4096 {
            return Err(Error::invalid("--workers", "must be at most 4096"));
        }
        if !(0.0..1.0).contains(&self.fail_rate) {
            return Err(Error::invalid(
                "--fail-rate",
                "must be from 0 to below 1 (a share of requests answered 503)",
            ));
        }
        if self.latency_rate == 0 {
            return Err(Error::invalid("--latency-rate", "must be at least 1"));
        }
        if self.scenarios.is_empty() {
            return Err(Error::invalid("--scenario", "name at least one scenario"));
        }
        Ok(())
    }

    fn has(&self, s: Scenario) -> bool {
        self.scenarios.contains(&s)
    }
}

/// A temporary directory of databases, removed on drop.
struct Workspace {
    dir: PathBuf,
    next: AtomicUsize,
}

impl Workspace {
    fn new(parent: Option<&Path>) -> Result<Workspace> {
        let parent = parent.map_or_else(std::env::temp_dir, Path::to_path_buf);
        let dir = parent.join(format!(
            "errand-bench-{}-{}",
            std::process::id(),
            &crate::rand::token()[..8]
        ));
        std::fs::create_dir_all(&dir).map_err(|e| {
            Error::invalid(
                "--dir",
                format!(
                    "cannot create {}: {e}; name a writable directory",
                    dir.display()
                ),
            )
        })?;
        Ok(Workspace {
            dir,
            next: AtomicUsize::new(0),
        })
    }

    /// Opens a new, empty database.
    fn fresh(&self, sync: Synchronous) -> Result<(Arc<Store>, PathBuf)> {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let path = self.dir.join(format!("bench-{n}.db"));
        Ok((Arc::new(Store::open(&path, sync)?), path))
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Deletes a database file and its WAL and shared-memory files.
fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

/// The engine configuration of a bench run.
fn config(db: &Path, workers: usize, sync: Synchronous) -> Config {
    let mut config = Config {
        db: db.to_path_buf(),
        workers,
        synchronous: sync,
        ..Config::default()
    };
    config.providers.insert(
        PROVIDER.to_string(),
        Provider {
            backoff: Some(crate::backoff::Backoff {
                initial_ms: 5,
                multiplier: 1.0,
                max_ms: 5,
            }),
            max_attempts: Some(1000),
            ..Provider::default()
        },
    );
    config
}

/// A bench job: a GET of `url` for `account` through the bench provider.
fn job(account: &str, url: &str) -> NewJob {
    let mut j = NewJob::get(account, url);
    j.provider = PROVIDER.to_string();
    j
}

/// Inserts `n` due jobs for `account` in batched transactions, before any engine runs.
fn enqueue_up_front(store: &Store, account: &str, url: &str, n: usize, now: i64) -> Result<()> {
    let j = job(account, url);
    let mut left = n;
    while left > 0 {
        let batch = left.min(10_000);
        store.write(|tx| {
            for _ in 0..batch {
                jobs::insert(tx, &j, now)?;
            }
            Ok(())
        })?;
        left -= batch;
    }
    Ok(())
}

/// Successful attempts the engine has committed (its in-memory metrics count only what
/// the writer committed, so this is cheap to poll).
fn committed_successes(engine: &Engine) -> u64 {
    engine
        .shared()
        .metrics
        .attempts()
        .iter()
        .filter(|((_, outcome), _)| *outcome == "success")
        .map(|(_, n)| *n)
        .sum()
}

/// Waits until `n` successes are committed; fails after a generous deadline.
fn wait_for_successes(engine: &Engine, n: u64, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120) + Duration::from_millis(n);
    while committed_successes(engine) < n {
        if Instant::now() > deadline {
            return Err(Error::Database {
                path: engine.shared().store.path().display().to_string(),
                reason: format!(
                    "bench {what}: only {} of {n} jobs succeeded before the deadline",
                    committed_successes(engine)
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Checks that every job of `account` succeeded with its audit rows written; returns
/// the number of attempt rows.
fn check_all_succeeded(store: &Store, account: &str, n: usize) -> Result<i64> {
    let (ok, other, attempts) = crate::store::bench::account_counts(&*store.read()?, account)?;
    if ok != n as i64 || other != 0 || attempts < n as i64 {
        return Err(Error::Database {
            path: store.path().display().to_string(),
            reason: format!(
                "bench: account {account}: {ok} of {n} jobs succeeded, {other} did not, {attempts} attempt rows"
            ),
        });
    }
    Ok(attempts)
}

/// The median of `v` (the mean of the middle two for an even count); 0 when empty.
pub fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return 0.0;
    }
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

/// The `p`-th percentile (0..=100) of `v`, nearest rank; 0 when empty.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s: Vec<f64> = v.to_vec();
    if s.is_empty() {
        return 0.0;
    }
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// A line of `/proc/self/status` in KiB (e.g. `VmHWM`), if readable.
fn status_kib(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// CPU time (user + system) this process has used so far, from `/proc/self/stat` (in
/// clock ticks of 10 ms). On a shared machine CPU per job is steadier than wall time.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// CPU time (user + system) of each live thread of this process, by thread id, with its
/// name: `/proc/self/task/*/stat`, in clock ticks of 10 ms.
fn thread_cpu() -> std::collections::HashMap<u64, (String, u64)> {
    let mut out = std::collections::HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_string();
        let mut f = stat[close + 2..].split_whitespace().skip(11);
        let ticks = f.next().and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
            + f.next().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        out.insert(tid, (name, ticks));
    }
    out
}

/// Where a drain's CPU went, per job, by the role of the thread that used it.
fn cpu_split(
    before: &std::collections::HashMap<u64, (String, u64)>,
    after: &std::collections::HashMap<u64, (String, u64)>,
    jobs: usize,
) -> report::CpuSplit {
    let mut split = report::CpuSplit::default();
    for (tid, (name, ticks)) in after {
        let used = ticks - before.get(tid).map_or(0, |b| b.1.min(*ticks));
        let us = used as f64 * 10_000.0 / jobs.max(1) as f64;
        let slot = if name.starts_with("errand-writer") {
            &mut split.writer_us
        } else if name.starts_with("errand-schedul") {
            &mut split.scheduler_us
        } else if name.starts_with("errand-worker") {
            &mut split.workers_us
        } else if name.starts_with("bench-target") {
            &mut split.target_us
        } else {
            &mut split.other_us
        };
        *slot += us;
    }
    split
}

/// Peak resident memory of this process so far (VmHWM), in MiB.
fn peak_rss_mib() -> Option<f64> {
    status_kib("VmHWM").map(|k| k as f64 / 1024.0)
}

/// Resets the peak (VmHWM) to the current RSS, so a later read measures one scenario;
/// false when the kernel does not allow it.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Runs the bench described by `opts`. `progress` receives a line per finished step.
pub fn run(opts: &Options, progress: &mut dyn FnMut(&str)) -> Result<Report> {
    opts.validate()?;
    let ws = Workspace::new(opts.dir.as_deref())?;
    let mut report = Report::new(opts);
    let target = target::Target::start(target::TargetConfig {
        latency: opts.target_latency,
        fail_rate: opts.fail_rate,
    })?;
    // The history table is filled, then the slow scenario (whose peak RSS is the memory
    // figure) runs on it before any drain: a reset of the peak starts from whatever
    // earlier scenarios left with the allocator, and the figure is meant to be the
    // engine's, not the bench's.
    let mut history_table = None;
    if opts.has(Scenario::History) {
        history_table = Some(drain::history_table(opts, &ws, &target, progress)?);
    }
    if opts.has(Scenario::Slow) {
        let reset = reset_peak_rss();
        let store = history_table.as_ref().map(|(s, _)| s);
        let slow = drain::slow(opts, &ws, store, progress)?;
        if reset {
            report.rss.slow_peak_mib = peak_rss_mib();
            report.rss.slow_rows = slow.table_rows;
        }
        report.slow = Some(slow);
    }
    if let Some((store, fill_s)) = history_table.take() {
        report.history = Some(drain::history(
            opts, &ws, &target, &store, fill_s, progress,
        )?);
    }
    if opts.has(Scenario::Drain) {
        report.drain = Some(drain::drain(opts, &ws, &target, progress)?);
        if opts.synchronous == Synchronous::Full {
            report.synchronous_full = Some(drain::full_vs_normal(
                opts,
                &ws,
                &target,
                report.drain.as_ref(),
                progress,
            )?);
        }
    }
    if opts.has(Scenario::Enqueue) {
        report.enqueue = Some(enqueue::enqueue(opts, &ws, &target, progress)?);
    }
    if opts.has(Scenario::Latency) {
        report.latency = Some(latency::latency(opts, &ws, &target, progress)?);
    }
    drop(target);
    report.rss.process_peak_mib = peak_rss_mib();
    report.finish();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_percentile() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
    }

    #[test]
    fn scenario_names_round_trip() {
        for s in Scenario::ALL {
            assert_eq!(s.as_str().parse::<Scenario>().expect("parse"), s);
        }
        assert!("fast".parse::<Scenario>().is_err());
    }
}
