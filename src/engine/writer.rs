//! The writer thread: commits job outcomes and other writes in batches (group commit),
//! one `BEGIN IMMEDIATE` transaction per batch, so throughput is not one commit per job.
//! Outcomes are written together and fall back to a savepoint each only when one fails;
//! every other write has its own savepoint. One bad item cannot sink the batch.

use std::any::Any;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};
use rusqlite::{Connection, TransactionBehavior};

use super::metrics::WriterPhase as Phase;
use super::scheduler::Claim;
use super::Shared;
use crate::error::{Error, Result};
use crate::store::engine::{self, Finished};
use crate::store::Savepoint;

/// The most items committed in one transaction.
const MAX_BATCH: usize = 1024;

type Boxed = Box<dyn Any + Send>;
type ExecFn = Box<dyn FnOnce(&Connection) -> Result<Boxed> + Send>;

/// One item for the writer.
pub enum WriteOp {
    /// A job's attempt is over.
    Finished(Box<Finished>),
    /// Any other write; its result is sent back after the batch commits.
    Exec(ExecFn, Sender<Result<Boxed>>),
}

/// The sending side, held by workers and the API.
#[derive(Clone)]
pub struct WriterHandle {
    tx: Sender<WriteOp>,
}

impl WriterHandle {
    pub(super) fn new(tx: Sender<WriteOp>) -> WriterHandle {
        WriterHandle { tx }
    }

    /// Hands a finished attempt to the writer.
    pub fn finished(&self, f: Finished) {
        if self.tx.send(WriteOp::Finished(Box::new(f))).is_err() {
            log::error!("writer is gone: an outcome will be recovered from its lease");
        }
    }

    /// Runs `f` inside the writer's next batch without waiting for it: for a write whose
    /// caller cannot wait and that may be lost with the process (it is logged if it fails).
    pub fn submit(&self, f: impl FnOnce(&Connection) -> Result<()> + Send + 'static) {
        let (tx, _) = bounded(1);
        let exec: ExecFn = Box::new(move |c| {
            f(c).map(|()| Box::new(()) as Boxed).inspect_err(|e| {
                log::warn!("a write submitted without waiting failed: {e}");
            })
        });
        if self.tx.send(WriteOp::Exec(exec, tx)).is_err() {
            log::warn!("writer is gone: a write submitted without waiting is dropped");
        }
    }

    /// Runs `f` inside the writer's next batch and returns its result once the batch is
    /// committed: many concurrent callers share one commit.
    pub fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = bounded(1);
        let exec: ExecFn = Box::new(move |c| f(c).map(|t| Box::new(t) as Boxed));
        self.tx
            .send(WriteOp::Exec(exec, tx))
            .map_err(|_| Error::ShuttingDown)?;
        let out = rx.recv().map_err(|_| Error::ShuttingDown)??;
        out.downcast::<T>()
            .map(|b| *b)
            .map_err(|_| Error::ShuttingDown)
    }
}

pub(super) fn spawn(shared: Arc<Shared>) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("errand-writer".into())
        .spawn(move || run(&shared))
        .unwrap_or_else(|e| panic!("cannot start the writer thread: {e}"))
}

fn run(shared: &Shared) {
    let mut retry: Vec<Finished> = Vec::new();
    loop {
        shared.writer_beat.beat(shared.now());
        let mut batch: Vec<WriteOp> = retry
            .drain(..)
            .map(|f| WriteOp::Finished(Box::new(f)))
            .collect();
        if batch.is_empty() {
            match shared.write_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(op) => batch.push(op),
                Err(RecvTimeoutError::Timeout) => {
                    if shared.writer_stop.load(Ordering::SeqCst) {
                        return;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        while batch.len() < MAX_BATCH {
            match shared.write_rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        retry = commit(shared, batch);
        if !retry.is_empty() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The outcome written when the real one could not be: the job is held in draft.
fn held_for_review(f: &Finished, e: &Error) -> Finished {
    Finished {
        next: engine::Next::Hold,
        error: Some(crate::job::JobError {
            category: "unclassified".into(),
            reason: "internal_error".into(),
            message: format!(
                "errand could not record this attempt's outcome ({e}); check and retry"
            ),
        }),
        notices: Vec::new(),
        triage: None,
        invalidate_credential: None,
        operation: None,
        disable_subscription: None,
        callback_url: None,
        ..f.clone()
    }
}

/// What became of one outcome in a committed batch.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Written {
    /// Written as given; false when the lease had been lost (only the audit row is).
    As { applied: bool },
    /// Its side effects failed: written as held for review instead.
    Held,
    /// Not even the hold could be written: it goes into the next batch.
    Later,
}

/// Records a batch's outcomes. Optimistically all under one savepoint, two statements
/// per job; if any fails, that savepoint is rolled back and each outcome is written under
/// its own, so one bad outcome is held for review and cannot sink the others.
fn record_outcomes(conn: &Connection, outcomes: &[Finished], now: i64) -> Result<Vec<Written>> {
    if outcomes.is_empty() {
        return Ok(Vec::new());
    }
    let all = Savepoint::new(conn)?;
    let mut written = Vec::with_capacity(outcomes.len());
    for f in outcomes {
        match engine::record(conn, f, now) {
            Ok(applied) => written.push(Written::As { applied }),
            Err(_) => break,
        }
    }
    if written.len() == outcomes.len() {
        all.release()?;
        return Ok(written);
    }
    all.rollback_to()?;
    written.clear();
    for f in outcomes {
        let sp = Savepoint::new(conn)?;
        match engine::record(conn, f, now) {
            Ok(applied) => {
                sp.release()?;
                written.push(Written::As { applied });
            }
            Err(e) => {
                // Never leave the job running under our lease: hold it for a person
                // with the attempt logged, without the side effects that failed.
                log::error!(
                    "recording the outcome of job {}: {e}; holding it for review",
                    f.job_id
                );
                sp.rollback_to()?;
                if engine::record(conn, &held_for_review(f, &e), now).is_ok() {
                    sp.release()?;
                    written.push(Written::Held);
                } else {
                    // Try the outcome again in the next batch rather than forget it.
                    drop(sp);
                    written.push(Written::Later);
                }
            }
        }
    }
    all.release()?;
    Ok(written)
}

/// Commits one batch and returns the outcomes to try again in the next one. Outcomes are
/// written first, then every other write, each under its own savepoint. On a failed
/// transaction (say, SQLITE_BUSY past the busy timeout) every outcome of the batch goes
/// back (their leases are still held), and every other caller gets the error.
fn commit(shared: &Shared, batch: Vec<WriteOp>) -> Vec<Finished> {
    let mut clock = shared.metrics.writer.batch();
    let now = shared.now();
    let mut outcomes: Vec<Finished> = Vec::new();
    let mut execs: Vec<(ExecFn, Sender<Result<Boxed>>)> = Vec::new();
    for op in batch {
        match op {
            WriteOp::Finished(f) => outcomes.push(*f),
            WriteOp::Exec(f, reply) => execs.push((f, reply)),
        }
    }
    let mut replies: Vec<(Sender<Result<Boxed>>, Result<Boxed>)> = Vec::new();
    let mut execs = execs.into_iter();
    // Outcomes free worker slots: refill them in the same transaction.
    let mut claim = if outcomes.is_empty() {
        None
    } else {
        Claim::reserve(shared)
    };
    let mut conn = shared.store.writer();
    let result: Result<Vec<Written>> = (|| {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        clock.lap(Phase::Begin);
        let written = record_outcomes(&tx, &outcomes, now)?;
        clock.lap(Phase::Outcomes);
        for (f, reply) in execs.by_ref() {
            let sp = Savepoint::new(&tx)?;
            match f(&tx) {
                Ok(v) => {
                    sp.release()?;
                    replies.push((reply, Ok(v)));
                }
                Err(e) => {
                    drop(sp);
                    let _ = reply.send(Err(e));
                }
            }
        }
        clock.lap(Phase::Writes);
        if let Some(c) = claim.as_mut() {
            // One bounded candidate query: this holds the write lock. What it cannot fill
            // (limits refusing a backlog) the scheduler does, reading outside the lock.
            let sp = Savepoint::new(&tx)?;
            match c.select(&tx, now, 1).and_then(|()| c.take(&tx, now)) {
                Ok(()) => sp.release()?,
                Err(e) => {
                    log::warn!("writer: claim after a batch failed, the scheduler will: {e}");
                    drop(sp);
                    claim = None;
                }
            }
        }
        clock.lap(Phase::Claim);
        tx.commit()?;
        clock.lap(Phase::Commit);
        Ok(written)
    })();
    drop(conn);
    match result {
        Ok(written) => {
            // Writes from the API (pauses, credentials, ...) and condemned credentials or
            // subscriptions change what preflight reads: workers drop their caches.
            if !replies.is_empty()
                || outcomes.iter().zip(&written).any(|(f, w)| {
                    matches!(w, Written::As { .. })
                        && (f.invalidate_credential.is_some() || f.disable_subscription.is_some())
                })
            {
                shared.store.bump();
            }
            // Committed: hand the claimed jobs out first, so nothing between here and
            // there can strand them. The scheduler passes again when this claim left
            // slots free (it keeps the timer for jobs due later), or when there was none.
            let mut later = Vec::new();
            let refilled = claim.map(|c| {
                let filled = c.filled();
                // Releases (shutdown began) go into the next batch, not this thread's
                // own channel, which it must never block on.
                later.extend(c.dispatch(now).1);
                filled
            });
            let mut any = false;
            for (f, w) in outcomes.into_iter().zip(written) {
                if w == Written::Later {
                    later.push(f);
                    continue;
                }
                any = true;
                if let Some(rec) = &f.record {
                    shared
                        .metrics
                        .attempt(&f.provider, rec.outcome, rec.duration_ms);
                }
                if w == (Written::As { applied: false }) {
                    log::warn!(
                        "job {}: lease lost before its outcome was written; the attempt is logged, the job was taken back",
                        f.job_id
                    );
                }
                shared.waiters.notify(f.job_id);
            }
            for (reply, v) in replies {
                let _ = reply.send(v);
            }
            if any && refilled != Some(true) {
                shared.wake();
            }
            clock.lap(Phase::Handoff);
            later
        }
        Err(e) => {
            log::error!("writer: batch not committed, will retry its outcomes: {e}");
            let failed = || {
                Err(Error::Database {
                    path: shared.store.path().display().to_string(),
                    reason: format!("write failed: {e}"),
                })
            };
            for (reply, _) in replies {
                let _ = reply.send(failed());
            }
            for (_, reply) in execs {
                let _ = reply.send(failed());
            }
            outcomes
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::config::Config;
    use crate::job::{Job, JobResult, JobState};
    use crate::spec::NewJob;
    use crate::store::attempts::{AttemptRecord, Outcome};
    use crate::store::engine::Next;
    use crate::store::{jobs, Store, Synchronous};

    const NOW: i64 = 1_000_000;

    /// An engine's shared state with no thread started: the test is the only actor.
    fn shared() -> (tempfile::TempDir, Shared) {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path().join("w.db"), Synchronous::Normal).expect("store");
        let cfg = Config {
            workers: 1,
            ..Config::default()
        };
        let clock = Arc::new(ManualClock::new(NOW));
        (dir, Shared::new(Arc::new(store), Arc::new(cfg), clock))
    }

    fn insert(shared: &Shared, n: usize) -> Vec<i64> {
        shared
            .store
            .write(|tx| {
                (0..n)
                    .map(|_| {
                        Ok(jobs::insert(tx, &NewJob::get("acme", "http://127.0.0.1:9/x"), NOW)?.id)
                    })
                    .collect()
            })
            .expect("insert")
    }

    fn claim(shared: &Shared, ids: &[i64]) -> Vec<Job> {
        shared
            .store
            .write_quiet(|tx| engine::claim(tx, ids, &shared.owner, NOW + 60_000, NOW))
            .expect("claim")
    }

    /// The outcome a worker hands over for a 200: the constructor workers use, with the
    /// audit row of the request.
    fn success(job: &Job) -> Finished {
        let ok = JobResult {
            status: 200,
            headers: Vec::new(),
            body: b"ok".to_vec(),
            truncated: false,
        };
        let mut f = Finished::for_job(job, Next::Succeed(ok), None, true);
        f.record = Some(AttemptRecord {
            job_id: job.id,
            attempt: job.attempts,
            started_at: NOW,
            duration_ms: 1,
            outcome: Outcome::Success,
            ambiguous: false,
            request_method: job.method.clone(),
            request_url: job.url.clone(),
            request_headers: Vec::new(),
            request_body: None,
            response_status: Some(200),
            response_headers: Some(Vec::new()),
            response_body: Some(b"ok".to_vec()),
            response_truncated: false,
            error: None,
            runner: job.lease_owner.clone().unwrap_or_default(),
        });
        f
    }

    fn state(shared: &Shared, id: i64) -> Job {
        jobs::get(&shared.store.read().expect("read"), id).expect("job")
    }

    fn attempt_rows(shared: &Shared) -> i64 {
        shared
            .store
            .read()
            .expect("read")
            .query_row("SELECT COUNT(*) FROM attempts", [], |r| r.get(0))
            .expect("count")
    }

    #[test]
    fn one_failing_outcome_is_held_and_the_rest_of_its_batch_is_written_as_given() {
        let (_dir, shared) = shared();
        let ids = insert(&shared, 3);
        let jobs = claim(&shared, &ids);
        let mut bad = success(&jobs[1]);
        bad.operation = Some((987_654, 0)); // no such operation: advancing it fails
        let batch = vec![
            WriteOp::Finished(Box::new(success(&jobs[0]))),
            WriteOp::Finished(Box::new(bad)),
            WriteOp::Finished(Box::new(success(&jobs[2]))),
        ];
        assert!(commit(&shared, batch).is_empty(), "nothing left for later");
        assert_eq!(state(&shared, ids[0]).state, JobState::Succeeded);
        assert_eq!(state(&shared, ids[2]).state, JobState::Succeeded);
        let held = state(&shared, ids[1]);
        assert_eq!(held.state, JobState::Draft);
        assert_eq!(
            held.last_error.map(|e| e.reason).as_deref(),
            Some("internal_error")
        );
        assert_eq!(
            attempt_rows(&shared),
            3,
            "every attempt is in the audit log"
        );
    }

    #[test]
    fn a_batch_of_outcomes_claims_the_freed_slots_in_the_same_commit() {
        let (_dir, shared) = shared();
        let ids = insert(&shared, 5);
        let jobs = claim(&shared, &ids[..2]);
        let batch = jobs
            .iter()
            .map(|j| WriteOp::Finished(Box::new(success(j))))
            .collect();
        assert!(commit(&shared, batch).is_empty());
        let handed: Vec<i64> = shared.job_rx.try_iter().map(|q| q.job.id).collect();
        assert_eq!(
            handed,
            ids[2..].to_vec(),
            "the other three were claimed and handed out"
        );
        for id in &ids[2..] {
            assert_eq!(state(&shared, *id).state, JobState::Running);
        }
        assert_eq!(shared.outstanding.load(Ordering::SeqCst), 3);
        // No outcome, no claim: an API write alone leaves the queue to the scheduler.
        let (tx, rx) = bounded(1);
        let exec: ExecFn = Box::new(|_| Ok(Box::new(()) as Boxed));
        assert!(commit(&shared, vec![WriteOp::Exec(exec, tx)]).is_empty());
        assert!(rx.recv().expect("reply").is_ok());
        assert_eq!(shared.outstanding.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn two_claimants_never_reserve_more_than_the_queue_and_a_dropped_claim_gives_back() {
        let (_dir, shared) = shared();
        let first = Claim::reserve(&shared).expect("the queue is empty");
        assert_eq!(
            shared.outstanding.load(Ordering::SeqCst),
            super::super::scheduler::queue_depth(1)
        );
        assert!(
            Claim::reserve(&shared).is_none(),
            "no slot is left for a second claimant"
        );
        drop(first);
        assert_eq!(shared.outstanding.load(Ordering::SeqCst), 0);
        assert!(Claim::reserve(&shared).is_some());
    }

    #[test]
    fn a_claim_that_commits_after_shutdown_began_puts_its_jobs_back_instead_of_queueing_them() {
        let (_dir, shared) = shared();
        let ids = insert(&shared, 3);
        let mut claim = Claim::reserve(&shared).expect("free slots");
        claim
            .select(&shared.store.read().expect("read"), NOW, 1)
            .expect("select");
        shared
            .store
            .write_quiet(|tx| claim.take(tx, NOW))
            .expect("take");
        // Shutdown begins between the commit and the hand-out: the workers may be gone.
        shared.shutdown.store(true, Ordering::SeqCst);
        let (_, releases) = claim.dispatch(NOW);
        assert_eq!(
            shared.job_rx.try_iter().count(),
            0,
            "nothing queued for no one"
        );
        assert_eq!(shared.outstanding.load(Ordering::SeqCst), 0);
        assert_eq!(shared.write_rx.try_iter().count(), 0, "not sent: returned");
        assert_eq!(releases.len(), 3, "a release for each job, for the writer");
        let ops = releases
            .into_iter()
            .map(|f| WriteOp::Finished(Box::new(f)))
            .collect();
        assert!(commit(&shared, ops).is_empty());
        for id in ids {
            let j = state(&shared, id);
            assert_eq!(j.state, JobState::Approved, "put back unchanged");
            assert_eq!(j.attempts, 0, "no attempt counted");
        }
    }

    #[test]
    fn the_writer_claims_nothing_once_shutdown_began() {
        let (_dir, shared) = shared();
        let ids = insert(&shared, 3);
        let jobs = claim(&shared, &ids[..1]);
        shared.shutdown.store(true, Ordering::SeqCst);
        let batch = vec![WriteOp::Finished(Box::new(success(&jobs[0])))];
        assert!(commit(&shared, batch).is_empty());
        assert_eq!(shared.job_rx.try_iter().count(), 0);
        assert_eq!(state(&shared, ids[1]).state, JobState::Approved);
        assert_eq!(shared.outstanding.load(Ordering::SeqCst), 0);
    }
}
