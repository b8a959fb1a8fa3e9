//! The SotW ADS server against a gRPC client on a real socket.
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use xds_server::cache::{Snapshot, SnapshotCache};
use xds_server::server::{AdsServer, Callbacks};
use xds_server::types::{CLUSTER, ENDPOINT};

mod common;
use common::{endpoints, serve};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<String>>,
}

impl Recorder {
    fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }
}

impl Callbacks for Recorder {
    fn on_stream_open(&self, _: u64, node: &str) {
        self.events.lock().unwrap().push(format!("open {node}"));
    }
    fn on_ack(&self, _: u64, node: &str, type_url: &str, version: &str) {
        self.events
            .lock()
            .unwrap()
            .push(format!("ack {node} {} {version}", short(type_url)));
    }
    fn on_nack(&self, _: u64, node: &str, type_url: &str, version: &str, error: &str) {
        self.events
            .lock()
            .unwrap()
            .push(format!("nack {node} {} {version} {error}", short(type_url)));
    }
    fn on_stream_closed(&self, _: u64, node: &str) {
        self.events.lock().unwrap().push(format!("closed {node}"));
    }
}

fn short(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}

fn cluster(name: &str, timeout_ms: u32) -> (String, Any) {
    let c = Cluster {
        name: name.to_string(),
        per_connection_buffer_limit_bytes: Some(envoy_types::pb::google::protobuf::UInt32Value {
            value: timeout_ms,
        }),
        ..Default::default()
    };
    (
        name.to_string(),
        Any {
            type_url: CLUSTER.to_string(),
            value: c.encode_to_vec(),
        },
    )
}

/// A cluster of about 64 KiB, so a proxy that does not read fills its flow-control window fast.
fn big_cluster(name: &str, i: u32) -> (String, Any) {
    let c = Cluster {
        name: name.to_string(),
        alt_stat_name: format!("{i}-{}", "x".repeat(64 * 1024)),
        ..Default::default()
    };
    (
        name.to_string(),
        Any {
            type_url: CLUSTER.to_string(),
            value: c.encode_to_vec(),
        },
    )
}

async fn start(cache: Arc<SnapshotCache>, recorder: Arc<Recorder>) -> String {
    serve(AdsServer::new(cache, recorder)).await
}

struct Proxy {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

impl Proxy {
    async fn connect(url: &str) -> Proxy {
        let mut client = AggregatedDiscoveryServiceClient::connect(url.to_string())
            .await
            .unwrap();
        let (tx, req_rx) = mpsc::channel(16);
        let rx = client
            .stream_aggregated_resources(ReceiverStream::new(req_rx))
            .await
            .unwrap()
            .into_inner();
        Proxy { tx, rx }
    }

    async fn send(&self, req: DiscoveryRequest) {
        self.tx.send(req).await.unwrap();
    }

    async fn request(
        &self,
        node: Option<&str>,
        type_url: &str,
        names: &[&str],
        ack_of: Option<&DiscoveryResponse>,
    ) {
        self.send(DiscoveryRequest {
            node: node.map(|id| Node {
                id: id.to_string(),
                ..Default::default()
            }),
            type_url: type_url.to_string(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            version_info: ack_of.map(|r| r.version_info.clone()).unwrap_or_default(),
            response_nonce: ack_of.map(|r| r.nonce.clone()).unwrap_or_default(),
            ..Default::default()
        })
        .await;
    }

    async fn nack(&self, of: &DiscoveryResponse, message: &str) {
        self.send(DiscoveryRequest {
            type_url: of.type_url.clone(),
            response_nonce: of.nonce.clone(),
            error_detail: Some(RpcStatus {
                code: 3,
                message: message.to_string(),
                details: vec![],
            }),
            ..Default::default()
        })
        .await;
    }

    async fn next(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("response in time")
            .unwrap()
            .unwrap()
    }

    async fn nothing_for(&mut self, ms: u64) {
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(ms), self.rx.message()).await {
            panic!("unexpected response: {r:?}");
        }
    }
}

fn names(r: &DiscoveryResponse) -> Vec<String> {
    r.resources
        .iter()
        .map(|a| match a.type_url.as_str() {
            CLUSTER => Cluster::decode(a.value.as_slice()).unwrap().name,
            _ => {
                ClusterLoadAssignment::decode(a.value.as_slice())
                    .unwrap()
                    .cluster_name
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_nack_and_content_versions() {
    let cache = Arc::new(SnapshotCache::new());
    let rec = Arc::new(Recorder::default());
    let url = start(cache.clone(), rec.clone()).await;
    cache.set(
        "default.dp-1",
        Snapshot::new([cluster("a", 1), cluster("b", 1)]),
    );

    let mut p = Proxy::connect(&url).await;
    p.request(Some("default.dp-1"), CLUSTER, &[], None).await;
    let r1 = p.next().await;
    assert_eq!(names(&r1), ["a", "b"], "wildcard gets every cluster");
    p.request(None, CLUSTER, &[], Some(&r1)).await;
    p.nothing_for(200).await;

    // Re-setting identical content pushes nothing.
    assert!(!cache.set(
        "default.dp-1",
        Snapshot::new([cluster("b", 1), cluster("a", 1)])
    ));
    p.nothing_for(200).await;

    cache.set("default.dp-1", Snapshot::new([cluster("a", 2)]));
    let r2 = p.next().await;
    assert_ne!(r2.version_info, r1.version_info);
    assert_eq!(names(&r2), ["a"]);
    p.nack(&r2, "bad cluster").await;
    p.nothing_for(300).await; // no resend loop

    cache.set("default.dp-1", Snapshot::new([cluster("a", 3)]));
    let r3 = p.next().await;
    p.request(None, CLUSTER, &[], Some(&r3)).await;
    // A stale ACK (old nonce) is ignored.
    p.request(None, CLUSTER, &[], Some(&r1)).await;
    p.nothing_for(200).await;

    let events = rec.events();
    let short_v = |r: &DiscoveryResponse| r.version_info.clone();
    assert_eq!(
        events,
        [
            "open default.dp-1".to_string(),
            format!("ack default.dp-1 Cluster {}", short_v(&r1)),
            format!("nack default.dp-1 Cluster {} bad cluster", short_v(&r2)),
            format!("ack default.dp-1 Cluster {}", short_v(&r3)),
        ]
    );
    drop(p);
    // The server hears the proxy leave.
    let mut closed = false;
    for _ in 0..100 {
        if rec.events().last().map(String::as_str) == Some("closed default.dp-1") {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(closed, "{:?}", rec.events());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_subscriptions_and_push_order() {
    let cache = Arc::new(SnapshotCache::new());
    let url = start(cache.clone(), Arc::new(Recorder::default())).await;
    cache.set(
        "n",
        Snapshot::new([
            cluster("a", 1),
            cluster("b", 1),
            endpoints("a"),
            endpoints("b"),
        ]),
    );
    let mut p = Proxy::connect(&url).await;
    p.request(Some("n"), CLUSTER, &[], None).await;
    let c1 = p.next().await;
    p.request(None, CLUSTER, &[], Some(&c1)).await;
    p.request(None, ENDPOINT, &["a"], None).await;
    let e1 = p.next().await;
    assert_eq!(names(&e1), ["a"], "only the named endpoints");
    p.request(None, ENDPOINT, &["a", "b"], Some(&e1)).await;
    let e2 = p.next().await;
    assert_eq!(
        names(&e2),
        ["a", "b"],
        "a changed subscription is answered at once"
    );
    p.request(None, ENDPOINT, &["a", "b"], Some(&e2)).await;
    p.nothing_for(200).await;

    // A cluster change bumps the endpoints version too, and clusters go first.
    cache.set(
        "n",
        Snapshot::new([
            cluster("a", 9),
            cluster("b", 1),
            endpoints("a"),
            endpoints("b"),
        ]),
    );
    let first = p.next().await;
    let second = p.next().await;
    assert_eq!(
        (first.type_url.as_str(), second.type_url.as_str()),
        (CLUSTER, ENDPOINT)
    );
    assert_ne!(second.version_info, e2.version_info);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_proxy_does_not_delay_others() {
    let cache = Arc::new(SnapshotCache::new());
    let url = start(cache.clone(), Arc::new(Recorder::default())).await;
    cache.set("stuck", Snapshot::new([cluster("a", 0)]));
    cache.set("live", Snapshot::new([cluster("a", 0)]));
    let stuck = Proxy::connect(&url).await;
    stuck.request(Some("stuck"), CLUSTER, &[], None).await;
    let mut live = Proxy::connect(&url).await;
    live.request(Some("live"), CLUSTER, &[], None).await;
    let mut last = live.next().await;
    for i in 1..200u32 {
        // The stuck proxy never reads; its updates pile up only in its own stream.
        cache.set("stuck", Snapshot::new([big_cluster("a", i)]));
        cache.set("live", Snapshot::new([cluster("a", i)]));
        live.request(None, CLUSTER, &[], Some(&last)).await;
        last = live.next().await;
    }
    assert_eq!(
        last.version_info,
        cache.get("live").unwrap().version(CLUSTER)
    );
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_node_id_is_refused() {
    let cache = Arc::new(SnapshotCache::new());
    let url = start(cache, Arc::new(Recorder::default())).await;
    let mut p = Proxy::connect(&url).await;
    p.request(None, CLUSTER, &[], None).await;
    let err = tokio::time::timeout(Duration::from_secs(5), p.rx.message())
        .await
        .unwrap()
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("node.id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_streams_with_unavailable() {
    let cache = Arc::new(SnapshotCache::new());
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let url =
        serve(AdsServer::new(cache.clone(), Arc::new(Recorder::default())).with_shutdown(stop_rx))
            .await;
    cache.set("n", Snapshot::new([cluster("a", 1)]));
    let mut p = Proxy::connect(&url).await;
    p.request(Some("n"), CLUSTER, &[], None).await;
    p.next().await;
    stop.send(true).unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), p.rx.message())
        .await
        .unwrap()
        .expect_err("stream ended");
    assert_eq!(err.code(), tonic::Code::Unavailable);
}

/// Sends raw bytes as request messages, so a test can put garbage on the wire.
#[derive(Default)]
struct RawCodec;
struct RawEncoder;
struct ResponseDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = DiscoveryResponse;
    type Encoder = RawEncoder;
    type Decoder = ResponseDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use prost::bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for ResponseDecoder {
    type Item = DiscoveryResponse;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<DiscoveryResponse>, tonic::Status> {
        DiscoveryResponse::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_ends_its_stream_with_the_reason() {
    let cache = Arc::new(SnapshotCache::new());
    cache.set("n", Snapshot::new([cluster("a", 1)]));
    let recorder = Arc::new(Recorder::default());
    let url = start(cache, recorder.clone()).await;
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
    );
    // Field 1 with wire type 7, which does not exist: not a DiscoveryRequest.
    let garbage = tokio_stream::iter(vec![vec![0x0f, 0xff, 0xff]]);
    let mut responses = grpc
        .streaming(tonic::Request::new(garbage), path, RawCodec)
        .await
        .unwrap()
        .into_inner();
    let err = tokio::time::timeout(Duration::from_secs(5), responses.message())
        .await
        .unwrap()
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("malformed request"), "{err:?}");

    // The server is unharmed: a well-formed proxy is served.
    let mut p = Proxy::connect(&url).await;
    p.request(Some("n"), CLUSTER, &[], None).await;
    assert_eq!(names(&p.next().await), ["a"]);
}

/// What a proxy sends first on a new stream: the version it applied before, no nonce.
fn resume(node: &str, type_url: &str, names: &[&str], version: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(Node {
            id: node.to_string(),
            ..Default::default()
        }),
        type_url: type_url.to_string(),
        resource_names: names.iter().map(|s| s.to_string()).collect(),
        version_info: version.to_string(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_back_with_the_current_versions_is_sent_nothing_again() {
    let cache = Arc::new(SnapshotCache::new());
    let url = start(cache.clone(), Arc::new(Recorder::default())).await;
    let snapshot = || {
        Snapshot::new([
            cluster("a", 1),
            cluster("b", 1),
            endpoints("a"),
            endpoints("b"),
        ])
    };
    cache.set("n", snapshot());
    let mut first = Proxy::connect(&url).await;
    first.request(Some("n"), CLUSTER, &[], None).await;
    let c1 = first.next().await;
    first.request(None, CLUSTER, &[], Some(&c1)).await;
    first.request(None, ENDPOINT, &["a", "b"], None).await;
    let e1 = first.next().await;
    first.request(None, ENDPOINT, &["a", "b"], Some(&e1)).await;
    drop(first);

    // Back on a new stream (to this server, or to another one with the same snapshot): the
    // versions it applied are current, so nothing is sent.
    let other = Arc::new(SnapshotCache::new());
    other.set("n", snapshot());
    let other_url = start(other.clone(), Arc::new(Recorder::default())).await;
    for url in [&url, &other_url] {
        let mut back = Proxy::connect(url).await;
        back.send(resume("n", CLUSTER, &[], &c1.version_info)).await;
        back.send(resume("n", ENDPOINT, &["a", "b"], &e1.version_info))
            .await;
        back.nothing_for(300).await;
    }

    // Asking for a resource the version does not hold, or claiming another version, is
    // answered.
    let mut missing = Proxy::connect(&url).await;
    missing
        .send(resume("n", ENDPOINT, &["a", "c"], &e1.version_info))
        .await;
    assert_eq!(names(&missing.next().await), ["a"]);
    let mut stale = Proxy::connect(&url).await;
    stale
        .send(resume("n", CLUSTER, &[], "an-old-version"))
        .await;
    assert_eq!(names(&stale.next().await), ["a", "b"]);

    // The resumed stream gets the next change as usual, and a changed subscription at once.
    let mut back = Proxy::connect(&url).await;
    back.send(resume("n", CLUSTER, &[], &c1.version_info)).await;
    back.send(resume("n", ENDPOINT, &["a", "b"], &e1.version_info))
        .await;
    back.nothing_for(200).await;
    back.send(resume("n", ENDPOINT, &["b"], &e1.version_info))
        .await;
    assert_eq!(names(&back.next().await), ["b"]);
    cache.set(
        "n",
        Snapshot::new([cluster("a", 2), endpoints("a"), endpoints("b")]),
    );
    let pushed = back.next().await;
    assert_eq!(
        (pushed.type_url.as_str(), names(&pushed)),
        (CLUSTER, vec!["a".to_string()])
    );
}
