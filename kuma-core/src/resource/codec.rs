//! Kuma's universal JSON/YAML for resources.
//!
//! Classic types are flat (`type`, `mesh`, `name`, ... and the spec fields inline); policy types
//! nest their spec under `spec` and may carry a `status`. Decoding reports every problem as a
//! [`ValidationError`] whose paths name the offending field (`networking.inbound[0].port`,
//! `spec.to[0].targetRef.kind`); it never panics, whatever the input.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize as _;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::{Labels, Resource, ResourceMeta, ResourceType, Scope, Spec};
use crate::validation::{Path, ValidationError};

/// Largest document accepted by the parsers (4 MiB); larger input is refused before parsing.
pub const MAX_DOCUMENT_BYTES: usize = 4 * 1024 * 1024;

/// Deepest nesting of flow collections (`[`, `{`) accepted by the YAML parser; deeper input is
/// refused by a linear scan before parsing. Parsing itself stops at the same depth (serde's
/// recursion limit), but YAML's parser spends time quadratic in the depth of what it reads
/// before it gets there, so without the scan a few hundred kilobytes of brackets would hold a
/// core for minutes.
pub const MAX_NESTING: usize = 128;

/// Why a document could not be turned into a resource.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    /// The input exceeds [`MAX_DOCUMENT_BYTES`].
    #[error("document is {size} bytes, more than the limit of {limit} bytes")]
    TooLarge {
        /// Input size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Collections nested deeper than [`MAX_NESTING`].
    #[error("document nests collections deeper than {limit} levels (line {line})")]
    TooDeep {
        /// The limit.
        limit: usize,
        /// The line (from 1) where the limit was passed.
        line: usize,
    },
    /// Not well-formed JSON/YAML.
    #[error("malformed document: {0}")]
    Syntax(String),
    /// Well-formed, but not a valid resource; each violation names its field.
    #[error("invalid resource: {0}")]
    Invalid(ValidationError),
    /// A document of a multi-document stream failed.
    #[error("document {index}: {error}")]
    InDocument {
        /// Zero-based position in the stream.
        index: usize,
        /// What went wrong.
        error: Box<ParseError>,
    },
}

impl From<ValidationError> for ParseError {
    fn from(e: ValidationError) -> Self {
        ParseError::Invalid(e)
    }
}

fn check_size(text: &str) -> Result<(), ParseError> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(ParseError::TooLarge {
            size: text.len(),
            limit: MAX_DOCUMENT_BYTES,
        });
    }
    Ok(())
}

/// Refuses `text` if its flow collections (`[...]`, `{...}`) nest deeper than
/// [`MAX_NESTING`]. One pass over the bytes; brackets inside quoted strings count too, so the
/// estimate errs on the side of deeper (a document would need more than a hundred unclosed
/// brackets in its strings to be refused wrongly). Block collections (indentation, `- - -`)
/// cost the parser linear time and are left to its own limit.
pub fn check_nesting(text: &str) -> Result<(), ParseError> {
    let (mut depth, mut line) = (0usize, 1usize);
    for b in text.bytes() {
        match b {
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(ParseError::TooDeep {
                        limit: MAX_NESTING,
                        line,
                    });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'\n' => line += 1,
            _ => {}
        }
    }
    Ok(())
}

/// Whether `text` is meant as JSON: its first non-blank character opens an object.
fn looks_like_json(text: &str) -> bool {
    text.trim_start().starts_with('{')
}

/// Parses one resource from JSON.
pub fn parse_json(text: &str) -> Result<Resource, ParseError> {
    check_size(text)?;
    let value: Value = serde_json::from_str(text).map_err(|e| ParseError::Syntax(e.to_string()))?;
    Ok(Resource::from_value(value)?)
}

/// Parses one resource from YAML, or from JSON (which is YAML): a document that starts with
/// `{` is read by the JSON parser first, and by the YAML parser only if it is not JSON (flow
/// style YAML such as `{type: Mesh, name: m}`).
pub fn parse_yaml(text: &str) -> Result<Resource, ParseError> {
    check_size(text)?;
    if looks_like_json(text)
        && let Ok(value) = serde_json::from_str::<Value>(text)
    {
        return Ok(Resource::from_value(value)?);
    }
    check_nesting(text)?;
    let value: Value =
        serde_norway::from_str(text).map_err(|e| ParseError::Syntax(e.to_string()))?;
    Ok(Resource::from_value(value)?)
}

/// Parses a stream of YAML documents separated by `---`; empty documents are skipped.
pub fn parse_documents(text: &str) -> Result<Vec<Resource>, ParseError> {
    check_size(text)?;
    check_nesting(text)?;
    let mut out = Vec::new();
    for (index, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let in_doc = |error| ParseError::InDocument {
            index,
            error: Box::new(error),
        };
        let value =
            Value::deserialize(doc).map_err(|e| in_doc(ParseError::Syntax(e.to_string())))?;
        if value.is_null() {
            continue;
        }
        out.push(Resource::from_value(value).map_err(|e| in_doc(ParseError::Invalid(e)))?);
    }
    Ok(out)
}

/// Decodes `T` from a JSON value; a failure names the field (`networking.inbound[0].port`).
pub fn decode_value<T: DeserializeOwned>(value: Value) -> Result<T, ValidationError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = render_path(e.path());
        let (path, message) = refine(path, e.into_inner().to_string());
        ValidationError::single(path.to_string(), message)
    })
}

fn is_identifier(key: &str) -> bool {
    key.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn push_key(path: &Path, key: &str) -> Path {
    if is_identifier(key) {
        path.field(key)
    } else {
        path.key(key)
    }
}

fn render_path(p: &serde_path_to_error::Path) -> Path {
    use serde_path_to_error::Segment;
    let mut path = Path::root();
    for seg in p.iter() {
        path = match seg {
            Segment::Seq { index } => path.index(*index),
            Segment::Map { key } => push_key(&path, key),
            Segment::Enum { variant } => push_key(&path, variant),
            Segment::Unknown => path,
        };
    }
    path
}

/// Moves the field named in serde's "missing field `x`" / "unknown field `x`" into the path.
fn refine(path: Path, message: String) -> (Path, String) {
    let named = |prefix: &str| {
        let rest = message.strip_prefix(prefix)?;
        let (name, tail) = rest.split_once('`')?;
        Some((name.to_string(), tail.to_string()))
    };
    if let Some((name, _)) = named("missing field `") {
        return (push_key(&path, &name), "must be defined".to_string());
    }
    if let Some((name, tail)) = named("unknown field `") {
        let tail = tail.trim_start_matches(", ");
        // The path usually names the unknown key already; add it only when it does not.
        let already = path
            .to_string()
            .ends_with(&push_key(&Path::root(), &name).to_string());
        let path = if already {
            path
        } else {
            push_key(&path, &name)
        };
        return (path, format!("unknown field ({tail})"));
    }
    (path, message)
}

const META_FIELDS: &[&str] = &[
    "type",
    "mesh",
    "name",
    "creationTime",
    "modificationTime",
    "labels",
];

fn take_string(
    obj: &mut Map<String, Value>,
    field: &str,
    err: &mut ValidationError,
) -> Option<String> {
    match obj.remove(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            err.add(&Path::at(field), "must be a string");
            None
        }
    }
}

fn take_time(
    obj: &mut Map<String, Value>,
    field: &str,
    err: &mut ValidationError,
) -> Option<DateTime<Utc>> {
    let s = take_string(obj, field, err)?;
    match DateTime::parse_from_rfc3339(&s) {
        Ok(t) => Some(t.with_timezone(&Utc)),
        Err(_) => {
            err.add(&Path::at(field), "must be an RFC 3339 timestamp");
            None
        }
    }
}

impl Resource {
    /// Builds a resource from its JSON form (see the module docs for the two shapes).
    pub fn from_value(value: Value) -> Result<Resource, ValidationError> {
        let Value::Object(mut obj) = value else {
            return Err(ValidationError::single("", "a resource must be an object"));
        };
        let mut err = ValidationError::new();
        let rtype = match take_string(&mut obj, "type", &mut err) {
            None if err.is_empty() => {
                err.add(&Path::at("type"), "must be defined");
                None
            }
            None => None,
            Some(t) => {
                let found = ResourceType::from_name(&t);
                if found.is_none() {
                    err.add(&Path::at("type"), format!("unknown resource type {t:?}"));
                }
                found
            }
        };
        let name = take_string(&mut obj, "name", &mut err).unwrap_or_default();
        let mesh = take_string(&mut obj, "mesh", &mut err).unwrap_or_default();
        let creation_time = take_time(&mut obj, "creationTime", &mut err);
        let modification_time = take_time(&mut obj, "modificationTime", &mut err);
        let labels = match obj.remove("labels") {
            None | Some(Value::Null) => Labels::new(),
            Some(v) => decode_value::<Labels>(v).unwrap_or_else(|e| {
                err.extend_at(&Path::at("labels"), e);
                Labels::new()
            }),
        };
        let Some(rtype) = rtype else { return Err(err) };
        let (spec, status) = if rtype.is_policy() {
            let spec = obj
                .remove("spec")
                .unwrap_or_else(|| Value::Object(Map::new()));
            let status = obj.remove("status").filter(|s| !s.is_null());
            for key in obj.keys() {
                err.add(
                    &push_key(&Path::root(), key),
                    "unknown field (expected one of type, mesh, name, labels, spec, status)",
                );
            }
            let spec =
                Spec::from_value(rtype, spec).map_err(|e| err.extend_at(&Path::at("spec"), e));
            (spec, status)
        } else {
            (
                Spec::from_value(rtype, Value::Object(obj)).map_err(|e| err.extend(e)),
                None,
            )
        };
        match spec {
            Ok(spec) if err.is_empty() => Ok(Resource {
                meta: ResourceMeta {
                    name,
                    mesh,
                    labels,
                    creation_time,
                    modification_time,
                    ..ResourceMeta::default()
                },
                spec,
                status,
            }),
            _ => Err(err),
        }
    }

    /// The resource's JSON form, fields in Kuma's order.
    pub fn to_value(&self) -> Value {
        let rtype = self.rtype();
        let mut obj = Map::new();
        obj.insert("type".into(), rtype.name().into());
        if rtype.scope() == Scope::Mesh {
            obj.insert("mesh".into(), self.meta.mesh.clone().into());
        }
        obj.insert("name".into(), self.meta.name.clone().into());
        let time =
            |t: &DateTime<Utc>| Value::String(t.to_rfc3339_opts(SecondsFormat::AutoSi, true));
        if let Some(t) = &self.meta.creation_time {
            obj.insert("creationTime".into(), time(t));
        }
        if let Some(t) = &self.meta.modification_time {
            obj.insert("modificationTime".into(), time(t));
        }
        if !self.meta.labels.is_empty() {
            let labels = self
                .meta
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            obj.insert("labels".into(), Value::Object(labels));
        }
        let spec = self.spec.to_value();
        if rtype.is_policy() {
            obj.insert("spec".into(), spec);
            if let Some(s) = &self.status {
                obj.insert("status".into(), s.clone());
            }
        } else if let Value::Object(fields) = spec {
            for (k, v) in fields {
                if !META_FIELDS.contains(&k.as_str()) {
                    obj.insert(k, v);
                }
            }
        }
        Value::Object(obj)
    }

    /// Compact JSON.
    pub fn to_json(&self) -> String {
        self.to_value().to_string()
    }

    /// YAML, as `kumactl get -o yaml` prints it.
    pub fn to_yaml(&self) -> String {
        // A `serde_json::Value` always serializes to YAML.
        serde_norway::to_string(&self.to_value()).unwrap_or_default()
    }
}
