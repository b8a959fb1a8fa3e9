//! KDS messages: each resource travels as `kuma.mesh.v1alpha1.KumaResource` packed in a
//! `google.protobuf.Any`, in Envoy's delta discovery messages whose type URL is the bare type
//! name (`MeshTimeout`, not `type.googleapis.com/...`).
//!
//! Inside, the spec is itself an `Any`. The targetRef policies, which Kuma does not define as
//! protobuf messages, carry their spec as JSON with an empty type URL; the older kinds
//! (Mesh, Dataplane, secrets, insights, ...) carry the protobuf encoding of Kuma's message
//! ([`crate::specs`]).

use kuma_core::resource::{Labels, Resource, ResourceMeta, ResourceType, Spec};
use prost::Message;

use crate::specs;

/// Type URL of a packed [`KumaResource`].
pub const KUMA_RESOURCE_TYPE_URL: &str = "type.googleapis.com/kuma.mesh.v1alpha1.KumaResource";

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, Message)]
pub struct Any {
    /// `type_url`.
    #[prost(string, tag = "1")]
    pub type_url: String,
    /// `value`.
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `kuma.mesh.v1alpha1.KumaResource`: one resource as KDS carries it.
#[derive(Clone, PartialEq, Message)]
pub struct KumaResource {
    /// `meta`.
    #[prost(message, optional, tag = "1")]
    pub meta: Option<KumaResourceMeta>,
    /// `spec`: protobuf for the older kinds, JSON (empty type URL) for the newer ones.
    #[prost(message, optional, tag = "2")]
    pub spec: Option<Any>,
    /// `status`, for the kinds that have one.
    #[prost(message, optional, tag = "3")]
    pub status: Option<Any>,
}

/// `kuma.mesh.v1alpha1.KumaResource.Meta`.
#[derive(Clone, PartialEq, Message)]
pub struct KumaResourceMeta {
    /// `name`.
    #[prost(string, tag = "1")]
    pub name: String,
    /// `mesh` (empty for global-scoped kinds).
    #[prost(string, tag = "2")]
    pub mesh: String,
    /// `version`: always empty on the wire (each resource's version is its content hash, in
    /// the delta message).
    #[prost(string, tag = "5")]
    pub version: String,
    /// `labels`.
    #[prost(btree_map = "string, string", tag = "6")]
    pub labels: Labels,
}

/// Why a resource cannot be put in a KDS message.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EncodeError {
    /// Its kind never travels in KDS (zones and their insights stay on global).
    #[error("{0} resources do not travel in KDS")]
    NotSynced(ResourceType),
    /// Its spec has something the kind's protobuf message cannot carry.
    #[error("{rtype} {name:?}: {reason}")]
    Spec {
        /// The kind.
        rtype: ResourceType,
        /// The resource's name.
        name: String,
        /// What does not fit, naming the field.
        reason: String,
    },
}

/// Why a KDS message does not make a resource.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The type URL names no kind this control plane knows.
    #[error("unknown resource type {0:?}")]
    UnknownType(String),
    /// The resource is not a packed `KumaResource`.
    #[error("{type_name} {name:?}: {reason}")]
    Malformed {
        /// The kind.
        type_name: String,
        /// The resource's name, when it got that far.
        name: String,
        /// What is wrong, naming the field.
        reason: String,
    },
    /// Its kind never travels in KDS.
    #[error("{0} resources do not travel in KDS")]
    NotSynced(ResourceType),
}

/// Whether a kind's spec travels as JSON (the targetRef policies) rather than protobuf.
pub fn spec_is_json(rtype: ResourceType) -> bool {
    rtype.is_policy()
}

/// `resource` as KDS sends it: a [`KumaResource`] packed in an `Any`, its meta version empty.
pub fn encode(resource: &Resource) -> Result<Any, EncodeError> {
    encode_as(resource, &resource.meta.name, &resource.meta.labels)
}

/// `resource` as KDS sends it under another name and labels (the other side's, see
/// [`crate::names`]).
pub fn encode_as(resource: &Resource, name: &str, labels: &Labels) -> Result<Any, EncodeError> {
    let rtype = resource.spec.rtype();
    let spec = if let Some(message) = specs::message_name(rtype) {
        let value = specs::encode(rtype, &resource.spec.to_value()).map_err(|reason| {
            EncodeError::Spec {
                rtype,
                name: name.to_string(),
                reason,
            }
        })?;
        Any {
            type_url: format!("type.googleapis.com/{message}"),
            value,
        }
    } else if spec_is_json(rtype) {
        // A spec is plain data: it always serializes.
        Any {
            type_url: String::new(),
            value: serde_json::to_vec(&resource.spec.to_value()).unwrap_or_default(),
        }
    } else {
        return Err(EncodeError::NotSynced(rtype));
    };
    let status = resource.status.as_ref().map(|s| Any {
        type_url: String::new(),
        value: serde_json::to_vec(s).unwrap_or_default(),
    });
    let kuma = KumaResource {
        meta: Some(KumaResourceMeta {
            name: name.to_string(),
            mesh: resource.meta.mesh.clone(),
            version: String::new(),
            labels: labels.clone(),
        }),
        spec: Some(spec),
        status,
    };
    Ok(Any {
        type_url: KUMA_RESOURCE_TYPE_URL.to_string(),
        value: kuma.encode_to_vec(),
    })
}

/// The resource a KDS message of type `type_name` carries in `any`, validated as the API would
/// validate it.
pub fn decode(type_name: &str, any: &Any) -> Result<Resource, DecodeError> {
    let rtype = ResourceType::from_name(type_name)
        .ok_or_else(|| DecodeError::UnknownType(type_name.to_string()))?;
    let malformed = |name: &str, reason: String| DecodeError::Malformed {
        type_name: type_name.to_string(),
        name: name.to_string(),
        reason,
    };
    if any.type_url != KUMA_RESOURCE_TYPE_URL {
        return Err(malformed(
            "",
            format!(
                "resource: expected a {KUMA_RESOURCE_TYPE_URL}, got {:?}",
                any.type_url
            ),
        ));
    }
    let kuma = KumaResource::decode(any.value.as_slice())
        .map_err(|e| malformed("", format!("resource: {e}")))?;
    let meta = kuma.meta.unwrap_or_default();
    let name = meta.name.clone();
    if name.is_empty() {
        return Err(malformed("", "meta.name: must not be empty".into()));
    }
    let spec = kuma.spec.unwrap_or_default();
    let value: serde_json::Value = if let Some(message) = specs::message_name(rtype) {
        let expected = format!("type.googleapis.com/{message}");
        if !spec.type_url.is_empty() && spec.type_url != expected {
            return Err(malformed(
                &name,
                format!("spec: expected a {expected}, got {:?}", spec.type_url),
            ));
        }
        specs::decode(rtype, &spec.value).map_err(|e| malformed(&name, format!("spec: {e}")))?
    } else if !spec_is_json(rtype) {
        return Err(DecodeError::NotSynced(rtype));
    } else if spec.value.is_empty() {
        serde_json::Value::Object(Default::default())
    } else {
        serde_json::from_slice(&spec.value).map_err(|e| malformed(&name, format!("spec: {e}")))?
    };
    let spec = Spec::from_value(rtype, value).map_err(|e| malformed(&name, e.to_string()))?;
    let status = match kuma.status {
        Some(s) if !s.value.is_empty() => Some(
            serde_json::from_slice(&s.value)
                .map_err(|e| malformed(&name, format!("status: {e}")))?,
        ),
        _ => None,
    };
    let resource = Resource {
        meta: ResourceMeta {
            name,
            mesh: meta.mesh,
            labels: meta.labels,
            ..ResourceMeta::default()
        },
        spec,
        status,
    };
    let problems = resource.spec.validate();
    if !problems.is_empty() {
        return Err(malformed(&resource.meta.name, problems.to_string()));
    }
    Ok(resource)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kuma_core::resource::parse_yaml;

    fn timeout() -> Resource {
        parse_yaml(
            "type: MeshTimeout\nmesh: default\nname: t-abc\nlabels:\n  kuma.io/origin: global\n  kuma.io/display-name: t\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n  - targetRef:\n      kind: Mesh\n    default:\n      idleTimeout: 1s\n",
        )
        .expect("valid")
    }

    #[test]
    fn a_policy_round_trips_as_json_inside_kuma_resource() {
        let r = timeout();
        let any = encode(&r).expect("policies encode");
        assert_eq!(any.type_url, KUMA_RESOURCE_TYPE_URL);
        let kuma = KumaResource::decode(any.value.as_slice()).expect("decodes");
        let meta = kuma.meta.clone().expect("meta");
        assert_eq!(
            (meta.name.as_str(), meta.mesh.as_str()),
            ("t-abc", "default")
        );
        assert!(meta.version.is_empty());
        assert_eq!(meta.labels["kuma.io/display-name"], "t");
        let spec = kuma.spec.expect("spec");
        assert!(spec.type_url.is_empty(), "JSON specs have no type URL");
        let json: serde_json::Value = serde_json::from_slice(&spec.value).expect("JSON");
        assert_eq!(json["to"][0]["default"]["idleTimeout"], "1s");
        let back = decode("MeshTimeout", &any).expect("decodes back");
        assert_eq!(back.meta.name, r.meta.name);
        assert_eq!(back.meta.labels, r.meta.labels);
        assert_eq!(back.spec, r.spec);
    }

    #[test]
    fn bad_messages_are_refused_with_the_field() {
        let any = encode(&timeout()).expect("encodes");
        assert_eq!(
            decode("NoSuchKind", &any),
            Err(DecodeError::UnknownType("NoSuchKind".into()))
        );
        let mut kuma = KumaResource::decode(any.value.as_slice()).expect("decodes");
        kuma.spec = Some(Any {
            type_url: String::new(),
            value: br#"{"to": "not a list"}"#.to_vec(),
        });
        let bad = Any {
            type_url: KUMA_RESOURCE_TYPE_URL.into(),
            value: kuma.encode_to_vec(),
        };
        let err = decode("MeshTimeout", &bad)
            .expect_err("refused")
            .to_string();
        assert!(
            err.contains("MeshTimeout") && err.contains("t-abc") && err.contains("to"),
            "{err}"
        );
        let garbage = Any {
            type_url: KUMA_RESOURCE_TYPE_URL.into(),
            value: vec![0xff, 0xff, 0xff],
        };
        assert!(decode("MeshTimeout", &garbage).is_err());
    }

    #[test]
    fn protobuf_kinds_carry_kumas_message() {
        let mesh = parse_yaml(
            "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n",
        )
        .expect("valid");
        let any = encode(&mesh).expect("encodes");
        let kuma = KumaResource::decode(any.value.as_slice()).expect("decodes");
        assert_eq!(
            kuma.spec.expect("spec").type_url,
            "type.googleapis.com/kuma.mesh.v1alpha1.Mesh"
        );
        let back = decode("Mesh", &any).expect("decodes back");
        assert_eq!(back.spec, mesh.spec);
        let zone = parse_yaml("type: Zone\nname: zone-1\n").expect("valid");
        assert_eq!(
            encode(&zone),
            Err(EncodeError::NotSynced(ResourceType::Zone))
        );
    }
}
