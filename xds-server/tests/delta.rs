//! The incremental (delta) ADS server against a gRPC client on a real socket.
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use xds_server::cache::{Snapshot, SnapshotCache};
use xds_server::server::{AdsServer, Callbacks, NoCallbacks};
use xds_server::types::{CLUSTER, ENDPOINT};

mod common;
use common::{endpoints, serve};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

fn cluster(name: &str, v: u32) -> (String, Any) {
    let c = Cluster {
        name: name.to_string(),
        alt_stat_name: format!("v{v}"),
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

async fn start(cache: Arc<SnapshotCache>) -> String {
    start_with(cache, Arc::new(NoCallbacks)).await
}

async fn start_with<C: Callbacks>(cache: Arc<SnapshotCache>, callbacks: Arc<C>) -> String {
    serve(AdsServer::new(cache, callbacks)).await
}

struct Proxy {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
}

impl Proxy {
    async fn connect(url: &str) -> Proxy {
        let mut client = AggregatedDiscoveryServiceClient::connect(url.to_string())
            .await
            .unwrap();
        let (tx, req_rx) = mpsc::channel(16);
        let rx = client
            .delta_aggregated_resources(ReceiverStream::new(req_rx))
            .await
            .unwrap()
            .into_inner();
        Proxy { tx, rx }
    }

    async fn send(&self, req: DeltaDiscoveryRequest) {
        self.tx.send(req).await.unwrap();
    }

    async fn subscribe(&self, node: Option<&str>, type_url: &str, sub: &[&str], unsub: &[&str]) {
        self.send(DeltaDiscoveryRequest {
            node: node.map(|id| Node {
                id: id.to_string(),
                ..Default::default()
            }),
            type_url: type_url.to_string(),
            resource_names_subscribe: sub.iter().map(|s| s.to_string()).collect(),
            resource_names_unsubscribe: unsub.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await;
    }

    async fn ack(&self, r: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        })
        .await;
    }

    async fn next(&mut self) -> DeltaDiscoveryResponse {
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

fn names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
    r.resources.iter().map(|r| r.name.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_sends_only_what_changed() {
    let cache = Arc::new(SnapshotCache::new());
    let url = start(cache.clone()).await;
    cache.set(
        "n",
        Snapshot::new([cluster("a", 1), cluster("b", 1), cluster("c", 1)]),
    );
    let mut p = Proxy::connect(&url).await;
    p.subscribe(Some("n"), CLUSTER, &[], &[]).await;
    let r1 = p.next().await;
    assert_eq!(names(&r1), ["a", "b", "c"]);
    assert!(r1.resources.iter().all(|r| !r.version.is_empty()));
    p.ack(&r1).await;
    p.nothing_for(200).await;

    cache.set("n", Snapshot::new([cluster("a", 1), cluster("b", 2)]));
    let r2 = p.next().await;
    assert_eq!(names(&r2), ["b"], "only the changed resource");
    assert_eq!(r2.removed_resources, ["c"]);

    // A NACK does not make the server resend the same versions.
    p.send(DeltaDiscoveryRequest {
        type_url: CLUSTER.to_string(),
        response_nonce: r2.nonce.clone(),
        error_detail: Some(RpcStatus {
            code: 3,
            message: "rejected".into(),
            details: vec![],
        }),
        ..Default::default()
    })
    .await;
    p.nothing_for(300).await;
    assert!(!cache.set("n", Snapshot::new([cluster("b", 2), cluster("a", 1)])));
    p.nothing_for(200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_subscriptions_report_missing_and_resubscribe() {
    let cache = Arc::new(SnapshotCache::new());
    let url = start(cache.clone()).await;
    cache.set("n", Snapshot::new([endpoints("a"), endpoints("b")]));
    let mut p = Proxy::connect(&url).await;
    p.subscribe(Some("n"), ENDPOINT, &["a", "missing"], &[])
        .await;
    let r1 = p.next().await;
    assert_eq!(names(&r1), ["a"]);
    assert_eq!(
        r1.removed_resources,
        ["missing"],
        "a subscribed name that does not exist is said so"
    );
    p.ack(&r1).await;
    p.subscribe(None, ENDPOINT, &["b"], &[]).await;
    assert_eq!(names(&p.next().await), ["b"]);
    p.subscribe(None, ENDPOINT, &[], &["a"]).await;
    p.nothing_for(200).await;
    p.subscribe(None, ENDPOINT, &["a"], &[]).await;
    assert_eq!(names(&p.next().await), ["a"], "re-subscribing is answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_with_known_versions_sends_only_news() {
    let cache = Arc::new(SnapshotCache::new());
    let url = start(cache.clone()).await;
    cache.set("n", Snapshot::new([cluster("a", 1), cluster("b", 1)]));
    let mut p = Proxy::connect(&url).await;
    p.subscribe(Some("n"), CLUSTER, &[], &[]).await;
    let r1 = p.next().await;
    let known: HashMap<String, String> = r1
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    drop(p);

    cache.set("n", Snapshot::new([cluster("a", 1), cluster("b", 7)]));
    let mut q = Proxy::connect(&url).await;
    q.send(DeltaDiscoveryRequest {
        node: Some(Node {
            id: "n".into(),
            ..Default::default()
        }),
        type_url: CLUSTER.to_string(),
        initial_resource_versions: known,
        ..Default::default()
    })
    .await;
    let r2 = q.next().await;
    assert_eq!(names(&r2), ["b"]);
    assert!(r2.removed_resources.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_first_request_subscribes_to_the_whole_type() {
    // As go-control-plane serves clients other than Envoy: endpoints too, not only clusters
    // and listeners.
    let cache = Arc::new(SnapshotCache::new());
    let url = start(cache.clone()).await;
    cache.set("n", Snapshot::new([endpoints("a"), endpoints("b")]));
    let mut p = Proxy::connect(&url).await;
    p.subscribe(Some("n"), ENDPOINT, &[], &[]).await;
    assert_eq!(names(&p.next().await), ["a", "b"]);
}

/// ACKs and NACKs as the server reports them: (kind, type, version).
#[derive(Default)]
struct Answers(std::sync::Mutex<Vec<(&'static str, String, String)>>);

impl Callbacks for Answers {
    fn on_ack(&self, _: u64, _: &str, type_url: &str, version: &str) {
        self.0
            .lock()
            .unwrap()
            .push(("ack", type_url.into(), version.into()));
    }
    fn on_nack(&self, _: u64, _: &str, type_url: &str, version: &str, _: &str) {
        self.0
            .lock()
            .unwrap()
            .push(("nack", type_url.into(), version.into()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_to_an_older_response_is_recorded() {
    let cache = Arc::new(SnapshotCache::new());
    let answers = Arc::new(Answers::default());
    let url = start_with(cache.clone(), answers.clone()).await;
    cache.set("n", Snapshot::new([cluster("a", 1)]));
    let mut p = Proxy::connect(&url).await;
    p.subscribe(Some("n"), CLUSTER, &[], &[]).await;
    let r1 = p.next().await;
    // A newer response goes out before the proxy answers the first.
    cache.set("n", Snapshot::new([cluster("a", 2)]));
    let r2 = p.next().await;
    p.send(DeltaDiscoveryRequest {
        type_url: CLUSTER.to_string(),
        response_nonce: r1.nonce.clone(),
        error_detail: Some(RpcStatus {
            code: 3,
            message: "rejected".into(),
            details: vec![],
        }),
        ..Default::default()
    })
    .await;
    p.ack(&r2).await;
    let want = vec![
        ("nack", CLUSTER.to_string(), r1.system_version_info.clone()),
        ("ack", CLUSTER.to_string(), r2.system_version_info.clone()),
    ];
    for _ in 0..100 {
        if *answers.0.lock().unwrap() == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(*answers.0.lock().unwrap(), want);
}

/// A cluster of about `kib` KiB (its stat name padded).
fn big_cluster(name: &str, kib: usize) -> (String, Any) {
    let c = Cluster {
        name: name.to_string(),
        alt_stat_name: "x".repeat(kib * 1024),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_push_is_split_and_only_its_last_answer_acks_the_version() {
    let cache = Arc::new(SnapshotCache::new());
    let answers = Arc::new(Answers::default());
    let url = start_with(cache.clone(), answers.clone()).await;
    // 100 KiB of clusters: at most 32 KiB of resources per response.
    let clusters: Vec<_> = (0..10).map(|i| big_cluster(&format!("c{i}"), 10)).collect();
    cache.set("n", Snapshot::new(clusters));
    let mut p = Proxy::connect(&url).await;
    p.subscribe(Some("n"), CLUSTER, &[], &[]).await;
    let mut received = Vec::new();
    let mut responses = Vec::new();
    while received.len() < 10 {
        let r = p.next().await;
        let bytes: usize = r
            .resources
            .iter()
            .filter_map(|r| r.resource.as_ref())
            .map(|a| a.value.len())
            .sum();
        assert!(bytes <= 32 * 1024, "a response holds at most 32 KiB");
        received.extend(names(&r).into_iter().map(String::from));
        responses.push(r);
    }
    assert!(responses.len() >= 4, "{} responses", responses.len());
    received.sort();
    let want: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
    assert_eq!(received, want);
    // Answering all but the last reports nothing; the last one ACKs the version.
    let (last, earlier) = responses.split_last().unwrap();
    for r in earlier {
        p.ack(r).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(answers.0.lock().unwrap().is_empty());
    p.ack(last).await;
    let want = vec![("ack", CLUSTER.to_string(), last.system_version_info.clone())];
    for _ in 0..100 {
        if *answers.0.lock().unwrap() == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(*answers.0.lock().unwrap(), want);
}

/// Counts the requests the server has heard.
#[derive(Default)]
struct Heard(std::sync::atomic::AtomicUsize);

impl Heard {
    /// Waits (at most 10 s) until `n` requests were heard.
    async fn reaches(&self, n: usize) {
        for _ in 0..500 {
            if self.0.load(std::sync::atomic::Ordering::SeqCst) >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "heard {} requests, want {n}",
            self.0.load(std::sync::atomic::Ordering::SeqCst)
        );
    }
}

impl Callbacks for Heard {
    fn on_delta_request(&self, _: u64, _: &str, _: &DeltaDiscoveryRequest) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_heard_while_a_push_waits_for_the_proxy() {
    let cache = Arc::new(SnapshotCache::new());
    let heard = Arc::new(Heard::default());
    let url = start_with(cache.clone(), heard.clone()).await;
    // 4 MiB of clusters, one per response: more than the HTTP/2 windows and send buffers
    // between the two ends hold, so the push waits for the proxy to read.
    let mut resources: Vec<_> = (0..128)
        .map(|i| big_cluster(&format!("c{i:03}"), 31))
        .collect();
    resources.push(endpoints("c000"));
    cache.set("n", Snapshot::new(resources));
    let mut p = Proxy::connect(&url).await;
    p.subscribe(Some("n"), CLUSTER, &[], &[]).await;
    let first = p.next().await;
    // The proxy answers the first response without reading on: the server hears it.
    p.ack(&first).await;
    heard.reaches(2).await;
    // So is a subscription change; what it asks for goes out once the push is over.
    p.subscribe(None, ENDPOINT, &["c000"], &[]).await;
    heard.reaches(3).await;
    let mut clusters = names(&first).len();
    while clusters < 128 {
        let r = p.next().await;
        assert_eq!(
            r.type_url, CLUSTER,
            "the push ends before the next one starts"
        );
        clusters += names(&r).len();
    }
    let r = p.next().await;
    assert_eq!(r.type_url, ENDPOINT);
    assert_eq!(names(&r), ["c000"]);
}
