//! Durations as Kuma writes them.
//!
//! Two syntaxes exist:
//! - [`Duration`]: Go's `time.ParseDuration` syntax (`300ms`, `1h30m`, `1.5s`), used by every
//!   `Mesh*` policy, by protobuf durations in classic resources and by the control-plane config.
//! - [`parse_mesh_duration`]: `^(\d+)(y|w|d|h|m|s|ms)$`, used by Mesh mTLS settings
//!   (`dpCert.rotation.expiration: 24h`, `caCert.expiration: 10y`).

use std::fmt;
use std::str::FromStr;

/// A non-negative duration in Go syntax that remembers how it was written, so resources
/// round-trip unchanged.
#[derive(Clone, Debug)]
pub struct Duration {
    value: std::time::Duration,
    text: String,
}

impl Duration {
    /// The duration value.
    pub fn get(&self) -> std::time::Duration {
        self.value
    }

    /// A duration from a value; it is written as Go would print it (`1h2m3s`, `150ms`).
    pub fn from_std(value: std::time::Duration) -> Self {
        Duration {
            value,
            text: format_go(value),
        }
    }

    /// A duration written in Go syntax, for defaults in code (`Duration::literal("10s")`). Text
    /// that does not parse is zero, which configuration checks refuse where zero is wrong.
    pub fn literal(text: &str) -> Self {
        text.parse()
            .unwrap_or_else(|_| Duration::from_std(std::time::Duration::ZERO))
    }

    /// The text as written in the source document.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl PartialEq for Duration {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}
impl Eq for Duration {}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_go_duration(s).map(|value| Duration {
            value,
            text: s.to_string(),
        })
    }
}

impl serde::Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Parses Go's duration syntax: an optional `+`, then one or more `<number><unit>` pairs with
/// units `ns`, `us` (`µs`), `ms`, `s`, `m`, `h`; `0` alone is zero. Negative durations are
/// rejected: nothing in Kuma's model means anything by them.
pub fn parse_go_duration(input: &str) -> Result<std::time::Duration, String> {
    let invalid =
        || format!("invalid duration {input:?} (expected e.g. \"300ms\", \"1.5s\", \"1h30m\")");
    let mut s = input;
    if let Some(rest) = s.strip_prefix('-') {
        if rest != "0" {
            return Err(format!("duration {input:?} must not be negative"));
        }
        s = rest;
    } else if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    }
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !s.is_empty() {
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, rest) = s.split_at(int_len);
        let (frac_part, rest) = match rest.strip_prefix('.') {
            Some(r) => {
                let n = r.bytes().take_while(u8::is_ascii_digit).count();
                r.split_at(n)
            }
            None => ("", rest),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid());
        }
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(rest.len(), |(i, _)| i);
        let (unit, rest) = rest.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3600 * 1_000_000_000,
            _ => return Err(invalid()),
        };
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| invalid())?
        };
        let mut nanos = int.checked_mul(unit_nanos).ok_or_else(invalid)?;
        // Fractions: keep at most 18 digits, more cannot change a nanosecond result.
        let frac = &frac_part[..frac_part.len().min(18)];
        if !frac.is_empty() {
            let digits: u128 = frac.parse().map_err(|_| invalid())?;
            let scale = 10u128.pow(frac.len() as u32);
            nanos = nanos
                .checked_add(digits * unit_nanos / scale)
                .ok_or_else(invalid)?;
        }
        total = total.checked_add(nanos).ok_or_else(invalid)?;
        s = rest;
    }
    // Go's limit: durations are int64 nanoseconds.
    if total > i64::MAX as u128 {
        return Err(format!("duration {input:?} is too large"));
    }
    let secs = (total / 1_000_000_000) as u64;
    let sub = (total % 1_000_000_000) as u32;
    Ok(std::time::Duration::new(secs, sub))
}

/// Prints a duration the way Go's `time.Duration.String` does.
pub fn format_go(d: std::time::Duration) -> String {
    if d.is_zero() {
        return "0s".to_string();
    }
    let total = d.as_nanos();
    if total < 1_000 {
        return format!("{total}ns");
    }
    if total < 1_000_000 {
        return trim_frac(total, 1_000, "µs");
    }
    if total < 1_000_000_000 {
        return trim_frac(total, 1_000_000, "ms");
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let nanos = d.subsec_nanos();
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if nanos == 0 {
        out.push_str(&format!("{s}s"));
    } else {
        let frac = format!("{nanos:09}");
        out.push_str(&format!("{s}.{}s", frac.trim_end_matches('0')));
    }
    out
}

fn trim_frac(total: u128, unit: u128, suffix: &str) -> String {
    let whole = total / unit;
    let rem = total % unit;
    if rem == 0 {
        return format!("{whole}{suffix}");
    }
    let width = unit.ilog10() as usize;
    let frac = format!("{rem:0width$}");
    format!("{whole}.{}{suffix}", frac.trim_end_matches('0'))
}

/// Parses the duration syntax of Mesh mTLS settings: `^(\d+)(y|w|d|h|m|s|ms)$`
/// (a year is 365 days).
pub fn parse_mesh_duration(input: &str) -> Result<std::time::Duration, String> {
    let digits = input.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = input.split_at(digits);
    let invalid = || {
        format!(
            "invalid duration {input:?}: expected a whole number followed by y, w, d, h, m, s or ms"
        )
    };
    if num.is_empty() {
        return Err(invalid());
    }
    let n: u64 = num.parse().map_err(|_| invalid())?;
    let secs_per: u64 = match unit {
        "y" => 365 * 86_400,
        "w" => 7 * 86_400,
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        "ms" => return Ok(std::time::Duration::from_millis(n)),
        _ => return Err(invalid()),
    };
    n.checked_mul(secs_per)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("duration {input:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as D;

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_go_duration("300ms").unwrap(), D::from_millis(300));
        assert_eq!(parse_go_duration("1h30m").unwrap(), D::from_secs(5400));
        assert_eq!(parse_go_duration("1.5s").unwrap(), D::from_millis(1500));
        assert_eq!(parse_go_duration("2m0s").unwrap(), D::from_secs(120));
        assert_eq!(parse_go_duration("0").unwrap(), D::ZERO);
        assert_eq!(parse_go_duration(".5s").unwrap(), D::from_millis(500));
        assert_eq!(parse_go_duration("10us").unwrap(), D::from_micros(10));
        assert_eq!(parse_go_duration("1µs").unwrap(), D::from_micros(1));
    }

    #[test]
    fn go_durations_reject_garbage() {
        for bad in [
            "",
            "5",
            "s",
            "1x",
            "1.s.",
            "-1s",
            "1h-1m",
            "99999999999999999999h",
            "1e3s",
            " 1s",
        ] {
            assert!(
                parse_go_duration(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn go_durations_format() {
        for (d, s) in [
            (D::from_secs(5400), "1h30m0s"),
            (D::from_millis(1500), "1.5s"),
            (D::from_millis(150), "150ms"),
            (D::from_nanos(1500), "1.5µs"),
            (D::ZERO, "0s"),
        ] {
            assert_eq!(format_go(d), s);
            assert_eq!(parse_go_duration(s).unwrap(), d);
        }
    }

    #[test]
    fn duration_round_trips_text() {
        let d: Duration = serde_json::from_str("\"1h30m\"").unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"1h30m\"");
        assert_eq!(d, Duration::from_std(D::from_secs(5400)));
    }

    #[test]
    fn mesh_durations() {
        assert_eq!(
            parse_mesh_duration("10y").unwrap(),
            D::from_secs(10 * 365 * 86400)
        );
        assert_eq!(parse_mesh_duration("24h").unwrap(), D::from_secs(86400));
        assert_eq!(parse_mesh_duration("250ms").unwrap(), D::from_millis(250));
        for bad in [
            "",
            "1",
            "1.5h",
            "1h30m",
            "h",
            "-1d",
            "18446744073709551615y",
        ] {
            assert!(parse_mesh_duration(bad).is_err(), "{bad:?}");
        }
    }
}
