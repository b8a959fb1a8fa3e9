//! End to end with real Envoy 1.40: the control plane serves bootstraps and generated config;
//! TCP traffic flows client -> Envoy outbound -> Envoy inbound -> echo service; a second backend
//! joins and receives traffic; when its proxy stops, its Dataplane is deregistered and traffic
//! returns to the first.
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

mod common;

use common::{call, dataplane, post_bootstrap, start_proxy, start_proxy_with};
use kuma_testkit::{envoy_stats as stats, eventually, free_port, stat};
use std::collections::BTreeSet;
use std::time::Duration;

use kuma_ca::dataplane_token::{DataplaneIdentity, DataplaneTokens};
use kuma_core::resource::{ResourceKey, ResourceType};
use kuma_cp::{Config, ControlPlane};

/// A dataplane token for Dataplane `name` of mesh `default`, valid for an hour.
async fn token(cp: &ControlPlane, name: &str) -> String {
    let identity = DataplaneIdentity {
        name: name.into(),
        mesh: "default".into(),
        ..Default::default()
    };
    DataplaneTokens::new(cp.manager().clone())
        .issue(&identity, Duration::from_secs(3600))
        .await
        .unwrap()
}

/// Which backends answer within `tries` calls.
async fn backends_seen(port: u16, tries: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..tries {
        if let Some(id) = call(port).await {
            seen.insert(id);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_data_path_through_generated_config() {
    let mut config = Config::default();
    config.dp_server.port = free_port().await;
    config.api_server.http.enabled = false;
    config.api_server.https.enabled = false;
    config.monitoring_assignment_server.enabled = false;
    config.diagnostics.server_port = free_port().await;
    config.dns_server.port = free_port().await;
    config.xds_server.dataplane_deregistration_delay = "1s".parse().unwrap();
    let cp = ControlPlane::start(config)
        .await
        .expect("control plane starts");
    let cp_port = cp.dp_server_addr().expect("the dp-server listens").port();
    let ca = cp.ca_pem().to_string();
    let ca = ca.as_str();

    // The dp-server speaks TLS only, with a certificate an independent verifier (rustls with
    // the control plane's CA) accepts for "localhost"; a client trusting another CA is refused.
    let other_ca = kuma_ca::BuiltinCa::generate("other", kuma_ca::KeyType::EcdsaP256).unwrap();
    let other_ca = kuma_ca::CertificateAuthority::root_pem(&other_ca);
    let wrong = kuma_dp::tls::client_config(Some(other_ca)).unwrap();
    assert!(
        kuma_dp::tls::connect("localhost", cp_port, wrong)
            .await
            .is_err(),
        "a foreign CA must not verify"
    );
    assert!(
        kuma_testkit::refuses_plain_http(cp_port).await,
        "no plaintext"
    );

    // Bootstrap errors. The token is checked before anything else the request carries: a
    // caller without one learns neither whether the mesh exists nor what is wrong with its
    // Dataplane.
    assert_eq!(post_bootstrap(cp_port, ca, "{not json").await.0, 400);
    let unknown_mesh = serde_json::json!({"mesh": "nope", "name": "x", "dataplaneResource": dataplane("x", 1, 2, "s", None).replace("mesh: default", "mesh: nope")});
    let (status, body) = post_bootstrap(cp_port, ca, &unknown_mesh.to_string()).await;
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains("nope"), "{body}");
    let invalid = serde_json::json!({"mesh": "default", "name": "x", "dataplaneResource": dataplane("x", 0, 2, "s", None)});
    let (status, body) = post_bootstrap(cp_port, ca, &invalid.to_string()).await;
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains("inbound"), "{body}");
    let invalid = serde_json::json!({"mesh": "default", "name": "x", "dataplaneResource": dataplane("x", 0, 2, "s", None), "dataplaneToken": token(&cp, "x").await});
    let (status, body) = post_bootstrap(cp_port, ca, &invalid.to_string()).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("networking.inbound[0].port"), "{body}");

    let echo1 = kuma_testkit::echo_server("backend-1:").await;
    let (b1_in, web_in, web_out) = (free_port().await, free_port().await, free_port().await);
    let b1 = start_proxy(
        cp_port,
        ca,
        "backend-1",
        &dataplane("backend-1", b1_in, echo1, "backend", None),
        &token(&cp, "backend-1").await,
    )
    .await;
    let web = start_proxy(
        cp_port,
        ca,
        "web",
        &dataplane(
            "web",
            web_in,
            free_port().await,
            "web",
            Some((web_out, "backend")),
        ),
        &token(&cp, "web").await,
    )
    .await;

    eventually("traffic through web's outbound to backend-1", || async {
        call(web_out).await.as_deref() == Some("backend-1")
    })
    .await;
    for p in [&b1, &web] {
        let s = stats(p.admin_port).await;
        assert_eq!(stat(&s, "control_plane.connected_state"), Some(1));
        assert_eq!(stat(&s, "cluster_manager.cds.update_rejected"), Some(0));
        assert_eq!(stat(&s, "listener_manager.lds.update_rejected"), Some(0));
    }
    let key = |n: &str| ResourceKey::new(ResourceType::Dataplane, "default", n);
    cp.manager()
        .get(&key("web"))
        .await
        .expect("web registered on connect");

    // A second backend joins: traffic reaches it without restarting anything.
    let echo2 = kuma_testkit::echo_server("backend-2:").await;
    let b2_in = free_port().await;
    let mut b2 = start_proxy(
        cp_port,
        ca,
        "backend-2",
        &dataplane("backend-2", b2_in, echo2, "backend", None),
        &token(&cp, "backend-2").await,
    )
    .await;
    eventually("both backends answer", || async {
        backends_seen(web_out, 20).await
            == BTreeSet::from(["backend-1".to_string(), "backend-2".to_string()])
    })
    .await;

    // Its proxy stops: after the deregistration delay its Dataplane and endpoint are gone.
    b2.child.kill().await.unwrap();
    eventually("backend-2 deregistered", || async {
        cp.manager().get(&key("backend-2")).await.is_err()
    })
    .await;
    let web_admin = web.admin_port;
    let clusters = || async move { kuma_testkit::http_get(web_admin, "/clusters").await.1 };
    assert!(
        clusters()
            .await
            .contains(&format!("backend::127.0.0.1:{b1_in}::")),
        "web's Envoy knows backend-1's endpoint"
    );
    eventually("backend-2's endpoint removed from web's Envoy", || async {
        !clusters().await.contains(&format!("127.0.0.1:{b2_in}::"))
    })
    .await;
    eventually("only backend-1 answers", || async {
        backends_seen(web_out, 10).await == BTreeSet::from(["backend-1".to_string()])
    })
    .await;
    cp.manager()
        .get(&key("backend-1"))
        .await
        .expect("connected proxies stay registered");

    // ADS admits a stream only with a token for its Dataplane. This Envoy's bootstrap is
    // genuine, but its ADS metadata carries web's token: the stream is refused with the
    // reason, and nothing is served or registered.
    let intruder_token = token(&cp, "intruder").await;
    let web_token = token(&cp, "web").await;
    let intruder = start_proxy_with(
        cp_port,
        ca,
        "intruder",
        &dataplane(
            "intruder",
            free_port().await,
            free_port().await,
            "backend",
            None,
        ),
        &intruder_token,
        |b| b.replace(&intruder_token, &web_token),
    )
    .await;
    let log = intruder.dir.join("envoy.log");
    eventually("Envoy reports the refusal", || async {
        // Envoy logs the gRPC status message percent-encoded, as it travels.
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .replace("%20", " ")
            .replace("%22", "'")
            .contains("closed: 16, the dataplane token does not match: invalid claims: the token is for Dataplane 'web', not 'intruder'")
    })
    .await;
    let s = stats(intruder.admin_port).await;
    assert_eq!(
        stat(&s, "cluster_manager.cds.update_success"),
        Some(0),
        "no clusters served"
    );
    assert_eq!(
        stat(&s, "listener_manager.lds.update_success"),
        Some(0),
        "no listeners served"
    );
    assert!(
        cp.manager().get(&key("intruder")).await.is_err(),
        "not registered"
    );

    for mut p in [b1, web, b2, intruder] {
        p.child.kill().await.ok();
        std::fs::remove_dir_all(&p.dir).ok();
    }
    cp.shutdown().await;
}
