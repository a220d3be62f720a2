//! Per-provider admission in memory: max concurrency, a token-bucket rate limit
//! (optionally one bucket per account) and a circuit breaker. The scheduler asks before
//! it claims; the worker reports each finished attempt.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::config::{Config, Provider};
use crate::store::attempts::Outcome;

/// A circuit state change, turned into a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitEvent {
    Opened,
    Closed,
}

#[derive(Debug, Default)]
struct Bucket {
    tokens: f64,
    at_ms: i64,
}

#[derive(Debug, Default)]
struct State {
    running: usize,
    buckets: HashMap<String, Bucket>,
    window: VecDeque<bool>,
    open_until: Option<i64>,
    probing: bool,
}

/// Admission state of every provider.
#[derive(Debug)]
pub struct Limits {
    config: Arc<Config>,
    states: Mutex<HashMap<String, State>>,
}

/// What [`Limits::try_admit`] took for a job, to give back exactly that if the job is
/// not claimed after all ([`Limits::give_back`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admission {
    /// A concurrency slot was counted.
    counted: bool,
    /// The rate-limit bucket a token was taken from.
    bucket: Option<String>,
    /// The job is the half-open circuit's one probe.
    probe: bool,
}

/// Why [`Limits::try_admit`] refused a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No job of this provider may start now (circuit open, concurrency or a shared rate
    /// limit reached).
    Provider,
    /// No job of this account for this provider may start now (its own rate bucket).
    Account,
}

/// What the admin page and metrics show of a provider's circuit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Circuit {
    Closed,
    Open { until_ms: i64 },
    HalfOpen,
}

impl Limits {
    /// Limits for the providers of `config`.
    pub fn new(config: Arc<Config>) -> Limits {
        Limits {
            config,
            states: Mutex::new(HashMap::new()),
        }
    }

    fn limited(p: &Provider) -> bool {
        p.rate_limit.is_some() || p.max_concurrency.is_some() || p.circuit_breaker.is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, State>> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Providers none of whose jobs may start now (circuit open, concurrency full); the
    /// scheduler leaves them out of its claim.
    pub fn blocked_providers(&self, now: i64) -> Vec<String> {
        let states = self.lock();
        self.config
            .providers
            .iter()
            .filter(|(name, p)| {
                let Some(s) = states.get(*name) else {
                    return false;
                };
                let open = s.open_until.is_some_and(|u| u > now) || s.probing;
                let full = p.max_concurrency.is_some_and(|m| s.running >= m);
                open || full
            })
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Takes a slot for one job of (provider, account) if the limits allow it now.
    pub fn admit(&self, provider: &str, account: &str, now: i64) -> bool {
        self.try_admit(provider, account, now).is_ok()
    }

    /// Returns what an admission took, for a job that was not run after all (claimed by
    /// another claimant first, refused at preflight, released at shutdown, or its worker
    /// panicked): the slot, the rate-limit token, and the half-open probe only if this
    /// was the probe.
    pub fn give_back(&self, provider: &str, a: &Admission) {
        let Some(p) = self.config.providers.get(provider) else {
            return;
        };
        let mut states = self.lock();
        let Some(s) = states.get_mut(provider) else {
            return;
        };
        if a.counted {
            s.running = s.running.saturating_sub(1);
        }
        if a.probe {
            s.probing = false;
        }
        if let (Some(key), Some(rl)) = (&a.bucket, p.rate_limit) {
            let burst = rl.burst.unwrap_or(rl.per_second.max(1.0));
            if let Some(b) = s.buckets.get_mut(key) {
                b.tokens = (b.tokens + 1.0).min(burst);
            }
        }
    }

    /// [`Limits::admit`], saying on refusal whether no job of the provider may start
    /// now, or only none of this account (its own rate-limit bucket is empty).
    pub fn try_admit(&self, provider: &str, account: &str, now: i64) -> Result<Admission, Refused> {
        let Some(p) = self.config.providers.get(provider) else {
            return Ok(Admission::default());
        };
        if !Self::limited(p) {
            return Ok(Admission::default());
        }
        let mut bucket = None;
        let mut states = self.lock();
        let s = states.entry(provider.to_string()).or_default();
        let mut probe = false;
        if let Some(until) = s.open_until {
            if until > now || s.probing {
                return Err(Refused::Provider);
            }
            probe = true; // half-open: exactly one probe decides
        }
        if p.max_concurrency.is_some_and(|m| s.running >= m) {
            return Err(Refused::Provider);
        }
        if let Some(rl) = p.rate_limit {
            let key = if rl.per_account { account } else { "" };
            let burst = rl.burst.unwrap_or(rl.per_second.max(1.0));
            let b = s.buckets.entry(key.to_string()).or_insert(Bucket {
                tokens: burst,
                at_ms: now,
            });
            let elapsed = (now - b.at_ms).max(0) as f64 / 1000.0;
            b.tokens = (b.tokens + elapsed * rl.per_second).min(burst);
            b.at_ms = now;
            if b.tokens < 1.0 {
                return Err(if rl.per_account {
                    Refused::Account
                } else {
                    Refused::Provider
                });
            }
            b.tokens -= 1.0;
            bucket = Some(key.to_string());
        }
        s.probing = probe;
        s.running += 1;
        Ok(Admission {
            counted: true,
            bucket,
            probe,
        })
    }

    /// Reports a finished attempt; returns a circuit change to notify about.
    pub fn finish(
        &self,
        provider: &str,
        outcome: Option<Outcome>,
        now: i64,
    ) -> Option<CircuitEvent> {
        let p = self.config.providers.get(provider)?;
        if !Self::limited(p) {
            return None;
        }
        let mut states = self.lock();
        let s = states.get_mut(provider)?;
        s.running = s.running.saturating_sub(1);
        let (Some(cb), Some(outcome)) = (p.circuit_breaker, outcome) else {
            s.probing = false;
            return None;
        };
        let failed = matches!(outcome, Outcome::Unavailable | Outcome::Lost);
        if s.probing {
            s.probing = false;
            if failed {
                s.open_until = Some(now + cb.open_s as i64 * 1000);
                return None;
            }
            s.open_until = None;
            s.window.clear();
            return Some(CircuitEvent::Closed);
        }
        if s.open_until.is_some() {
            return None;
        }
        s.window.push_back(failed);
        while s.window.len() > cb.min_calls {
            s.window.pop_front();
        }
        let failures = s.window.iter().filter(|f| **f).count();
        if s.window.len() >= cb.min_calls
            && failures as f64 / s.window.len() as f64 >= cb.failure_ratio
        {
            s.open_until = Some(now + cb.open_s as i64 * 1000);
            return Some(CircuitEvent::Opened);
        }
        None
    }

    /// The circuit of `provider` now.
    pub fn circuit(&self, provider: &str, now: i64) -> Circuit {
        match self.lock().get(provider) {
            Some(s) if s.probing => Circuit::HalfOpen,
            Some(State {
                open_until: Some(u),
                ..
            }) if *u > now => Circuit::Open { until_ms: *u },
            Some(State {
                open_until: Some(_),
                ..
            }) => Circuit::HalfOpen,
            _ => Circuit::Closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(toml: &str) -> Limits {
        Limits::new(Arc::new(Config::from_toml(toml).unwrap()))
    }

    #[test]
    fn concurrency_is_capped() {
        let l = limits("[providers.p]\nmax_concurrency = 2");
        assert!(l.admit("p", "a", 0));
        assert!(l.admit("p", "a", 0));
        assert!(!l.admit("p", "a", 0));
        assert_eq!(l.blocked_providers(0), vec!["p".to_string()]);
        l.finish("p", Some(Outcome::Success), 0);
        assert!(l.admit("p", "a", 0));
        assert!(l.admit("other", "a", 0));
    }

    #[test]
    fn token_bucket_refills_and_partitions_per_account() {
        let l = limits(
            "[providers.p]\nrate_limit = { per_second = 2.0, burst = 2, per_account = true }",
        );
        assert!(l.admit("p", "a", 0));
        assert!(l.admit("p", "a", 0));
        assert!(!l.admit("p", "a", 0));
        assert!(l.admit("p", "b", 0), "another account has its own bucket");
        assert!(l.admit("p", "a", 500), "half a second refills one token");
        assert!(!l.admit("p", "a", 500));
    }

    #[test]
    fn a_refusal_says_whether_the_provider_or_only_the_account_is_held() {
        let per = limits(
            "[providers.p]\nrate_limit = { per_second = 1.0, burst = 1, per_account = true }",
        );
        assert!(per.try_admit("p", "a", 0).is_ok());
        assert_eq!(per.try_admit("p", "a", 0), Err(Refused::Account));
        let shared = limits("[providers.p]\nrate_limit = { per_second = 1.0, burst = 1 }");
        assert!(shared.try_admit("p", "a", 0).is_ok());
        assert_eq!(shared.try_admit("p", "b", 0), Err(Refused::Provider));
        let capped = limits("[providers.p]\nmax_concurrency = 1");
        assert!(capped.try_admit("p", "a", 0).is_ok());
        assert_eq!(capped.try_admit("p", "b", 0), Err(Refused::Provider));
    }

    #[test]
    fn giving_back_an_admission_returns_its_token_and_clears_only_its_own_probe() {
        let l = limits(
            "[providers.p]\nrate_limit = { per_second = 1.0, burst = 1, per_account = true }",
        );
        let a = l.try_admit("p", "a", 0).unwrap();
        assert!(!l.admit("p", "a", 0), "the one token is taken");
        l.give_back("p", &a);
        assert!(
            l.admit("p", "a", 0),
            "the token came back with the admission"
        );

        let c = limits(
            "[providers.p]\ncircuit_breaker = { failure_ratio = 0.5, min_calls = 2, open_s = 10 }",
        );
        for i in 0..2 {
            assert!(c.admit("p", "a", i));
            c.finish("p", Some(Outcome::Unavailable), i);
        }
        let probe = c.try_admit("p", "a", 10_002).unwrap();
        assert!(!c.admit("p", "a", 10_003), "one probe at a time");
        c.give_back("p", &Admission::default());
        assert!(
            !c.admit("p", "a", 10_003),
            "another job's give-back keeps the probe"
        );
        c.give_back("p", &probe);
        assert!(
            c.admit("p", "a", 10_004),
            "the probe's own give-back frees it"
        );
    }

    #[test]
    fn circuit_opens_probes_once_and_closes() {
        let l = limits(
            "[providers.p]\ncircuit_breaker = { failure_ratio = 0.5, min_calls = 4, open_s = 10 }",
        );
        let mut events = vec![];
        for i in 0..4 {
            assert!(l.admit("p", "a", i));
            events.push(l.finish("p", Some(Outcome::Unavailable), i));
        }
        assert_eq!(events.last(), Some(&Some(CircuitEvent::Opened)));
        assert!(!l.admit("p", "a", 5_000));
        assert!(l.admit("p", "a", 10_004), "one probe after open_s");
        assert!(!l.admit("p", "a", 10_005), "only one probe at a time");
        assert_eq!(
            l.finish("p", Some(Outcome::Success), 10_010),
            Some(CircuitEvent::Closed)
        );
        assert!(l.admit("p", "a", 10_011));
    }
}
