//! kuma-dp's DNS proxy for a transparent proxy: `.mesh` names answered from the records the
//! control plane hands over through the proxy's Envoy, other names forwarded upstream. Queried
//! with `dig` over UDP and TCP, against the real binaries.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use common::{Standalone, dig, example_resolver, test_dir};
use kuma_testkit::{eventually, free_port};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kuma_dp_answers_mesh_names_and_forwards_the_rest() {
    let dir = test_dir("dns-proxy");
    let cp = Standalone::start(&[]).await;
    // An upstream resolver for everything outside .mesh.
    let (upstream, _stop) = example_resolver().await;

    let backend = format!(
        "type: Dataplane\nmesh: default\nname: backend-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {}\n    servicePort: {}\n    tags:\n      kuma.io/service: backend\n",
        free_port().await,
        free_port().await
    );
    let _backend = cp.proxy(&dir, "backend-1", &backend, &[]).await;
    let web = format!(
        "type: Dataplane\nmesh: default\nname: web-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {}\n    servicePort: {}\n    tags:\n      kuma.io/service: web\n  transparentProxying:\n    redirectPortInbound: {}\n    redirectPortOutbound: {}\n",
        free_port().await,
        free_port().await,
        free_port().await,
        free_port().await
    );
    let dns_port = free_port().await;
    let _web = cp
        .proxy(
            &dir,
            "web-1",
            &web,
            &[
                "--dns-port",
                &dns_port.to_string(),
                "--dns-upstream",
                &upstream.to_string(),
            ],
        )
        .await;

    // The proxy answers each service's VIP, the one the control plane's DNS server gives.
    eventually("kuma-dp's DNS proxy answers backend.mesh", || async {
        let vip = dig(cp.dns_port, "backend.mesh");
        !vip.is_empty() && dig(dns_port, "backend.mesh") == vip
    })
    .await;
    let backend_vip = dig(cp.dns_port, "backend.mesh");
    let web_vip = dig(cp.dns_port, "web.mesh");
    for vip in [&backend_vip, &web_vip] {
        assert!(vip.starts_with("240."), "a VIP: {vip:?}");
    }
    assert_eq!(dig(dns_port, "web.mesh"), web_vip);
    let out = std::process::Command::new("dig")
        .args(["@127.0.0.1", "-p", &dns_port.to_string(), "nope.mesh"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("status: NXDOMAIN"));
    // Other names go to the upstream resolver.
    assert_eq!(dig(dns_port, "www.example"), "192.0.2.10");
    // The same over TCP.
    let tcp = |name: &str| {
        let out = std::process::Command::new("dig")
            .args([
                "@127.0.0.1",
                "-p",
                &dns_port.to_string(),
                name,
                "+tcp",
                "+short",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(tcp("backend.mesh"), backend_vip);
    assert_eq!(tcp("www.example"), "192.0.2.10");
}
