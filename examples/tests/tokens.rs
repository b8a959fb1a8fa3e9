//! `POST /tokens/dataplane` on the running `standalone`: admins get Kuma's dataplane tokens,
//! bad requests get errors naming the field.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::Standalone;

async fn post(port: u16, body: &str) -> (u16, String) {
    let r = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("http://127.0.0.1:{port}/tokens/dataplane"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_generate_dataplane_tokens() {
    let cp = Standalone::start(&[]).await;
    // From localhost (admin): a token with Kuma's claims.
    let (status, token) = post(
        cp.api_port,
        r#"{"name": "web-1", "mesh": "default", "tags": {"kuma.io/service": ["web"]}, "validFor": "24h"}"#,
    )
    .await;
    assert_eq!(status, 200, "{token}");
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(
        (header["alg"].as_str(), header["kid"].as_str()),
        (Some("RS256"), Some("1"))
    );
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(claims["Name"], "web-1");
    assert_eq!(claims["Mesh"], "default");
    assert_eq!(
        claims["Tags"],
        serde_json::json!({"kuma.io/service": ["web"]})
    );
    assert_eq!(claims["Type"], "dataplane");
    let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert!((86_400..=86_410).contains(&lifetime), "{lifetime}");

    // The mesh's signing key is a secret of the mesh.
    let (status, _) = kuma_testkit::http_get(
        cp.api_port,
        "/meshes/default/secrets/dataplane-token-signing-key-default-1",
    )
    .await;
    assert_eq!(status, 200);

    // Anyone else is refused: a remote caller without a token is not an admin.
    let remote = common::non_loopback_ip();
    let tcp = tokio::net::TcpStream::connect((remote, cp.api_port))
        .await
        .unwrap();
    let (status, text) = kuma_testkit::http_request(
        tcp,
        "POST",
        "/tokens/dataplane",
        &[("content-type", "application/json")],
        r#"{"mesh": "default"}"#,
    )
    .await;
    assert!(matches!(status, 401 | 403), "{status}: {text}");
    assert!(!text.contains("eyJ"), "no token for a non-admin: {text}");

    // Bad requests name what is wrong.
    for (body, field) in [
        (r#"{"name": "x"}"#, "mesh"),
        (r#"{"mesh": "default", "validFor": "soon"}"#, "validFor"),
        (r#"{"mesh": "default", "type": "robot"}"#, "type"),
        (r#"{"mesh": "nowhere"}"#, "mesh"),
        (r#"not json"#, "body"),
    ] {
        let (status, text) = post(cp.api_port, body).await;
        assert_eq!(status, 400, "{body}: {text}");
        assert!(
            text.contains(&format!("\"field\":\"{field}\"")),
            "{body}: {text}"
        );
    }
}
