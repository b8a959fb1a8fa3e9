//! How kumactl prints: aligned tables with Kuma's columns, YAML, JSON, and ages.

use chrono::{DateTime, Utc};
use kuma_core::resource::{ResourceType, Scope};
use serde_json::Value;

/// Output format (`-o`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns, Kuma's.
    Table,
    /// YAML.
    Yaml,
    /// JSON.
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "table" => Ok(Format::Table),
            "yaml" => Ok(Format::Yaml),
            "json" => Ok(Format::Json),
            other => Err(format!("{other:?}: expected table, yaml or json")),
        }
    }
}

/// A table: headers and rows, printed with columns padded to their widest cell.
pub struct Table {
    /// Column titles.
    pub headers: Vec<&'static str>,
    /// Rows of cells.
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

/// The table `kumactl get <type>` prints for `items` of `rtype`, with Kuma's columns.
pub fn rows_for(rtype: ResourceType, items: &[Value]) -> Table {
    match rtype {
        ResourceType::Mesh => Table {
            headers: vec!["NAME", "mTLS", "LOCALITY", "ZONEEGRESS", "AGE"],
            rows: items
                .iter()
                .map(|m| {
                    let mtls = match m["mtls"]["enabledBackend"].as_str() {
                        Some(b) if !b.is_empty() => {
                            let kind = m["mtls"]["backends"]
                                .as_array()
                                .and_then(|bs| bs.iter().find(|x| x["name"] == b))
                                .and_then(|x| x["type"].as_str())
                                .unwrap_or("");
                            format!("{kind}/{b}")
                        }
                        _ => "off".into(),
                    };
                    let on = |v: &Value| {
                        if v.as_bool() == Some(true) {
                            "on"
                        } else {
                            "off"
                        }
                    };
                    vec![
                        m["name"].as_str().unwrap_or_default().into(),
                        mtls,
                        on(&m["routing"]["localityAwareLoadBalancing"]).into(),
                        on(&m["routing"]["zoneEgress"]).into(),
                        ago(&m["modificationTime"]),
                    ]
                })
                .collect(),
        },
        ResourceType::Dataplane => Table {
            headers: vec!["MESH", "NAME", "TAGS", "ADDRESS", "AGE"],
            rows: items
                .iter()
                .map(|d| {
                    let n = &d["networking"];
                    let address = n["advertisedAddress"]
                        .as_str()
                        .or(n["address"].as_str())
                        .unwrap_or_default();
                    vec![
                        d["mesh"].as_str().unwrap_or_default().into(),
                        d["name"].as_str().unwrap_or_default().into(),
                        tags(d),
                        address.into(),
                        ago(&d["modificationTime"]),
                    ]
                })
                .collect(),
        },
        t if t.scope() == Scope::Mesh => Table {
            headers: vec!["MESH", "NAME", "AGE"],
            rows: items
                .iter()
                .map(|r| {
                    vec![
                        r["mesh"].as_str().unwrap_or_default().into(),
                        r["name"].as_str().unwrap_or_default().into(),
                        ago(&r["modificationTime"]),
                    ]
                })
                .collect(),
        },
        _ => Table {
            headers: vec!["NAME", "AGE"],
            rows: items
                .iter()
                .map(|r| {
                    vec![
                        r["name"].as_str().unwrap_or_default().into(),
                        ago(&r["modificationTime"]),
                    ]
                })
                .collect(),
        },
    }
}

/// The latest subscription of an insight (the open one, else the last).
fn latest_subscription(insight: &Value) -> Option<&Value> {
    let subs = insight["subscriptions"].as_array()?;
    subs.iter()
        .rev()
        .find(|s| s.get("disconnectTime").is_none())
        .or(subs.last())
}

/// One row of `kumactl inspect dataplanes` for a Dataplane overview.
pub fn inspect_row(overview: &Value) -> Vec<String> {
    let insight = &overview["dataplaneInsight"];
    let subs = insight["subscriptions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let online = subs
        .iter()
        .any(|s| s.get("connectTime").is_some() && s.get("disconnectTime").is_none());
    let latest = latest_subscription(insight);
    let sum = |field: &str| -> u64 {
        subs.iter()
            .map(|s| s["status"]["total"][field].as_u64().unwrap_or_default())
            .sum()
    };
    let version = |component: &str| -> String {
        latest
            .and_then(|s| s["version"][component]["version"].as_str())
            .unwrap_or("unknown")
            .to_string()
    };
    // The most recent ACK and NACK over all types, from the control plane's xDS record.
    let xds = insight["metadata"]["xds"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let last = |time_key: &str| {
        xds.iter()
            .filter_map(|(kind, s)| {
                s[time_key]
                    .as_str()
                    .map(|t| (t.to_string(), kind.clone(), s.clone()))
            })
            .max_by(|a, b| a.0.cmp(&b.0))
    };
    let last_ack = last("lastAckTime")
        .map(|(t, kind, _)| format!("{kind} {}", ago(&Value::String(t))))
        .unwrap_or_else(|| "never".into());
    let last_nack = last("lastNackTime")
        .map(|(_, kind, s)| {
            let error = s["lastNackError"].as_str().unwrap_or_default();
            format!("{kind}: {}", error.trim().replace('\n', " "))
        })
        .unwrap_or_else(|| "-".into());
    let dataplane = &overview["dataplane"];
    vec![
        overview["mesh"].as_str().unwrap_or_default().into(),
        overview["name"].as_str().unwrap_or_default().into(),
        tags(dataplane),
        if online { "Online" } else { "Offline" }.into(),
        latest
            .map(|s| ago(&s["connectTime"]))
            .unwrap_or_else(|| "never".into()),
        latest
            .map(|s| ago(&s["status"]["lastUpdateTime"]))
            .unwrap_or_else(|| "never".into()),
        sum("responsesSent").to_string(),
        sum("responsesRejected").to_string(),
        ago(&insight["mTLS"]["lastCertificateRegeneration"]),
        ago(&insight["mTLS"]["certificateExpirationTime"]).replace("never", "-"),
        insight["mTLS"]["certificateRegenerations"]
            .as_u64()
            .unwrap_or_default()
            .to_string(),
        insight["mTLS"]["issuedBackend"]
            .as_str()
            .unwrap_or("-")
            .into(),
        "-".into(),
        version("kumaDp"),
        version("envoy"),
        "-".into(),
        "-".into(),
        last_ack,
        last_nack,
    ]
}

/// The headers of `kumactl inspect zones`, as Kuma's.
pub const ZONE_HEADERS: [&str; 8] = [
    "NAME",
    "STATUS",
    "LAST CONNECTED AGO",
    "LAST UPDATED AGO",
    "TOTAL UPDATES",
    "TOTAL ERRORS",
    "ZONE-CP VERSION",
    "BACKEND",
];

/// The columns of `kumactl inspect zoneingresses` and `zoneegresses`.
pub const ZONE_PROXY_HEADERS: &[&str] = &[
    "NAME",
    "ZONE",
    "ADDRESS",
    "STATUS",
    "LAST CONNECTED AGO",
    "LAST UPDATED AGO",
    "TOTAL UPDATES",
    "TOTAL ERRORS",
];

/// A row of `kumactl inspect zoneingresses|zoneegresses` for one overview (the proxy under
/// `spec_key`, its insight under `insight_key`).
pub fn zone_proxy_inspect_row(overview: &Value, spec_key: &str, insight_key: &str) -> Vec<String> {
    let proxy = &overview[spec_key];
    let subs = subscriptions(&overview[insight_key]);
    let net = &proxy["networking"];
    let address = match (net["address"].as_str(), net["port"].as_u64()) {
        (Some(a), Some(p)) => format!("{a}:{p}"),
        _ => String::new(),
    };
    let mut row = vec![
        overview["name"].as_str().unwrap_or_default().into(),
        proxy["zone"].as_str().unwrap_or_default().into(),
        address,
    ];
    row.extend(connection_columns(&subs, true));
    row
}

/// The subscriptions of an insight.
fn subscriptions(insight: &Value) -> Vec<Value> {
    insight["subscriptions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// STATUS (online when the last subscription is open and `enabled`), LAST CONNECTED AGO,
/// LAST UPDATED AGO, TOTAL UPDATES, TOTAL ERRORS of an insight's subscriptions.
fn connection_columns(subs: &[Value], enabled: bool) -> [String; 5] {
    let last = subs.last();
    let online = enabled
        && last
            .is_some_and(|s| s.get("connectTime").is_some() && s.get("disconnectTime").is_none());
    let sum = |field: &str| -> u64 {
        subs.iter()
            .map(|s| s["status"]["total"][field].as_u64().unwrap_or_default())
            .sum()
    };
    [
        if online { "Online" } else { "Offline" }.into(),
        last.map(|s| ago(&s["connectTime"]))
            .unwrap_or_else(|| "never".into()),
        last.map(|s| ago(&s["status"]["lastUpdateTime"]))
            .unwrap_or_else(|| "never".into()),
        sum("responsesSent").to_string(),
        sum("responsesRejected").to_string(),
    ]
}

/// One row of `kumactl inspect zones` for a zone overview (`/zones+insights`): online when
/// its last connection is open and the zone is enabled.
pub fn zone_inspect_row(overview: &Value) -> Vec<String> {
    let subs = subscriptions(&overview["zoneInsight"]);
    let last = subs.last();
    let enabled = overview["zone"]["enabled"].as_bool() != Some(false);
    let backend = last
        .and_then(|s| s["config"].as_str())
        .and_then(|c| serde_json::from_str::<Value>(c).ok())
        .and_then(|c| c["store"]["type"].as_str().map(str::to_string))
        .unwrap_or_default();
    let mut row = vec![overview["name"].as_str().unwrap_or_default().into()];
    row.extend(connection_columns(&subs, enabled));
    row.push(
        last.and_then(|s| s["version"]["kumaCp"]["version"].as_str())
            .unwrap_or_default()
            .into(),
    );
    row.push(backend);
    row
}
