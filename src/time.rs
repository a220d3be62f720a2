//! Pure conversions: RFC 3339 timestamps and human durations ("30s", "5m", "250ms").

use crate::error::{Error, Result};

/// Days since 1970-01-01 for a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day number since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Formats Unix milliseconds as RFC 3339 UTC with milliseconds: `2026-11-22T10:00:00.000Z`.
pub fn format_rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// Parses an RFC 3339 timestamp (`Z` or `±hh:mm` offset, optional fraction) into Unix
/// milliseconds. `field` names the input in the error.
pub fn parse_rfc3339(field: &str, s: &str) -> Result<i64> {
    let bad = || {
        Error::invalid(
            field,
            format!("{s:?} is not an RFC 3339 timestamp; use e.g. 2026-11-22T10:00:00Z"),
        )
    };
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return Err(bad());
    }
    if b[13] != b':' || b[16] != b':' {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64> {
        let part = s.get(r).ok_or_else(bad)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse::<i64>().map_err(|_| bad())
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return Err(bad());
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(bad());
        }
        let frac = &s[start..i.min(start + 3)];
        millis = frac.parse::<i64>().map_err(|_| bad())? * 10i64.pow(3 - frac.len() as u32);
    }
    let offset_s = match b.get(i) {
        Some(b'Z') | Some(b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            let v = oh * 3600 + om * 60;
            if *sign == b'-' {
                -v
            } else {
                v
            }
        }
        _ => return Err(bad()),
    };
    let days = days_from_civil(y, mo, d);
    let (cy, cm, cd) = civil_from_days(days);
    if (cy, cm, cd) != (y, mo, d) {
        return Err(bad()); // e.g. February 30th
    }
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec.min(59) - offset_s;
    Ok(secs * 1000 + millis)
}

/// Parses a duration such as `250ms`, `30s`, `5m`, `2h`, `1d` (a bare number is seconds)
/// into milliseconds.
pub fn parse_duration_ms(field: &str, s: &str) -> Result<i64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: i64 = n.parse().map_err(|_| {
        Error::invalid(
            field,
            format!("{s:?} is not a duration; use e.g. 250ms, 30s, 5m, 2h"),
        )
    })?;
    let mult = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(Error::invalid(
                field,
                format!("unknown unit {unit:?}; use ms, s, m, h or d"),
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| Error::invalid(field, "duration too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_round_trip() {
        for ms in [
            0,
            1_764_000_000_123,
            951_782_400_000,
            -86_400_000,
            4_102_444_799_999,
        ] {
            let s = format_rfc3339(ms);
            assert_eq!(parse_rfc3339("t", &s).unwrap(), ms, "{s}");
        }
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn parses_offsets_and_fractions() {
        let z = parse_rfc3339("t", "2026-11-22T10:00:00Z").unwrap();
        assert_eq!(parse_rfc3339("t", "2026-11-22T12:00:00+02:00").unwrap(), z);
        assert_eq!(parse_rfc3339("t", "2026-11-22T09:30:00-00:30").unwrap(), z);
        assert_eq!(
            parse_rfc3339("t", "2026-11-22T10:00:00.5Z").unwrap(),
            z + 500
        );
        assert_eq!(
            parse_rfc3339("t", "2026-11-22T10:00:00.123456Z").unwrap(),
            z + 123
        );
    }

    #[test]
    fn rejects_what_is_not_rfc3339() {
        for s in [
            "",
            "tomorrow",
            "2026-11-22",
            "2026-11-22T10:00:00",
            "2026-02-30T10:00:00Z",
            "2026-13-01T10:00:00Z",
            "2026-11-22T25:00:00Z",
            "2026-11-22T10:00:00.Z",
            "2026-11-22T10:00:00+0200",
            "２026-11-22T10:00:00Z",
        ] {
            let e = parse_rfc3339("run_at", s).unwrap_err().to_string();
            assert!(e.starts_with("run_at:"), "{s}: {e}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("d", "30s").unwrap(), 30_000);
        assert_eq!(parse_duration_ms("d", "250ms").unwrap(), 250);
        assert_eq!(parse_duration_ms("d", "5m").unwrap(), 300_000);
        assert_eq!(parse_duration_ms("d", "7").unwrap(), 7_000);
        assert!(parse_duration_ms("d", "5y").is_err());
        assert!(parse_duration_ms("d", "-5s").is_err());
        assert!(parse_duration_ms("d", "s").is_err());
    }
}
