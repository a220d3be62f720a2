//! Pure: when to try again. Sidekiq's default curve, an exponential policy with equal
//! jitter, and a capped `Retry-After`.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The default number of attempts (contract).
pub const DEFAULT_MAX_ATTEMPTS: i64 = 25;

/// How much longer than the policy's own maximum delay a `Retry-After` may park a job.
pub const RETRY_AFTER_SLACK_MS: i64 = 3_600_000;

/// An exponential policy: delay(n) = min(max_ms, initial_ms · multiplierⁿ) scaled by a
/// random factor in [0.5, 1].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    pub initial_ms: i64,
    pub multiplier: f64,
    pub max_ms: i64,
}

impl Backoff {
    /// Checks the policy's numbers; `field` names it in the error.
    pub fn validate(&self, field: &str) -> Result<()> {
        if self.initial_ms < 1 {
            return Err(Error::invalid(
                format!("{field}.initial_ms"),
                "must be at least 1",
            ));
        }
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err(Error::invalid(
                format!("{field}.multiplier"),
                "must be a number >= 1",
            ));
        }
        if self.max_ms < self.initial_ms {
            return Err(Error::invalid(
                format!("{field}.max_ms"),
                "must be >= initial_ms",
            ));
        }
        Ok(())
    }
}

/// Sidekiq's delay in ms for the `n`-th retry (from 0): n⁴ + 15 + rand(0..10)·(n+1) s.
pub fn sidekiq_delay_ms(n: u32, unit_random: f64) -> i64 {
    let n = i64::from(n.min(1000));
    let r = (unit_random * 10.0).floor() as i64;
    (n.pow(4) + 15 + r * (n + 1)) * 1000
}

/// The delay in ms before retry `n` (0 = first retry) under `policy` (None = Sidekiq).
pub fn delay_ms(n: u32, policy: Option<&Backoff>, unit_random: f64) -> i64 {
    match policy {
        None => sidekiq_delay_ms(n, unit_random),
        Some(p) => {
            let raw = p.initial_ms as f64 * p.multiplier.powi(n.min(1000) as i32);
            let capped = raw.min(p.max_ms as f64);
            (capped * (0.5 + 0.5 * unit_random)).max(1.0) as i64
        }
    }
}

/// The largest delay the policy itself can produce, for capping `Retry-After`.
pub fn max_delay_ms(policy: Option<&Backoff>, max_attempts: i64) -> i64 {
    match policy {
        None => sidekiq_delay_ms(max_attempts.clamp(1, 1000) as u32, 1.0),
        Some(p) => p.max_ms,
    }
}

/// Parses a `Retry-After` value — delta seconds or an HTTP date — into a delay in ms
/// from `now_ms`. Unparseable or past values give None.
pub fn parse_retry_after(value: &str, now_ms: i64) -> Option<i64> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some((secs.min(10_000_000) as i64) * 1000);
    }
    let t = httpdate::parse_http_date(v).ok()?;
    let at = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64;
    (at > now_ms).then_some(at - now_ms)
}

/// When the next attempt may run: the policy's delay, pushed later by a `Retry-After`
/// hint, which is capped at the policy's maximum plus [`RETRY_AFTER_SLACK_MS`].
pub fn next_run_at(
    now_ms: i64,
    retry_index: u32,
    policy: Option<&Backoff>,
    max_attempts: i64,
    retry_after_ms: Option<i64>,
    unit_random: f64,
) -> i64 {
    let own = delay_ms(retry_index, policy, unit_random);
    let delay = match retry_after_ms {
        Some(hint) => {
            let cap = max_delay_ms(policy, max_attempts) + RETRY_AFTER_SLACK_MS;
            own.max(hint.min(cap))
        }
        None => own,
    };
    now_ms.saturating_add(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidekiq_curve_matches_the_formula() {
        assert_eq!(sidekiq_delay_ms(0, 0.0), 15_000);
        assert_eq!(sidekiq_delay_ms(0, 0.99), 24_000);
        assert_eq!(sidekiq_delay_ms(2, 0.0), 31_000);
        assert_eq!(sidekiq_delay_ms(3, 0.5), (81 + 15 + 5 * 4) * 1000);
    }

    #[test]
    fn exponential_is_capped_and_jittered_into_the_upper_half() {
        let p = Backoff {
            initial_ms: 500,
            multiplier: 2.0,
            max_ms: 60_000,
        };
        assert_eq!(delay_ms(0, Some(&p), 0.999_999), 499);
        assert_eq!(delay_ms(0, Some(&p), 0.0), 250);
        assert_eq!(delay_ms(3, Some(&p), 0.0), 2000);
        assert_eq!(delay_ms(30, Some(&p), 0.0), 30_000);
        for i in 0..100 {
            let d = delay_ms(5, Some(&p), f64::from(i) / 100.0);
            assert!((8_000..=16_000).contains(&d), "{d}");
        }
    }

    #[test]
    fn retry_after_pushes_later_but_is_capped() {
        let p = Backoff {
            initial_ms: 100,
            multiplier: 2.0,
            max_ms: 1000,
        };
        assert_eq!(next_run_at(0, 0, Some(&p), 5, Some(2000), 0.0), 2000);
        assert_eq!(next_run_at(0, 0, Some(&p), 5, Some(10), 0.0), 50);
        let far = next_run_at(0, 0, Some(&p), 5, Some(i64::MAX / 4), 0.0);
        assert_eq!(far, 1000 + RETRY_AFTER_SLACK_MS);
    }

    #[test]
    fn parses_retry_after_forms() {
        assert_eq!(parse_retry_after("2", 0), Some(2000));
        assert_eq!(parse_retry_after(" 120 ", 0), Some(120_000));
        let now = 1_445_412_480_000; // Wed, 21 Oct 2015 07:28:00 GMT
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(30_000)
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            None
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn validation_names_the_field() {
        let bad = Backoff {
            initial_ms: 0,
            multiplier: 2.0,
            max_ms: 10,
        };
        assert!(bad
            .validate("backoff")
            .unwrap_err()
            .to_string()
            .starts_with("backoff.initial_ms"));
    }
}
