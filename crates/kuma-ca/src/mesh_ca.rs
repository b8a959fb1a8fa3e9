//! Where a mesh's builtin CA lives: the mesh-scoped secrets Kuma uses,
//! `<mesh>.ca-builtin-cert-<backend>` and `<mesh>.ca-builtin-key-<backend>` (PEM). Being
//! mesh-scoped, they are owned by the Mesh: deleting the mesh deletes its CA.

use kuma_core::manager::{ManagerError, ResourceManager};
use kuma_core::model::system::SecretSpec;
use kuma_core::resource::{Resource, ResourceKey, ResourceType, Spec};
use kuma_core::store::StoreError;

use crate::ca::{BuiltinCa, CaError, KeyType};

/// Why a mesh's CA could not be loaded or stored.
#[derive(Debug, thiserror::Error)]
pub enum MeshCaError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] ManagerError),
    /// The stored CA is unusable.
    #[error("{secret}: {source}")]
    Invalid {
        /// The secret.
        secret: String,
        /// Why.
        source: CaError,
    },
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
                    source: CaError::InvalidCa("the secret is not PEM text".into()),
                })?;
            Ok(Some(text))
        }
        Err(ManagerError::Store(StoreError::NotFound(_))) => Ok(None),
        Err(e) => Err(e.into()),
    }
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
        if let (Some(cert), Some(key)) = (
            read_secret(manager, mesh, &cert_name).await?,
            read_secret(manager, mesh, &key_name).await?,
        ) {
            return BuiltinCa::from_pem(&cert, &key, key_type).map_err(|source| {
                MeshCaError::Invalid {
                    secret: cert_name.clone(),
                    source,
                }
            });
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
        source: CaError::InvalidCa("another instance created a key without its certificate".into()),
    })
}
