//! Accounts (pause, suspension), the global pause switch, and credentials.

use rusqlite::{named_params, Connection, OptionalExtension};
use serde::Serialize;

use crate::error::{Error, Result};

/// An account's standing. A missing row is an active, unpaused account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Account {
    pub account: String,
    /// `active` or `suspended` (billing): a suspended account's jobs are canceled.
    pub status: String,
    /// A paused account's jobs wait; nothing is sent.
    pub paused: bool,
}

/// Reads an account's standing (defaults when it was never set).
pub fn get(conn: &Connection, account: &str) -> Result<Account> {
    let mut stmt = conn.prepare_cached("SELECT status, paused FROM accounts WHERE account = ?1")?;
    let row = stmt
        .query_row([account], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?))
        })
        .optional()?;
    let (status, paused) = row.unwrap_or_else(|| ("active".to_string(), false));
    Ok(Account {
        account: account.to_string(),
        status,
        paused,
    })
}

/// Lists accounts that have a row (paused, suspended, or once changed).
pub fn list(conn: &Connection) -> Result<Vec<Account>> {
    let mut stmt =
        conn.prepare_cached("SELECT account, status, paused FROM accounts ORDER BY account")?;
    let rows = stmt.query_map([], |r| {
        Ok(Account {
            account: r.get(0)?,
            status: r.get(1)?,
            paused: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Pauses or resumes one account.
pub fn set_paused(conn: &Connection, account: &str, paused: bool, now: i64) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO accounts (account, paused, updated_at) VALUES (:a, :p, :now)
         ON CONFLICT (account) DO UPDATE SET paused = :p, updated_at = :now",
    )?;
    stmt.execute(named_params! {":a": account, ":p": paused, ":now": now})?;
    Ok(())
}

/// Sets an account `active` or `suspended`.
pub fn set_status(conn: &Connection, account: &str, status: &str, now: i64) -> Result<()> {
    if status != "active" && status != "suspended" {
        return Err(Error::invalid(
            "status",
            "must be \"active\" or \"suspended\"",
        ));
    }
    let mut stmt = conn.prepare_cached(
        "INSERT INTO accounts (account, status, updated_at) VALUES (:a, :s, :now)
         ON CONFLICT (account) DO UPDATE SET status = :s, updated_at = :now",
    )?;
    stmt.execute(named_params! {":a": account, ":s": status, ":now": now})?;
    Ok(())
}

/// Accounts whose jobs must not be claimed now (paused).
pub fn paused_accounts(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached("SELECT account FROM accounts WHERE paused = 1")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Sets the global kill switch.
pub fn set_global_pause(conn: &Connection, paused: bool) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO settings (key, value) VALUES ('paused', :v)
         ON CONFLICT (key) DO UPDATE SET value = :v",
    )?;
    stmt.execute(named_params! {":v": if paused { "1" } else { "0" }})?;
    Ok(())
}

/// True while the global kill switch is on.
pub fn global_paused(conn: &Connection) -> Result<bool> {
    let mut stmt = conn.prepare_cached("SELECT value FROM settings WHERE key = 'paused'")?;
    let v: Option<String> = stmt.query_row([], |r| r.get(0)).optional()?;
    Ok(v.as_deref() == Some("1"))
}

/// A credential as the worker uses it. Holds the secret: never serialise it.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub secret: String,
    pub header: String,
    pub format: String,
    pub valid: bool,
    pub version: i64,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("secret", &"[redacted]")
            .field("header", &self.header)
            .field("valid", &self.valid)
            .field("version", &self.version)
            .finish()
    }
}

impl Credential {
    /// The header value to send: `format` with `{secret}` replaced.
    pub fn header_value(&self) -> String {
        self.format.replace("{secret}", &self.secret)
    }
}

/// What the API shows of a credential: never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CredentialStatus {
    pub account: String,
    pub provider: String,
    pub status: String,
    pub reason: Option<String>,
    pub header: String,
    pub updated_at: String,
}

/// Stores (or replaces) the secret for (account, provider) as `valid`.
pub fn put_credential(
    conn: &Connection,
    account: &str,
    provider: &str,
    secret: &str,
    header: &str,
    format: &str,
    now: i64,
) -> Result<()> {
    if secret.is_empty() {
        return Err(Error::invalid("secret", "must not be empty"));
    }
    if !format.contains("{secret}") {
        return Err(Error::invalid(
            "format",
            "must contain {secret}, e.g. \"Bearer {secret}\"",
        ));
    }
    crate::spec::check_header(header, "x")
        .map_err(|_| Error::invalid("header", "is not a valid header name"))?;
    let value = format.replace("{secret}", secret);
    if ureq::http::HeaderValue::from_str(&value).is_err() {
        return Err(Error::invalid(
            "secret",
            "must be printable (it is sent in an HTTP header)",
        ));
    }
    let mut stmt = conn.prepare_cached(
        "INSERT INTO credentials (account, provider, secret, header, format, status, reason, version, updated_at)
         VALUES (:a, :p, :s, :h, :f, 'valid', NULL, :v, :now)
         ON CONFLICT (account, provider) DO UPDATE SET secret = :s, header = :h, format = :f,
             status = 'valid', reason = NULL, version = :v, updated_at = :now",
    )?;
    // A random version, not a counter: a counter restarts after a DELETE, and a 401 to a
    // request made with the deleted secret would then condemn the new one.
    let version = (crate::rand::next_u64() >> 2) as i64;
    stmt.execute(named_params! {":a": account, ":p": provider, ":s": secret, ":h": header, ":f": format, ":v": version, ":now": now})?;
    Ok(())
}

/// The credential for (account, provider), secret included, for the worker.
pub fn credential(conn: &Connection, account: &str, provider: &str) -> Result<Option<Credential>> {
    let mut stmt = conn.prepare_cached(
        "SELECT secret, header, format, status, version FROM credentials WHERE account = ?1 AND provider = ?2",
    )?;
    Ok(stmt
        .query_row([account, provider], |r| {
            Ok(Credential {
                secret: r.get(0)?,
                header: r.get(1)?,
                format: r.get(2)?,
                valid: r.get::<_, String>(3)? == "valid",
                version: r.get(4)?,
            })
        })
        .optional()?)
}

/// The status of the credential for (account, provider), without the secret.
pub fn credential_status(
    conn: &Connection,
    account: &str,
    provider: &str,
) -> Result<CredentialStatus> {
    list_credentials(conn, Some(account))?
        .into_iter()
        .find(|c| c.provider == provider)
        .ok_or_else(|| Error::NotFound(format!("credential for {account}/{provider}")))
}

/// Lists credentials (optionally of one account), without secrets.
pub fn list_credentials(conn: &Connection, account: Option<&str>) -> Result<Vec<CredentialStatus>> {
    let mut stmt = conn.prepare_cached(
        "SELECT account, provider, status, reason, header, updated_at FROM credentials
          WHERE (?1 IS NULL OR account = ?1) ORDER BY account, provider",
    )?;
    let rows = stmt.query_map([account], |r| {
        Ok(CredentialStatus {
            account: r.get(0)?,
            provider: r.get(1)?,
            status: r.get(2)?,
            reason: r.get(3)?,
            header: r.get(4)?,
            updated_at: crate::time::format_rfc3339(r.get(5)?),
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Deletes the credential for (account, provider); `NotFound` if there was none.
pub fn delete_credential(conn: &Connection, account: &str, provider: &str) -> Result<()> {
    let n = conn.execute(
        "DELETE FROM credentials WHERE account = ?1 AND provider = ?2",
        [account, provider],
    )?;
    if n == 0 {
        return Err(Error::NotFound(format!(
            "credential for {account}/{provider}"
        )));
    }
    Ok(())
}

/// Marks the credential `invalid` if it is still the `version` the failed request used
/// (a secret replaced meanwhile stays valid). True when it changed.
pub fn invalidate_credential(
    conn: &Connection,
    account: &str,
    provider: &str,
    version: i64,
    reason: &str,
    now: i64,
) -> Result<bool> {
    let mut stmt = conn.prepare_cached(
        "UPDATE credentials SET status = 'invalid', reason = :r, updated_at = :now
          WHERE account = :a AND provider = :p AND version = :v AND status = 'valid'",
    )?;
    let n = stmt.execute(
        named_params! {":r": reason, ":now": now, ":a": account, ":p": provider, ":v": version},
    )?;
    Ok(n > 0)
}
