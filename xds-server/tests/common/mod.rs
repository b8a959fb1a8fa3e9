//! What the ADS and delta tests share: a server on a loopback port, and resource fixtures.
#![allow(clippy::unwrap_used, dead_code)] // test helpers; each test binary uses its own subset

use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use tokio_stream::wrappers::TcpListenerStream;
use xds_server::server::{AdsServer, Callbacks};
use xds_server::types::ENDPOINT;

/// Serves `server` on a free loopback port: its URL.
pub async fn serve<C: Callbacks>(server: AdsServer<C>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(server.into_service())
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

/// An empty ClusterLoadAssignment of the cluster `name`, keyed by its name.
pub fn endpoints(name: &str) -> (String, Any) {
    let e = ClusterLoadAssignment {
        cluster_name: name.to_string(),
        ..Default::default()
    };
    (
        name.to_string(),
        Any {
            type_url: ENDPOINT.to_string(),
            value: e.encode_to_vec(),
        },
    )
}
