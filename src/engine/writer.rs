//! The writer thread: commits job outcomes and other writes in batches (group commit),
//! one `BEGIN IMMEDIATE` transaction per batch and a savepoint per item, so one bad item
//! cannot sink the batch and throughput is not one commit per job.

use std::any::Any;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};
use rusqlite::{Connection, TransactionBehavior};

use super::Shared;
use crate::error::{Error, Result};
use crate::store::engine::{self, Finished};

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

/// Writes the ops of one transaction, moving each into `finished`/`replies` as it is
/// done. On an error the op being written is left in `current`, and the ops not yet
/// reached stay in `ops`: nothing is dropped.
fn apply(
    tx: &mut rusqlite::Transaction<'_>,
    ops: &mut std::vec::IntoIter<WriteOp>,
    current: &mut Option<Box<Finished>>,
    finished: &mut Vec<(Box<Finished>, bool)>,
    replies: &mut Vec<(Sender<Result<Boxed>>, Result<Boxed>)>,
    later: &mut Vec<Finished>,
    now: i64,
) -> Result<()> {
    for op in ops.by_ref() {
        match op {
            WriteOp::Finished(f) => {
                *current = Some(f);
                let Some(f) = current.as_deref() else {
                    continue;
                };
                let mut sp = tx.savepoint()?;
                match engine::record(&sp, f, now) {
                    Ok(applied) => {
                        sp.commit()?;
                        if let Some(f) = current.take() {
                            finished.push((f, applied));
                        }
                    }
                    Err(e) => {
                        // Never leave the job running under our lease: hold it for a person
                        // with the attempt logged, without the side effects that failed.
                        log::error!(
                            "recording the outcome of job {}: {e}; holding it for review",
                            f.job_id
                        );
                        sp.rollback()?;
                        let fallback = held_for_review(f, &e);
                        if engine::record(&sp, &fallback, now).is_ok() {
                            sp.commit()?;
                            current.take();
                            finished.push((Box::new(fallback), true));
                        } else {
                            // Not even the hold could be written: try the outcome again in
                            // the next batch rather than forget it.
                            drop(sp);
                            if let Some(f) = current.take() {
                                later.push(*f);
                            }
                        }
                    }
                }
            }
            WriteOp::Exec(f, reply) => {
                let mut sp = tx.savepoint()?;
                match f(&sp) {
                    Ok(v) => {
                        sp.commit()?;
                        replies.push((reply, Ok(v)));
                    }
                    Err(e) => {
                        sp.rollback()?;
                        drop(sp);
                        let _ = reply.send(Err(e));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Commits one batch and returns the outcomes to try again in the next one: on a failed
/// transaction (say, SQLITE_BUSY past the busy timeout) every outcome of the batch — the
/// written, the one being written and the ones not reached — goes back (their leases are
/// still held), and every other caller gets the error.
fn commit(shared: &Shared, batch: Vec<WriteOp>) -> Vec<Finished> {
    let now = shared.now();
    let mut finished: Vec<(Box<Finished>, bool)> = Vec::new();
    let mut replies: Vec<(Sender<Result<Boxed>>, Result<Boxed>)> = Vec::new();
    let mut later: Vec<Finished> = Vec::new();
    let mut current: Option<Box<Finished>> = None;
    let mut ops = batch.into_iter();
    let mut conn = shared.store.writer();
    let result: Result<()> = (|| {
        let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        apply(
            &mut tx,
            &mut ops,
            &mut current,
            &mut finished,
            &mut replies,
            &mut later,
            now,
        )?;
        tx.commit()?;
        Ok(())
    })();
    drop(conn);
    match result {
        Ok(()) => {
            // Writes from the API (pauses, credentials, ...) and condemned credentials or
            // subscriptions change what preflight reads: workers drop their caches.
            if !replies.is_empty()
                || finished.iter().any(|(f, _)| {
                    f.invalidate_credential.is_some() || f.disable_subscription.is_some()
                })
            {
                shared.store.bump();
            }
            for (f, applied) in &finished {
                if let Some(rec) = &f.record {
                    shared
                        .metrics
                        .attempt(&f.provider, rec.outcome, rec.duration_ms);
                }
                if !applied {
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
            if !finished.is_empty() {
                shared.wake();
            }
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
            let mut retry: Vec<Finished> = finished.into_iter().map(|(f, _)| *f).collect();
            retry.extend(current.map(|f| *f));
            retry.extend(later);
            for op in ops {
                match op {
                    WriteOp::Finished(f) => retry.push(*f),
                    WriteOp::Exec(_, reply) => {
                        let _ = reply.send(failed());
                    }
                }
            }
            retry
        }
    }
}
