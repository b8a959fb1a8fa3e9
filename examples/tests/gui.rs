//! The GUI of the running `standalone`, in headless Chromium (Debian's `chromium`): each page
//! is loaded as a person would open it, what it shows is read from the rendered DOM, and a
//! screenshot of it is saved under `target/gui-screenshots/`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};

use common::{Standalone, put_json, test_dir};
use kuma_testkit::{eventually, free_port, http_get};

/// Where the screenshots go.
fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/gui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Headless Chromium with the flags this machine needs, its profile under `dir`.
fn chromium(dir: &Path, args: &[&str], url: &str) -> std::process::Output {
    common::chromium(&[], dir, args, url)
}

/// The text a person sees on `page` (a `#/...` route) once it has rendered, after saving its
/// screenshot as `<shot>.png`.
fn visit(dir: &Path, port: u16, page: &str, shot: &str) -> String {
    let url = format!("http://127.0.0.1:{port}/gui/{page}");
    let mut dom = String::new();
    for budget in [5_000, 20_000] {
        let out = chromium(
            dir,
            &["--dump-dom", &format!("--virtual-time-budget={budget}")],
            &url,
        );
        dom = String::from_utf8_lossy(&out.stdout).into_owned();
        if dom.contains(r#"data-ready="true""#) {
            break;
        }
    }
    assert!(
        dom.contains(r#"data-ready="true""#),
        "{page} renders: {dom}"
    );
    let png = screenshots().join(format!("{shot}.png"));
    let _ = std::fs::remove_file(&png);
    chromium(
        dir,
        &[
            &format!("--screenshot={}", png.display()),
            "--virtual-time-budget=5000",
        ],
        &url,
    );
    let bytes = std::fs::read(&png).unwrap_or_else(|_| panic!("a screenshot of {page}"));
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
        "{page}: an empty screenshot"
    );
    text(&dom)
}

/// The visible text of an HTML document: tags dropped, scripts and styles skipped, entities
/// of the few kinds the GUI produces decoded, whitespace collapsed.
fn text(html: &str) -> String {
    let mut out = String::new();
    let mut rest = html;
    while let Some(start) = rest.find('<') {
        out.push_str(&rest[..start]);
        out.push(' ');
        let tag_end = rest[start..]
            .find('>')
            .map_or(rest.len(), |e| start + e + 1);
        let tag = &rest[start..tag_end];
        rest = &rest[tag_end..];
        for skipped in ["<script", "<style"] {
            if tag.starts_with(skipped) {
                let close = format!("</{}", &skipped[1..]);
                rest = rest.find(&close).map_or("", |i| &rest[i..]);
            }
        }
    }
    out.push_str(rest);
    let out = out
        .replace("&amp;", "&")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"");
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gui_shows_meshes_data_planes_services_and_policies() {
    let dir = test_dir("gui");
    let cp = Standalone::start(&[]).await;
    let port = cp.api_port;

    // The GUI is served, with its own files only.
    let (status, raw) = http_get(port, "/gui").await;
    assert_eq!(status, 308, "{raw}");
    let (status, raw) = http_get(port, "/gui/").await;
    assert_eq!(status, 200);
    assert!(
        raw.contains("content-security-policy: default-src 'none'"),
        "{raw}"
    );

    // backend-1 runs behind a proxy (online); web-1 is only registered (offline).
    let backend = format!(
        "type: Dataplane\nmesh: default\nname: backend-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {}\n    servicePort: {}\n    tags:\n      kuma.io/service: backend\n      kuma.io/protocol: http\n",
        free_port().await,
        free_port().await
    );
    let b = cp.proxy(&dir, "backend-1", &backend, &[]).await;
    eventually("backend-1 is ready", || async {
        http_get(b.readiness_port, "/ready").await.0 == 200
    })
    .await;
    let web = r#"{"type": "Dataplane", "mesh": "default", "name": "web-1", "networking": {"address": "192.0.2.5", "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}]}}"#;
    put_json(port, "/meshes/default/dataplanes/web-1", web).await;
    put_json(
        port,
        "/meshes/default/meshtimeouts/slow-backend",
        r#"{"type": "MeshTimeout", "mesh": "default", "name": "slow-backend", "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "default": {"idleTimeout": "42s"}}]}}"#,
    )
    .await;

    // The GUI shows what the API knows: wait until backend-1's connection is recorded.
    eventually("backend-1's insight records its connection", || async {
        let (_, raw) = http_get(port, "/meshes/default/dataplanes+insights/backend-1").await;
        raw.contains("connectTime") && raw.contains("responsesAcknowledged")
    })
    .await;
    let meshes = visit(&dir, port, "#/", "meshes");
    assert!(meshes.contains("Meshes"), "{meshes}");
    assert!(meshes.contains("default off 1 online / 2"), "{meshes}");

    let mesh = visit(&dir, port, "#/meshes/default", "mesh-default");
    for seen in [
        "Data planes",
        "backend-1 Online 127.0.0.1 backend",
        "web-1 Offline 192.0.2.5 web never 0 ACK / 0 NACK",
        "backend http 1 online / 1",
        "web tcp 0 online / 1",
        // The mesh's default timeout policies (two) and slow-backend.
        "MeshTimeout 3",
    ] {
        assert!(mesh.contains(seen), "{seen:?} in {mesh}");
    }
    assert!(mesh.contains(" ACK / 0 NACK"), "{mesh}");

    let policies = visit(
        &dir,
        port,
        "#/meshes/default/policies/meshtimeouts",
        "meshtimeouts",
    );
    assert!(policies.contains("MeshTimeout in default"), "{policies}");
    assert!(policies.contains("slow-backend Mesh"), "{policies}");

    let detail = visit(
        &dir,
        port,
        "#/meshes/default/dataplanes/backend-1",
        "dataplane-backend-1",
    );
    for seen in [
        "Data plane backend-1",
        "Status Online",
        "Matched policies",
        "MeshTimeout to, from mesh-timeout-all-default, slow-backend",
        "MeshRetry to mesh-retry-all-default",
        "Envoy config",
        "kuma.io/service=backend",
    ] {
        assert!(detail.contains(seen), "{seen:?} in {detail}");
    }
    assert!(
        detail.contains("inbound:127.0.0.1:"),
        "the generated listeners: {detail}"
    );

    let missing = visit(
        &dir,
        port,
        "#/meshes/default/dataplanes/nope",
        "dataplane-missing",
    );
    assert!(missing.contains("Error"), "{missing}");
    assert!(missing.contains("404"), "{missing}");
}

/// The split layout's GUI server: the same GUI, reading the control plane through the
/// read-only API of its own port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_split_layout_serves_the_gui_on_its_own_port() {
    let dir = test_dir("gui-split");
    let cp = Standalone::start(&[("KUMA_PORT_LAYOUT", "split")]).await;
    let gui = cp.split.expect("split ports").gui;
    let web = r#"{"type": "Dataplane", "mesh": "default", "name": "web-1", "networking": {"address": "192.0.2.5", "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}]}}"#;
    put_json(cp.api_port, "/meshes/default/dataplanes/web-1", web).await;
    let mesh = visit(&dir, gui, "#/meshes/default", "split-mesh-default");
    for seen in [
        "Data planes",
        "web-1 Offline 192.0.2.5 web",
        "web tcp 0 online / 1",
    ] {
        assert!(mesh.contains(seen), "{seen:?} in {mesh}");
    }
    // The zones page (linked from the navigation in global mode; opened by URL here).
    put_json(
        cp.api_port,
        "/zones/zone-1",
        r#"{"type": "Zone", "name": "zone-1"}"#,
    )
    .await;
    put_json(
        cp.api_port,
        "/zones/zone-2",
        r#"{"type": "Zone", "name": "zone-2", "enabled": false}"#,
    )
    .await;
    // Zone proxies as a zone lists them: its own, and those of other zones.
    put_json(
        cp.api_port,
        "/zoneingresses/ingress-1",
        r#"{"type": "ZoneIngress", "name": "ingress-1", "zone": "zone-1", "networking": {"address": "192.0.2.7", "port": 10001, "advertisedAddress": "198.51.100.7", "advertisedPort": 10001}, "availableServices": [{"mesh": "default", "instances": 2, "tags": {"kuma.io/service": "backend"}}]}"#,
    )
    .await;
    put_json(
        cp.api_port,
        "/zoneegresses/egress-2",
        r#"{"type": "ZoneEgress", "name": "egress-2", "zone": "zone-2", "networking": {"address": "192.0.2.8", "port": 10002}}"#,
    )
    .await;
    let zones = visit(&dir, gui, "#/zones", "split-zones");
    // Neither has ever connected (no global here): offline, or disabled.
    for seen in [
        "Zones",
        "zone-1 offline never",
        "zone-2 disabled",
        "Zone proxies",
        "zone-1 ingress ingress-1 192.0.2.7:10001 198.51.100.7:10001 1",
        "zone-2 egress egress-2 192.0.2.8:10002",
    ] {
        assert!(zones.contains(seen), "{seen:?} in {zones}");
    }
}
