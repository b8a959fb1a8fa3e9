//! PostgresStore against a real PostgreSQL (a throwaway cluster per test): the conformance
//! suite, schema checks, events across two instances, and a server restart.
#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kuma_core::resource::{ResourceKey, ResourceType};
use kuma_core::store::{EventKind, ListQuery, ResourceStore, StoreError};
use kuma_store::config::PostgresConfig;
use kuma_store::postgres::{self, PostgresError, PostgresStore};
use kuma_testkit::PgCluster;

fn config(cluster: &PgCluster, db: &str) -> PostgresConfig {
    PostgresConfig {
        host: "127.0.0.1".into(),
        port: cluster.port,
        user: "kuma".into(),
        password: "kuma".into(),
        db_name: db.into(),
        connection_timeout: 2,
        max_open_connections: 10,
        tls: Default::default(),
    }
}

/// A plain connection to the cluster's `kuma` database.
async fn sql(cluster: &PgCluster) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=kuma password=kuma dbname=kuma",
            cluster.port
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    client
}

async fn create_database(cluster: &PgCluster, db: &str) {
    sql(cluster)
        .await
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_store_conforms() {
    let cluster = Arc::new(PgCluster::start().await);
    let n = Arc::new(AtomicUsize::new(0));
    kuma_core::conformance::run(|| {
        let (cluster, n) = (cluster.clone(), n.clone());
        async move {
            let db = format!("conformance_{}", n.fetch_add(1, Ordering::SeqCst));
            create_database(&cluster, &db).await;
            let cfg = config(&cluster, &db);
            postgres::migrate(&cfg).await.unwrap();
            Arc::new(PostgresStore::connect(&cfg).await.unwrap()) as Arc<dyn ResourceStore>
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_versions_are_checked() {
    let cluster = PgCluster::start().await;
    let cfg = config(&cluster, "kuma");
    // An empty database: the store refuses to start and says what to do.
    match PostgresStore::connect(&cfg).await {
        Err(e @ PostgresError::SchemaMismatch { found: 0, .. }) => {
            assert!(e.to_string().contains("migrate up"), "{e}");
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("an unmigrated database must be refused"),
    }
    assert_eq!(
        postgres::migrate(&cfg).await.unwrap(),
        (1..=postgres::schema_version()).collect::<Vec<_>>()
    );
    assert!(
        postgres::migrate(&cfg).await.unwrap().is_empty(),
        "migrate is idempotent"
    );
    PostgresStore::connect(&cfg).await.unwrap();
    // A database from a newer binary is refused by both.
    let client = sql(&cluster).await;
    client
        .execute("INSERT INTO schema_migrations VALUES (99)", &[])
        .await
        .unwrap();
    for e in [
        PostgresStore::connect(&cfg).await.err().unwrap(),
        postgres::migrate(&cfg).await.err().unwrap(),
    ] {
        assert!(
            matches!(e, PostgresError::SchemaMismatch { found: 99, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("newer"), "{e}");
    }
    // A wrong password is a clear connection error, not a hang.
    let wrong = PostgresConfig {
        password: "nope".into(),
        ..cfg
    };
    let e = PostgresStore::connect(&wrong).await.err().unwrap();
    assert!(
        e.to_string().contains("password authentication failed"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_on_one_instance_reach_the_other_and_survive_a_restart() {
    let cluster = PgCluster::start().await;
    let cfg = config(&cluster, "kuma");
    postgres::migrate(&cfg).await.unwrap();
    let a = PostgresStore::connect(&cfg).await.unwrap();
    let b = PostgresStore::connect(&cfg).await.unwrap();
    let mut on_b = b.watch();

    let mesh = kuma_core::conformance::dataplane("default", "web-1", "web");
    let mesh_res = kuma_core::resource::parse_yaml("type: Mesh\nname: default\n").unwrap();
    a.create(mesh_res, None).await.unwrap();
    let dp = a
        .create(
            mesh,
            Some(ResourceKey::new(ResourceType::Mesh, "", "default")),
        )
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), on_b.recv())
        .await
        .expect("B hears A's write")
        .unwrap();
    assert_eq!(
        (first.kind, first.key.rtype),
        (EventKind::Create, ResourceType::Mesh)
    );
    let second = tokio::time::timeout(Duration::from_secs(5), on_b.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.key, dp.key());
    assert_eq!(second.revision, first.revision + 1);
    assert_eq!(b.get(&dp.key()).await.unwrap(), dp);

    // The server restarts: operations fail clearly while it is down, then both instances
    // work again without being restarted, and nothing acknowledged is lost.
    cluster.stop();
    match a.get(&dp.key()).await {
        Err(StoreError::Backend(e)) => assert!(!e.to_string().is_empty()),
        other => panic!("expected a backend error while PostgreSQL is down, got {other:?}"),
    }
    cluster.restart();
    let mut ok = false;
    for _ in 0..50 {
        if a.get(&dp.key()).await.is_ok() && b.get(&dp.key()).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "both instances recover after the restart");
    assert_eq!(
        a.get(&dp.key()).await.unwrap(),
        dp,
        "versions survive restarts"
    );
    // B's event reader reconnects and still delivers what A writes.
    let mut updated = dp.clone();
    updated.meta.labels.insert("team".into(), "payments".into());
    let updated = a.update(updated).await.unwrap();
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), on_b.recv())
            .await
            .expect("B hears A's write after the restart")
            .unwrap();
        if e.kind == EventKind::Update {
            assert_eq!(e.version, updated.meta.version);
            break;
        }
    }
    let listed = b
        .list(&ListQuery::in_mesh(ResourceType::Dataplane, "default"))
        .await
        .unwrap();
    assert_eq!(listed.items, vec![updated]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_is_exclusive_and_lost_with_the_database() {
    use kuma_store::leader::postgres::{LEASE, campaign};
    let cluster = PgCluster::start().await;
    let cfg = config(&cluster, "kuma");
    let (first, first_task) = campaign(cfg.clone()).await;
    let (second, second_task) = campaign(cfg.clone()).await;
    assert!(*first.borrow(), "the first campaigner leads");
    assert!(!*second.borrow(), "only one leads");
    // The database goes away: the leader steps down within about a lease.
    cluster.stop();
    let mut waited = Duration::ZERO;
    while *first.borrow() {
        assert!(
            waited < LEASE * 5,
            "the leader kept leading without its database"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    }
    // It comes back: exactly one leads again.
    cluster.restart();
    let mut waited = Duration::ZERO;
    while !(*first.borrow() ^ *second.borrow()) {
        assert!(
            waited < LEASE * 15,
            "nobody leads after the database came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    }
    first_task.abort();
    second_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_modes_check_what_they_promise() {
    use kuma_store::config::PostgresTlsMode;
    let cluster = PgCluster::start().await;
    let ca = cluster.enable_tls().to_string_lossy().into_owned();
    let with = |host: &str, mode: PostgresTlsMode, ca: &str| {
        let mut c = config(&cluster, "kuma");
        c.host = host.into();
        c.tls.mode = mode;
        c.tls.ca_path = ca.into();
        c
    };
    // verifyFull: the certificate names localhost, so localhost passes, 127.0.0.1 does not.
    postgres::migrate(&with("localhost", PostgresTlsMode::VerifyFull, &ca))
        .await
        .unwrap();
    let store = PostgresStore::connect(&with("localhost", PostgresTlsMode::VerifyFull, &ca))
        .await
        .unwrap();
    store
        .create(
            kuma_core::resource::parse_yaml("type: Mesh\nname: tls\n").unwrap(),
            None,
        )
        .await
        .unwrap();
    let e = PostgresStore::connect(&with("127.0.0.1", PostgresTlsMode::VerifyFull, &ca))
        .await
        .err()
        .expect("a certificate for another name is refused");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    // verifyCa: the chain is checked, not the name.
    PostgresStore::connect(&with("127.0.0.1", PostgresTlsMode::VerifyCa, &ca))
        .await
        .unwrap();
    // ... and a CA that did not sign it is refused.
    let other_ca = std::env::temp_dir().join(format!("kuma-other-ca-{}.crt", std::process::id()));
    let other = PgCluster::start().await;
    std::fs::copy(other.enable_tls(), &other_ca).unwrap();
    let e = PostgresStore::connect(&with(
        "localhost",
        PostgresTlsMode::VerifyFull,
        &other_ca.to_string_lossy(),
    ))
    .await
    .err()
    .expect("an unknown issuer is refused");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    // verifyNone: encrypted without checks; the server sees TLS in every mode but disable.
    for (mode, expect_ssl) in [
        (PostgresTlsMode::VerifyNone, true),
        (PostgresTlsMode::Disable, false),
    ] {
        let c = with("127.0.0.1", mode, "");
        let store = PostgresStore::connect(&c).await.unwrap();
        assert_eq!(
            store.uses_tls().await.unwrap(),
            expect_ssl,
            "{mode:?} decides whether the session is encrypted"
        );
    }
    let _ = std::fs::remove_file(other_ca);
}
