//! The bench's figures: a JSON document (`--json`) and a table for people, with each
//! figure set against its target from issue #7.

use serde::Serialize;

use super::Options;
use crate::store::Synchronous;

/// The machine the figures were taken on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_mib: u64,
    /// `/proc/loadavg` before and after: a busy machine makes every figure lower.
    pub load_before: String,
    pub load_after: String,
}

impl Machine {
    fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".to_string(), |(_, v)| v.trim().to_string());
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|k| k.parse::<u64>().ok())
            })
            .map_or(0, |k| k / 1024);
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            memory_mib,
            load_before: load(),
            load_after: String::new(),
        }
    }
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The settings of the run, as given.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub jobs: usize,
    pub workers: usize,
    pub runs: usize,
    pub scenarios: Vec<&'static str>,
    pub synchronous: &'static str,
    pub target_latency_ms: f64,
    pub fail_rate: f64,
    pub history_rows: usize,
}

/// Scenarios 1 and 2.
#[derive(Debug, Clone, Serialize)]
pub struct DrainReport {
    pub jobs: usize,
    pub workers: usize,
    pub jobs_per_s: f64,
    /// The bare ureq loop: same requests, same threads, same target.
    pub raw_per_s: f64,
    pub ratio_to_raw: f64,
    /// Audit rows written over all runs (at least jobs × runs).
    pub attempt_rows: i64,
    /// CPU time of the whole process (engine and in-process target) per job, and per raw
    /// request: steadier than jobs/s when the machine is shared.
    pub cpu_us_per_job: f64,
    pub raw_cpu_us_per_req: f64,
    /// That CPU per job by thread (medians over runs): where a drain's time goes.
    pub cpu_split: CpuSplit,
    /// The writer thread's wall time per job by phase (medians over runs): the one
    /// thread every job passes through, so what limits the drain when it is busy.
    pub writer: WriterSplit,
    pub runs: Vec<f64>,
    pub raw_runs: Vec<f64>,
}

/// CPU microseconds per job, by the role of the thread that used them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuSplit {
    pub writer_us: f64,
    pub scheduler_us: f64,
    pub workers_us: f64,
    /// The in-process target's threads.
    pub target_us: f64,
    /// Everything else (the supervisor, the checkpointer, the bench itself).
    pub other_us: f64,
}

impl CpuSplit {
    /// The median of each field over `runs`.
    pub fn median(runs: &[CpuSplit]) -> CpuSplit {
        let m = |f: fn(&CpuSplit) -> f64| super::median(&runs.iter().map(f).collect::<Vec<_>>());
        CpuSplit {
            writer_us: m(|c| c.writer_us),
            scheduler_us: m(|c| c.scheduler_us),
            workers_us: m(|c| c.workers_us),
            target_us: m(|c| c.target_us),
            other_us: m(|c| c.other_us),
        }
    }
}

/// The writer thread's wall time per job, by phase of its batches, and the share of the
/// drain it was busy (from the engine's `errand_writer_seconds_total`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct WriterSplit {
    /// Microseconds per job in each phase, in the order of `phases`.
    pub us_per_job: Vec<f64>,
    pub phases: Vec<&'static str>,
    /// Jobs per transaction.
    pub jobs_per_batch: f64,
    /// Busy wall time over the drain's wall time (1.0: never idle).
    pub busy_share: f64,
}

impl WriterSplit {
    /// The median of each field over `runs`.
    pub fn median(runs: &[WriterSplit]) -> WriterSplit {
        let m = |f: &dyn Fn(&WriterSplit) -> f64| {
            super::median(&runs.iter().map(f).collect::<Vec<_>>())
        };
        let phases = runs.first().map(|r| r.phases.clone()).unwrap_or_default();
        WriterSplit {
            us_per_job: (0..phases.len())
                .map(|i| m(&|r: &WriterSplit| r.us_per_job.get(i).copied().unwrap_or(0.0)))
                .collect(),
            phases,
            jobs_per_batch: m(&|r: &WriterSplit| r.jobs_per_batch),
            busy_share: m(&|r: &WriterSplit| r.busy_share),
        }
    }

    /// `outcomes 12.0, claim 6.1, ... us`, phases under 0.05 us left out.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .phases
            .iter()
            .zip(&self.us_per_job)
            .filter(|(_, us)| **us >= 0.05)
            .map(|(p, us)| format!("{p} {us:.1}"))
            .collect();
        format!(
            "{} us; busy {:.0} % of the drain, {:.0} jobs per transaction",
            parts.join(", "),
            self.busy_share * 100.0,
            self.jobs_per_batch
        )
    }
}

/// The drain at FULL (the main figure with `--synchronous full`) against NORMAL.
#[derive(Debug, Clone, Serialize)]
pub struct FullReport {
    pub full_jobs_per_s: f64,
    pub normal_jobs_per_s: f64,
    pub full_to_normal: f64,
}

/// Scenario 3.
#[derive(Debug, Clone, Serialize)]
pub struct EnqueueReport {
    pub clients: usize,
    pub jobs: usize,
    /// Straight into the engine's group-commit writer (no HTTP).
    pub writer_jobs_per_s: f64,
    pub writer_runs: Vec<f64>,
    /// Through `POST /v1/jobs` of an in-process server.
    pub http_jobs_per_s: f64,
    pub http_runs: Vec<f64>,
    /// errand's outbox drainer.
    pub outbox_rows_per_s: f64,
    pub outbox_runs: Vec<f64>,
    pub note: String,
}

/// Scenario 4.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyReport {
    pub rate: u32,
    pub jobs: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub p50_runs: Vec<f64>,
    pub p99_runs: Vec<f64>,
}

/// Scenario 5.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryReport {
    pub rows: usize,
    pub fill_s: f64,
    pub jobs_per_s: f64,
    pub runs: Vec<f64>,
    /// Each history drain is paired with the same drain on an empty table run next to it, so
    /// the two see the same machine: the ratio is the median of those pairs' ratios.
    pub empty_jobs_per_s: f64,
    pub empty_runs: Vec<f64>,
    pub to_empty: f64,
    /// The due-job query with N jobs due (what a busy scheduler runs).
    pub due_query_busy_p50_us: f64,
    pub due_query_busy_p99_us: f64,
    /// With none due (the history's future jobs only).
    pub due_query_idle_p50_us: f64,
    pub due_query_idle_p99_us: f64,
}

/// Scenario 6.
#[derive(Debug, Clone, Serialize)]
pub struct SlowReport {
    pub jobs: usize,
    pub workers: usize,
    pub latency_ms: u64,
    pub jobs_per_s: f64,
    pub ideal_jobs_per_s: f64,
    pub to_ideal: f64,
    /// Rows of history in the table it ran on (0: a fresh database).
    pub table_rows: usize,
    pub runs: Vec<f64>,
}

/// Scenario 7.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RssReport {
    /// VmHWM of the whole bench process (target, harness and engines together).
    pub process_peak_mib: Option<f64>,
    /// VmHWM reset before the slow scenario and read after it: the engine with
    /// `slow_workers` workers (and the in-process target's threads).
    pub slow_peak_mib: Option<f64>,
    /// Rows in the table during that measurement.
    pub slow_rows: usize,
}

/// One figure against its target.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub what: String,
    pub target: String,
    pub measured: String,
    pub met: bool,
}

/// Everything `errand bench` found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub settings: Settings,
    pub drain: Option<DrainReport>,
    pub synchronous_full: Option<FullReport>,
    pub enqueue: Option<EnqueueReport>,
    pub latency: Option<LatencyReport>,
    pub history: Option<HistoryReport>,
    pub slow: Option<SlowReport>,
    pub rss: RssReport,
    /// Every scenario's jobs all succeeded with their audit rows (a run that did not
    /// ends the bench with an error instead).
    pub all_succeeded: bool,
    pub checks: Vec<Check>,
}

impl Report {
    pub(super) fn new(opts: &Options) -> Report {
        Report {
            machine: Machine::read(),
            settings: Settings {
                jobs: opts.jobs,
                workers: opts.workers,
                runs: opts.runs,
                scenarios: opts.scenarios.iter().map(|s| s.as_str()).collect(),
                synchronous: match opts.synchronous {
                    Synchronous::Normal => "normal",
                    Synchronous::Full => "full",
                },
                target_latency_ms: opts.target_latency.as_secs_f64() * 1000.0,
                fail_rate: opts.fail_rate,
                history_rows: opts.history_rows,
            },
            drain: None,
            synchronous_full: None,
            enqueue: None,
            latency: None,
            history: None,
            slow: None,
            rss: RssReport::default(),
            all_succeeded: false,
            checks: Vec::new(),
        }
    }

    /// Records the load after the run and sets each figure against its target.
    pub(super) fn finish(&mut self) {
        self.machine.load_after = load();
        self.all_succeeded = true;
        let mut checks = Vec::new();
        let mut check = |what: &str, target: &str, measured: String, met: bool| {
            checks.push(Check {
                what: what.into(),
                target: target.into(),
                measured,
                met,
            })
        };
        if let Some(d) = &self.drain {
            check(
                "drain",
                ">= 15000 jobs/s",
                format!("{:.0} jobs/s", d.jobs_per_s),
                d.jobs_per_s >= 15_000.0,
            );
            check(
                "drain / raw ureq",
                ">= 0.50",
                format!("{:.2}", d.ratio_to_raw),
                d.ratio_to_raw >= 0.5,
            );
        }
        if let Some(f) = &self.synchronous_full {
            check(
                "FULL / NORMAL drain",
                ">= 0.75",
                format!("{:.2}", f.full_to_normal),
                f.full_to_normal >= 0.75,
            );
        }
        if let Some(e) = &self.enqueue {
            check(
                "enqueue via POST /v1/jobs",
                ">= 10000 jobs/s",
                format!("{:.0} jobs/s", e.http_jobs_per_s),
                e.http_jobs_per_s >= 10_000.0,
            );
            check(
                "outbox drain",
                ">= 30000 rows/s",
                format!("{:.0} rows/s", e.outbox_rows_per_s),
                e.outbox_rows_per_s >= 30_000.0,
            );
        }
        if let Some(l) = &self.latency {
            check(
                "latency p50",
                "<= 1 ms",
                format!("{:.2} ms", l.p50_ms),
                l.p50_ms <= 1.0,
            );
            check(
                "latency p99",
                "<= 10 ms",
                format!("{:.2} ms", l.p99_ms),
                l.p99_ms <= 10.0,
            );
        }
        if let Some(h) = &self.history {
            {
                let r = h.to_empty;
                check(
                    "history drain / empty",
                    ">= 0.90",
                    format!("{r:.2}"),
                    r >= 0.9,
                );
            }
            let worst = h.due_query_busy_p50_us.max(h.due_query_idle_p50_us);
            check(
                "due query (p50)",
                "< 1 ms",
                format!("{:.0} us", worst),
                worst < 1000.0,
            );
        }
        if let Some(s) = &self.slow {
            check(
                "slow target / ideal",
                ">= 0.90",
                format!(
                    "{:.2} ({:.0} of {:.0} jobs/s)",
                    s.to_ideal, s.jobs_per_s, s.ideal_jobs_per_s
                ),
                s.to_ideal >= 0.9,
            );
        }
        if let Some(p) = self.rss.slow_peak_mib {
            check(
                "peak RSS (slow scenario)",
                "<= 64 MiB",
                format!("{p:.1} MiB ({} rows)", self.rss.slow_rows),
                p <= 64.0,
            );
        }
        self.checks = checks;
    }

    /// The report as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    /// The report as a table for people.
    pub fn table(&self) -> String {
        let m = &self.machine;
        let s = &self.settings;
        let mut out = format!(
            "errand bench: {} CPUs ({}), {} MiB; load {} -> {}\n\
             {} jobs, {} workers, medians of {} runs, synchronous={}, target latency {} ms, fail rate {}\n\n",
            m.cpus, m.cpu_model, m.memory_mib, m.load_before, m.load_after,
            s.jobs, s.workers, s.runs, s.synchronous, s.target_latency_ms, s.fail_rate
        );
        let mut row = |k: &str, v: String| out.push_str(&format!("  {k:<44} {v}\n"));
        if let Some(d) = &self.drain {
            row(
                "1. drain",
                format!("{:.0} jobs/s  (runs {})", d.jobs_per_s, list(&d.runs)),
            );
            row(
                "2. raw ureq ceiling",
                format!("{:.0} req/s  (runs {})", d.raw_per_s, list(&d.raw_runs)),
            );
            row("   errand / raw", format!("{:.2}", d.ratio_to_raw));
            row(
                "   CPU per job / per raw request",
                format!(
                    "{:.0} us / {:.0} us (whole process, target included)",
                    d.cpu_us_per_job, d.raw_cpu_us_per_req
                ),
            );
            let c = &d.cpu_split;
            row(
                "   CPU per job by thread",
                format!(
                    "writer {:.0}, scheduler {:.0}, workers {:.0}, target {:.0}, other {:.0} us",
                    c.writer_us, c.scheduler_us, c.workers_us, c.target_us, c.other_us
                ),
            );
            row("   writer wall time per job", d.writer.describe());
        }
        if let Some(f) = &self.synchronous_full {
            row(
                "   drain FULL / NORMAL",
                format!(
                    "{:.2}  ({:.0} / {:.0} jobs/s)",
                    f.full_to_normal, f.full_jobs_per_s, f.normal_jobs_per_s
                ),
            );
        }
        if let Some(e) = &self.enqueue {
            row(
                &format!("3. enqueue via POST /v1/jobs, {} clients", e.clients),
                format!("{:.0} jobs/s", e.http_jobs_per_s),
            );
            row(
                "   same clients straight into the writer",
                format!("{:.0} jobs/s", e.writer_jobs_per_s),
            );
            row(
                "   outbox drain",
                format!("{:.0} rows/s", e.outbox_rows_per_s),
            );
        }
        if let Some(l) = &self.latency {
            row(
                &format!("4. enqueue -> request at {}/s", l.rate),
                format!(
                    "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                    l.p50_ms, l.p99_ms, l.max_ms
                ),
            );
        }
        if let Some(h) = &self.history {
            row(
                &format!("5. drain over {} rows of history", h.rows),
                format!(
                    "{:.0} jobs/s  (runs {}; {:.2} of the empty-table drain next to each: {})",
                    h.jobs_per_s,
                    list(&h.runs),
                    h.to_empty,
                    list(&h.empty_runs)
                ),
            );
            row(
                "   due-job query p50 / p99",
                format!(
                    "{:.0} / {:.0} us with N due; {:.0} / {:.0} us with none",
                    h.due_query_busy_p50_us,
                    h.due_query_busy_p99_us,
                    h.due_query_idle_p50_us,
                    h.due_query_idle_p99_us
                ),
            );
            row("   history written in", format!("{:.1} s", h.fill_s));
        }
        if let Some(sl) = &self.slow {
            row(
                &format!("6. {} ms target, {} workers", sl.latency_ms, sl.workers),
                format!(
                    "{:.0} jobs/s of ideal {:.0}  ({:.2})",
                    sl.jobs_per_s, sl.ideal_jobs_per_s, sl.to_ideal
                ),
            );
        }
        row(
            "7. peak RSS, slow scenario",
            self.rss.slow_peak_mib.map_or("not measured".into(), |p| {
                format!("{p:.1} MiB ({} rows in the table)", self.rss.slow_rows)
            }),
        );
        row(
            "   peak RSS, whole bench process",
            self.rss
                .process_peak_mib
                .map_or("unknown".into(), |p| format!("{p:.1} MiB")),
        );
        out.push_str(
            "\n  target                                        wanted           measured\n",
        );
        for c in &self.checks {
            out.push_str(&format!(
                "  {} {:<42} {:<16} {}\n",
                if c.met { "ok  " } else { "MISS" },
                c.what,
                c.target,
                c.measured
            ));
        }
        out.push_str(&format!(
            "\n  every job succeeded with its audit rows: {}\n",
            if self.all_succeeded { "yes" } else { "no" }
        ));
        out
    }
}

fn list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}
