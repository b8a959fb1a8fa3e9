//! Global and two zones in one process, each with its own store, over real gRPC on loopback:
//! policies flow down under Kuma's hashed names, proxies flow up with their zone, deletions
//! follow, and a zone's consumer policy stays out of the other zone.

use std::sync::Arc;
use std::time::Duration;

use kuma_core::resource::{Resource, ResourceKey, ResourceType, parse_yaml};
use kuma_core::store::{ListQuery, ResourceStore, StoreError};
use kuma_kds::feed::{Feed, Side};
use kuma_kds::global::{GlobalKds, GlobalSettings};
use kuma_kds::names::hashed_name;
use kuma_kds::zone::{ZoneSettings, run};
use kuma_store::MemoryStore;

fn resource(yaml: &str) -> Resource {
    parse_yaml(yaml).expect("valid resource")
}

fn timeout(name: &str, labels: &str) -> Resource {
    resource(&format!(
        "type: MeshTimeout\nmesh: default\nname: {name}\nlabels: {labels}\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n  - targetRef:\n      kind: Mesh\n    default:\n      idleTimeout: 1s\n"
    ))
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for: {what}");
}

async fn exists(store: &dyn ResourceStore, rtype: ResourceType, mesh: &str, name: &str) -> bool {
    match store.get(&ResourceKey::new(rtype, mesh, name)).await {
        Ok(_) => true,
        Err(StoreError::NotFound(_)) => false,
        Err(e) => panic!("store: {e}"),
    }
}

/// Global's KDS server on loopback: as `services()` assembles it, or (`generated_only`) with
/// tonic's generated server for the sync streams instead of [`kuma_kds::global::SyncServer`].
async fn start_global(store: Arc<dyn ResourceStore>, generated_only: bool) -> std::net::SocketAddr {
    let feed = Feed::new(Side::Global);
    tokio::spawn(feed.clone().run(store.clone()));
    let kds = GlobalKds::new(
        store,
        feed,
        GlobalSettings {
            instance_id: "global-1".into(),
            max_msg_size: 10 * 1024 * 1024,
            insight_flush_interval: Duration::from_millis(100),
            health_poll_interval: None,
            health_timeout: None,
        },
    );
    tokio::spawn(kds.clone().run_insights());
    let (sync, global) = kds.services();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let mut server = tonic::transport::Server::builder();
    if generated_only {
        use kuma_kds::grpc::kds_sync_service_server::KDSSyncServiceServer;
        use tonic::codec::CompressionEncoding::Gzip;
        let generated = KDSSyncServiceServer::new(kds.clone())
            .accept_compressed(Gzip)
            .send_compressed(Gzip);
        tokio::spawn(
            server
                .add_service(generated)
                .add_service(global)
                .serve_with_incoming(incoming),
        );
    } else {
        tokio::spawn(
            server
                .add_service(sync)
                .add_service(global)
                .serve_with_incoming(incoming),
        );
    }
    addr
}

fn start_zone(
    name: &str,
    global: std::net::SocketAddr,
    store: Arc<dyn ResourceStore>,
) -> tokio::sync::watch::Sender<bool> {
    let feed = Feed::new(Side::Zone(name.into()));
    tokio::spawn(feed.clone().run(store.clone()));
    let settings = ZoneSettings {
        zone: name.into(),
        global_address: format!("grpc://{global}"),
        tls: None,
        max_msg_size: 10 * 1024 * 1024,
        instance_id: format!("{name}-cp"),
        version: "test".into(),
        config_json: "{}".into(),
        backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(run(settings, store, feed, stopped));
    stop
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_and_two_zones_sync_both_ways() {
    let global: Arc<dyn ResourceStore> = Arc::new(MemoryStore::new());
    global
        .create(resource("type: Mesh\nname: default\n"), None)
        .await
        .expect("mesh");
    global
        .create(timeout("t", "{}"), None)
        .await
        .expect("policy");
    let addr = start_global(global.clone(), false).await;
    let zone1: Arc<dyn ResourceStore> = Arc::new(MemoryStore::new());
    let zone2: Arc<dyn ResourceStore> = Arc::new(MemoryStore::new());
    let _z1 = start_zone("zone-1", addr, zone1.clone());
    let _z2 = start_zone("zone-2", addr, zone2.clone());

    // Down: the mesh keeps its name, the policy takes Kuma's hash suffix.
    let hashed = hashed_name("default", "t", &[]);
    for zone in [&zone1, &zone2] {
        eventually("the policy on the zone", || async {
            exists(zone.as_ref(), ResourceType::MeshTimeout, "default", &hashed).await
        })
        .await;
        assert!(exists(zone.as_ref(), ResourceType::Mesh, "", "default").await);
        let p = zone
            .get(&ResourceKey::new(
                ResourceType::MeshTimeout,
                "default",
                &hashed,
            ))
            .await
            .expect("policy");
        assert_eq!(p.meta.labels["kuma.io/origin"], "global");
        assert_eq!(p.meta.labels["kuma.io/display-name"], "t");
    }

    // Up: a proxy of zone-1 appears on global with its zone.
    zone1
        .create(
            resource("type: Dataplane\nmesh: default\nname: web-1\nnetworking:\n  address: 10.0.0.1\n  inbound:\n  - port: 80\n    tags:\n      kuma.io/service: web\n      kuma.io/zone: elsewhere\n"),
            None,
        )
        .await
        .expect("dataplane");
    let dp_name = hashed_name("default", "web-1", &["zone-1"]);
    eventually("the proxy on global", || async {
        exists(
            global.as_ref(),
            ResourceType::Dataplane,
            "default",
            &dp_name,
        )
        .await
    })
    .await;
    let dp = global
        .get(&ResourceKey::new(
            ResourceType::Dataplane,
            "default",
            &dp_name,
        ))
        .await
        .expect("dp");
    assert_eq!(dp.meta.labels["kuma.io/zone"], "zone-1");
    assert_eq!(dp.meta.labels["kuma.io/origin"], "zone");
    let kuma_core::resource::Spec::Dataplane(spec) = &dp.spec else {
        panic!("a dataplane")
    };
    let tags = &spec.networking.as_ref().expect("networking").inbound[0].tags;
    assert_eq!(
        tags["kuma.io/zone"], "zone-1",
        "a zone speaks only for itself"
    );
    // Proxies stay off the other zone.
    assert!(
        zone2
            .list(&ListQuery::all(ResourceType::Dataplane))
            .await
            .expect("list")
            .items
            .is_empty()
    );

    // A zone's (consumer) policy goes up, not across.
    zone1
        .create(timeout("local", "{kuma.io/origin: zone}"), None)
        .await
        .expect("zone policy");
    let local = hashed_name("default", "local", &["zone-1"]);
    eventually("the zone's policy on global", || async {
        exists(
            global.as_ref(),
            ResourceType::MeshTimeout,
            "default",
            &local,
        )
        .await
    })
    .await;
    // ...and the global policy sent down does not come back up.
    let on_global: Vec<String> = global
        .list(&ListQuery::all(ResourceType::MeshTimeout))
        .await
        .expect("list")
        .items
        .into_iter()
        .map(|r| r.meta.name)
        .collect();
    assert_eq!(on_global.len(), 2, "{on_global:?}");
    assert!(!exists(zone2.as_ref(), ResourceType::MeshTimeout, "default", &local).await);

    // Deleting on global removes it everywhere; the zone's own policy stays.
    global
        .delete(
            &ResourceKey::new(ResourceType::MeshTimeout, "default", "t"),
            None,
        )
        .await
        .expect("delete");
    for zone in [&zone1, &zone2] {
        eventually("the policy gone from the zone", || async {
            !exists(zone.as_ref(), ResourceType::MeshTimeout, "default", &hashed).await
        })
        .await;
    }
    assert!(
        exists(
            zone1.as_ref(),
            ResourceType::MeshTimeout,
            "default",
            "local"
        )
        .await
    );

    // The zones are known on global, with their insight.
    for zone in ["zone-1", "zone-2"] {
        assert!(exists(global.as_ref(), ResourceType::Zone, "", zone).await);
        eventually("the zone's insight", || async {
            exists(global.as_ref(), ResourceType::ZoneInsight, "", zone).await
        })
        .await;
    }
    let insight = global
        .get(&ResourceKey::new(ResourceType::ZoneInsight, "", "zone-1"))
        .await
        .expect("insight");
    let json = insight.spec.to_value();
    let sub = &json["subscriptions"][0];
    assert!(sub["connectTime"].is_string(), "{json}");
    assert!(sub["disconnectTime"].is_null(), "{json}");
    assert_eq!(sub["version"]["kumaCp"]["version"], "test", "{json}");
}

/// The generated tonic server (for those who mount it themselves) serves the same streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonics_generated_server_serves_the_same_streams() {
    let global: Arc<dyn ResourceStore> = Arc::new(MemoryStore::new());
    global
        .create(resource("type: Mesh\nname: default\n"), None)
        .await
        .expect("mesh");
    global
        .create(timeout("t", "{}"), None)
        .await
        .expect("policy");
    let addr = start_global(global.clone(), true).await;
    let zone: Arc<dyn ResourceStore> = Arc::new(MemoryStore::new());
    let _z = start_zone("zone-1", addr, zone.clone());
    let hashed = hashed_name("default", "t", &[]);
    eventually("the policy on the zone", || async {
        exists(zone.as_ref(), ResourceType::MeshTimeout, "default", &hashed).await
    })
    .await;
    zone.create(
        resource("type: Dataplane\nmesh: default\nname: web-1\nnetworking:\n  address: 10.0.0.1\n  inbound:\n  - port: 80\n    tags:\n      kuma.io/service: web\n"),
        None,
    )
    .await
    .expect("dataplane");
    let dp_name = hashed_name("default", "web-1", &["zone-1"]);
    eventually("the proxy on global", || async {
        exists(
            global.as_ref(),
            ResourceType::Dataplane,
            "default",
            &dp_name,
        )
        .await
    })
    .await;
}
