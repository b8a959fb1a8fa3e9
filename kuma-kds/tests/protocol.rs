//! The two ends of a KDS stream driven by hand: a rejected resource is NACKed with its reason
//! while the rest applies and the stream goes on; a type whose response is over the message
//! limit is held back, named with its size, while the other types sync.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as XdsResource,
};
use envoy_types::pb::google::protobuf::Any as PbAny;
use kuma_core::resource::{Resource, ResourceKey, ResourceType, parse_yaml};
use kuma_core::store::{ResourceStore, StoreError};
use kuma_kds::feed::{Feed, Side};
use kuma_kds::message;
use kuma_kds::receiver::{self, NodeInfo, Receiving, StoreSync};
use kuma_kds::sender::{self, Peer};
use kuma_kds::stats::StreamStats;
use kuma_store::MemoryStore;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn resource(yaml: &str) -> Resource {
    parse_yaml(yaml).expect("valid resource")
}

fn timeout(name: &str, idle: &str) -> Resource {
    resource(&format!(
        "type: MeshTimeout\nmesh: default\nname: {name}\nlabels:\n  kuma.io/origin: global\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n  - targetRef:\n      kind: Mesh\n    default:\n      idleTimeout: {idle}\n"
    ))
}

fn packed(r: &Resource) -> XdsResource {
    let any = message::encode(r).expect("encodes");
    XdsResource {
        name: format!("{}.{}", r.meta.name, r.meta.mesh),
        version: "1".into(),
        resource: Some(PbAny {
            type_url: any.type_url,
            value: any.value,
        }),
        ..Default::default()
    }
}

async fn exists(store: &dyn ResourceStore, name: &str) -> bool {
    match store
        .get(&ResourceKey::new(
            ResourceType::MeshTimeout,
            "default",
            name,
        ))
        .await
    {
        Ok(_) => true,
        Err(StoreError::NotFound(_)) => false,
        Err(e) => panic!("{e}"),
    }
}

async fn next<T>(rx: &mut mpsc::Receiver<T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("in time")
        .expect("open")
}

#[tokio::test]
async fn a_rejected_resource_is_nacked_by_name_and_the_rest_applies() {
    let store: Arc<dyn ResourceStore> = Arc::new(MemoryStore::new());
    let (req_tx, mut req_rx) = mpsc::channel::<DeltaDiscoveryRequest>(64);
    let (resp_tx, resp_rx) = mpsc::channel::<Result<DeltaDiscoveryResponse, tonic::Status>>(4);
    let stats = Arc::new(StreamStats::default());
    let receiving = tokio::spawn(receiver::receive(
        vec![ResourceType::MeshTimeout],
        NodeInfo {
            id: "zone-1".into(),
            metadata: None,
        },
        req_tx,
        ReceiverStream::new(resp_rx),
        StoreSync::new(store.clone(), Receiving::Zone),
        stats.clone(),
    ));
    let subscribe = next(&mut req_rx).await;
    assert_eq!(subscribe.type_url, "MeshTimeout");
    assert_eq!(subscribe.resource_names_subscribe, ["*"]);
    assert_eq!(subscribe.node.expect("node").id, "zone-1");

    // One good policy and one whose spec does not validate.
    let mut bad = packed(&timeout("bad", "1s"));
    let mut kuma: message::KumaResource =
        prost::Message::decode(bad.resource.as_ref().expect("any").value.as_slice()).expect("kuma");
    kuma.spec = Some(message::Any {
        type_url: String::new(),
        value: br#"{"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Nope"}}]}"#
            .to_vec(),
    });
    bad.resource.as_mut().expect("any").value = prost::Message::encode_to_vec(&kuma);
    resp_tx
        .send(Ok(DeltaDiscoveryResponse {
            type_url: "MeshTimeout".into(),
            nonce: "1".into(),
            resources: vec![packed(&timeout("good", "1s")), bad],
            ..Default::default()
        }))
        .await
        .expect("sent");
    let nack = next(&mut req_rx).await;
    assert_eq!(nack.response_nonce, "1");
    let reason = nack.error_detail.expect("a NACK").message;
    assert!(
        reason.contains("bad") && reason.contains("Nope"),
        "the reason names the resource and the field: {reason}"
    );
    assert!(exists(store.as_ref(), "good").await, "the rest applied");
    assert!(!exists(store.as_ref(), "bad").await);

    // The stream goes on: a later delta is applied and ACKed.
    resp_tx
        .send(Ok(DeltaDiscoveryResponse {
            type_url: "MeshTimeout".into(),
            nonce: "2".into(),
            resources: vec![packed(&timeout("later", "2s"))],
            removed_resources: vec!["good.default".into()],
            ..Default::default()
        }))
        .await
        .expect("sent");
    let ack = next(&mut req_rx).await;
    assert_eq!(ack.response_nonce, "2");
    assert!(ack.error_detail.is_none());
    assert!(exists(store.as_ref(), "later").await);
    assert!(
        !exists(store.as_ref(), "good").await,
        "removed by name.mesh"
    );
    let counted = stats.snapshot()["MeshTimeout"].clone();
    assert_eq!((counted.acked, counted.rejected), (1, 1));
    drop(resp_tx);
    receiving.await.expect("joins").expect("ends cleanly");
}

#[tokio::test]
async fn an_oversized_type_is_held_back_and_the_others_sync() {
    let store: Arc<dyn ResourceStore> = Arc::new(MemoryStore::new());
    store
        .create(resource("type: Mesh\nname: default\n"), None)
        .await
        .expect("mesh");
    // A policy with a long list of targets: far over a 4 KiB limit.
    let mut yaml = String::from(
        "type: MeshTimeout\nmesh: default\nname: huge\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n",
    );
    for i in 0..200 {
        yaml.push_str(&format!(
            "  - targetRef:\n      kind: MeshService\n      name: service-number-{i}\n    default:\n      idleTimeout: 1s\n"
        ));
    }
    store.create(resource(&yaml), None).await.expect("huge");
    let feed = Feed::new(Side::Global);
    tokio::spawn(feed.clone().run(store.clone()));

    let (req_tx, req_rx) = mpsc::channel::<Result<DeltaDiscoveryRequest, tonic::Status>>(16);
    let (resp_tx, mut resp_rx) = mpsc::channel::<DeltaDiscoveryResponse>(16);
    let stats = Arc::new(StreamStats::default());
    tokio::spawn(sender::serve(
        feed,
        Peer {
            zone: "zone-1".into(),
            hash_suffix: true,
            max_msg_size: 4096,
        },
        ReceiverStream::new(req_rx),
        resp_tx,
        stats.clone(),
    ));
    for t in ["MeshTimeout", "Mesh"] {
        req_tx
            .send(Ok(DeltaDiscoveryRequest {
                type_url: t.into(),
                resource_names_subscribe: vec!["*".into()],
                ..Default::default()
            }))
            .await
            .expect("sent");
    }
    let first = next(&mut resp_rx).await;
    assert_eq!(first.type_url, "Mesh", "the mesh goes out");
    assert_eq!(first.resources.len(), 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(resp_rx.try_recv().is_err(), "nothing else went out");
    let held = stats.snapshot()["MeshTimeout"].oversized.expect("recorded");
    assert!(held > 4096, "the size is named: {held}");

    // Once the type fits again, it syncs.
    store
        .delete(
            &ResourceKey::new(ResourceType::MeshTimeout, "default", "huge"),
            None,
        )
        .await
        .expect("deleted");
    store
        .create(timeout("small", "1s"), None)
        .await
        .expect("small");
    let response = next(&mut resp_rx).await;
    assert_eq!(response.type_url, "MeshTimeout");
    assert_eq!(response.resources.len(), 1);
    assert!(
        response.removed_resources.is_empty(),
        "the zone never had the huge one"
    );
}

#[tokio::test]
async fn each_resource_is_encoded_once_for_every_zone() {
    let store: Arc<dyn ResourceStore> = Arc::new(MemoryStore::new());
    store
        .create(resource("type: Mesh\nname: default\n"), None)
        .await
        .expect("mesh");
    store
        .create(timeout("t", "1s"), None)
        .await
        .expect("policy");
    let feed = Feed::new(Side::Global);
    tokio::spawn(feed.clone().run(store.clone()));
    let mut zones = Vec::new();
    for zone in ["zone-1", "zone-2", "zone-3"] {
        let (req_tx, req_rx) = mpsc::channel::<Result<DeltaDiscoveryRequest, tonic::Status>>(16);
        let (resp_tx, resp_rx) = mpsc::channel::<DeltaDiscoveryResponse>(16);
        tokio::spawn(sender::serve(
            feed.clone(),
            Peer {
                zone: zone.into(),
                hash_suffix: true,
                max_msg_size: 1 << 20,
            },
            ReceiverStream::new(req_rx),
            resp_tx,
            Arc::new(StreamStats::default()),
        ));
        for t in ["Mesh", "MeshTimeout"] {
            req_tx
                .send(Ok(DeltaDiscoveryRequest {
                    type_url: t.into(),
                    resource_names_subscribe: vec!["*".into()],
                    ..Default::default()
                }))
                .await
                .expect("sent");
        }
        zones.push((req_tx, resp_rx));
    }
    // Every zone gets both types...
    for (req_tx, resp_rx) in &mut zones {
        for _ in 0..2 {
            let response = next(resp_rx).await;
            assert_eq!(response.resources.len(), 1);
            req_tx
                .send(Ok(DeltaDiscoveryRequest {
                    type_url: response.type_url,
                    response_nonce: response.nonce,
                    ..Default::default()
                }))
                .await
                .expect("ACK");
        }
    }
    // ...encoded once each, not once per zone.
    assert_eq!(feed.encodings(), 2);
    // A change is encoded once more, and only the changed policy travels.
    store
        .update({
            let mut t = store
                .get(&ResourceKey::new(ResourceType::MeshTimeout, "default", "t"))
                .await
                .expect("policy");
            t.spec = timeout("t", "2s").spec;
            t
        })
        .await
        .expect("updated");
    for (_, resp_rx) in &mut zones {
        let response = next(resp_rx).await;
        assert_eq!(response.type_url, "MeshTimeout");
        assert_eq!(response.resources.len(), 1);
    }
    assert_eq!(feed.encodings(), 3);
}
