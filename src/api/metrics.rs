//! Monitoring endpoints outside `/v1`: `/metrics` (Prometheus text exposition 0.0.4) and
//! `/readyz` (database writable, scheduler heartbeat fresh, no alert open).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::json;

use super::{Api, Reply, Req};
use crate::engine::metrics::{WriterPhase, DURATION_BUCKETS};
use crate::error::Result;
use crate::job::JobState;
use crate::store::attempts::Outcome;
use crate::store::{engine, jobs, stats};

/// How long `/readyz` waits for its probe write.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// True when the caller may read monitoring data: no token configured, the API token
/// as a bearer, or an admin session.
fn allowed(api: &Api, req: &Req) -> bool {
    match api.shared.config.api_token.as_deref() {
        None => true,
        Some(t) => req.has_bearer(t) || api.admin_sessions.get(req).is_some(),
    }
}

/// Escapes a label value (backslash, quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn num(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// `GET /metrics`.
pub fn metrics(api: &Api, req: &Req) -> Reply {
    if !allowed(api, req) {
        return Reply::error(
            401,
            "unauthorized",
            "send Authorization: Bearer <api token>",
        )
        .header("WWW-Authenticate", "Bearer");
    }
    match render(api) {
        Ok(text) => Reply::with_type(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            text.into_bytes(),
        ),
        Err(e) => Reply::from_error(&e),
    }
}

/// The exposition text.
pub fn render(api: &Api) -> Result<String> {
    let shared = &api.shared;
    let now = shared.now();
    let (counts, (due, oldest)) = {
        let conn = shared.store.read()?;
        (
            jobs::count_by_state(&conn)?,
            engine::due_backlog(&conn, now)?,
        )
    };
    let attempts = shared.metrics.attempts();
    let mut out = String::with_capacity(4096);
    family(
        &mut out,
        "errand_attempts_total",
        "counter",
        "Attempts committed by this process since it started, by provider and outcome.",
    );
    let providers: BTreeSet<&String> = attempts.keys().map(|(p, _)| p).collect();
    for p in &providers {
        for o in Outcome::ALL {
            let n = attempts
                .get(&((*p).clone(), o.as_str()))
                .copied()
                .unwrap_or(0);
            let _ = writeln!(
                out,
                "errand_attempts_total{{provider=\"{}\",outcome=\"{}\"}} {n}",
                label(p),
                o.as_str()
            );
        }
    }
    family(
        &mut out,
        "errand_jobs",
        "gauge",
        "Jobs in the database by state.",
    );
    for st in JobState::ALL {
        let n = counts.iter().find(|(s, _)| *s == st).map_or(0, |(_, n)| *n);
        let _ = writeln!(out, "errand_jobs{{state=\"{}\"}} {n}", st.as_str());
    }
    family(
        &mut out,
        "errand_due_backlog",
        "gauge",
        "Jobs due now (approved or retry, run_at passed) and not yet claimed.",
    );
    let _ = writeln!(out, "errand_due_backlog {due}");
    family(
        &mut out,
        "errand_oldest_due_seconds",
        "gauge",
        "How long the oldest due job has been waiting (0 when none).",
    );
    let age = oldest.map_or(0.0, |t| (now - t).max(0) as f64 / 1000.0);
    let _ = writeln!(out, "errand_oldest_due_seconds {}", num(age));
    family(
        &mut out,
        "errand_attempt_duration_seconds",
        "histogram",
        "Duration of attempts committed by this process, by provider.",
    );
    for (p, h) in shared.metrics.durations() {
        let p = label(&p);
        for (i, le) in DURATION_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "errand_attempt_duration_seconds_bucket{{provider=\"{p}\",le=\"{}\"}} {}",
                num(*le),
                h.counts[i]
            );
        }
        let _ = writeln!(
            out,
            "errand_attempt_duration_seconds_bucket{{provider=\"{p}\",le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(
            out,
            "errand_attempt_duration_seconds_sum{{provider=\"{p}\"}} {}",
            num(h.sum)
        );
        let _ = writeln!(
            out,
            "errand_attempt_duration_seconds_count{{provider=\"{p}\"}} {}",
            h.count
        );
    }
    family(
        &mut out,
        "errand_thread_restarts_total",
        "counter",
        "Engine threads the supervisor restarted after a panic or a stall.",
    );
    let _ = writeln!(
        out,
        "errand_thread_restarts_total {}",
        shared
            .metrics
            .thread_restarts
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    family(
        &mut out,
        "errand_writer_seconds_total",
        "counter",
        "Wall time of the writer thread (one transaction per batch) by phase; its rate near 1 means the writer is the limit.",
    );
    let writer = &shared.metrics.writer;
    for (phase, secs) in WriterPhase::ALL.iter().zip(writer.seconds()) {
        let _ = writeln!(
            out,
            "errand_writer_seconds_total{{phase=\"{}\"}} {}",
            phase.as_str(),
            num(secs)
        );
    }
    family(
        &mut out,
        "errand_writer_batches_total",
        "counter",
        "Transactions the writer committed (or tried to).",
    );
    let _ = writeln!(out, "errand_writer_batches_total {}", writer.batches());
    let active = stats::active_alerts(&*shared.store.read()?)?;
    family(
        &mut out,
        "errand_alert_active",
        "gauge",
        "1 while an alert rule of [alerts] is over its threshold.",
    );
    for name in [
        crate::engine::alerts::DUE_BACKLOG,
        crate::engine::alerts::OLDEST_DUE,
        crate::engine::alerts::FAILURE_RATIO,
    ] {
        let on = u8::from(active.iter().any(|a| a == name));
        let _ = writeln!(out, "errand_alert_active{{alert=\"{name}\"}} {on}");
    }
    Ok(out)
}

/// Writes the HELP and TYPE lines of a metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The scheduler counts as stalled after this long without a heartbeat.
fn stall_ms(tick_ms: u64) -> i64 {
    (5 * tick_ms as i64).max(5_000)
}

/// `GET /readyz`: 200 when ready, else 503 naming every reason.
pub fn readyz(api: &Api) -> Reply {
    let shared = &api.shared;
    let now = shared.now();
    let mut reasons: Vec<String> = Vec::new();
    if api.shutting_down() || shared.shutting_down() {
        reasons.push("shutting_down".into());
    }
    let beat_age = now - shared.scheduler_beat.last();
    if beat_age > stall_ms(shared.config.tick_ms) {
        reasons.push(format!("scheduler_stalled: no heartbeat for {beat_age} ms"));
    }
    // A real write through the writer, bounded in time: a wedged writer or a database
    // that refuses writes (disk full, read-only, locked by another process) is not ready.
    let (tx, rx) = crossbeam_channel::bounded(1);
    let probe = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("errand-readyz".into())
        .spawn(move || {
            let now = probe.now();
            let _ = tx.send(probe.writer.call(move |c| stats::probe_write(c, now)));
        });
    match spawned.map(|_| rx.recv_timeout(PROBE_TIMEOUT)) {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => reasons.push(format!("database_not_writable: {e}")),
        Ok(Err(_)) => reasons.push("database_not_writable: the probe write timed out".into()),
        Err(e) => reasons.push(format!("database_not_writable: {e}")),
    }
    let alerts = match shared.store.read().and_then(|c| stats::active_alerts(&c)) {
        Ok(a) => a,
        Err(e) => {
            reasons.push(format!("database_not_readable: {e}"));
            Vec::new()
        }
    };
    reasons.extend(alerts.iter().map(|a| format!("alert: {a}")));
    if reasons.is_empty() {
        Reply::json(200, &json!({"status": "ready", "alerts": alerts}))
    } else {
        Reply::json(
            503,
            &json!({"status": "not_ready", "reasons": reasons, "alerts": alerts}),
        )
    }
}
