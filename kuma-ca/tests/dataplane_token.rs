//! Dataplane tokens: issuance, validation, matching against Dataplanes, revocation, and the
//! signature checked by a second RSA implementation and by PyJWT.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kuma_ca::TokenError;
use kuma_ca::dataplane_token::{DataplaneIdentity, DataplaneTokens, revocations_secret};
use kuma_core::manager::{ManagerOptions, ResourceManager};
use kuma_core::model::system::SecretSpec;
use kuma_core::resource::{Resource, ResourceKey, ResourceType, Spec, parse_yaml};
use rsa::pkcs1::DecodeRsaPrivateKey as _;
use rsa::signature::Verifier as _;

fn dataplane(mesh: &str, name: &str, version: &str) -> Resource {
    parse_yaml(&format!(
        "type: Dataplane\nmesh: {mesh}\nname: {name}\nnetworking:\n  address: 10.0.0.1\n  inbound:\n  - port: 80\n    tags:\n      kuma.io/service: web\n      version: {version}\n"
    ))
    .unwrap()
}

/// Decodes `token` with PyJWT (RS256, the public half of `private_pem`, the registered
/// claims required): "<Name> <Mesh> <Type>", or PyJWT's error.
fn pyjwt_decode(private_pem: &str, token: &str) -> Result<String, String> {
    use std::io::Write as _;
    let script = r#"
import sys, jwt
from cryptography.hazmat.primitives.serialization import load_pem_private_key
key = load_pem_private_key(sys.stdin.buffer.read(), None).public_key()
claims = jwt.decode(sys.argv[1], key, algorithms=["RS256"],
                    options={"require": ["exp", "iat", "nbf", "jti"]})
print(claims["Name"], claims["Mesh"], claims["Type"])
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script, token])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(private_pem.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

async fn manager() -> ResourceManager {
    let m = ResourceManager::new(
        Arc::new(kuma_store::MemoryStore::new()),
        ManagerOptions::default(),
    );
    for mesh in ["default", "other"] {
        m.create(parse_yaml(&format!("type: Mesh\nname: {mesh}\n")).unwrap())
            .await
            .unwrap();
    }
    m
}

#[tokio::test]
async fn tokens_admit_their_dataplane_only() {
    let m = manager().await;
    let tokens = DataplaneTokens::new(m.clone());
    let identity = DataplaneIdentity {
        name: "web-1".into(),
        mesh: "default".into(),
        tags: BTreeMap::from([("version".to_string(), BTreeSet::from(["v1".to_string()]))]),
        kind: String::new(),
    };
    let token = tokens
        .issue(&identity, Duration::from_secs(3600))
        .await
        .unwrap();

    // Kuma's claims, signed with the mesh's first key, checked by another RSA implementation.
    let c = claims(&token);
    assert_eq!(c["Name"], "web-1");
    assert_eq!(c["Mesh"], "default");
    assert_eq!(c["Tags"], serde_json::json!({"version": ["v1"]}));
    assert_eq!(c["Type"], "dataplane");
    assert!(c["jti"].is_string() && c["exp"].is_u64());
    let key = m
        .get(&ResourceKey::new(
            ResourceType::Secret,
            "default",
            "dataplane-token-signing-key-default-1",
        ))
        .await
        .expect("the signing key is a secret of the mesh");
    let Spec::Secret(s) = &key.spec else { panic!() };
    let private =
        rsa::RsaPrivateKey::from_pkcs1_pem(&String::from_utf8(s.bytes().unwrap()).unwrap())
            .unwrap();
    let verifier =
        rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(rsa::RsaPublicKey::from(&private));
    let (input, sig) = token.rsplit_once('.').unwrap();
    let sig = rsa::pkcs1v15::Signature::try_from(URL_SAFE_NO_PAD.decode(sig).unwrap().as_slice())
        .unwrap();
    verifier.verify(input.as_bytes(), &sig).unwrap();
    // And a standard JWT library (PyJWT) accepts it with Kuma's claims, and refuses it
    // tampered with.
    let pem = String::from_utf8(s.bytes().unwrap()).unwrap();
    assert_eq!(
        pyjwt_decode(&pem, &token).unwrap(),
        "web-1 default dataplane"
    );
    let (head, rest) = token.split_once('.').unwrap();
    let (_, sig) = rest.split_once('.').unwrap();
    let forged_claims = URL_SAFE_NO_PAD.encode(
        serde_json::to_vec(&serde_json::json!({"Name": "web-2", "Mesh": "default"})).unwrap(),
    );
    let forged = format!("{head}.{forged_claims}.{sig}");
    let e = pyjwt_decode(&pem, &forged).unwrap_err();
    assert!(e.contains("InvalidSignatureError"), "{e}");

    // It admits web-1 with version v1, and nothing else.
    let granted = tokens.validate(&token).await.unwrap();
    assert_eq!(granted.name, "web-1");
    granted
        .admits(&dataplane("default", "web-1", "v1"))
        .unwrap();
    let e = granted
        .admits(&dataplane("default", "web-2", "v1"))
        .unwrap_err();
    assert!(e.to_string().contains("\"web-1\", not \"web-2\""), "{e}");
    let e = granted
        .admits(&dataplane("default", "web-1", "v2"))
        .unwrap_err();
    assert!(e.to_string().contains("version=v1"), "{e}");
    let e = granted
        .admits(&dataplane("other", "web-1", "v1"))
        .unwrap_err();
    assert!(e.to_string().contains("mesh"), "{e}");

    // Expired tokens are refused.
    let later = kuma_ca::jwt::now() + 7200;
    assert_eq!(
        tokens.validate_at(&token, later).await.unwrap_err(),
        TokenError::Expired
    );
    // A tampered token is refused.
    let tampered = format!("{}x", &token[..token.len() - 1]);
    assert!(tokens.validate(&tampered).await.is_err());
    // A token of another mesh's key does not verify as this mesh's.
    let other = tokens
        .issue(
            &DataplaneIdentity {
                mesh: "other".into(),
                ..identity.clone()
            },
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
    let forged = {
        let mut parts: Vec<&str> = token.split('.').collect();
        parts[2] = other.split('.').nth(2).unwrap();
        parts.join(".")
    };
    assert_eq!(
        tokens.validate(&forged).await.unwrap_err(),
        TokenError::BadSignature
    );
    // Revoked by jti.
    let jti = c["jti"].as_str().unwrap();
    m.create(Resource::new(
        "default",
        &revocations_secret("default"),
        Spec::Secret(SecretSpec::from_bytes(
            format!("someone-else,{jti}").as_bytes(),
        )),
    ))
    .await
    .unwrap();
    assert_eq!(
        tokens.validate(&token).await.unwrap_err(),
        TokenError::Revoked
    );
    // The other mesh's token is untouched by this mesh's revocations.
    assert_eq!(tokens.validate(&other).await.unwrap().mesh, "other");
}
