//! How kumactl prints: aligned tables with Kuma's columns, YAML, JSON, and ages.

use chrono::{DateTime, Utc};
use serde_json::Value;

/// Output format (`-o`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Yaml,
    Json,
}

/// A table: headers and rows, printed with columns padded to their widest cell.
pub struct Table {
    pub headers: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: Vec<&str>| -> String {
            let mut out = String::new();
            for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
                if i + 1 == cells.len() {
                    out.push_str(cell);
                } else {
                    out.push_str(&format!("{cell:<width$}   ", width = *w));
                }
            }
            out.trim_end().to_string()
        };
        writeln!(f, "{}", line(self.headers.clone()))?;
        for row in &self.rows {
            writeln!(f, "{}", line(row.iter().map(String::as_str).collect()))?;
        }
        Ok(())
    }
}

/// `value` as YAML.
pub fn yaml(value: &Value) -> String {
    serde_norway::to_string(value).unwrap_or_default()
}

/// `value` as indented JSON.
pub fn json(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

fn time(value: &Value) -> Option<DateTime<Utc>> {
    value
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// Kuma's short age: `12s`, `5m`, `3h`, `2d`, `1y`; `never` without a time.
pub fn ago(value: &Value) -> String {
    let Some(t) = time(value) else {
        return "never".into();
    };
    let secs = (Utc::now() - t).num_seconds();
    match secs {
        s if s < -1 => "never".into(),
        s if s < 0 => "0s".into(),
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h", s / 3600),
        s if s < 86400 * 365 => format!("{}d", s / 86400),
        s => format!("{}y", s / 86400 / 365),
    }
}

/// Tags as Kuma prints a tag set: `k=v` sorted, space-separated, values of one key joined.
pub fn tags(dataplane: &Value) -> String {
    let mut pairs: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    let networking = &dataplane["networking"];
    let mut add = |t: &Value| {
        if let Some(map) = t.as_object() {
            for (k, v) in map {
                pairs
                    .entry(k.clone())
                    .or_default()
                    .insert(v.as_str().unwrap_or_default().to_string());
            }
        }
    };
    if let Some(inbounds) = networking["inbound"].as_array() {
        for i in inbounds {
            add(&i["tags"]);
        }
    }
    add(&networking["gateway"]["tags"]);
    pairs
        .into_iter()
        .map(|(k, vs)| format!("{k}={}", vs.into_iter().collect::<Vec<_>>().join(",")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The footer Kuma prints under a page that has a next one.
pub fn pagination_footer(list: &Value) -> Option<String> {
    let next = list["next"].as_str()?;
    let offset = reqwest::Url::parse(next)
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == "offset")
        .map(|(_, v)| v.into_owned())?;
    Some(format!(
        "Rerun command with --offset={offset} argument to retrieve more resources"
    ))
}
