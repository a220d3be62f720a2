//! An HTTP answer before it becomes a tiny_http response.

use serde_json::{json, Value};

use crate::error::Error;

/// Status, headers and body of an answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    /// A JSON answer.
    pub fn json(status: u16, v: &Value) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: serde_json::to_vec(v).unwrap_or_default(),
        }
    }

    /// An error answer `{"error": {"code", "message"}}`.
    pub fn error(status: u16, code: &str, message: &str) -> Reply {
        Reply::json(
            status,
            &json!({"error": {"code": code, "message": message}}),
        )
    }

    /// A body of another type.
    pub fn with_type(status: u16, content_type: &str, body: Vec<u8>) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body,
        }
    }

    /// No body.
    pub fn empty(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }

    /// The answer for a library error. Internal failures say only that something failed
    /// on errand's side (details go to the log), never a secret or a stack.
    pub fn from_error(e: &Error) -> Reply {
        match e {
            Error::Invalid { field, message } => Reply::json(
                400,
                &json!({"error": {"code": "invalid", "field": field, "message": format!("{field}: {message}")}}),
            ),
            Error::NotFound(what) => Reply::error(404, "not_found", &format!("{what} not found")),
            Error::Conflict { state, .. } => Reply::json(
                409,
                &json!({"error": {"code": "conflict", "state": state.as_str(), "message": e.to_string()}}),
            ),
            Error::Expired { .. } => Reply::error(
                409,
                "conflict",
                "the job changed meanwhile; read it and try again",
            ),
            Error::ShuttingDown => Reply::error(
                503,
                "shutting_down",
                "errand is shutting down; retry shortly",
            )
            .header("Retry-After", "5"),
            // Part of the configuration cannot serve the request (it is checked when
            // loaded, so this is a defence): the operator must fix it, not the client.
            // A config error names a key, never a value.
            Error::Config { .. } => {
                log::error!("configuration error answering a request: {e}");
                Reply::error(503, "config", &e.to_string())
            }
            other => {
                log::error!("internal error answering a request: {other}");
                Reply::error(
                    500,
                    "internal",
                    "errand could not complete the request; see its log",
                )
            }
        }
    }

    /// The tiny_http response.
    pub fn into_response(self) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
        let mut r = tiny_http::Response::from_data(self.body).with_status_code(self.status);
        for (k, v) in self.headers {
            if let Ok(h) = tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()) {
                r.add_header(h);
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_error_is_a_503_naming_the_key_not_a_500() {
        let r = Reply::from_error(&Error::Config {
            key: "channels.bad.schema".into(),
            reason: "must be a table".into(),
        });
        assert_eq!(r.status, 503);
        let v: Value = serde_json::from_slice(&r.body).expect("json");
        assert_eq!(v["error"]["code"], "config");
        assert_eq!(
            v["error"]["message"],
            "config: channels.bad.schema: must be a table"
        );
    }
}
