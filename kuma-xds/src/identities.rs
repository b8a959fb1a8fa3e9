//! Mesh mTLS for config generation: each mesh's CA, and each proxy's workload certificate,
//! kept until it must be replaced.
//!
//! A proxy's certificate is issued when it first needs one and re-issued when
//! - 80 % of its lifetime has passed (the reconciler wakes up for that: [`Identities::next_renewal`]);
//! - what it asserts changed: the proxy's services or tags, the SAN layout, or the lifetime
//!   (`dpCert.rotation.expiration`, 24 h by default);
//! - the mesh's roots changed (another backend, a replaced provided CA).
//!
//! Envoy swaps a renewed certificate in through SDS: open connections keep going.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::generate::{MeshMtls, WorkloadCertificate};
use kuma_ca::ca::{CertificateAuthority, Identity, IdentityRequest, KeyType, SanLayout};
use kuma_ca::config::MtlsConfig;
use kuma_ca::mesh_ca::{CaManagers, MeshCaError};
use kuma_core::duration::parse_mesh_duration;
use kuma_core::manager::ResourceManager;
use kuma_core::model::common::SERVICE_TAG;
use kuma_core::model::dataplane::DataplaneSpec;
use kuma_core::model::mesh::{MeshSpec, MtlsMode};

/// Kuma's default workload certificate lifetime.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The mTLS of one mesh, ready to issue certificates.
pub struct MeshAuthority {
    /// What config generation needs.
    pub mtls: MeshMtls,
    ca: Arc<dyn CertificateAuthority>,
    lifetime: Duration,
}

struct Issued {
    request: IdentityRequest,
    root_pem: String,
    cert: WorkloadCertificate,
    renew_at: SystemTime,
}

/// Loads mesh CAs and keeps every proxy's workload certificate.
pub struct Identities {
    manager: ResourceManager,
    key_type: KeyType,
    layout: SanLayout,
    /// By (mesh, Dataplane name).
    issued: BTreeMap<(String, String), Issued>,
    /// The bootstrap cluster secrets are fetched through (`None`: over ADS).
    sds_cluster: Option<String>,
    /// The CA managers by backend type.
    cas: CaManagers,
}

impl Identities {
    /// Identities issued as `config` says.
    pub fn new(manager: ResourceManager, config: &MtlsConfig) -> Self {
        Identities {
            manager,
            key_type: config.key_type,
            layout: config.san_layout,
            issued: BTreeMap::new(),
            sds_cluster: None,
            cas: CaManagers::bundled(),
        }
    }

    /// Loads mesh CAs with `cas` (by backend type) instead of the bundled ones only.
    pub fn set_ca_managers(&mut self, cas: CaManagers) {
        self.cas = cas;
    }

    /// Proxies fetch their secrets through the bootstrap cluster `cluster` (an SDS port of
    /// its own) instead of over their ADS stream.
    pub fn set_sds_cluster(&mut self, cluster: &str) {
        self.sds_cluster = Some(cluster.to_string());
    }

    /// The mTLS of `mesh` (`None` when it has no enabled backend), loading its CA (a builtin
    /// one is created on first use).
    pub async fn mesh(
        &self,
        mesh: &str,
        spec: &MeshSpec,
    ) -> Result<Option<MeshAuthority>, MeshCaError> {
        let Some(mtls) = spec.mtls.as_ref() else {
            return Ok(None);
        };
        let Some(enabled) = mtls.enabled_backend.as_deref().filter(|b| !b.is_empty()) else {
            return Ok(None);
        };
        let Some(backend) = mtls.backends.iter().find(|b| b.name == enabled) else {
            return Err(MeshCaError::Invalid {
                secret: format!("mesh {mesh:?} mtls.enabledBackend"),
                source: kuma_ca::ca::CaError::invalid(format!("no backend is named {enabled:?}")),
            });
        };
        let ca = self
            .cas
            .load(&self.manager, mesh, backend, self.key_type)
            .await?;
        let lifetime = backend
            .dp_cert
            .as_ref()
            .and_then(|d| d.rotation.as_ref())
            .and_then(|r| r.expiration.as_deref())
            .and_then(|e| parse_mesh_duration(e).ok())
            .unwrap_or(DEFAULT_LIFETIME);
        Ok(Some(MeshAuthority {
            mtls: MeshMtls {
                permissive: backend.mode() == MtlsMode::Permissive,
                ca_pem: ca.root_pem().to_string(),
                strict_spiffe: self.layout == SanLayout::StrictSpiffe,
                sds_cluster: self.sds_cluster.clone(),
            },
            ca,
            lifetime,
        }))
    }

    /// What the certificate of a proxy running `dp` in `mesh` asserts.
    fn request(
        &self,
        authority: &MeshAuthority,
        mesh: &str,
        dp: &DataplaneSpec,
    ) -> IdentityRequest {
        let mut services = BTreeSet::new();
        let mut tags: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for inbound in dp.inbounds() {
            for (k, v) in &inbound.tags {
                if k == SERVICE_TAG {
                    services.insert(v.clone());
                }
                tags.entry(k.clone()).or_default().insert(v.clone());
            }
        }
        IdentityRequest {
            mesh: mesh.to_string(),
            services,
            tags,
            lifetime: authority.lifetime,
            layout: self.layout,
        }
    }

    /// Whether the certificate kept for `key` answers `request` from `authority` at `now`.
    fn is_current(
        &self,
        key: &(String, String),
        request: &IdentityRequest,
        authority: &MeshAuthority,
        now: SystemTime,
    ) -> bool {
        self.issued.get(key).is_some_and(|i| {
            &i.request == request && i.root_pem == authority.mtls.ca_pem && now < i.renew_at
        })
    }

    fn keep(
        &mut self,
        key: (String, String),
        request: IdentityRequest,
        identity: Identity,
        authority: &MeshAuthority,
        issued_at: SystemTime,
    ) {
        tracing::info!(mesh = %key.0, dataplane = %key.1, expires = ?identity.not_after, "issued a workload certificate");
        self.issued.insert(
            key,
            Issued {
                renew_at: identity.renew_at(issued_at),
                request,
                root_pem: authority.mtls.ca_pem.clone(),
                cert: WorkloadCertificate {
                    cert_pem: identity.cert_pem,
                    key_pem: identity.key_pem,
                },
            },
        );
    }

    /// Issues, on every core, the certificates `proxies` (Dataplane names and specs in `mesh`)
    /// are missing or must replace, so that [`Identities::certificate`] finds them ready. Key
    /// generation is the cost of issuing (tens of milliseconds for RSA), and a mesh enabling
    /// mTLS needs one per proxy at once. Failures are left for `certificate` to report.
    pub fn prepare<'d>(
        &mut self,
        authority: &MeshAuthority,
        mesh: &str,
        proxies: impl IntoIterator<Item = (&'d str, &'d DataplaneSpec)>,
    ) {
        let now = SystemTime::now();
        let wanted: Vec<((String, String), IdentityRequest)> = proxies
            .into_iter()
            .map(|(name, dp)| {
                (
                    (mesh.to_string(), name.to_string()),
                    self.request(authority, mesh, dp),
                )
            })
            .filter(|(key, request)| !self.is_current(key, request, authority, now))
            .collect();
        if wanted.len() < 2 {
            return;
        }
        let threads = std::thread::available_parallelism()
            .map_or(1, std::num::NonZeroUsize::get)
            .min(wanted.len());
        let chunk = wanted.len().div_ceil(threads);
        let ca = &authority.ca;
        let issued: Vec<_> = std::thread::scope(|scope| {
            let workers: Vec<_> = wanted
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .map(|(key, request)| (key, request, ca.issue(request)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap_or_default())
                .collect()
        });
        for (key, request, result) in issued {
            if let Ok(identity) = result {
                self.keep(key.clone(), request.clone(), identity, authority, now);
            }
        }
    }

    /// The workload certificate of Dataplane `name` (spec `dp`) in `mesh`: the one issued
    /// before while it is current, a new one otherwise.
    pub fn certificate(
        &mut self,
        authority: &MeshAuthority,
        mesh: &str,
        name: &str,
        dp: &DataplaneSpec,
    ) -> Result<&WorkloadCertificate, kuma_ca::ca::CaError> {
        let request = self.request(authority, mesh, dp);
        let key = (mesh.to_string(), name.to_string());
        let now = SystemTime::now();
        if !self.is_current(&key, &request, authority, now) {
            let identity = authority.ca.issue(&request)?;
            self.keep(key.clone(), request, identity, authority, now);
        }
        Ok(&self.issued[&key].cert)
    }

    /// Forgets the certificates of `mesh` except those of `keep` (Dataplane names).
    pub fn retain(&mut self, mesh: &str, keep: impl Fn(&str) -> bool) {
        self.issued
            .retain(|(m, name), _| m != mesh || keep(name.as_str()));
    }

    /// When the next certificate is due for renewal, and whose it is: (mesh, Dataplane name).
    pub fn next_renewal(&self) -> Option<(SystemTime, &str, &str)> {
        self.issued
            .iter()
            .map(|((mesh, name), i)| (i.renew_at, mesh.as_str(), name.as_str()))
            .min()
    }

    /// The Dataplanes whose certificates are due at `now`, by mesh.
    pub fn due(&self, now: SystemTime) -> BTreeMap<String, BTreeSet<String>> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for ((mesh, name), i) in &self.issued {
            if i.renew_at <= now {
                out.entry(mesh.clone()).or_default().insert(name.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use kuma_core::manager::ManagerOptions;
    use kuma_core::resource::{Resource, parse_yaml};

    fn dataplane(version: &str) -> Resource {
        parse_yaml(&format!(
            "type: Dataplane\nmesh: default\nname: web-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: 80\n    tags: {{kuma.io/service: web, version: {version}}}\n"
        ))
        .unwrap()
    }

    fn mesh(expiration: &str) -> MeshSpec {
        let mesh = parse_yaml(&format!(
            "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n    dpCert: {{rotation: {{expiration: {expiration}}}}}\n"
        ))
        .unwrap();
        mesh.spec_as::<MeshSpec>().cloned().unwrap()
    }

    #[tokio::test]
    async fn certificates_are_kept_until_due_or_changed() {
        let manager = ResourceManager::new(
            Arc::new(kuma_store::MemoryStore::new()),
            ManagerOptions::default(),
        );
        manager
            .create(parse_yaml("type: Mesh\nname: default\n").unwrap())
            .await
            .unwrap();
        let config = MtlsConfig {
            key_type: KeyType::EcdsaP256,
            ..Default::default()
        };
        let mut ids = Identities::new(manager.clone(), &config);
        assert!(
            ids.mesh("default", &MeshSpec::default())
                .await
                .unwrap()
                .is_none()
        );

        let authority = ids.mesh("default", &mesh("1h")).await.unwrap().unwrap();
        let v1 = dataplane("v1");
        let spec = v1.spec_as::<DataplaneSpec>().unwrap();
        let first = ids
            .certificate(&authority, "default", "web-1", spec)
            .unwrap()
            .clone();
        // The same request: the same certificate. Its renewal is due at 80 % of an hour.
        let again = ids
            .certificate(&authority, "default", "web-1", spec)
            .unwrap();
        assert_eq!(again, &first);
        let (due, mesh_name, name) = ids.next_renewal().unwrap();
        assert_eq!((mesh_name, name), ("default", "web-1"));
        let in_48_min = SystemTime::now() + Duration::from_secs(48 * 60);
        assert!(due <= in_48_min && due > in_48_min - Duration::from_secs(60));
        assert!(ids.due(SystemTime::now()).is_empty());
        assert_eq!(ids.due(in_48_min).len(), 1);

        // Another tag value, another certificate.
        let v2 = dataplane("v2");
        let changed = ids
            .certificate(&authority, "default", "web-1", v2.spec_as().unwrap())
            .unwrap()
            .clone();
        assert_ne!(changed, first);

        // A 1 s lifetime: due within the second, then replaced.
        let short = ids.mesh("default", &mesh("1s")).await.unwrap().unwrap();
        let brief = ids
            .certificate(&short, "default", "web-1", v2.spec_as().unwrap())
            .unwrap()
            .clone();
        assert_ne!(brief, changed);
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(ids.due(SystemTime::now()).contains_key("default"));
        let renewed = ids
            .certificate(&short, "default", "web-1", v2.spec_as().unwrap())
            .unwrap();
        assert_ne!(renewed, &brief);

        // Preparing a batch issues every missing certificate at once; they are then served.
        let authority = ids.mesh("default", &mesh("1h")).await.unwrap().unwrap();
        let batch: Vec<(String, Resource)> = (0..4)
            .map(|i| (format!("batch-{i}"), dataplane(&format!("v{i}"))))
            .collect();
        ids.prepare(
            &authority,
            "default",
            batch
                .iter()
                .map(|(n, r)| (n.as_str(), r.spec_as::<DataplaneSpec>().unwrap())),
        );
        let far = SystemTime::now() + Duration::from_secs(3600);
        assert_eq!(ids.due(far)["default"].len(), 5, "web-1 and the batch");
        for (n, r) in &batch {
            let prepared = ids
                .certificate(&authority, "default", n, r.spec_as().unwrap())
                .unwrap()
                .clone();
            let again = ids
                .certificate(&authority, "default", n, r.spec_as().unwrap())
                .unwrap();
            assert_eq!(again, &prepared);
        }

        // A mesh without mTLS forgets its certificates.
        ids.retain("default", |_| false);
        assert!(ids.next_renewal().is_none());
    }
}
