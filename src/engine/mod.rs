//! The engine: the threads that run jobs, and the channels between them.
//!
//! ```text
//!  API / outbox / other process ──commit──▶ SQLite ◀──claim── scheduler ──Job──▶ workers (N)
//!                                              ▲                                    │ Finished
//!                                              └── writer (group commit, claims) ◀──┘
//!  supervisor: heartbeats, thread restarts, lease extension, reaper, pruning
//! ```
//!
//! Invariants: only workers do network I/O; only the writer commits job outcomes; claims
//! go through one pass ([`scheduler::Claim`]), run by the scheduler in its own transaction
//! or by the writer after a batch of outcomes; every state change is guarded by the
//! expected state.

pub mod alerts;
pub mod decide;
pub mod limits;
pub mod metrics;
pub mod notify;
pub mod outbox;
mod scheduler;
mod supervisor;
pub mod waiters;
mod worker;
pub mod writer;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::clock::SharedClock;
use crate::config::Config;
use crate::error::Result;
use crate::job::Job;
use crate::store::Store;

pub use scheduler::run_once as scheduler_pass;
pub use supervisor::reap_once;

/// A claimed job on its way to a worker, with what the provider limits took for it: a
/// job that is not run after all (preflight, a panic, shutdown) gives exactly that back.
pub(crate) struct Queued {
    pub job: Job,
    pub admission: limits::Admission,
}

/// Faults a test can inject to prove the supervisor restarts a dead thread.
#[derive(Debug, Default)]
pub struct Faults {
    /// The scheduler panics at its next loop.
    pub panic_scheduler: AtomicBool,
    /// One worker panics before taking its next job.
    pub panic_worker: AtomicBool,
}

/// A thread's last sign of life (Unix ms of the engine clock).
#[derive(Debug, Default)]
pub struct Heartbeat(AtomicI64);

impl Heartbeat {
    fn beat(&self, now: i64) {
        self.0.store(now, Ordering::Relaxed);
    }
    /// The last beat.
    pub fn last(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Calls in progress, by job and attempt, with the moment by which each must be over (its
/// timeout plus a lease of grace). The lease heartbeat extends every lease this process
/// holds except those of calls past that moment: a worker wedged in a call lets its job's
/// lease lapse, and the reaper takes the job back instead of it staying `running` for
/// ever. Deadlines are on the monotonic clock, as ureq's own timeouts are: a wall-clock
/// jump (a resumed VM, an NTP step) must not make a healthy call look wedged.
#[derive(Debug, Default)]
pub struct InFlight(std::sync::Mutex<std::collections::HashMap<(i64, i64), Instant>>);

impl InFlight {
    /// Notes that attempt `attempt` of job `id` is being sent and must be over by
    /// `deadline`, until the returned guard is dropped.
    pub fn start(&self, id: i64, attempt: i64, deadline: Instant) -> InFlightCall<'_> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((id, attempt), deadline);
        InFlightCall {
            set: self,
            key: (id, attempt),
        }
    }

    /// The jobs whose calls are still running after their deadline.
    pub fn overdue(&self, now: Instant) -> Vec<i64> {
        let calls = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut ids: Vec<i64> = calls
            .iter()
            .filter(|(_, deadline)| **deadline < now)
            .map(|((id, _), _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }
}

/// A call in progress; dropping it (the call returned, or its worker panicked) ends it.
pub struct InFlightCall<'a> {
    set: &'a InFlight,
    key: (i64, i64),
}

impl Drop for InFlightCall<'_> {
    fn drop(&mut self) {
        self.set
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

/// State shared by every engine thread.
pub struct Shared {
    pub store: Arc<Store>,
    pub config: Arc<Config>,
    pub clock: SharedClock,
    /// This process's lease owner id: `host:pid:starttime:random`.
    pub owner: String,
    pub agent: ureq::Agent,
    shutdown: AtomicBool,
    wake_tx: Sender<()>,
    wake_rx: Receiver<()>,
    job_tx: Sender<Queued>,
    job_rx: Receiver<Queued>,
    pub writer: writer::WriterHandle,
    write_rx: Receiver<writer::WriteOp>,
    writer_stop: AtomicBool,
    /// Jobs claimed and not yet handed to the writer (queued or running).
    outstanding: AtomicUsize,
    pub limits: limits::Limits,
    pub waiters: waiters::Waiters,
    pub metrics: metrics::Metrics,
    pub faults: Faults,
    pub scheduler_beat: Heartbeat,
    pub writer_beat: Heartbeat,
    pub in_flight: InFlight,
    /// Set when the scheduler should be replaced (it stalled); it exits when it sees a
    /// generation that is not its own.
    scheduler_generation: AtomicUsize,
}

impl Shared {
    /// The state of an engine whose threads are not started yet (tests drive its parts).
    pub(crate) fn new(store: Arc<Store>, config: Arc<Config>, clock: SharedClock) -> Shared {
        let workers = config.workers;
        let (wake_tx, wake_rx) = bounded(1);
        let (job_tx, job_rx) = bounded(scheduler::queue_depth(workers));
        let (write_tx, write_rx) = bounded(16 * 1024);
        Shared {
            agent: crate::http_call::agent(workers),
            limits: limits::Limits::new(config.clone()),
            store,
            config,
            clock,
            owner: owner_id(),
            shutdown: AtomicBool::new(false),
            wake_tx,
            wake_rx,
            job_tx,
            job_rx,
            writer: writer::WriterHandle::new(write_tx),
            write_rx,
            writer_stop: AtomicBool::new(false),
            outstanding: AtomicUsize::new(0),
            waiters: waiters::Waiters::default(),
            metrics: metrics::Metrics::default(),
            faults: Faults::default(),
            scheduler_beat: Heartbeat::default(),
            writer_beat: Heartbeat::default(),
            in_flight: InFlight::default(),
            scheduler_generation: AtomicUsize::new(0),
        }
    }

    /// Wakes the scheduler now (a new job, a freed worker).
    pub fn wake(&self) {
        let _ = self.wake_tx.try_send(());
    }

    /// True once shutdown has begun: no new claims.
    pub fn shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    /// Claimed jobs not yet handed to the writer (queued or running): 0 when idle.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::SeqCst)
    }

    /// The current time of the engine clock.
    pub fn now(&self) -> i64 {
        self.clock.now_ms()
    }
}

struct Threads {
    scheduler: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
    workers: Vec<Option<JoinHandle<()>>>,
}

/// A running engine. Dropping it without [`Engine::shutdown`] leaves its leases to be
/// recovered by the next start, as after a crash.
pub struct Engine {
    shared: Arc<Shared>,
    threads: Arc<Mutex<Threads>>,
    supervisor: Option<JoinHandle<()>>,
    checkpointer: Option<JoinHandle<()>>,
    /// Stops the supervisor and the checkpointer.
    supervisor_stop: Arc<AtomicBool>,
}

/// This process's lease owner id. The start time (from /proc) lets a later errand on the
/// same host tell that the process is gone even if its pid was reused.
fn owner_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string());
    let pid = std::process::id();
    let start = supervisor::process_start_time(pid).unwrap_or_default();
    format!("{host}:{pid}:{start}:{}", &crate::rand::token()[..8])
}

impl Engine {
    /// Starts the scheduler, the workers, the writer and the supervisor. Leases left by
    /// a dead predecessor on this host are recovered at once.
    pub fn start(store: Arc<Store>, config: Arc<Config>, clock: SharedClock) -> Result<Engine> {
        let workers = config.workers;
        // The checkpointer copies the WAL in the background; the writer's own commits do
        // it only as a backstop, when the WAL has grown this far anyway.
        store.set_writer_autocheckpoint(supervisor::WRITER_AUTOCHECKPOINT)?;
        let shared = Arc::new(Shared::new(store, config, clock));
        let now = shared.now();
        shared.scheduler_beat.beat(now);
        shared.writer_beat.beat(now);
        // Recover a dead predecessor's leases before the first claim.
        if let Err(e) = supervisor::reap_once(&shared, now) {
            log::warn!("recovering leases at start: {e}");
        }
        let threads = Threads {
            scheduler: Some(scheduler::spawn(shared.clone())),
            writer: Some(writer::spawn(shared.clone())),
            workers: (0..workers)
                .map(|i| Some(worker::spawn(shared.clone(), i)))
                .collect(),
        };
        let threads = Arc::new(Mutex::new(threads));
        let supervisor_stop = Arc::new(AtomicBool::new(false));
        let supervisor =
            supervisor::spawn(shared.clone(), threads.clone(), supervisor_stop.clone());
        let checkpointer = supervisor::spawn_checkpointer(shared.clone(), supervisor_stop.clone());
        log::info!(
            "engine started: {workers} workers, lease owner {}",
            shared.owner
        );
        Ok(Engine {
            shared,
            threads,
            supervisor: Some(supervisor),
            checkpointer: Some(checkpointer),
            supervisor_stop,
        })
    }

    /// The state shared with the API.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops claiming, releases queued jobs unchanged, lets in-flight calls finish for up
    /// to `grace`, writes every outcome, and stops the threads. Calls still running after
    /// `grace` are left to the lease recovery of the next start.
    pub fn shutdown(mut self, grace: Duration) {
        let s = self.shared.clone();
        s.shutdown.store(true, Ordering::SeqCst);
        s.wake();
        let deadline = Instant::now() + grace;
        let mut threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = threads.scheduler.take() {
            let _ = h.join();
        }
        for slot in threads.workers.iter_mut() {
            if let Some(h) = slot.take() {
                while !h.is_finished() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if h.is_finished() {
                    let _ = h.join();
                } else {
                    log::warn!("a worker is still in a call after the shutdown grace; its lease will be recovered at the next start");
                }
            }
        }
        // A claim that raced the shutdown flag may have queued jobs after every worker
        // left: put them back unchanged (no attempt counted) rather than leave them
        // running under this process's lease.
        for Queued { job, admission } in s.job_rx.try_iter() {
            s.limits.give_back(&job.provider, &admission);
            s.outstanding.fetch_sub(1, Ordering::SeqCst);
            s.writer
                .finished(worker::release(&job, "errand is shutting down"));
        }
        s.writer_stop.store(true, Ordering::SeqCst);
        if let Some(h) = threads.writer.take() {
            let _ = h.join();
        }
        drop(threads);
        self.supervisor_stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.supervisor.take() {
            let _ = h.join();
        }
        if let Some(h) = self.checkpointer.take() {
            let _ = h.join();
        }
        log::info!("engine stopped");
    }
}
