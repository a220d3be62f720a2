//! Channels and their subscriptions; publishing an event creates one delivery job per
//! active subscriber, in the caller's transaction.

use rusqlite::{named_params, Connection, OptionalExtension};
use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::spec::{check_name, check_url, NewJob, OutboundKey};
use crate::store::jobs;
use crate::time::format_rfc3339;

/// The provider name of delivery jobs (configurable as `[providers.webhook]`).
pub const DELIVERY_PROVIDER: &str = "webhook";

/// What the API shows of a subscription: never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Subscription {
    pub channel: String,
    pub name: String,
    pub url: String,
    pub status: String,
    pub reason: Option<String>,
}

/// Creates or replaces subscription `name` of `channel`.
pub fn put_subscription(
    conn: &Connection,
    channel: &str,
    name: &str,
    url: &str,
    secret: &str,
    now: i64,
) -> Result<()> {
    check_name("channel", channel)?;
    check_name("name", name)?;
    check_url("url", url)?;
    if !secret.starts_with("whsec_") {
        return Err(Error::invalid("secret", "must look like whsec_<base64>"));
    }
    crate::webhook::Secret::parse(secret).map_err(|why| Error::invalid("secret", why))?;
    conn.execute(
        "INSERT OR IGNORE INTO channels (name, created_at) VALUES (?1, ?2)",
        rusqlite::params![channel, now],
    )?;
    conn.execute(
        "INSERT INTO subscriptions (channel, name, url, secret, status, created_at, updated_at)
         VALUES (:c, :n, :u, :s, 'active', :now, :now)
         ON CONFLICT (channel, name) DO UPDATE SET url = :u, secret = :s, status = 'active',
             reason = NULL, updated_at = :now",
        named_params! {":c": channel, ":n": name, ":u": url, ":s": secret, ":now": now},
    )?;
    Ok(())
}

/// Deletes a subscription; `NotFound` when there is none.
pub fn delete_subscription(conn: &Connection, channel: &str, name: &str) -> Result<()> {
    let n = conn.execute(
        "DELETE FROM subscriptions WHERE channel = ?1 AND name = ?2",
        [channel, name],
    )?;
    if n == 0 {
        return Err(Error::NotFound(format!("subscription {channel}/{name}")));
    }
    Ok(())
}

/// Lists subscriptions of a channel (or all), without secrets; 1,000 at most.
pub fn list_subscriptions(conn: &Connection, channel: Option<&str>) -> Result<Vec<Subscription>> {
    let mut stmt = conn.prepare_cached(
        "SELECT channel, name, url, status, reason FROM subscriptions
          WHERE (?1 IS NULL OR channel = ?1) ORDER BY channel, name LIMIT 1000",
    )?;
    let rows = stmt.query_map([channel], subscription_from_row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Reads a subscription from a row `channel, name, url, status, reason` (never the secret).
pub(crate) fn subscription_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Subscription> {
    Ok(Subscription {
        channel: r.get(0)?,
        name: r.get(1)?,
        url: r.get(2)?,
        status: r.get(3)?,
        reason: r.get(4)?,
    })
}

/// The secret of an active subscription named by a signing key
/// `subscription:CHANNEL/NAME`; None when it is gone or disabled.
pub fn signing_secret(conn: &Connection, signing_key: &str) -> Result<Option<String>> {
    let Some((channel, name)) = signing_key
        .strip_prefix("subscription:")
        .and_then(|r| r.split_once('/'))
    else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT secret FROM subscriptions WHERE channel = ?1 AND name = ?2 AND status = 'active'",
    )?;
    Ok(stmt.query_row([channel, name], |r| r.get(0)).optional()?)
}

/// Disables the subscription named by a signing key (a subscriber answered 410 Gone).
/// True when it changed.
pub fn disable(conn: &Connection, signing_key: &str, reason: &str, now: i64) -> Result<bool> {
    let Some((channel, name)) = signing_key
        .strip_prefix("subscription:")
        .and_then(|r| r.split_once('/'))
    else {
        return Ok(false);
    };
    let n = conn.execute(
        "UPDATE subscriptions SET status = 'disabled', reason = ?1, updated_at = ?2
          WHERE channel = ?3 AND name = ?4 AND status = 'active'",
        rusqlite::params![reason, now, channel, name],
    )?;
    Ok(n > 0)
}

/// Publishes a (validated) payload on `channel`: one delivery job per active
/// subscription, each with a stable Standard Webhooks message id and signed at send time
/// with that subscription's secret. Returns the delivery job ids.
pub fn publish(conn: &Connection, channel: &str, payload: &Value, now: i64) -> Result<Vec<i64>> {
    check_name("channel", channel)?;
    let msg_id = format!("msg_{}", crate::rand::token());
    let body = crate::channel::envelope(channel, &format_rfc3339(now), payload).to_string();
    let subs: Vec<(String, String)> = {
        let mut stmt = conn.prepare_cached(
            "SELECT name, url FROM subscriptions WHERE channel = ?1 AND status = 'active' ORDER BY name",
        )?;
        let rows = stmt.query_map([channel], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()?
    };
    let mut ids = Vec::with_capacity(subs.len());
    for (name, url) in subs {
        let mut job = NewJob::get(channel, &url);
        job.provider = DELIVERY_PROVIDER.to_string();
        job.method = "POST".into();
        job.headers = vec![("Content-Type".into(), "application/json".into())];
        job.body = Some(body.clone().into_bytes());
        job.idempotency_key = OutboundKey::Disabled;
        job.metadata = serde_json::json!({"channel": channel, "subscription": name});
        job.internal.webhook_id = Some(msg_id.clone());
        job.internal.signing_key = Some(format!("subscription:{channel}/{name}"));
        ids.push(jobs::insert(conn, &job, now)?.id);
    }
    Ok(ids)
}
