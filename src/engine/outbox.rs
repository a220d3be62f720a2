//! Drains the outbox: each row becomes a job (or a channel event) and is deleted in the
//! same transaction; a row that is not valid moves to `outbox_rejected` with the reason.
//! Run by the scheduler when `PRAGMA data_version` shows another connection committed.

use serde_json::Value;

use super::Shared;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::spec::NewJob;
use crate::store::{channels, jobs, outbox};

/// Rows per transaction.
const BATCH: usize = 1000;

/// Checks an event payload against `channel`'s schema from the config (any JSON object
/// when the channel has none). The error names the field.
pub fn check_payload(config: &Config, channel: &str, payload: &Value) -> Result<()> {
    match config.channels.get(channel) {
        Some(schema) => schema.check(payload),
        None if payload.is_object() => Ok(()),
        None => Err(Error::invalid("payload", "must be a JSON object")),
    }
}

/// Validates and publishes an event payload on `channel` (API and outbox alike): checks
/// the channel's schema from the config, then creates the deliveries.
pub fn publish(
    conn: &rusqlite::Connection,
    config: &Config,
    channel: &str,
    payload: &Value,
    now: i64,
) -> Result<Vec<i64>> {
    crate::spec::check_name("channel", channel)?;
    check_payload(config, channel, payload)?;
    channels::publish(conn, channel, payload, now)
}

fn event(
    config: &Config,
    conn: &rusqlite::Connection,
    payload: &str,
    now: i64,
) -> Result<Vec<i64>> {
    let v: Value = serde_json::from_str(payload)
        .map_err(|e| Error::invalid("payload", format!("not valid JSON: {e}")))?;
    let channel = v["channel"]
        .as_str()
        .ok_or_else(|| Error::invalid("channel", "is required for kind = 'event'"))?;
    let inner = v
        .get("payload")
        .ok_or_else(|| Error::invalid("payload.payload", "is required for kind = 'event'"))?;
    publish(conn, config, channel, inner, now)
}

fn job(config: &Config, conn: &rusqlite::Connection, payload: &str, now: i64) -> Result<i64> {
    let v: Value = serde_json::from_str(payload)
        .map_err(|e| Error::invalid("payload", format!("not valid JSON: {e}")))?;
    let job = NewJob::from_json(&v)?;
    if !config.provider(&job.provider).allows(&job.url) {
        return Err(Error::invalid(
            "request.url",
            format!("is outside provider {}'s base_url allowlist", job.provider),
        ));
    }
    Ok(jobs::insert(conn, &job, now)?.id)
}

/// Drains every row now in the outbox. Returns how many rows became jobs or events.
pub fn drain_once(shared: &Shared, now: i64) -> Result<usize> {
    let mut total = 0;
    loop {
        let (taken, done) = shared.store.write_quiet(|tx| {
            let rows = outbox::take(tx, BATCH)?;
            let mut done = 0;
            for row in &rows {
                let outcome = match row.kind.as_str() {
                    _ if row.unreadable.is_some() => Err(Error::invalid(
                        "payload",
                        row.unreadable.clone().unwrap_or_default(),
                    )),
                    "job" => job(&shared.config, tx, &row.payload, now).map(|_| ()),
                    "event" => event(&shared.config, tx, &row.payload, now).map(|_| ()),
                    other => Err(Error::invalid(
                        "kind",
                        format!("{other:?} is neither 'job' nor 'event'"),
                    )),
                };
                match outcome {
                    Ok(()) => {
                        outbox::delete(tx, row.id)?;
                        done += 1;
                    }
                    Err(e @ Error::Invalid { .. }) => {
                        log::warn!("outbox row {} rejected: {e}", row.id);
                        outbox::reject(tx, row, &e.to_string(), now)?;
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok((rows.len(), done))
        })?;
        total += done;
        if taken < BATCH {
            break;
        }
    }
    if total > 0 {
        shared.wake();
    }
    Ok(total)
}
