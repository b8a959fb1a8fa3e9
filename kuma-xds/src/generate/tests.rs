use super::*;
use kuma_core::resource::{Resource, parse_yaml};
use xds_server::types::{CLUSTER, ENDPOINT, LISTENER};

fn dp(name: &str, address: &str, extra: &str) -> Resource {
    parse_yaml(&format!(
        "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: {address}\n{extra}"
    ))
    .unwrap()
}

fn names(snap: &Snapshot, t: &str) -> Vec<String> {
    snap.get(t)
        .map(|r| r.names().map(str::to_string).collect())
        .unwrap_or_default()
}

#[test]
fn names_follow_kuma() {
    let web = dp(
        "web",
        "10.0.0.1",
        "  inbound:\n  - port: 8080\n    servicePort: 18080\n    tags: {kuma.io/service: web}\n  outbound:\n  - port: 33033\n    tags: {kuma.io/service: backend}\n",
    );
    let b1 = dp(
        "b1",
        "10.0.0.2",
        "  inbound:\n  - port: 9000\n    tags: {kuma.io/service: backend}\n",
    );
    let b2 = dp(
        "b2",
        "10.0.0.3",
        "  advertisedAddress: 192.168.1.3\n  inbound:\n  - port: 9000\n    tags: {kuma.io/service: backend}\n",
    );
    let b3 = dp(
        "b3",
        "10.0.0.4",
        "  inbound:\n  - port: 9000\n    tags: {kuma.io/service: backend}\n    health: {ready: false}\n",
    );
    let all = vec![web.clone(), b1, b2, b3];
    let mesh = MeshContext::new("default", &all);
    let metadata = ProxyMetadata {
        admin_port: Some(9901),
        readiness_port: Some(9902),
        workdir: None,
    };
    let generator = GeneratorList::kuma_profile();
    let ctx = ProxyContext::new(&mesh, &web, metadata.clone()).unwrap();
    let snap = generator.generate(&ctx).unwrap();
    assert_eq!(
        names(&snap, LISTENER),
        [
            "inbound:10.0.0.1:8080",
            "kuma:envoy:admin",
            "outbound:127.0.0.1:33033"
        ]
    );
    assert_eq!(
        names(&snap, CLUSTER),
        [
            "backend",
            "kuma:envoy:admin",
            "kuma:readiness",
            "localhost:18080"
        ]
    );
    // On 127.0.0.1 the admin listener would clash with Envoy's own admin: none is generated.
    let local = dp(
        "local",
        "127.0.0.1",
        "  inbound:\n  - port: 8080\n    tags: {kuma.io/service: web}\n",
    );
    let ctx = ProxyContext::new(&mesh, &local, metadata.clone()).unwrap();
    let local_snap = generator.generate(&ctx).unwrap();
    assert!(!names(&local_snap, LISTENER).contains(&"kuma:envoy:admin".to_string()));
    assert_eq!(names(&snap, ENDPOINT), ["backend"]);
    // Not-ready inbounds get no traffic.
    let endpoints: Vec<_> = mesh
        .endpoints("backend")
        .iter()
        .map(|e| (e.ip.as_str(), e.port))
        .collect();
    assert_eq!(endpoints, [("10.0.0.2", 9000), ("192.168.1.3", 9000)]);
    assert!(mesh.endpoints("nobody").is_empty());
    // A second proxy of the mesh with the same outbound gets the very same endpoint bytes.
    let twin = generator
        .generate(&ProxyContext::new(&mesh, &web, metadata.clone()).unwrap())
        .unwrap();
    let mine = &snap.get(ENDPOINT).unwrap().get("backend").unwrap();
    let theirs = &twin.get(ENDPOINT).unwrap().get("backend").unwrap();
    assert!(
        mine.shares_bytes_with(theirs),
        "endpoints encoded once per mesh"
    );
    assert_eq!(node_id("default", "web"), "default.web");
}

#[test]
fn a_failing_generator_names_itself() {
    struct Broken;
    impl ResourceGenerator for Broken {
        fn name(&self) -> &str {
            "broken"
        }
        fn apply(
            &self,
            _: &ProxyContext<'_>,
            _: &mut ResourceSet,
        ) -> Result<(), crate::generate::BoxError> {
            Err("no luck".into())
        }
    }
    let web = dp("web", "10.0.0.1", "");
    let all = vec![web.clone()];
    let mesh = MeshContext::new("default", &all);
    let list = GeneratorList::kuma_profile().with(Broken);
    let err = list
        .generate(&ProxyContext::new(&mesh, &web, ProxyMetadata::default()).unwrap())
        .unwrap_err();
    assert_eq!(err.generator, "broken");
    assert_eq!(err.to_string(), "generator \"broken\" failed: no luck");
    assert_eq!(list.names().first(), Some(&"inbound"));
}

#[test]
fn protocols_join_on_kuma_lattice() {
    use Protocol::*;
    assert_eq!(Grpc.common(Http2), Http2);
    assert_eq!(Http.common(Http), Http);
    assert_eq!(Http.common(Http2), Tcp);
    assert_eq!(Kafka.common(Tcp), Tcp);
}

/// A mesh of `n` transparent proxies, one per HTTP service, and the VIPs of its services.
fn transparent_mesh(
    n: usize,
) -> (
    Vec<Resource>,
    std::collections::BTreeMap<String, std::net::Ipv4Addr>,
) {
    let dps = (0..n)
        .map(|i| {
            dp(
                &format!("svc-{i}"),
                &format!("10.0.0.{}", i + 1),
                &format!(
                    "  inbound:\n  - port: 8080\n    tags: {{kuma.io/service: svc-{i}, kuma.io/protocol: http}}\n  transparentProxying: {{redirectPortInbound: 15006, redirectPortOutbound: 15001}}\n"
                ),
            )
        })
        .collect();
    let vips = (0..n)
        .map(|i| {
            (
                format!("svc-{i}"),
                std::net::Ipv4Addr::new(240, 0, 0, u8::try_from(i + 1).unwrap()),
            )
        })
        .collect();
    (dps, vips)
}

fn policy(yaml: &str) -> Resource {
    parse_yaml(yaml).unwrap()
}

#[test]
fn proxies_with_one_view_share_their_outbounds_built_once() {
    let (dps, vips) = transparent_mesh(6);
    let policies = [policy(
        "type: MeshTimeout\nmesh: default\nname: slow\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: MeshService, name: svc-1}\n    default: {http: {requestTimeout: 7s}}\n",
    )];
    let mesh = MeshContext::new("default", &dps)
        .with_policies(&policies)
        .with_vips(vips, 80);
    let generator = GeneratorList::kuma_profile();
    let snapshots: Vec<Snapshot> = dps
        .iter()
        .map(|r| {
            let ctx = ProxyContext::new(&mesh, r, ProxyMetadata::default()).unwrap();
            let shared = generator.generate(&ctx).unwrap();
            // Sharing changes nothing: the proxy's own full build encodes the same snapshot.
            assert_eq!(shared, generator.build(&ctx).unwrap().into_snapshot());
            shared
        })
        .collect();
    assert_eq!(mesh.outbound_builds(), 1, "one view, built once");
    let listener = |s: &Snapshot| {
        s.get(LISTENER)
            .unwrap()
            .get("outbound:240.0.0.2:80")
            .unwrap()
            .clone()
    };
    assert!(listener(&snapshots[0]).shares_bytes_with(&listener(&snapshots[5])));
    // Each proxy still tells the destination its own tags, in its own extension config.
    let tags = |s: &Snapshot| {
        s.get(source_tags_type())
            .unwrap()
            .get(source_tags::EXTENSION_NAME)
            .unwrap()
            .clone()
    };
    assert_ne!(tags(&snapshots[0]), tags(&snapshots[5]));
}

fn source_tags_type() -> &'static str {
    "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
}

#[test]
fn a_policy_selecting_some_proxies_gives_them_their_own_view() {
    let (dps, vips) = transparent_mesh(4);
    let policies = [
        policy(
            "type: MeshTimeout\nmesh: default\nname: for-svc-0\nspec:\n  targetRef: {kind: MeshService, name: svc-0}\n  to:\n  - targetRef: {kind: Mesh}\n    default: {http: {requestTimeout: 7s}}\n",
        ),
        // Access logs name the proxy they are written by: every selected proxy has its view.
        policy(
            "type: MeshAccessLog\nmesh: default\nname: logs\nspec:\n  targetRef: {kind: MeshService, name: svc-3}\n  to:\n  - targetRef: {kind: Mesh}\n    default: {backends: [{type: File, file: {path: /tmp/log}}]}\n",
        ),
    ];
    let mesh = MeshContext::new("default", &dps)
        .with_policies(&policies)
        .with_vips(vips, 80);
    let generator = GeneratorList::kuma_profile();
    for r in &dps {
        let ctx = ProxyContext::new(&mesh, r, ProxyMetadata::default()).unwrap();
        assert_eq!(
            generator.generate(&ctx).unwrap(),
            generator.build(&ctx).unwrap().into_snapshot()
        );
    }
    // svc-0 (timeout), svc-3 (access log), and svc-1 with svc-2.
    assert_eq!(mesh.outbound_builds(), 3);
}

#[test]
fn a_locality_aware_mesh_sends_traffic_to_other_zones_only_as_failover() {
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use prost::Message as _;
    let in_zone = |name: &str, address: &str, service: &str, zone: &str, extra: &str| {
        dp(
            name,
            address,
            &format!(
                "  inbound:\n  - port: 9000\n    tags: {{kuma.io/service: {service}, kuma.io/zone: {zone}}}\n{extra}"
            ),
        )
    };
    let web = in_zone(
        "web",
        "10.0.0.1",
        "web",
        "zone-1",
        "  outbound:\n  - port: 33033\n    tags: {kuma.io/service: backend}\n",
    );
    let all = vec![
        web.clone(),
        in_zone("b1", "10.0.0.2", "backend", "zone-1", ""),
        in_zone("b2", "10.0.1.2", "backend", "zone-2", ""),
    ];
    // (zone, priority) of each locality of web's endpoints for backend.
    let priorities = |spec: &kuma_core::model::mesh::MeshSpec| {
        let mesh = MeshContext::new("default", &all).with_spec(spec);
        let ctx = ProxyContext::new(&mesh, &web, ProxyMetadata::default()).unwrap();
        let snap = GeneratorList::kuma_profile().generate(&ctx).unwrap();
        let cla = snap.get(ENDPOINT).unwrap().get("backend").unwrap().to_any();
        let cla = ClusterLoadAssignment::decode(cla.value.as_slice()).unwrap();
        let mut seen: Vec<(String, u32, usize)> = cla
            .endpoints
            .iter()
            .map(|l| {
                let zone = l.locality.clone().unwrap_or_default().zone;
                (zone, l.priority, l.lb_endpoints.len())
            })
            .collect();
        seen.sort();
        seen
    };
    let aware: kuma_core::model::mesh::MeshSpec = serde_json::from_value(
        serde_json::json!({"routing": {"localityAwareLoadBalancing": true}}),
    )
    .unwrap();
    assert_eq!(
        priorities(&aware),
        [("zone-1".to_string(), 0, 1), ("zone-2".to_string(), 1, 1)]
    );
    // Without it (and no policy), both zones share the one priority.
    let plain = kuma_core::model::mesh::MeshSpec::default();
    assert!(priorities(&plain).iter().all(|(_, p, _)| *p == 0));
}
