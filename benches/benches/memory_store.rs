//! MemoryStore: list/filter over 100,000 resources, and 8 concurrent writers against 1.

use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kuma_benches::{dataplane, mesh};
use kuma_core::resource::{ResourceKey, ResourceType};
use kuma_core::store::{ListQuery, ResourceStore};
use kuma_store::MemoryStore;
use tokio::runtime::Runtime;

const TOTAL: usize = 100_000;
const MESHES: usize = 10;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn filled_store(rt: &Runtime) -> Arc<MemoryStore> {
    let store = Arc::new(MemoryStore::new());
    rt.block_on(async {
        for m in 0..MESHES {
            store
                .create(mesh(&format!("mesh-{m}")), None)
                .await
                .expect("mesh");
        }
        let template: Vec<_> = (0..TOTAL / MESHES)
            .map(|i| dataplane("mesh-0", i))
            .collect();
        for m in 0..MESHES {
            for t in &template {
                let mut r = t.clone();
                r.meta.mesh = format!("mesh-{m}");
                store.create(r, None).await.expect("dataplane");
            }
        }
    });
    store
}

fn list_filter(c: &mut Criterion) {
    let rt = runtime();
    let store = filled_store(&rt);
    let mut g = c.benchmark_group("memory_store_100k");
    let run = |q: ListQuery| {
        let store = store.clone();
        move || {
            let store = store.clone();
            let q = q.clone();
            async move { store.list(&q).await.expect("list").total }
        }
    };
    let mut page = ListQuery::in_mesh(ResourceType::Dataplane, "mesh-7");
    page.size = Some(100);
    page.offset = Some("5000".into());
    g.bench_function("page_of_100_in_mesh", |b| {
        b.to_async(&rt).iter(run(page.clone()))
    });
    let mut by_name = ListQuery::all(ResourceType::Dataplane);
    by_name.name_contains = Some("dp-0042".into());
    g.bench_function("name_contains_all_meshes", |b| {
        b.to_async(&rt).iter(run(by_name.clone()))
    });
    let mut by_label = ListQuery::all(ResourceType::Dataplane);
    by_label.labels.insert("team".into(), "team-3".into());
    by_label.size = Some(100);
    g.bench_function("label_filter_all_meshes", |b| {
        b.to_async(&rt).iter(run(by_label.clone()))
    });
    let mut by_tag = ListQuery::all(ResourceType::Dataplane);
    by_tag
        .tags
        .insert("kuma.io/service".into(), "svc-42".into());
    by_tag.size = Some(100);
    g.bench_function("tag_filter_all_meshes", |b| {
        b.to_async(&rt).iter(run(by_tag.clone()))
    });
    let key = ResourceKey::new(ResourceType::Dataplane, "mesh-3", "dp-004242");
    g.bench_function("get_by_key", |b| {
        b.to_async(&rt).iter(|| {
            let store = store.clone();
            let key = key.clone();
            async move { store.get(&key).await.expect("get").meta.version }
        })
    });
    g.finish();
}

const WRITES: usize = 4_000;

fn writers(c: &mut Criterion) {
    let rt = runtime();
    let template = dataplane("mesh-0", 1);
    let mut g = c.benchmark_group("memory_store_writers");
    g.throughput(Throughput::Elements(WRITES as u64));
    g.sample_size(20);
    for writers in [1usize, 8] {
        g.bench_with_input(
            BenchmarkId::new("creates_then_updates", writers),
            &writers,
            |b, &writers| {
                b.to_async(&rt).iter(|| {
                    let template = template.clone();
                    async move {
                        let store = Arc::new(MemoryStore::new());
                        store.create(mesh("mesh-0"), None).await.expect("mesh");
                        let per = WRITES / writers / 2;
                        let tasks: Vec<_> = (0..writers)
                            .map(|w| {
                                let store = store.clone();
                                let template = template.clone();
                                tokio::spawn(async move {
                                    for i in 0..per {
                                        let mut r = template.clone();
                                        r.meta.name = format!("w{w}-{i}");
                                        let created = store.create(r, None).await.expect("create");
                                        store.update(created).await.expect("update");
                                    }
                                })
                            })
                            .collect();
                        for t in tasks {
                            t.await.expect("writer");
                        }
                    }
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, list_filter, writers);
criterion_main!(benches);
