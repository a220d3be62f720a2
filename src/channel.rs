//! Pure: channel payload schemas (from `[channels.NAME] schema = {required, properties}`)
//! and the body of a delivery.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::error::{Error, Result};

/// A JSON type a payload field must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonType {
    String,
    Number,
    Integer,
    Boolean,
    Object,
    Array,
    Null,
}

impl JsonType {
    fn parse(s: &str) -> Option<JsonType> {
        Some(match s {
            "string" => JsonType::String,
            "number" => JsonType::Number,
            "integer" => JsonType::Integer,
            "boolean" => JsonType::Boolean,
            "object" => JsonType::Object,
            "array" => JsonType::Array,
            "null" => JsonType::Null,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            JsonType::String => "string",
            JsonType::Number => "number",
            JsonType::Integer => "integer",
            JsonType::Boolean => "boolean",
            JsonType::Object => "object",
            JsonType::Array => "array",
            JsonType::Null => "null",
        }
    }

    fn matches(self, v: &Value) -> bool {
        match self {
            JsonType::String => v.is_string(),
            JsonType::Number => v.is_number(),
            JsonType::Integer => v.is_i64() || v.is_u64(),
            JsonType::Boolean => v.is_boolean(),
            JsonType::Object => v.is_object(),
            JsonType::Array => v.is_array(),
            JsonType::Null => v.is_null(),
        }
    }
}

/// The payload schema of a channel.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Schema {
    pub required: Vec<String>,
    pub properties: BTreeMap<String, JsonType>,
}

impl Schema {
    /// Reads `[channels.NAME]` as given in the config (`{"schema": {...}}`).
    pub fn from_config(name: &str, section: &Value) -> Result<Schema> {
        let key = |k: &str| match k {
            "" => format!("channels.{name}"),
            k => format!("channels.{name}.{k}"),
        };
        let bad = |k: &str, why: &str| Error::Config {
            key: key(k),
            reason: why.to_string(),
        };
        let obj = section
            .as_object()
            .ok_or_else(|| bad("", "must be a table"))?;
        if let Some(k) = obj.keys().find(|k| k.as_str() != "schema") {
            return Err(bad(k, "unknown key; a channel has only `schema`"));
        }
        let Some(schema) = obj.get("schema") else {
            return Ok(Schema::default());
        };
        let s = schema
            .as_object()
            .ok_or_else(|| bad("schema", "must be a table {required, properties}"))?;
        if let Some(k) = s
            .keys()
            .find(|k| !["required", "properties"].contains(&k.as_str()))
        {
            return Err(bad(
                &format!("schema.{k}"),
                "unknown key; use required and properties",
            ));
        }
        let required = match s.get("required") {
            None => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("schema.required", "must be a list of field names"))?,
            Some(_) => return Err(bad("schema.required", "must be a list of field names")),
        };
        let mut properties = BTreeMap::new();
        if let Some(p) = s.get("properties") {
            let p = p
                .as_object()
                .ok_or_else(|| bad("schema.properties", "must be a table of field = \"type\""))?;
            for (field, t) in p {
                let ty = t.as_str().and_then(JsonType::parse).ok_or_else(|| {
                    bad(
                        &format!("schema.properties.{field}"),
                        "must be one of string, number, integer, boolean, object, array, null",
                    )
                })?;
                properties.insert(field.clone(), ty);
            }
        }
        Ok(Schema {
            required,
            properties,
        })
    }

    /// Checks a payload; the error names the field and what it should be.
    pub fn check(&self, payload: &Value) -> Result<()> {
        let obj = payload
            .as_object()
            .ok_or_else(|| Error::invalid("payload", "must be a JSON object"))?;
        for r in &self.required {
            if !obj.contains_key(r) {
                return Err(Error::invalid(
                    format!("payload.{r}"),
                    "is required by the channel's schema",
                ));
            }
        }
        for (field, ty) in &self.properties {
            if let Some(v) = obj.get(field) {
                if !ty.matches(v) {
                    return Err(Error::invalid(
                        format!("payload.{field}"),
                        format!("must be of type {}", ty.name()),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The body every subscriber receives (the Standard Webhooks payload shape).
pub fn envelope(channel: &str, timestamp: &str, payload: &Value) -> Value {
    json!({"type": channel, "timestamp": timestamp, "data": payload})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email() -> Schema {
        Schema::from_config(
            "email",
            &json!({"schema": {"required": ["to", "subject"], "properties": {"to": "string", "subject": "string"}}}),
        )
        .unwrap()
    }

    #[test]
    fn required_and_types_are_checked() {
        let s = email();
        assert!(s.check(&json!({"to": "a@b.c", "subject": "hi"})).is_ok());
        let e = s.check(&json!({"to": "a@b.c"})).unwrap_err().to_string();
        assert!(e.starts_with("payload.subject:"), "{e}");
        let e = s
            .check(&json!({"to": 5, "subject": "x"}))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("payload.to:") && e.contains("string"), "{e}");
        assert!(s.check(&json!([1])).is_err());
    }

    #[test]
    fn a_bad_schema_is_refused_with_its_key() {
        let e = Schema::from_config("x", &json!({"schema": {"properties": {"a": "text"}}}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("channels.x.schema.properties.a"), "{e}");
    }
}
