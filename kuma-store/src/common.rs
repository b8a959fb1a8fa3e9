//! What the stores share: the version check of every update and conditional delete, and, for
//! the SQL stores, how a resource becomes a row and comes back.

use kuma_core::resource::{ResourceKey, Version};
use kuma_core::store::StoreError;

/// Fails with [`StoreError::Conflict`] unless the caller's version `given` is `current`.
pub(crate) fn check_version(
    key: &ResourceKey,
    current: &Version,
    given: &Version,
) -> Result<(), StoreError> {
    if current != given {
        return Err(StoreError::Conflict {
            key: key.clone(),
            expected: given.clone(),
            actual: current.clone(),
        });
    }
    Ok(())
}

#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) use sql::*;

#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod sql {
    use chrono::{DateTime, SubsecRound, Utc};
    use kuma_core::resource::{Resource, Version};
    use kuma_core::store::{BackendError, StoreError};
    use serde_json::Value;

    /// The current time at the databases' precision (microseconds), so what a write returns
    /// equals what a later read returns.
    pub(crate) fn now() -> DateTime<Utc> {
        Utc::now().trunc_subsecs(6)
    }

    /// The document stored for `r`: its universal JSON without the times (columns of their
    /// own, as the version is).
    pub(crate) fn document(r: &Resource) -> Value {
        let mut doc = r.to_value();
        if let Some(o) = doc.as_object_mut() {
            o.remove("creationTime");
            o.remove("modificationTime");
        }
        doc
    }

    /// A resource back from its stored document, version and times.
    pub(crate) fn restore(
        doc: Value,
        version: i64,
        created: DateTime<Utc>,
        modified: DateTime<Utc>,
    ) -> Result<Resource, StoreError> {
        let mut r = Resource::from_value(doc).map_err(|e| {
            StoreError::Backend(BackendError::caused_by(
                "a stored resource does not decode",
                e,
            ))
        })?;
        r.meta.version = Version(version.to_string());
        r.meta.creation_time = Some(created);
        r.meta.modification_time = Some(modified);
        Ok(r)
    }
}
