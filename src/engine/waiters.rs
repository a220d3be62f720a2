//! Parked waits for a job to change (`Prefer: wait=N`): the writer wakes them after it
//! commits the job's outcome, so no waiter polls the database in a loop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crossbeam_channel::{bounded, Receiver, Sender};

/// Waiters keyed by job id.
#[derive(Debug, Default)]
pub struct Waiters {
    map: Mutex<HashMap<i64, Vec<Sender<()>>>>,
    parked: AtomicUsize,
}

/// A registration; dropping it unparks.
pub struct Parked<'a> {
    waiters: &'a Waiters,
    pub rx: Receiver<()>,
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.waiters.parked.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Waiters {
    /// Registers interest in job `id`, unless `max` waits are already parked.
    pub fn park(&self, id: i64, max: usize) -> Option<Parked<'_>> {
        if self.parked.fetch_add(1, Ordering::SeqCst) >= max {
            self.parked.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        let (tx, rx) = bounded(1);
        self.lock().entry(id).or_default().push(tx);
        Some(Parked { waiters: self, rx })
    }

    /// Registers `tx` to be signalled once, after the next commit that changes job `id`.
    /// For a caller that keeps its own count and cap of parked waits (the API's
    /// responder thread, which parks requests rather than threads). Register before
    /// reading the job, so a commit between the read and the registration is not missed.
    pub fn register(&self, id: i64, tx: Sender<()>) {
        self.lock().entry(id).or_default().push(tx);
    }

    /// Wakes everyone waiting on `id`.
    pub fn notify(&self, id: i64) {
        let senders = self.lock().remove(&id);
        for s in senders.into_iter().flatten() {
            let _ = s.try_send(());
        }
    }

    /// How many waits are parked now.
    pub fn parked(&self) -> usize {
        self.parked.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Vec<Sender<()>>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}
