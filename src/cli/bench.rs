//! `errand bench`: its flags, validated into the bench's options, and the run.

use std::path::PathBuf;

use clap::Args;

use super::{output, pretty, Output};
use crate::error::{Error, Result};

/// `errand bench` flags (defaults: the full bench of issue #7).
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Jobs per drain.
    #[arg(long, short = 'n', default_value_t = 50_000)]
    pub jobs: usize,
    /// Engine workers (and raw-ceiling threads).
    #[arg(long, default_value_t = 16)]
    pub workers: usize,
    /// Repetitions of each scenario; figures are medians.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Scenarios to run, comma-separated: drain, enqueue, latency, history, slow (default all).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub scenario: Vec<String>,
    /// normal, or full (then the drain also runs at normal for the ratio).
    #[arg(long, default_value = "normal")]
    pub synchronous: String,
    /// The target's answer latency in ms (drain, latency, history).
    #[arg(long, default_value_t = 0.0, value_name = "MS")]
    pub target_latency_ms: f64,
    /// Share of requests the target answers 503 (0 to below 1).
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Rows of history for the history scenario.
    #[arg(long, default_value_t = 1_000_000, value_name = "ROWS")]
    pub history: usize,
    /// Jobs enqueued (and outbox rows drained) per run.
    #[arg(long, default_value_t = 50_000)]
    pub enqueue_jobs: usize,
    /// Steady rate (jobs/s) and jobs of the latency scenario.
    #[arg(long, default_value_t = 500)]
    pub latency_rate: u32,
    #[arg(long, default_value_t = 2_500)]
    pub latency_jobs: usize,
    /// The slow scenario: jobs, workers and target latency (ms).
    #[arg(long, default_value_t = 20_000)]
    pub slow_jobs: usize,
    #[arg(long, default_value_t = 256)]
    pub slow_workers: usize,
    #[arg(long, default_value_t = 50, value_name = "MS")]
    pub slow_latency_ms: u64,
    /// Directory for the temporary databases (default: the system's temp directory).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

impl BenchArgs {
    /// The validated bench options.
    pub fn options(&self) -> Result<crate::bench::Options> {
        let scenarios = if self.scenario.is_empty() {
            crate::bench::Scenario::ALL.to_vec()
        } else {
            self.scenario
                .iter()
                .map(|s| s.trim().parse())
                .collect::<Result<Vec<_>>>()?
        };
        let synchronous = match self.synchronous.as_str() {
            "normal" => crate::store::Synchronous::Normal,
            "full" => crate::store::Synchronous::Full,
            other => {
                return Err(Error::invalid(
                    "--synchronous",
                    format!("{other:?} is not normal or full"),
                ))
            }
        };
        if !(0.0..=60_000.0).contains(&self.target_latency_ms) {
            return Err(Error::invalid(
                "--target-latency-ms",
                "must be from 0 to 60000",
            ));
        }
        let opts = crate::bench::Options {
            jobs: self.jobs,
            workers: self.workers,
            runs: self.runs,
            scenarios,
            synchronous,
            target_latency: std::time::Duration::from_secs_f64(self.target_latency_ms / 1000.0),
            fail_rate: self.fail_rate,
            history_rows: self.history,
            enqueue_clients: 32,
            enqueue_jobs: self.enqueue_jobs,
            latency_rate: self.latency_rate,
            latency_jobs: self.latency_jobs,
            slow_jobs: self.slow_jobs,
            slow_workers: self.slow_workers,
            slow_latency: std::time::Duration::from_millis(self.slow_latency_ms),
            dir: self.dir.clone(),
        };
        opts.validate()?;
        Ok(opts)
    }
}

/// Runs `errand bench`: progress lines go to standard error, the report is the output.
pub fn bench(args: &BenchArgs) -> Result<Output> {
    let opts = args.options()?;
    let report = crate::bench::run(&opts, &mut |line| {
        output::print_message(&format!("errand bench: {line}"))
    })?;
    Ok(Output::new(if args.json {
        pretty(&report.to_json())
    } else {
        report.table()
    }))
}
