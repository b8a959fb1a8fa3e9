//! An idle control plane does no work: once it has settled, ten seconds pass without a single
//! store operation, config generation or xDS response, counted on its own `/metrics`. With the
//! memory store, with SQLite, and with real Envoys connected (through kuma-dp: two sidecars,
//! a zone ingress and a zone egress) and nothing changing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::{Standalone, test_dir};
use kuma_testkit::{eventually, free_port, http_get};

/// What an idle control plane must not do, as its `/metrics` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Work {
    store_operations: u64,
    generations: u64,
    responses: u64,
}

/// The sum of every sample of the counter family `name` in a Prometheus text page.
fn sum(page: &str, name: &str) -> u64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn work(diagnostics: u16) -> Work {
    let (status, page) = http_get(diagnostics, "/metrics").await;
    assert_eq!(status, 200);
    Work {
        store_operations: sum(&page, "store_operations_total"),
        generations: sum(&page, "xds_generation_seconds_count"),
        responses: sum(&page, "xds_responses_sent_total"),
    }
}

/// Waits until two readings two seconds apart agree (start-up work done), then checks that
/// ten more seconds add nothing.
async fn assert_idle(diagnostics: u16, what: &str) {
    let mut last = work(diagnostics).await;
    let mut settled = false;
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = work(diagnostics).await;
        if now == last {
            settled = true;
            break;
        }
        last = now;
    }
    assert!(
        settled,
        "{what}: the control plane never settled ({last:?})"
    );
    assert!(last.store_operations > 0, "{what}: the counters count");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = work(diagnostics).await;
    assert_eq!(after, last, "{what}: an idle control plane worked for 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_control_plane_does_nothing() {
    let cp = Standalone::start(&[]).await;
    assert_idle(cp.diagnostics_port, "memory store").await;

    let dir = test_dir("idle-sqlite");
    let file = dir.join("kuma.db");
    let cp = Standalone::start(&[
        ("KUMA_STORE_TYPE", "sqlite"),
        ("KUMA_STORE_SQLITE_PATH", file.to_str().unwrap()),
    ])
    .await;
    assert_idle(cp.diagnostics_port, "SQLite store").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connected_envoys_that_change_nothing_cost_nothing() {
    let dir = test_dir("idle-envoys");
    let cp = Standalone::start(&[]).await;
    let mut proxies = Vec::new();
    for (name, service) in [("backend-1", "backend"), ("web-1", "web")] {
        let dataplane = format!(
            "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {}\n    servicePort: {}\n    tags:\n      kuma.io/service: {service}\n      kuma.io/protocol: http\n  outbound:\n  - port: {}\n    tags:\n      kuma.io/service: backend\n",
            free_port().await,
            free_port().await,
            free_port().await
        );
        proxies.push(cp.proxy(&dir, name, &dataplane, &[]).await);
    }
    // Zone proxies too: their insights are written once, not retried.
    let (status, token) = common::post_json(
        cp.api_port,
        "/tokens/zone",
        r#"{"zone": "default", "scope": ["ingress", "egress"]}"#,
    )
    .await;
    assert_eq!(status, 200, "{token}");
    let cp_address = format!("https://localhost:{}", cp.dp_port);
    for (kind, name) in [("ZoneIngress", "ingress-1"), ("ZoneEgress", "egress-1")] {
        let resource = format!(
            "type: {kind}\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  port: {}\n",
            free_port().await
        );
        let proxy_type = if kind == "ZoneIngress" {
            "ingress"
        } else {
            "egress"
        };
        proxies.push(
            common::spawn_kuma_dp(
                &dir,
                &cp_address,
                &token,
                &cp.ca_file,
                name,
                &resource,
                &["--proxy-type", proxy_type],
            )
            .await,
        );
    }
    for (path, name) in [
        ("/zoneingresses+insights", "ingress-1"),
        ("/zoneegressoverviews", "egress-1"),
    ] {
        eventually("the zone proxy's insight is written", || async move {
            let (_, body) = common::send_json(cp.api_port, "GET", path, "").await;
            body.contains(name) && body.contains("subscriptions")
        })
        .await;
    }
    for dp in &proxies {
        let port = dp.readiness_port;
        eventually("the proxy is ready", || async move {
            http_get(port, "/ready").await.0 == 200
        })
        .await;
    }
    let before = work(cp.diagnostics_port).await;
    assert!(before.generations > 0 && before.responses > 0, "{before:?}");
    assert_idle(cp.diagnostics_port, "four Envoys connected").await;
}
