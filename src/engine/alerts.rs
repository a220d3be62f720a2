//! Alert rules from `[alerts]` (SPEC §7), evaluated by the supervisor about once a second.
//!
//! Each rule is in an *episode* while its value is over the threshold. Crossing the
//! threshold opens a new episode and writes one `alert` notification whose dedupe key
//! names the episode, in the same transaction as the episode counter (kept in `settings`):
//! so a rule that stays over its threshold notifies once, not once per pass, and two
//! errand processes on one file cannot both notify. An episode closes when the value is
//! back under 90% of the threshold (hysteresis, so a value hovering at the line does not
//! open an episode every second). `/readyz` and the admin page read the open episodes.

use super::Shared;
use crate::config::Alerts;
use crate::error::Result;
use crate::store::notes::{self, Notice};
use crate::store::stats::{self, AlertState};
use crate::store::{engine, Store};

/// The failure-ratio rule needs at least this many attempts in its window to judge.
pub const MIN_ATTEMPTS_FOR_RATIO: i64 = 10;
/// The failure-ratio window when `window_s` is not set.
pub const DEFAULT_WINDOW_S: i64 = 300;
/// An episode closes when the value is at or under this share of the threshold.
const CLEAR_FRACTION: f64 = 0.9;

/// Names of the rules (contract-free, shown in `/readyz` and on the admin page).
pub const DUE_BACKLOG: &str = "due_backlog";
pub const OLDEST_DUE: &str = "oldest_due";
pub const FAILURE_RATIO: &str = "failure_ratio";

/// One rule's reading now.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub name: &'static str,
    pub value: f64,
    pub threshold: f64,
    /// False when the rule cannot judge now (too few attempts in the window).
    pub judged: bool,
    pub message: String,
}

impl Reading {
    fn over(&self) -> bool {
        self.judged && self.value > self.threshold
    }
    fn cleared(&self) -> bool {
        !self.judged || self.value <= self.threshold * CLEAR_FRACTION
    }
}

/// Reads the value of every configured rule at `now`.
pub fn readings(conn: &rusqlite::Connection, alerts: &Alerts, now: i64) -> Result<Vec<Reading>> {
    let mut out = Vec::new();
    if alerts.max_due_backlog.is_none() && alerts.max_oldest_due_s.is_none() {
        // Skip the backlog query when no rule needs it.
    } else {
        let (due, oldest) = engine::due_backlog(conn, now)?;
        if let Some(max) = alerts.max_due_backlog {
            out.push(Reading {
                name: DUE_BACKLOG,
                value: due as f64,
                threshold: max as f64,
                judged: true,
                message: format!(
                    "{due} jobs are due and waiting, more than alerts.max_due_backlog = {max}"
                ),
            });
        }
        if let Some(max) = alerts.max_oldest_due_s {
            let age_s = oldest.map_or(0, |t| (now - t).max(0) / 1000);
            out.push(Reading {
                name: OLDEST_DUE,
                value: age_s as f64,
                threshold: max as f64,
                judged: true,
                message: format!(
                    "the oldest due job has waited {age_s} s, more than alerts.max_oldest_due_s = {max}"
                ),
            });
        }
    }
    if let Some(max) = alerts.max_failure_ratio {
        let window_s = alerts.window_s.unwrap_or(DEFAULT_WINDOW_S).max(1);
        let (total, failed) = stats::attempts_since(conn, now - window_s * 1000)?;
        let ratio = if total > 0 {
            failed as f64 / total as f64
        } else {
            0.0
        };
        out.push(Reading {
            name: FAILURE_RATIO,
            value: ratio,
            threshold: max,
            judged: total >= MIN_ATTEMPTS_FOR_RATIO,
            message: format!(
                "{failed} of the last {total} attempts ({:.0}%) in {window_s} s failed, more than alerts.max_failure_ratio = {max}",
                ratio * 100.0
            ),
        });
    }
    Ok(out)
}

/// What a reading does to a rule's state: `(new state, open a new episode?)`.
pub fn step(prev: AlertState, r: &Reading) -> (AlertState, bool) {
    if !prev.active && r.over() {
        let next = AlertState {
            episode: prev.episode + 1,
            active: true,
        };
        (next, true)
    } else if prev.active && r.cleared() {
        (
            AlertState {
                episode: prev.episode,
                active: false,
            },
            false,
        )
    } else {
        (prev, false)
    }
}

/// One evaluation at `now`: reads every rule, opens and closes episodes, and writes one
/// `alert` notification per new episode, all in one transaction. Returns the names of
/// the rules whose episode is open afterwards.
pub fn check_once(shared: &Shared, now: i64) -> Result<Vec<String>> {
    check_store(&shared.store, &shared.config.alerts, now)
}

/// The supervisor's once-a-second duty: alert rules, then notification delivery (so an
/// alert raised now is handed to `notify_url` in the same second).
pub(super) fn supervise(shared: &Shared, now: i64) {
    if let Err(e) = check_once(shared, now) {
        log::error!("alerts: {e}");
    }
    if let Err(e) = super::notify::deliver_once(shared, now) {
        log::error!("notify_url delivery: {e}");
    }
}

/// [`check_once`] on a store and rules (the engine-free form, for tests and the CLI).
pub fn check_store(store: &Store, alerts: &Alerts, now: i64) -> Result<Vec<String>> {
    if alerts == &Alerts::default() {
        return Ok(Vec::new());
    }
    store.write_quiet(|tx| {
        let mut active = Vec::new();
        for r in readings(tx, alerts, now)? {
            let prev = stats::alert_state(tx, r.name)?;
            let (next, raised) = step(prev, &r);
            if next != prev {
                stats::set_alert_state(tx, r.name, next)?;
            }
            if raised {
                log::warn!("alert {}: {}", r.name, r.message);
                notes::notify(
                    tx,
                    &Notice {
                        kind: "alert",
                        account: None,
                        provider: None,
                        job_id: None,
                        message: r.message.clone(),
                        dedupe_key: Some(format!("alert:{}:{}", r.name, next.episode)),
                    },
                    now,
                )?;
            } else if prev.active && !next.active {
                log::info!("alert {} cleared", r.name);
            }
            if next.active {
                active.push(r.name.to_string());
            }
        }
        Ok(active)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(value: f64, judged: bool) -> Reading {
        Reading {
            name: DUE_BACKLOG,
            value,
            threshold: 10.0,
            judged,
            message: String::new(),
        }
    }

    #[test]
    fn an_episode_opens_once_and_closes_with_hysteresis() {
        let s0 = AlertState::default();
        let (s1, raised) = step(s0, &reading(11.0, true));
        assert!(raised);
        assert_eq!(
            s1,
            AlertState {
                episode: 1,
                active: true
            }
        );
        let (s2, raised) = step(s1, &reading(50.0, true));
        assert!(!raised, "still over: the same episode");
        let (s3, _) = step(s2, &reading(9.5, true));
        assert!(s3.active, "just under the threshold is not clear yet");
        let (s4, _) = step(s3, &reading(9.0, true));
        assert!(!s4.active);
        let (s5, raised) = step(s4, &reading(12.0, true));
        assert!(raised);
        assert_eq!(s5.episode, 2);
        let (s6, raised) = step(AlertState::default(), &reading(99.0, false));
        assert!(!raised && !s6.active, "an unjudged reading never raises");
    }
}
