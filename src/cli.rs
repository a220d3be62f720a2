//! The command line (SPEC §8). Every command but `serve` works on the database file
//! directly and is safe while a server runs (SQLite serialises the writers).

use std::io::Read;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, Overrides};
use crate::error::{Error, Result};
use crate::job::{Job, JobState, UserAction};
use crate::spec::{check_header, check_method, check_url, Due, NewJob};
use crate::store::{accounts, engine, jobs, Store};
use crate::time::{format_rfc3339, parse_duration_ms};

mod bench;
pub mod output;
pub mod usage;

pub use bench::{bench, BenchArgs};

/// errand: reliable outbound API calls from a single binary and a SQLite file.
#[derive(Debug, Parser)]
#[command(name = "errand", version, about, propagate_version = true)]
pub struct Cli {
    /// The database file (default ./errand.db, or ERRAND_DB).
    #[arg(long, global = true, value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// A TOML configuration file (or ERRAND_CONFIG).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the engine and the HTTP API.
    Serve {
        /// Address to listen on (default 127.0.0.1:8717, or ERRAND_LISTEN).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Worker threads (default 16).
        #[arg(long, value_name = "N")]
        workers: Option<usize>,
    },
    /// Add a job; prints its id.
    Enqueue(EnqueueArgs),
    /// List jobs, newest first.
    Jobs {
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        account: Option<String>,
        #[arg(long)]
        provider: Option<String>,
        /// How many at most (default 50).
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Only jobs with an id below this one (the next page).
        #[arg(long, value_name = "ID")]
        before: Option<i64>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show or act on one job.
    Job {
        #[command(subcommand)]
        action: JobCommand,
    },
    /// Pause everything, or one account.
    Pause {
        #[arg(long)]
        account: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Resume everything, or one account.
    Resume {
        #[arg(long)]
        account: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Manage credentials.
    Credentials {
        #[command(subcommand)]
        action: CredentialsCommand,
    },
    /// Counts by state and the due backlog.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Delete rows past the configured retention and expired idempotency keys.
    Prune {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Write a consistent copy of the live database to PATH.
    Backup {
        path: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Check the configuration and the database's integrity.
    Check {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Measure the engine against a local target (self-contained; see README).
    Bench(BenchArgs),
}

/// One job's subcommands.
#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Print the job.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// draft -> approved.
    Approve {
        id: String,
        /// Machine-readable output: the job.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a draft, approved or retry job.
    Cancel {
        id: String,
        /// Machine-readable output: the job.
        #[arg(long)]
        json: bool,
    },
    /// Run a job in retry (or held in draft) now.
    Retry {
        id: String,
        /// Machine-readable output: the job.
        #[arg(long)]
        json: bool,
    },
    /// canceled -> draft, for review.
    Reopen {
        id: String,
        /// Machine-readable output: the job.
        #[arg(long)]
        json: bool,
    },
}

/// Credential subcommands.
#[derive(Debug, Subcommand)]
pub enum CredentialsCommand {
    /// Store the secret read from standard input for ACCOUNT and PROVIDER.
    Set {
        account: String,
        provider: String,
        /// The header that carries it (default Authorization).
        #[arg(long, default_value = "Authorization")]
        header: String,
        /// The header value, with {secret} (default "Bearer {secret}").
        #[arg(long, default_value = "Bearer {secret}")]
        format: String,
        /// Machine-readable output: the credential's status, never the secret.
        #[arg(long)]
        json: bool,
    },
}

/// `errand enqueue` flags.
#[derive(Debug, Args)]
pub struct EnqueueArgs {
    #[arg(long)]
    pub account: String,
    #[arg(long)]
    pub url: String,
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// A header 'Name: value' (repeatable).
    #[arg(long = "header", value_name = "'K: V'")]
    pub headers: Vec<String>,
    /// A JSON body (sets Content-Type: application/json).
    #[arg(long, value_name = "JSON", conflicts_with = "data")]
    pub json: Option<String>,
    /// A raw body, or @FILE to read it from a file.
    #[arg(long, value_name = "DATA")]
    pub data: Option<String>,
    #[arg(long)]
    pub provider: Option<String>,
    /// Run after this long (e.g. 30s, 5m).
    #[arg(long)]
    pub delay: Option<String>,
    #[arg(long, value_name = "N")]
    pub max_attempts: Option<i64>,
    /// Create it as a draft that waits for approval.
    #[arg(long)]
    pub draft: bool,
}

/// What a command prints, and the error it fails with after printing (exit 1), as
/// `check --json` does when it finds problems.
pub struct Output {
    pub text: String,
    pub failure: Option<Error>,
}

impl Output {
    /// Output of a command that succeeded.
    pub fn new(text: String) -> Output {
        Output {
            text,
            failure: None,
        }
    }
}

fn parse_id(s: &str) -> Result<i64> {
    s.parse::<i64>()
        .map_err(|_| Error::NotFound(format!("job {s:?}")))
}

fn build_job(a: &EnqueueArgs) -> Result<NewJob> {
    check_url("--url", &a.url)?;
    let mut job = NewJob::get(&a.account, &a.url);
    crate::spec::check_name("--account", &a.account)?;
    job.method = check_method(&a.method).map_err(|e| match e {
        Error::Invalid { message, .. } => Error::invalid("--method", message),
        other => other,
    })?;
    for h in &a.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| Error::invalid("--header", format!("{h:?} is not 'Name: value'")))?;
        let (k, v) = (k.trim(), v.trim());
        check_header(k, v)
            .map_err(|_| Error::invalid("--header", format!("{h:?} is not a valid header")))?;
        job.headers.push((k.to_string(), v.to_string()));
    }
    if let Some(j) = &a.json {
        let v: Value = serde_json::from_str(j)
            .map_err(|e| Error::invalid("--json", format!("is not valid JSON: {e}")))?;
        job.body = Some(serde_json::to_vec(&v).unwrap_or_default());
        if !job
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            job.headers
                .push(("Content-Type".into(), "application/json".into()));
        }
    }
    if let Some(d) = &a.data {
        job.body = Some(match d.strip_prefix('@') {
            Some(path) => std::fs::read(path)
                .map_err(|e| Error::invalid("--data", format!("cannot read {path}: {e}")))?,
            None => d.as_bytes().to_vec(),
        });
    }
    if let Some(p) = &a.provider {
        crate::spec::check_name("--provider", p)?;
        job.provider = p.clone();
    }
    if let Some(d) = &a.delay {
        job.due = Due::After(parse_duration_ms("--delay", d)?);
    }
    if let Some(n) = a.max_attempts {
        if !(1..=1000).contains(&n) {
            return Err(Error::invalid("--max-attempts", "must be from 1 to 1000"));
        }
        job.max_attempts = Some(n);
    }
    if a.draft {
        job.state = JobState::Draft;
    }
    Ok(job)
}

fn job_line(j: &Job) -> String {
    format!(
        "{:>8}  {:<9}  {:>3}  {:<12}  {:<12}  {} {}",
        j.id,
        j.state.as_str(),
        j.attempts,
        j.account,
        j.provider,
        j.method,
        j.url
    )
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// Runs every command but `serve`.
pub fn run(cli: &Cli, env: &dyn Fn(&str) -> Option<String>) -> Result<Output> {
    if let Command::Bench(args) = &cli.command {
        // Self-contained: its own temporary databases, no configuration file.
        return bench(args);
    }
    let flags = Overrides {
        config: cli.config.clone(),
        db: cli.db.clone(),
        ..Default::default()
    };
    let config = Config::load(&flags, env)?;
    let now = SystemClock.now_ms();
    let open = || Store::open(&config.db, config.synchronous);
    // Commands that read or change existing jobs refuse a path with no database rather
    // than create an empty one there (a mistyped --db would else answer "no jobs").
    let open_existing = || {
        if !config.db.exists() {
            return Err(Error::Database {
                path: config.db.display().to_string(),
                reason: "not found; check --db (or ERRAND_DB), or run errand serve to create it"
                    .into(),
            });
        }
        open()
    };
    let text = match &cli.command {
        Command::Serve { .. } | Command::Bench(_) => {
            return Err(Error::invalid("serve", "handled by main"))
        }
        Command::Enqueue(a) => {
            let job = build_job(a)?;
            let store = open()?;
            let ins = store.write(|tx| jobs::insert(tx, &job, now))?;
            ins.id.to_string()
        }
        Command::Jobs {
            state,
            account,
            provider,
            limit,
            before,
            json,
        } => {
            let filter = jobs::JobFilter {
                state: state.as_deref().map(str::parse).transpose()?,
                account: account.clone(),
                provider: provider.clone(),
                since: None,
            };
            let store = open_existing()?;
            let list = jobs::list(&*store.read()?, &filter, *before, *limit)?;
            if *json {
                pretty(&Value::Array(list.iter().map(Job::to_json).collect()))
            } else {
                let mut out = format!(
                    "{:>8}  {:<9}  {:>3}  {:<12}  {:<12}  REQUEST",
                    "ID", "STATE", "TRY", "ACCOUNT", "PROVIDER"
                );
                for j in &list {
                    out.push('\n');
                    out.push_str(&job_line(j));
                }
                out
            }
        }
        Command::Job { action } => {
            let store = open_existing()?;
            let (id, act, json) = match action {
                JobCommand::Show { id, json } => {
                    let job = jobs::get(&*store.read()?, parse_id(id)?)?;
                    let attempts = crate::store::attempts::list_json(&*store.read()?, job.id)?;
                    let mut v = job.to_json();
                    v["attempt_log"] = Value::Array(attempts);
                    return Ok(Output::new(if *json {
                        pretty(&v)
                    } else {
                        show_text(&job)
                    }));
                }
                JobCommand::Approve { id, json } => (id, UserAction::Approve, json),
                JobCommand::Cancel { id, json } => (id, UserAction::Cancel, json),
                JobCommand::Retry { id, json } => (id, UserAction::Retry, json),
                JobCommand::Reopen { id, json } => (id, UserAction::Reopen, json),
            };
            let id = parse_id(id)?;
            let job = store.write(|tx| jobs::user_action(tx, id, act, now))?;
            if *json {
                // The job as the HTTP API answers the same action.
                pretty(&job.to_json())
            } else {
                format!("job {} is {}", job.id, job.state)
            }
        }
        Command::Pause { account, json } | Command::Resume { account, json } => {
            let paused = matches!(cli.command, Command::Pause { .. });
            let store = open()?;
            store.write(|tx| match account {
                Some(a) => accounts::set_paused(tx, a, paused, now),
                None => accounts::set_global_pause(tx, paused),
            })?;
            if *json {
                // What the HTTP API answers: an account's standing, or the global switch.
                pretty(&match account {
                    Some(a) => {
                        let a = accounts::get(&*store.read()?, a)?;
                        json!({"account": a.account, "status": a.status, "paused": a.paused})
                    }
                    None => {
                        json!({"paused": accounts::global_paused(&*store.read()?)?, "account": null})
                    }
                })
            } else {
                let what = account
                    .as_deref()
                    .map_or("everything".to_string(), |a| format!("account {a}"));
                format!("{} {what}", if paused { "paused" } else { "resumed" })
            }
        }
        Command::Credentials {
            action:
                CredentialsCommand::Set {
                    account,
                    provider,
                    header,
                    format,
                    json,
                },
        } => {
            let mut secret = String::new();
            std::io::stdin().read_to_string(&mut secret)?;
            let secret = secret.trim_end_matches(['\n', '\r']);
            let store = open()?;
            store.write(|tx| {
                accounts::put_credential(tx, account, provider, secret, header, format, now)
            })?;
            if *json {
                // As `GET /v1/accounts/{account}/credentials/{provider}`: never the secret.
                let c = accounts::credential_status(&*store.read()?, account, provider)?;
                pretty(
                    &json!({"account": c.account, "provider": c.provider, "status": c.status,
                               "reason": c.reason, "header": c.header, "updated_at": c.updated_at}),
                )
            } else {
                format!("credential stored for {account}/{provider}")
            }
        }
        Command::Stats { json } => {
            let store = open_existing()?;
            let conn = store.read()?;
            let counts = jobs::count_by_state(&conn)?;
            let (backlog, oldest) = engine::due_backlog(&conn, now)?;
            let mut by_state = serde_json::Map::new();
            for s in JobState::ALL {
                let n = counts
                    .iter()
                    .find(|(st, _)| *st == s)
                    .map_or(0, |(_, n)| *n);
                by_state.insert(s.as_str().into(), n.into());
            }
            let v = json!({
                "jobs": by_state,
                "due_backlog": backlog,
                "oldest_due_seconds": oldest.map(|t| ((now - t).max(0)) as f64 / 1000.0),
                "paused": accounts::global_paused(&conn)?,
            });
            if *json {
                pretty(&v)
            } else {
                let mut out = String::new();
                for s in JobState::ALL {
                    out.push_str(&format!("{:<10} {}\n", s.as_str(), v["jobs"][s.as_str()]));
                }
                out.push_str(&format!("due now    {backlog}"));
                out
            }
        }
        Command::Prune { json } => {
            let store = open_existing()?;
            let day = 86_400_000;
            let (a, j) = store.write(|tx| {
                engine::prune(
                    tx,
                    config.retention_attempts_days.map(|d| now - d * day),
                    config.retention_jobs_days.map(|d| now - d * day),
                    now - day,
                )
            })?;
            if *json {
                pretty(&json!({"pruned_attempts": a, "pruned_jobs": j}))
            } else {
                format!("pruned {j} finished jobs and {a} attempt rows")
            }
        }
        Command::Backup { path, json } => {
            if path.exists() {
                return Err(Error::invalid(
                    "PATH",
                    format!("{} exists; name a new file", path.display()),
                ));
            }
            let store = open_existing()?;
            store.backup_to(path)?;
            if *json {
                let bytes = std::fs::metadata(path)?.len();
                pretty(&json!({"path": path.display().to_string(), "bytes": bytes}))
            } else {
                format!("backup written to {}", path.display())
            }
        }
        Command::Check { json } if !config.db.exists() => {
            // Checking a configuration before the first start: nothing to open yet.
            let db = config.db.display().to_string();
            if *json {
                pretty(&json!({"ok": true, "problems": [], "database": db, "schema": null}))
            } else {
                format!(
                    "ok: configuration valid; no database at {db} yet (errand serve creates it)"
                )
            }
        }
        Command::Check { json } => {
            let store = open()?;
            let problems = store.integrity_check()?;
            let failure = (!problems.is_empty()).then(|| Error::Database {
                path: config.db.display().to_string(),
                reason: format!("integrity check failed: {}", problems.join("; ")),
            });
            if *json {
                // The problems are the output; the failure still exits 1 with its line.
                let v = json!({
                    "ok": problems.is_empty(),
                    "problems": problems,
                    "database": config.db.display().to_string(),
                    "schema": crate::store::SCHEMA_VERSION,
                });
                return Ok(Output {
                    text: pretty(&v),
                    failure,
                });
            }
            if let Some(e) = failure {
                return Err(e);
            }
            format!(
                "ok: configuration valid, database {} sound (schema {})",
                config.db.display(),
                crate::store::SCHEMA_VERSION
            )
        }
    };
    Ok(Output::new(text))
}

fn show_text(j: &Job) -> String {
    let mut out = format!(
        "job {}\n  state     {}\n  account   {}\n  provider  {}\n  request   {} {}\n  attempts  {}\n  run_at    {}\n  created   {}",
        j.id,
        j.state,
        j.account,
        j.provider,
        j.method,
        j.url,
        j.attempts,
        format_rfc3339(j.run_at),
        format_rfc3339(j.created_at)
    );
    if let Some(e) = &j.last_error {
        out.push_str(&format!(
            "\n  error     {} ({}): {}",
            e.category, e.reason, e.message
        ));
    }
    if let Some(r) = &j.result {
        out.push_str(&format!(
            "\n  result    HTTP {} ({} bytes)",
            r.status,
            r.body.len()
        ));
    }
    out
}
