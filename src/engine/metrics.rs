//! In-process counters for `/metrics`: only what the writer has committed is counted.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

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
    /// Where the writer thread's time goes.
    pub writer: WriterTime,
}

/// The phases of one writer batch (one transaction), in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterPhase {
    /// BEGIN IMMEDIATE: waiting for the write lock.
    Begin,
    /// The batch's outcomes: job updates, audit rows and their side effects.
    Outcomes,
    /// Every other write in the batch (the API's, the supervisor's, the outbox's).
    Writes,
    /// Claiming due jobs for the worker slots the outcomes freed.
    Claim,
    /// COMMIT: the WAL write (and its fsync at `synchronous=FULL`, or a checkpoint).
    Commit,
    /// After the commit: handing claimed jobs to workers, waking waiters, counting.
    Handoff,
}

impl WriterPhase {
    /// Every phase, in order.
    pub const ALL: [WriterPhase; 6] = [
        WriterPhase::Begin,
        WriterPhase::Outcomes,
        WriterPhase::Writes,
        WriterPhase::Claim,
        WriterPhase::Commit,
        WriterPhase::Handoff,
    ];

    /// The `phase` label in `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            WriterPhase::Begin => "begin",
            WriterPhase::Outcomes => "outcomes",
            WriterPhase::Writes => "writes",
            WriterPhase::Claim => "claim",
            WriterPhase::Commit => "commit",
            WriterPhase::Handoff => "handoff",
        }
    }
}

/// The writer thread's wall time by phase and its batches. The writer is the one
/// thread every job passes through twice, so its busy share says how close the engine
/// is to its limit, and the split says what to make cheaper.
#[derive(Debug, Default)]
pub struct WriterTime {
    nanos: [AtomicU64; WriterPhase::ALL.len()],
    batches: AtomicU64,
}

impl WriterTime {
    /// Starts timing one batch.
    pub fn batch(&self) -> Stopwatch<'_> {
        self.batches.fetch_add(1, Ordering::Relaxed);
        Stopwatch {
            time: self,
            last: Instant::now(),
        }
    }

    /// Seconds spent in each phase, in the order of [`WriterPhase::ALL`].
    pub fn seconds(&self) -> [f64; WriterPhase::ALL.len()] {
        std::array::from_fn(|i| self.nanos[i].load(Ordering::Relaxed) as f64 / 1e9)
    }

    /// Batches (transactions) written.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }
}

/// Times the phases of one batch: each [`Stopwatch::lap`] adds the time since the
/// previous lap to the phase it names.
pub struct Stopwatch<'a> {
    time: &'a WriterTime,
    last: Instant,
}

impl Stopwatch<'_> {
    /// Adds the time since the last lap (or the start) to `phase`.
    pub fn lap(&mut self, phase: WriterPhase) {
        let now = Instant::now();
        let ns = now.saturating_duration_since(self.last).as_nanos();
        self.time.nanos[phase as usize].fetch_add(ns as u64, Ordering::Relaxed);
        self.last = now;
    }
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
        if !d.contains_key(provider) {
            d.insert(provider.to_string(), Histogram::default());
        }
        let Some(h) = d.get_mut(provider) else { return };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lap_adds_the_time_since_the_last_one_to_its_own_phase_only() {
        let w = WriterTime::default();
        let mut sw = w.batch();
        let t = Instant::now();
        while t.elapsed().is_zero() {}
        sw.lap(WriterPhase::Claim);
        let s = w.seconds();
        for phase in WriterPhase::ALL {
            let secs = s[phase as usize];
            if phase == WriterPhase::Claim {
                assert!(secs > 0.0);
            } else {
                assert_eq!(secs, 0.0, "{}", phase.as_str());
            }
        }
        assert_eq!(w.batches(), 1);
    }
}
