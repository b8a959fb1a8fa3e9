//! The generic server against a second, independent xDS implementation: grpcio's xDS client
//! (`xds:///my-service`, `GRPC_XDS_BOOTSTRAP`) resolves api_listener -> route -> cluster ->
//! endpoints over state-of-the-world ADS and a real RPC succeeds.
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{HttpConnectionManager, HttpFilter};
use xds_server::cache::{Snapshot, SnapshotCache};
use xds_server::envoy::{any, eds_cluster, load_assignment};
use xds_server::server::{AdsServer, Callbacks};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

#[derive(Default)]
struct Acks(Mutex<Vec<String>>);

impl Callbacks for Acks {
    fn on_ack(&self, _: u64, _: &str, type_url: &str, _: &str) {
        self.0
            .lock()
            .unwrap()
            .push(type_url.rsplit('.').next().unwrap_or_default().to_string());
    }
}

fn snapshot(backend_port: u16) -> Snapshot {
    let route = RouteConfiguration {
        name: "my-route".into(),
        virtual_hosts: vec![VirtualHost {
            name: "my-service".into(),
            domains: vec!["*".into()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix(String::new())),
                    ..Default::default()
                }),
                action: Some(Action::Route(RouteAction {
                    cluster_specifier: Some(ClusterSpecifier::Cluster("my-cluster".into())),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let hcm = HttpConnectionManager {
        stat_prefix: "grpc".into(),
        route_specifier: Some(RouteSpecifier::RouteConfig(route)),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(ConfigType::TypedConfig(any(&Router::default()))),
            ..Default::default()
        }],
        ..Default::default()
    };
    let listener = Listener {
        name: "my-service".into(),
        api_listener: Some(ApiListener {
            api_listener: Some(any(&hcm)),
        }),
        ..Default::default()
    };
    Snapshot::new([
        ("my-service".to_string(), any(&listener)),
        ("my-cluster".to_string(), any(&eds_cluster("my-cluster"))),
        (
            "my-cluster".to_string(),
            any(&load_assignment(
                "my-cluster",
                &[("127.0.0.1".to_string(), u32::from(backend_port))],
            )),
        ),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_xds_client_completes_an_rpc() {
    let cache = Arc::new(SnapshotCache::new());
    let acks = Arc::new(Acks::default());
    let xds = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let xds_port = xds.local_addr().unwrap().port();
    let service = AdsServer::new(cache.clone(), acks.clone()).into_service();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(xds)),
    );

    let backend_port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    cache.set("grpc-client", snapshot(backend_port));

    let dir = std::env::temp_dir().join(format!("xds-server-grpc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bootstrap = dir.join("bootstrap.json");
    let config = serde_json::json!({
        "xds_servers": [{"server_uri": format!("127.0.0.1:{xds_port}"), "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
        "node": {"id": "grpc-client", "locality": {}},
    });
    std::fs::write(&bootstrap, config.to_string()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc/xds_client.py");
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tokio::process::Command::new("python3")
            .arg(script)
            .arg(backend_port.to_string())
            .arg(&bootstrap)
            .output(),
    )
    .await
    .expect("the gRPC client finishes")
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "gRPC xDS client failed: {stdout}\n{stderr}\n(run scripts/test to install grpcio)"
    );
    assert_eq!(stdout.trim(), "SERVING");
    let acked = acks.0.lock().unwrap().clone();
    for t in ["Listener", "Cluster", "ClusterLoadAssignment"] {
        assert!(acked.iter().any(|a| a == t), "grpcio ACKed {t}: {acked:?}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
