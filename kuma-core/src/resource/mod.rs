//! Resources: the type registry, the typed [`Spec`] of each type, metadata, and the codec for
//! Kuma's universal JSON and YAML.

mod codec;
mod registry;

pub use codec::{
    MAX_DOCUMENT_BYTES, MAX_NESTING, ParseError, check_nesting, decode_value, parse_documents,
    parse_json, parse_yaml,
};
pub use registry::{CompactSpec, KdsFlags, ResourceType, Scope, Spec, TypedSpec, UntypedSpec};

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};

use crate::model::common::{validate_labels, validate_name};
use crate::validation::{Path, ValidationError};

/// Labels on a resource's metadata.
pub type Labels = BTreeMap<String, String>;

/// A store-assigned version; opaque to clients, different after every write.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version(pub String);

impl Version {
    /// No version yet (a resource that was never stored).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Identity and bookkeeping of a resource.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResourceMeta {
    /// Name, unique per type and mesh.
    pub name: String,
    /// Mesh of a mesh-scoped resource; empty for global-scoped types.
    pub mesh: String,
    /// Labels.
    pub labels: Labels,
    /// Store version (empty before the first write).
    pub version: Version,
    /// Set by the store on create.
    pub creation_time: Option<DateTime<Utc>>,
    /// Set by the store on every write.
    pub modification_time: Option<DateTime<Utc>>,
}

/// What identifies a resource in a store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    /// Type.
    pub rtype: ResourceType,
    /// Mesh (empty for global-scoped types).
    pub mesh: String,
    /// Name.
    pub name: String,
}

impl ResourceKey {
    /// The key of a mesh-scoped resource (or a global one when `mesh` is empty).
    pub fn new(rtype: ResourceType, mesh: &str, name: &str) -> Self {
        ResourceKey {
            rtype,
            mesh: mesh.to_string(),
            name: name.to_string(),
        }
    }

    /// The key of a global-scoped resource.
    pub fn global(rtype: ResourceType, name: &str) -> Self {
        Self::new(rtype, "", name)
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.mesh.is_empty() {
            write!(f, "{} {:?}", self.rtype, self.name)
        } else {
            write!(f, "{} {:?} in mesh {:?}", self.rtype, self.name, self.mesh)
        }
    }
}

/// A resource: metadata, spec and (for policies) status.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// Metadata.
    pub meta: ResourceMeta,
    /// The typed spec; its variant is the resource's type.
    pub spec: Spec,
    /// Status of a policy, kept as written.
    pub status: Option<serde_json::Value>,
}

impl Resource {
    /// A new resource with empty labels and no version.
    pub fn new(mesh: &str, name: &str, spec: impl Into<Spec>) -> Self {
        Resource {
            meta: ResourceMeta {
                name: name.to_string(),
                mesh: mesh.to_string(),
                ..ResourceMeta::default()
            },
            spec: spec.into(),
            status: None,
        }
    }

    /// The resource's type.
    pub fn rtype(&self) -> ResourceType {
        self.spec.rtype()
    }

    /// The resource's store key.
    pub fn key(&self) -> ResourceKey {
        ResourceKey::new(self.rtype(), &self.meta.mesh, &self.meta.name)
    }

    /// The spec as `T` when the resource is of `T`'s type.
    pub fn spec_as<T: TypedSpec>(&self) -> Option<&T> {
        T::from_spec(&self.spec)
    }

    /// Checks name, mesh, labels and spec; every violation is reported with its field path.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.validate_in(&crate::validation::ValidationContext::default())
    }

    /// [`Resource::validate`], also accepting what `context` adds (CA backend types).
    pub fn validate_in(
        &self,
        context: &crate::validation::ValidationContext,
    ) -> Result<(), ValidationError> {
        let mut err = ValidationError::new();
        validate_name(&Path::at("name"), &self.meta.name, &mut err);
        match self.rtype().scope() {
            Scope::Mesh => {
                if self.meta.mesh.is_empty() {
                    err.add(&Path::at("mesh"), "cannot be empty");
                } else {
                    validate_name(&Path::at("mesh"), &self.meta.mesh, &mut err);
                }
            }
            Scope::Global => {
                if !self.meta.mesh.is_empty() {
                    err.add(
                        &Path::at("mesh"),
                        format!("must be empty for the global-scoped type {}", self.rtype()),
                    );
                }
            }
        }
        validate_labels(&Path::at("labels"), &self.meta.labels, &mut err);
        match self.spec_as::<crate::model::mesh::MeshSpec>() {
            Some(mesh) => err.extend(mesh.validate_in(context)),
            None => err.extend(self.spec.validate()),
        }
        err.into_result()
    }
}
