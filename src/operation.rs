//! Pure: multi-step operations. Validates the steps of `POST /v1/operations` and renders
//! a step's `{{steps.NAME.json.PATH}}` / `{{steps.NAME.status}}` placeholders from the
//! results of the steps before it.

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::spec::NewJob;

/// The most steps an operation may have.
pub const MAX_STEPS: usize = 50;

/// Validates an operation body `{account, steps: [{name, request, ...job fields}]}` and
/// returns (account, steps). Placeholders may only name earlier steps.
pub fn validate(body: &Value) -> Result<(String, Vec<Value>)> {
    let obj = body
        .as_object()
        .ok_or_else(|| Error::invalid("body", "must be a JSON object"))?;
    if let Some(k) = obj
        .keys()
        .find(|k| !["account", "steps", "metadata"].contains(&k.as_str()))
    {
        return Err(Error::invalid(
            k.clone(),
            "unknown field; known fields are account, steps, metadata",
        ));
    }
    let account = match obj.get("account") {
        Some(Value::String(a)) => {
            crate::spec::check_name("account", a)?;
            a.clone()
        }
        _ => return Err(Error::invalid("account", "is required (a string)")),
    };
    let steps = match obj.get("steps") {
        Some(Value::Array(s)) if !s.is_empty() && s.len() <= MAX_STEPS => s.clone(),
        _ => {
            return Err(Error::invalid(
                "steps",
                format!("must be a list of 1 to {MAX_STEPS} steps"),
            ))
        }
    };
    let mut names: Vec<String> = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let field = format!("steps[{i}]");
        let s = step
            .as_object()
            .ok_or_else(|| Error::invalid(&field, "must be an object {name, request, ...}"))?;
        let name = match s.get("name") {
            Some(Value::String(n))
                if !n.is_empty() && n.len() <= 100 && !n.contains(['.', '{', '}']) =>
            {
                n.clone()
            }
            _ => {
                return Err(Error::invalid(
                    format!("{field}.name"),
                    "is required: 1 to 100 characters without '.', '{' or '}'",
                ))
            }
        };
        if names.contains(&name) {
            return Err(Error::invalid(
                format!("{field}.name"),
                format!("{name:?} is used twice"),
            ));
        }
        for referenced in references(step) {
            if !names.contains(&referenced) {
                return Err(Error::invalid(
                    field.clone(),
                    format!("refers to step {referenced:?}, which does not come before it"),
                ));
            }
        }
        // Validate the step as a job with every placeholder replaced by a dummy value.
        let probe = job_value(&account, step, &|_| Some(Value::String("x".into())))
            .map_err(|e| prefix(&field, e))?;
        NewJob::from_json(&probe).map_err(|e| prefix(&field, e))?;
        names.push(name);
    }
    Ok((account, steps))
}

fn prefix(field: &str, e: Error) -> Error {
    match e {
        Error::Invalid { field: f, message } => Error::invalid(format!("{field}.{f}"), message),
        other => other,
    }
}

/// The step names a step's placeholders refer to.
fn references(step: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut visit = |s: &str| {
        for p in placeholders(s) {
            if let Some(name) = p.strip_prefix("steps.").and_then(|r| r.split('.').next()) {
                out.push(name.to_string());
            }
        }
    };
    walk_strings(step, &mut visit);
    out
}

fn walk_strings(v: &Value, f: &mut impl FnMut(&str)) {
    match v {
        Value::String(s) => f(s),
        Value::Array(a) => a.iter().for_each(|x| walk_strings(x, f)),
        Value::Object(o) => o.values().for_each(|x| walk_strings(x, f)),
        _ => {}
    }
}

/// The `{{ ... }}` expressions in `s`.
fn placeholders(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        let Some(end) = rest[start..].find("}}") else {
            break;
        };
        out.push(rest[start + 2..start + end].trim());
        rest = &rest[start + end + 2..];
    }
    out
}

/// Looks up `steps.NAME.json.PATH` or `steps.NAME.status` in the completed steps'
/// results (each `{"name", "status", "json", ...}`).
pub fn lookup(expr: &str, results: &[Value]) -> Option<Value> {
    let rest = expr.strip_prefix("steps.")?;
    let mut parts = rest.split('.');
    let name = parts.next()?;
    let result = results.iter().find(|r| r["name"] == name)?;
    match parts.next()? {
        "status" => parts.next().is_none().then(|| result["status"].clone()),
        "json" => {
            let mut v = &result["json"];
            for p in parts {
                v = match v {
                    Value::Object(o) => o.get(p)?,
                    Value::Array(a) => a.get(p.parse::<usize>().ok()?)?,
                    _ => return None,
                };
            }
            (!v.is_null()).then(|| v.clone())
        }
        _ => None,
    }
}

/// A step's fields whose value is text: a placeholder there always renders as text
/// (`{{steps.x.status}}` as `200`). Elsewhere (`json`, `metadata`, numbers), a string
/// that is exactly one placeholder keeps the value's JSON type.
const TEXT_FIELDS: &[&str] = &["account", "provider", "idempotency_key", "callback_url"];

/// The same, for the fields of a step's `request`.
const REQUEST_TEXT_FIELDS: &[&str] = &["url", "method", "headers", "body", "body_base64"];

fn render_str(s: &str, resolve: &dyn Fn(&str) -> Option<Value>, typed: bool) -> Result<Value> {
    let ps = placeholders(s);
    if ps.is_empty() {
        return Ok(Value::String(s.to_string()));
    }
    // In JSON (not in a text field), a string that is exactly one placeholder takes the
    // value's own JSON type.
    let trimmed = s.trim();
    if typed
        && ps.len() == 1
        && trimmed.starts_with("{{")
        && trimmed.ends_with("}}")
        && trimmed.matches("{{").count() == 1
    {
        return resolve(ps[0]).ok_or_else(|| missing(ps[0]));
    }
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        let Some(end) = rest[start..].find("}}") else {
            break;
        };
        out.push_str(&rest[..start]);
        let expr = rest[start + 2..start + end].trim();
        match resolve(expr).ok_or_else(|| missing(expr))? {
            Value::String(v) => out.push_str(&v),
            other => out.push_str(&other.to_string()),
        }
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

fn missing(expr: &str) -> Error {
    Error::invalid(
        "template",
        format!("{{{{{expr}}}}} has no value in the earlier steps' results; the step was not sent"),
    )
}

fn render(v: &Value, resolve: &dyn Fn(&str) -> Option<Value>, typed: bool) -> Result<Value> {
    Ok(match v {
        Value::String(s) => render_str(s, resolve, typed)?,
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| render(x, resolve, typed))
                .collect::<Result<_>>()?,
        ),
        Value::Object(o) => {
            let mut m = Map::new();
            for (k, x) in o {
                m.insert(k.clone(), render(x, resolve, typed)?);
            }
            Value::Object(m)
        }
        other => other.clone(),
    })
}

/// The job body of a step with its placeholders resolved (name removed, account set).
fn job_value(
    account: &str,
    step: &Value,
    resolve: &dyn Fn(&str) -> Option<Value>,
) -> Result<Value> {
    let mut s = step.as_object().cloned().unwrap_or_default();
    s.remove("name");
    s.insert("account".into(), Value::String(account.to_string()));
    let mut out = Map::new();
    for (k, v) in &s {
        let rendered = match (k.as_str(), v) {
            ("request", Value::Object(r)) => {
                let mut req = Map::new();
                for (rk, rv) in r {
                    let typed = !REQUEST_TEXT_FIELDS.contains(&rk.as_str());
                    req.insert(rk.clone(), render(rv, resolve, typed)?);
                }
                Value::Object(req)
            }
            _ => render(v, resolve, !TEXT_FIELDS.contains(&k.as_str()))?,
        };
        out.insert(k.clone(), rendered);
    }
    Ok(Value::Object(out))
}

/// Builds step `index` of an operation as a job, from the earlier steps' results. A
/// placeholder without a value is an error: no half-filled request is ever sent.
pub fn build_step(
    account: &str,
    steps: &[Value],
    index: usize,
    results: &[Value],
) -> Result<NewJob> {
    let step = steps
        .get(index)
        .ok_or_else(|| Error::invalid("steps", format!("no step {index}")))?;
    let v = job_value(account, step, &|expr| lookup(expr, results))?;
    NewJob::from_json(&v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn op() -> Value {
        json!({"account": "acme", "steps": [
            {"name": "charge", "request": {"method": "POST", "url": "https://pay.test/charges"}},
            {"name": "tokenize", "request": {"method": "POST", "url": "https://pay.test/tokens/{{steps.charge.json.id}}"}},
            {"name": "receipt", "request": {"method": "POST", "url": "https://mail.test/send",
                "json": {"token": "{{steps.tokenize.json.token}}", "n": "{{steps.charge.json.items.1.n}}",
                         "note": "charged {{steps.charge.json.id}} ({{steps.charge.status}})"}}}
        ]})
    }

    #[test]
    fn validates_and_renders_later_steps_from_earlier_results() {
        let (account, steps) = validate(&op()).unwrap();
        let results = vec![
            json!({"name": "charge", "status": 201, "json": {"id": "ch_1", "items": [{"n": 1}, {"n": 2}]}}),
            json!({"name": "tokenize", "status": 200, "json": {"token": "tok_9"}}),
        ];
        let t = build_step(&account, &steps, 1, &results[..1]).unwrap();
        assert_eq!(t.url, "https://pay.test/tokens/ch_1");
        let r = build_step(&account, &steps, 2, &results).unwrap();
        let body: Value = serde_json::from_slice(r.body.as_deref().unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"token": "tok_9", "n": 2, "note": "charged ch_1 (201)"})
        );
    }

    #[test]
    fn a_whole_placeholder_is_text_in_url_headers_and_body_and_typed_in_json() {
        let (account, steps) = validate(&json!({"account": "acme", "steps": [
            {"name": "charge", "request": {"url": "https://pay.test/charges"}},
            {"name": "next", "request": {
                "method": "POST", "url": "https://pay.test/{{steps.charge.status}}",
                "headers": {"X-Prev": "{{steps.charge.status}}"},
                "body": "{{steps.charge.status}}"}},
            {"name": "last", "request": {
                "url": "https://pay.test/x", "json": {"prev": "{{steps.charge.status}}",
                    "account": "{{steps.charge.status}}", "url": "{{steps.charge.status}}"}}}
        ]}))
        .unwrap();
        let results = vec![json!({"name": "charge", "status": 201, "json": {}})];
        let next = build_step(&account, &steps, 1, &results).unwrap();
        assert_eq!(next.url, "https://pay.test/201");
        assert!(next
            .headers
            .contains(&("X-Prev".to_string(), "201".to_string())));
        assert_eq!(next.body.as_deref(), Some(&b"201"[..]));
        let last = build_step(&account, &steps, 2, &results).unwrap();
        let body: Value = serde_json::from_slice(last.body.as_deref().unwrap()).unwrap();
        // Keys named like text fields keep their types inside json.
        assert_eq!(body, json!({"prev": 201, "account": 201, "url": 201}));
    }

    #[test]
    fn a_missing_value_fails_the_step() {
        let (account, steps) = validate(&op()).unwrap();
        let results = vec![json!({"name": "charge", "status": 201, "json": {"other": 1}})];
        let e = build_step(&account, &steps, 1, &results)
            .unwrap_err()
            .to_string();
        assert!(e.contains("steps.charge.json.id"), "{e}");
    }

    #[test]
    fn bad_operations_are_refused_naming_the_field() {
        for (body, want) in [
            (json!({"steps": []}), "account"),
            (json!({"account": "a", "steps": []}), "steps"),
            (
                json!({"account": "a", "steps": [{"request": {"url": "https://x/"}}]}),
                "steps[0].name",
            ),
            (
                json!({"account": "a", "steps": [{"name": "a", "request": {"url": "https://x/{{steps.b.json.id}}"}}]}),
                "steps[0]",
            ),
            (
                json!({"account": "a", "steps": [{"name": "a", "request": {"url": "ftp://x/"}}]}),
                "steps[0].request.url",
            ),
            (
                json!({"account": "a", "steps": [{"name": "a", "request": {"url": "https://x/"}}, {"name": "a", "request": {"url": "https://x/"}}]}),
                "steps[1].name",
            ),
        ] {
            let e = validate(&body).unwrap_err().to_string();
            assert!(e.starts_with(want), "{body}: {e}");
        }
    }
}
