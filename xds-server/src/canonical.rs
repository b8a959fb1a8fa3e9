//! One encoding per message: protobuf map entries in key order.
//!
//! prost encodes a map field in its `HashMap`'s iteration order, which follows the hasher's
//! random seed, a new one in every process. The same config (an RBAC filter's policies, a
//! `Struct`'s fields, endpoint metadata) would therefore encode differently after a restart,
//! get a new content-derived version and be pushed again (for a listener: drained). This
//! module rewrites encoded bytes so that every map's entries come in the order of their
//! encoded keys, at any depth, inside `google.protobuf.Any` values too, guided by Envoy's
//! descriptors (the set in `descriptors/envoy.bin`). Everything else is copied as it is.

use std::collections::HashMap;
use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, Kind, MessageDescriptor};

/// Envoy's descriptor set, as the `envoy-types` package ships it (without source comments).
const ENVOY_DESCRIPTORS: &[u8] = include_bytes!("../descriptors/envoy.bin");

/// The descriptors of Envoy's API (and the well-known types), decoded once.
pub(crate) fn pool() -> Result<&'static DescriptorPool, String> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(ENVOY_DESCRIPTORS).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(Clone::clone)
}

/// What the rewriting needs of a message type, looked up by index: its fields that are maps
/// or messages which can hold a map.
struct MessageInfo {
    /// Whether this is `google.protobuf.Any`.
    any: bool,
    /// Whether a message of this type can hold a map (directly, in a field, or in an `Any`).
    may_hold_maps: bool,
    /// Field number -> (is a map, the field's message type).
    fields: Vec<(u32, bool, usize)>,
}

/// Every message type of the pool, with an index per full name.
struct Schema {
    messages: Vec<MessageInfo>,
    by_name: HashMap<String, usize>,
}

impl Schema {
    fn get() -> Option<&'static Schema> {
        static SCHEMA: OnceLock<Option<Schema>> = OnceLock::new();
        SCHEMA
            .get_or_init(|| pool().ok().map(Schema::build))
            .as_ref()
    }

    fn build(pool: &DescriptorPool) -> Schema {
        let all: Vec<MessageDescriptor> = pool.all_messages().collect();
        let by_name: HashMap<String, usize> = all
            .iter()
            .enumerate()
            .map(|(i, m)| (m.full_name().to_string(), i))
            .collect();
        let mut messages: Vec<MessageInfo> = all
            .iter()
            .map(|m| {
                let mut fields: Vec<(u32, bool, usize)> = m
                    .fields()
                    .filter_map(|f| match f.kind() {
                        Kind::Message(inner) => by_name
                            .get(inner.full_name())
                            .map(|i| (f.number(), f.is_map(), *i)),
                        _ => None,
                    })
                    .collect();
                fields.sort_unstable();
                MessageInfo {
                    any: m.full_name() == "google.protobuf.Any",
                    may_hold_maps: false,
                    fields,
                }
            })
            .collect();
        // Which types can hold a map: a fixed point over the field graph.
        loop {
            let mut changed = false;
            for i in 0..messages.len() {
                if messages[i].may_hold_maps {
                    continue;
                }
                let holds = messages[i].any
                    || messages[i]
                        .fields
                        .iter()
                        .any(|&(_, map, child)| map || messages[child].may_hold_maps);
                if holds {
                    messages[i].may_hold_maps = true;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        Schema { messages, by_name }
    }

    /// The type a type URL (or full name) names.
    fn lookup(&self, type_url: &str) -> Option<usize> {
        self.by_name
            .get(type_url.rsplit('/').next().unwrap_or_default())
            .copied()
    }

    /// Field `number` of message `message`: (is a map, its message type).
    fn field(&self, message: usize, number: u32) -> Option<(bool, usize)> {
        let fields = &self.messages[message].fields;
        fields
            .binary_search_by_key(&number, |f| f.0)
            .ok()
            .map(|i| (fields[i].1, fields[i].2))
    }
}

/// `value`, the encoding of a message of type `type_url` (a type URL or a full name), with
/// every map's entries in key order. Bytes of an unknown type, or that do not decode as their
/// type says, are returned as they are.
pub fn canonical(type_url: &str, value: Vec<u8>) -> Vec<u8> {
    let Some(schema) = Schema::get() else {
        return value;
    };
    let Some(message) = schema.lookup(type_url) else {
        return value;
    };
    // Most resources hold no map with entries out of order: a read-only look decides, and
    // only the others are rewritten.
    if !schema.messages[message].may_hold_maps
        || !out_of_order(schema, message, &value).unwrap_or(false)
    {
        return value;
    }
    rewrite(schema, message, &value).unwrap_or(value)
}

/// A field as it was on the wire: its number and all of its bytes (key included).
struct Field<'a> {
    number: u32,
    wire_type: u8,
    /// The whole field: key, length (for length-delimited ones) and payload.
    raw: &'a [u8],
    /// The payload of a length-delimited field.
    payload: &'a [u8],
}

fn varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The fields of an encoded message, in order; an item is `None` where it stops being
/// well-formed (and the iteration ends).
fn fields(bytes: &[u8]) -> impl Iterator<Item = Option<Field<'_>>> {
    let mut at = 0;
    let mut broken = false;
    std::iter::from_fn(move || {
        if broken || at >= bytes.len() {
            return None;
        }
        let field = next_field(bytes, &mut at);
        broken = field.is_none();
        Some(field)
    })
}

/// The field at `at` in `bytes`, moving `at` past it; `None` if it is not well-formed.
fn next_field<'a>(bytes: &'a [u8], at: &mut usize) -> Option<Field<'a>> {
    let start = *at;
    let key = varint(bytes, at)?;
    let wire_type = (key & 7) as u8;
    let number = u32::try_from(key >> 3).ok()?;
    let mut payload: &[u8] = &[];
    match wire_type {
        0 => {
            varint(bytes, at)?;
        }
        1 => *at = at.checked_add(8)?,
        2 => {
            let len = usize::try_from(varint(bytes, at)?).ok()?;
            let end = at.checked_add(len)?;
            payload = bytes.get(*at..end)?;
            *at = end;
        }
        5 => *at = at.checked_add(4)?,
        _ => return None,
    }
    Some(Field {
        number,
        wire_type,
        raw: bytes.get(start..*at)?,
        payload,
    })
}

/// The raw key field (number 1) of an encoded map entry; empty when it has none.
fn entry_key(entry: &[u8]) -> Option<&[u8]> {
    for field in fields(entry) {
        let field = field?;
        if field.number == 1 {
            return Some(field.raw);
        }
    }
    Some(&[])
}

/// The message type an `Any` (encoded) holds, and its value.
fn any_parts<'a>(schema: &Schema, bytes: &'a [u8]) -> Option<(Option<usize>, Vec<Field<'a>>)> {
    let all: Vec<Field<'a>> = fields(bytes).collect::<Option<_>>()?;
    let inner = all
        .iter()
        .find(|f| f.number == 1 && f.wire_type == 2)
        .and_then(|f| std::str::from_utf8(f.payload).ok())
        .and_then(|url| schema.lookup(url));
    Some((inner, all))
}

/// Whether some map in the message `bytes` (of type `message`) has its entries out of key
/// order; `None` if it does not decode.
fn out_of_order(schema: &Schema, message: usize, bytes: &[u8]) -> Option<bool> {
    if schema.messages[message].any {
        let (inner, all) = any_parts(schema, bytes)?;
        let Some(inner) = inner.filter(|i| schema.messages[*i].may_hold_maps) else {
            return Some(false);
        };
        for f in all.iter().filter(|f| f.number == 2 && f.wire_type == 2) {
            if out_of_order(schema, inner, f.payload)? {
                return Some(true);
            }
        }
        return Some(false);
    }
    // The key of the last entry seen, per map field.
    let mut last_keys: Vec<(u32, &[u8])> = Vec::new();
    for field in fields(bytes) {
        let field = field?;
        if field.wire_type != 2 {
            continue;
        }
        let Some((map, child)) = schema.field(message, field.number) else {
            continue;
        };
        if map {
            let key = entry_key(field.payload)?;
            match last_keys.iter_mut().find(|(n, _)| *n == field.number) {
                Some((_, last)) if *last > key => return Some(true),
                Some((_, last)) => *last = key,
                None => last_keys.push((field.number, key)),
            }
        }
        if schema.messages[child].may_hold_maps && out_of_order(schema, child, field.payload)? {
            return Some(true);
        }
    }
    Some(false)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// `payload` as length-delimited field `number`.
fn put_len_field(out: &mut Vec<u8>, number: u32, payload: &[u8]) {
    put_varint(out, (u64::from(number) << 3) | 2);
    put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

/// The message `bytes` of type `message`, rewritten; `None` if it does not decode.
fn rewrite(schema: &Schema, message: usize, bytes: &[u8]) -> Option<Vec<u8>> {
    if schema.messages[message].any {
        let (inner, all) = any_parts(schema, bytes)?;
        let mut out = Vec::with_capacity(bytes.len());
        for field in &all {
            match inner {
                Some(inner)
                    if field.number == 2
                        && field.wire_type == 2
                        && schema.messages[inner].may_hold_maps =>
                {
                    put_len_field(&mut out, 2, &rewrite(schema, inner, field.payload)?);
                }
                _ => out.extend_from_slice(field.raw),
            }
        }
        return Some(out);
    }
    let all: Vec<Field<'_>> = fields(bytes).collect::<Option<_>>()?;
    let mut out = Vec::with_capacity(bytes.len());
    // Map fields already written (all their entries, sorted, at the first one).
    let mut written: Vec<u32> = Vec::new();
    for (i, field) in all.iter().enumerate() {
        let described = (field.wire_type == 2)
            .then(|| schema.field(message, field.number))
            .flatten();
        let Some((map, child)) = described else {
            out.extend_from_slice(field.raw);
            continue;
        };
        if map {
            if written.contains(&field.number) {
                continue;
            }
            written.push(field.number);
            let mut entries: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
            for entry in all[i..].iter().filter(|f| f.number == field.number) {
                let rewritten = rewrite(schema, child, entry.payload)?;
                let key = entry_key(&rewritten)?.to_vec();
                entries.push((key, rewritten));
            }
            entries.sort();
            for (_, entry) in entries {
                put_len_field(&mut out, field.number, &entry);
            }
        } else if schema.messages[child].may_hold_maps {
            put_len_field(
                &mut out,
                field.number,
                &rewrite(schema, child, field.payload)?,
            );
        } else {
            out.extend_from_slice(field.raw);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::collections::hash_map::RandomState;

    use envoy_types::pb::envoy::config::core::v3::Metadata;
    use envoy_types::pb::envoy::config::endpoint::v3::{
        ClusterLoadAssignment, LbEndpoint, LocalityLbEndpoints,
    };
    use envoy_types::pb::envoy::config::rbac::v3::{Policy, Rbac};
    use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as RbacFilter;
    use envoy_types::pb::google::protobuf::{Any, Struct, Value, value};
    use prost::{Message, Name};

    use super::*;

    /// The same entries under a hasher of its own, as in another process.
    fn fresh_map<V: Clone>(entries: &[(String, V)]) -> HashMap<String, V> {
        let mut map = HashMap::with_hasher(RandomState::new());
        map.extend(entries.iter().cloned());
        map
    }

    fn rbac_filter(policies: &[(String, Policy)]) -> Any {
        let filter = RbacFilter {
            rules: Some(Rbac {
                policies: fresh_map(policies),
                ..Default::default()
            }),
            ..Default::default()
        };
        Any {
            type_url: RbacFilter::type_url(),
            value: filter.encode_to_vec(),
        }
    }

    fn endpoints(tags: &[(String, Value)]) -> ClusterLoadAssignment {
        let metadata = Metadata {
            filter_metadata: fresh_map(&[(
                "envoy.lb".to_string(),
                Struct {
                    fields: fresh_map(tags),
                },
            )]),
            ..Default::default()
        };
        ClusterLoadAssignment {
            cluster_name: "backend".into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    metadata: Some(metadata),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn maps_encode_alike_whatever_the_hasher() {
        let policies: Vec<(String, Policy)> = (0..12)
            .map(|i| {
                (
                    format!("policy-{i}"),
                    Policy {
                        permissions: vec![],
                        ..Default::default()
                    },
                )
            })
            .collect();
        let tags: Vec<(String, Value)> = (0..12)
            .map(|i| {
                (
                    format!("tag-{i}"),
                    Value {
                        kind: Some(value::Kind::StringValue(format!("v{i}"))),
                    },
                )
            })
            .collect();
        // Inside an Any (the filter) and directly in a resource (endpoint metadata).
        let canonical_any = |a: Any| canonical("google.protobuf.Any", a.encode_to_vec());
        let cla = |e: ClusterLoadAssignment| {
            canonical(&ClusterLoadAssignment::type_url(), e.encode_to_vec())
        };
        let (first_any, first_cla) = (canonical_any(rbac_filter(&policies)), cla(endpoints(&tags)));
        let mut raw_differs = false;
        for _ in 0..20 {
            let a = rbac_filter(&policies);
            raw_differs |= a.encode_to_vec() != rbac_filter(&policies).encode_to_vec();
            assert_eq!(canonical_any(a), first_any);
            assert_eq!(cla(endpoints(&tags)), first_cla);
        }
        assert!(
            raw_differs,
            "the test builds maps that prost encodes in random order"
        );
        // And the canonical bytes are the same message.
        let back = Any::decode(first_any.as_slice()).unwrap();
        let filter = RbacFilter::decode(back.value.as_slice()).unwrap();
        assert_eq!(filter.rules.unwrap().policies.len(), 12);
        let cla = ClusterLoadAssignment::decode(first_cla.as_slice()).unwrap();
        assert_eq!(cla, endpoints(&tags));
    }

    #[test]
    fn what_is_not_a_message_of_its_type_is_left_alone() {
        assert_eq!(
            canonical(&ClusterLoadAssignment::type_url(), vec![0xff, 0xff]),
            vec![0xff, 0xff]
        );
        assert_eq!(
            canonical("type.googleapis.com/no.Such", vec![1, 2]),
            vec![1, 2]
        );
    }
}
