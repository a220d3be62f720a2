//! HTML building blocks for the admin page: escaping, the page frame, small widgets.
//! Every value that comes from the database or the request goes through [`esc`].

use std::fmt::Write as _;

use crate::api::Reply;
use crate::time::format_rfc3339;

/// The stylesheet, served at `/admin/admin.css` (the page's CSP allows only 'self').
pub const CSS: &str = include_str!("admin.css");

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A subscriber's URL as the admin page shows it: scheme, host and the first path
/// segment, the rest as "…". Webhook URLs often carry their token in the path or the
/// query (Slack's `/services/T…/B…/secret`), and a screen is no place for it; the
/// credentials of a `user:pass@` are never shown either.
pub fn masked_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "…".to_string();
    };
    let cut = |s: &str| s.find(['/', '?', '#']).unwrap_or(s.len());
    let (authority, path) = rest.split_at(cut(rest));
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let mut out = format!("{scheme}://{host}");
    let tail = match path.strip_prefix('/') {
        Some(p) => {
            let (first, more) = p.split_at(cut(p));
            out.push('/');
            out.push_str(first);
            more
        }
        None => path,
    };
    if !tail.is_empty() {
        out.push('…');
    }
    out
}

/// Percent-encodes a query or path component.
pub fn url_enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Text shortened to `max` characters, with an ellipsis when cut.
pub fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

/// "3 min", "2 h": a duration in ms for people.
pub fn human_ms(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

/// A time as `<time>` with its age relative to `now`.
pub fn when(t: i64, now: i64) -> String {
    let rfc = format_rfc3339(t);
    let rel = if t <= now {
        format!("{} ago", human_ms(now - t))
    } else {
        format!("in {}", human_ms(t - now))
    };
    format!(
        "<time datetime=\"{}\" title=\"{}\">{}</time>",
        esc(&rfc),
        esc(&rfc),
        esc(&rel)
    )
}

/// A state as a coloured badge.
pub fn badge(state: &str) -> String {
    format!("<span class=\"badge s-{0}\">{0}</span>", esc(state))
}

/// A POST form with one button, carrying the CSRF token and any hidden fields.
pub fn post_button(
    action: &str,
    label: &str,
    csrf: &str,
    fields: &[(&str, &str)],
    class: &str,
) -> String {
    let mut f = format!(
        "<form method=\"post\" action=\"{}\" class=\"inline\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(action),
        esc(csrf)
    );
    for (k, v) in fields {
        let _ = write!(
            f,
            "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
            esc(k),
            esc(v)
        );
    }
    let _ = write!(
        f,
        "<button type=\"submit\" class=\"{}\">{}</button></form>",
        esc(class),
        esc(label)
    );
    f
}

/// A link to the jobs of `account`, escaped.
pub fn account_link(account: &str) -> String {
    format!(
        "<a href=\"/admin/jobs?account={}\">{}</a>",
        url_enc(account),
        esc(account)
    )
}

/// The paging links under a list: back to the first page (`first`: href, label) when
/// not on it, and on to the next (`next`: element id, href, label) when there is one.
/// Hrefs are given escaped.
pub fn pager(first: Option<(&str, &str)>, next: Option<(&str, &str, &str)>) -> String {
    let mut b = String::from("<div class=\"pager\">");
    if let Some((href, label)) = first {
        b.push_str(&format!("<a href=\"{href}\">{label}</a>"));
    }
    if let Some((id, href, label)) = next {
        b.push_str(&format!("<a id=\"{id}\" href=\"{href}\">{label}</a>"));
    }
    b.push_str("</div>");
    b
}

/// Headers every admin answer carries: no caching, no framing, scripts off.
pub fn secure(mut r: Reply) -> Reply {
    for (k, v) in [
        (
            "Content-Security-Policy",
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "DENY"),
        ("Referrer-Policy", "same-origin"),
        ("Cache-Control", "no-store"),
    ] {
        r = r.header(k, v);
    }
    r
}

/// A whole page: head, navigation (when logged in), a notice line and `body`.
pub fn page(
    status: u16,
    title: &str,
    nav: Option<(&str, &str)>,
    notice: Option<&str>,
    body: &str,
) -> Reply {
    let mut h = String::with_capacity(body.len() + 1024);
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · errand</title><link rel=\"stylesheet\" href=\"/admin/admin.css\"></head><body>",
        esc(title)
    );
    h.push_str("<header><a class=\"brand\" href=\"/admin\">errand</a>");
    if let Some((current, csrf)) = nav {
        h.push_str("<nav>");
        for (href, label) in [
            ("/admin", "Overview"),
            ("/admin/jobs", "Jobs"),
            ("/admin/operations", "Operations"),
            ("/admin/channels", "Channels"),
            ("/admin/accounts", "Accounts"),
            ("/admin/notifications", "Notifications"),
            ("/admin/triage", "Triage"),
        ] {
            let cls = if href == current { " class=\"on\"" } else { "" };
            let _ = write!(h, "<a href=\"{href}\"{cls}>{label}</a>");
        }
        h.push_str(&post_button("/admin/logout", "Log out", csrf, &[], "link"));
        h.push_str("</nav>");
    }
    h.push_str("</header><main>");
    if let Some(n) = notice {
        let _ = write!(h, "<p class=\"notice\" role=\"status\">{}</p>", esc(n));
    }
    h.push_str(body);
    h.push_str("</main></body></html>");
    secure(Reply::with_type(
        status,
        "text/html; charset=utf-8",
        h.into_bytes(),
    ))
}

/// A 303 redirect to an admin path.
pub fn redirect(to: &str) -> Reply {
    secure(Reply::empty(303).header("Location", to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscriber_url_shows_its_host_and_first_segment_only() {
        for (url, shown) in [
            (
                "https://hooks.slack.com/services/T000/B000/XXXXsecret",
                "https://hooks.slack.com/services…",
            ),
            ("https://h.test/in?token=abc", "https://h.test/in…"),
            (
                "https://user:pw@h.test:8443/hook",
                "https://h.test:8443/hook",
            ),
            ("http://h.test", "http://h.test"),
            ("http://h.test?k=v", "http://h.test…"),
            ("not a url", "…"),
        ] {
            assert_eq!(masked_url(url), shown, "{url}");
        }
    }

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
        assert_eq!(url_enc("a b/c&d"), "a%20b%2Fc%26d");
        assert_eq!(clip("abcdef", 3), "abc…");
        assert_eq!(human_ms(90_000), "90 s");
        assert_eq!(human_ms(600_000), "10 min");
    }
}
