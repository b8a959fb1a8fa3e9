//! Responses written straight from shared, pre-encoded resources.
//!
//! Envoy's generated `DiscoveryResponse` owns a copy of every resource. The server instead
//! sends [`SotwResponse`] and [`DeltaResponse`], which hold [`EncodedResource`] handles and are
//! serialised field by field into the gRPC frame: identical resources are encoded once and
//! shared by every stream, and a response costs its headers plus reference counts until it is
//! written. On the wire they are exactly `envoy.service.discovery.v3.DiscoveryResponse` and
//! `DeltaDiscoveryResponse`.

use std::marker::PhantomData;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryResponse, DiscoveryResponse, Resource,
};
use prost::Message;
use prost::bytes::BufMut;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use tonic::Status;
use tonic::codec::{BufferSettings, DecodeBuf, Decoder};

use crate::cache::EncodedResource;

/// A state-of-the-world response (`DiscoveryResponse`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SotwResponse {
    /// `version_info`: the version of the type being sent.
    pub version_info: String,
    /// `resources`.
    pub resources: Vec<EncodedResource>,
    /// `type_url`.
    pub type_url: String,
    /// `nonce`.
    pub nonce: String,
}

/// One resource of an incremental response (`Resource`).
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaResource {
    /// `name`.
    pub name: String,
    /// `version`: the resource's own version.
    pub version: String,
    /// `resource`.
    pub resource: EncodedResource,
}

/// An incremental response (`DeltaDiscoveryResponse`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeltaResponse {
    /// `system_version_info`: the version of the whole type, for debugging.
    pub system_version_info: String,
    /// `resources`: added or changed.
    pub resources: Vec<DeltaResource>,
    /// `type_url`.
    pub type_url: String,
    /// `removed_resources`.
    pub removed_resources: Vec<String>,
    /// `nonce`.
    pub nonce: String,
}

/// A message the server can write without building Envoy's generated type.
pub trait WireMessage {
    /// Bytes [`WireMessage::write`] produces.
    fn encoded_len(&self) -> usize;
    /// Writes the protobuf encoding.
    fn write(&self, buf: &mut impl BufMut);
}

fn string_len(tag: u32, value: &str) -> usize {
    if value.is_empty() {
        0
    } else {
        bytes_len(tag, value.len())
    }
}

fn bytes_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

fn write_string(tag: u32, value: &str, buf: &mut impl BufMut) {
    if !value.is_empty() {
        write_bytes(tag, value.as_bytes(), buf);
    }
}

fn write_bytes(tag: u32, value: &[u8], buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(value.len() as u64, buf);
    buf.put_slice(value);
}

impl WireMessage for SotwResponse {
    fn encoded_len(&self) -> usize {
        string_len(1, &self.version_info)
            + self
                .resources
                .iter()
                .map(|r| bytes_len(2, r.encoded_any().len()))
                .sum::<usize>()
            + string_len(4, &self.type_url)
            + string_len(5, &self.nonce)
    }

    fn write(&self, buf: &mut impl BufMut) {
        write_string(1, &self.version_info, buf);
        for r in &self.resources {
            write_bytes(2, r.encoded_any(), buf);
        }
        write_string(4, &self.type_url, buf);
        write_string(5, &self.nonce, buf);
    }
}

impl DeltaResource {
    fn body_len(&self) -> usize {
        string_len(1, &self.version)
            + bytes_len(2, self.resource.encoded_any().len())
            + string_len(3, &self.name)
    }
}

impl WireMessage for DeltaResponse {
    fn encoded_len(&self) -> usize {
        string_len(1, &self.system_version_info)
            + self
                .resources
                .iter()
                .map(|r| bytes_len(2, r.body_len()))
                .sum::<usize>()
            + string_len(4, &self.type_url)
            + string_len(5, &self.nonce)
            + self
                .removed_resources
                .iter()
                .map(|n| bytes_len(6, n.len()))
                .sum::<usize>()
    }

    fn write(&self, buf: &mut impl BufMut) {
        write_string(1, &self.system_version_info, buf);
        for r in &self.resources {
            encode_key(2, WireType::LengthDelimited, buf);
            encode_varint(r.body_len() as u64, buf);
            write_string(1, &r.version, buf);
            write_bytes(2, r.resource.encoded_any(), buf);
            write_string(3, &r.name, buf);
        }
        write_string(4, &self.type_url, buf);
        write_string(5, &self.nonce, buf);
        for name in &self.removed_resources {
            // Written even when empty: a repeated string keeps empty elements.
            write_bytes(6, name.as_bytes(), buf);
        }
    }
}

impl SotwResponse {
    /// The same response as Envoy's generated type (decodes every resource: for inspection
    /// and tests, not for the serving path).
    pub fn to_proto(&self) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: self.version_info.clone(),
            resources: self.resources.iter().map(EncodedResource::to_any).collect(),
            type_url: self.type_url.clone(),
            nonce: self.nonce.clone(),
            ..Default::default()
        }
    }
}

impl DeltaResponse {
    /// The same response as Envoy's generated type (decodes every resource: for inspection
    /// and tests, not for the serving path).
    pub fn to_proto(&self) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            system_version_info: self.system_version_info.clone(),
            resources: self
                .resources
                .iter()
                .map(|r| Resource {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    resource: Some(r.resource.to_any()),
                    ..Default::default()
                })
                .collect(),
            type_url: self.type_url.clone(),
            removed_resources: self.removed_resources.clone(),
            nonce: self.nonce.clone(),
            ..Default::default()
        }
    }
}

/// Initial size of a stream's decode buffer. It grows to fit larger requests; a small start
/// keeps idle streams cheap (tonic's default is 8 KiB).
const STREAM_BUFFER: usize = 1024;
/// Bytes a stream decodes before it yields to other tasks (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// Decodes requests with prost.
pub(crate) struct ProstDecoder<Req>(PhantomData<fn() -> Req>);

impl<Req> Default for ProstDecoder<Req> {
    fn default() -> Self {
        ProstDecoder(PhantomData)
    }
}

impl<Req: Message + Default> Decoder for ProstDecoder<Req> {
    type Item = Req;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Req>, Status> {
        Req::decode(src)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("malformed request: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(STREAM_BUFFER, YIELD_THRESHOLD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{CLUSTER, ENDPOINT};
    use envoy_types::pb::google::protobuf::Any;

    fn resource(type_url: &str, bytes: &[u8]) -> EncodedResource {
        EncodedResource::new(&Any {
            type_url: type_url.to_string(),
            value: bytes.to_vec(),
        })
    }

    fn encode(m: &impl WireMessage) -> Vec<u8> {
        let mut buf = Vec::new();
        m.write(&mut buf);
        assert_eq!(
            buf.len(),
            m.encoded_len(),
            "encoded_len matches what is written"
        );
        buf
    }

    #[test]
    fn sotw_response_is_a_discovery_response_on_the_wire() {
        let response = SotwResponse {
            version_info: "v1".into(),
            resources: vec![resource(CLUSTER, b"a"), resource(CLUSTER, &[0; 300])],
            type_url: CLUSTER.into(),
            nonce: "7".into(),
        };
        let decoded = DiscoveryResponse::decode(encode(&response).as_slice()).unwrap();
        assert_eq!(decoded, response.to_proto());
        assert_eq!(decoded.resources[1].value.len(), 300);
        let empty = SotwResponse::default();
        assert_eq!(
            DiscoveryResponse::decode(encode(&empty).as_slice()).unwrap(),
            DiscoveryResponse::default()
        );
    }

    #[test]
    fn delta_response_is_a_delta_discovery_response_on_the_wire() {
        let response = DeltaResponse {
            system_version_info: "sys".into(),
            resources: vec![DeltaResource {
                name: "backend".into(),
                version: "abc".into(),
                resource: resource(ENDPOINT, b"endpoints"),
            }],
            type_url: ENDPOINT.into(),
            removed_resources: vec!["gone".into(), String::new()],
            nonce: "3".into(),
        };
        let decoded = DeltaDiscoveryResponse::decode(encode(&response).as_slice()).unwrap();
        assert_eq!(decoded, response.to_proto());
        assert_eq!(decoded.removed_resources, ["gone", ""]);
    }
}
