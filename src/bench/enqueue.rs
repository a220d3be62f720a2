//! Enqueue throughput (scenario 3).
//!
//! Three figures: 32 clients through the real `POST /v1/jobs` of an in-process server
//! (each answered 202 only after its job is committed); the same clients straight into the
//! engine's group-commit writer (the ceiling without HTTP); and errand's own outbox
//! drainer (`engine::outbox::drain_once`) emptying a filled outbox. The engine is
//! globally paused while it measures, so nothing is claimed meanwhile.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::report::EnqueueReport;
use super::target::Target;
use super::{config, job, median, remove_db, Options, Workspace};
use crate::clock::SystemClock;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::store::{accounts, jobs, Store};

/// Enqueues `n` jobs from `clients` threads through the writer of a running engine
/// (each call returns after the job's batch committed). Returns jobs/s.
fn through_writer(engine: &Engine, clients: usize, n: usize, url: &str) -> Result<f64> {
    let shared = engine.shared();
    let template = job("enqueue", url);
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    let failures: Vec<Error> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    while next.fetch_add(1, Ordering::Relaxed) < n {
                        let j = template.clone();
                        let now = shared.now();
                        shared.writer.call(move |c| jobs::insert(c, &j, now))?;
                        shared.wake();
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| match h.join() {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some(Error::ShuttingDown),
            })
            .collect()
    });
    let elapsed = start.elapsed();
    if let Some(e) = failures.into_iter().next() {
        return Err(e);
    }
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// Enqueues `n` jobs through `POST {base}/v1/jobs` from `clients` threads, each request
/// answered 202 only after its job is committed; `body` is the job JSON of SPEC §4 and
/// `token` the API token, if one is set. Returns jobs/s.
pub fn enqueue_http(
    base: &str,
    token: Option<&str>,
    clients: usize,
    n: usize,
    body: &str,
) -> Result<f64> {
    let agent = crate::http_call::agent(clients);
    let url = format!("{base}/v1/jobs");
    let auth = token.map(|t| format!("Bearer {t}"));
    let next = AtomicUsize::new(0);
    let refused = AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..clients {
            s.spawn(|| {
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    let mut req = agent.post(&url).header("Content-Type", "application/json");
                    if let Some(a) = &auth {
                        req = req.header("Authorization", a);
                    }
                    // Read to the end, as any client does: only then does the connection
                    // go back to the pool (else each call opens a new one).
                    let answered = req.send(body).is_ok_and(|mut r| {
                        r.status().as_u16() == 202 && r.body_mut().read_to_vec().is_ok()
                    });
                    if !answered {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let elapsed = start.elapsed();
    let refused = refused.load(Ordering::Relaxed);
    if refused > 0 {
        return Err(Error::invalid(
            "POST /v1/jobs",
            format!("{refused} of {n} enqueues were not answered 202"),
        ));
    }
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// Fills the outbox of `store` with `n` rows of `payload` (as an application would),
/// then times `pass` (a drain pass) until the outbox is empty. Returns rows/s.
pub fn time_outbox(
    store: &Store,
    n: usize,
    payload: &str,
    pass: &mut dyn FnMut(&Store) -> Result<usize>,
) -> Result<f64> {
    let mut left = n;
    while left > 0 {
        let rows = left.min(50_000);
        store.write(|tx| crate::store::bench::fill_outbox(tx, rows, payload))?;
        left -= rows;
    }
    let deadline = Instant::now() + Duration::from_secs(120) + Duration::from_millis(n as u64);
    let start = Instant::now();
    loop {
        pass(store)?;
        if crate::store::bench::outbox_len(&*store.read()?)? == 0 {
            break;
        }
        if Instant::now() > deadline {
            return Err(Error::invalid(
                "outbox",
                "the outbox was not drained before the deadline",
            ));
        }
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Scenario 3, `runs` times on fresh databases.
pub fn enqueue(
    opts: &Options,
    ws: &Workspace,
    target: &Target,
    progress: &mut dyn FnMut(&str),
) -> Result<EnqueueReport> {
    let url = target.url("/enqueue");
    let payload = serde_json::json!({
        "account": "outbox",
        "provider": super::PROVIDER,
        "request": {"method": "GET", "url": url},
    })
    .to_string();
    let body = serde_json::json!({
        "account": "enqueue",
        "provider": super::PROVIDER,
        "request": {"method": "GET", "url": url},
    })
    .to_string();
    let mut writer_runs = Vec::new();
    let mut http_runs = Vec::new();
    let mut outbox_runs = Vec::new();
    for run in 0..opts.runs {
        let (store, path) = ws.fresh(opts.synchronous)?;
        // Paused, so the engine only enqueues: nothing is claimed while we measure.
        store.write(|tx| accounts::set_global_pause(tx, true))?;
        drop(store);
        let mut cfg = config(&path, opts.workers, opts.synchronous);
        cfg.listen = "127.0.0.1:0".to_string();
        let server = crate::server::Server::start(cfg, Arc::new(SystemClock))?;
        let base = format!("http://{}", server.http.addr());
        let http = enqueue_http(&base, None, opts.enqueue_clients, opts.enqueue_jobs, &body);
        let rate = through_writer(
            &server.engine,
            opts.enqueue_clients,
            opts.enqueue_jobs,
            &url,
        );
        let shared = server.engine.shared().clone();
        let store = shared.store.clone();
        let outbox = time_outbox(&store, opts.enqueue_jobs, &payload, &mut |_| {
            crate::engine::outbox::drain_once(&shared, shared.now())
        });
        drop(shared);
        server.stop();
        let (http, rate, outbox) = (http?, rate?, outbox?);
        let stored = crate::store::bench::account_counts(&*store.read()?, "enqueue")?;
        if stored.0 + stored.1 != 2 * opts.enqueue_jobs as i64 {
            return Err(Error::invalid(
                "enqueue",
                format!(
                    "{} jobs stored of {}",
                    stored.0 + stored.1,
                    2 * opts.enqueue_jobs
                ),
            ));
        }
        drop(store);
        remove_db(&path);
        progress(&format!(
            "enqueue run {}: HTTP {http:.0} jobs/s, writer {rate:.0} jobs/s, outbox {outbox:.0} rows/s",
            run + 1
        ));
        http_runs.push(http);
        writer_runs.push(rate);
        outbox_runs.push(outbox);
    }
    Ok(EnqueueReport {
        clients: opts.enqueue_clients,
        jobs: opts.enqueue_jobs,
        writer_jobs_per_s: median(&writer_runs),
        writer_runs,
        http_jobs_per_s: median(&http_runs),
        http_runs,
        outbox_rows_per_s: median(&outbox_runs),
        outbox_runs,
        note: "http = POST /v1/jobs, each answered 202 after its job committed; writer = the \
               same clients straight into the group-commit writer (no HTTP); outbox = errand's \
               drainer emptying a filled outbox"
            .to_string(),
    })
}
