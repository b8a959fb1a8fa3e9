//! Envoy resources as canonical protobuf JSON, for inspection (`_config` in the HTTP API).
//!
//! The bytes a snapshot holds are decoded against Envoy's descriptors (the set the `envoy-types`
//! package ships, kept in `descriptors/envoy.bin` without its comments; a test checks it
//! against the locked package), so every field, including the `Any`s inside (filters,
//! transport sockets, extensions), comes out as protojson writes it. An `Any` of a type the set
//! lacks would be shown as `{"@type": ..., "value": <base64 bytes>}`. Fields Envoy marks
//! sensitive (private keys, secrets) are redacted, as in Envoy's own config dump.

use std::sync::OnceLock;

use base64::Engine as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MapKey, ReflectMessage,
    SerializeOptions, Value as PValue,
};
use serde_json::{Map, Value, json};

use crate::cache::{EncodedResource, Snapshot};
use crate::types::in_push_order;

use crate::canonical::pool;

/// One resource as JSON (no `@type`: the type is the key it is listed under).
pub fn resource_json(resource: &EncodedResource) -> Result<Value, String> {
    let pool = pool()?;
    let any = resource.to_any();
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    let descriptor = pool
        .get_message_by_name(name)
        .ok_or_else(|| format!("unknown type {}", any.type_url))?;
    let message = DynamicMessage::decode(descriptor, any.value.as_slice())
        .map_err(|e| format!("{}: {e}", any.type_url))?;
    message_json(pool, &message)
}

/// What stands in for a secret value, as in Envoy's config dump.
pub const REDACTED: &str = "[redacted]";

/// Whether `field` is marked `(udpa.annotations.sensitive) = true` (private keys, HMAC
/// secrets, passwords). Envoy's config dump redacts such fields; so does this rendering.
fn is_sensitive(pool: &DescriptorPool, field: &FieldDescriptor) -> bool {
    static SENSITIVE: OnceLock<Option<prost_reflect::ExtensionDescriptor>> = OnceLock::new();
    let Some(extension) =
        SENSITIVE.get_or_init(|| pool.get_extension_by_name("udpa.annotations.sensitive"))
    else {
        return false;
    };
    matches!(
        field.options().get_extension(extension).as_ref(),
        PValue::Bool(true)
    )
}

/// Replaces every string and bytes value in `value` (a sensitive field) by [`REDACTED`], as
/// Envoy does: strings become `"[redacted]"`, bytes the bytes of that text.
fn redact(value: &mut PValue) {
    match value {
        PValue::String(s) => *s = REDACTED.to_string(),
        PValue::Bytes(b) => *b = prost::bytes::Bytes::from_static(REDACTED.as_bytes()),
        PValue::List(items) => items.iter_mut().for_each(redact),
        PValue::Map(entries) => entries.values_mut().for_each(redact),
        PValue::Message(m) => {
            let fields: Vec<FieldDescriptor> = m.fields().map(|(f, _)| f).collect();
            for field in fields {
                redact(m.get_field_mut(&field));
            }
        }
        _ => {}
    }
}

fn message_json(pool: &DescriptorPool, message: &DynamicMessage) -> Result<Value, String> {
    let name = message.descriptor().full_name().to_string();
    if name == "google.protobuf.Any" {
        return any_json(pool, message);
    }
    if name.starts_with("google.protobuf.") {
        // Well-known types (Duration, wrappers, Struct, ...) have special JSON forms, which
        // prost-reflect writes.
        let options = SerializeOptions::new().stringify_64_bit_integers(true);
        return message
            .serialize_with_options(serde_json::value::Serializer, &options)
            .map_err(|e| format!("{name}: {e}"));
    }
    let mut out = Map::new();
    for (field, value) in message.fields() {
        let json = if is_sensitive(pool, &field) {
            let mut value = value.clone();
            redact(&mut value);
            field_json(pool, &field, &value)?
        } else {
            field_json(pool, &field, value)?
        };
        out.insert(field.json_name().to_string(), json);
    }
    Ok(Value::Object(out))
}

fn any_json(pool: &DescriptorPool, any: &DynamicMessage) -> Result<Value, String> {
    let type_url = match any.get_field_by_name("type_url").as_deref() {
        Some(PValue::String(s)) => s.clone(),
        _ => String::new(),
    };
    let bytes = match any.get_field_by_name("value").as_deref() {
        Some(PValue::Bytes(b)) => b.clone(),
        _ => Default::default(),
    };
    let name = type_url.rsplit('/').next().unwrap_or_default();
    let Some(descriptor) = pool.get_message_by_name(name) else {
        return Ok(json!({
            "@type": type_url,
            "value": base64::engine::general_purpose::STANDARD.encode(&bytes),
        }));
    };
    let inner =
        DynamicMessage::decode(descriptor, bytes).map_err(|e| format!("{type_url}: {e}"))?;
    let mut out = Map::new();
    out.insert("@type".into(), json!(type_url));
    match message_json(pool, &inner)? {
        Value::Object(fields) => out.extend(fields),
        // A well-known type with a scalar form goes under "value".
        other => {
            out.insert("value".into(), other);
        }
    }
    Ok(Value::Object(out))
}

fn field_json(
    pool: &DescriptorPool,
    field: &FieldDescriptor,
    value: &PValue,
) -> Result<Value, String> {
    match value {
        PValue::List(items) => items
            .iter()
            .map(|v| scalar_json(pool, &field.kind(), v))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        PValue::Map(entries) => {
            let value_kind = match field.kind() {
                Kind::Message(entry) => entry.map_entry_value_field().kind(),
                other => other,
            };
            let mut sorted: Vec<_> = entries.iter().collect();
            sorted.sort_by(|a, b| a.0.cmp(b.0));
            let mut out = Map::new();
            for (k, v) in sorted {
                let key = match k {
                    MapKey::Bool(b) => b.to_string(),
                    MapKey::I32(n) => n.to_string(),
                    MapKey::I64(n) => n.to_string(),
                    MapKey::U32(n) => n.to_string(),
                    MapKey::U64(n) => n.to_string(),
                    MapKey::String(s) => s.clone(),
                };
                out.insert(key, scalar_json(pool, &value_kind, v)?);
            }
            Ok(Value::Object(out))
        }
        v => scalar_json(pool, &field.kind(), v),
    }
}

fn float_json(f: f64) -> Value {
    if f.is_nan() {
        json!("NaN")
    } else if f.is_infinite() {
        json!(if f > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        json!(f)
    }
}

fn scalar_json(pool: &DescriptorPool, kind: &Kind, value: &PValue) -> Result<Value, String> {
    Ok(match value {
        PValue::Bool(b) => json!(b),
        PValue::I32(n) => json!(n),
        PValue::U32(n) => json!(n),
        PValue::I64(n) => json!(n.to_string()),
        PValue::U64(n) => json!(n.to_string()),
        PValue::F32(f) => float_json(f64::from(*f)),
        PValue::F64(f) => float_json(*f),
        PValue::String(s) => json!(s),
        PValue::Bytes(b) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        PValue::EnumNumber(n) => match kind {
            Kind::Enum(e) => match e.get_value(*n) {
                Some(v) => json!(v.name()),
                None => json!(n),
            },
            _ => json!(n),
        },
        PValue::Message(m) => message_json(pool, m)?,
        PValue::List(_) | PValue::Map(_) => {
            return Err("nested repeated field".into());
        }
    })
}

/// A snapshot as Kuma's inspection shows it: type URL -> resource name -> resource.
pub fn snapshot_json(snapshot: &Snapshot) -> Result<Value, String> {
    let mut out = Map::new();
    let type_urls: Vec<String> = snapshot.type_urls().map(str::to_string).collect();
    for type_url in in_push_order(&type_urls) {
        let Some(resources) = snapshot.get(&type_url) else {
            continue;
        };
        if resources.is_empty() {
            continue;
        }
        let mut by_name = Map::new();
        for (name, resource) in resources.iter() {
            by_name.insert(name.to_string(), resource_json(resource)?);
        }
        out.insert(type_url, Value::Object(by_name));
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, DiscoveryType,
    };
    use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
    use envoy_types::pb::google::protobuf::Duration;

    use super::*;

    #[test]
    fn resources_render_as_protojson() {
        let cluster = Cluster {
            name: "backend".into(),
            connect_timeout: Some(Duration {
                seconds: 5,
                nanos: 0,
            }),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            ..Default::default()
        };
        let json = resource_json(&EncodedResource::from_message(&cluster)).unwrap();
        assert_eq!(
            json,
            json!({"name": "backend", "type": "EDS", "connectTimeout": "5s"})
        );

        let hcm = HttpConnectionManager {
            stat_prefix: "web".into(),
            ..Default::default()
        };
        let tcp = TcpProxy {
            stat_prefix: "db".into(),
            ..Default::default()
        };
        let listener = Listener {
            name: "inbound:10.0.0.1:80".into(),
            filter_chains: vec![FilterChain {
                filters: vec![
                    Filter {
                        name: "envoy.filters.network.http_connection_manager".into(),
                        config_type: Some(filter::ConfigType::TypedConfig(
                            EncodedResource::from_message(&hcm).to_any(),
                        )),
                    },
                    Filter {
                        name: "envoy.filters.network.tcp_proxy".into(),
                        config_type: Some(filter::ConfigType::TypedConfig(
                            EncodedResource::from_message(&tcp).to_any(),
                        )),
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        let json = resource_json(&EncodedResource::from_message(&listener)).unwrap();
        let filters = &json["filterChains"][0]["filters"];
        assert_eq!(json["name"], "inbound:10.0.0.1:80");
        assert_eq!(
            filters[0]["typedConfig"],
            json!({
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "statPrefix": "web",
            })
        );
        assert_eq!(
            filters[1]["typedConfig"],
            json!({
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "statPrefix": "db",
            })
        );
    }

    #[test]
    fn private_keys_are_redacted_as_envoy_does() {
        use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
        use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
            Secret, TlsCertificate, secret,
        };
        let inline = |text: &str| DataSource {
            specifier: Some(data_source::Specifier::InlineBytes(
                text.as_bytes().to_vec(),
            )),
            ..Default::default()
        };
        let key = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49\n-----END PRIVATE KEY-----\n";
        let chain = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let secret = Secret {
            name: "identity_cert:secret:default".into(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: Some(inline(chain)),
                private_key: Some(inline(key)),
                ..Default::default()
            })),
        };
        let json = resource_json(&EncodedResource::from_message(&secret)).unwrap();
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let cert = &json["tlsCertificate"];
        assert_eq!(cert["privateKey"], json!({"inlineBytes": b64(REDACTED)}));
        assert_eq!(cert["certificateChain"], json!({"inlineBytes": b64(chain)}));
        let text = json.to_string();
        assert!(!text.contains(&b64(key)), "{text}");
    }

    #[test]
    fn snapshots_group_resources_by_type_and_name() {
        let snapshot = Snapshot::new([(
            "backend".to_string(),
            EncodedResource::from_message(&Cluster {
                name: "backend".into(),
                ..Default::default()
            }),
        )]);
        let json = snapshot_json(&snapshot).unwrap();
        assert_eq!(
            json,
            json!({"type.googleapis.com/envoy.config.cluster.v3.Cluster": {"backend": {"name": "backend"}}})
        );
    }
}
