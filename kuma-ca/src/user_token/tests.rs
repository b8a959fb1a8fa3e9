use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kuma_core::manager::{ManagerOptions, ResourceManager};
use kuma_core::model::system::SecretSpec;
use kuma_core::resource::{Resource, ResourceKey, ResourceType, Spec};
use kuma_store::MemoryStore;
use rsa::pkcs1::DecodeRsaPrivateKey as _;
use rsa::signature::Verifier as _;

use super::*;
use crate::signing_key::SigningKey;

fn manager() -> ResourceManager {
    ResourceManager::new(Arc::new(MemoryStore::new()), ManagerOptions::default())
}

async fn secret(manager: &ResourceManager, name: &str) -> Vec<u8> {
    let r = manager
        .get(&ResourceKey::global(ResourceType::GlobalSecret, name))
        .await
        .unwrap();
    let Spec::GlobalSecret(s) = r.spec else {
        panic!("not a global secret")
    };
    s.bytes().unwrap()
}

async fn put_secret(manager: &ResourceManager, name: &str, bytes: &[u8]) {
    let r = Resource::new("", name, Spec::GlobalSecret(SecretSpec::from_bytes(bytes)));
    manager.apply(r).await.unwrap();
}

#[tokio::test]
async fn bootstrap_stores_an_admin_token_that_an_independent_rsa_verifier_accepts() {
    let m = manager();
    let tokens = UserTokens::new(m.clone());
    assert!(tokens.bootstrap_admin_token().await.unwrap());
    assert!(
        !tokens.bootstrap_admin_token().await.unwrap(),
        "second start keeps the token"
    );

    let token = String::from_utf8(secret(&m, ADMIN_USER_TOKEN).await).unwrap();
    assert_eq!(tokens.validate(&token).await.unwrap(), User::admin());

    // The signature checks out with the stored key under a second RSA implementation.
    let pem = String::from_utf8(secret(&m, "user-token-signing-key-1").await).unwrap();
    assert!(pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    let private = rsa::RsaPrivateKey::from_pkcs1_pem(&pem).unwrap();
    let verifier =
        rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(rsa::RsaPublicKey::from(&private));
    let (input, sig) = token.rsplit_once('.').unwrap();
    let sig = rsa::pkcs1v15::Signature::try_from(URL_SAFE_NO_PAD.decode(sig).unwrap().as_slice())
        .unwrap();
    verifier.verify(input.as_bytes(), &sig).unwrap();

    let (header, claims) = input.split_once('.').unwrap();
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["kid"], "1");
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
    assert_eq!(claims["Name"], "mesh-system:admin");
    let (nbf, exp) = (
        claims["nbf"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert!(exp - nbf >= ADMIN_TOKEN_VALIDITY.as_secs());
    assert_eq!(claims["jti"].as_str().unwrap().len(), 36);
}

#[tokio::test]
async fn refuses_tampered_expired_revoked_and_foreign_tokens() {
    let m = manager();
    let tokens = UserTokens::new(m.clone());
    tokens.bootstrap_admin_token().await.unwrap();
    let alice = User {
        name: "alice".into(),
        groups: vec!["team-a".into()],
    };
    let token = tokens
        .issue(&alice, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(tokens.validate(&token).await.unwrap(), alice);

    // Claims swapped for an admin's: the signature no longer matches.
    let (h, rest) = token.split_once('.').unwrap();
    let (_, s) = rest.split_once('.').unwrap();
    let forged =
        URL_SAFE_NO_PAD.encode(r#"{"Name":"mesh-system:admin","Groups":["mesh-system:admin"]}"#);
    assert_eq!(
        tokens.validate(&format!("{h}.{forged}.{s}")).await,
        Err(TokenError::BadSignature)
    );
    // "none" and HMAC algorithms are refused before any key is looked up.
    let none = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"1"}"#);
    assert_eq!(
        tokens.validate(&format!("{none}.{forged}.")).await,
        Err(TokenError::UnsupportedAlgorithm("none".into()))
    );
    let no_kid = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#);
    assert_eq!(
        tokens.validate(&format!("{no_kid}.{forged}.{s}")).await,
        Err(TokenError::MissingKeyId)
    );
    let other_kid = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","kid":"7"}"#);
    assert!(matches!(
        tokens.validate(&format!("{other_kid}.{forged}.{s}")).await,
        Err(TokenError::SigningKeyNotFound { name, .. }) if name == "user-token-signing-key-7"
    ));
    for garbage in ["", "abc", "a.b", "a.b.c.d", "!!.??.**"] {
        assert!(
            matches!(
                tokens.validate(garbage).await,
                Err(TokenError::Malformed(_))
            ),
            "{garbage:?}"
        );
    }

    let now = jwt::now();
    assert_eq!(
        tokens.validate_at(&token, now + 3600 + 60).await,
        Err(TokenError::Expired)
    );
    assert_eq!(
        tokens.validate_at(&token, now - 60).await,
        Err(TokenError::NotYetValid)
    );

    // Another control plane's key does not verify this one's tokens.
    let other = UserTokens::new(manager());
    other.bootstrap_admin_token().await.unwrap();
    assert_eq!(other.validate(&token).await, Err(TokenError::BadSignature));

    let jti = {
        let claims = token.split('.').nth(1).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
        claims["jti"].as_str().unwrap().to_string()
    };
    put_secret(&m, REVOCATIONS, format!("other-id,{jti}").as_bytes()).await;
    assert_eq!(tokens.validate(&token).await, Err(TokenError::Revoked));
}

#[tokio::test]
async fn a_rotated_key_signs_new_tokens_and_old_ones_stop_when_their_key_goes() {
    let m = manager();
    let tokens = UserTokens::new(m.clone());
    tokens.bootstrap_admin_token().await.unwrap();
    let old = tokens
        .issue(&User::admin(), Duration::from_secs(60))
        .await
        .unwrap();

    let pem = SigningKey::generate_pem().unwrap();
    put_secret(&m, "user-token-signing-key-2", pem.as_bytes()).await;
    let new = tokens
        .issue(&User::admin(), Duration::from_secs(60))
        .await
        .unwrap();
    let kid = |t: &str| jwt::parse(t).unwrap().kid().to_string();
    assert_eq!((kid(&old), kid(&new)), ("1".to_string(), "2".to_string()));
    assert!(tokens.validate(&old).await.is_ok());

    m.delete(
        &ResourceKey::global(ResourceType::GlobalSecret, "user-token-signing-key-1"),
        false,
    )
    .await
    .unwrap();
    assert!(matches!(
        tokens.validate(&old).await,
        Err(TokenError::SigningKeyNotFound { .. })
    ));
    assert!(tokens.validate(&new).await.is_ok());
}

#[test]
fn serials_follow_kumas_naming() {
    use crate::signing_key::{secret_name, serial_of};
    assert_eq!(serial_of("k", "k"), Some(0));
    assert_eq!(serial_of("k", "k-12"), Some(12));
    assert_eq!(serial_of("k", "k-x"), None);
    assert_eq!(serial_of("k", "kk-1"), None);
    assert_eq!(secret_name("k", "0"), "k");
    assert_eq!(secret_name("k", "3"), "k-3");
}
