//! Channels (SPEC §4): subscriptions and events.

use serde_json::json;

use super::{answer, name, object, opt_str, write};
use crate::api::routes::Params;
use crate::api::{Answer, Api, Reply, Req};
use crate::error::Error;
use crate::store::channels;

/// `PUT /v1/channels/{channel}/subscriptions/{name}` `{"url", "secret": "whsec_..."}`.
pub fn put_subscription(api: &Api, req: &Req, p: &Params) -> Answer {
    let obj = match object(req, &["url", "secret"]) {
        Ok(o) => o,
        Err(r) => return r.into(),
    };
    let now = api.shared.now();
    let r = (|| {
        let channel = name("channel", p.get("channel"))?;
        let sub = name("name", p.get("name"))?;
        let url = opt_str(&obj, "url")?.ok_or_else(|| Error::invalid("url", "is required"))?;
        let secret = opt_str(&obj, "secret")?.ok_or_else(|| {
            Error::invalid("secret", "is required: whsec_ and 24+ characters of base64")
        })?;
        write(api, move |c| {
            channels::put_subscription(c, &channel, &sub, &url, &secret, now)
        })
    })();
    answer(r, |()| Reply::empty(204))
}

/// `DELETE /v1/channels/{channel}/subscriptions/{name}`.
pub fn delete_subscription(api: &Api, _: &Req, p: &Params) -> Answer {
    let r = (|| {
        let channel = name("channel", p.get("channel"))?;
        let sub = name("name", p.get("name"))?;
        write(api, move |c| {
            channels::delete_subscription(c, &channel, &sub)
        })
    })();
    answer(r, |()| Reply::empty(204))
}

/// `GET /v1/channels/{channel}/subscriptions`: never the secrets.
pub fn list_subscriptions(api: &Api, _: &Req, p: &Params) -> Answer {
    let r = (|| {
        let channel = name("channel", p.get("channel"))?;
        channels::list_subscriptions(&*api.shared.store.read()?, Some(&channel))
    })();
    answer(r, |subs| Reply::json(200, &json!({"subscriptions": subs})))
}

/// `POST /v1/channels/{channel}/events` `{"payload": {...}}`: checks the payload
/// against the channel's schema (422 naming the field) and creates one delivery job per
/// active subscriber in one transaction; 202 with their ids.
pub fn publish(api: &Api, req: &Req, p: &Params) -> Answer {
    let obj = match object(req, &["payload"]) {
        Ok(o) => o,
        Err(r) => return r.into(),
    };
    let channel = match name("channel", p.get("channel")) {
        Ok(c) => c,
        Err(e) => return Reply::from_error(&e).into(),
    };
    let Some(payload) = obj.get("payload").cloned() else {
        return Reply::from_error(&Error::invalid("payload", "is required")).into();
    };
    // A payload the schema refuses is a semantic error: 422, naming the field.
    let config = api.shared.config.clone();
    match crate::engine::outbox::check_payload(&config, &channel, &payload) {
        Ok(()) => {}
        Err(Error::Invalid { field, message }) => {
            return Reply::json(
                422,
                &json!({"error": {"code": "schema", "field": field,
                                  "message": format!("{field}: {message}")}}),
            )
            .into();
        }
        Err(e) => return Reply::from_error(&e).into(),
    }
    let now = api.shared.now();
    let ch = channel.clone();
    let r = write(api, move |c| {
        crate::engine::outbox::publish(c, &config, &ch, &payload, now)
    });
    if r.is_ok() {
        api.shared.wake();
    }
    answer(r, |ids| {
        Reply::json(
            202,
            &json!({"channel": channel,
                    "deliveries": ids.iter().map(|i| i.to_string()).collect::<Vec<_>>()}),
        )
    })
}
