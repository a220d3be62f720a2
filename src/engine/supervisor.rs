//! The supervisor: restarts engine threads that died or stalled, keeps this process's
//! leases fresh, takes back leases of dead processes (the reaper) and prunes old rows;
//! and the checkpointer thread beside it, which copies the WAL into the database file.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::decide::decide;
use super::{scheduler, worker, writer, Shared, Threads};
use crate::classify::Classified;
use crate::error::Result;
use crate::store::attempts::Outcome;
use crate::store::engine::{self, Finished};

/// How long the scheduler may go without a heartbeat before it is replaced.
const SCHEDULER_STALL_MS: i64 = 30_000;
/// How many lost jobs one reaper pass takes back.
const REAP_BATCH: usize = 500;
/// WAL frames (pages) after which a writer commit checkpoints by itself. The
/// checkpointer does it every 100 ms, off the writer; but under a steady stream of commits its
/// PASSIVE checkpoint rarely ends between two of them, and only a checkpoint that has
/// caught up lets the next transaction start the WAL over. This bounds the WAL (~40 MiB
/// at 4 KiB pages) at one writer stall per 10,000 frames instead of one per 1,000.
pub(super) const WRITER_AUTOCHECKPOINT: u32 = 10_000;

pub(super) fn spawn(
    shared: Arc<Shared>,
    threads: Arc<Mutex<Threads>>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("errand-supervisor".into())
        .spawn(move || run(&shared, &threads, &stop))
        .unwrap_or_else(|e| panic!("cannot start the supervisor thread: {e}"))
}

/// Starts the checkpointer: every 100 ms it copies what the WAL holds into the database
/// file (`wal_checkpoint(PASSIVE)`), on its own thread so that neither a writer commit
/// (which would hold every outcome of its batch meanwhile) nor the supervisor's lease
/// duties wait for the copy and its fsyncs on a slow disk. A pass that panics is logged
/// and the next one runs.
pub(super) fn spawn_checkpointer(shared: Arc<Shared>, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("errand-checkpoint".into())
        .spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
                let pass = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    shared.store.checkpoint()
                }));
                match pass {
                    Ok(Err(e)) => log::warn!("checkpoint: {e}"),
                    Err(_) => log::error!("checkpoint pass panicked; the next one runs"),
                    Ok(Ok(_)) => {}
                }
            }
        })
        .unwrap_or_else(|e| panic!("cannot start the checkpoint thread: {e}"))
}

fn run(shared: &Arc<Shared>, threads: &Mutex<Threads>, stop: &AtomicBool) {
    let lease_every = (shared.config.lease_ms / 3).max(100);
    let mut last_extend = shared.now();
    let mut last_reap = 0;
    let mut last_prune = 0;
    let mut last_alerts = 0;
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
        // The supervisor itself must not die: each duty runs under catch_unwind.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let now = shared.now();
            if !shared.shutting_down() {
                check_threads(shared, threads, now);
            }
            if now - last_extend >= lease_every {
                last_extend = now;
                if let Err(e) = extend_leases_once(shared, now) {
                    log::error!("extending leases: {e}");
                }
            }
            if now.saturating_sub(last_reap) >= 1000 {
                last_reap = now;
                if let Err(e) = reap_once(shared, now) {
                    log::error!("reaper: {e}");
                }
            }
            if now.saturating_sub(last_alerts) >= 1000 {
                last_alerts = now;
                super::alerts::supervise(shared, now);
            }
            if now.saturating_sub(last_prune) >= 3_600_000 {
                last_prune = now;
                if let Err(e) = prune_once(shared, now) {
                    log::error!("pruning: {e}");
                }
            }
        }));
    }
}

/// The lease heartbeat: extends the leases of this process's jobs, queued or running,
/// but not those of calls still running long past their timeout (a wedged worker), which
/// lapse so the reaper takes the job back. Returns how many were extended.
pub(super) fn extend_leases_once(shared: &Shared, now: i64) -> Result<usize> {
    let overdue = shared.in_flight.overdue(std::time::Instant::now());
    if !overdue.is_empty() {
        log::error!(
            "jobs {overdue:?}: their calls are still running long past their timeout; their leases are left to lapse, so they will be taken back and retried"
        );
    }
    let until = now + shared.config.lease_ms;
    shared
        .store
        .write_quiet(|tx| engine::extend_leases(tx, &shared.owner, until, &overdue))
}

fn check_threads(shared: &Arc<Shared>, threads: &Mutex<Threads>, now: i64) {
    let mut t = threads.lock().unwrap_or_else(|p| p.into_inner());
    let stalled = now - shared.scheduler_beat.last()
        > SCHEDULER_STALL_MS.max(10 * shared.config.tick_ms as i64);
    let died = t.scheduler.as_ref().is_some_and(|h| h.is_finished());
    if died || stalled {
        log::error!(
            "scheduler {}; restarting it",
            if died { "died" } else { "stalled" }
        );
        if let Some(h) = t.scheduler.take() {
            if died {
                let _ = h.join();
            }
        }
        shared.scheduler_generation.fetch_add(1, Ordering::SeqCst);
        shared.scheduler_beat.beat(now);
        t.scheduler = Some(scheduler::spawn(shared.clone()));
        shared.metrics.restarted();
    }
    if t.writer.as_ref().is_some_and(|h| h.is_finished()) {
        log::error!("writer died; restarting it");
        if let Some(h) = t.writer.take() {
            let _ = h.join();
        }
        t.writer = Some(writer::spawn(shared.clone()));
        shared.metrics.restarted();
    }
    for (i, slot) in t.workers.iter_mut().enumerate() {
        if slot.as_ref().is_some_and(|h| h.is_finished()) {
            log::error!("worker {i} died; restarting it");
            if let Some(h) = slot.take() {
                let _ = h.join();
            }
            *slot = Some(worker::spawn(shared.clone(), i));
            shared.metrics.restarted();
        }
    }
}

/// The start time of process `pid` (field 22 of /proc/PID/stat), if it is running.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it follow the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// True when `owner` names another process on this host that is no longer running.
fn owner_is_dead(shared: &Shared, owner: &str) -> bool {
    let mine: Vec<&str> = shared.owner.split(':').collect();
    let theirs: Vec<&str> = owner.split(':').collect();
    if theirs.len() != 4 || mine.len() != 4 || theirs[0] != mine[0] || owner == shared.owner {
        return false; // another host, or this engine: only expiry decides
    }
    let Ok(pid) = theirs[1].parse::<u32>() else {
        return false;
    };
    match process_start_time(pid) {
        None => true,
        Some(start) => theirs[2].parse::<u64>().is_ok_and(|s| s != start),
    }
}

/// One reaper pass at `now`: every running job whose lease expired, or whose owner is a
/// dead process on this host, is logged as a `lost` attempt (ambiguous: the request may
/// have been sent) and goes to `retry` with backoff (or is held when out of attempts).
/// Each update is guarded by state, owner and attempt, so a job that did finish is never
/// overwritten. Returns how many jobs were taken back.
pub fn reap_once(shared: &Shared, now: i64) -> Result<usize> {
    let owners = {
        let conn = shared.store.read()?;
        engine::lease_owners(&conn)?
    };
    let dead: Vec<String> = owners
        .into_iter()
        .filter(|o| owner_is_dead(shared, o))
        .collect();
    let lost = {
        let conn = shared.store.read()?;
        engine::lost_jobs(&conn, now, &dead, REAP_BATCH)?
    };
    if lost.is_empty() {
        return Ok(0);
    }
    let lost_class = Classified {
        outcome: Outcome::Lost,
        ambiguous: false,
        retry_after_ms: None,
    };
    let mut taken = 0;
    shared.store.write_quiet(|tx| {
        for job in &lost {
            let provider = shared.config.provider(&job.provider);
            let d = decide(
                job,
                &provider,
                &lost_class,
                "lease lost",
                None,
                None,
                now,
                crate::rand::unit(),
            );
            let mut f = Finished::for_job(job, d.next, d.error, true);
            f.record = Some(engine::lost_record(job, now));
            f.notices = d.notices;
            if engine::record(tx, &f, now)? {
                taken += 1;
            }
        }
        Ok(())
    })?;
    if taken > 0 {
        log::warn!("reaper took back {taken} jobs whose lease was lost");
        for job in &lost {
            shared.waiters.notify(job.id);
        }
        shared.wake();
    }
    Ok(taken)
}

/// Deletes rows past the configured retention, and incoming idempotency keys past 24 h.
pub fn prune_once(shared: &Shared, now: i64) -> Result<(usize, usize)> {
    let day = 86_400_000;
    let attempts_before = shared.config.retention_attempts_days.map(|d| now - d * day);
    let jobs_before = shared.config.retention_jobs_days.map(|d| now - d * day);
    shared
        .store
        .write_quiet(|tx| engine::prune(tx, attempts_before, jobs_before, now - day))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::config::Config;
    use crate::spec::NewJob;
    use crate::store::{jobs, Store, Synchronous};

    const NOW: i64 = 1_000_000;

    fn lease_and_state(store: &Store, id: i64) -> (i64, String) {
        let conn = store.read().expect("read");
        conn.query_row(
            "SELECT lease_until, state FROM jobs WHERE id = ?1",
            [id],
            |r| Ok((r.get::<_, Option<i64>>(0)?.unwrap_or(0), r.get(1)?)),
        )
        .expect("job")
    }

    #[test]
    fn a_call_past_its_deadline_lets_its_lease_lapse_and_is_taken_back() {
        let dir = tempfile::tempdir().expect("dir");
        let store =
            Arc::new(Store::open(dir.path().join("s.db"), Synchronous::Normal).expect("store"));
        let config = Arc::new(Config::default());
        let shared = Shared::new(
            store.clone(),
            config.clone(),
            Arc::new(ManualClock::new(NOW)),
        );
        let lease = config.lease_ms;
        let ids: Vec<i64> = store
            .write(|tx| {
                let ids = (0..2)
                    .map(|_| Ok(jobs::insert(tx, &NewJob::get("acme", "http://x/"), NOW)?.id))
                    .collect::<Result<Vec<i64>>>()?;
                engine::claim(tx, &ids, &shared.owner, NOW + lease, NOW)?;
                Ok(ids)
            })
            .expect("claim");
        // One call wedged past its deadline, one still within it.
        let past = std::time::Instant::now() - Duration::from_millis(1);
        let wedged = shared.in_flight.start(ids[0], 1, past);
        let _running = shared
            .in_flight
            .start(ids[1], 1, past + Duration::from_secs(3_600));
        let later = NOW + lease / 2;
        assert_eq!(extend_leases_once(&shared, later).expect("extend"), 1);
        assert_eq!(
            lease_and_state(&store, ids[0]).0,
            NOW + lease,
            "not extended"
        );
        assert_eq!(lease_and_state(&store, ids[1]).0, later + lease, "extended");
        // Once the wedged job's lease has lapsed the reaper takes it back; the other stays.
        assert_eq!(reap_once(&shared, NOW + lease + 1).expect("reap"), 1);
        assert_eq!(lease_and_state(&store, ids[0]).1, "retry");
        assert_eq!(lease_and_state(&store, ids[1]).1, "running");
        // A call that returned is no longer in flight; deadlines are on the monotonic
        // clock, so the engine clock's jumps (here NOW + a lease) change nothing.
        drop(wedged);
        let overdue = shared.in_flight.overdue(past + Duration::from_secs(7_200));
        assert_eq!(overdue, vec![ids[1]]);
        assert!(shared.in_flight.overdue(past).is_empty());
    }
}
