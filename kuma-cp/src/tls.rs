//! TLS of the control plane's servers: a certificate (configured, or generated at first start
//! under a CA of its own) and the server side. The client side (kuma-dp, tests) is
//! `kuma_dp::tls`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The control plane's certificate chain and key, and the CA proxies must trust.
#[derive(Clone)]
pub struct CpCertificate {
    /// Server certificate chain, PEM (leaf first).
    pub chain_pem: String,
    /// Private key, PEM. Never logged.
    pub key_pem: String,
    /// The CA that signed the chain, PEM: what proxies and kuma-dp trust.
    pub ca_pem: String,
}

impl std::fmt::Debug for CpCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpCertificate")
            .field("ca_pem", &self.ca_pem)
            .field("key_pem", &"*****")
            .finish()
    }
}

/// What about the control plane's certificate failed (a file, generation, the chain), and
/// why (the [`source`](std::error::Error::source)).
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub(crate) struct TlsError {
    what: String,
    #[source]
    cause: Option<kuma_core::errors::BoxError>,
}

fn err(what: &str, cause: impl Into<kuma_core::errors::BoxError>) -> TlsError {
    TlsError {
        what: what.to_string(),
        cause: Some(cause.into()),
    }
}

impl CpCertificate {
    /// Uses `cert_file`/`key_file` when given (the CA is the chain's last certificate);
    /// otherwise reuses or generates a CA and a server certificate in `dir` for `hosts`.
    pub fn load_or_generate(
        cert_file: &str,
        key_file: &str,
        dir: &Path,
        hosts: &[String],
    ) -> Result<CpCertificate, TlsError> {
        if !cert_file.is_empty() {
            let chain_pem = std::fs::read_to_string(cert_file).map_err(|e| err(cert_file, e))?;
            let key_pem = std::fs::read_to_string(key_file).map_err(|e| err(key_file, e))?;
            let last = chain_pem
                .rfind("-----BEGIN CERTIFICATE-----")
                .ok_or_else(|| TlsError {
                    what: format!("{cert_file}: no certificate"),
                    cause: None,
                })?;
            let ca_pem = chain_pem[last..].to_string();
            return Ok(CpCertificate {
                chain_pem,
                key_pem,
                ca_pem,
            });
        }
        let (ca_path, cert_path, key_path) =
            (dir.join("ca.crt"), dir.join("cp.crt"), dir.join("cp.key"));
        if let (Ok(ca_pem), Ok(chain_pem), Ok(key_pem)) = (
            std::fs::read_to_string(&ca_path),
            std::fs::read_to_string(&cert_path),
            std::fs::read_to_string(&key_path),
        ) {
            return Ok(CpCertificate {
                chain_pem,
                key_pem,
                ca_pem,
            });
        }
        let generated =
            generate(hosts).map_err(|e| err("generating the control plane certificate", e))?;
        std::fs::create_dir_all(dir).map_err(|e| err(&dir.display().to_string(), e))?;
        std::fs::write(&ca_path, &generated.ca_pem)
            .map_err(|e| err(&ca_path.display().to_string(), e))?;
        std::fs::write(&cert_path, &generated.chain_pem)
            .map_err(|e| err(&cert_path.display().to_string(), e))?;
        write_private(&key_path, &generated.key_pem)
            .map_err(|e| err(&key_path.display().to_string(), e))?;
        Ok(generated)
    }

    /// Where the CA certificate lives for a generated certificate in `dir`.
    pub fn ca_path(dir: &Path) -> PathBuf {
        dir.join("ca.crt")
    }

    /// The rustls server side (ALPN `h2` for gRPC, `http/1.1` for `/bootstrap`).
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| err("certificate chain", e))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| err("private key", e))?;
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| err("TLS versions", e))?
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .map_err(|e| err("certificate", e))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

fn generate(hosts: &[String]) -> Result<CpCertificate, rcgen::Error> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "kuma-rs control plane CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let mut params = CertificateParams::new(hosts.to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "kuma-rs control plane");
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(CpCertificate {
        chain_pem: format!("{}{}", cert.pem(), ca_cert.pem()),
        key_pem: key.serialize_pem(),
        ca_pem: ca_cert.pem(),
    })
}

/// This machine's host name (`localhost` when unknown).
pub fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The names a generated certificate covers: localhost, loopback addresses and this host's name.
pub fn default_hosts() -> Vec<String> {
    let mut hosts = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let h = hostname();
    if !hosts.contains(&h) {
        hosts.push(h);
    }
    hosts
}
