//! The scheduler: an event loop over a tick, wake-ups (a new job, a freed worker, a
//! commit by another process seen through `PRAGMA data_version`) and shutdown. Each pass
//! claims at most as many due jobs as there are free worker slots, in one statement, and
//! hands them to the workers.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use std::collections::HashSet;

use crossbeam_channel::select;
use rusqlite::Connection;

use super::limits::{Admission, Refused};
use super::{Queued, Shared};
use crate::error::Result;
use crate::job::Job;
use crate::store::engine::Finished;
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
    // Its own timer: passes made on wake-ups must not put off the tick's outbox drain,
    // which is the only one to see rows committed on this process's own connection.
    let mut last_drain = 0;
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
        if changed || now - last_drain >= tick {
            // Another connection committed (an app's outbox insert, the CLI, another
            // errand), or a tick passed: move outbox rows into jobs first.
            last_drain = now;
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
/// pauses and provider limits) and hands them to the workers. The candidates are read on
/// a read connection, in rounds that skip what the limits refused (which may scan a
/// blocked provider's backlog: no write lock is held meanwhile); the claim itself is one
/// short write transaction, guarded as always. Returns when to pass again. Tests call
/// it directly.
pub fn run_once(shared: &Shared, now: i64) -> Result<Option<i64>> {
    let Some(mut claim) = Claim::reserve(shared) else {
        // No free slot: the writer claims when outcomes free some; look again shortly.
        return Ok(Some(now + QUEUE_FULL_RETRY_MS));
    };
    {
        let conn = shared.store.read()?;
        claim.select(&conn, now, CLAIM_ROUNDS)?;
        if claim.ids.is_empty() {
            // Nothing to claim: no write lock, just when to look again.
            claim.next = engine::next_due_at(&conn)?;
            return Ok(claim.dispatch(now).0);
        }
    }
    // Dropped without dispatch (the transaction failed), the claim gives its slots back.
    shared.store.write_quiet(|tx| claim.take(tx, now))?;
    let (next, releases) = claim.dispatch(now);
    for r in releases {
        shared.writer.finished(r);
    }
    Ok(next)
}

/// When the queue is full, the scheduler looks again after this long.
const QUEUE_FULL_RETRY_MS: i64 = 50;

/// Candidate queries a scheduler pass makes at most: each round skips what the limits
/// refused in the one before. The writer's pass makes one (bounded by its LIMIT, since it
/// holds the write lock) and leaves what it could not fill to the scheduler.
const CLAIM_ROUNDS: usize = 4;

/// Refused (provider, account) pairs a candidate query leaves out in SQL at most; more
/// are skipped as they are read.
const MAX_SKIPPED_ACCOUNTS: usize = 500;

/// The most jobs claimed and not yet handed to the writer: the running ones, plus a
/// queue of 64 (at least one and at most four per worker), so that a claim and the
/// outcomes it waits for are written in batches of dozens, not a few (one transaction's
/// fixed cost is spread over many jobs), and a freed worker never waits for a claim.
/// A queued job is `running` (claimed, its limits admitted): the queue stays short.
pub(super) fn queue_depth(workers: usize) -> usize {
    workers + 64.clamp(workers, 4 * workers)
}

/// A claim pass in the making: queue slots reserved, due jobs selected and admitted by
/// the provider limits, then claimed inside a write transaction, then, once it commits,
/// handed out ([`Claim::dispatch`]) or, if it does not, given back (when it is dropped).
/// The scheduler runs one in its own transaction; the writer runs one at the end of
/// every batch of outcomes, in the batch's transaction, so a busy engine claims and
/// records in one commit.
pub(super) struct Claim<'s> {
    shared: &'s Shared,
    /// Queue slots taken from `outstanding` for this pass.
    reserved: usize,
    /// Selected and admitted, not yet claimed.
    ids: Vec<i64>,
    jobs: Vec<Job>,
    /// Jobs the provider limits admitted, with what that took (given back if the job is
    /// not claimed after all).
    admitted: Vec<(i64, String, Admission)>,
    next: Option<i64>,
}

impl<'s> Claim<'s> {
    /// Reserves every free slot of the queue ([`queue_depth`]), so two claimants can
    /// never overfill it. None when there is no free slot or shutdown has begun.
    pub(super) fn reserve(shared: &'s Shared) -> Option<Claim<'s>> {
        if shared.shutting_down() {
            return None;
        }
        let most = queue_depth(shared.config.workers);
        let mut reserved = 0;
        let _ = shared
            .outstanding
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |o| {
                reserved = most.saturating_sub(o);
                (reserved > 0).then_some(most.max(o))
            });
        (reserved > 0).then_some(Claim {
            shared,
            reserved,
            ids: Vec::new(),
            jobs: Vec::new(),
            admitted: Vec::new(),
            next: None,
        })
    }

    /// Selects up to the reserved number of due jobs on `conn` and takes their provider
    /// limits. With one round, the jobs of blocked providers are skipped as they are read
    /// (the query stays bounded by its LIMIT); with more, what the limits refused is left
    /// out in SQL from the next round, so a backlog of a provider whose circuit is open,
    /// or of one rate-limited account, cannot fill the list and hide the jobs behind it.
    pub(super) fn select(&mut self, conn: &Connection, now: i64, rounds: usize) -> Result<()> {
        let shared = self.shared;
        if shared.shutting_down() || accounts::global_paused(conn)? {
            return Ok(());
        }
        let capacity = self.reserved;
        let blocked = shared.limits.blocked_providers(now);
        let mut skip_providers: Vec<String> = if rounds > 1 {
            blocked.clone()
        } else {
            Vec::new()
        };
        let mut skip_accounts: HashSet<(String, String)> = HashSet::new();
        let mut taken: HashSet<i64> = HashSet::new();
        for _ in 0..rounds {
            let limit = (capacity - self.ids.len()) * 2 + 16 + self.ids.len();
            let in_sql: Vec<(String, String)> = skip_accounts
                .iter()
                .take(MAX_SKIPPED_ACCOUNTS)
                .cloned()
                .collect();
            let candidates =
                engine::due_candidates_except(conn, now, limit, &skip_providers, &in_sql)?;
            let mut refused = false;
            for c in &candidates {
                if self.ids.len() == capacity {
                    break;
                }
                // Jobs taken in an earlier round come back in this one's list.
                if taken.contains(&c.id)
                    || blocked.contains(&c.provider)
                    || skip_providers.contains(&c.provider)
                    || skip_accounts.contains(&(c.provider.clone(), c.account.clone()))
                {
                    continue;
                }
                match shared.limits.try_admit(&c.provider, &c.account, now) {
                    Ok(admission) => {
                        self.ids.push(c.id);
                        taken.insert(c.id);
                        self.admitted.push((c.id, c.provider.clone(), admission));
                    }
                    Err(Refused::Provider) => {
                        refused = true;
                        skip_providers.push(c.provider.clone());
                    }
                    Err(Refused::Account) => {
                        refused = true;
                        skip_accounts.insert((c.provider.clone(), c.account.clone()));
                    }
                }
            }
            if self.ids.len() == capacity || candidates.len() < limit || !refused {
                break;
            }
        }
        Ok(())
    }

    /// Claims the selected jobs in `tx` (those still due and unclaimed: another process
    /// may have taken some meanwhile) and notes when the next job is due.
    pub(super) fn take(&mut self, tx: &Connection, now: i64) -> Result<()> {
        let lease_until = now + self.shared.config.lease_ms;
        self.jobs = engine::claim(tx, &self.ids, &self.shared.owner, lease_until, now)?;
        self.next = if self.jobs.len() < self.reserved {
            engine::next_due_at(tx)?
        } else {
            None
        };
        Ok(())
    }

    /// True when the pass filled every slot it reserved.
    pub(super) fn filled(&self) -> bool {
        self.jobs.len() == self.reserved
    }

    /// After the claim committed: hands the jobs to the workers and gives back the slots
    /// and limit admissions it did not use (jobs another process claimed first). Once
    /// shutdown has begun the workers may be gone, so the jobs are returned as releases
    /// (put back unchanged, no attempt counted) for the caller to hand to the writer: the
    /// writer itself must not block on its own channel. Also returns when the next job
    /// becomes due, if the pass did not fill its slots: a job already due but left behind
    /// (provider limits) is looked at again shortly; one left behind for capacity when a
    /// worker frees up.
    pub(super) fn dispatch(mut self, now: i64) -> (Option<i64>, Vec<Finished>) {
        let jobs = std::mem::take(&mut self.jobs);
        let mut releases = Vec::new();
        for job in jobs {
            let at = self.admitted.iter().position(|(id, _, _)| *id == job.id);
            let admission = at.map_or_else(Admission::default, |i| self.admitted.swap_remove(i).2);
            if self.shared.shutting_down() {
                self.shared.limits.give_back(&job.provider, &admission);
                releases.push(super::worker::release(&job, "errand is shutting down"));
                continue;
            }
            // The slot and the admission now belong to the job in the queue.
            self.reserved -= 1;
            if let Err(e) = self.shared.job_tx.send(Queued { job, admission }) {
                // Not possible while `Shared` holds the receiver; were it, the job's slot
                // and admission would go back with the claim's.
                let Queued { job, admission } = e.0;
                self.reserved += 1;
                self.admitted.push((job.id, job.provider, admission));
            }
        }
        let next = self.next.map(|t| if t <= now { now + 50 } else { t });
        (next, releases)
        // Drop gives back what is left.
    }
}

impl Drop for Claim<'_> {
    /// Gives back the slots and limit admissions not used: all of them when the claim
    /// did not commit (a leaked half-open probe would block the provider).
    fn drop(&mut self) {
        for (_, provider, a) in &self.admitted {
            self.shared.limits.give_back(provider, a);
        }
        self.shared
            .outstanding
            .fetch_sub(self.reserved, Ordering::SeqCst);
    }
}
