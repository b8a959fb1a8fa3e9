//! ResourceManager rules on top of MemoryStore.

use std::sync::Arc;

use kuma_core::manager::{Applied, ManagerError, ManagerOptions, ResourceManager};
use kuma_core::model::dataplane::DataplaneSpec;
use kuma_core::model::mesh::MeshSpec;
use kuma_core::resource::{Resource, ResourceKey, ResourceType, parse_yaml};
use kuma_core::store::{ListQuery, StoreError};
use kuma_store::MemoryStore;

fn manager(zone: Option<&str>) -> ResourceManager {
    ResourceManager::new(
        Arc::new(MemoryStore::new()),
        ManagerOptions {
            zone: zone.map(str::to_string),
            ..ManagerOptions::default()
        },
    )
}

fn dataplane(mesh: &str, name: &str) -> Resource {
    kuma_core::conformance::dataplane(mesh, name, "web")
}

fn mesh_key(name: &str) -> ResourceKey {
    ResourceKey::global(ResourceType::Mesh, name)
}

#[tokio::test]
async fn default_mesh_is_created_once() {
    let m = manager(None);
    assert!(m.ensure_default_mesh().await.expect("first"));
    assert!(
        !m.ensure_default_mesh().await.expect("second"),
        "an existing default mesh is kept"
    );
    let page = m
        .list(&ListQuery::all(ResourceType::Mesh))
        .await
        .expect("list");
    assert_eq!(page.total, 1);
    assert_eq!(page.items[0].meta.name, "default");
}

#[tokio::test]
async fn invalid_resources_are_rejected_with_paths() {
    let m = manager(None);
    m.ensure_default_mesh().await.expect("mesh");
    let bad = parse_yaml("type: Dataplane\nmesh: default\nname: dp\nnetworking:\n  address: 10.0.0.1\n  inbound:\n  - port: 1\n    tags: {version: v1}\n").expect("parses");
    match m.create(bad).await {
        Err(ManagerError::Invalid(e)) => {
            assert_eq!(
                e.violations()[0].field,
                r#"networking.inbound[0].tags["kuma.io/service"]"#
            )
        }
        other => panic!("expected a validation error, got {other:?}"),
    }
    assert_eq!(
        m.list(&ListQuery::all(ResourceType::Dataplane))
            .await
            .expect("list")
            .total,
        0,
        "nothing stored"
    );
}

#[tokio::test]
async fn mesh_scoped_resources_need_their_mesh() {
    let m = manager(None);
    match m.create(dataplane("missing", "dp")).await {
        Err(ManagerError::Invalid(e)) => assert_eq!(e.violations()[0].field, "mesh"),
        other => panic!("expected a mesh error, got {other:?}"),
    }
}

#[tokio::test]
async fn zone_tag_is_set_by_the_control_plane() {
    let m = manager(Some("zone-1"));
    m.ensure_default_mesh().await.expect("mesh");
    let mut dp = dataplane("default", "dp");
    if let kuma_core::resource::Spec::Dataplane(spec) = &mut dp.spec {
        let tags = &mut spec.networking.as_mut().expect("networking").inbound[0].tags;
        tags.insert("kuma.io/zone".into(), "spoofed".into());
    }
    let stored = m.create(dp).await.expect("create");
    let spec = stored.spec_as::<DataplaneSpec>().expect("dataplane");
    assert_eq!(spec.inbounds()[0].tags["kuma.io/zone"], "zone-1");
}

#[tokio::test]
async fn mesh_with_dataplanes_is_deleted_only_when_forced() {
    let m = manager(None);
    m.create(Resource::new("", "prod", MeshSpec::default()))
        .await
        .expect("mesh");
    m.create(dataplane("prod", "dp-1")).await.expect("dp");
    let timeout = parse_yaml("type: MeshTimeout\nmesh: prod\nname: t\nspec:\n  to:\n  - targetRef: {kind: Mesh}\n    default: {idleTimeout: 5s}\n").expect("policy");
    m.create(timeout).await.expect("policy");

    match m.delete(&mesh_key("prod"), false).await {
        Err(ManagerError::MeshInUse { mesh, dataplanes }) => {
            assert_eq!((mesh.as_str(), dataplanes), ("prod", 1))
        }
        other => panic!("expected MeshInUse, got {other:?}"),
    }
    m.get(&mesh_key("prod")).await.expect("still there");

    m.delete(&mesh_key("prod"), true)
        .await
        .expect("forced delete");
    for rtype in [ResourceType::Dataplane, ResourceType::MeshTimeout] {
        assert_eq!(
            m.list(&ListQuery::all(rtype)).await.expect("list").total,
            0,
            "{rtype} removed with its mesh"
        );
    }
    assert!(matches!(
        m.delete(&mesh_key("prod"), false).await,
        Err(ManagerError::Store(StoreError::NotFound(_)))
    ));

    // An empty mesh needs no force.
    m.create(Resource::new("", "empty", MeshSpec::default()))
        .await
        .expect("mesh");
    m.delete(&mesh_key("empty"), false)
        .await
        .expect("delete empty mesh");
}

#[tokio::test]
async fn apply_creates_then_updates() {
    let m = manager(None);
    m.ensure_default_mesh().await.expect("mesh");
    let (first, how) = m.apply(dataplane("default", "dp")).await.expect("apply");
    assert_eq!(how, Applied::Created);
    let (second, how) = m
        .apply(dataplane("default", "dp"))
        .await
        .expect("apply again");
    assert_eq!(how, Applied::Updated);
    assert_ne!(first.meta.version, second.meta.version);
    assert_eq!(first.meta.creation_time, second.meta.creation_time);
}

#[tokio::test]
async fn stale_update_through_the_manager_conflicts() {
    let m = manager(None);
    m.ensure_default_mesh().await.expect("mesh");
    let v1 = m.create(dataplane("default", "dp")).await.expect("create");
    m.update(v1.clone()).await.expect("update");
    assert!(matches!(
        m.update(v1).await,
        Err(ManagerError::Store(StoreError::Conflict { .. }))
    ));
}

#[tokio::test]
async fn enabled_mtls_backend_cannot_be_switched() {
    let m = manager(None);
    let with_mtls = "type: Mesh\nname: secure\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n";
    let created = m
        .create(parse_yaml(with_mtls).expect("mesh"))
        .await
        .expect("create");
    let mut swapped = parse_yaml(&with_mtls.replace("ca-1", "ca-2")).expect("mesh");
    swapped.meta.version = created.meta.version;
    assert!(
        matches!(m.update(swapped).await, Err(ManagerError::Invalid(_))),
        "Kuma forbids switching the enabled mTLS backend in place"
    );
}
