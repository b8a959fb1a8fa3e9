//! The older kinds' specs as protobuf: Mesh, Dataplane, secrets, configs, insights, zone
//! proxies and MeshGateway travel in KDS as the binary encoding of Kuma's protobuf messages.
//!
//! Their JSON (what the API and the store hold) is the protobuf JSON mapping of the same
//! messages, so one descriptor set (`proto/`, compiled by protox) converts both ways:
//! JSON -> message -> bytes on the way out, bytes -> message -> JSON on the way in. A field
//! Kuma's message does not have is refused by name rather than dropped; insights, which are
//! observations rather than intent, drop what Kuma would not know.

use std::sync::OnceLock;

use kuma_core::duration::parse_go_duration;
use kuma_core::resource::ResourceType;
use prost::Message;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, Kind, MessageDescriptor, SerializeOptions,
};
use serde_json::Value;

/// The spec messages' descriptors, compiled from `proto/` by protox (`tests/generated.rs`
/// checks they are up to date).
const DESCRIPTORS: &[u8] = include_bytes!("generated/kuma_specs.bin");

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        // The set is generated from this crate's own files (and checked by a test): it decodes.
        DescriptorPool::decode(DESCRIPTORS).unwrap_or_else(|_| DescriptorPool::global())
    })
}

/// The protobuf message a kind's spec travels as, or `None` when it travels as JSON (the
/// targetRef policies) or not at all.
pub fn message_name(rtype: ResourceType) -> Option<&'static str> {
    Some(match rtype {
        ResourceType::Mesh => "kuma.mesh.v1alpha1.Mesh",
        ResourceType::Dataplane => "kuma.mesh.v1alpha1.Dataplane",
        ResourceType::DataplaneInsight => "kuma.mesh.v1alpha1.DataplaneInsight",
        ResourceType::ZoneIngressInsight => "kuma.mesh.v1alpha1.ZoneIngressInsight",
        ResourceType::ZoneEgressInsight => "kuma.mesh.v1alpha1.ZoneEgressInsight",
        ResourceType::ZoneIngress => "kuma.mesh.v1alpha1.ZoneIngress",
        ResourceType::ZoneEgress => "kuma.mesh.v1alpha1.ZoneEgress",
        ResourceType::MeshGateway => "kuma.mesh.v1alpha1.MeshGateway",
        ResourceType::ExternalService => "kuma.mesh.v1alpha1.ExternalService",
        ResourceType::Secret | ResourceType::GlobalSecret => "kuma.system.v1alpha1.Secret",
        ResourceType::Config => "kuma.system.v1alpha1.Config",
        _ => return None,
    })
}

/// Whether unknown JSON fields are dropped rather than refused (observations, not intent).
fn lenient(rtype: ResourceType) -> bool {
    matches!(
        rtype,
        ResourceType::DataplaneInsight
            | ResourceType::ZoneIngressInsight
            | ResourceType::ZoneEgressInsight
    )
}

fn descriptor(rtype: ResourceType) -> Result<MessageDescriptor, String> {
    let name = message_name(rtype).ok_or_else(|| format!("{rtype} has no protobuf spec"))?;
    pool()
        .get_message_by_name(name)
        .ok_or_else(|| format!("no descriptor for {name}"))
}

/// The protobuf encoding of a spec given as its JSON.
pub fn encode(rtype: ResourceType, json: &Value) -> Result<Vec<u8>, String> {
    let desc = descriptor(rtype)?;
    let mut json = json.clone();
    protobuf_durations(&mut json, &desc);
    let options = DeserializeOptions::new().deny_unknown_fields(!lenient(rtype));
    let message = DynamicMessage::deserialize_with_options(desc, json, &options)
        .map_err(|e| e.to_string())?;
    Ok(message.encode_to_vec())
}

/// The JSON of a spec given as its protobuf encoding.
pub fn decode(rtype: ResourceType, bytes: &[u8]) -> Result<Value, String> {
    let desc = descriptor(rtype)?;
    let message = DynamicMessage::decode(desc, bytes).map_err(|e| e.to_string())?;
    let options = SerializeOptions::new()
        .stringify_64_bit_integers(false)
        .skip_default_fields(true);
    message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| e.to_string())
}

/// Rewrites Go-syntax durations (`1m30s`, which Kuma's YAML accepts) in `json` as protobuf
/// JSON writes them (`90s`), following the message's fields; anything else is left for the
/// decoder to judge.
fn protobuf_durations(json: &mut Value, desc: &MessageDescriptor) {
    if desc.full_name() == "google.protobuf.Duration" {
        if let Value::String(text) = json
            && let Ok(d) = parse_go_duration(text)
        {
            *text = if d.subsec_nanos() == 0 {
                format!("{}s", d.as_secs())
            } else {
                format!("{}.{:09}s", d.as_secs(), d.subsec_nanos())
            };
        }
        return;
    }
    if desc.full_name().starts_with("google.protobuf.") {
        return;
    }
    let Value::Object(fields) = json else { return };
    for (key, value) in fields.iter_mut() {
        let field = desc
            .get_field_by_json_name(key)
            .or_else(|| desc.get_field_by_name(key));
        let Some(field) = field else { continue };
        let Kind::Message(inner) = field.kind() else {
            continue;
        };
        if field.is_map() {
            // A map's value type is the entry's second field.
            let Some(value_field) = inner.map_entry_value_field().kind().as_message().cloned()
            else {
                continue;
            };
            if let Value::Object(entries) = value {
                for v in entries.values_mut() {
                    protobuf_durations(v, &value_field);
                }
            }
        } else if field.is_list() {
            if let Value::Array(items) = value {
                for v in items {
                    protobuf_durations(v, &inner);
                }
            }
        } else {
            protobuf_durations(value, &inner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_dataplane_round_trips_through_protobuf() {
        let dp = json!({
            "networking": {
                "address": "10.0.0.1",
                "inbound": [{
                    "port": 8080,
                    "servicePort": 80,
                    "tags": {"kuma.io/service": "web", "version": "v1"},
                    "serviceProbe": {"interval": "1m30s", "unhealthyThreshold": 3},
                    "state": "NotReady"
                }],
                "outbound": [{"port": 10001, "tags": {"kuma.io/service": "db"}}],
                "transparentProxying": {"redirectPortInbound": 15006, "redirectPortOutbound": 15001},
                "admin": {"port": 9901}
            }
        });
        let bytes = encode(ResourceType::Dataplane, &dp).expect("encodes");
        let back = decode(ResourceType::Dataplane, &bytes).expect("decodes");
        let inbound = &back["networking"]["inbound"][0];
        assert_eq!(inbound["tags"]["kuma.io/service"], "web");
        assert_eq!(inbound["servicePort"], 80);
        assert_eq!(inbound["state"], "NotReady");
        assert_eq!(inbound["serviceProbe"]["interval"], "90s");
        assert_eq!(inbound["serviceProbe"]["unhealthyThreshold"], 3);
        assert_eq!(
            back["networking"]["transparentProxying"]["redirectPortOutbound"],
            15001
        );
        assert_eq!(back["networking"]["admin"]["port"], 9901);
    }

    #[test]
    fn an_external_service_round_trips_through_protobuf() {
        let es = json!({
            "networking": {
                "address": "httpbin.org:443",
                "disableHostDNSEntry": true,
                "tls": {"enabled": true, "serverName": "httpbin.org",
                    "caCert": {"inlineString": "PEM"}, "skipHostnameVerification": false}
            },
            "tags": {"kuma.io/service": "httpbin"}
        });
        let bytes = encode(ResourceType::ExternalService, &es).expect("encodes");
        let back = decode(ResourceType::ExternalService, &bytes).expect("decodes");
        assert_eq!(back["networking"]["tls"]["serverName"], "httpbin.org");
        assert_eq!(back["networking"]["tls"]["caCert"]["inlineString"], "PEM");
        assert_eq!(back["networking"]["disableHostDNSEntry"], true);
        assert_eq!(back["tags"]["kuma.io/service"], "httpbin");
        // networking (1) .address (1) = "a:1", as Kuma numbers them.
        let bytes = encode(
            ResourceType::ExternalService,
            &json!({"networking": {"address": "a:1"}}),
        )
        .expect("encodes");
        assert_eq!(bytes, [0x0a, 0x05, 0x0a, 0x03, b'a', b':', b'1']);
    }

    #[test]
    fn field_numbers_are_kumas() {
        // Secret.data (1, BytesValue{value = 1}) holding "abc".
        let bytes = encode(ResourceType::Secret, &json!({"data": "YWJj"})).expect("encodes");
        assert_eq!(bytes, [0x0a, 0x05, 0x0a, 0x03, b'a', b'b', b'c']);
        // Mesh.mtls (1) .enabledBackend (1) = "ca-1".
        let bytes = encode(
            ResourceType::Mesh,
            &json!({"mtls": {"enabledBackend": "ca-1"}}),
        )
        .expect("encodes");
        assert_eq!(bytes, [0x0a, 0x06, 0x0a, 0x04, b'c', b'a', b'-', b'1']);
    }

    #[test]
    fn a_field_kuma_does_not_have_is_refused_by_name() {
        let err =
            encode(ResourceType::Mesh, &json!({"mtls": {"nope": true}})).expect_err("refused");
        assert!(err.contains("nope"), "{err}");
        // Insights drop what Kuma would not know.
        let insight = json!({"subscriptions": [{"id": "1", "somethingNew": 1}]});
        let bytes = encode(ResourceType::DataplaneInsight, &insight).expect("lenient");
        let back = decode(ResourceType::DataplaneInsight, &bytes).expect("decodes");
        assert_eq!(back, json!({"subscriptions": [{"id": "1"}]}));
    }

    #[test]
    fn garbage_bytes_are_an_error_not_a_panic() {
        assert!(decode(ResourceType::Mesh, &[0xff, 0xff, 0xff]).is_err());
        assert!(decode(ResourceType::MeshTimeout, &[]).is_err());
    }
}
