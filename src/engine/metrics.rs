//! In-process counters for `/metrics`: only what the writer has committed is counted.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::store::attempts::Outcome;

/// Upper bounds (seconds) of the attempt-duration histogram.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A cumulative histogram of attempt durations.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    pub counts: [u64; DURATION_BUCKETS.len()],
    pub count: u64,
    pub sum: f64,
}

/// Counters shared by the engine threads.
#[derive(Debug, Default)]
pub struct Metrics {
    attempts: Mutex<BTreeMap<(String, &'static str), u64>>,
    durations: Mutex<BTreeMap<String, Histogram>>,
    /// Threads the supervisor restarted after a panic or a stall.
    pub thread_restarts: AtomicU64,
}

impl Metrics {
    /// Counts one committed attempt.
    pub fn attempt(&self, provider: &str, outcome: Outcome, duration_ms: i64) {
        {
            let mut a = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
            *a.entry((provider.to_string(), outcome.as_str()))
                .or_default() += 1;
        }
        let secs = duration_ms.max(0) as f64 / 1000.0;
        let mut d = self.durations.lock().unwrap_or_else(|p| p.into_inner());
        let h = d.entry(provider.to_string()).or_default();
        for (i, le) in DURATION_BUCKETS.iter().enumerate() {
            if secs <= *le {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// (provider, outcome) -> attempts.
    pub fn attempts(&self) -> BTreeMap<(String, &'static str), u64> {
        self.attempts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// provider -> duration histogram.
    pub fn durations(&self) -> BTreeMap<String, Histogram> {
        self.durations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Counts one restarted thread.
    pub fn restarted(&self) {
        self.thread_restarts.fetch_add(1, Ordering::Relaxed);
    }
}
