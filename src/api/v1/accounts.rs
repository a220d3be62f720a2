//! Accounts: credentials (the secret is never returned), pause/resume, active/suspended.

use serde_json::json;

use super::{answer, name, object, opt_str, write};
use crate::api::routes::Params;
use crate::api::{Answer, Api, Reply, Req};
use crate::error::{Error, Result};
use crate::store::accounts;

fn account_provider(p: &Params) -> Result<(String, String)> {
    Ok((
        name("account", p.get("account"))?,
        name("provider", p.get("provider"))?,
    ))
}

/// `PUT /v1/accounts/{account}/credentials/{provider}` `{"secret", "header"?, "format"?}`
/// → 204, status `valid`.
pub fn put_credential(api: &Api, req: &Req, p: &Params) -> Answer {
    let obj = match object(req, &["secret", "header", "format"]) {
        Ok(o) => o,
        Err(r) => return r.into(),
    };
    let r = (|| {
        let (account, provider) = account_provider(p)?;
        let secret = opt_str(&obj, "secret")?
            .ok_or_else(|| Error::invalid("secret", "is required (the provider's API token)"))?;
        let header = opt_str(&obj, "header")?.unwrap_or_else(|| "Authorization".into());
        let format = opt_str(&obj, "format")?.unwrap_or_else(|| "Bearer {secret}".into());
        let now = api.shared.now();
        write(api, move |c| {
            accounts::put_credential(c, &account, &provider, &secret, &header, &format, now)
        })
    })();
    if r.is_ok() {
        // Jobs canceled at preflight stay canceled; jobs waiting may run now.
        api.shared.wake();
    }
    answer(r, |()| Reply::empty(204))
}

/// `GET /v1/accounts/{account}/credentials/{provider}`: status, never the secret.
pub fn get_credential(api: &Api, _: &Req, p: &Params) -> Answer {
    let r = account_provider(p)
        .and_then(|(a, pr)| accounts::credential_status(&*api.shared.store.read()?, &a, &pr));
    answer(r, |c| {
        Reply::json(
            200,
            &json!({"account": c.account, "provider": c.provider, "status": c.status,
                    "reason": c.reason, "header": c.header, "updated_at": c.updated_at}),
        )
    })
}

/// `DELETE /v1/accounts/{account}/credentials/{provider}` → 204.
pub fn delete_credential(api: &Api, _: &Req, p: &Params) -> Answer {
    let r = account_provider(p)
        .and_then(|(a, pr)| write(api, move |c| accounts::delete_credential(c, &a, &pr)));
    answer(r, |()| Reply::empty(204))
}

fn standing(api: &Api, account: &str) -> Result<serde_json::Value> {
    let a = accounts::get(&*api.shared.store.read()?, account)?;
    Ok(json!({"account": a.account, "status": a.status, "paused": a.paused}))
}

fn set_paused(api: &Api, p: &Params, paused: bool) -> Answer {
    let now = api.shared.now();
    let r = name("account", p.get("account")).and_then(|a| {
        let a2 = a.clone();
        write(api, move |c| accounts::set_paused(c, &a2, paused, now))?;
        standing(api, &a)
    });
    if r.is_ok() && !paused {
        api.shared.wake();
    }
    answer(r, |v| Reply::json(200, &v))
}

/// `POST /v1/accounts/{account}/pause`: the account's jobs wait; nothing is sent.
pub fn pause(api: &Api, _: &Req, p: &Params) -> Answer {
    set_paused(api, p, true)
}

/// `POST /v1/accounts/{account}/resume`.
pub fn resume(api: &Api, _: &Req, p: &Params) -> Answer {
    set_paused(api, p, false)
}

/// `GET /v1/accounts/{account}`: status and pause.
pub fn get(api: &Api, _: &Req, p: &Params) -> Answer {
    let r = name("account", p.get("account")).and_then(|a| standing(api, &a));
    answer(r, |v| Reply::json(200, &v))
}

/// `PUT /v1/accounts/{account}` `{"status": "active"|"suspended"}`.
pub fn put(api: &Api, req: &Req, p: &Params) -> Answer {
    let obj = match object(req, &["status"]) {
        Ok(o) => o,
        Err(r) => return r.into(),
    };
    let now = api.shared.now();
    let r = (|| {
        let a = name("account", p.get("account"))?;
        let status = opt_str(&obj, "status")?
            .ok_or_else(|| Error::invalid("status", "is required: \"active\" or \"suspended\""))?;
        let a2 = a.clone();
        write(api, move |c| accounts::set_status(c, &a2, &status, now))?;
        standing(api, &a)
    })();
    answer(r, |v| Reply::json(200, &v))
}
