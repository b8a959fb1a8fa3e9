//! Building blocks shared by several resource types, and the checks that go with them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::validation::{Path, ValidationError};

/// Tags (`kuma.io/service: backend`), kept sorted so output is stable.
pub type Tags = BTreeMap<String, String>;

/// The service tag every inbound carries.
pub const SERVICE_TAG: &str = "kuma.io/service";

/// The names (before the DNS domain) under which a service's VIP answers: the service itself
/// and, when it has `_`, its dotted variant (`a_b_c` is also `a.b.c`), as Kuma names them.
pub fn service_dns_names(service: &str) -> Vec<String> {
    let mut names = vec![service.to_string()];
    if service.contains('_') {
        names.push(service.replace('_', "."));
    }
    names
}
/// The zone tag the control plane writes onto inbounds.
pub const ZONE_TAG: &str = "kuma.io/zone";
/// The protocol tag of an inbound.
pub const PROTOCOL_TAG: &str = "kuma.io/protocol";
/// Tag keys with a meaning in Kuma.
pub const RESERVED_TAGS: &[&str] = &[
    SERVICE_TAG,
    ZONE_TAG,
    PROTOCOL_TAG,
    "kuma.io/instance",
    "kuma.io/mesh",
    "kuma.io/origin",
    "kuma.io/display-name",
    "kuma.io/policy-role",
];

/// Protocols an inbound may declare with `kuma.io/protocol`.
pub const PROTOCOLS: &[&str] = &["tcp", "http", "http2", "grpc", "kafka"];

/// Longest resource name Kuma accepts.
pub const MAX_NAME_LEN: usize = 253;

/// Checks a resource name: an RFC 1123 subdomain of at most 253 characters.
pub fn validate_name(path: &Path, name: &str, err: &mut ValidationError) {
    if name.is_empty() {
        err.add(path, "cannot be empty");
        return;
    }
    if name.len() > MAX_NAME_LEN {
        err.add(
            path,
            format!("must be at most {MAX_NAME_LEN} characters long"),
        );
        return;
    }
    if !is_dns_subdomain(name) {
        err.add(
            path,
            "invalid name: must be lowercase alphanumeric characters, '-' and '.', start and end \
             with an alphanumeric character (RFC 1123 subdomain)",
        );
    }
}

/// True when `s` is an RFC 1123 subdomain: dot-separated labels of `[a-z0-9]([-a-z0-9]*[a-z0-9])?`.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME_LEN && s.split('.').all(is_dns_label)
}

fn is_dns_label(l: &str) -> bool {
    let b = l.as_bytes();
    let ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    match (b.first(), b.last()) {
        (Some(f), Some(e)) => ok(f) && ok(e) && b.iter().all(|c| ok(c) || *c == b'-'),
        _ => false,
    }
}

fn is_tag_key(s: &str) -> bool {
    s.bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_' | b':' | b'/'))
}

fn is_tag_value(s: &str) -> bool {
    s.bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_' | b':'))
}

/// Options for [`validate_tags`].
#[derive(Debug, Default, Clone, Copy)]
pub struct TagRules {
    /// `kuma.io/service` must be present.
    pub require_service: bool,
    /// At least one tag must be present.
    pub require_one: bool,
    /// Values may be `*` (selectors).
    pub selector: bool,
}

/// Checks tag keys and values; with `require_service`, that `kuma.io/service` exists.
pub fn validate_tags(path: &Path, tags: &Tags, rules: TagRules, err: &mut ValidationError) {
    if rules.require_one && tags.is_empty() {
        err.add(path, "must have at least one tag");
    }
    for (k, v) in tags {
        if k.is_empty() {
            err.add(path, "tag name must be non-empty");
        } else if !is_tag_key(k) {
            err.add(
                &path.key(k),
                "tag name must consist of alphanumeric characters, dots, dashes, slashes and underscores",
            );
        }
        if v.is_empty() {
            err.add(&path.key(k), "tag value must be non-empty");
        } else if rules.selector && v == "*" {
            // a selector wildcard
        } else if !is_tag_value(v) {
            let msg = if rules.selector {
                "tag value must consist of alphanumeric characters, dots, dashes and underscores or be \"*\""
            } else {
                "tag value must consist of alphanumeric characters, dots, dashes and underscores"
            };
            err.add(&path.key(k), msg);
        }
    }
    if rules.require_service && !tags.contains_key(SERVICE_TAG) {
        err.add(path, format!("mandatory tag {SERVICE_TAG:?} is missing"));
    }
}

/// Checks resource labels the way Kubernetes checks label keys and values (Kuma keeps the rule).
pub fn validate_labels(path: &Path, labels: &BTreeMap<String, String>, err: &mut ValidationError) {
    for (k, v) in labels {
        let (prefix, name) = match k.rsplit_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, k.as_str()),
        };
        if let Some(p) = prefix
            && !is_dns_subdomain(p)
        {
            err.add(&path.key(k), "label key prefix must be a DNS subdomain");
        }
        if !is_label_name(name) {
            err.add(
                &path.key(k),
                "label key must be 1-63 alphanumeric characters, '-', '_' or '.', starting and ending with an alphanumeric character",
            );
        }
        if !v.is_empty() && !is_label_name(v) {
            err.add(
                &path.key(k),
                "label value must be at most 63 alphanumeric characters, '-', '_' or '.', starting and ending with an alphanumeric character",
            );
        }
    }
}

fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    let ok = |c: &u8| c.is_ascii_alphanumeric();
    match (b.first(), b.last()) {
        (Some(f), Some(e)) if b.len() <= 63 => {
            ok(f) && ok(e) && b.iter().all(|c| ok(c) || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// Checks a port: 1..=65535.
pub fn validate_port(path: &Path, port: u32, err: &mut ValidationError) {
    if !(1..=65535).contains(&port) {
        err.add(path, "port must be in the range [1, 65535]");
    }
}

/// True for an IP address literal.
pub fn is_ip(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok()
}

/// True for a syntactically valid DNS name (letters, digits, `-`, `_`, dots; labels <= 63).
pub fn is_dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        })
}

/// A value written either as an integer or as a string (`50` or `"50.5"`), as Kubernetes'
/// `IntOrString`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    /// An integer.
    Int(i64),
    /// A string (often a decimal number).
    String(String),
}

impl IntOrString {
    /// The value as a number, when it is one.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            IntOrString::Int(i) => Some(*i as f64),
            IntOrString::String(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
        }
    }
}

/// Checks a percentage written as [`IntOrString`]: a number within 0..=100.
pub fn validate_percentage(path: &Path, p: &IntOrString, err: &mut ValidationError) {
    match p.as_f64() {
        Some(v) if (0.0..=100.0).contains(&v) => {}
        Some(_) => err.add(path, "must be in inclusive range [0.0, 100.0]"),
        None => err.add(path, "must be a valid number"),
    }
}

/// Where a secret value comes from: exactly one of its fields is set.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataSource {
    /// Name of a Secret in the same mesh.
    pub secret: Option<String>,
    /// Path of a file on the control plane's disk.
    pub file: Option<String>,
    /// Base64-encoded inline bytes.
    pub inline: Option<String>,
    /// Inline text.
    pub inline_string: Option<String>,
}

impl DataSource {
    /// Checks that exactly one source is set and that it is well formed.
    pub fn validate(&self, path: &Path, err: &mut ValidationError) {
        let set = [
            self.secret.is_some(),
            self.file.is_some(),
            self.inline.is_some(),
            self.inline_string.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set == 0 {
            err.add(path, "data source has to be chosen. Available sources: secret, file, inline, inlineString");
        } else if set > 1 {
            err.add(
                path,
                "only one of secret, file, inline, inlineString may be set",
            );
        }
        if let Some(s) = &self.secret
            && s.is_empty()
        {
            err.add(&path.field("secret"), "cannot be empty");
        }
        if let Some(f) = &self.file
            && f.is_empty()
        {
            err.add(&path.field("file"), "cannot be empty");
        }
        if let Some(i) = &self.inline {
            use base64::Engine as _;
            if base64::engine::general_purpose::STANDARD.decode(i).is_err() {
                err.add(&path.field("inline"), "must be valid base64");
            }
        }
    }
}

/// `health: {ready: true}` of an inbound or listener.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Health {
    /// Whether the workload is ready to take traffic.
    pub ready: Option<bool>,
}

/// Envoy admin settings of a proxy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvoyAdmin {
    /// Port of the Envoy admin API (loopback only).
    #[serde(default)]
    pub port: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "backend-1", "a.b.c", "x1", &"a".repeat(253)] {
            let mut e = ValidationError::new();
            validate_name(&Path::at("name"), ok, &mut e);
            assert!(e.is_empty(), "{ok}: {e}");
        }
        for bad in [
            "",
            "A",
            "-a",
            "a-",
            "a..b",
            "a_b",
            "a/b",
            "ä",
            &"a".repeat(254),
        ] {
            let mut e = ValidationError::new();
            validate_name(&Path::at("name"), bad, &mut e);
            assert_eq!(e.violations().len(), 1, "{bad}");
            assert_eq!(e.violations()[0].field, "name");
        }
    }

    #[test]
    fn tags() {
        let mut tags = Tags::new();
        tags.insert("version".into(), "v 1".into());
        tags.insert("bad key!".into(), "x".into());
        tags.insert("empty".into(), String::new());
        let mut e = ValidationError::new();
        validate_tags(
            &Path::at("tags"),
            &tags,
            TagRules {
                require_service: true,
                ..Default::default()
            },
            &mut e,
        );
        let fields: Vec<_> = e.violations().iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                r#"tags["bad key!"]"#,
                r#"tags["empty"]"#,
                r#"tags["version"]"#,
                "tags"
            ]
        );
    }

    #[test]
    fn selector_wildcards_only_in_selectors() {
        let tags: Tags = [("kuma.io/service".to_string(), "*".to_string())].into();
        let mut e = ValidationError::new();
        validate_tags(
            &Path::at("t"),
            &tags,
            TagRules {
                selector: true,
                ..Default::default()
            },
            &mut e,
        );
        assert!(e.is_empty());
        validate_tags(&Path::at("t"), &tags, TagRules::default(), &mut e);
        assert_eq!(e.violations().len(), 1);
    }

    #[test]
    fn data_source_exactly_one() {
        let mut e = ValidationError::new();
        DataSource::default().validate(&Path::at("cert"), &mut e);
        DataSource {
            secret: Some("a".into()),
            file: Some("b".into()),
            ..Default::default()
        }
        .validate(&Path::at("key"), &mut e);
        DataSource {
            inline: Some("!!".into()),
            ..Default::default()
        }
        .validate(&Path::at("x"), &mut e);
        let fields: Vec<_> = e.violations().iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["cert", "key", "x.inline"]);
    }
}
