//! The scheduler: an event loop over a tick, wake-ups (a new job, a freed worker, a
//! commit by another process seen through `PRAGMA data_version`) and shutdown. Each pass
//! claims at most as many due jobs as there are free worker slots, in one statement, and
//! hands them to the workers.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::select;

use super::Shared;
use crate::error::Result;
use crate::store::{accounts, engine};

/// How often the loop looks at `PRAGMA data_version` for commits by other processes
/// (a cheap read of a counter, not of any table).
const DATA_VERSION_POLL: Duration = Duration::from_millis(50);

pub(super) fn spawn(shared: Arc<Shared>) -> JoinHandle<()> {
    let generation = shared.scheduler_generation.load(Ordering::SeqCst);
    std::thread::Builder::new()
        .name("errand-scheduler".into())
        .spawn(move || run(&shared, generation))
        .unwrap_or_else(|e| panic!("cannot start the scheduler thread: {e}"))
}

/// What woke the loop.
enum Event {
    Tick,
    Wake,
}

fn run(shared: &Shared, generation: usize) {
    let tick = shared.config.tick_ms as i64;
    let mut last_pass = 0;
    let mut next_due: Option<i64> = None;
    let mut data_version = shared.store.data_version().unwrap_or(0);
    let mut event = Event::Wake;
    loop {
        let now = shared.now();
        shared.scheduler_beat.beat(now);
        if shared.shutting_down()
            || shared.scheduler_generation.load(Ordering::SeqCst) != generation
        {
            return;
        }
        if shared.faults.panic_scheduler.swap(false, Ordering::SeqCst) {
            panic!("injected fault: scheduler panic");
        }
        let dv = shared.store.data_version().unwrap_or(data_version);
        let changed = dv != data_version;
        data_version = dv;
        if changed {
            // Another process committed: it may have paused, suspended or re-keyed.
            shared.store.bump();
        }
        let due = matches!(event, Event::Wake)
            || changed
            || now - last_pass >= tick
            || next_due.is_some_and(|t| t <= now);
        if changed || now - last_pass >= tick {
            // Another connection committed (an app's outbox insert, the CLI, another
            // errand), or a tick passed: move outbox rows into jobs first.
            if let Err(e) = super::outbox::drain_once(shared, now) {
                log::error!("draining the outbox: {e}");
            }
        }
        if due {
            last_pass = now;
            match run_once(shared, now) {
                Ok(n) => next_due = n,
                Err(e) => {
                    log::error!("scheduler pass failed: {e}");
                    next_due = None;
                }
            }
        }
        let mut wait = DATA_VERSION_POLL;
        if let Some(t) = next_due {
            wait = wait.min(Duration::from_millis((t - now).clamp(0, 50) as u64));
        }
        event = select! {
            recv(shared.wake_rx) -> _ => Event::Wake,
            default(wait) => Event::Tick,
        };
    }
}

/// One scheduler pass at `now`: claims due jobs up to the free capacity (respecting
/// pauses and provider limits) and hands them to the workers. Returns when the next
/// job becomes due, if the pass did not fill the capacity. Tests call it directly.
pub fn run_once(shared: &Shared, now: i64) -> Result<Option<i64>> {
    if shared.shutting_down() {
        return Ok(None);
    }
    let capacity = shared.capacity();
    if capacity == 0 {
        return Ok(None);
    }
    {
        let conn = shared.store.read()?;
        if accounts::global_paused(&conn)? {
            return Ok(None);
        }
    }
    let blocked = shared.limits.blocked_providers(now);
    let lease_until = now + shared.config.lease_ms;
    // Slots taken from the limits, given back below if the claim does not commit.
    let mut admitted: Vec<(i64, String)> = Vec::new();
    let result = shared.store.write_quiet(|tx| {
        let candidates = engine::due_candidates(tx, now, capacity * 2 + 16)?;
        let mut ids = Vec::with_capacity(capacity);
        for c in &candidates {
            if ids.len() == capacity {
                break;
            }
            if blocked.contains(&c.provider) || !shared.limits.admit(&c.provider, &c.account, now) {
                continue;
            }
            ids.push(c.id);
            admitted.push((c.id, c.provider.clone()));
        }
        let jobs = engine::claim(tx, &ids, &shared.owner, lease_until, now)?;
        let next = if jobs.len() < capacity {
            engine::next_due_at(tx)?
        } else {
            None
        };
        Ok((jobs, next))
    });
    // Slots taken for jobs another process claimed first, or for a claim that did not
    // commit, are given back (a leaked half-open probe would block the provider).
    let claimed_ids: Vec<i64> = match &result {
        Ok((jobs, _)) => jobs.iter().map(|j| j.id).collect(),
        Err(_) => Vec::new(),
    };
    for (id, provider) in &admitted {
        if !claimed_ids.contains(id) {
            shared.limits.unadmit(provider);
        }
    }
    let (claimed, next) = result?;
    let n = claimed.len();
    shared.outstanding.fetch_add(n, Ordering::SeqCst);
    for job in claimed {
        if shared.job_tx.send(job).is_err() {
            break;
        }
    }
    // A job already due but left behind (provider limits) is looked at again shortly;
    // one left behind for capacity is looked at when a worker frees up and wakes us.
    Ok(next.map(|t| if t <= now { now + 50 } else { t }))
}
