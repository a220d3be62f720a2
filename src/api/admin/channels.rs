//! Channels on the admin page: every subscription with its status (a subscriber that
//! answered 410 Gone is disabled, with the reason). Secrets are never read here: the
//! store's listing does not select them.

use std::fmt::Write as _;

use super::html::{badge, esc, masked_url, page, pager, url_enc};
use super::session::Session;
use crate::api::{Api, Reply, Req};
use crate::error::Result;
use crate::store::channels::DELIVERY_PROVIDER;
use crate::store::stats;

/// Subscriptions per page.
const PAGE: i64 = 100;

pub(super) fn list(api: &Api, req: &Req, s: &Session, notice: Option<&str>) -> Result<Reply> {
    let after = match (req.query.get("after_channel"), req.query.get("after_name")) {
        (Some(c), Some(n)) if !c.is_empty() => Some((c.as_str(), n.as_str())),
        _ => None,
    };
    let mut subs = stats::subscriptions_after(&*api.shared.store.read()?, after, PAGE + 1)?;
    let more = subs.len() as i64 > PAGE;
    subs.truncate(PAGE as usize);

    let mut b = String::from(
        "<h1>Channels</h1><p class=\"muted\">Subscriptions by channel. Secrets are never shown, nor URLs past their first path segment (webhook URLs often carry a token); a subscriber answering 410 Gone is disabled.</p>",
    );
    if subs.is_empty() {
        b.push_str("<p class=\"muted\" id=\"no-subscriptions\">No subscriptions.</p>");
    } else {
        b.push_str("<div class=\"scroll\"><table id=\"subscriptions\"><tr><th>Channel</th><th>Name</th><th>URL</th><th>Status</th><th>Reason</th></tr>");
        for sub in &subs {
            // Delivery jobs carry the channel as their account.
            let _ = write!(
                b,
                "<tr class=\"subscription\"><td><a href=\"/admin/jobs?account={}&amp;provider={}\">{}</a></td><td>{}</td><td class=\"url\">{}</td><td>{}</td><td>{}</td></tr>",
                url_enc(&sub.channel),
                url_enc(DELIVERY_PROVIDER),
                esc(&sub.channel),
                esc(&sub.name),
                esc(&masked_url(&sub.url)),
                badge(&sub.status),
                esc(sub.reason.as_deref().unwrap_or(""))
            );
        }
        b.push_str("</table></div>");
    }
    let next = match (more, subs.last()) {
        (true, Some(last)) => Some(format!(
            "/admin/channels?after_channel={}&amp;after_name={}",
            url_enc(&last.channel),
            url_enc(&last.name)
        )),
        _ => None,
    };
    b.push_str(&pager(
        after.is_some().then_some(("/admin/channels", "« First")),
        next.as_deref().map(|h| ("more", h, "More »")),
    ));
    Ok(page(
        200,
        "Channels",
        Some(("/admin/channels", &s.csrf)),
        notice,
        &b,
    ))
}
