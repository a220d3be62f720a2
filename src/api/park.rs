//! Parked `Prefer: wait=N` requests. The tiny_http `Request` itself waits here with its
//! deadline, not a handler thread: the writer signals the job's waiters after it commits
//! an outcome ([`crate::engine::waiters`]), and one responder thread builds each parked
//! request's answer when signalled or when its deadline passes; a few answering threads
//! write the answers out, so one client that reads slowly cannot hold up the others. No
//! waiter polls the database.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, Select, Sender};

use super::{v1, Api, Reply};
use crate::error::{Error, Result};
use crate::store::jobs;

/// The most requests parked at once; beyond it a wait answers 503 with `Retry-After`.
pub const MAX_PARKED: usize = 1024; // the default of `max_parked_waits`

/// The longest `Prefer: wait` honoured, in seconds (SPEC §4).
pub const MAX_WAIT_S: u64 = 60;

/// How a parked request is answered once it is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitKind {
    /// `POST /v1/jobs`: 200 with the job if it finished, else 202 with id and token.
    Created,
    /// `GET /v1/jobs/{id}`: 200 with the job if it finished, else 202 and `Retry-After`.
    Poll,
    /// An operation (`POST` when `created`, else `GET`): the wait follows its current
    /// step's job from step to step until the operation is no longer running.
    Operation { op_id: i64, created: bool },
}

/// A request to park: which job, until when, and how to answer.
#[derive(Debug, Clone)]
pub struct Wait {
    pub job_id: i64,
    pub deadline: Instant,
    pub kind: WaitKind,
    /// Extra headers for the answer (e.g. `Idempotent-Replayed`).
    pub headers: Vec<(String, String)>,
    /// The (account, stored key) of the `Idempotency-Key` of the create this answers: a
    /// 200 answer is noted with the key, so that replays answer 200 too.
    pub key: Option<(String, String)>,
}

struct Parked {
    raw: tiny_http::Request,
    wait: Wait,
    woken: Receiver<()>,
}

enum Msg {
    Park(Box<Parked>),
    Stop,
}

/// Threads that write answers to parked requests' clients.
const ANSWERERS: usize = 4;

/// The registry of parked requests: a channel to the responder, a channel of answers to
/// write, and a count for the cap.
pub struct Parking {
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
    out_tx: Sender<(tiny_http::Request, Reply)>,
    out_rx: Receiver<(tiny_http::Request, Reply)>,
    stopped: AtomicBool,
    count: AtomicUsize,
    max: usize,
}

impl Parking {
    /// An empty registry holding at most `max` requests.
    pub fn new(max: usize) -> Parking {
        let (tx, rx) = unbounded();
        let (out_tx, out_rx) = unbounded();
        Parking {
            tx,
            rx,
            out_tx,
            out_rx,
            stopped: AtomicBool::new(false),
            count: AtomicUsize::new(0),
            max,
        }
    }

    /// How many requests are parked now.
    pub fn parked(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Parks `raw` until `wait.job_id` leaves approved/running/retry or the deadline
    /// passes. Answers at once when the job is already done, and with 503 beyond the cap.
    pub(super) fn park(&self, api: &Api, raw: tiny_http::Request, wait: Wait) {
        if self.count.fetch_add(1, Ordering::SeqCst) >= self.max {
            // An enqueue has already committed its job: it answers at once (202 with the
            // id and token) rather than with an error a client would retry into a
            // duplicate. A poll changed nothing, so it can be told to come back.
            let created = matches!(
                wait.kind,
                WaitKind::Created | WaitKind::Operation { created: true, .. }
            );
            if created {
                let woken = subscribe(api, wait.job_id, wait.deadline);
                self.answer(api, Parked { raw, wait, woken });
                return;
            }
            self.count.fetch_sub(1, Ordering::SeqCst);
            let reply = Reply::error(
                503,
                "too_many_waits",
                &format!(
                    "{} requests are already waiting (Prefer: wait); poll without it or retry shortly",
                    self.max
                ),
            )
            .header("Retry-After", "1");
            let _ = raw.respond(reply.into_response());
            return;
        }
        // Register before reading, so a commit in between still wakes us.
        let woken = subscribe(api, wait.job_id, wait.deadline);
        let mut parked = Parked { raw, wait, woken };
        match settle(api, &mut parked) {
            Some(false) | None => self.answer(api, parked),
            Some(true) => {
                if let Err(e) = self.tx.send(Msg::Park(Box::new(parked))) {
                    if let Msg::Park(p) = e.into_inner() {
                        self.answer(api, *p);
                    }
                }
            }
        }
    }

    /// Tells the responder to answer everything parked and stop.
    pub(super) fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
    }

    /// Answers a parked request with the job as it is now.
    fn answer(&self, api: &Api, p: Parked) {
        self.count.fetch_sub(1, Ordering::SeqCst);
        let reply = match p.wait.kind {
            WaitKind::Operation { op_id, created } => {
                v1::operations::wait_reply(api, op_id, created)
            }
            kind => match read_job(api, p.wait.job_id) {
                Ok(job) => v1::jobs::wait_reply(api, kind, &job),
                Err(e) => Reply::from_error(&e),
            },
        };
        let mut reply = reply;
        reply.headers.extend(p.wait.headers);
        if reply.status == 200 {
            if let Some((account, key)) = p.wait.key {
                // Noted in the writer's next batch: this thread answers every parked
                // request and must not wait for a commit.
                api.shared
                    .writer
                    .submit(move |c| crate::store::idempotency::answered(c, &account, &key, 200));
            }
        }
        if let Err(e) = self.out_tx.send((p.raw, reply)) {
            let (raw, reply) = e.into_inner();
            let _ = raw.respond(reply.into_response());
        }
    }
}

fn subscribe(api: &Api, job_id: i64, until: Instant) -> Receiver<()> {
    let (tx, rx) = bounded(1);
    api.shared.waiters.register(job_id, tx, until);
    rx
}

fn read_job(api: &Api, id: i64) -> Result<crate::job::Job> {
    jobs::get(&*api.shared.store.read()?, id)
}

/// `still_waiting`, following an operation to its current step: when the step changed,
/// subscribe to the new step's job and look again.
fn settle(api: &Api, p: &mut Parked) -> Option<bool> {
    loop {
        let before = p.wait.job_id;
        let r = still_waiting(api, &mut p.wait);
        if p.wait.job_id == before {
            return r;
        }
        p.woken = subscribe(api, p.wait.job_id, p.wait.deadline);
    }
}

/// `Some(true)` while the wait goes on: the job (or operation) is pending and the
/// deadline is ahead. For an operation, moves `wait.job_id` to its current step's job.
fn still_waiting(api: &Api, wait: &mut Wait) -> Option<bool> {
    if Instant::now() >= wait.deadline {
        return Some(false);
    }
    if let WaitKind::Operation { op_id, .. } = wait.kind {
        return match v1::operations::current_step_job(api, op_id) {
            Ok(Some(job_id)) => {
                wait.job_id = job_id;
                Some(true)
            }
            Ok(None) => Some(false),
            Err(e) => {
                log::warn!("reading operation {op_id} for a parked wait: {e}");
                None
            }
        };
    }
    match read_job(api, wait.job_id) {
        Ok(job) => Some(job.state.is_pending()),
        Err(Error::NotFound(_)) => Some(false),
        Err(e) => {
            log::warn!("reading job {} for a parked wait: {e}", wait.job_id);
            None
        }
    }
}

/// Starts the responder thread of `api.parking`.
pub(super) fn spawn_responder(api: std::sync::Arc<Api>) -> Result<JoinHandle<()>> {
    for i in 0..ANSWERERS {
        let api = api.clone();
        std::thread::Builder::new()
            .name(format!("errand-http-answer-{i}"))
            .spawn(move || answer_loop(&api.parking))
            .map_err(Error::Io)?;
    }
    std::thread::Builder::new()
        .name("errand-http-responder".into())
        .spawn(move || respond_loop(&api))
        .map_err(Error::Io)
}

/// An answering thread: writes answers until the responder has stopped and none is left.
fn answer_loop(parking: &Parking) {
    loop {
        match parking.out_rx.recv_timeout(Duration::from_millis(200)) {
            Ok((raw, reply)) => {
                let _ = raw.respond(reply.into_response());
            }
            Err(_) if parking.stopped.load(Ordering::SeqCst) && parking.out_rx.is_empty() => return,
            Err(_) => {}
        }
    }
}

/// The responder: waits on the control channel and every parked request's wake-up at
/// once, until the nearest deadline.
fn respond_loop(api: &Api) {
    let parking = &api.parking;
    let mut parked: Vec<Parked> = Vec::new();
    loop {
        let next_deadline = parked.iter().map(|p| p.wait.deadline).min();
        let timeout = next_deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(3600));
        // Which event fired; the select borrows `parked`, so act on it afterwards.
        let event = {
            let mut sel = Select::new();
            sel.recv(&parking.rx);
            for p in &parked {
                sel.recv(&p.woken);
            }
            match sel.select_timeout(timeout) {
                Err(_) => None,
                Ok(op) if op.index() == 0 => Some(Err(op.recv(&parking.rx))),
                Ok(op) => {
                    let i = op.index() - 1;
                    let _ = op.recv(&parked[i].woken);
                    Some(Ok(i))
                }
            }
        };
        match event {
            None => {}
            Some(Err(Ok(Msg::Park(p)))) => parked.push(*p),
            Some(Err(Ok(Msg::Stop) | Err(_))) => {
                for p in parked.drain(..) {
                    parking.answer(api, p);
                }
                parking.stopped.store(true, Ordering::SeqCst);
                return;
            }
            Some(Ok(i)) => {
                let mut p = parked.swap_remove(i);
                p.woken = subscribe(api, p.wait.job_id, p.wait.deadline);
                match settle(api, &mut p) {
                    Some(true) => parked.push(p),
                    Some(false) | None => parking.answer(api, p),
                }
            }
        }
        let now = Instant::now();
        let (over, waiting): (Vec<Parked>, Vec<Parked>) =
            parked.into_iter().partition(|p| p.wait.deadline <= now);
        parked = waiting;
        for p in over {
            parking.answer(api, p);
        }
    }
}
