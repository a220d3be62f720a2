//! A strict parser of the Prometheus text exposition format (0.0.4), enough to prove
//! `/metrics` is valid: HELP/TYPE lines well-formed and before their samples, every sample
//! `name{labels} value`, label values properly escaped, histogram buckets cumulative and
//! ending in `+Inf` equal to `_count`.

use std::collections::{BTreeMap, HashMap};

/// One sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

fn is_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse::<f64>().map_err(|_| format!("bad value {s:?}")),
    }
}

fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    // s starts right after '{'.
    let mut labels = BTreeMap::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without '='")?;
        let name = &rest[..eq];
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        let after = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((_, '\n')) => return Err("newline in label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} repeated"));
        }
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// Parses the exposition strictly; Err names the first bad line.
pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helped: HashMap<String, bool> = HashMap::new();
    let mut seen_samples_of: HashMap<String, bool> = HashMap::new();
    let mut samples = Vec::new();
    if !text.ends_with('\n') {
        return Err("the exposition must end with a newline".into());
    }
    for (n, line) in text.lines().enumerate() {
        let err = |m: String| format!("line {}: {m}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("HELP"), Some(name), Some(_help)) => {
                    if !is_name(name) || helped.insert(name.into(), true).is_some() {
                        return Err(err("bad or repeated HELP".into()));
                    }
                }
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !is_name(name)
                        || !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind)
                    {
                        return Err(err("bad TYPE".into()));
                    }
                    if seen_samples_of.contains_key(name) {
                        return Err(err("TYPE after samples".into()));
                    }
                    if types.insert(name.into(), kind.into()).is_some() {
                        return Err(err("repeated TYPE".into()));
                    }
                }
                _ => return Err(err("a comment that is not HELP or TYPE".into())),
            }
            continue;
        }
        if line.starts_with('#') {
            return Err(err("bad comment".into()));
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| err("no value".into()))?;
        let name = &line[..name_end];
        if !is_name(name) {
            return Err(err(format!("bad metric name {name:?}")));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end + 1..]).map_err(err)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let rest = rest
            .strip_prefix(' ')
            .ok_or_else(|| err("no space before value".into()))?;
        let mut fields = rest.split(' ');
        let value = parse_value(fields.next().unwrap_or("")).map_err(err)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().map_err(|_| err("bad timestamp".into()))?;
        }
        if fields.next().is_some() {
            return Err(err("trailing fields".into()));
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        if !types.contains_key(family) {
            return Err(err(format!("sample of {family} before its TYPE")));
        }
        if types[family] == "counter" && (value.is_nan() || value < 0.0) {
            return Err(err("negative counter".into()));
        }
        if name.ends_with("_bucket") && family != name && !labels.contains_key("le") {
            return Err(err("bucket without le".into()));
        }
        seen_samples_of.insert(family.to_string(), true);
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    check_histograms(&samples, &types)?;
    Ok(samples)
}

/// A series' labels other than `le`, in order.
type Labels = Vec<(String, String)>;

fn check_histograms(samples: &[Sample], types: &HashMap<String, String>) -> Result<(), String> {
    for (family, _) in types.iter().filter(|(_, t)| *t == "histogram") {
        // Group buckets by their labels other than le.
        let mut series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        for s in samples
            .iter()
            .filter(|s| s.name == format!("{family}_bucket"))
        {
            let key: Vec<(String, String)> = s
                .labels
                .iter()
                .filter(|(k, _)| *k != "le")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let le = parse_value(&s.labels["le"])?;
            series.entry(key).or_default().push((le, s.value));
        }
        for (key, buckets) in series {
            for w in buckets.windows(2) {
                if w[0].0 >= w[1].0 || w[0].1 > w[1].1 {
                    return Err(format!(
                        "{family}{key:?}: buckets not increasing and cumulative"
                    ));
                }
            }
            let last = buckets.last().ok_or("empty histogram")?;
            if last.0 != f64::INFINITY {
                return Err(format!("{family}{key:?}: last bucket is not +Inf"));
            }
            let find = |suffix: &str| {
                samples.iter().find(|s| {
                    s.name == format!("{family}{suffix}")
                        && s.labels
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect::<Vec<_>>()
                            == key
                })
            };
            let count = find("_count").ok_or(format!("{family}{key:?}: no _count"))?;
            find("_sum").ok_or(format!("{family}{key:?}: no _sum"))?;
            if count.value != last.1 {
                return Err(format!("{family}{key:?}: +Inf bucket differs from _count"));
            }
        }
    }
    Ok(())
}

/// The value of the sample `name` whose labels include all of `labels`.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

#[test]
fn the_parser_refuses_broken_expositions() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 2\n";
    assert!(parse(ok).is_ok());
    for bad in [
        "a_total 1\n",                                              // no TYPE
        "# TYPE a counter\na{x=1} 2\n",                              // unquoted label
        "# TYPE a counter\na{x=\"1\"}2\n",                           // no space
        "# TYPE a counter\na 1",                                     // no final newline
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"2\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 2\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_sum 1\nh_count 2\n", // no +Inf
        "# WHAT a\n",
    ] {
        assert!(parse(bad).is_err(), "accepted: {bad:?}");
    }
}
