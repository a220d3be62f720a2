//! Reads for the admin page, `/metrics`, `/readyz` and alerts, and the small writes they
//! need (alert episodes, notification delivery marks). Every query here is bounded by an
//! index or a LIMIT, so a page view stays cheap with a million jobs.

use rusqlite::{named_params, Connection, OptionalExtension};

use crate::error::Result;
use crate::store::channels::Subscription;
use crate::store::operations::{self, Operation};

/// How many of the newest attempts "recent failures" looks through, so the query stays
/// bounded when failures are rare.
const RECENT_ATTEMPTS_SCANNED: i64 = 5000;

/// (attempts, failed attempts) that started at or after `since` (Unix ms). Served by the
/// `attempts_started` index.
pub fn attempts_since(conn: &Connection, since: i64) -> Result<(i64, i64)> {
    let mut stmt = conn.prepare_cached(
        "SELECT COUNT(*), COALESCE(SUM(outcome != 'success'), 0) FROM attempts
          WHERE started_at >= ?1",
    )?;
    Ok(stmt.query_row([since], |r| Ok((r.get(0)?, r.get(1)?)))?)
}

/// One failed attempt for the overview.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub job_id: i64,
    pub account: String,
    pub provider: String,
    pub attempt: i64,
    pub started_at: i64,
    pub outcome: String,
    pub status: Option<i64>,
    pub error: Option<String>,
}

/// The newest failed attempts (at most `limit`), among the newest attempts.
pub fn recent_failures(conn: &Connection, limit: i64) -> Result<Vec<Failure>> {
    let mut stmt = conn.prepare_cached(
        "SELECT a.job_id, COALESCE(j.account, '?'), COALESCE(j.provider, '?'), a.attempt,
                a.started_at, a.outcome, a.response_status, a.error
           FROM (SELECT * FROM attempts ORDER BY id DESC LIMIT :scan) a
           LEFT JOIN jobs j ON j.id = a.job_id
          WHERE a.outcome != 'success'
          ORDER BY a.id DESC LIMIT :limit",
    )?;
    let rows = stmt.query_map(
        named_params! {":scan": RECENT_ATTEMPTS_SCANNED, ":limit": limit.clamp(1, 100)},
        |r| {
            Ok(Failure {
                job_id: r.get(0)?,
                account: r.get(1)?,
                provider: r.get(2)?,
                attempt: r.get(3)?,
                started_at: r.get(4)?,
                outcome: r.get(5)?,
                status: r.get(6)?,
                error: r.get(7)?,
            })
        },
    )?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Held jobs per provider, for "retry everything held for this provider": `draft` with
/// an error (held by the engine, or a canceled job reopened for review), never a job
/// created as a draft to wait for approval.
pub fn held_by_provider(conn: &Connection) -> Result<Vec<(String, i64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT provider, COUNT(*) FROM jobs WHERE state = 'draft' AND last_error IS NOT NULL
          GROUP BY provider ORDER BY provider",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Ids of up to `limit` held jobs of `provider` with an id above `after`, in id order
/// (keyset, so a bulk action walks the list once even if a job is held again meanwhile).
pub fn held_ids(conn: &Connection, provider: &str, after: i64, limit: i64) -> Result<Vec<i64>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id FROM jobs WHERE state = 'draft' AND last_error IS NOT NULL
            AND provider = ?1 AND id > ?2
          ORDER BY id LIMIT ?3",
    )?;
    let rows = stmt.query_map(rusqlite::params![provider, after, limit], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// An alert's episode counter and whether an episode is open, from `settings`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AlertState {
    pub episode: i64,
    pub active: bool,
}

fn alert_key(name: &str) -> String {
    format!("alert.{name}")
}

/// Reads the state of alert `name` (never raised: episode 0, inactive).
pub fn alert_state(conn: &Connection, name: &str) -> Result<AlertState> {
    let mut stmt = conn.prepare_cached("SELECT value FROM settings WHERE key = ?1")?;
    let v: Option<String> = stmt.query_row([alert_key(name)], |r| r.get(0)).optional()?;
    Ok(v.and_then(|v| {
        let (e, a) = v.split_once(' ')?;
        Some(AlertState {
            episode: e.parse().ok()?,
            active: a == "1",
        })
    })
    .unwrap_or_default())
}

/// Writes the state of alert `name`.
pub fn set_alert_state(conn: &Connection, name: &str, s: AlertState) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO settings (key, value) VALUES (:k, :v)
         ON CONFLICT (key) DO UPDATE SET value = :v",
    )?;
    stmt.execute(named_params! {
        ":k": alert_key(name),
        ":v": format!("{} {}", s.episode, if s.active { "1" } else { "0" }),
    })?;
    Ok(())
}

/// Names of the alerts with an open episode.
pub fn active_alerts(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT substr(key, 7) FROM settings WHERE key LIKE 'alert.%' AND value LIKE '% 1'
          ORDER BY key",
    )?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// A small real write, to prove the database takes writes (`/readyz`).
pub fn probe_write(conn: &Connection, now: i64) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO settings (key, value) VALUES ('ready_probe', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?;
    stmt.execute([now.to_string()])?;
    Ok(())
}

/// A notification not yet handed to `notify_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undelivered {
    pub id: i64,
    pub kind: String,
    pub account: Option<String>,
    pub provider: Option<String>,
    pub job_id: Option<i64>,
    pub message: String,
    pub created_at: i64,
}

/// Up to `limit` notifications without a delivery job, oldest first.
pub fn undelivered(conn: &Connection, limit: i64) -> Result<Vec<Undelivered>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, kind, account, provider, job_id, message, created_at
           FROM notifications INDEXED BY notifications_undelivered
          WHERE delivery_job IS NULL ORDER BY id LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit], |r| {
        Ok(Undelivered {
            id: r.get(0)?,
            kind: r.get(1)?,
            account: r.get(2)?,
            provider: r.get(3)?,
            job_id: r.get(4)?,
            message: r.get(5)?,
            created_at: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Records that notification `id` is delivered by job `job_id` (0: not delivered, by
/// design). False when another pass marked it first.
pub fn mark_delivered(conn: &Connection, id: i64, job_id: i64) -> Result<bool> {
    let mut stmt = conn.prepare_cached(
        "UPDATE notifications SET delivery_job = ?2 WHERE id = ?1 AND delivery_job IS NULL",
    )?;
    Ok(stmt.execute([id, job_id])? > 0)
}

/// The delivery job of notification `id`, if it has one.
pub fn delivery_job(conn: &Connection, id: i64) -> Result<Option<i64>> {
    let mut stmt = conn.prepare_cached("SELECT delivery_job FROM notifications WHERE id = ?1")?;
    Ok(stmt
        .query_row([id], |r| r.get::<_, Option<i64>>(0))
        .optional()?
        .flatten())
}

/// Up to `limit` (at most 200) operations with an id below `before`, newest first: one
/// page of the admin page's list (keyset paging on the primary key).
pub fn recent_operations(
    conn: &Connection,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<Operation>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {} FROM operations WHERE id < :before ORDER BY id DESC LIMIT :limit",
        operations::COLUMNS
    ))?;
    let rows = stmt.query_map(
        named_params! {":before": before.unwrap_or(i64::MAX), ":limit": limit.clamp(1, 200)},
        operations::from_row,
    )?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Up to `limit` (at most 500) subscriptions after `(channel, name)` in key order, without
/// their secrets: one page of the admin page's list (keyset paging on the primary key).
pub fn subscriptions_after(
    conn: &Connection,
    after: Option<(&str, &str)>,
    limit: i64,
) -> Result<Vec<Subscription>> {
    let (channel, name) = after.unwrap_or(("", ""));
    let mut stmt = conn.prepare_cached(
        "SELECT channel, name, url, status, reason FROM subscriptions
          WHERE (channel, name) > (:channel, :name)
          ORDER BY channel, name LIMIT :limit",
    )?;
    let rows = stmt.query_map(
        named_params! {":channel": channel, ":name": name, ":limit": limit.clamp(1, 500)},
        super::channels::subscription_from_row,
    )?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::notes::{self, Notice};

    fn conn() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(crate::store::migrate::SCHEMA).unwrap();
        c
    }

    #[test]
    fn alert_state_round_trips_and_lists_active() {
        let c = conn();
        assert_eq!(
            alert_state(&c, "due_backlog").unwrap(),
            AlertState::default()
        );
        let open = AlertState {
            episode: 3,
            active: true,
        };
        set_alert_state(&c, "due_backlog", open).unwrap();
        set_alert_state(&c, "oldest_due", AlertState::default()).unwrap();
        assert_eq!(alert_state(&c, "due_backlog").unwrap(), open);
        assert_eq!(active_alerts(&c).unwrap(), vec!["due_backlog".to_string()]);
    }

    #[test]
    fn undelivered_notifications_are_marked_once() {
        let c = conn();
        let n = Notice {
            kind: "alert",
            account: None,
            provider: None,
            job_id: None,
            message: "m".into(),
            dedupe_key: None,
        };
        notes::notify(&c, &n, 1).unwrap();
        let u = undelivered(&c, 10).unwrap();
        assert_eq!(u.len(), 1);
        assert!(mark_delivered(&c, u[0].id, 7).unwrap());
        assert!(!mark_delivered(&c, u[0].id, 8).unwrap());
        assert_eq!(delivery_job(&c, u[0].id).unwrap(), Some(7));
        assert!(undelivered(&c, 10).unwrap().is_empty());
    }

    #[test]
    fn operations_and_subscriptions_page_by_key() {
        let c = conn();
        for i in 0..3 {
            let steps = vec![serde_json::json!({"name": format!("s{i}"),
                "request": {"url": "https://api.example.com/x"}})];
            operations::create(&c, "acme", &steps, 1).unwrap();
        }
        let first: Vec<i64> = recent_operations(&c, None, 2)
            .unwrap()
            .iter()
            .map(|o| o.id)
            .collect();
        assert_eq!(first, vec![3, 2]);
        let rest = recent_operations(&c, Some(2), 2).unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].steps[0]["name"], "s0");

        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        for (ch, name) in [("b", "x"), ("a", "z"), ("a", "y")] {
            crate::store::channels::put_subscription(&c, ch, name, "https://h.example/", secret, 1)
                .unwrap();
        }
        let keys = |v: Vec<Subscription>| -> Vec<(String, String)> {
            v.into_iter().map(|s| (s.channel, s.name)).collect()
        };
        let page = keys(subscriptions_after(&c, None, 2).unwrap());
        assert_eq!(
            page,
            vec![("a".into(), "y".into()), ("a".into(), "z".into())]
        );
        let next = keys(subscriptions_after(&c, Some(("a", "z")), 2).unwrap());
        assert_eq!(next, vec![("b".to_string(), "x".to_string())]);
    }
}
