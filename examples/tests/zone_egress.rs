//! External services through a zone egress, with the binaries users run, on hosts of the
//! test's own: the control plane and `web` on one network namespace (10.77.0.1), the zone
//! egress and two external servers on another (10.77.0.2), where a firewall turns away every
//! connection to the servers that does not come from that host itself: only the egress
//! reaches them. With `Mesh.routing.zoneEgress: true`, web's sidecar sends to the egress over
//! mesh mTLS; the egress terminates it, applies MeshTrafficPermission, and connects out, in
//! plain HTTP to one server and with TLS (a test CA, an SNI of the ExternalService's) to the
//! other, which it finds by name (`secure.ext.test`, in the hosts file of the test's
//! namespaces). web's DNS proxy resolves that name to a VIP of the mesh. A deny on the egress
//! answers 403, a fault injected there 418. With `zoneEgress` off, the sidecar connects out itself (once the firewall lets
//! it).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::sync::Arc;

use common::netns::{CP_IP, Lab, REMOTE_IP, join, run};
use common::{Standalone, send_json, spawn_kuma_dp_in, test_dir};
use kuma_testkit::{eventually, free_port, http_get, stat};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Starts, on the lab's remote host (a thread inside its namespace), an HTTP server on
/// 10.77.0.2 answering `plain`, and a TLS server there (certificate `cert`/`key`) answering
/// `secure <the SNI it was sent>`; returns their ports.
fn external_servers(lab: &Lab, cert: String, key: String) -> (u16, u16) {
    let (tx, rx) = std::sync::mpsc::channel();
    let ns = lab.remote.name.clone();
    std::thread::spawn(move || {
        let file = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let plain = tokio::net::TcpListener::bind((REMOTE_IP, 0)).await.unwrap();
                let secure = tokio::net::TcpListener::bind((REMOTE_IP, 0)).await.unwrap();
                tx.send((
                    plain.local_addr().unwrap().port(),
                    secure.local_addr().unwrap().port(),
                ))
                .unwrap();
                let app = axum::Router::new().fallback(|| async { "plain" });
                tokio::spawn(async move { axum::serve(plain, app).await });
                serve_tls(secure, &cert, &key).await;
            });
    });
    rx.recv().unwrap()
}

/// Serves `secure <SNI>` to each HTTP/1 request over TLS on `listener`.
async fn serve_tls(listener: tokio::net::TcpListener, cert: &str, key: &str) {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let certs = vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    while let Ok((tcp, _)) = listener.accept().await {
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                return;
            };
            let sni = tls.get_ref().1.server_name().unwrap_or("none").to_string();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let body = format!("secure {sni}");
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tls.write_all(response.as_bytes()).await;
            let _ = tls.shutdown().await;
        });
    }
}

/// The stats of the Envoy whose admin listens on 127.0.0.1:`admin` of the lab's remote host.
async fn remote_stats(lab: &Lab, admin: u16) -> String {
    join(lab.on_remote(move || async move { http_get(admin, "/stats").await.1 })).await
}

/// `PUT` of `body` at `path` on the control plane's API, which must accept it.
async fn put(api: u16, path: &str, body: Value) {
    let (status, answer) = send_json(api, "PUT", path, &body.to_string()).await;
    assert!(
        (200..300).contains(&status),
        "PUT {path}: {status} {answer}"
    );
}

/// `/etc/netns/<ns>/hosts` naming the secure server, for the programs `ip netns exec <ns>`
/// starts (it mounts the file over `/etc/hosts` for them); removed on drop.
struct HostsFile(Vec<std::path::PathBuf>);

impl HostsFile {
    fn write(namespaces: &[&str]) -> HostsFile {
        let dirs: Vec<std::path::PathBuf> = namespaces
            .iter()
            .map(|ns| std::path::PathBuf::from(format!("/etc/netns/{ns}")))
            .collect();
        for dir in &dirs {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(
                dir.join("hosts"),
                format!("127.0.0.1 localhost\n{REMOTE_IP} secure.ext.test\n"),
            )
            .unwrap();
        }
        HostsFile(dirs)
    }
}

impl Drop for HostsFile {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[test]
fn external_services_are_reached_through_the_zone_egress() {
    let lab = Lab::create("egress");
    let remote: Vec<String> = lab
        .remote
        .exec_prefix()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let remote: Vec<&str> = remote.iter().map(String::as_str).collect();
    let on_cp: Vec<String> = lab.cp.exec_prefix().iter().map(|s| s.to_string()).collect();
    let on_cp: Vec<&str> = on_cp.iter().map(String::as_str).collect();
    let _hosts = HostsFile::write(&[&lab.cp.name, &lab.remote.name]);
    let (ext_ca, ext_cert, ext_key) = kuma_testkit::server_certificate(&["secure.ext.test"]);
    let (plain_port, secure_port) = external_servers(&lab, ext_cert, ext_key);
    // Only the remote host itself reaches the servers.
    let ports = format!("{plain_port},{secure_port}");
    run(
        "ip",
        &[
            "netns",
            "exec",
            &lab.remote.name,
            "iptables",
            "-A",
            "INPUT",
            "-i",
            "eth0",
            "-p",
            "tcp",
            "-m",
            "multiport",
            "--dports",
            &ports,
            "-j",
            "REJECT",
        ],
    );
    lab.enter_cp().block_on(async {
        let dir = test_dir("zone-egress");
        let direct = tokio::net::TcpStream::connect((REMOTE_IP, plain_port)).await;
        assert!(direct.is_err(), "the external server is reachable directly");

        // The control plane's certificate names the address the egress dials: put where it
        // looks for the certificate it made before.
        let (ca, cert, key) = kuma_testkit::server_certificate(&[CP_IP, "127.0.0.1", "localhost"]);
        let work_dir = dir.join("cp");
        std::fs::create_dir_all(work_dir.join("tls")).unwrap();
        std::fs::write(work_dir.join("tls/ca.crt"), ca).unwrap();
        std::fs::write(work_dir.join("tls/cp.crt"), cert).unwrap();
        std::fs::write(work_dir.join("tls/cp.key"), key).unwrap();
        let log = std::fs::File::create(dir.join("cp.log")).unwrap();
        let cp = Standalone::launch(
            &[],
            &[],
            &[("KUMA_GENERAL_WORK_DIR", &work_dir.to_string_lossy())],
            std::process::Stdio::from(log),
        )
        .await;
        let ca_file = cp.ca_file.clone();
        let api = cp.api_port;

        // The egress routes by the SNI of mesh mTLS: without mTLS the mesh is refused.
        let (status, body) = send_json(
            api,
            "PUT",
            "/meshes/default",
            &json!({"type": "Mesh", "name": "default", "routing": {"zoneEgress": true}}).to_string(),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("routing.zoneEgress"), "{body}");
        put(
            api,
            "/meshes/default/meshtrafficpermissions/allow-all",
            json!({"type": "MeshTrafficPermission", "mesh": "default", "name": "allow-all",
                "spec": {"targetRef": {"kind": "Mesh"},
                    "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}]}}),
        )
        .await;
        put(
            api,
            "/meshes/default",
            json!({"type": "Mesh", "name": "default", "routing": {"zoneEgress": true},
                "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}}),
        )
        .await;

        // ExternalServices: a malformed one is refused with the field named.
        let (status, body) = send_json(
            api,
            "PUT",
            "/meshes/default/external-services/bad",
            &json!({"type": "ExternalService", "mesh": "default", "name": "bad",
                "networking": {"address": REMOTE_IP}, "tags": {"kuma.io/service": "bad"}})
            .to_string(),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("networking.address"), "{body}");
        put(
            api,
            "/meshes/default/external-services/httpbin",
            json!({"type": "ExternalService", "mesh": "default", "name": "httpbin",
                "networking": {"address": format!("{REMOTE_IP}:{plain_port}")},
                "tags": {"kuma.io/service": "httpbin", "kuma.io/protocol": "http"}}),
        )
        .await;
        put(
            api,
            "/meshes/default/external-services/secure",
            json!({"type": "ExternalService", "mesh": "default", "name": "secure",
                "networking": {"address": format!("secure.ext.test:{secure_port}"),
                    "tls": {"enabled": true, "caCert": {"inlineString": ext_ca}}},
                "tags": {"kuma.io/service": "secure", "kuma.io/protocol": "http"}}),
        )
        .await;

        // The egress runs on the remote host, with a zone token whose scope is egress.
        let (status, zone_token) = send_json(
            api,
            "POST",
            "/tokens/zone",
            r#"{"zone": "default", "scope": ["egress"]}"#,
        )
        .await;
        assert_eq!(status, 200, "{zone_token}");
        let egress_port = free_port().await;
        let egress = format!(
            "type: ZoneEgress\nname: egress-1\nnetworking:\n  address: {REMOTE_IP}\n  port: {egress_port}\n"
        );
        let egress_dp = spawn_kuma_dp_in(
            &remote,
            &dir,
            &format!("https://{CP_IP}:{}", cp.dp_port),
            &zone_token,
            &ca_file,
            "egress-1",
            &egress,
            &["--proxy-type", "egress"],
        )
        .await;
        eventually("the egress registers", || async {
            send_json(api, "GET", "/zoneegresses/egress-1", "").await.0 == 200
        })
        .await;

        // web reaches both by explicit outbounds, and by VIP on each one's own port.
        let (web_inbound, web_app, plain_out, secure_out) = (
            free_port().await,
            free_port().await,
            free_port().await,
            free_port().await,
        );
        let (redirect_in, redirect_out) = (free_port().await, free_port().await);
        let web = format!(
            "type: Dataplane\nmesh: default\nname: web-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {web_inbound}\n    servicePort: {web_app}\n    tags:\n      kuma.io/service: web\n  outbound:\n  - port: {plain_out}\n    tags:\n      kuma.io/service: httpbin\n  - port: {secure_out}\n    tags:\n      kuma.io/service: secure\n  transparentProxying:\n    redirectPortInbound: {redirect_in}\n    redirectPortOutbound: {redirect_out}\n"
        );
        let (status, web_token) = send_json(
            api,
            "POST",
            "/tokens/dataplane",
            r#"{"name": "web-1", "mesh": "default"}"#,
        )
        .await;
        assert_eq!(status, 200, "{web_token}");
        let (upstream, _stop) = common::example_resolver().await;
        let dns_port = free_port().await;
        let web_dp = spawn_kuma_dp_in(
            &on_cp,
            &dir,
            &format!("https://localhost:{}", cp.dp_port),
            &web_token,
            &ca_file,
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

        eventually("web reaches the plain server through the egress", || async {
            let (status, body) = http_get(plain_out, "/").await;
            status == 200 && kuma_testkit::response_body(&body) == "plain"
        })
        .await;
        eventually("web reaches the TLS server through the egress", || async {
            let (status, body) = http_get(secure_out, "/").await;
            status == 200 && kuma_testkit::response_body(&body) == "secure secure.ext.test"
        })
        .await;
        // web's sidecar sends to the egress; the egress terminated mesh TLS and connected out.
        let clusters = http_get(web_dp.admin_port, "/clusters").await.1;
        assert!(
            clusters.contains(&format!("httpbin::{REMOTE_IP}:{egress_port}::")),
            "{clusters}"
        );
        let stats = remote_stats(&lab, egress_dp.admin_port).await;
        let listener = format!("listener.inbound_{REMOTE_IP}_{egress_port}.");
        assert!(
            stats
                .lines()
                .any(|l| l.starts_with(&listener) && l.contains("ssl.handshake") && !l.ends_with(": 0")),
            "the egress terminated no TLS: {stats}"
        );
        assert!(
            stat(&stats, "cluster.default_httpbin.upstream_rq_total").unwrap_or(0) >= 1,
            "{stats}"
        );
        assert!(
            stat(&stats, "cluster.default_secure.ssl.handshake").unwrap_or(0) >= 1,
            "the egress originated no TLS to the secure server: {stats}"
        );

        // kumactl lists the external services and shows the egress online.
        let config = dir.join("kumactl.yaml");
        let api_url = format!("http://127.0.0.1:{api}");
        kumactl(&config, &["config", "control-planes", "add", "--name", "cp", "--address", &api_url]);
        let listed = kumactl(&config, &["get", "externalservices"]);
        assert!(listed.contains("httpbin") && listed.contains("secure"), "{listed}");
        let inspected = kumactl(&config, &["inspect", "zoneegresses"]);
        let row = inspected
            .lines()
            .find(|l| l.starts_with("egress-1"))
            .unwrap_or_else(|| panic!("{inspected}"));
        assert!(row.contains("Online"), "{inspected}");
        assert!(row.contains(&format!("{REMOTE_IP}:{egress_port}")), "{inspected}");

        // The VIP: `httpbin.mesh` resolves, and web listens on it at the server's own port.
        let vip = eventually_vip(cp.dns_port, "httpbin.mesh").await;
        eventually("web has an outbound on httpbin's VIP and port", || async {
            let listeners = http_get(web_dp.admin_port, "/listeners").await.1;
            listeners.contains(&format!("outbound:{vip}:{plain_port}"))
        })
        .await;
        // The secure server's host name gets a VIP of its own: web's DNS proxy answers it,
        // and web listens on it at the server's port.
        let host_vip = eventually_vip(dns_port, "secure.ext.test").await;
        assert!(host_vip.starts_with("240."), "{host_vip}");
        eventually("web has an outbound on the host's VIP and port", || async {
            let listeners = http_get(web_dp.admin_port, "/listeners").await.1;
            listeners.contains(&format!("outbound:{host_vip}:{secure_port}"))
        })
        .await;

        // A permission denying web the plain server, applied by the egress: 403 there, the
        // TLS server still reachable.
        put(
            api,
            "/meshes/default/meshtrafficpermissions/deny-httpbin",
            json!({"type": "MeshTrafficPermission", "mesh": "default", "name": "deny-httpbin",
                "spec": {"targetRef": {"kind": "MeshService", "name": "httpbin"},
                    "from": [{"targetRef": {"kind": "MeshService", "name": "web"},
                        "default": {"action": "Deny"}}]}}),
        )
        .await;
        eventually("the egress denies web the plain server", || async {
            http_get(plain_out, "/").await.0 == 403
        })
        .await;
        assert_eq!(http_get(secure_out, "/").await.0, 200);
        let stats = remote_stats(&lab, egress_dp.admin_port).await;
        assert!(
            stat(&stats, "http.httpbin_default.rbac.denied").unwrap_or(0) >= 1,
            "{stats}"
        );

        // A fault injected by the egress, as Kuma applies MeshFaultInjection there.
        let (status, _) = send_json(
            api,
            "DELETE",
            "/meshes/default/meshtrafficpermissions/deny-httpbin",
            "",
        )
        .await;
        assert_eq!(status, 200);
        eventually("web is let in again", || async {
            http_get(plain_out, "/").await.0 == 200
        })
        .await;
        let faults = "/meshes/default/meshfaultinjections/teapot";
        put(
            api,
            faults,
            json!({"type": "MeshFaultInjection", "mesh": "default", "name": "teapot",
                "spec": {"targetRef": {"kind": "MeshService", "name": "httpbin"},
                    "from": [{"targetRef": {"kind": "Mesh"}, "default": {"http": [
                        {"abort": {"httpStatus": 418, "percentage": 100}}]}}]}}),
        )
        .await;
        eventually("the egress injects the fault", || async {
            http_get(plain_out, "/").await.0 == 418
        })
        .await;
        assert_eq!(send_json(api, "DELETE", faults, "").await.0, 200);

        // Without zoneEgress the sidecar connects out itself: turned away by the firewall
        // until it lets 10.77.0.1 in, then served, with the egress no longer involved.
        put(
            api,
            "/meshes/default",
            json!({"type": "Mesh", "name": "default", "routing": {"zoneEgress": false},
                "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}}),
        )
        .await;
        eventually("web's sidecar sends to httpbin directly", || async {
            let clusters = http_get(web_dp.admin_port, "/clusters").await.1;
            clusters.contains(&format!("httpbin::{REMOTE_IP}:{plain_port}::"))
        })
        .await;
        assert_ne!(http_get(plain_out, "/").await.0, 200, "the firewall lets web in");
        run(
            "ip",
            &[
                "netns", "exec", &lab.remote.name, "iptables", "-I", "INPUT", "-s", CP_IP, "-j",
                "ACCEPT",
            ],
        );
        let before = remote_stats(&lab, egress_dp.admin_port).await;
        eventually("web reaches both servers directly", || async {
            let (plain, _) = http_get(plain_out, "/").await;
            let (status, body) = http_get(secure_out, "/").await;
            plain == 200 && status == 200 && kuma_testkit::response_body(&body) == "secure secure.ext.test"
        })
        .await;
        let after = remote_stats(&lab, egress_dp.admin_port).await;
        for counter in [
            "cluster.default_httpbin.upstream_rq_total",
            "cluster.default_secure.upstream_rq_total",
        ] {
            assert_eq!(stat(&before, counter), stat(&after, counter), "{counter}");
        }
        drop(web_dp);
        drop(egress_dp);
    });
}

/// Runs kumactl with `config` and `args`, which must succeed: its standard output.
fn kumactl(config: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kumactl"))
        .arg("--config-file")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kumactl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The VIP `name` resolves to on the control plane's DNS server (waits for it).
async fn eventually_vip(dns_port: u16, name: &'static str) -> String {
    let mut vip = String::new();
    for _ in 0..100 {
        vip = tokio::task::spawn_blocking(move || common::dig(dns_port, name))
            .await
            .unwrap()
            .trim()
            .to_string();
        if !vip.is_empty() {
            return vip;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{name} never resolved ({vip:?})");
}
