//! An xDS-only control plane: every Envoy that connects gets the same static snapshot, a TCP
//! listener proxying to one backend, over ADS (state of the world or delta, as Envoy asks).
//!
//! ```text
//! cargo run -p xds-server --example static_snapshot -- 127.0.0.1:18000 127.0.0.1:10000 127.0.0.1:8080
//! ```
//!
//! serves xDS on 127.0.0.1:18000 and tells Envoy to listen on 127.0.0.1:10000 and forward to
//! 127.0.0.1:8080. Start Envoy with a bootstrap whose `dynamic_resources` use ADS from a static
//! cluster pointing at 127.0.0.1:18000 (any node id). The crate's `tests/example.rs` does
//! exactly that with a real Envoy.

use std::net::SocketAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use xds_server::envoy::{any, eds_cluster, listener, load_assignment, tcp_proxy};
use xds_server::{AdsServer, Cache, EncodedResource, NoCallbacks, Snapshot};

/// A listener on `listen` forwarding every connection to the cluster `backend`, whose one
/// endpoint is `backend`.
pub fn snapshot(listen: SocketAddr, backend: SocketAddr) -> Snapshot {
    let mut inbound = listener(
        "backend",
        &listen.ip().to_string(),
        u32::from(listen.port()),
        TrafficDirection::Outbound,
    );
    inbound.filter_chains = vec![FilterChain {
        filters: vec![Filter {
            name: "envoy.filters.network.tcp_proxy".into(),
            config_type: Some(ConfigType::TypedConfig(any(&tcp_proxy(
                "backend", "backend",
            )))),
        }],
        ..Default::default()
    }];
    let endpoints = [(backend.ip().to_string(), u32::from(backend.port()))];
    Snapshot::new([
        (
            "backend".to_string(),
            EncodedResource::from_message(&inbound),
        ),
        (
            "backend".to_string(),
            EncodedResource::from_message(&eds_cluster("backend")),
        ),
        (
            "backend".to_string(),
            EncodedResource::from_message(&load_assignment("backend", &endpoints)),
        ),
    ])
}

/// A [`Cache`] that gives every node the same snapshot: the whole "control plane" of this
/// example. `SnapshotCache` is the per-node cache a real control plane uses.
pub struct SameForEveryNode(watch::Sender<Option<Arc<Snapshot>>>);

impl SameForEveryNode {
    /// Serves `snapshot` to everyone.
    pub fn new(snapshot: Snapshot) -> Self {
        SameForEveryNode(watch::channel(Some(Arc::new(snapshot))).0)
    }
}

impl Cache for SameForEveryNode {
    fn subscribe(&self, _node_id: &str) -> watch::Receiver<Option<Arc<Snapshot>>> {
        self.0.subscribe()
    }
}

/// Serves ADS on `xds` until the process ends.
pub async fn serve(xds: TcpListener, snapshot: Snapshot) -> Result<(), tonic::transport::Error> {
    let ads = AdsServer::new(
        Arc::new(SameForEveryNode::new(snapshot)),
        Arc::new(NoCallbacks),
    );
    tonic::transport::Server::builder()
        .add_service(ads.into_service())
        .serve_with_incoming(TcpListenerStream::new(xds))
        .await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut next = |default: &str| -> Result<SocketAddr, std::net::AddrParseError> {
        args.next().as_deref().unwrap_or(default).parse()
    };
    let (xds, listen, backend) = (
        next("127.0.0.1:18000")?,
        next("127.0.0.1:10000")?,
        next("127.0.0.1:8080")?,
    );
    println!("xDS on {xds}: Envoy listens on {listen} and forwards to {backend}");
    serve(TcpListener::bind(xds).await?, snapshot(listen, backend)).await?;
    Ok(())
}
