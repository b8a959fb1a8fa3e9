//! `POST /tokens/dataplane` on the running `standalone`: admins get Kuma's dataplane tokens,
//! bad requests get errors naming the field.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use common::netns::Lab;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::Standalone;

async fn post(port: u16, body: &str) -> (u16, String) {
    common::post_json(port, "/tokens/dataplane", body).await
}

#[test]
fn admins_generate_dataplane_tokens() {
    // A host of the test's own, so that requests to its address are not from loopback.
    let lab = Lab::create("tokens");
    lab.enter_cp().block_on(async {
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
        let remote = common::netns::CP_IP;
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
    });
}

/// `kuma-dp run` for a Dataplane `web-1` (written under `dir`) against `cp`, without a token;
/// its admin port is `admin` and its inbound ports `inbound` and `inbound + 1`.
async fn web_kuma_dp(
    cp: &Standalone,
    dir: &std::path::Path,
    admin: u16,
    inbound: u16,
) -> tokio::process::Command {
    let dataplane = dir.join("web-1.yaml");
    std::fs::write(
        &dataplane,
        format!(
            "type: Dataplane\nmesh: default\nname: web-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {inbound}\n    servicePort: {}\n    tags:\n      kuma.io/service: web\n",
            inbound + 1
        ),
    )
    .unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_kuma-dp"));
    cmd.kill_on_drop(true)
        .args(["run", "--cp-address"])
        .arg(format!("https://localhost:{}", cp.dp_port))
        .args(["--ca-cert-file", &cp.ca_file, "--binary-path"])
        .arg(kuma_testkit::envoy_binary())
        .arg("--dataplane-file")
        .arg(&dataplane)
        .args(["--admin-port", &admin.to_string(), "--readiness-port"])
        .arg(kuma_testkit::free_port().await.to_string())
        .arg("--config-dir")
        .arg(dir.join("web-1"));
    cmd
}

/// Runs `kuma-dp run` for Dataplane `web-1` with `token` (none when `None`); it must exit
/// without starting Envoy. Returns its stderr.
async fn refused_kuma_dp(cp: &Standalone, dir: &std::path::Path, token: Option<&str>) -> String {
    let mut cmd = web_kuma_dp(cp, dir, kuma_testkit::free_port().await, 24001).await;
    if let Some(token) = token {
        let file = dir.join("token");
        std::fs::write(&file, token).unwrap();
        cmd.arg("--dataplane-token-file").arg(&file);
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(20), cmd.output())
        .await
        .expect("kuma-dp gives up instead of running")
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("Envoy started"), "{stderr}");
    stderr
}

fn token_id(token: &str) -> String {
    let claims: serde_json::Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    claims["jti"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_without_a_valid_token_are_refused() {
    let cp = Standalone::start(&[]).await;
    let dir = common::test_dir("token-refusals");
    let issue = async |body: &str| {
        let (status, token) = post(cp.api_port, body).await;
        assert_eq!(status, 200, "{token}");
        token
    };

    let stderr = refused_kuma_dp(&cp, &dir, None).await;
    assert!(
        stderr.contains("(401)") && stderr.contains("a dataplane token is required"),
        "{stderr}"
    );

    let other = issue(r#"{"name": "db-1", "mesh": "default"}"#).await;
    let stderr = refused_kuma_dp(&cp, &dir, Some(&other)).await;
    assert!(
        stderr.contains(r#"the token is for Dataplane \"db-1\", not \"web-1\""#),
        "{stderr}"
    );

    let wrong_tag =
        issue(r#"{"name": "web-1", "mesh": "default", "tags": {"kuma.io/service": ["db"]}}"#).await;
    let stderr = refused_kuma_dp(&cp, &dir, Some(&wrong_tag)).await;
    assert!(
        stderr.contains("requires tag kuma.io/service=db"),
        "{stderr}"
    );

    let short = issue(r#"{"name": "web-1", "mesh": "default", "validFor": "1s"}"#).await;
    // Past its expiry and the 5 s of clock skew every token is given.
    tokio::time::sleep(std::time::Duration::from_secs(7)).await;
    let stderr = refused_kuma_dp(&cp, &dir, Some(&short)).await;
    assert!(stderr.contains("the token has expired"), "{stderr}");

    let revoked = issue(r#"{"name": "web-1", "mesh": "default"}"#).await;
    let secret = serde_json::json!({
        "type": "Secret", "mesh": "default", "name": "dataplane-token-revocations-default",
        "data": base64::engine::general_purpose::STANDARD.encode(token_id(&revoked)),
    });
    let r = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .put(format!(
            "http://127.0.0.1:{}/meshes/default/secrets/dataplane-token-revocations-default",
            cp.api_port
        ))
        .header("content-type", "application/json")
        .body(secret.to_string())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let stderr = refused_kuma_dp(&cp, &dir, Some(&revoked)).await;
    assert!(stderr.contains("the token is revoked"), "{stderr}");

    let forged = format!("{}x", &revoked[..revoked.len() - 1]);
    let stderr = refused_kuma_dp(&cp, &dir, Some(&forged)).await;
    assert!(stderr.contains("invalid dataplane token"), "{stderr}");

    // Nothing of web-1 reached the store.
    let (status, _) = kuma_testkit::http_get(cp.api_port, "/meshes/default/dataplanes/web-1").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_checks_can_be_switched_off_for_development() {
    let cp = Standalone::start(&[("KUMA_DP_SERVER_AUTHN_DP_PROXY_TYPE", "none")]).await;
    let dir = common::test_dir("token-none");
    let admin = kuma_testkit::free_port().await;
    let inbound = kuma_testkit::free_port().await;
    let mut dp = web_kuma_dp(&cp, &dir, admin, inbound)
        .await
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Without a token, the proxy gets its config over ADS.
    kuma_testkit::eventually("web-1 receives its listeners", || async {
        let stats = kuma_testkit::envoy_stats(admin).await;
        kuma_testkit::stat(&stats, "listener_manager.lds.update_success").unwrap_or(0) > 0
    })
    .await;
    dp.kill().await.unwrap();
}
