//! Delivery of notifications to the application's `notify_url` (SPEC §7): each one becomes
//! an ordinary errand job (POST of the notification as JSON, signed the Standard Webhooks
//! way), so it is retried, logged and held like any other call.
//!
//! Nothing can be lost: the supervisor's pass enqueues the delivery job and marks the
//! notification with that job's id in one transaction, so a crash leaves either both or
//! neither. Notifications about delivery jobs themselves are marked 0 and not delivered,
//! so an unreachable `notify_url` cannot feed itself a chain of deliveries.
//!
//! A receiver rejects a `webhook-timestamp` older than a few minutes, and a retried
//! delivery may run hours later; so the same pass re-signs waiting deliveries with a fresh
//! timestamp shortly before they are due. `webhook-id` never changes.

use serde_json::json;

use super::Shared;
use crate::error::Result;
use crate::job::JobState;
use crate::spec::{Due, NewJob, OutboundKey};
use crate::store::{jobs, stats};
use crate::time::format_rfc3339;
use crate::webhook;

/// The account that owns delivery jobs.
pub const NOTIFY_ACCOUNT: &str = "errand";
/// The provider of delivery jobs: `[providers.errand-notify]` tunes their policy.
pub const NOTIFY_PROVIDER: &str = "errand-notify";
/// Notifications handed over per pass.
const BATCH: i64 = 200;
/// A waiting delivery due within this many ms is re-signed...
const RESIGN_AHEAD_MS: i64 = 5_000;
/// ...when its signature is older than this many seconds.
const RESIGN_AFTER_S: i64 = 60;

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// One pass at `now`: enqueues a delivery job for every undelivered notification (when
/// `notify_url` is set) and re-signs deliveries about to run. Returns how many
/// notifications were handed over.
pub fn deliver_once(shared: &Shared, now: i64) -> Result<usize> {
    let Some(url) = shared.config.notify_url.clone() else {
        return Ok(0);
    };
    let secret = shared.config.notify_secret.clone();
    let handed = shared.store.write(|tx| {
        let mut handed = 0;
        for n in stats::undelivered(tx, BATCH)? {
            if n.provider.as_deref() == Some(NOTIFY_PROVIDER) {
                stats::mark_delivered(tx, n.id, 0)?;
                continue;
            }
            let body = json!({
                "type": format!("notification.{}", n.kind),
                "timestamp": format_rfc3339(now),
                "data": {
                    "id": n.id.to_string(),
                    "kind": n.kind,
                    "account": n.account,
                    "provider": n.provider,
                    "job_id": n.job_id.map(|i| i.to_string()),
                    "message": n.message,
                    "created_at": format_rfc3339(n.created_at),
                },
            })
            .to_string()
            .into_bytes();
            let msg_id = format!("msg_{}", crate::rand::token());
            let mut headers = vec![("Content-Type".to_string(), "application/json".to_string())];
            match &secret {
                Some(s) => headers.extend(webhook::headers(s, &msg_id, now / 1000, &body)),
                None => {
                    headers.push(("webhook-id".to_string(), msg_id.clone()));
                    headers.push(("webhook-timestamp".to_string(), (now / 1000).to_string()));
                }
            }
            let job = NewJob {
                account: NOTIFY_ACCOUNT.to_string(),
                provider: NOTIFY_PROVIDER.to_string(),
                method: "POST".to_string(),
                url: url.clone(),
                headers,
                body: Some(body),
                timeout_ms: None,
                due: Due::After(0),
                max_attempts: None,
                backoff: None,
                idempotency_key: OutboundKey::Given(msg_id),
                expires_at: None,
                callback_url: None,
                state: JobState::Approved,
                metadata: json!({"notification_id": n.id.to_string()}),
            };
            let inserted = jobs::insert(tx, &job, now)?;
            if stats::mark_delivered(tx, n.id, inserted.id)? {
                handed += 1;
            } else {
                // Marked by another process meanwhile: roll this pass back.
                return Err(crate::error::Error::Expired {
                    id: inserted.id,
                    expected: JobState::Approved,
                });
            }
        }
        if let Some(s) = &secret {
            resign_due(tx, s, now)?;
        }
        Ok(handed)
    })?;
    if handed > 0 {
        shared.wake();
    }
    Ok(handed)
}

/// Gives deliveries due within [`RESIGN_AHEAD_MS`] a fresh timestamp and signature.
fn resign_due(tx: &rusqlite::Connection, secret: &webhook::Secret, now: i64) -> Result<()> {
    for job in stats::pending_jobs_of(tx, NOTIFY_PROVIDER, 100)? {
        if job.run_at > now + RESIGN_AHEAD_MS {
            break; // ordered by run_at
        }
        let Some(id) = header(&job.headers, "webhook-id").map(str::to_string) else {
            continue;
        };
        let signed_at: i64 = header(&job.headers, "webhook-timestamp")
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        if now / 1000 - signed_at < RESIGN_AFTER_S {
            continue;
        }
        let body = job.body.clone().unwrap_or_default();
        let mut headers: Vec<(String, String)> = job
            .headers
            .iter()
            .filter(|(k, _)| !k.to_ascii_lowercase().starts_with("webhook-"))
            .cloned()
            .collect();
        headers.extend(webhook::headers(secret, &id, now / 1000, &body));
        stats::replace_pending_headers(tx, job.id, job.attempts, &headers, now)?;
    }
    Ok(())
}
