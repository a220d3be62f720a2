//! The one route table. The router serves exactly these routes, and `/openapi.json`
//! describes exactly these (a test compares the two).

use serde_json::json;

use super::{v1, Answer, Api, Reply, Req};

/// A route's handler.
pub type Handler = fn(&Api, &Req, &Params) -> Answer;

/// One route: method, path pattern (`{name}` matches one segment) and handler.
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub handler: Handler,
    /// The route may be called with the job's own `?token=` instead of the API token.
    pub job_token: bool,
}

const fn r(method: &'static str, path: &'static str, handler: Handler) -> Route {
    Route {
        method,
        path,
        handler,
        job_token: false,
    }
}

/// Every route, literal paths before patterns that could also match them.
pub const ROUTES: &[Route] = &[
    r("GET", "/healthz", healthz),
    r("GET", "/readyz", readyz),
    r("GET", "/metrics", metrics),
    r("GET", "/client.js", client_js),
    r("GET", "/openapi.json", openapi),
    r("POST", "/v1/jobs", v1::jobs::create),
    r("GET", "/v1/jobs", v1::jobs::list),
    r("POST", "/v1/jobs/bulk", v1::jobs::bulk),
    Route {
        method: "GET",
        path: "/v1/jobs/{id}",
        handler: v1::jobs::poll,
        job_token: true,
    },
    r("DELETE", "/v1/jobs/{id}", v1::jobs::cancel),
    r("GET", "/v1/jobs/{id}/attempts", v1::jobs::attempts),
    r("POST", "/v1/jobs/{id}/approve", v1::jobs::approve),
    r("POST", "/v1/jobs/{id}/cancel", v1::jobs::cancel),
    r("POST", "/v1/jobs/{id}/retry", v1::jobs::retry),
    r("POST", "/v1/jobs/{id}/reopen", v1::jobs::reopen),
    r(
        "PUT",
        "/v1/accounts/{account}/credentials/{provider}",
        v1::accounts::put_credential,
    ),
    r(
        "GET",
        "/v1/accounts/{account}/credentials/{provider}",
        v1::accounts::get_credential,
    ),
    r(
        "DELETE",
        "/v1/accounts/{account}/credentials/{provider}",
        v1::accounts::delete_credential,
    ),
    r("POST", "/v1/accounts/{account}/pause", v1::accounts::pause),
    r(
        "POST",
        "/v1/accounts/{account}/resume",
        v1::accounts::resume,
    ),
    r("GET", "/v1/accounts/{account}", v1::accounts::get),
    r("PUT", "/v1/accounts/{account}", v1::accounts::put),
    r("POST", "/v1/pause", v1::misc::pause),
    r("POST", "/v1/resume", v1::misc::resume),
    r("GET", "/v1/status", v1::misc::status),
    r("GET", "/v1/notifications", v1::misc::notifications),
    r("GET", "/v1/triage", v1::misc::triage),
    r("POST", "/v1/operations", v1::operations::create),
    Route {
        method: "GET",
        path: "/v1/operations/{id}",
        handler: v1::operations::poll,
        job_token: true,
    },
    r(
        "POST",
        "/v1/operations/{id}/approve",
        v1::operations::approve,
    ),
    r("POST", "/v1/operations/{id}/retry", v1::operations::retry),
    r("POST", "/v1/operations/{id}/cancel", v1::operations::cancel),
    r(
        "GET",
        "/v1/channels/{channel}/subscriptions",
        v1::channels::list_subscriptions,
    ),
    r(
        "PUT",
        "/v1/channels/{channel}/subscriptions/{name}",
        v1::channels::put_subscription,
    ),
    r(
        "DELETE",
        "/v1/channels/{channel}/subscriptions/{name}",
        v1::channels::delete_subscription,
    ),
    r(
        "POST",
        "/v1/channels/{channel}/events",
        v1::channels::publish,
    ),
];

/// The OpenAPI 3.1 description of [`ROUTES`].
pub const OPENAPI: &str = include_str!("openapi.json");

/// Path parameters captured by a route's pattern.
#[derive(Debug, Default)]
pub struct Params(Vec<(&'static str, String)>);

impl Params {
    /// The value of `{name}` (empty if the pattern has none).
    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }
}

/// Matches `path` against `pattern`, capturing `{name}` segments.
pub fn matches(pattern: &'static str, path: &str) -> Option<Params> {
    let mut params = Vec::new();
    let mut pat = pattern.split('/');
    let mut segs = path.split('/');
    loop {
        match (pat.next(), segs.next()) {
            (None, None) => return Some(Params(params)),
            (Some(p), Some(s)) => {
                if let Some(name) = p.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                    if s.is_empty() {
                        return None;
                    }
                    params.push((name, s.to_string()));
                } else if p != s {
                    return None;
                }
            }
            _ => return None,
        }
    }
}

/// Routes a request: 503 while shutting down and 401 without the API token (for
/// `/v1`), 404 for an unknown path, 405 for a known path with another method.
pub fn dispatch(api: &Api, req: &Req) -> Answer {
    // The admin page is HTML for people, with its own session and CSRF checks; it is not
    // part of the JSON API that /openapi.json describes.
    if req.path == "/admin" || req.path.starts_with("/admin/") {
        return super::admin::handle(api, req).into();
    }
    let v1 = req.path == "/v1" || req.path.starts_with("/v1/");
    if v1 && api.shutting_down() {
        return Reply::error(
            503,
            "shutting_down",
            "errand is shutting down; retry shortly",
        )
        .header("Retry-After", "5")
        .into();
    }
    let mut allowed: Vec<&'static str> = Vec::new();
    let mut found: Option<(&Route, Params)> = None;
    // A literal path (`/v1/jobs/bulk`) shadows the patterns it also matches
    // (`/v1/jobs/{id}`): GET on it is a 405, not "job bulk not found".
    let literal = ROUTES.iter().any(|r| r.path == req.path);
    for route in ROUTES.iter().filter(|r| !literal || r.path == req.path) {
        if let Some(params) = matches(route.path, &req.path) {
            if route.method == req.method {
                found = Some((route, params));
                break;
            }
            allowed.push(route.method);
        }
    }
    let job_token = found
        .as_ref()
        .is_some_and(|(r, _)| r.job_token && req.query.contains_key("token"));
    if v1 && !job_token && !api_token_ok(api, req) {
        return Reply::error(
            401,
            "unauthorized",
            "Authorization: missing or wrong API token; send Authorization: Bearer <api_token>",
        )
        .header("WWW-Authenticate", "Bearer")
        .into();
    }
    match found {
        Some((route, params)) => (route.handler)(api, req, &params),
        None if !allowed.is_empty() => Reply::error(
            405,
            "method_not_allowed",
            &format!(
                "{} {}: method not allowed; use {}",
                req.method,
                req.path,
                allowed.join(", ")
            ),
        )
        .header("Allow", &allowed.join(", "))
        .into(),
        None => Reply::error(
            404,
            "no_route",
            &format!(
                "no route for {} {}; see /openapi.json",
                req.method, req.path
            ),
        )
        .into(),
    }
}

/// True when no API token is configured or the request carries it.
pub fn api_token_ok(api: &Api, req: &Req) -> bool {
    match &api.shared.config.api_token {
        None => true,
        Some(t) => req.has_bearer(t),
    }
}

fn healthz(_: &Api, _: &Req, _: &Params) -> Answer {
    Reply::json(200, &json!({"status": "ok"})).into()
}

fn readyz(api: &Api, _: &Req, _: &Params) -> Answer {
    super::metrics::readyz(api).into()
}

fn metrics(api: &Api, req: &Req, _: &Params) -> Answer {
    super::metrics::metrics(api, req).into()
}

fn client_js(_: &Api, _: &Req, _: &Params) -> Answer {
    Reply::with_type(
        200,
        "text/javascript; charset=utf-8",
        super::CLIENT_JS.as_bytes().to_vec(),
    )
    .into()
}

fn openapi(_: &Api, _: &Req, _: &Params) -> Answer {
    Reply::with_type(200, "application/json", OPENAPI.as_bytes().to_vec()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_capture_segments() {
        let p = matches(
            "/v1/accounts/{account}/credentials/{provider}",
            "/v1/accounts/acme/credentials/pm",
        )
        .unwrap();
        assert_eq!(p.get("account"), "acme");
        assert_eq!(p.get("provider"), "pm");
        assert!(matches("/v1/jobs/{id}", "/v1/jobs/").is_none());
        assert!(matches("/v1/jobs/{id}", "/v1/jobs/1/x").is_none());
        assert!(matches("/v1/jobs", "/v1/jobs/").is_none());
    }

    #[test]
    fn every_route_is_described_and_every_description_is_routed() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().unwrap();
        let mut described = std::collections::BTreeSet::new();
        for (path, ops) in paths {
            for (method, _) in ops.as_object().unwrap() {
                if method != "parameters" {
                    described.insert((method.to_ascii_uppercase(), path.clone()));
                }
            }
        }
        let routed: std::collections::BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_string()))
            .collect();
        let missing: Vec<_> = routed.difference(&described).collect();
        let extra: Vec<_> = described.difference(&routed).collect();
        assert!(
            missing.is_empty(),
            "routes not in openapi.json: {missing:?}"
        );
        assert!(
            extra.is_empty(),
            "openapi.json describes unrouted: {extra:?}"
        );
    }
}
