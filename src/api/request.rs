//! A request as handlers see it: method, path, query, headers and a body read with a
//! size limit (413 before it is read whole), plus the API-token check.

use std::collections::HashMap;
use std::io::Read;

use super::Reply;

/// A parsed request.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub query: HashMap<String, String>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Decodes `%XX` escapes and `+` of a query component.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match s.get(i + 1..i + 3).map(|h| u8::from_str_radix(h, 16)) {
                    Some(Ok(v)) => {
                        out.push(v);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `a=1&b=2`.
pub fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

impl Req {
    /// Reads `req` whole, refusing a body over `max_body` bytes with 413 (by its
    /// Content-Length before reading, or while reading a chunked body).
    pub fn read(req: &mut tiny_http::Request, max_body: u64) -> Result<Req, Reply> {
        let url = req.url().to_string();
        let (path, query) = url.split_once('?').unwrap_or((&url, ""));
        let headers: Vec<(String, String)> = req
            .headers()
            .iter()
            .map(|h| {
                (
                    h.field.as_str().as_str().to_string(),
                    h.value.as_str().to_string(),
                )
            })
            .collect();
        let too_large = || {
            Reply::error(
                413,
                "body_too_large",
                &format!("request body is larger than {max_body} bytes (max_request_bytes)"),
            )
        };
        if req.body_length().is_some_and(|n| n as u64 > max_body) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        if let Err(e) = req.as_reader().take(max_body + 1).read_to_end(&mut body) {
            return Err(Reply::error(
                400,
                "bad_body",
                &format!("could not read the request body: {e}"),
            ));
        }
        if body.len() as u64 > max_body {
            return Err(too_large());
        }
        Ok(Req {
            method: req.method().as_str().to_ascii_uppercase(),
            path: percent_decode_path(path),
            query: parse_query(query),
            headers,
            body,
        })
    }

    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON, or a 400 naming the problem.
    pub fn json(&self) -> Result<serde_json::Value, Reply> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Reply::json(
                400,
                &serde_json::json!({"error": {"code": "invalid_json", "field": "body",
                    "message": format!("body: not valid JSON ({e})")}}),
            )
        })
    }

    /// True when the request carries `Authorization: Bearer <token>` equal to `token`.
    pub fn has_bearer(&self, token: &str) -> bool {
        self.header("authorization")
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .is_some_and(|given| constant_time_eq(given.trim().as_bytes(), token.as_bytes()))
    }
}

fn percent_decode_path(p: &str) -> String {
    if p.contains('%') {
        percent_decode(&p.replace('+', "%2B"))
    } else {
        p.to_string()
    }
}

/// Compares two secrets in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        diff |= x ^ y;
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_escapes() {
        let q = parse_query("state=retry&account=a%20b&x=1+2&flag");
        assert_eq!(q["account"], "a b");
        assert_eq!(q["x"], "1 2");
        assert_eq!(q["flag"], "");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
