//! Validation errors with Kuma-style field paths.
//!
//! Every check reports into a [`ValidationError`] instead of returning early, so one call lists
//! every violation of a resource at once. Each [`Violation`] names the field it is about with a
//! path such as `networking.inbound[1].tags["kuma.io/service"]`, the shape Kuma's HTTP API puts
//! into `invalid_parameters`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// Checks the `conf` of a Mesh mTLS backend of a type an embedder added: reports into the error
/// with paths under the given one (the backend's `conf`).
pub type CaConfCheck =
    Arc<dyn Fn(&Path, Option<&serde_json::Value>, &mut ValidationError) + Send + Sync>;

/// What validation knows beyond Kuma's own rules: the Mesh mTLS backend types an embedder
/// added (besides `builtin` and `provided`), each with the check of its `conf`. Held by the
/// [`ResourceManager`](crate::manager::ResourceManager) through its options.
#[derive(Clone, Default)]
pub struct ValidationContext {
    ca_backends: BTreeMap<String, CaConfCheck>,
}

impl ValidationContext {
    /// Accepts Mesh mTLS backends of type `kind`, whose `conf` `check` validates.
    pub fn with_ca_backend(mut self, kind: &str, check: CaConfCheck) -> Self {
        self.ca_backends.insert(kind.to_string(), check);
        self
    }

    /// The check of the added CA backend type `kind`.
    pub fn ca_backend(&self, kind: &str) -> Option<&CaConfCheck> {
        self.ca_backends.get(kind)
    }

    /// The added CA backend types.
    pub fn ca_backend_types(&self) -> impl Iterator<Item = &str> {
        self.ca_backends.keys().map(String::as_str)
    }
}

impl fmt::Debug for ValidationContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidationContext")
            .field("ca_backends", &self.ca_backends.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// One broken rule: the field it concerns and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    /// Path of the field, e.g. `networking.inbound[0].port`; empty for the resource as a whole.
    pub field: String,
    /// Human-readable reason.
    #[serde(rename = "reason")]
    pub message: String,
}

/// All violations found in one resource (or config document).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ValidationError {
    violations: Vec<Violation>,
}

impl ValidationError {
    /// An empty error (no violations yet).
    pub fn new() -> Self {
        Self::default()
    }

    /// An error holding a single violation.
    pub fn single(field: impl Into<String>, message: impl Into<String>) -> Self {
        let mut err = Self::new();
        err.violations.push(Violation {
            field: field.into(),
            message: message.into(),
        });
        err
    }

    /// Records a violation at `path`.
    pub fn add(&mut self, path: &Path, message: impl Into<String>) {
        self.violations.push(Violation {
            field: path.to_string(),
            message: message.into(),
        });
    }

    /// Appends every violation of `other`.
    pub fn extend(&mut self, other: ValidationError) {
        self.violations.extend(other.violations);
    }

    /// Appends every violation of `other`, each re-rooted under `prefix`.
    pub fn extend_at(&mut self, prefix: &Path, other: ValidationError) {
        for v in other.violations {
            let field = prefix.join(&v.field);
            self.violations.push(Violation {
                field,
                message: v.message,
            });
        }
    }

    /// True when nothing was reported.
    pub fn is_empty(&self) -> bool {
        self.violations.is_empty()
    }

    /// The violations, in the order they were found.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// `Ok(())` when empty, otherwise `Err(self)`.
    pub fn into_result(self) -> Result<(), ValidationError> {
        if self.is_empty() { Ok(()) } else { Err(self) }
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.violations.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            if v.field.is_empty() {
                f.write_str(&v.message)?;
            } else {
                write!(f, "{}: {}", v.field, v.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ValidationError {}

/// A field path under construction: `Path::root().field("networking").field("inbound").index(0)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Path(String);

impl Path {
    /// The resource root (empty path).
    pub fn root() -> Self {
        Path(String::new())
    }

    /// A path starting at the named field.
    pub fn at(name: &str) -> Self {
        Path(name.to_string())
    }

    /// The path of a struct field below this one.
    pub fn field(&self, name: &str) -> Self {
        if self.0.is_empty() {
            Path(name.to_string())
        } else {
            Path(format!("{}.{}", self.0, name))
        }
    }

    /// The path of a list element below this one.
    pub fn index(&self, i: usize) -> Self {
        Path(format!("{}[{}]", self.0, i))
    }

    /// The path of a map entry below this one: `tags["kuma.io/service"]`.
    pub fn key(&self, key: &str) -> Self {
        Path(format!("{}[{:?}]", self.0, key))
    }

    /// Joins a relative path string (as found in another error) below this one.
    pub fn join(&self, rel: &str) -> String {
        match (self.0.is_empty(), rel.is_empty()) {
            (true, _) => rel.to_string(),
            (false, true) => self.0.clone(),
            (false, false) if rel.starts_with('[') => format!("{}{}", self.0, rel),
            (false, false) => format!("{}.{}", self.0, rel),
        }
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_render_like_kuma() {
        let p = Path::root()
            .field("networking")
            .field("inbound")
            .index(1)
            .field("tags")
            .key("kuma.io/service");
        assert_eq!(
            p.to_string(),
            r#"networking.inbound[1].tags["kuma.io/service"]"#
        );
    }

    #[test]
    fn extend_at_reroots() {
        let mut outer = ValidationError::new();
        let inner = ValidationError::single("kind", "must be defined");
        outer.extend_at(
            &Path::at("spec").field("to").index(0).field("targetRef"),
            inner,
        );
        outer.extend_at(&Path::at("spec"), ValidationError::single("", "whole spec"));
        assert_eq!(outer.violations()[0].field, "spec.to[0].targetRef.kind");
        assert_eq!(outer.violations()[1].field, "spec");
        assert_eq!(
            outer.to_string(),
            "spec.to[0].targetRef.kind: must be defined; spec: whole spec"
        );
    }
}
