//! Configuration: the TOML file, `ERRAND_*` environment overrides and command-line flags,
//! parsed once and validated into a [`Config`] that cannot hold a bad value.

mod toml_error;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::backoff::Backoff;
use crate::channel::Schema;
use crate::error::{Error, Result};
use crate::store::Synchronous;

/// Where errand listens by default (contract).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8717";
/// The database file used when none is named (contract).
pub const DEFAULT_DB: &str = "errand.db";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    db: Option<PathBuf>,
    listen: Option<String>,
    api_token: Option<String>,
    workers: Option<usize>,
    synchronous: Option<String>,
    lease_ms: Option<i64>,
    shutdown_grace_ms: Option<u64>,
    max_request_bytes: Option<u64>,
    max_parked_waits: Option<usize>,
    http_timeout_ms: Option<u64>,
    response_body_cap: Option<usize>,
    notify_url: Option<String>,
    notify_secret: Option<String>,
    triage_url: Option<String>,
    scheduler: Option<RawScheduler>,
    retention: Option<RawRetention>,
    alerts: Option<Alerts>,
    #[serde(default)]
    providers: BTreeMap<String, RawProvider>,
    #[serde(default)]
    channels: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScheduler {
    tick_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    attempts_days: Option<i64>,
    jobs_days: Option<i64>,
}

/// Alert thresholds (SPEC §7); each is off when absent.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alerts {
    pub max_due_backlog: Option<i64>,
    pub max_oldest_due_s: Option<i64>,
    pub max_failure_ratio: Option<f64>,
    pub window_s: Option<i64>,
}

/// `base_url = "https://..."` or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    base_url: Option<OneOrMany>,
    requires_credential: Option<bool>,
    timeout_ms: Option<i64>,
    max_attempts: Option<i64>,
    backoff: Option<Backoff>,
    on_unclassified: Option<String>,
    on_timeout: Option<String>,
    rate_limit: Option<RateLimit>,
    max_concurrency: Option<usize>,
    circuit_breaker: Option<CircuitBreaker>,
    retry_hint_header: Option<String>,
    #[serde(default)]
    rules: Vec<RawRule>,
}

/// A token bucket: `per_second` refill, `burst` capacity, optionally one per account.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: Option<f64>,
    #[serde(default)]
    pub per_account: bool,
}

/// Opens the circuit when the failure ratio of the last `min_calls` crosses `failure_ratio`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    pub failure_ratio: f64,
    pub min_calls: usize,
    pub open_s: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    status: Option<Vec<u16>>,
    json: Option<RawJsonMatch>,
    body_contains: Option<String>,
    header: Option<RawHeaderMatch>,
    category: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJsonMatch {
    pointer: String,
    equals: Vec<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaderMatch {
    name: String,
    equals: Option<Vec<String>>,
}

/// What to do with an outcome a policy can route two ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnOutcome {
    /// Hold the job in `draft` for a person.
    #[default]
    Hold,
    /// Schedule another attempt with backoff.
    Retry,
}

/// A classification rule: every condition given must match.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub status: Option<Vec<u16>>,
    pub json_pointer: Option<(String, Vec<Value>)>,
    pub body_contains: Option<String>,
    pub header: Option<(String, Option<Vec<String>>)>,
    pub category: crate::store::attempts::Outcome,
}

/// A provider's policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Provider {
    pub base_urls: Vec<String>,
    pub requires_credential: bool,
    pub timeout_ms: Option<i64>,
    pub max_attempts: Option<i64>,
    pub backoff: Option<Backoff>,
    pub on_unclassified: OnOutcome,
    /// What an ambiguous timeout does: retry (default) or hold.
    pub on_timeout: OnOutcome,
    pub rate_limit: Option<RateLimit>,
    pub max_concurrency: Option<usize>,
    pub circuit_breaker: Option<CircuitBreaker>,
    pub retry_hint_header: Option<String>,
    pub rules: Vec<Rule>,
}

impl Default for Provider {
    /// Any URL, no credential required, unclassified answers held, ambiguous timeouts
    /// retried (safe when the provider honours the Idempotency-Key), no limits.
    fn default() -> Provider {
        Provider {
            base_urls: Vec::new(),
            requires_credential: false,
            timeout_ms: None,
            max_attempts: None,
            backoff: None,
            on_unclassified: OnOutcome::Hold,
            on_timeout: OnOutcome::Retry,
            rate_limit: None,
            max_concurrency: None,
            circuit_breaker: None,
            retry_hint_header: None,
            rules: Vec::new(),
        }
    }
}

impl Provider {
    /// True when `url` is allowed by the provider's base URL allowlist (empty = any).
    pub fn allows(&self, url: &str) -> bool {
        self.base_urls.is_empty() || self.base_urls.iter().any(|b| url_within(url, b))
    }
}

/// True when `url` is on the same scheme, host and port as `base` and its path lies under
/// `base`'s path. Compared parsed, not as strings: `https://api.example.com@evil.net/`
/// and `https://api.example.com.evil.net/` are not under `https://api.example.com`.
pub fn url_within(url: &str, base: &str) -> bool {
    let (Ok(u), Ok(b)) = (
        url.parse::<ureq::http::Uri>(),
        base.parse::<ureq::http::Uri>(),
    ) else {
        return false;
    };
    let scheme = |x: &ureq::http::Uri| x.scheme_str().map(str::to_ascii_lowercase);
    let port = |x: &ureq::http::Uri| {
        x.port_u16().or(match scheme(x).as_deref() {
            Some("https") => Some(443),
            Some("http") => Some(80),
            _ => None,
        })
    };
    let host = |x: &ureq::http::Uri| x.host().map(str::to_ascii_lowercase);
    let has_userinfo =
        |x: &ureq::http::Uri| x.authority().is_some_and(|a| a.as_str().contains('@'));
    if scheme(&u) != scheme(&b) || host(&u) != host(&b) || port(&u) != port(&b) || has_userinfo(&u)
    {
        return false;
    }
    let base_path = b.path().trim_end_matches('/');
    let path = u.path();
    path == base_path
        || path
            .strip_prefix(base_path)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub db: PathBuf,
    pub listen: String,
    pub api_token: Option<String>,
    pub workers: usize,
    pub synchronous: Synchronous,
    pub tick_ms: u64,
    pub lease_ms: i64,
    pub shutdown_grace_ms: u64,
    pub max_request_bytes: u64,
    /// Requests parked on `Prefer: wait` at once; beyond it, 503 with `Retry-After`.
    pub max_parked_waits: usize,
    /// How long a client connection may make no progress (idle between requests, a
    /// request or an answer stalled half-way) before it is closed.
    pub http_timeout_ms: u64,
    pub response_body_cap: usize,
    pub notify_url: Option<String>,
    /// Signs `notify_url` deliveries the Standard Webhooks way (`whsec_<base64>`).
    pub notify_secret: Option<crate::webhook::Secret>,
    pub triage_url: Option<String>,
    pub retention_attempts_days: Option<i64>,
    pub retention_jobs_days: Option<i64>,
    pub alerts: Alerts,
    pub providers: BTreeMap<String, Provider>,
    /// Channel payload schemas (`[channels.NAME] schema = ...`), parsed when loaded.
    pub channels: BTreeMap<String, Schema>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            db: PathBuf::from(DEFAULT_DB),
            listen: DEFAULT_LISTEN.to_string(),
            api_token: None,
            workers: 16,
            synchronous: Synchronous::Normal,
            tick_ms: 1000,
            lease_ms: 60_000,
            shutdown_grace_ms: 30_000,
            max_request_bytes: 5 * 1024 * 1024,
            max_parked_waits: crate::api::park::MAX_PARKED,
            http_timeout_ms: 75_000,
            response_body_cap: 1024 * 1024,
            notify_url: None,
            notify_secret: None,
            triage_url: None,
            retention_attempts_days: None,
            retention_jobs_days: None,
            alerts: Alerts::default(),
            providers: BTreeMap::new(),
            channels: BTreeMap::new(),
        }
    }
}

/// Command-line values that override the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub db: Option<PathBuf>,
    pub listen: Option<String>,
    pub workers: Option<usize>,
}

fn bad(key: &str, reason: impl Into<String>) -> Error {
    Error::Config {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// A shared validator's `Invalid`, which names the full key itself, as a config error on
/// that key: the key is said once.
fn as_config(e: Error) -> Error {
    match e {
        Error::Invalid { field, message } => Error::Config {
            key: field,
            reason: message,
        },
        other => other,
    }
}

impl Config {
    /// Loads the configuration: the file (`--config`, else `ERRAND_CONFIG`, else none),
    /// then `ERRAND_*` variables from `env`, then the flags.
    pub fn load(flags: &Overrides, env: &dyn Fn(&str) -> Option<String>) -> Result<Config> {
        // Errors name where a value came from: the flag or variable, else the file's key.
        let path = match (&flags.config, env("ERRAND_CONFIG")) {
            (Some(p), _) => Some(("--config", p.clone())),
            (None, Some(p)) => Some(("ERRAND_CONFIG", PathBuf::from(p))),
            (None, None) => None,
        };
        let raw = match &path {
            Some((source, p)) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| bad(source, format!("cannot read {}: {e}", p.display())))?;
                Config::parse_toml(&text, p)?
            }
            None => RawConfig::default(),
        };
        let mut cfg = Config::from_raw(raw)?;
        if let Some(v) = env("ERRAND_DB") {
            cfg.db = PathBuf::from(v);
        }
        if let Some(v) = env("ERRAND_LISTEN") {
            cfg.listen = v;
        }
        let mut api_token_key = "api_token";
        if let Some(v) = env("ERRAND_API_TOKEN") {
            cfg.api_token = Some(v).filter(|t| !t.is_empty());
            api_token_key = "ERRAND_API_TOKEN";
        }
        if let Some(v) = env("ERRAND_NOTIFY_SECRET").filter(|v| !v.is_empty()) {
            cfg.notify_secret = Some(
                crate::webhook::Secret::parse(&v).map_err(|e| bad("ERRAND_NOTIFY_SECRET", e))?,
            );
        }
        if let Some(v) = env("ERRAND_WORKERS") {
            cfg.workers = v
                .parse()
                .ok()
                .filter(|n| (1..=1024).contains(n))
                .ok_or_else(|| bad("ERRAND_WORKERS", "must be a whole number from 1 to 1024"))?;
        }
        if let Some(v) = &flags.db {
            cfg.db = v.clone();
        }
        if let Some(v) = &flags.listen {
            cfg.listen = v.clone();
        }
        if let Some(v) = flags.workers {
            if !(1..=1024).contains(&v) {
                return Err(bad("--workers", "must be from 1 to 1024"));
            }
            cfg.workers = v;
        }
        if cfg.api_token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err(bad(api_token_key, "must be at least 16 characters"));
        }
        Ok(cfg)
    }

    fn parse_toml(text: &str, path: &Path) -> Result<RawConfig> {
        toml::from_str::<RawConfig>(text).map_err(|e| toml_error::describe(&e, text, path))
    }

    /// Parses a configuration from TOML text (for tests and `errand check`).
    pub fn from_toml(text: &str) -> Result<Config> {
        Config::from_raw(Config::parse_toml(text, Path::new("config"))?)
    }

    fn from_raw(raw: RawConfig) -> Result<Config> {
        let d = Config::default();
        let synchronous = match raw.synchronous.as_deref() {
            None | Some("normal") | Some("NORMAL") => Synchronous::Normal,
            Some("full") | Some("FULL") => Synchronous::Full,
            Some(_) => return Err(bad("synchronous", "must be \"normal\" or \"full\"")),
        };
        let workers = raw.workers.unwrap_or(d.workers);
        if !(1..=1024).contains(&workers) {
            return Err(bad("workers", "must be from 1 to 1024"));
        }
        let tick_ms = raw.scheduler.and_then(|s| s.tick_ms).unwrap_or(d.tick_ms);
        if !(10..=60_000).contains(&tick_ms) {
            return Err(bad("scheduler.tick_ms", "must be from 10 to 60000"));
        }
        let lease_ms = raw.lease_ms.unwrap_or(d.lease_ms);
        if !(1000..=3_600_000).contains(&lease_ms) {
            return Err(bad("lease_ms", "must be from 1000 to 3600000"));
        }
        for (key, url) in [
            ("notify_url", &raw.notify_url),
            ("triage_url", &raw.triage_url),
        ] {
            if let Some(u) = url {
                crate::spec::check_url(key, u).map_err(as_config)?;
            }
        }
        let notify_secret = match &raw.notify_secret {
            None => None,
            Some(s) => Some(crate::webhook::Secret::parse(s).map_err(|e| bad("notify_secret", e))?),
        };
        let retention = raw.retention.unwrap_or_default();
        for (key, v) in [
            ("retention.attempts_days", retention.attempts_days),
            ("retention.jobs_days", retention.jobs_days),
        ] {
            if v.is_some_and(|n| n < 1) {
                return Err(bad(key, "must be at least 1 day"));
            }
        }
        let alerts = raw.alerts.unwrap_or_default();
        if alerts
            .max_failure_ratio
            .is_some_and(|r| !(0.0..=1.0).contains(&r))
        {
            return Err(bad("alerts.max_failure_ratio", "must be between 0 and 1"));
        }
        let mut providers = BTreeMap::new();
        for (name, p) in raw.providers {
            providers.insert(name.clone(), provider(&name, p)?);
        }
        let mut channels = BTreeMap::new();
        for (name, section) in raw.channels {
            let section = serde_json::to_value(&section)
                .map_err(|_| bad(&format!("channels.{name}"), "cannot be read as JSON"))?;
            let schema = Schema::from_config(&name, &section)?;
            channels.insert(name, schema);
        }
        Ok(Config {
            db: raw.db.unwrap_or(d.db),
            listen: raw.listen.unwrap_or(d.listen),
            api_token: raw.api_token.filter(|t| !t.is_empty()),
            workers,
            synchronous,
            tick_ms,
            lease_ms,
            shutdown_grace_ms: raw.shutdown_grace_ms.unwrap_or(d.shutdown_grace_ms),
            max_request_bytes: raw.max_request_bytes.unwrap_or(d.max_request_bytes),
            max_parked_waits: match raw.max_parked_waits {
                Some(n) if !(1..=100_000).contains(&n) => {
                    return Err(bad("max_parked_waits", "must be from 1 to 100000"))
                }
                Some(n) => n,
                None => d.max_parked_waits,
            },
            http_timeout_ms: match raw.http_timeout_ms {
                Some(n) if !(100..=3_600_000).contains(&n) => {
                    return Err(bad("http_timeout_ms", "must be from 100 to 3600000"))
                }
                Some(n) => n,
                None => d.http_timeout_ms,
            },
            response_body_cap: raw.response_body_cap.unwrap_or(d.response_body_cap),
            notify_url: raw.notify_url,
            notify_secret,
            triage_url: raw.triage_url,
            retention_attempts_days: retention.attempts_days,
            retention_jobs_days: retention.jobs_days,
            alerts,
            providers,
            channels,
        })
    }

    /// The policy of `name`: its section, or all defaults.
    pub fn provider(&self, name: &str) -> Provider {
        self.providers.get(name).cloned().unwrap_or_default()
    }
}

fn on_outcome(key: &str, v: Option<String>, default: OnOutcome) -> Result<OnOutcome> {
    match v.as_deref() {
        None => Ok(default),
        Some("hold") => Ok(OnOutcome::Hold),
        Some("retry") => Ok(OnOutcome::Retry),
        Some(_) => Err(bad(key, "must be \"hold\" or \"retry\"")),
    }
}

fn provider(name: &str, p: RawProvider) -> Result<Provider> {
    let key = |k: &str| format!("providers.{name}.{k}");
    let base_urls = p.base_url.map(OneOrMany::into_vec).unwrap_or_default();
    for u in &base_urls {
        crate::spec::check_url(&key("base_url"), u).map_err(as_config)?;
    }
    if p.timeout_ms.is_some_and(|t| !(1..=600_000).contains(&t)) {
        return Err(bad(&key("timeout_ms"), "must be from 1 to 600000"));
    }
    if p.max_attempts.is_some_and(|t| !(1..=1000).contains(&t)) {
        return Err(bad(&key("max_attempts"), "must be from 1 to 1000"));
    }
    if let Some(b) = &p.backoff {
        b.validate(&key("backoff")).map_err(as_config)?;
    }
    if let Some(r) = &p.rate_limit {
        if !(r.per_second > 0.0 && r.per_second.is_finite()) || r.burst.is_some_and(|b| b < 1.0) {
            return Err(bad(
                &key("rate_limit"),
                "per_second must be > 0 and burst >= 1",
            ));
        }
    }
    if p.max_concurrency == Some(0) {
        return Err(bad(&key("max_concurrency"), "must be at least 1"));
    }
    if let Some(c) = &p.circuit_breaker {
        if !(0.0..=1.0).contains(&c.failure_ratio) || c.min_calls == 0 || c.open_s == 0 {
            return Err(bad(
                &key("circuit_breaker"),
                "failure_ratio in 0..1, min_calls >= 1, open_s >= 1",
            ));
        }
    }
    let mut rules = Vec::new();
    for (i, r) in p.rules.into_iter().enumerate() {
        let rkey = format!("providers.{name}.rules[{i}]");
        let category = crate::store::attempts::Outcome::parse(&r.category)
            .filter(|o| *o != crate::store::attempts::Outcome::Lost)
            .ok_or_else(|| {
                bad(
                    &format!("{rkey}.category"),
                    "must be success, unavailable, unauthorized, forbidden or unclassified",
                )
            })?;
        if r.status.is_none() && r.json.is_none() && r.body_contains.is_none() && r.header.is_none()
        {
            return Err(bad(
                &rkey,
                "needs at least one of status, json, body_contains, header",
            ));
        }
        let json_pointer = match r.json {
            None => None,
            Some(j) => {
                if !j.pointer.is_empty() && !j.pointer.starts_with('/') {
                    return Err(bad(
                        &format!("{rkey}.json.pointer"),
                        "must start with '/' (a JSON pointer)",
                    ));
                }
                let vals = j
                    .equals
                    .iter()
                    .map(|v| serde_json::to_value(v).unwrap_or(Value::Null))
                    .collect();
                Some((j.pointer, vals))
            }
        };
        rules.push(Rule {
            status: r.status,
            json_pointer,
            body_contains: r.body_contains,
            header: r.header.map(|h| (h.name, h.equals)),
            category,
        });
    }
    Ok(Provider {
        base_urls,
        requires_credential: p.requires_credential.unwrap_or(false),
        timeout_ms: p.timeout_ms,
        max_attempts: p.max_attempts,
        backoff: p.backoff,
        on_unclassified: on_outcome(&key("on_unclassified"), p.on_unclassified, OnOutcome::Hold)?,
        on_timeout: on_outcome(&key("on_timeout"), p.on_timeout, OnOutcome::Retry)?,
        rate_limit: p.rate_limit,
        max_concurrency: p.max_concurrency,
        circuit_breaker: p.circuit_breaker,
        retry_hint_header: p.retry_hint_header,
        rules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_EXAMPLE: &str = r#"
api_token = "0123456789abcdef0123"
workers = 16
notify_url = "http://127.0.0.1:3000/errand-notifications"

[alerts]
max_due_backlog = 1000
max_oldest_due_s = 300
max_failure_ratio = 0.5
window_s = 300

[providers.twitter]
base_url = "https://api.twitter.com/"
requires_credential = true
timeout_ms = 10000
max_attempts = 10
backoff = { initial_ms = 1000, multiplier = 2.0, max_ms = 600000 }
on_unclassified = "hold"
on_timeout = "retry"
rate_limit = { per_second = 5.0, burst = 10, per_account = true }
max_concurrency = 4
circuit_breaker = { failure_ratio = 0.5, min_calls = 20, open_s = 30 }

[[providers.twitter.rules]]
status = [403]
json = { pointer = "/errors/0/code", equals = [187] }
category = "forbidden"

[channels.email]
schema = { required = ["to", "subject"], properties = { to = "string", subject = "string" } }
"#;

    #[test]
    fn the_spec_example_parses() {
        let c = Config::from_toml(SPEC_EXAMPLE).unwrap();
        let t = c.provider("twitter");
        assert!(t.requires_credential);
        assert_eq!(t.max_attempts, Some(10));
        assert_eq!(t.rules.len(), 1);
        assert_eq!(c.alerts.max_due_backlog, Some(1000));
        assert!(c.channels.contains_key("email"));
        assert_eq!(c.provider("other").on_timeout, OnOutcome::Retry);
    }

    #[test]
    fn a_bad_file_names_the_key() {
        for (text, key) in [
            ("workers = 0", "workers"),
            ("wrokers = 3", "wrokers"),
            (
                "[providers.x]\nmax_attempts = 0",
                "providers.x.max_attempts",
            ),
            (
                "[providers.x]\non_unclassified = \"maybe\"",
                "providers.x.on_unclassified",
            ),
            (
                "[[providers.x.rules]]\ncategory = \"nope\"\nstatus = [400]",
                "providers.x.rules[0].category",
            ),
            ("synchronous = \"sometimes\"", "synchronous"),
            ("http_timeout_ms = 5", "http_timeout_ms"),
            ("max_parked_waits = 0", "max_parked_waits"),
        ] {
            let e = Config::from_toml(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn a_bad_nested_key_is_named_with_its_full_path() {
        // Regression: only the last segment was named (`config: timeout_ms: ...`).
        for (text, want) in [
            (
                "[providers.t]\ntimeout_ms = \"x\"",
                "config: providers.t.timeout_ms: invalid type: string, expected i64",
            ),
            (
                "[providers.t]\ncolour = \"red\"",
                "config: providers.t.colour: unknown field `colour`",
            ),
            (
                "[providers.t]\nbackoff = { initial_ms = 1000, multiplier = 2.0 }",
                "config: providers.t.backoff: missing field `max_ms`",
            ),
            (
                "[alerts]\nmax_failure_ratio = \"x\"",
                "config: alerts.max_failure_ratio: invalid type: string, expected f64",
            ),
            (
                "[providers.t]\nrate_limit = { per_second = 5.0, per_acount = true }",
                "config: providers.t.rate_limit.per_acount: unknown field `per_acount`",
            ),
            (
                "[providers.t.backoff]\ninitial_ms = 1000",
                "config: providers.t.backoff: missing field `multiplier`",
            ),
            (
                "[[providers.t.rules]]\nstatus = [400]\ncategory = \"forbidden\"\n\n[[providers.t.rules]]\nstatus = [400, \"x\"]\ncategory = \"forbidden\"",
                "config: providers.t.rules[1].status[1]: invalid type: string, expected u16",
            ),
            (
                "providers = { t = { max_attempts = 1.5 } }",
                "config: providers.t.max_attempts: invalid type: floating point, expected i64",
            ),
        ] {
            let e = Config::from_toml(text).unwrap_err().to_string();
            assert!(e.starts_with(want), "{text}:\n got {e}\nwant {want}");
        }
    }

    #[test]
    fn a_bad_channel_schema_is_refused_when_loaded() {
        // Regression: these passed `errand check`, then every event on the channel (and
        // every drain pass behind its first outbox row) failed.
        for (schema, key, reason) in [
            (
                "{ required = [\"to\"], properties = { to = \"strng\" } }",
                "channels.bad.schema.properties.to",
                "must be one of string, number",
            ),
            (
                "{ properties = { a = 5 } }",
                "channels.bad.schema.properties.a",
                "must be one of string, number",
            ),
            (
                "{ required = \"a\" }",
                "channels.bad.schema.required",
                "must be a list of field names",
            ),
            (
                "{ requird = [\"a\"] }",
                "channels.bad.schema.requird",
                "unknown key",
            ),
        ] {
            let text = format!("[channels.bad]\nschema = {schema}\n");
            let e = Config::from_toml(&text).unwrap_err();
            assert!(matches!(e, Error::Config { .. }), "{e}");
            let e = e.to_string();
            assert!(e.starts_with(&format!("config: {key}: {reason}")), "{e}");
        }
        let e = Config::from_toml("[channels.bad]\ncolour = 1")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("config: channels.bad.colour: "), "{e}");
        let c = Config::from_toml(SPEC_EXAMPLE).unwrap();
        assert_eq!(c.channels["email"].required, ["to", "subject"]);
    }

    #[test]
    fn every_message_names_its_key_once() {
        // Regression: `config: notify_url: notify_url: ...`, `config: config: cannot read`.
        for (text, want) in [
            (
                "notify_url = \"ftp://x\"",
                "config: notify_url: must be an http",
            ),
            (
                "[providers.t]\nbase_url = \"nope\"",
                "config: providers.t.base_url: must be an http",
            ),
            (
                "[providers.t]\nbackoff = { initial_ms = 0, multiplier = 2.0, max_ms = 1 }",
                "config: providers.t.backoff.initial_ms: must be at least 1",
            ),
        ] {
            let e = Config::from_toml(text).unwrap_err().to_string();
            assert!(e.starts_with(want), "{text}: {e}");
        }
        let no_env = |_: &str| None;
        let flags = Overrides {
            config: Some(PathBuf::from("/nonexistent/errand.toml")),
            ..Default::default()
        };
        let e = Config::load(&flags, &no_env).unwrap_err().to_string();
        assert!(
            e.starts_with("config: --config: cannot read /nonexistent/errand.toml: "),
            "{e}"
        );
        let env = |k: &str| (k == "ERRAND_CONFIG").then(|| "/nonexistent/errand.toml".into());
        let e = Config::load(&Overrides::default(), &env)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("config: ERRAND_CONFIG: cannot read "), "{e}");
        let env = |k: &str| (k == "ERRAND_API_TOKEN").then(|| "short".into());
        let e = Config::load(&Overrides::default(), &env)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "config: ERRAND_API_TOKEN: must be at least 16 characters"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("errand.toml");
        std::fs::write(&file, "api_token = \"short\"\n").unwrap();
        let flags = Overrides {
            config: Some(file),
            ..Default::default()
        };
        let e = Config::load(&flags, &no_env).unwrap_err().to_string();
        assert_eq!(e, "config: api_token: must be at least 16 characters");
    }

    #[test]
    fn the_base_url_allowlist_compares_parsed_urls() {
        let base = "https://api.example.com";
        assert!(url_within("https://api.example.com/v1/x", base));
        assert!(url_within("https://API.example.com:443/", base));
        assert!(url_within(
            "https://api.example.com/a?b=c",
            "https://api.example.com/a/"
        ));
        assert!(!url_within("https://api.example.com@evil.net/x", base));
        assert!(!url_within("https://api.example.com.evil.net/x", base));
        assert!(!url_within("http://api.example.com/x", base));
        assert!(!url_within("https://api.example.com:8443/x", base));
        assert!(!url_within("https://user@api.example.com/x", base));
        assert!(!url_within(
            "https://api.example.com/ab",
            "https://api.example.com/a"
        ));
        assert!(url_within(
            "https://api.example.com/a/b",
            "https://api.example.com/a"
        ));
    }

    #[test]
    fn a_syntax_error_never_echoes_a_value_from_the_file() {
        let e = Config::from_toml("workers = 2\napi_token = \"s3cret-token-value-123\nx = 1\n")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("s3cret"), "{e}");
        let e = Config::from_toml("api_token = 12345678901234567890")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("12345678901234567890"), "{e}");
        assert!(e.contains("api_token"), "{e}");
        // A literal string, an escaped one and one holding the parser's own wording.
        for value in [
            "'s3cret-literal-value'",
            "\"s3cret\\u0041-escaped\"",
            "\"s3cret, expected x\"",
        ] {
            let e = Config::from_toml(&format!("[providers.t]\ntimeout_ms = {value}"))
                .unwrap_err()
                .to_string();
            assert!(!e.contains("s3cret"), "{e}");
            assert!(e.contains("providers.t.timeout_ms"), "{e}");
        }
    }

    #[test]
    fn env_and_flags_override_the_file() {
        let env = |k: &str| match k {
            "ERRAND_DB" => Some("/tmp/env.db".to_string()),
            "ERRAND_LISTEN" => Some("127.0.0.1:1".to_string()),
            "ERRAND_API_TOKEN" => Some("a-long-enough-token".to_string()),
            _ => None,
        };
        let flags = Overrides {
            listen: Some("127.0.0.1:2".into()),
            ..Default::default()
        };
        let c = Config::load(&flags, &env).unwrap();
        assert_eq!(c.db, PathBuf::from("/tmp/env.db"));
        assert_eq!(c.listen, "127.0.0.1:2");
        assert_eq!(c.api_token.as_deref(), Some("a-long-enough-token"));
    }
}
