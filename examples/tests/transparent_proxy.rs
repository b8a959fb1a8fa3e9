//! A workload behind a transparent proxy reaches `backend.mesh` by name, as Kuma's transparent
//! proxying makes it work. iptables in a network namespace that the test creates sends the
//! workload's DNS queries (UDP and TCP to 127.0.0.1:53) to kuma-dp's DNS proxy on 15053, and its
//! connections to VIPs (240.0.0.0/4) to Envoy's outbound redirect port 15001. That Envoy
//! hands each connection to the `outbound:<vip>:<port>` listener for its original destination.
//! The control plane, both proxies and the service run in the namespace too. The workload is
//! plain `curl` and `getent`, started with `ip netns exec` so that they read the namespace's
//! resolv.conf.
//!
//! Needs root, iproute2 and iptables (scripts/test installs iptables).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use common::netns::{Netns, run};
use common::{Standalone, dig, example_resolver, test_dir};
use kuma_testkit::{envoy_stats, free_port};

/// The address of the namespace's `eth0`, where both proxies' inbounds listen.
const POD_IP: &str = "10.11.12.13";

/// The workload's network namespace: a pod-like interface `eth0` with address [`POD_IP`] and
/// the default route, and a resolv.conf that names 127.0.0.1 (removed on drop).
struct Pod {
    ns: Netns,
}

impl Pod {
    fn create(name: &str) -> Pod {
        let ns = Netns::create(name);
        // Connections to VIPs need a route and a source address, as in a pod: one end of a
        // veth pair stands for the pod's interface.
        let veth = [
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
        ];
        run("ip", &[&["-n", name][..], &veth].concat());
        let addr = format!("{POD_IP}/24");
        run("ip", &["-n", name, "addr", "add", &addr, "dev", "eth0"]);
        for link in ["eth0", "eth1"] {
            run("ip", &["-n", name, "link", "set", link, "up"]);
        }
        run(
            "ip",
            &["-n", name, "route", "add", "default", "dev", "eth0"],
        );
        let pod = Pod { ns };
        let etc = pod.etc_dir();
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(
            etc.join("resolv.conf"),
            "nameserver 127.0.0.1\noptions timeout:1 attempts:2\n",
        )
        .unwrap();
        pod
    }

    /// `/etc/netns/<name>`: `ip netns exec` mounts its files over `/etc`.
    fn etc_dir(&self) -> std::path::PathBuf {
        std::path::Path::new("/etc/netns").join(&self.ns.name)
    }

    /// Adds a rule to the namespace's nat table (needs iptables).
    fn iptables(&self, rule: &str) {
        let out = self.ns.exec(
            &[
                &["iptables", "-t", "nat"],
                &rule.split(' ').collect::<Vec<_>>()[..],
            ]
            .concat(),
        );
        assert!(
            out.status.success(),
            "iptables {rule}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.etc_dir());
    }
}

#[test]
fn a_workload_reaches_backend_mesh_through_dns_and_its_vip_listener() {
    run_in_pod("mesh");
}

/// The same with `dnsServer.domain: internal` (and kuma-dp's `--dns-domain internal`): the
/// control plane's DNS server, kuma-dp's DNS proxy and the VIP listeners all follow it. Here
/// web lists `reachableServices: [backend]`, and a second service, `other`, gets no outbound
/// and no traffic from it.
#[test]
fn another_dns_domain_and_reachable_services_work_end_to_end() {
    run_in_pod("internal");
}

/// `experimental.autoReachableServices` under mesh mTLS: web lists no `reachableServices`,
/// backend's MeshTrafficPermission admits web, and no permission admits anyone to `other`.
/// Web gets an outbound for backend only, and reaches it over mTLS; `other` has a VIP but no
/// listener in web's Envoy.
#[test]
fn automatic_reachable_services_trim_what_permissions_refuse() {
    run_in_pod_as("mesh", Variant::AutoReachable);
}

/// What a run of the scenario shows besides reaching backend.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Variant {
    /// Every service reached.
    Plain,
    /// web lists `reachableServices: [backend]`.
    ReachableServices,
    /// Permissions decide (see [`automatic_reachable_services_trim_what_permissions_refuse`]).
    AutoReachable,
}

fn run_in_pod(domain: &'static str) {
    let variant = if domain == "mesh" {
        Variant::Plain
    } else {
        Variant::ReachableServices
    };
    run_in_pod_as(domain, variant);
}

fn run_in_pod_as(domain: &'static str, variant: Variant) {
    let label = if variant == Variant::AutoReachable {
        "auto"
    } else {
        domain
    };
    let pod = Pod::create(&format!("kuma-tp-{label}-{}", std::process::id()));
    // Kuma's redirection, reduced to what this test's traffic needs: DNS to the proxy's
    // resolver, and connections to VIPs to the outbound redirect port.
    pod.iptables("-A OUTPUT -p udp -d 127.0.0.1 --dport 53 -j REDIRECT --to-ports 15053");
    pod.iptables("-A OUTPUT -p tcp -d 127.0.0.1 --dport 53 -j REDIRECT --to-ports 15053");
    pod.iptables("-A OUTPUT -p tcp -d 240.0.0.0/4 -j REDIRECT --to-ports 15001");
    pod.ns.enter();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(scenario(&pod.ns, domain, variant));
}

async fn scenario(ns: &Netns, domain: &str, variant: Variant) {
    let label = if variant == Variant::AutoReachable {
        "auto"
    } else {
        domain
    };
    let dir = test_dir(&format!("transparent-proxy-{label}"));
    // The resolver for names outside the mesh (the one kuma-dp forwards to).
    let (upstream, _stop) = example_resolver().await;
    let auto = if variant == Variant::AutoReachable {
        "true"
    } else {
        "false"
    };
    let cp = Standalone::start(&[
        ("KUMA_DNS_SERVER_DOMAIN", domain),
        ("KUMA_EXPERIMENTAL_AUTO_REACHABLE_SERVICES", auto),
    ])
    .await;
    let backend_name = format!("backend.{domain}");
    if variant == Variant::AutoReachable {
        // Mesh mTLS, and a permission for web to call backend; none for `other`.
        common::put_json(
            cp.api_port,
            "/meshes/default",
            r#"{"type": "Mesh", "name": "default", "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}}"#,
        )
        .await;
        common::put_json(
            cp.api_port,
            "/meshes/default/meshtrafficpermissions/backend-from-web",
            r#"{"type": "MeshTrafficPermission", "mesh": "default", "name": "backend-from-web", "spec": {"targetRef": {"kind": "MeshService", "name": "backend"}, "from": [{"targetRef": {"kind": "MeshService", "name": "web"}, "default": {"action": "Allow"}}]}}"#,
        )
        .await;
    }

    // backend: an HTTP service behind an ordinary proxy.
    let app = axum::Router::new().fallback(|| async { "hello from backend" });
    // Where the backend's proxy forwards to: the inbound's address (the pod's), servicePort.
    let listener = tokio::net::TcpListener::bind((POD_IP, 0)).await.unwrap();
    let app_port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let backend_port = free_port().await;
    let backend = format!(
        "type: Dataplane\nmesh: default\nname: backend-1\nnetworking:\n  address: {POD_IP}\n  inbound:\n  - port: {backend_port}\n    servicePort: {app_port}\n    tags:\n      kuma.io/service: backend\n      kuma.io/protocol: http\n"
    );
    let _backend = cp.proxy(&dir, "backend-1", &backend, &[]).await;
    // web may reach backend only: `other` is a service it must not get.
    let reachable = variant != Variant::Plain;
    let mut other_dp = None;
    if reachable {
        let other_port = free_port().await;
        let other = format!(
            "type: Dataplane\nmesh: default\nname: other-1\nnetworking:\n  address: {POD_IP}\n  inbound:\n  - port: {other_port}\n    servicePort: {app_port}\n    tags:\n      kuma.io/service: other\n      kuma.io/protocol: http\n"
        );
        other_dp = Some(cp.proxy(&dir, "other-1", &other, &[]).await);
    }
    let reachable_services = if variant == Variant::ReachableServices {
        "    reachableServices: [backend]\n"
    } else {
        ""
    };

    // web: the workload's proxy, transparent, on Kuma's redirect ports and DNS port.
    let web = format!(
        "type: Dataplane\nmesh: default\nname: web-1\nnetworking:\n  address: {POD_IP}\n  inbound:\n  - port: {}\n    servicePort: {}\n    tags:\n      kuma.io/service: web\n  transparentProxying:\n    redirectPortInbound: 15006\n    redirectPortOutbound: 15001\n{reachable_services}",
        free_port().await,
        free_port().await,
    );
    let web_dp = cp
        .proxy(
            &dir,
            "web-1",
            &web,
            &[
                "--dns-upstream",
                &upstream.to_string(),
                "--dns-domain",
                domain,
            ],
        )
        .await;

    // curl's output, its error when it has no output.
    let curl = |url: String| {
        let out = ns.exec(&["curl", "-sS", "--max-time", "3", &url]);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        if stdout.is_empty() { stderr } else { stdout }
            .trim()
            .to_string()
    };
    // The proxy gets its listeners and the DNS proxy its records within seconds.
    let mut last = String::new();
    for _ in 0..60 {
        last = curl(format!("http://{backend_name}/"));
        if last == "hello from backend" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert_eq!(last, "hello from backend", "curl http://{backend_name}/");

    // The name resolved, through the system resolver, to the VIP the control plane allocated
    // and serves on 5653.
    let vip = dig(cp.dns_port, &backend_name);
    assert!(vip.starts_with("240."), "backend's VIP: {vip:?}");
    let resolved = ns.exec(&["getent", "ahostsv4", &backend_name]);
    let resolved = String::from_utf8_lossy(&resolved.stdout);
    assert_eq!(
        resolved.split_whitespace().next(),
        Some(vip.as_str()),
        "{resolved}"
    );

    // A lookup over TCP (dig +tcp to the namespace's resolver) reaches the DNS proxy too.
    let over_tcp = ns.exec(&["dig", "+tcp", "+short", &backend_name]);
    assert_eq!(String::from_utf8_lossy(&over_tcp.stdout).trim(), vip);

    // The connection went through web's listener for the VIP on port 80, and the service's own
    // port is served on the VIP too.
    let stat = |name: String| async move {
        kuma_testkit::stat(&envoy_stats(web_dp.admin_port).await, &name).unwrap_or(0)
    };
    let vip80 = format!("listener.{vip}_80.downstream_cx_total");
    assert!(stat(vip80.clone()).await >= 1, "{vip80}");
    assert_eq!(
        curl(format!("http://{backend_name}:{backend_port}/")),
        "hello from backend"
    );
    let vip_real = format!("listener.{vip}_{backend_port}.downstream_cx_total");
    assert!(stat(vip_real.clone()).await >= 1, "{vip_real}");

    // Names outside the mesh still resolve, through kuma-dp's forwarding.
    let other = ns.exec(&["getent", "ahostsv4", "www.example"]);
    assert_eq!(
        String::from_utf8_lossy(&other.stdout)
            .split_whitespace()
            .next(),
        Some("192.0.2.10")
    );
    // An unknown mesh name does not resolve, and gets no connection anywhere.
    let nope = format!("nope.{domain}");
    assert!(!ns.exec(&["getent", "hosts", &nope]).status.success());
    if variant == Variant::ReachableServices {
        // The default domain is not served on the side.
        assert!(dig(cp.dns_port, "backend.mesh").is_empty());
    }
    if reachable {
        // `other` has a VIP, but web has no listener for it and cannot reach it.
        let other_vip = dig(cp.dns_port, &format!("other.{domain}"));
        assert!(other_vip.starts_with("240."), "other's VIP: {other_vip:?}");
        let (_, listeners) = kuma_testkit::http_get(web_dp.admin_port, "/listeners").await;
        assert!(
            listeners.contains(&format!("outbound:{vip}:80")),
            "{listeners}"
        );
        assert!(!listeners.contains(&other_vip), "{listeners}");
        let refused = curl(format!("http://other.{domain}/"));
        assert_ne!(
            refused, "hello from backend",
            "other is not reachable: {refused}"
        );
        drop(other_dp);
    }
}
