//! SqliteStore: the conformance suite, persistence across reopening, and the schema check.
#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use kuma_core::resource::{ResourceKey, ResourceType, parse_yaml};
use kuma_core::store::{ListQuery, ResourceStore};
use kuma_store::sqlite::{SqliteError, SqliteStore};

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("kuma-sqlite-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_store_conforms() {
    let dir = Arc::new(temp_dir("conformance"));
    let n = Arc::new(AtomicUsize::new(0));
    kuma_core::conformance::run(|| {
        let (dir, n) = (dir.clone(), n.clone());
        async move {
            let file = dir.join(format!("store-{}.db", n.fetch_add(1, Ordering::SeqCst)));
            Arc::new(SqliteStore::open(&file).unwrap()) as Arc<dyn ResourceStore>
        }
    })
    .await;
    std::fs::remove_dir_all(&*dir).unwrap();
}

#[tokio::test]
async fn resources_and_versions_survive_reopening() {
    let dir = temp_dir("reopen");
    let file = dir.join("kuma.db");
    let store = SqliteStore::open(&file).unwrap();
    let mesh = store
        .create(parse_yaml("type: Mesh\nname: default\n").unwrap(), None)
        .await
        .unwrap();
    let dp = store
        .create(
            kuma_core::conformance::dataplane("default", "web-1", "web"),
            Some(mesh.key()),
        )
        .await
        .unwrap();
    drop(store);

    let store = SqliteStore::open(&file).unwrap();
    assert_eq!(store.get(&dp.key()).await.unwrap(), dp);
    // Revisions continue where they stopped: a new write gets a new, larger version.
    let other = store
        .create(parse_yaml("type: Mesh\nname: other\n").unwrap(), None)
        .await
        .unwrap();
    assert!(other.meta.version.0.parse::<u64>().unwrap() > dp.meta.version.0.parse().unwrap());
    // Ownership is remembered too: deleting the mesh takes the Dataplane with it.
    store
        .delete(&ResourceKey::new(ResourceType::Mesh, "", "default"), None)
        .await
        .unwrap();
    let left = store
        .list(&ListQuery::all(ResourceType::Dataplane))
        .await
        .unwrap();
    assert_eq!(left.total, 0);
    drop(store);

    // A file from a newer binary is refused with both versions named.
    let conn = rusqlite::Connection::open(&file).unwrap();
    conn.execute_batch("PRAGMA user_version = 99").unwrap();
    drop(conn);
    match SqliteStore::open(&file) {
        Err(e @ SqliteError::TooNew { found: 99, .. }) => {
            assert!(e.to_string().contains("newer"), "{e}")
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a newer schema must be refused"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_second_opener_is_refused_naming_the_file_and_its_holder() {
    let dir = temp_dir("in-use");
    let file = dir.join("kuma.db");
    let first = SqliteStore::open(&file).unwrap();
    match SqliteStore::open(&file) {
        Err(e @ SqliteError::InUse { .. }) => {
            let text = e.to_string();
            assert!(text.contains(&file.display().to_string()), "{text}");
            assert!(
                text.contains(&format!("process {}", std::process::id())),
                "{text}"
            );
        }
        Err(e) => panic!("expected InUse, got {e}"),
        Ok(_) => panic!("a second store opened the file in use"),
    }
    // The first store is untouched, and once it is gone the file opens again.
    first
        .create(parse_yaml("type: Mesh\nname: default\n").unwrap(), None)
        .await
        .unwrap();
    drop(first);
    let again = SqliteStore::open(&file).unwrap();
    assert_eq!(
        again
            .list(&ListQuery::all(ResourceType::Mesh))
            .await
            .unwrap()
            .total,
        1
    );
    drop(again);
    std::fs::remove_dir_all(&dir).unwrap();
}
