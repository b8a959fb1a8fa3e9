//! SDS on a port of its own: a real Envoy (1.40) gets its listeners over ADS and the
//! listener's certificate from the `SecretDiscoveryService` of the same server, on another
//! port, through a static cluster of its bootstrap (the config source Kuma's mesh mTLS uses
//! when `MeshMtls::sds_cluster` is set). `openssl s_client` then verifies the certificate the
//! listener presents. The SDS service refuses other types (checked with grpcio).
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{
    DataSource, TransportSocket, data_source::Specifier,
    transport_socket::ConfigType as SocketConfig,
};
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret, TlsCertificate, secret,
};
use kuma_testkit::{envoy_stats, free_port, stat};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use xds_server::cache::{Snapshot, SnapshotCache};
use xds_server::envoy::{any, socket_address, tcp_proxy};
use xds_server::server::{AdsServer, NoCallbacks};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn inline(text: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineString(text.to_string())),
        ..Default::default()
    })
}

/// A TLS listener on `port` whose certificate is the secret `identity`, fetched over SDS
/// from the bootstrap's cluster `sds`, and that secret.
fn snapshot(port: u16) -> Snapshot {
    let tls = DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![SdsSecretConfig {
                name: "identity".into(),
                sds_config: Some(xds_server::envoy::grpc_config_source("sds")),
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let tcp = tcp_proxy("tls", "nowhere");
    let listener = Listener {
        name: "inbound:tls".into(),
        address: Some(socket_address("127.0.0.1", u32::from(port))),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.tcp_proxy".into(),
                config_type: Some(ConfigType::TypedConfig(any(&tcp))),
            }],
            transport_socket: Some(TransportSocket {
                name: "envoy.transport_sockets.tls".into(),
                config_type: Some(SocketConfig::TypedConfig(any(&tls))),
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let secret = Secret {
        name: "identity".into(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(&fixture("mtls-fixture-identity.pem")),
            private_key: inline(&fixture("mtls-fixture-identity.key")),
            ..Default::default()
        })),
    };
    Snapshot::new([
        ("inbound:tls".to_string(), any(&listener)),
        ("identity".to_string(), any(&secret)),
    ])
}

/// How the SDS service ends a StreamSecrets call asking for clusters, from grpcio.
fn ask_sds_for_clusters(port: u16) -> String {
    use kuma_testkit::pb_field;
    let node = pb_field(1, b"envoy-1");
    let mut request = pb_field(2, &node);
    request.extend(pb_field(
        4,
        b"type.googleapis.com/envoy.config.cluster.v3.Cluster",
    ));
    kuma_testkit::grpcio_stream_status(
        port,
        None,
        "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets",
        &request,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_fetches_its_certificate_from_sds_on_its_own_port() {
    let cache = Arc::new(SnapshotCache::new());
    let ads = AdsServer::new(cache.clone(), Arc::new(NoCallbacks)).into_service();
    let sds = ads.sds();
    let (xds, sds_listener) = (
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    );
    let (xds_port, sds_port) = (
        xds.local_addr().unwrap().port(),
        sds_listener.local_addr().unwrap().port(),
    );
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ads)
            .serve_with_incoming(TcpListenerStream::new(xds)),
    );
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(sds)
            .serve_with_incoming(TcpListenerStream::new(sds_listener)),
    );
    let (listen_port, admin_port) = (free_port().await, free_port().await);
    cache.set("envoy-1", snapshot(listen_port));

    // The ADS bootstrap plus the static cluster `sds` on the SDS port.
    let bootstrap = format!(
        "{}{}",
        kuma_testkit::ads_bootstrap("envoy-1", xds_port, admin_port, "GRPC"),
        kuma_testkit::static_grpc_cluster("sds", sds_port)
    );
    let dir = std::env::temp_dir().join(format!("xds-server-sds-{}", std::process::id()));
    let _envoy = kuma_testkit::spawn_envoy(&dir, &bootstrap, listen_port);

    let mut active = None;
    for _ in 0..100 {
        let s = envoy_stats(admin_port).await;
        active = stat(&s, "listener_manager.total_listeners_active");
        if active == Some(1) && stat(&s, "sds.identity.update_success").unwrap_or(0) >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(dir.join("envoy.log")).unwrap_or_default();
    assert_eq!(active, Some(1), "the TLS listener is active: {log}");
    // The secret came over the SDS port's stream, not over ADS.
    let s = envoy_stats(admin_port).await;
    assert!(
        stat(&s, "cluster.sds.upstream_rq_total").unwrap_or(0) >= 1,
        "Envoy opened a stream to the SDS port"
    );

    // The listener presents the certificate SDS delivered, verified against the mesh CA.
    let ca = format!(
        "{}/tests/fixtures/mtls-fixture-ca.pem",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{listen_port}")])
        .args(["-CAfile", &ca, "-verify_return_error"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Verify return code: 0 (ok)"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The SDS service serves secrets only.
    let refused = ask_sds_for_clusters(sds_port);
    assert!(
        refused.starts_with("INVALID_ARGUMENT") && refused.contains("serves only"),
        "{refused}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
