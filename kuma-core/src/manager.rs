//! The [`ResourceManager`]: Kuma's rules on top of any [`ResourceStore`].
//!
//! Writers go through the manager, never straight to the store: it applies defaults, validates
//! (every violation with its field path), makes every mesh-scoped resource owned by its Mesh so
//! deleting the Mesh removes it, and refuses to delete a Mesh that still has data planes unless
//! forced.

use std::sync::Arc;

use crate::model::common::ZONE_TAG;
use crate::model::dataplane::DataplaneSpec;
use crate::model::mesh::MeshSpec;
use crate::resource::{Resource, ResourceKey, ResourceType, Scope, Spec};
use crate::store::{ListQuery, Page, ResourceStore, StoreError};
use crate::validation::ValidationError;

/// Name of the mesh created at start.
pub const DEFAULT_MESH: &str = "default";

/// Why a managed operation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ManagerError {
    /// The resource breaks a rule; each violation names its field.
    #[error("invalid resource: {0}")]
    Invalid(ValidationError),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The Mesh still has data planes and the delete was not forced.
    #[error(
        "mesh {mesh:?} still has {dataplanes} data plane(s): delete them first or force the deletion"
    )]
    MeshInUse {
        /// The mesh.
        mesh: String,
        /// How many data planes it has.
        dataplanes: usize,
    },
}

impl From<ValidationError> for ManagerError {
    fn from(e: ValidationError) -> Self {
        ManagerError::Invalid(e)
    }
}

/// Settings of a [`ResourceManager`].
#[derive(Debug, Clone, Default)]
pub struct ManagerOptions {
    /// The zone this control plane runs in; when set, Dataplane inbounds and gateways get
    /// `kuma.io/zone: <zone>` (overwriting what the client sent).
    pub zone: Option<String>,
    /// What validation accepts beyond Kuma's own rules (CA backend types an embedder added).
    pub validation: crate::validation::ValidationContext,
}

/// Whether [`ResourceManager::apply`] created or replaced the resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// It did not exist.
    Created,
    /// It existed and was replaced.
    Updated,
}

/// Validating, defaulting, ownership-enforcing access to a store.
#[derive(Clone)]
pub struct ResourceManager {
    store: Arc<dyn ResourceStore>,
    options: ManagerOptions,
}

impl ResourceManager {
    /// A manager over `store`.
    pub fn new(store: Arc<dyn ResourceStore>, options: ManagerOptions) -> Self {
        ResourceManager { store, options }
    }

    /// The underlying store (for reads and watches).
    pub fn store(&self) -> &Arc<dyn ResourceStore> {
        &self.store
    }

    fn apply_defaults(&self, resource: &mut Resource) {
        let Some(zone) = &self.options.zone else {
            return;
        };
        match &mut resource.spec {
            Spec::Dataplane(dp) => set_zone_tag(dp, zone),
            // A zone proxy registered here is this zone's (one synced from another zone
            // names its own).
            Spec::ZoneIngress(zi) if zi.zone.as_deref().is_none_or(str::is_empty) => {
                zi.zone = Some(zone.clone());
            }
            Spec::ZoneEgress(ze) if ze.zone.as_deref().is_none_or(str::is_empty) => {
                ze.zone = Some(zone.clone());
            }
            _ => {}
        }
    }

    /// What a new resource is owned by: a DataplaneInsight by its Dataplane, a zone proxy's
    /// insight by its ZoneIngress or ZoneEgress, anything else mesh-scoped by its Mesh.
    /// Deleting the owner deletes what it owns.
    fn owner(resource: &Resource) -> Option<ResourceKey> {
        let meta = &resource.meta;
        match resource.rtype() {
            ResourceType::DataplaneInsight => Some(ResourceKey::new(
                ResourceType::Dataplane,
                &meta.mesh,
                &meta.name,
            )),
            ResourceType::ZoneIngressInsight => {
                Some(ResourceKey::global(ResourceType::ZoneIngress, &meta.name))
            }
            ResourceType::ZoneEgressInsight => {
                Some(ResourceKey::global(ResourceType::ZoneEgress, &meta.name))
            }
            t if t.scope() == Scope::Mesh => {
                Some(ResourceKey::global(ResourceType::Mesh, &meta.mesh))
            }
            _ => None,
        }
    }

    fn map_owner_error(e: StoreError, resource: &Resource) -> ManagerError {
        match e {
            StoreError::OwnerNotFound(owner) if owner.rtype == ResourceType::Mesh => {
                ManagerError::Invalid(ValidationError::single(
                    "mesh",
                    format!("mesh {:?} does not exist", resource.meta.mesh),
                ))
            }
            StoreError::OwnerNotFound(owner) => ManagerError::Invalid(ValidationError::single(
                "name",
                format!(
                    "{} {:?} does not exist in mesh {:?}",
                    owner.rtype, owner.name, owner.mesh
                ),
            )),
            e => ManagerError::Store(e),
        }
    }

    /// Validates and stores a new resource.
    pub async fn create(&self, mut resource: Resource) -> Result<Resource, ManagerError> {
        self.apply_defaults(&mut resource);
        resource.validate_in(&self.options.validation)?;
        let owner = Self::owner(&resource);
        let created = self
            .store
            .create(resource.clone(), owner)
            .await
            .map_err(|e| Self::map_owner_error(e, &resource))?;
        if let Spec::Mesh(mesh) = &created.spec {
            self.create_default_policies(&created.meta.name, &mesh.skip_creating_initial_policies)
                .await?;
        }
        Ok(created)
    }

    /// Creates the default policies of a new mesh (those that exist already are kept).
    async fn create_default_policies(
        &self,
        mesh: &str,
        skip: &[String],
    ) -> Result<(), ManagerError> {
        for policy in crate::defaults::default_policies(mesh, skip) {
            let owner = Self::owner(&policy);
            match self.store.create(policy, owner).await {
                Ok(_) | Err(StoreError::AlreadyExists(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Validates and replaces a resource; `resource.meta.version` must be current.
    pub async fn update(&self, mut resource: Resource) -> Result<Resource, ManagerError> {
        self.apply_defaults(&mut resource);
        resource.validate_in(&self.options.validation)?;
        if let Spec::Mesh(new) = &resource.spec {
            let old = self.store.get(&resource.key()).await?;
            if let Some(old) = old.spec_as::<MeshSpec>() {
                new.validate_update(old).into_result()?;
            }
        }
        Ok(self.store.update(resource).await?)
    }

    /// Creates the resource, or replaces the current one whatever its version (Kuma's `PUT`
    /// without `If-Match`: the last writer wins). A write that races another one (a version
    /// conflict, a create that lost to another create, an update whose resource was just
    /// deleted) is retried, up to [`APPLY_ATTEMPTS`] times with a short random pause.
    pub async fn apply(&self, resource: Resource) -> Result<(Resource, Applied), ManagerError> {
        let key = resource.key();
        let mut attempt = 1;
        loop {
            match self.apply_once(resource.clone()).await {
                Err(ManagerError::Store(e)) if attempt < APPLY_ATTEMPTS && raced(&e, &key) => {
                    tokio::time::sleep(retry_pause(attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn apply_once(
        &self,
        mut resource: Resource,
    ) -> Result<(Resource, Applied), ManagerError> {
        match self.store.get(&resource.key()).await {
            Err(StoreError::NotFound(_)) => Ok((self.create(resource).await?, Applied::Created)),
            Err(e) => Err(e.into()),
            Ok(current) => {
                resource.meta.version = current.meta.version;
                Ok((self.update(resource).await?, Applied::Updated))
            }
        }
    }

    /// Deletes a resource and everything it owns. A Mesh with data planes is only deleted when
    /// `force` is set.
    pub async fn delete(&self, key: &ResourceKey, force: bool) -> Result<(), ManagerError> {
        if key.rtype == ResourceType::Mesh && !force {
            let mut q = ListQuery::in_mesh(ResourceType::Dataplane, &key.name);
            q.size = Some(1);
            let dataplanes = self.store.list(&q).await?.total;
            if dataplanes > 0 {
                // Report NotFound first, as a delete of a missing mesh would.
                self.store.get(key).await?;
                return Err(ManagerError::MeshInUse {
                    mesh: key.name.clone(),
                    dataplanes,
                });
            }
        }
        Ok(self.store.delete(key, None).await?)
    }

    /// Reads one resource.
    pub async fn get(&self, key: &ResourceKey) -> Result<Resource, ManagerError> {
        Ok(self.store.get(key).await?)
    }

    /// Lists resources.
    pub async fn list(&self, query: &ListQuery) -> Result<Page, ManagerError> {
        Ok(self.store.list(query).await?)
    }

    /// Every targetRef policy of `mesh`, of every policy type.
    pub async fn mesh_policies(&self, mesh: &str) -> Result<Vec<Resource>, ManagerError> {
        let mut policies = Vec::new();
        for rtype in ResourceType::ALL.iter().filter(|t| t.is_policy()) {
            policies.extend(self.list(&ListQuery::in_mesh(*rtype, mesh)).await?.items);
        }
        Ok(policies)
    }

    /// Creates the `default` mesh unless it exists. Returns whether it was created.
    pub async fn ensure_default_mesh(&self) -> Result<bool, ManagerError> {
        let mesh = Resource::new("", DEFAULT_MESH, MeshSpec::default());
        match self.create(mesh).await {
            Ok(_) => Ok(true),
            Err(ManagerError::Store(StoreError::AlreadyExists(_))) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// How many times [`ResourceManager::apply`] tries a write that keeps racing others.
pub const APPLY_ATTEMPTS: u32 = 100;

/// Whether `e`, from writing `key`, means another writer got there first.
fn raced(e: &StoreError, key: &ResourceKey) -> bool {
    match e {
        StoreError::Conflict { .. } | StoreError::AlreadyExists(_) => true,
        StoreError::NotFound(k) => k == key,
        _ => false,
    }
}

/// A pause before retry `attempt`: random, up to 0.2 ms per attempt so far (at most 5 ms),
/// so that writers that collided do not collide again in step.
fn retry_pause(attempt: u32) -> std::time::Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    // Mix the clock's low bits so that consecutive calls do not pause alike.
    let random = u64::from(nanos).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
    let ceiling_us = u64::from(attempt.min(25)) * 200;
    std::time::Duration::from_micros(random % ceiling_us.max(1))
}

fn set_zone_tag(dp: &mut DataplaneSpec, zone: &str) {
    if let Some(n) = dp.networking.as_mut() {
        for inbound in &mut n.inbound {
            inbound.tags.insert(ZONE_TAG.to_string(), zone.to_string());
        }
        if let Some(g) = n.gateway.as_mut() {
            g.tags.insert(ZONE_TAG.to_string(), zone.to_string());
        }
    }
}
