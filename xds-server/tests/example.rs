//! The `static_snapshot` library example against a real Envoy: its snapshot is ACKed and TCP
//! traffic flows through the listener it describes.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use kuma_testkit::{envoy_stats, free_port, stat};
use tokio::net::TcpListener;

#[allow(dead_code)] // the example's `main` is not called here
#[path = "../examples/static_snapshot.rs"]
mod static_snapshot;

#[tokio::test]
async fn static_snapshot_example_carries_traffic_through_envoy() {
    let xds = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let xds_port = xds.local_addr().unwrap().port();
    let (echo_port, listen_port, admin_port) = (
        kuma_testkit::echo_server("").await,
        free_port().await,
        free_port().await,
    );
    let snapshot = static_snapshot::snapshot(
        format!("127.0.0.1:{listen_port}").parse().unwrap(),
        format!("127.0.0.1:{echo_port}").parse().unwrap(),
    );
    tokio::spawn(static_snapshot::serve(xds, snapshot));

    let dir = std::env::temp_dir().join(format!("xds-server-example-{}", std::process::id()));
    let bootstrap = kuma_testkit::ads_bootstrap("any-node", xds_port, admin_port, "DELTA_GRPC");
    let mut envoy = kuma_testkit::spawn_envoy(&dir, &bootstrap, listen_port);
    let mut echoed = None;
    for _ in 0..100 {
        echoed = kuma_testkit::round_trip(listen_port, b"ping").await;
        if echoed.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = envoy_stats(admin_port).await;
    let _ = envoy.kill().await;
    let log = std::fs::read_to_string(dir.join("envoy.log")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        echoed.as_deref(),
        Some(b"ping".as_slice()),
        "envoy log:\n{log}"
    );
    assert_eq!(
        stat(&stats, "listener_manager.lds.update_rejected"),
        Some(0),
        "{stats}"
    );
    assert_eq!(
        stat(&stats, "cluster_manager.cds.update_rejected"),
        Some(0),
        "{stats}"
    );
}
