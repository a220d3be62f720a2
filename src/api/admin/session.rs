//! Admin sessions, in memory: a random id in an HttpOnly, SameSite=Strict cookie scoped
//! to `/admin`, and a CSRF token per session that every POST must echo. A restart logs
//! everyone out, which is fine for an operator page.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::api::request::constant_time_eq;
use crate::api::Req;

/// The cookie's name.
pub const COOKIE: &str = "errand_admin";
/// A session unused for this long is forgotten.
const IDLE: Duration = Duration::from_secs(12 * 3600);
/// At most this many sessions are kept (the least recently used go first).
const MAX_SESSIONS: usize = 10_000;

/// One logged-in browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    /// Echoed by every POST form of this session.
    pub csrf: String,
    last_used: Instant,
}

/// Every live session.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a session with fresh random id and CSRF token.
    pub fn create(&self) -> Session {
        let s = Session {
            id: crate::rand::token(),
            csrf: crate::rand::token(),
            last_used: Instant::now(),
        };
        let mut map = self.lock();
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, v| v.last_used.elapsed() < IDLE);
        }
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .values()
                .min_by_key(|v| v.last_used)
                .map(|v| v.id.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(s.id.clone(), s.clone());
        s
    }

    /// The live session named by the request's cookie, if any (and marks it used).
    pub fn get(&self, req: &Req) -> Option<Session> {
        let id = cookie(req, COOKIE)?;
        let mut map = self.lock();
        let s = map.get_mut(&id)?;
        if s.last_used.elapsed() >= IDLE {
            map.remove(&id);
            return None;
        }
        s.last_used = Instant::now();
        Some(s.clone())
    }

    /// Ends a session.
    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }
}

impl Session {
    /// True when `given` is this session's CSRF token.
    pub fn csrf_ok(&self, given: Option<&str>) -> bool {
        given.is_some_and(|g| constant_time_eq(g.as_bytes(), self.csrf.as_bytes()))
    }
}

/// The value of cookie `name` in the request.
pub fn cookie(req: &Req, name: &str) -> Option<String> {
    req.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("cookie"))
        .flat_map(|(_, v)| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_string())
}

/// The `Set-Cookie` value for a session (Secure when a TLS proxy says so).
pub fn set_cookie(req: &Req, id: &str) -> String {
    let secure = req
        .header("x-forwarded-proto")
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    format!(
        "{COOKIE}={id}; Path=/admin; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that deletes the session cookie.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req_with_cookie(c: &str) -> Req {
        Req {
            method: "GET".into(),
            path: "/admin".into(),
            query: Default::default(),
            headers: vec![("Cookie".into(), c.into())],
            body: Vec::new(),
        }
    }

    #[test]
    fn sessions_are_found_by_cookie_and_check_csrf() {
        let sessions = Sessions::default();
        let s = sessions.create();
        let req = req_with_cookie(&format!("other=1; {COOKIE}={}", s.id));
        let found = sessions.get(&req).unwrap();
        assert!(found.csrf_ok(Some(&s.csrf)));
        assert!(!found.csrf_ok(Some("nope")));
        assert!(!found.csrf_ok(None));
        assert!(sessions
            .get(&req_with_cookie("errand_admin=guess"))
            .is_none());
        sessions.remove(&s.id);
        assert!(sessions.get(&req).is_none());
    }
}
