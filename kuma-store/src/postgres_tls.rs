//! TLS to PostgreSQL, as Kuma's `store.postgres.tls` configures it: `disable`, `verifyNone`
//! (encrypted, server not verified), `verifyCa` (the server's chain must lead to `caPath`),
//! `verifyFull` (and the certificate must name the host); with `certPath` and `keyPath`, a
//! client certificate.

use std::sync::Arc;

use crate::config::{PostgresConfig, PostgresTlsMode};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// The rustls client configuration `config.tls` asks for; `None` for `disable`.
pub fn client_config(config: &PostgresConfig) -> Result<Option<ClientConfig>, String> {
    let tls = &config.tls;
    if tls.mode == PostgresTlsMode::Disable {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?;
    let verifier: Arc<dyn ServerCertVerifier> = match tls.mode {
        PostgresTlsMode::VerifyNone => Arc::new(Relaxed {
            chain: None,
            provider,
        }),
        PostgresTlsMode::VerifyCa | PostgresTlsMode::VerifyFull => {
            if tls.ca_path.is_empty() {
                return Err(format!(
                    "store.postgres.tls.caPath is required with mode {:?}",
                    tls.mode
                ));
            }
            let ca_err = |e: &dyn std::fmt::Display| {
                format!("store.postgres.tls.caPath {:?}: {e}", tls.ca_path)
            };
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(&tls.ca_path).map_err(|e| ca_err(&e))? {
                roots
                    .add(cert.map_err(|e| ca_err(&e))?)
                    .map_err(|e| ca_err(&e))?;
            }
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| ca_err(&e))?;
            if tls.mode == PostgresTlsMode::VerifyCa {
                Arc::new(Relaxed {
                    chain: Some(webpki),
                    provider,
                })
            } else {
                webpki
            }
        }
        PostgresTlsMode::Disable => unreachable!("handled above"),
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = if tls.cert_path.is_empty() && tls.key_path.is_empty() {
        builder.with_no_client_auth()
    } else {
        let chain = CertificateDer::pem_file_iter(&tls.cert_path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("store.postgres.tls.certPath {:?}: {e}", tls.cert_path))?;
        let key = PrivateKeyDer::from_pem_file(&tls.key_path)
            .map_err(|e| format!("store.postgres.tls.keyPath {:?}: {e}", tls.key_path))?;
        builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("store.postgres.tls client certificate: {e}"))?
    };
    Ok(Some(config))
}

/// The relaxed modes. `verifyNone` (`chain: None`): any certificate. `verifyCa`: the chain
/// must be valid, the name in it need not match the host. Either way the handshake signatures
/// are checked.
#[derive(Debug)]
struct Relaxed {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Relaxed {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
