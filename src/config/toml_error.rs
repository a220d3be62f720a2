//! Turns a TOML syntax error or a serde type error into `config: KEY: reason`, naming the
//! full dotted key (`providers.t.timeout_ms`, not `timeout_ms`) and never a value from
//! the file: it may be the API token or a signing secret.
//!
//! The key is found by looking the error's byte span up in toml's own spanned parse of
//! the same text, so table headers, dotted keys, inline tables and arrays of tables all
//! resolve the way the deserializer saw them.

use std::ops::Range;
use std::path::Path;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::error::Error;

/// The configuration error for `e`, met parsing `text` (read from `path`).
pub(super) fn describe(e: &toml::de::Error, text: &str, path: &Path) -> Error {
    let mut reason = mask_unexpected(e.message());
    let Some(span) = e.span() else {
        return super::bad(&path.display().to_string(), reason);
    };
    let spanned = text.get(span.clone()).map(str::trim).unwrap_or("");
    if spanned.len() >= 3 && !looks_like_key(spanned) {
        // Whatever else the parser quoted from the file.
        reason = reason.replace(spanned, "<value>");
    }
    let key = key_at(text, &span).unwrap_or_else(|| line_key(text, &span, spanned, path));
    super::bad(&key, reason)
}

/// The dotted key whose name or value holds `span` (`providers.t.rules[1].status[0]` for
/// array elements), the innermost one when they nest; `None` when nothing does (a
/// syntax error between keys, a duplicate key).
fn key_at(text: &str, span: &Range<usize>) -> Option<String> {
    // Recoverable, so a syntax error inside a value still finds its key.
    let (root, _errors) = DeTable::parse_recoverable(text);
    let mut path = String::new();
    in_table(root.get_ref(), span, &mut path).then_some(path)
}

fn in_table(table: &DeTable<'_>, span: &Range<usize>, path: &mut String) -> bool {
    for (k, v) in table.iter() {
        let len = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        push_key(path, k.get_ref());
        // The key first: a `[header]` table's span covers its parents' keys too.
        if contains(&k.span(), span) || in_value(v, span, path) {
            return true;
        }
        path.truncate(len);
    }
    false
}

/// True when `span` lies in `v` (its path then ends in `path`); a table's or an array's
/// entries are tried first, so the innermost key wins. A table made by a `[header]` has
/// the header's span, which is where a "missing field" error points.
fn in_value(v: &Spanned<DeValue<'_>>, span: &Range<usize>, path: &mut String) -> bool {
    let inner = match v.get_ref() {
        DeValue::Table(t) => in_table(t, span, path),
        DeValue::Array(a) => {
            let mut found = false;
            for (i, e) in a.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                if in_value(e, span, path) {
                    found = true;
                    break;
                }
                path.truncate(len);
            }
            found
        }
        _ => false,
    };
    inner || contains(&v.span(), span)
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

/// A key segment as it would be written: bare when it can be, else quoted.
fn push_key(path: &mut String, key: &str) {
    if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        path.push_str(key);
    } else {
        path.push_str(&format!("{key:?}"));
    }
}

fn looks_like_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() < 80
        && s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '[')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.[]".contains(c))
}

/// When the parse tree cannot say (a syntax error, a duplicate key): the spanned text if
/// it is a key, else the key of the line the span points into, either under the table
/// header above it; else the file and line.
fn line_key(text: &str, span: &Range<usize>, spanned: &str, path: &Path) -> String {
    let start = text.get(..span.start).unwrap_or("");
    let line_no = start.matches('\n').count() + 1;
    let line_start = start.rfind('\n').map_or(0, |i| i + 1);
    let line = text
        .get(line_start..)
        .and_then(|l| l.lines().next())
        .unwrap_or("");
    let line_key = line.split_once('=').map(|(k, _)| k.trim());
    let key = if looks_like_key(spanned) && !spanned.starts_with('[') {
        spanned
    } else if let Some(k) = line_key.filter(|k| looks_like_key(k)) {
        k
    } else {
        return format!("{} line {line_no}", path.display());
    };
    match header_above(text.get(..line_start).unwrap_or("")) {
        Some(header) => format!("{header}.{key}"),
        None => key.to_string(),
    }
}

/// The last `[table]` or `[[array]]` header in `text`, if it is a plain dotted key.
fn header_above(text: &str) -> Option<&str> {
    let line = text
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))?;
    let line = line.split('#').next().unwrap_or("").trim_end();
    let inner = line
        .strip_prefix("[[")
        .and_then(|l| l.strip_suffix("]]"))
        .or_else(|| line.strip_prefix('[').and_then(|l| l.strip_suffix(']')))?
        .trim();
    (looks_like_key(inner) && !inner.contains(['[', ']'])).then_some(inner)
}

/// serde's "invalid type: string \"...\", expected ..." and its kin quote the value
/// found; keep only its kind ("invalid type: string, expected i64").
fn mask_unexpected(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: ", "unknown variant "] {
        let Some(rest) = message.strip_prefix(prefix) else {
            continue;
        };
        // The last one: the value itself may contain ", expected".
        let Some((found, expected)) = rest.rsplit_once(", expected") else {
            continue;
        };
        let kind = found
            .split(['"', '`', '\''])
            .next()
            .unwrap_or("")
            .trim_end();
        let sep = if kind.is_empty() { "" } else { " " };
        return format!("{}{sep}{kind}, expected{expected}", prefix.trim_end());
    }
    message.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn a_quoted_value_is_reduced_to_its_kind() {
        for (given, want) in [
            (
                "invalid type: string \"s3cret\", expected i64",
                "invalid type: string, expected i64",
            ),
            (
                "invalid value: integer `-1`, expected u32",
                "invalid value: integer, expected u32",
            ),
            (
                "invalid type: floating point `1.5`, expected u64",
                "invalid type: floating point, expected u64",
            ),
            (
                "unknown variant `s3cret`, expected `a` or `b`",
                "unknown variant, expected `a` or `b`",
            ),
            (
                "invalid type: string \"x, expected y\", expected i64",
                "invalid type: string, expected i64",
            ),
            ("missing field `max_ms`", "missing field `max_ms`"),
        ] {
            assert_eq!(mask_unexpected(given), want);
        }
    }

    #[test]
    fn the_key_at_a_span_is_the_innermost_with_its_tables_and_indexes() {
        let text = "[providers.\"a.b\"]\nx = 1\n[[providers.t.rules]]\nstatus = [1]\n[[providers.t.rules]]\nstatus = [2, 3]\n";
        let at = |needle: &str| {
            let start = text.rfind(needle).expect("needle");
            key_at(text, &(start..start + needle.len()))
        };
        assert_eq!(at("x").as_deref(), Some("providers.\"a.b\".x"));
        assert_eq!(at("3").as_deref(), Some("providers.t.rules[1].status[1]"));
        assert_eq!(at("[1]").as_deref(), Some("providers.t.rules[0].status"));
    }

    #[test]
    fn syntax_and_field_errors_name_the_whole_key() {
        let key = |text: &str| match Config::from_toml(text) {
            Err(Error::Config { key, .. }) => key,
            other => panic!("{text}: {other:?}"),
        };
        assert_eq!(
            key("[providers.t]\ntimeout_ms = 1\ntimeout_ms = 2\n"),
            "providers.t.timeout_ms"
        );
        assert_eq!(
            key("[providers.t] # mail\nbase_url = \"https://x\"\nbase_url = 3\n"),
            "providers.t.base_url"
        );
        assert_eq!(key("workers = 2\nworkers = 3\n"), "workers");
        assert_eq!(key("[provders.t]\nx = 1\n"), "provders");
        assert_eq!(
            key("[providers.t.backof]\ninitial_ms = 1\n"),
            "providers.t.backof"
        );
        assert_eq!(key("[providers.t\ntimeout_ms = 1\n"), "config line 1");
    }
}
