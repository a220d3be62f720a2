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
//! delivery may run hours later; so the worker signs each attempt when it sends it
//! (signing key `notify`). `webhook-id` never changes.

use serde_json::json;

use super::Shared;
use crate::error::Result;
use crate::job::JobState;
use crate::spec::{Due, Internal, NewJob, OutboundKey};
use crate::store::{jobs, stats};
use crate::time::format_rfc3339;

/// The account that owns delivery jobs.
pub const NOTIFY_ACCOUNT: &str = "errand";
/// The provider of delivery jobs: `[providers.errand-notify]` tunes their policy.
pub const NOTIFY_PROVIDER: &str = "errand-notify";
/// The signing key of notification deliveries: `notify_secret` from the config.
pub const NOTIFY_SIGNING_KEY: &str = "notify";
/// Notifications handed over per pass.
const BATCH: i64 = 200;
/// One pass at `now`: enqueues a delivery job for every undelivered notification (when
/// `notify_url` is set) and re-signs deliveries about to run. Returns how many
/// notifications were handed over.
pub fn deliver_once(shared: &Shared, now: i64) -> Result<usize> {
    let notify_url = shared.config.notify_url.clone();
    let triage_url = shared.config.triage_url.clone();
    if notify_url.is_none() && triage_url.is_none() {
        return Ok(0);
    }
    let handed = shared.store.write_quiet(|tx| {
        let mut handed = 0;
        for n in stats::undelivered(tx, BATCH)? {
            // New triage entries go to `triage_url` when it is set; everything else to
            // `notify_url`. One with nowhere to go is marked 0 (not delivered) so it
            // cannot hold up the ones behind it.
            let url = if n.kind == "triage" {
                triage_url.clone().or_else(|| notify_url.clone())
            } else {
                notify_url.clone()
            };
            let Some(url) = url else {
                stats::mark_delivered(tx, n.id, 0)?;
                continue;
            };
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
            let headers = vec![("Content-Type".to_string(), "application/json".to_string())];
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
                idempotency_key: OutboundKey::Given(msg_id.clone()),
                expires_at: None,
                callback_url: None,
                state: JobState::Approved,
                metadata: json!({"notification_id": n.id.to_string()}),
                // Signed by the worker at send time with `notify_secret`, so a late retry
                // carries a fresh timestamp; the message id never changes.
                internal: Internal {
                    webhook_id: Some(msg_id.clone()),
                    signing_key: Some(NOTIFY_SIGNING_KEY.to_string()),
                    ..Internal::default()
                },
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
        Ok(handed)
    })?;
    if handed > 0 {
        shared.wake();
    }
    Ok(handed)
}
