//! A mesh's CA backends: [`CaManager`] loads the CA of one backend type, [`CaManagers`] holds
//! them by type name (`builtin` and `provided` bundled; add others, a Vault-style one say,
//! without editing this crate). Where a mesh's builtin CA lives: the mesh-scoped secrets Kuma uses,
//! `<mesh>.ca-builtin-cert-<backend>` and `<mesh>.ca-builtin-key-<backend>` (PEM). Being
//! mesh-scoped, they are owned by the Mesh: deleting the mesh deletes its CA.

use std::collections::BTreeMap;
use std::sync::Arc;

use kuma_core::manager::{ManagerError, ResourceManager};
use kuma_core::model::common::DataSource;
use kuma_core::model::mesh::CaBackend;
use kuma_core::model::system::SecretSpec;
use kuma_core::resource::{Resource, ResourceKey, ResourceType, Spec};
use kuma_core::store::StoreError;
use kuma_core::validation::{Path, ValidationContext, ValidationError};

use crate::ca::{BuiltinCa, CaError, CertificateAuthority, KeyType, ProvidedCa};

/// Why a mesh's CA could not be loaded or stored.
#[derive(Debug, thiserror::Error)]
pub enum MeshCaError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] ManagerError),
    /// The stored CA is unusable.
    #[error("{secret}")]
    Invalid {
        /// The secret.
        secret: String,
        /// Why.
        source: CaError,
    },
    /// The builtin CA is made by the global control plane and has not reached this federated
    /// zone yet (it arrives with the mesh's secrets).
    #[error(
        "the builtin CA of mesh {mesh:?} backend {backend:?} comes from the global control plane and has not arrived yet"
    )]
    NotYetSynced {
        /// The mesh.
        mesh: String,
        /// The backend's name.
        backend: String,
    },
    /// A backend added by an embedder failed.
    #[error("mesh {mesh:?} mtls backend {backend:?}")]
    Backend {
        /// The mesh.
        mesh: String,
        /// The backend's name.
        backend: String,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Loads the CA of one Mesh mTLS backend type (Kuma's CA managers). Register it under its type
/// name in [`CaManagers`]; a Mesh whose backend has that `type` is then accepted, its `conf`
/// checked by [`CaManager::validate_conf`], and its proxies' certificates issued by the CA
/// [`CaManager::load`] returns.
///
/// ```
/// use std::sync::Arc;
///
/// use kuma_ca::ca::{BuiltinCa, CertificateAuthority, KeyType};
/// use kuma_ca::mesh_ca::{CaManager, CaManagers, MeshCaError};
/// use kuma_core::manager::ResourceManager;
/// use kuma_core::model::mesh::CaBackend;
///
/// /// A CA made in memory at each load (a real one would fetch it from its vault).
/// struct Ephemeral;
///
/// #[async_trait::async_trait]
/// impl CaManager for Ephemeral {
///     async fn load(
///         &self,
///         _manager: &ResourceManager,
///         mesh: &str,
///         backend: &CaBackend,
///         key_type: KeyType,
///     ) -> Result<Arc<dyn CertificateAuthority>, MeshCaError> {
///         let ca = BuiltinCa::generate(mesh, key_type).map_err(|e| MeshCaError::Backend {
///             mesh: mesh.into(),
///             backend: backend.name.clone(),
///             source: e.into(),
///         })?;
///         Ok(Arc::new(ca))
///     }
/// }
///
/// let managers = CaManagers::bundled().with("ephemeral", Arc::new(Ephemeral));
/// assert_eq!(managers.types().collect::<Vec<_>>(), ["builtin", "ephemeral", "provided"]);
/// ```
#[async_trait::async_trait]
pub trait CaManager: Send + Sync + 'static {
    /// Checks a backend's `conf` when a Mesh is applied, reporting with paths under `path`
    /// (the backend's `conf`). Accepts anything unless overridden.
    fn validate_conf(
        &self,
        _path: &Path,
        _conf: Option<&serde_json::Value>,
        _err: &mut ValidationError,
    ) {
    }

    /// Whether this is the crate's own manager of `builtin` and `provided` (keep the
    /// default).
    #[doc(hidden)]
    fn is_bundled(&self) -> bool {
        false
    }

    /// The CA of `backend` of `mesh`, loaded (or created) through `manager`'s store or
    /// elsewhere; certificates it issues use `key_type`.
    async fn load(
        &self,
        manager: &ResourceManager,
        mesh: &str,
        backend: &CaBackend,
        key_type: KeyType,
    ) -> Result<Arc<dyn CertificateAuthority>, MeshCaError>;
}

/// The bundled types: `builtin` ([`ensure_builtin`]) and `provided` (from data sources).
struct Bundled {
    /// Whether a missing builtin CA is made here (not on a federated zone, where global's
    /// arrives).
    create_builtin: bool,
}

#[async_trait::async_trait]
impl CaManager for Bundled {
    fn is_bundled(&self) -> bool {
        true
    }

    async fn load(
        &self,
        manager: &ResourceManager,
        mesh: &str,
        backend: &CaBackend,
        key_type: KeyType,
    ) -> Result<Arc<dyn CertificateAuthority>, MeshCaError> {
        if backend.kind == "builtin" && !self.create_builtin {
            return match load_builtin(manager, mesh, &backend.name, key_type).await? {
                Some(ca) => Ok(Arc::new(ca)),
                None => Err(MeshCaError::NotYetSynced {
                    mesh: mesh.to_string(),
                    backend: backend.name.clone(),
                }),
            };
        }
        load_backend(manager, mesh, backend, key_type).await
    }
}

/// CA managers by backend type name.
#[derive(Clone)]
pub struct CaManagers {
    by_type: BTreeMap<String, Arc<dyn CaManager>>,
}

impl CaManagers {
    /// `builtin` and `provided`, as Kuma has them.
    pub fn bundled() -> Self {
        let bundled: Arc<dyn CaManager> = Arc::new(Bundled {
            create_builtin: true,
        });
        CaManagers {
            by_type: [("builtin", bundled.clone()), ("provided", bundled)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        }
    }

    /// As on a federated zone: the bundled `builtin` manager loads the CA global made (synced
    /// with the mesh's secrets) and never makes one of its own, so that every zone of a mesh
    /// trusts the same roots. A `builtin` manager added with [`Self::with`] is kept.
    pub fn federated(mut self) -> Self {
        let bundled_builtin = self.by_type.get("builtin").is_some_and(|m| m.is_bundled());
        if bundled_builtin {
            self.by_type.insert(
                "builtin".into(),
                Arc::new(Bundled {
                    create_builtin: false,
                }),
            );
        }
        self
    }

    /// Adds (or replaces) the manager of backends of type `kind`.
    pub fn with(mut self, kind: &str, manager: Arc<dyn CaManager>) -> Self {
        self.by_type.insert(kind.to_string(), manager);
        self
    }

    /// The type names served.
    pub fn types(&self) -> impl Iterator<Item = &str> {
        self.by_type.keys().map(String::as_str)
    }

    /// The CA of `backend` of `mesh`, by its manager; an unknown type is an error naming it.
    pub async fn load(
        &self,
        manager: &ResourceManager,
        mesh: &str,
        backend: &CaBackend,
        key_type: KeyType,
    ) -> Result<Arc<dyn CertificateAuthority>, MeshCaError> {
        match self.by_type.get(&backend.kind) {
            Some(m) => m.load(manager, mesh, backend, key_type).await,
            None => Err(MeshCaError::Invalid {
                secret: format!("mesh {mesh:?} mtls backend {:?} type", backend.name),
                source: CaError::invalid(format!(
                    "{:?} is not a CA type (one of {})",
                    backend.kind,
                    self.types().collect::<Vec<_>>().join(", ")
                )),
            }),
        }
    }

    /// What Mesh validation must accept for the added types (`builtin` and `provided` are
    /// Kuma's own rules): give it to the resource manager's options.
    pub fn validation(&self) -> ValidationContext {
        self.by_type
            .iter()
            .filter(|(kind, _)| !matches!(kind.as_str(), "builtin" | "provided"))
            .fold(ValidationContext::default(), |context, (kind, m)| {
                let m = m.clone();
                context.with_ca_backend(
                    kind,
                    Arc::new(move |path, conf, err| m.validate_conf(path, conf, err)),
                )
            })
    }
}

/// The names of the secrets holding `backend` of `mesh`: (certificate, key).
pub fn builtin_secret_names(mesh: &str, backend: &str) -> (String, String) {
    (
        format!("{mesh}.ca-builtin-cert-{backend}"),
        format!("{mesh}.ca-builtin-key-{backend}"),
    )
}

async fn read_secret(
    manager: &ResourceManager,
    mesh: &str,
    name: &str,
) -> Result<Option<String>, MeshCaError> {
    match manager
        .get(&ResourceKey::new(ResourceType::Secret, mesh, name))
        .await
    {
        Ok(r) => {
            let Spec::Secret(s) = &r.spec else {
                return Ok(None);
            };
            let text = s
                .bytes()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| MeshCaError::Invalid {
                    secret: name.to_string(),
                    source: CaError::invalid("the secret is not PEM text"),
                })?;
            Ok(Some(text))
        }
        Err(ManagerError::Store(StoreError::NotFound(_))) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The builtin CA of `backend` in `mesh` from its secrets, if they exist.
pub async fn load_builtin(
    manager: &ResourceManager,
    mesh: &str,
    backend: &str,
    key_type: KeyType,
) -> Result<Option<BuiltinCa>, MeshCaError> {
    let (cert_name, key_name) = builtin_secret_names(mesh, backend);
    let (Some(cert), Some(key)) = (
        read_secret(manager, mesh, &cert_name).await?,
        read_secret(manager, mesh, &key_name).await?,
    ) else {
        return Ok(None);
    };
    BuiltinCa::from_pem(&cert, &key, key_type)
        .map(Some)
        .map_err(|source| MeshCaError::Invalid {
            secret: cert_name,
            source,
        })
}

/// The builtin CA of `backend` in `mesh`: loaded from its secrets, or generated with keys of
/// `key_type` and stored on first use. Several control planes may race to create it; the
/// first stored pair wins and every instance then uses it.
pub async fn ensure_builtin(
    manager: &ResourceManager,
    mesh: &str,
    backend: &str,
    key_type: KeyType,
) -> Result<BuiltinCa, MeshCaError> {
    let (cert_name, key_name) = builtin_secret_names(mesh, backend);
    for _ in 0..2 {
        if let Some(ca) = load_builtin(manager, mesh, backend, key_type).await? {
            return Ok(ca);
        }
        let ca = BuiltinCa::generate(mesh, key_type).map_err(|source| MeshCaError::Invalid {
            secret: cert_name.clone(),
            source,
        })?;
        let (cert, key) = ca.to_pem();
        // The key first: a certificate without its key is never visible.
        let stored = async {
            for (name, pem) in [(&key_name, key), (&cert_name, cert)] {
                let secret = Resource::new(
                    mesh,
                    name,
                    Spec::Secret(SecretSpec::from_bytes(pem.as_bytes())),
                );
                manager.create(secret).await?;
            }
            Ok::<(), ManagerError>(())
        }
        .await;
        match stored {
            Ok(()) => return Ok(ca),
            // Another instance is creating it: read theirs.
            Err(ManagerError::Store(StoreError::AlreadyExists(_))) => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(MeshCaError::Invalid {
        secret: cert_name,
        source: CaError::invalid("another instance created a key without its certificate"),
    })
}

/// The CA of `backend` of `mesh`: a `builtin` one through [`ensure_builtin`], a `provided`
/// one from its `conf.cert` and `conf.key` data sources (a secret of the mesh, a file on the
/// control plane, or inline). Errors name the backend and what is wrong with it.
pub async fn load_backend(
    manager: &ResourceManager,
    mesh: &str,
    backend: &CaBackend,
    key_type: KeyType,
) -> Result<Arc<dyn CertificateAuthority>, MeshCaError> {
    let secret = |what: &str| format!("mesh {mesh:?} mtls backend {:?} {what}", backend.name);
    let invalid = |what: &str, message: String| MeshCaError::Invalid {
        secret: secret(what),
        source: CaError::invalid(message),
    };
    match backend.kind.as_str() {
        "builtin" => Ok(Arc::new(
            ensure_builtin(manager, mesh, &backend.name, key_type).await?,
        )),
        "provided" => {
            let conf = backend.provided_conf().map_err(|e| MeshCaError::Invalid {
                secret: secret("conf"),
                source: CaError::invalid_because("the conf does not decode", e),
            })?;
            let mut pems = Vec::new();
            for (field, source) in [("cert", &conf.cert), ("key", &conf.key)] {
                let source = source
                    .as_ref()
                    .ok_or_else(|| invalid(&format!("conf.{field}"), "must be defined".into()))?;
                let pem = read_data_source(manager, mesh, source)
                    .await?
                    .ok_or_else(|| invalid(&format!("conf.{field}"), "cannot be read".into()))?;
                pems.push(pem);
            }
            let ca = ProvidedCa::from_pem(&pems[0], &pems[1], key_type).map_err(|source| {
                MeshCaError::Invalid {
                    secret: secret("conf"),
                    source,
                }
            })?;
            Ok(Arc::new(ca))
        }
        other => Err(invalid(
            "type",
            format!("{other:?} is not a CA type (\"builtin\" or \"provided\")"),
        )),
    }
}

/// The text of `source` (`None` when its secret or file does not exist, or it is not UTF-8).
pub async fn read_data_source(
    manager: &ResourceManager,
    mesh: &str,
    source: &DataSource,
) -> Result<Option<String>, MeshCaError> {
    use base64::Engine as _;
    if let Some(name) = &source.secret {
        return read_secret(manager, mesh, name).await;
    }
    if let Some(path) = &source.file {
        return Ok(std::fs::read_to_string(path).ok());
    }
    if let Some(b64) = &source.inline {
        return Ok(base64::engine::general_purpose::STANDARD
            .decode(b64)
            .ok()
            .and_then(|b| String::from_utf8(b).ok()));
    }
    Ok(source.inline_string.clone())
}
