//! Certificate authorities of mesh mTLS and the workload identities they issue.
//!
//! - [`CertificateAuthority`]: the extension point: a root proxies trust, and issuance of one
//!   identity per proxy.
//! - [`BuiltinCa`]: Kuma's `builtin` backend: a self-signed root per mesh (subject
//!   `O=Kuma, OU=Mesh, CN=<mesh>`, URI SAN `spiffe://<mesh>`, CA constraint, cert-sign and
//!   CRL-sign, 10 years), RSA 2048 as Kuma makes it, or ECDSA P-256.
//! - [`ProvidedCa`]: Kuma's `provided` backend: a root certificate and key supplied by the
//!   user, checked to be a CA allowed to sign certificates.
//!
//! Identities follow Kuma's layout by default: a new key per issue, an empty subject, URI SANs
//! `spiffe://<mesh>/<service>` for each service plus `kuma://<tag>/<value>` for each tag value,
//! EKU server and client auth. [`SanLayout::StrictSpiffe`] keeps exactly one URI SAN, as the
//! SPIFFE X.509-SVID specification requires.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kuma_core::errors::BoxError;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Why a CA could not be loaded or an identity issued: what is wrong, and the error that said
/// so, if any, as the [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The provided root is unusable (not PEM, not a CA, may not sign certificates, ...).
    #[error("invalid CA: {reason}")]
    InvalidCa {
        /// What is wrong.
        reason: String,
        /// The parser's or key loader's error.
        #[source]
        cause: Option<BoxError>,
    },
    /// A value could not go into a certificate, or a key could not be made.
    #[error("cannot issue: {reason}")]
    Issue {
        /// What could not be done.
        reason: String,
        /// The certificate or key library's error.
        #[source]
        cause: Option<BoxError>,
    },
}

impl CaError {
    /// An unusable CA, for `reason`.
    pub fn invalid(reason: impl Into<String>) -> Self {
        CaError::InvalidCa {
            reason: reason.into(),
            cause: None,
        }
    }

    /// An unusable CA, for `reason`, which `cause` reported.
    pub fn invalid_because(reason: impl Into<String>, cause: impl Into<BoxError>) -> Self {
        CaError::InvalidCa {
            reason: reason.into(),
            cause: Some(cause.into()),
        }
    }

    /// An identity that could not be issued, for `reason`.
    pub fn issue(reason: impl Into<String>) -> Self {
        CaError::Issue {
            reason: reason.into(),
            cause: None,
        }
    }

    /// An identity that could not be issued, for `reason`, which `cause` reported.
    pub fn issue_because(reason: impl Into<String>, cause: impl Into<BoxError>) -> Self {
        CaError::Issue {
            reason: reason.into(),
            cause: Some(cause.into()),
        }
    }
}

fn issue_err(e: rcgen::Error) -> CaError {
    CaError::issue_because("certificate", e)
}

/// The key type of generated keys (in the configuration, `mtls.keyType`: `rsa2048` or
/// `ecdsaP256`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum KeyType {
    /// RSA 2048 (Kuma's default, `caCert.RSAbits`).
    #[default]
    #[serde(rename = "rsa2048")]
    Rsa2048,
    /// ECDSA P-256 with SHA-256: faster to generate and to sign, smaller.
    #[serde(rename = "ecdsaP256")]
    EcdsaP256,
}

impl KeyType {
    fn generate(self) -> Result<KeyPair, CaError> {
        match self {
            KeyType::EcdsaP256 => {
                KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(issue_err)
            }
            KeyType::Rsa2048 => {
                // aws-lc generates RSA keys about 12 times faster than the pure-Rust `rsa`
                // crate (55 against 670 ms here), and every workload certificate needs one.
                use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
                let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                    .map_err(|e| CaError::issue_because("RSA key generation", e.to_string()))?;
                let der: Pkcs8V1Der<'_> = key
                    .as_der()
                    .map_err(|e| CaError::issue_because("RSA key encoding", e.to_string()))?;
                KeyPair::try_from(der.as_ref()).map_err(issue_err)
            }
        }
    }
}

/// How URI SANs are laid out in workload certificates (in the configuration,
/// `mtls.sanLayout`: `kuma` or `strictSpiffe`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SanLayout {
    /// Kuma's: one `spiffe://` SAN per service and one `kuma://` SAN per tag value.
    #[default]
    Kuma,
    /// One `spiffe://<mesh>/<service>` SAN only (the first service), as X.509-SVIDs require;
    /// tag-based permissions are then resolved by the control plane, not read from the cert.
    StrictSpiffe,
}

/// What a workload identity asserts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityRequest {
    /// The mesh.
    pub mesh: String,
    /// The proxy's services (`kuma.io/service` values), at least one.
    pub services: BTreeSet<String>,
    /// The proxy's tags, each with its values.
    pub tags: BTreeMap<String, BTreeSet<String>>,
    /// How long the certificate is valid.
    pub lifetime: Duration,
    /// SAN layout.
    pub layout: SanLayout,
}

/// An issued identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PKCS#8 PEM).
    pub key_pem: String,
    /// When it expires.
    pub not_after: std::time::SystemTime,
}

impl Identity {
    /// When it should be replaced: at 80 % of its lifetime, counted from `issued`.
    pub fn renew_at(&self, issued: std::time::SystemTime) -> std::time::SystemTime {
        let lifetime = self.not_after.duration_since(issued).unwrap_or_default();
        issued + lifetime.mul_f64(0.8)
    }
}

/// A certificate authority of mesh mTLS.
pub trait CertificateAuthority: Send + Sync {
    /// The root certificate proxies trust (PEM).
    fn root_pem(&self) -> &str;
    /// Issues a workload identity.
    fn issue(&self, request: &IdentityRequest) -> Result<Identity, CaError>;
}

/// A CA from a root certificate and key: the issuing half of both backends.
struct Signer {
    root_pem: String,
    issuer: Issuer<'static, KeyPair>,
    key_type: KeyType,
}

impl Signer {
    fn issue(&self, request: &IdentityRequest) -> Result<Identity, CaError> {
        if request.services.is_empty() {
            return Err(CaError::issue("an identity needs at least one service"));
        }
        let mut sans = Vec::new();
        let spiffe = |service: &str| format!("spiffe://{}/{}", request.mesh, service);
        match request.layout {
            SanLayout::StrictSpiffe => {
                let first = request
                    .services
                    .iter()
                    .next()
                    .map(String::as_str)
                    .unwrap_or("");
                sans.push(SanType::URI(spiffe(first).try_into().map_err(issue_err)?));
            }
            SanLayout::Kuma => {
                for s in &request.services {
                    sans.push(SanType::URI(spiffe(s).try_into().map_err(issue_err)?));
                }
                for (tag, values) in &request.tags {
                    for v in values {
                        let uri = format!("kuma://{tag}/{v}");
                        sans.push(SanType::URI(uri.try_into().map_err(issue_err)?));
                    }
                }
            }
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = sans;
        // basicConstraints CA:FALSE, present (as Kuma's, and as X.509-SVIDs require).
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyAgreement,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        // A minute of slack for clocks that run behind.
        params.not_before = now - time::Duration::minutes(1);
        let lifetime = time::Duration::try_from(request.lifetime)
            .map_err(|e| CaError::issue_because("lifetime", e))?;
        params.not_after = now + lifetime;
        let key = self.key_type.generate()?;
        let cert = params.signed_by(&key, &self.issuer).map_err(issue_err)?;
        Ok(Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after: std::time::SystemTime::UNIX_EPOCH
                + Duration::from_secs(
                    u64::try_from(params.not_after.unix_timestamp()).unwrap_or(0),
                ),
        })
    }
}

/// Kuma's `builtin` CA backend.
pub struct BuiltinCa {
    signer: Signer,
    cert_pem: String,
    key_pem: String,
}

impl BuiltinCa {
    /// A new root for `mesh`, valid 10 years.
    pub fn generate(mesh: &str, key_type: KeyType) -> Result<Self, CaError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Kuma");
        dn.push(DnType::OrganizationalUnitName, "Mesh");
        dn.push(DnType::CommonName, mesh);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{mesh}").try_into().map_err(issue_err)?,
        )];
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + time::Duration::days(3650);
        let key = key_type.generate()?;
        let cert = params.self_signed(&key).map_err(issue_err)?;
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
        Ok(BuiltinCa {
            signer: Signer {
                root_pem: cert_pem.clone(),
                issuer: Issuer::new(params, key),
                key_type,
            },
            cert_pem,
            key_pem,
        })
    }

    /// The root certificate and key as stored in the mesh's secrets
    /// (`<mesh>.ca-builtin-cert-<backend>`, `<mesh>.ca-builtin-key-<backend>`).
    pub fn to_pem(&self) -> (&str, &str) {
        (&self.cert_pem, &self.key_pem)
    }

    /// A builtin CA loaded back from its secrets.
    pub fn from_pem(cert_pem: &str, key_pem: &str, key_type: KeyType) -> Result<Self, CaError> {
        let signer = load(cert_pem, key_pem, key_type)?;
        Ok(BuiltinCa {
            signer,
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        })
    }
}

impl CertificateAuthority for BuiltinCa {
    fn root_pem(&self) -> &str {
        &self.signer.root_pem
    }

    fn issue(&self, request: &IdentityRequest) -> Result<Identity, CaError> {
        self.signer.issue(request)
    }
}

/// Kuma's `provided` CA backend: the user's root certificate and key.
pub struct ProvidedCa {
    signer: Signer,
}

impl ProvidedCa {
    /// Loads and checks a root: it must be a CA certificate allowed to sign certificates, and
    /// the key must be its key. Workload keys are of `key_type`.
    pub fn from_pem(cert_pem: &str, key_pem: &str, key_type: KeyType) -> Result<Self, CaError> {
        Ok(ProvidedCa {
            signer: load(cert_pem, key_pem, key_type)?,
        })
    }
}

impl CertificateAuthority for ProvidedCa {
    fn root_pem(&self) -> &str {
        &self.signer.root_pem
    }

    fn issue(&self, request: &IdentityRequest) -> Result<Identity, CaError> {
        self.signer.issue(request)
    }
}

fn load(cert_pem: &str, key_pem: &str, key_type: KeyType) -> Result<Signer, CaError> {
    use rcgen::PublicKeyData;
    let invalid = CaError::invalid;
    let key = KeyPair::from_pem(key_pem)
        .map_err(|e| CaError::invalid_because("the key is not a usable PEM private key", e))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| CaError::invalid_because("the certificate is not PEM", e.to_string()))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| CaError::invalid_because("the certificate does not parse", e.to_string()))?;
    let is_ca = cert
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|bc| bc.value.ca);
    if !is_ca {
        return Err(invalid(
            "the certificate is not a CA (basic constraints CA:true is missing)",
        ));
    }
    if let Ok(Some(usage)) = cert.key_usage()
        && !usage.value.key_cert_sign()
    {
        return Err(invalid(
            "the certificate's key usage does not allow signing certificates (keyCertSign)",
        ));
    }
    if cert.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(invalid("the key does not belong to the certificate"));
    }
    let issuer = Issuer::from_ca_cert_der(&pem.contents.clone().into(), key)
        .map_err(|e| CaError::invalid_because("the certificate does not parse", e))?;
    Ok(Signer {
        root_pem: cert_pem.to_string(),
        issuer,
        key_type,
    })
}
