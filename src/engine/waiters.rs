//! Parked waits for a job to change (`Prefer: wait=N`): the writer wakes them after it
//! commits the job's outcome, so no waiter polls the database in a loop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crossbeam_channel::Sender;

/// How many registrations between sweeps of the ones whose wait is over.
const SWEEP_EVERY: usize = 256;

/// One registration: whom to signal, and until when anyone listens.
#[derive(Debug)]
struct Entry {
    tx: Sender<()>,
    until: Instant,
}

/// Waiters keyed by job id.
#[derive(Debug, Default)]
pub struct Waiters {
    map: Mutex<HashMap<i64, Vec<Entry>>>,
    registered: AtomicUsize,
}

impl Waiters {
    /// Registers `tx` to be signalled once, after the next commit that changes job `id`;
    /// nobody listens after `until`. Register before reading the job, so a commit between
    /// the read and the registration is not missed. Registrations whose wait is over are
    /// swept from time to time, so a job that stays pending for days while clients
    /// long-poll it does not collect them.
    pub fn register(&self, id: i64, tx: Sender<()>, until: Instant) {
        let mut map = self.lock();
        map.entry(id).or_default().push(Entry { tx, until });
        if self.registered.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            let now = Instant::now();
            map.retain(|_, entries| {
                entries.retain(|e| e.until > now);
                !entries.is_empty()
            });
        }
    }

    /// Wakes everyone waiting on `id`.
    pub fn notify(&self, id: i64) {
        let entries = self.lock().remove(&id);
        for e in entries.into_iter().flatten() {
            let _ = e.tx.try_send(());
        }
    }

    /// How many registrations are held now (for tests and the status page).
    pub fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    /// True when nobody is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Vec<Entry>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn notify_wakes_and_expired_registrations_are_swept() {
        let w = Waiters::default();
        let (tx, rx) = crossbeam_channel::bounded(1);
        w.register(1, tx, Instant::now() + Duration::from_secs(60));
        w.notify(1);
        assert!(rx.try_recv().is_ok());
        assert!(w.is_empty());
        // Long polls that timed out on a job that never changes.
        let past = Instant::now() - Duration::from_secs(1);
        for _ in 0..SWEEP_EVERY * 2 {
            let (tx, _rx) = crossbeam_channel::bounded(1);
            w.register(2, tx, past);
        }
        assert!(w.len() < SWEEP_EVERY, "{}", w.len());
    }
}
