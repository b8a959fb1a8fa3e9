//! The store conformance suite: one function every [`ResourceStore`] implementation runs.
//!
//! ```text
//! #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
//! async fn memory_store_conforms() {
//!     kuma_core::conformance::run(|| async { Arc::new(MemoryStore::new()) as Arc<dyn ResourceStore> }).await;
//! }
//! ```
//!
//! Each check gets a fresh, empty store from the factory and panics with a message naming the
//! broken guarantee: CRUD, optimistic versions, ownership cascade, paging, filters, the change
//! stream (order and completeness), concurrent writers losing nothing, and unconditional writes
//! through [`ResourceManager::apply`](crate::manager::ResourceManager::apply) never failing
//! for a race.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::model::mesh::MeshSpec;
use crate::model::system::ConfigSpec;
use crate::resource::{Resource, ResourceKey, ResourceType, Version, parse_yaml};
use crate::store::{EventKind, ListQuery, ResourceStore, StoreError, StoreEvent};

/// Concurrent writer tasks in the concurrency check.
pub const WRITERS: usize = 8;
const INCREMENTS: usize = 25;
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs every check, each against a fresh store from `new_store`.
pub async fn run<F, Fut>(new_store: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn ResourceStore>>,
{
    crud(new_store().await).await;
    optimistic_versions(new_store().await).await;
    ownership_cascade(new_store().await).await;
    paging(new_store().await).await;
    filters(new_store().await).await;
    events(new_store().await).await;
    concurrent_writers(new_store().await).await;
    unconditional_writes(new_store().await).await;
}

fn mesh(name: &str) -> Resource {
    Resource::new("", name, MeshSpec::default())
}

fn config(name: &str, value: &str) -> Resource {
    Resource::new(
        "",
        name,
        ConfigSpec {
            config: value.to_string(),
        },
    )
}

/// A Dataplane with one inbound tagged `kuma.io/service: <service>`.
pub fn dataplane(mesh: &str, name: &str, service: &str) -> Resource {
    let yaml = format!(
        "type: Dataplane\nmesh: {mesh}\nname: {name}\nnetworking:\n  address: 10.0.0.1\n  inbound:\n  - port: 8080\n    tags:\n      kuma.io/service: {service}\n      version: v1\n"
    );
    parse_yaml(&yaml).expect("fixture dataplane parses")
}

fn mesh_key(name: &str) -> ResourceKey {
    ResourceKey::global(ResourceType::Mesh, name)
}

async fn must_be_missing(store: &dyn ResourceStore, key: &ResourceKey, why: &str) {
    match store.get(key).await {
        Err(StoreError::NotFound(k)) => assert_eq!(&k, key, "NotFound names the wrong key"),
        other => panic!("{why}: expected NotFound for {key}, got {other:?}"),
    }
}

async fn crud(store: Arc<dyn ResourceStore>) {
    let s = store.as_ref();
    let mut m = mesh("crud");
    m.meta.labels.insert("team".into(), "a".into());
    let created = s.create(m.clone(), None).await.expect("create");
    assert!(
        !created.meta.version.is_empty(),
        "create must assign a version"
    );
    assert!(
        created.meta.creation_time.is_some(),
        "create must set creationTime"
    );
    assert_eq!(created.spec, m.spec);
    assert_eq!(created.meta.labels, m.meta.labels);

    let got = s.get(&mesh_key("crud")).await.expect("get after create");
    assert_eq!(got, created, "get must return what create returned");

    match s.create(m.clone(), None).await {
        Err(StoreError::AlreadyExists(k)) => assert_eq!(k, mesh_key("crud")),
        other => panic!("second create must fail with AlreadyExists, got {other:?}"),
    }

    let mut changed = got.clone();
    changed.spec = MeshSpec {
        skip_creating_initial_policies: vec!["*".into()],
        ..Default::default()
    }
    .into();
    let updated = s
        .update(changed.clone())
        .await
        .expect("update with current version");
    assert_ne!(
        updated.meta.version, created.meta.version,
        "update must change the version"
    );
    assert_eq!(
        updated.meta.creation_time, created.meta.creation_time,
        "update keeps creationTime"
    );
    assert!(updated.meta.modification_time >= created.meta.modification_time);
    assert_eq!(
        s.get(&mesh_key("crud")).await.expect("get").spec,
        changed.spec,
        "update must persist"
    );

    let mut ghost = mesh("ghost");
    ghost.meta.version = Version("1".into());
    assert!(
        matches!(s.update(ghost).await, Err(StoreError::NotFound(_))),
        "update of a missing resource"
    );

    s.delete(&mesh_key("crud"), None).await.expect("delete");
    must_be_missing(s, &mesh_key("crud"), "after delete").await;
    assert!(
        matches!(
            s.delete(&mesh_key("crud"), None).await,
            Err(StoreError::NotFound(_))
        ),
        "double delete"
    );

    // Same name, different mesh or type: distinct resources.
    s.create(mesh("a"), None).await.expect("mesh a");
    s.create(mesh("b"), None).await.expect("mesh b");
    s.create(dataplane("a", "dp", "web"), None)
        .await
        .expect("dp in a");
    s.create(dataplane("b", "dp", "web"), None)
        .await
        .expect("dp with the same name in b");
    s.create(config("dp", "x"), None)
        .await
        .expect("config named like a dataplane");
}

async fn optimistic_versions(store: Arc<dyn ResourceStore>) {
    let s = store.as_ref();
    let v1 = s.create(config("c", "1"), None).await.expect("create");
    let mut next = v1.clone();
    next.spec = ConfigSpec { config: "2".into() }.into();
    let v2 = s.update(next).await.expect("update from v1");

    let mut stale = v1.clone();
    stale.spec = ConfigSpec {
        config: "stale".into(),
    }
    .into();
    match s.update(stale).await {
        Err(StoreError::Conflict {
            expected, actual, ..
        }) => {
            assert_eq!(expected, v1.meta.version);
            assert_eq!(actual, v2.meta.version);
        }
        other => panic!("an update carrying a stale version must conflict, got {other:?}"),
    }
    let mut unversioned = v2.clone();
    unversioned.meta.version = Version::default();
    assert!(
        matches!(
            s.update(unversioned).await,
            Err(StoreError::Conflict { .. })
        ),
        "an update without a version must conflict, not overwrite"
    );
    assert!(
        matches!(
            s.delete(&v1.key(), Some(&v1.meta.version)).await,
            Err(StoreError::Conflict { .. })
        ),
        "a delete carrying a stale version must conflict"
    );
    let now = s.get(&v1.key()).await.expect("still there");
    assert_eq!(
        now, v2,
        "a refused write must leave the acknowledged one intact"
    );
    s.delete(&v1.key(), Some(&v2.meta.version))
        .await
        .expect("delete with the current version");
}

async fn ownership_cascade(store: Arc<dyn ResourceStore>) {
    let s = store.as_ref();
    s.create(mesh("doomed"), None).await.expect("mesh");
    s.create(mesh("kept"), None).await.expect("mesh");
    for (m, n) in [("doomed", "dp-1"), ("doomed", "dp-2"), ("kept", "dp-1")] {
        s.create(dataplane(m, n, "web"), Some(mesh_key(m)))
            .await
            .expect("owned dataplane");
    }
    // Transitive: a resource owned by a dataplane goes with its mesh.
    let dp_key = ResourceKey::new(ResourceType::Dataplane, "doomed", "dp-1");
    let insight = Resource::new(
        "doomed",
        "dp-1",
        ResourceType::DataplaneInsight.empty_spec(),
    );
    s.create(insight, Some(dp_key.clone()))
        .await
        .expect("insight owned by dataplane");

    match s
        .create(dataplane("nowhere", "dp", "web"), Some(mesh_key("nowhere")))
        .await
    {
        Err(StoreError::OwnerNotFound(k)) => assert_eq!(k, mesh_key("nowhere")),
        other => panic!("create with a missing owner must fail with OwnerNotFound, got {other:?}"),
    }

    s.delete(&mesh_key("doomed"), None)
        .await
        .expect("delete mesh");
    for name in ["dp-1", "dp-2"] {
        must_be_missing(
            s,
            &ResourceKey::new(ResourceType::Dataplane, "doomed", name),
            "owned by a deleted mesh",
        )
        .await;
    }
    must_be_missing(
        s,
        &ResourceKey::new(ResourceType::DataplaneInsight, "doomed", "dp-1"),
        "owned transitively",
    )
    .await;
    s.get(&ResourceKey::new(ResourceType::Dataplane, "kept", "dp-1"))
        .await
        .expect("other mesh untouched");
    // The name is free again and the new resource is not owned by the old one.
    s.create(mesh("doomed"), None).await.expect("recreate mesh");
    must_be_missing(s, &dp_key, "recreated mesh starts empty").await;

    // An owned resource deleted on its own leaves its owner's other resources owned, and a
    // resource re-created under its name without an owner is not deleted with the old owner.
    for n in ["dp-a", "dp-b"] {
        s.create(dataplane("doomed", n, "web"), Some(mesh_key("doomed")))
            .await
            .expect("owned dataplane");
    }
    let dp_a = ResourceKey::new(ResourceType::Dataplane, "doomed", "dp-a");
    s.create(
        Resource::new(
            "doomed",
            "dp-a",
            ResourceType::DataplaneInsight.empty_spec(),
        ),
        Some(dp_a.clone()),
    )
    .await
    .expect("insight");
    s.delete(&dp_a, None).await.expect("delete one owned");
    must_be_missing(
        s,
        &ResourceKey::new(ResourceType::DataplaneInsight, "doomed", "dp-a"),
        "owned by the deleted dataplane",
    )
    .await;
    s.create(dataplane("doomed", "dp-a", "web"), None)
        .await
        .expect("re-created without an owner");
    s.delete(&mesh_key("doomed"), None)
        .await
        .expect("delete mesh again");
    must_be_missing(
        s,
        &ResourceKey::new(ResourceType::Dataplane, "doomed", "dp-b"),
        "still owned",
    )
    .await;
    s.get(&dp_a)
        .await
        .expect("a re-created resource is not its predecessor's owner's");
}

async fn paging(store: Arc<dyn ResourceStore>) {
    let s = store.as_ref();
    let meshes = ["m-b", "m-a", "m-c"];
    for m in meshes {
        s.create(mesh(m), None).await.expect("mesh");
    }
    // Insert in a scrambled order; the store must sort by mesh, then name.
    let mut expected = Vec::new();
    for i in [7, 3, 0, 8, 1, 5, 2, 6, 4] {
        for m in meshes {
            let name = format!("dp-{i:02}");
            s.create(dataplane(m, &name, "svc"), None)
                .await
                .expect("dataplane");
            expected.push((m.to_string(), name));
        }
    }
    expected.sort();

    let mut seen = Vec::new();
    let mut q = ListQuery::all(ResourceType::Dataplane);
    q.size = Some(10);
    let mut pages = 0;
    loop {
        let page = s.list(&q).await.expect("list page");
        assert_eq!(
            page.total,
            expected.len(),
            "total counts every match, not the page"
        );
        assert!(page.items.len() <= 10, "page larger than size");
        seen.extend(
            page.items
                .iter()
                .map(|r| (r.meta.mesh.clone(), r.meta.name.clone())),
        );
        pages += 1;
        match page.next_offset {
            Some(o) => q.offset = Some(o),
            None => break,
        }
        assert!(pages < 10, "paging does not terminate");
    }
    assert_eq!(pages, 3, "27 items in pages of 10");
    assert_eq!(
        seen, expected,
        "pages must cover every item once, ordered by mesh then name"
    );

    let all = s
        .list(&ListQuery::all(ResourceType::Dataplane))
        .await
        .expect("unpaged");
    assert_eq!(all.items.len(), expected.len());
    assert_eq!(all.next_offset, None);

    let mut bad = ListQuery::all(ResourceType::Dataplane);
    bad.offset = Some("not-a-number".into());
    assert!(
        matches!(s.list(&bad).await, Err(StoreError::InvalidOffset(_))),
        "garbage offset"
    );
    bad.offset = Some("1000".into());
    assert!(
        matches!(s.list(&bad).await, Err(StoreError::InvalidOffset(_))),
        "offset past the end"
    );

    let in_mesh = s
        .list(&ListQuery::in_mesh(ResourceType::Dataplane, "m-c"))
        .await
        .expect("mesh filter");
    assert_eq!(in_mesh.total, 9);
    assert!(in_mesh.items.iter().all(|r| r.meta.mesh == "m-c"));
    let meshes_page = s
        .list(&ListQuery::all(ResourceType::Mesh))
        .await
        .expect("meshes");
    let names: Vec<_> = meshes_page
        .items
        .iter()
        .map(|r| r.meta.name.as_str())
        .collect();
    assert_eq!(names, ["m-a", "m-b", "m-c"], "types are listed separately");
}

async fn filters(store: Arc<dyn ResourceStore>) {
    let s = store.as_ref();
    s.create(mesh("f"), None).await.expect("mesh");
    let mut web = dataplane("f", "web-1", "web");
    web.meta.labels.insert("team".into(), "a".into());
    s.create(web, None).await.expect("web-1");
    let mut web2 = dataplane("f", "web-2", "web-canary");
    web2.meta.labels.insert("team".into(), "b".into());
    // A value that JSON escapes: stores must match it as written.
    web2.meta
        .labels
        .insert("kuma.io/note".into(), "say \"hi\" \\ é/ok".into());
    s.create(web2, None).await.expect("web-2");
    s.create(dataplane("f", "db-1", "postgres"), None)
        .await
        .expect("db-1");

    let names = |page: crate::store::Page| {
        page.items
            .into_iter()
            .map(|r| r.meta.name)
            .collect::<Vec<_>>()
    };
    let mut q = ListQuery::in_mesh(ResourceType::Dataplane, "f");
    q.name_contains = Some("web".into());
    assert_eq!(
        names(s.list(&q).await.expect("name filter")),
        ["web-1", "web-2"]
    );

    let mut q = ListQuery::in_mesh(ResourceType::Dataplane, "f");
    q.labels = BTreeMap::from([("team".to_string(), "b".to_string())]);
    assert_eq!(names(s.list(&q).await.expect("label filter")), ["web-2"]);
    q.labels
        .insert("kuma.io/note".to_string(), "say \"hi\" \\ é/ok".to_string());
    assert_eq!(
        names(s.list(&q).await.expect("two labels, one escaped")),
        ["web-2"]
    );
    q.labels.insert("team".to_string(), "a".to_string());
    assert_eq!(s.list(&q).await.expect("labels of no one").total, 0);

    let mut q = ListQuery::in_mesh(ResourceType::Dataplane, "f");
    q.tags = BTreeMap::from([("kuma.io/service".to_string(), "web".to_string())]);
    assert_eq!(
        names(s.list(&q).await.expect("tag filter")),
        ["web-1", "web-2"],
        "tag values match by substring"
    );
    q.tags = BTreeMap::from([
        ("kuma.io/service".to_string(), "*".to_string()),
        ("version".to_string(), "v1".to_string()),
    ]);
    assert_eq!(s.list(&q).await.expect("wildcard").total, 3);
    q.tags = BTreeMap::from([("kuma.io/service".to_string(), "redis".to_string())]);
    assert_eq!(s.list(&q).await.expect("no match").total, 0);

    let mut q = ListQuery::in_mesh(ResourceType::Dataplane, "f");
    q.name_contains = Some("web".into());
    q.size = Some(1);
    let page = s.list(&q).await.expect("filter + paging");
    assert_eq!(
        (page.total, page.items.len(), page.next_offset.as_deref()),
        (2, 1, Some("1"))
    );
}

async fn recv(rx: &mut broadcast::Receiver<StoreEvent>, what: &str) -> StoreEvent {
    match tokio::time::timeout(EVENT_TIMEOUT, rx.recv()).await {
        Ok(Ok(e)) => e,
        Ok(Err(e)) => panic!("event stream broke while waiting for {what}: {e}"),
        Err(_) => panic!("no event for {what}: the store dropped an event"),
    }
}

async fn events(store: Arc<dyn ResourceStore>) {
    let s = store.as_ref();
    let mut rx = s.watch();
    let m = s.create(mesh("ev"), None).await.expect("mesh");
    let dp1 = s
        .create(dataplane("ev", "dp-1", "web"), Some(mesh_key("ev")))
        .await
        .expect("dp-1");
    let dp2 = s
        .create(dataplane("ev", "dp-2", "web"), Some(mesh_key("ev")))
        .await
        .expect("dp-2");
    let dp1b = s.update(dp1.clone()).await.expect("update dp-1");
    let failed = s.update(dp1.clone()).await;
    assert!(failed.is_err(), "stale update must fail");
    s.delete(&mesh_key("ev"), None).await.expect("delete mesh");

    let mut expected = vec![
        (EventKind::Create, m.key(), m.meta.version.clone()),
        (EventKind::Create, dp1.key(), dp1.meta.version.clone()),
        (EventKind::Create, dp2.key(), dp2.meta.version.clone()),
        (EventKind::Update, dp1b.key(), dp1b.meta.version.clone()),
    ];
    let mut got = Vec::new();
    let mut last_revision = None;
    for i in 0..expected.len() + 3 {
        let e = recv(&mut rx, &format!("event #{i}")).await;
        if let Some(last) = last_revision {
            assert_eq!(
                e.revision,
                last + 1,
                "revisions must be consecutive (an event went missing)"
            );
        }
        last_revision = Some(e.revision);
        got.push((e.kind, e.key, e.version));
    }
    // The three deletes of the cascade may come in any order, but all must come.
    let mut deletes: Vec<_> = got.split_off(expected.len());
    assert_eq!(
        got, expected,
        "creates and updates must be reported in order, failed writes not at all"
    );
    deletes.sort_by(|a, b| a.1.cmp(&b.1));
    expected = vec![
        (EventKind::Delete, m.key(), m.meta.version.clone()),
        (EventKind::Delete, dp1b.key(), dp1b.meta.version.clone()),
        (EventKind::Delete, dp2.key(), dp2.meta.version.clone()),
    ];
    expected.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        deletes, expected,
        "every resource removed by the cascade must be reported"
    );
    assert!(
        matches!(rx.try_recv(), Err(broadcast::error::TryRecvError::Empty)),
        "no events beyond the writes that happened"
    );
}

async fn concurrent_writers(store: Arc<dyn ResourceStore>) {
    store
        .create(config("counter", "0"), None)
        .await
        .expect("counter");
    let mut rx = store.watch();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0usize;
            for _ in 0..INCREMENTS {
                loop {
                    let current = store
                        .get(&ResourceKey::global(ResourceType::Config, "counter"))
                        .await
                        .expect("get");
                    let n: usize = current
                        .spec_as::<ConfigSpec>()
                        .expect("config")
                        .config
                        .parse()
                        .expect("number");
                    let mut next = current.clone();
                    next.spec = ConfigSpec {
                        config: (n + 1).to_string(),
                    }
                    .into();
                    match store.update(next).await {
                        Ok(_) => break,
                        Err(StoreError::Conflict { .. }) => conflicts += 1,
                        Err(e) => panic!("writer {w}: {e}"),
                    }
                }
            }
            for i in 0..INCREMENTS {
                store
                    .create(config(&format!("w{w}-{i}"), "x"), None)
                    .await
                    .expect("distinct create");
            }
            conflicts
        }));
    }
    for t in tasks {
        t.await.expect("writer task");
    }
    let counter = store
        .get(&ResourceKey::global(ResourceType::Config, "counter"))
        .await
        .expect("counter");
    assert_eq!(
        counter.spec_as::<ConfigSpec>().expect("config").config,
        (WRITERS * INCREMENTS).to_string(),
        "concurrent read-modify-write lost updates"
    );
    let all = store
        .list(&ListQuery::all(ResourceType::Config))
        .await
        .expect("list");
    assert_eq!(
        all.total,
        1 + WRITERS * INCREMENTS,
        "concurrent creates lost resources"
    );
    let writes = 2 * WRITERS * INCREMENTS;
    let mut last = None;
    for i in 0..writes {
        let e = recv(&mut rx, &format!("concurrent write #{i}")).await;
        if let Some(l) = last {
            assert_eq!(
                e.revision,
                l + 1,
                "revisions must be consecutive under concurrency"
            );
        }
        last = Some(e.revision);
    }
}

/// Concurrent unconditional writes (`PUT` without `If-Match`) of one resource all succeed: the
/// manager retries those that raced, and the last writer wins.
async fn unconditional_writes(store: Arc<dyn ResourceStore>) {
    use crate::manager::{ManagerOptions, ResourceManager};
    const WRITES: usize = 40;
    let manager = ResourceManager::new(store, ManagerOptions::default());
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let manager = manager.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..WRITES {
                let value = format!("{writer}-{i}");
                if let Err(e) = manager.apply(config("contended", &value)).await {
                    panic!("unconditional write {value} failed: {e}");
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer task");
    }
    let stored = manager
        .get(&ResourceKey::global(ResourceType::Config, "contended"))
        .await
        .expect("the resource exists");
    let Some(spec) = stored.spec_as::<ConfigSpec>() else {
        panic!("a Config");
    };
    assert!(
        spec.config.ends_with(&format!("-{}", WRITES - 1)),
        "the last write of some writer wins, got {:?}",
        spec.config
    );
}
