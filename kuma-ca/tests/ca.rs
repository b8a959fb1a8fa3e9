//! Certificate authorities, checked by verifiers we did not write: `openssl verify` for the
//! chain and purposes, `openssl x509` for the names and extensions, py-spiffe for the
//! X.509-SVID rules.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kuma_ca::ca::{
    BuiltinCa, CaError, CertificateAuthority, IdentityRequest, KeyType, ProvidedCa, SanLayout,
};

fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The SPIFFE ID py-spiffe reads from the X.509-SVID in `cert` and `key` (PEM files), or
/// its error.
fn py_spiffe(cert: &str, key: &str) -> Result<String, String> {
    let script = r#"
import sys
from cryptography.hazmat.primitives.serialization import Encoding
from spiffe import X509Svid
svid = X509Svid.load(sys.argv[1], sys.argv[2], Encoding.PEM)
print(svid.spiffe_id)
"#;
    let out = Command::new("python3")
        .args(["-c", script, cert, key])
        .output()
        .expect("python3 runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn request(layout: SanLayout) -> IdentityRequest {
    IdentityRequest {
        mesh: "payments".into(),
        services: BTreeSet::from(["backend".to_string(), "backend-admin".to_string()]),
        tags: BTreeMap::from([
            (
                "kuma.io/service".to_string(),
                BTreeSet::from(["backend".to_string()]),
            ),
            ("version".to_string(), BTreeSet::from(["v1".to_string()])),
        ]),
        lifetime: Duration::from_secs(24 * 3600),
        layout,
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn builtin_roots_and_identities_verify_with_openssl() {
    let dir = std::env::temp_dir().join(format!("kuma-ca-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for key_type in [KeyType::EcdsaP256, KeyType::Rsa2048] {
        let ca = BuiltinCa::generate("payments", key_type).unwrap();
        let root = write(&dir, "root.pem", ca.root_pem());
        let text = openssl(&["x509", "-in", &root, "-noout", "-text"]);
        assert!(
            text.contains("O=Kuma, OU=Mesh, CN=payments")
                || text.contains("O = Kuma, OU = Mesh, CN = payments"),
            "{text}"
        );
        assert!(text.contains("URI:spiffe://payments"), "{text}");
        assert!(text.contains("CA:TRUE"), "{text}");
        assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");

        let identity = ca.issue(&request(SanLayout::Kuma)).unwrap();
        let leaf = write(&dir, "leaf.pem", &identity.cert_pem);
        // The chain verifies, for both TLS purposes.
        for purpose in ["sslserver", "sslclient"] {
            let out = openssl(&["verify", "-purpose", purpose, "-CAfile", &root, &leaf]);
            assert!(out.contains(": OK"), "{out}");
        }
        let text = openssl(&["x509", "-in", &leaf, "-noout", "-text"]);
        for san in [
            "URI:spiffe://payments/backend",
            "URI:spiffe://payments/backend-admin",
            "URI:kuma://kuma.io/service/backend",
            "URI:kuma://version/v1",
        ] {
            assert!(text.contains(san), "{san} missing:\n{text}");
        }
        assert!(
            text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
            "{text}"
        );
        // The key is the certificate's.
        let key = write(&dir, "leaf.key", &identity.key_pem);
        assert_eq!(
            openssl(&["x509", "-in", &leaf, "-noout", "-pubkey"]),
            openssl(&["pkey", "-in", &key, "-pubout"])
        );
        // Strict SPIFFE: exactly one URI SAN.
        let strict = ca.issue(&request(SanLayout::StrictSpiffe)).unwrap();
        let leaf = write(&dir, "strict.pem", &strict.cert_pem);
        let text = openssl(&["x509", "-in", &leaf, "-noout", "-ext", "subjectAltName"]);
        assert_eq!(text.matches("URI:").count(), 1, "{text}");
        assert!(text.contains("URI:spiffe://payments/backend"), "{text}");
        // py-spiffe, which enforces the X.509-SVID rules (exactly one URI SAN holding a
        // SPIFFE ID, a leaf that may not sign, digitalSignature), accepts the strict layout
        // and rejects Kuma's.
        let strict_key = write(&dir, "strict.key", &strict.key_pem);
        assert_eq!(
            py_spiffe(&leaf, &strict_key).unwrap(),
            "spiffe://payments/backend"
        );
        let kuma_leaf = write(&dir, "kuma.pem", &identity.cert_pem);
        let e = py_spiffe(&kuma_leaf, &key).unwrap_err();
        assert!(e.contains("multiple URI SAN"), "{e}");

        // Reloaded from its stored PEM, the CA issues identities the same root verifies.
        let (cert, key) = ca.to_pem();
        let again = BuiltinCa::from_pem(cert, key, key_type).unwrap();
        let leaf = write(
            &dir,
            "again.pem",
            &again.issue(&request(SanLayout::Kuma)).unwrap().cert_pem,
        );
        assert!(openssl(&["verify", "-CAfile", &root, &leaf]).contains(": OK"));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn provided_cas_are_checked() {
    let real = BuiltinCa::generate("m", KeyType::EcdsaP256).unwrap();
    let (cert, key) = real.to_pem();
    let provided = ProvidedCa::from_pem(cert, key, KeyType::EcdsaP256).unwrap();
    assert_eq!(provided.root_pem(), cert);
    provided.issue(&request(SanLayout::Kuma)).unwrap();

    // A leaf is not a CA.
    let leaf = real.issue(&request(SanLayout::Kuma)).unwrap();
    let err = ProvidedCa::from_pem(&leaf.cert_pem, &leaf.key_pem, KeyType::EcdsaP256)
        .err()
        .unwrap();
    assert!(
        matches!(err, CaError::InvalidCa { ref reason, .. } if reason.contains("not a CA")),
        "{err}"
    );
    // Another CA's key does not belong to the certificate.
    let other = BuiltinCa::generate("m", KeyType::EcdsaP256).unwrap();
    let err = ProvidedCa::from_pem(cert, other.to_pem().1, KeyType::EcdsaP256)
        .err()
        .unwrap();
    assert!(err.to_string().contains("does not belong"), "{err}");
    // Garbage is reported, not a panic.
    let err = ProvidedCa::from_pem("not pem", key, KeyType::EcdsaP256)
        .err()
        .unwrap();
    assert!(err.to_string().contains("not PEM"), "{err}");
}

/// A memory store with the mesh `payments`.
async fn payments() -> kuma_core::manager::ResourceManager {
    use kuma_core::manager::{ManagerOptions, ResourceManager};
    let manager = ResourceManager::new(
        std::sync::Arc::new(kuma_store::MemoryStore::new()),
        ManagerOptions::default(),
    );
    manager
        .create(kuma_core::resource::parse_yaml("type: Mesh\nname: payments\n").unwrap())
        .await
        .unwrap();
    manager
}

#[tokio::test]
async fn a_mesh_keeps_one_builtin_ca_in_its_secrets() {
    use kuma_ca::mesh_ca::{builtin_secret_names, ensure_builtin};
    use kuma_core::resource::{ResourceKey, ResourceType};
    let manager = payments().await;
    let first = ensure_builtin(&manager, "payments", "ca-1", KeyType::EcdsaP256)
        .await
        .unwrap();
    let again = ensure_builtin(&manager, "payments", "ca-1", KeyType::EcdsaP256)
        .await
        .unwrap();
    assert_eq!(
        first.root_pem(),
        again.root_pem(),
        "the stored CA is reused"
    );
    let (cert, key) = builtin_secret_names("payments", "ca-1");
    assert_eq!(
        (cert.as_str(), key.as_str()),
        (
            "payments.ca-builtin-cert-ca-1",
            "payments.ca-builtin-key-ca-1"
        )
    );
    // Deleting the mesh deletes its CA.
    manager
        .delete(&ResourceKey::new(ResourceType::Mesh, "", "payments"), true)
        .await
        .unwrap();
    for name in [cert, key] {
        assert!(
            manager
                .get(&ResourceKey::new(ResourceType::Secret, "payments", &name))
                .await
                .is_err(),
            "{name} outlived its mesh"
        );
    }
}

#[tokio::test]
async fn provided_backends_load_from_data_sources() {
    use base64::Engine as _;
    use kuma_ca::mesh_ca::load_backend;
    use kuma_core::model::mesh::CaBackend;
    use kuma_core::model::system::SecretSpec;
    use kuma_core::resource::{Resource, Spec};
    let manager = payments().await;
    let root = BuiltinCa::generate("payments", KeyType::EcdsaP256).unwrap();
    let (cert, key) = root.to_pem();
    manager
        .create(Resource::new(
            "payments",
            "my-ca-cert",
            Spec::Secret(SecretSpec::from_bytes(cert.as_bytes())),
        ))
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("kuma-ca-provided-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = write(&dir, "ca.key", key);
    let backend = |conf: serde_json::Value| CaBackend {
        name: "ca-2".into(),
        kind: "provided".into(),
        conf: Some(conf),
        ..Default::default()
    };

    // The certificate from a secret of the mesh, the key from a file, or both inline.
    for conf in [
        serde_json::json!({"cert": {"secret": "my-ca-cert"}, "key": {"file": key_file}}),
        serde_json::json!({
            "cert": {"inline": base64::engine::general_purpose::STANDARD.encode(cert)},
            "key": {"inlineString": key},
        }),
    ] {
        let ca = load_backend(&manager, "payments", &backend(conf), KeyType::EcdsaP256)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ca.root_pem(), cert);
        let leaf = write(
            &dir,
            "leaf.pem",
            &ca.issue(&request(SanLayout::Kuma)).unwrap().cert_pem,
        );
        let root_file = write(&dir, "root.pem", cert);
        assert!(openssl(&["verify", "-CAfile", &root_file, &leaf]).contains(": OK"));
    }

    // Errors name the backend and what is wrong.
    let missing =
        backend(serde_json::json!({"cert": {"secret": "nope"}, "key": {"inlineString": key}}));
    let e = load_backend(&manager, "payments", &missing, KeyType::EcdsaP256)
        .await
        .err()
        .unwrap();
    let e = kuma_core::errors::chain(&e);
    assert!(
        e.contains("\"ca-2\" conf.cert") && e.contains("cannot be read"),
        "{e}"
    );
    let leaf = root.issue(&request(SanLayout::Kuma)).unwrap();
    let not_ca = backend(serde_json::json!({
        "cert": {"inlineString": leaf.cert_pem}, "key": {"inlineString": leaf.key_pem},
    }));
    let e = load_backend(&manager, "payments", &not_ca, KeyType::EcdsaP256)
        .await
        .err()
        .unwrap();
    let e = kuma_core::errors::chain(&e);
    assert!(e.contains("\"ca-2\" conf") && e.contains("not a CA"), "{e}");
    let unknown = CaBackend {
        kind: "vault".into(),
        ..backend(serde_json::json!({}))
    };
    let e = load_backend(&manager, "payments", &unknown, KeyType::EcdsaP256)
        .await
        .err()
        .unwrap();
    let e = kuma_core::errors::chain(&e);
    assert!(e.contains("\"vault\" is not a CA type"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
