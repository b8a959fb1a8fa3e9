//! The storage abstraction every store implements, and its data types.
//!
//! A store keeps resources keyed by (type, mesh, name) and gives three guarantees the rest of the
//! control plane relies on:
//!
//! - **Optimistic concurrency.** Every write assigns a new [`Version`]; an update or delete that
//!   names a version other than the current one fails with [`StoreError::Conflict`] instead of
//!   overwriting someone else's write.
//! - **Ownership.** A resource may be created with an owner; deleting the owner deletes what it
//!   owns, transitively (deleting a Mesh removes everything in it).
//! - **A complete, ordered change stream.** [`ResourceStore::watch`] yields one [`StoreEvent`] per
//!   change, each with a revision one greater than the previous; a consumer that falls behind is
//!   told how many events it missed (`RecvError::Lagged`) and resynchronises with `list`.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::resource::{Resource, ResourceKey, ResourceType, Version};

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// No such resource.
    #[error("{0} not found")]
    NotFound(ResourceKey),
    /// A resource with this key exists already.
    #[error("{0} already exists")]
    AlreadyExists(ResourceKey),
    /// The resource changed since the caller read it.
    #[error(
        "{key} was modified concurrently: expected version {expected}, current version {actual}"
    )]
    Conflict {
        /// The resource.
        key: ResourceKey,
        /// Version the caller had.
        expected: Version,
        /// Version in the store.
        actual: Version,
    },
    /// The owner named on create does not exist.
    #[error("owner {0} not found")]
    OwnerNotFound(ResourceKey),
    /// A list offset that this store did not hand out.
    #[error("invalid offset {0:?}: use the offset returned by the previous page")]
    InvalidOffset(String),
    /// The backend failed (connection lost, ...); the cause is the error's source.
    #[error("store backend error")]
    Backend(#[source] BackendError),
}

/// What a store backend failed at, and why (its [`source`](std::error::Error::source)): the
/// cause is shared, so store errors stay cheap to clone.
#[derive(Debug, Clone)]
pub struct BackendError {
    what: String,
    cause: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl BackendError {
    /// A failure with no underlying error (`what` says it all).
    pub fn new(what: impl Into<String>) -> Self {
        BackendError {
            what: what.into(),
            cause: None,
        }
    }

    /// `what` failed because of `cause` (a database client's error, an I/O error, ...).
    pub fn caused_by(what: impl Into<String>, cause: impl Into<crate::errors::BoxError>) -> Self {
        BackendError {
            what: what.into(),
            cause: Some(Arc::from(cause.into())),
        }
    }
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.what)
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Equal when they say the same: what failed and why.
impl PartialEq for BackendError {
    fn eq(&self, other: &Self) -> bool {
        self.what == other.what
            && self.cause.as_ref().map(ToString::to_string)
                == other.cause.as_ref().map(ToString::to_string)
    }
}

impl Eq for BackendError {}

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A resource was created.
    Create,
    /// A resource was updated.
    Update,
    /// A resource was deleted (directly or by cascade).
    Delete,
}

/// One change in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreEvent {
    /// What happened.
    pub kind: EventKind,
    /// To which resource.
    pub key: ResourceKey,
    /// The resource's version after the change (its last version for deletes).
    pub version: Version,
    /// Position in the store's change stream: each event's revision is one more than the last.
    pub revision: u64,
}

/// A list request: one type, optional filters, optional paging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// The type to list.
    pub rtype: ResourceType,
    /// Only this mesh (`None`: every mesh).
    pub mesh: Option<String>,
    /// Only names containing this text.
    pub name_contains: Option<String>,
    /// Only resources carrying all these labels.
    pub labels: BTreeMap<String, String>,
    /// Only Dataplanes with an inbound (or gateway) matching these tags, Kuma-style: the value
    /// must be contained in the tag's value; `*` matches any.
    pub tags: BTreeMap<String, String>,
    /// Only Dataplanes of this gateway kind (Kuma's `?gateway=` filter).
    pub gateway: Option<GatewayFilter>,
    /// Page size (`None`: everything).
    pub size: Option<usize>,
    /// Where to continue: the `next_offset` of the previous page.
    pub offset: Option<String>,
}

impl ListQuery {
    /// Everything of `rtype`.
    pub fn all(rtype: ResourceType) -> Self {
        ListQuery {
            rtype,
            mesh: None,
            name_contains: None,
            labels: BTreeMap::new(),
            tags: BTreeMap::new(),
            gateway: None,
            size: None,
            offset: None,
        }
    }

    /// Everything of `rtype` in `mesh`.
    pub fn in_mesh(rtype: ResourceType, mesh: &str) -> Self {
        ListQuery {
            mesh: Some(mesh.to_string()),
            ..Self::all(rtype)
        }
    }

    /// Whether `r` passes the filters (not paging). Stores may use this or filter natively.
    pub fn matches(&self, r: &Resource) -> bool {
        r.rtype() == self.rtype
            && self.mesh.as_ref().is_none_or(|m| *m == r.meta.mesh)
            && self
                .name_contains
                .as_ref()
                .is_none_or(|n| r.meta.name.contains(n.as_str()))
            && self
                .labels
                .iter()
                .all(|(k, v)| r.meta.labels.get(k) == Some(v))
            && (self.tags.is_empty()
                || r.spec_as::<crate::model::dataplane::DataplaneSpec>()
                    .is_some_and(|dp| dp.matches_tags_fuzzy(&self.tags)))
            && self.gateway.is_none_or(|g| {
                r.spec_as::<crate::model::dataplane::DataplaneSpec>()
                    .is_some_and(|dp| g.matches(dp))
            })
    }

    /// The numeric position encoded in `offset` (0 when absent).
    pub fn start(&self) -> Result<usize, StoreError> {
        match &self.offset {
            None => Ok(0),
            Some(o) if o.is_empty() => Ok(0),
            Some(o) => o.parse().map_err(|_| StoreError::InvalidOffset(o.clone())),
        }
    }
}

/// Which Dataplanes a list keeps, by their gateway settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayFilter {
    /// Gateways of either kind (`gateway=true`).
    Any,
    /// Ordinary sidecars (`gateway=false`).
    None,
    /// Kuma's built-in gateways (`gateway=builtin`).
    Builtin,
    /// Delegated gateways (`gateway=delegated`).
    Delegated,
}

impl GatewayFilter {
    /// Parses Kuma's `gateway` query value (`true`, `false`, `builtin`, `delegated`).
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "true" => Some(Self::Any),
            "false" => Some(Self::None),
            "builtin" => Some(Self::Builtin),
            "delegated" => Some(Self::Delegated),
            _ => None,
        }
    }

    fn matches(self, dp: &crate::model::dataplane::DataplaneSpec) -> bool {
        use crate::model::dataplane::GatewayType;
        let kind = dp
            .networking
            .as_ref()
            .and_then(|n| n.gateway.as_ref())
            .map(|g| g.kind.unwrap_or(GatewayType::Delegated));
        match self {
            Self::Any => kind.is_some(),
            Self::None => kind.is_none(),
            Self::Builtin => kind == Some(GatewayType::Builtin),
            Self::Delegated => kind == Some(GatewayType::Delegated),
        }
    }
}

/// One page of a list, ordered by mesh, then name.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The resources on this page.
    pub items: Vec<Resource>,
    /// How many resources match the filters in total.
    pub total: usize,
    /// Offset of the next page; `None` on the last page.
    pub next_offset: Option<String>,
}

impl Page {
    /// Cuts a page out of `matching` (already filtered and sorted by mesh, name): counts every
    /// match, clones only the resources on the page.
    pub fn collect<'a>(
        matching: impl Iterator<Item = &'a Resource>,
        query: &ListQuery,
    ) -> Result<Page, StoreError> {
        let start = query.start()?;
        let end = query.size.map(|s| start.saturating_add(s.max(1)));
        let mut total = 0usize;
        let mut items = Vec::new();
        for r in matching {
            if total >= start && end.is_none_or(|end| total < end) {
                items.push(r.clone());
            }
            total += 1;
        }
        if start > total {
            return Err(StoreError::InvalidOffset(start.to_string()));
        }
        let end = end.map_or(total, |e| e.min(total));
        Ok(Page {
            items,
            total,
            next_offset: (end < total).then(|| end.to_string()),
        })
    }
}

/// Storage of resources. Implementations: `kuma_store::MemoryStore` (and PostgreSQL later).
///
/// The store does not validate: the [`crate::manager::ResourceManager`] does, before writing.
#[async_trait]
pub trait ResourceStore: Send + Sync + 'static {
    /// Stores a new resource, optionally owned by `owner`; returns it with its version and times.
    async fn create(
        &self,
        resource: Resource,
        owner: Option<ResourceKey>,
    ) -> Result<Resource, StoreError>;

    /// Replaces a resource. `resource.meta.version` must be the current version, otherwise the
    /// update fails with [`StoreError::Conflict`]. The creation time is kept.
    async fn update(&self, resource: Resource) -> Result<Resource, StoreError>;

    /// Deletes a resource and, transitively, everything it owns. With `version`, fails with
    /// [`StoreError::Conflict`] unless it is the current version.
    async fn delete(&self, key: &ResourceKey, version: Option<&Version>) -> Result<(), StoreError>;

    /// Reads one resource.
    async fn get(&self, key: &ResourceKey) -> Result<Resource, StoreError>;

    /// Lists resources matching `query`, sorted by mesh then name, one page at a time.
    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError>;

    /// Subscribes to every change made after this call.
    fn watch(&self) -> broadcast::Receiver<StoreEvent>;
}
