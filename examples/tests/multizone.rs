//! Multi-zone with the binaries users run: one `global` and two `zone` processes on loopback,
//! KDS over TLS (the zones trust global's CA file). Policies written on global reach both zones
//! under Kuma's hashed names and shape real traffic through an Envoy in zone-1; proxies of the
//! zones appear on global with their zone; each side refuses what belongs to the other.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Standalone, send_json, test_dir};
use kuma_kds::names::hashed_name;
use kuma_testkit::{eventually, free_port};
use serde_json::{Value, json};

/// Starts `global` with `env` added.
async fn global(env: &[(&str, &str)]) -> Standalone {
    Standalone::launch_binary("global", &[], &[], env, Stdio::null()).await
}

/// Starts zone `name` connected to `global`, with `env` added.
async fn zone(name: &str, global: &Standalone, env: &[(&str, &str)]) -> Standalone {
    let address = format!("grpcs://127.0.0.1:{}", global.kds_port);
    let mut all = vec![
        ("KUMA_MULTIZONE_ZONE_NAME", name),
        ("KUMA_MULTIZONE_ZONE_GLOBAL_ADDRESS", address.as_str()),
        (
            "KUMA_MULTIZONE_ZONE_KDS_ROOT_CA_FILE",
            global.ca_file.as_str(),
        ),
    ];
    all.extend_from_slice(env);
    Standalone::launch_binary("zone", &[], &[], &all, Stdio::null()).await
}

/// `GET path` on the API at `port`, as JSON (`Value::Null` unless 200).
async fn get(port: u16, path: &str) -> Value {
    let (status, body) = send_json(port, "GET", path, "").await;
    if status != 200 {
        return Value::Null;
    }
    serde_json::from_str(&body).unwrap_or(Value::Null)
}

/// The names of the items a list answer holds.
async fn names(port: u16, path: &str) -> Vec<String> {
    get(port, path).await["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A Dataplane whose inbound forwards to `app`, calling `outbound` (service, port) pairs.
fn dataplane(
    name: &str,
    service: &str,
    inbound: u16,
    app: u16,
    outbound: &[(&str, u16)],
) -> String {
    let mut yaml = format!(
        "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {inbound}\n    servicePort: {app}\n    serviceAddress: 127.0.0.1\n    tags:\n      kuma.io/service: {service}\n      kuma.io/protocol: http\n"
    );
    if !outbound.is_empty() {
        yaml.push_str("  outbound:\n");
        for (svc, port) in outbound {
            yaml.push_str(&format!(
                "  - port: {port}\n    tags:\n      kuma.io/service: {svc}\n"
            ));
        }
    }
    yaml
}

/// An HTTP app on 127.0.0.1 answering 200 after `delay`.
async fn app(delay: Duration) -> u16 {
    let handler = move || async move {
        tokio::time::sleep(delay).await;
        "ok"
    };
    let app = axum::Router::new().fallback(handler);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// The status of `GET /` on 127.0.0.1:`port` (0: no answer).
async fn status_of(port: u16) -> u16 {
    kuma_testkit::http_get(port, "/").await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_and_two_zones_share_policies_and_proxies() {
    let dir = test_dir("multizone");
    let global = global(&[(
        "KUMA_MULTIZONE_GLOBAL_KDS_ZONE_INSIGHT_FLUSH_INTERVAL",
        "1s",
    )])
    .await;
    assert!(
        global.table.contains("KDS (TLS): zone sync (gRPC)"),
        "{}",
        global.table
    );
    assert!(!global.table.contains("dp-server"), "{}", global.table);
    let zone1 = zone("zone-1", &global, &[]).await;
    let zone2 = zone("zone-2", &global, &[]).await;
    assert!(zone1.table.contains("dp-server"), "{}", zone1.table);

    // The default mesh and its default policies come from global.
    for z in [&zone1, &zone2] {
        eventually("the default mesh reaches the zone", || async {
            names(z.api_port, "/meshes").await == ["default"]
        })
        .await;
    }

    // A MeshTimeout applied on global reaches both zones under Kuma's hashed name.
    let timeout = json!({
        "type": "MeshTimeout", "mesh": "default", "name": "slow-timeout",
        "spec": {"targetRef": {"kind": "MeshService", "name": "web"}, "to": [{
            "targetRef": {"kind": "MeshService", "name": "slow"},
            "default": {"http": {"requestTimeout": "1s"}}}]}
    });
    let hashed = hashed_name("default", "slow-timeout", &[]);
    let applied = Instant::now();
    let (status, body) = send_json(
        global.api_port,
        "PUT",
        "/meshes/default/meshtimeouts/slow-timeout",
        &timeout.to_string(),
    )
    .await;
    assert!((200..300).contains(&status), "{status} {body}");
    for z in [&zone1, &zone2] {
        eventually("the policy reaches the zone", || async {
            names(z.api_port, "/meshes/default/meshtimeouts")
                .await
                .contains(&hashed)
        })
        .await;
    }
    let propagation = applied.elapsed();
    eprintln!("global -> both zones: {propagation:?}");
    assert!(propagation < Duration::from_secs(5), "{propagation:?}");
    let on_zone = get(
        zone1.api_port,
        &format!("/meshes/default/meshtimeouts/{hashed}"),
    )
    .await;
    assert_eq!(on_zone["labels"]["kuma.io/origin"], "global", "{on_zone}");
    assert_eq!(on_zone["labels"]["kuma.io/display-name"], "slow-timeout");

    // A real Envoy in zone-1 gets its effect: a 3 s answer becomes a 504 after 1 s.
    let slow_app = app(Duration::from_secs(3)).await;
    let slow_in = free_port().await;
    let _slow = zone1
        .proxy(
            &dir,
            "slow-1",
            &dataplane("slow-1", "slow", slow_in, slow_app, &[]),
            &[],
        )
        .await;
    let web_app = app(Duration::ZERO).await;
    let (web_in, to_slow) = (free_port().await, free_port().await);
    let web = zone1
        .proxy(
            &dir,
            "web-1",
            &dataplane("web-1", "web", web_in, web_app, &[("slow", to_slow)]),
            &[],
        )
        .await;
    eventually("web reaches slow and times out", || async {
        status_of(to_slow).await == 504
    })
    .await;
    let started = Instant::now();
    assert_eq!(status_of(to_slow).await, 504);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "timed out after {took:?}"
    );

    // zone-1's proxies appear on global with their zone; one of zone-2 too.
    let other_app = app(Duration::ZERO).await;
    let other_in = free_port().await;
    let _other = zone2
        .proxy(
            &dir,
            "other-1",
            &dataplane("other-1", "other", other_in, other_app, &[]),
            &[],
        )
        .await;
    let web_on_global = hashed_name("default", "web-1", &["zone-1"]);
    let other_on_global = hashed_name("default", "other-1", &["zone-2"]);
    eventually("the zones' proxies on global", || async {
        let on_global = names(global.api_port, "/meshes/default/dataplanes").await;
        on_global.contains(&web_on_global) && on_global.contains(&other_on_global)
    })
    .await;
    let dp = get(
        global.api_port,
        &format!("/meshes/default/dataplanes/{web_on_global}"),
    )
    .await;
    assert_eq!(dp["labels"]["kuma.io/zone"], "zone-1", "{dp}");
    assert_eq!(dp["labels"]["kuma.io/origin"], "zone", "{dp}");
    assert_eq!(
        dp["networking"]["inbound"][0]["tags"]["kuma.io/zone"], "zone-1",
        "{dp}"
    );
    // `kumactl inspect dataplanes` on global lists both zones' proxies, online.
    let kumactl = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kumactl"))
            .arg("--config-file")
            .arg(dir.join("kumactl.yaml"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let address = format!("http://127.0.0.1:{}", global.api_port);
    kumactl(&[
        "config",
        "control-planes",
        "add",
        "--name",
        "global",
        "--address",
        &address,
        "--overwrite",
    ]);
    eventually(
        "kumactl inspect dataplanes on global shows both zones online",
        || async {
            let listed = kumactl(&["inspect", "dataplanes", "--mesh", "default"]);
            listed
                .lines()
                .any(|l| l.contains(&web_on_global) && l.contains("Online"))
                && listed
                    .lines()
                    .any(|l| l.contains(&other_on_global) && l.contains("Online"))
        },
    )
    .await;

    // Each side refuses what belongs to the other.
    let dp_body = json!({"type": "Dataplane", "mesh": "default", "name": "intruder",
        "networking": {"address": "10.0.0.9", "inbound": [{"port": 80, "tags": {"kuma.io/service": "x"}}]}});
    let (status, body) = send_json(
        global.api_port,
        "PUT",
        "/meshes/default/dataplanes/intruder",
        &dp_body.to_string(),
    )
    .await;
    assert_eq!(status, 405, "{body}");
    assert!(body.contains("dataplane resources"), "{body}");
    let (status, body) = send_json(
        zone1.api_port,
        "DELETE",
        &format!("/meshes/default/meshtimeouts/{hashed}"),
        "",
    )
    .await;
    assert_eq!(status, 405, "{body}");
    assert!(body.contains("kuma.io/origin: global"), "{body}");
    let (status, body) = send_json(
        zone1.api_port,
        "PUT",
        "/meshes/other",
        r#"{"type":"Mesh","name":"other"}"#,
    )
    .await;
    assert_eq!(status, 405, "{body}");

    // A zone's own policy carries its origin and syncs up to global.
    let local = json!({
        "type": "MeshTimeout", "mesh": "default", "name": "zone-local",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"},
            "default": {"idleTimeout": "20s"}}]}
    });
    let (status, body) = send_json(
        zone1.api_port,
        "PUT",
        "/meshes/default/meshtimeouts/zone-local",
        &local.to_string(),
    )
    .await;
    assert!((200..300).contains(&status), "{status} {body}");
    let stored = get(zone1.api_port, "/meshes/default/meshtimeouts/zone-local").await;
    assert_eq!(stored["labels"]["kuma.io/origin"], "zone", "{stored}");
    let local_on_global = hashed_name("default", "zone-local", &["zone-1"]);
    eventually("the zone's policy reaches global", || async {
        names(global.api_port, "/meshes/default/meshtimeouts")
            .await
            .contains(&local_on_global)
    })
    .await;
    // ...and global will not let it be changed there.
    let (status, body) = send_json(
        global.api_port,
        "DELETE",
        &format!("/meshes/default/meshtimeouts/{local_on_global}"),
        "",
    )
    .await;
    assert_eq!(status, 405, "{body}");
    assert!(body.contains("zone-1"), "{body}");

    // Deleting the policy on global removes it from both zones, and traffic feels it.
    let (status, body) = send_json(
        global.api_port,
        "DELETE",
        "/meshes/default/meshtimeouts/slow-timeout",
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for z in [&zone1, &zone2] {
        eventually("the policy leaves the zone", || async {
            !names(z.api_port, "/meshes/default/meshtimeouts")
                .await
                .contains(&hashed)
        })
        .await;
    }
    eventually("web reaches slow without the 1 s timeout", || async {
        status_of(to_slow).await == 200
    })
    .await;

    // Global knows both zones, online: the API, kumactl and the GUI say so.
    let zones = names(global.api_port, "/zones").await;
    assert_eq!(zones, ["zone-1", "zone-2"]);
    let listed = kumactl(&["get", "zones"]);
    assert!(
        listed.contains("zone-1") && listed.contains("zone-2"),
        "{listed}"
    );
    eventually(
        "kumactl inspect zones: both online, with their CP's version and store",
        || async {
            let inspected = kumactl(&["inspect", "zones"]);
            ["zone-1", "zone-2"].iter().all(|zone| {
                inspected.lines().any(|row| {
                    row.starts_with(zone)
                        && row.contains("Online")
                        && row.contains(env!("CARGO_PKG_VERSION"))
                        && row.contains("memory")
                })
            })
        },
    )
    .await;
    let url = format!("http://127.0.0.1:{}/gui/#/zones", global.api_port);
    let out = common::chromium(
        &[],
        &dir,
        &["--dump-dom", "--virtual-time-budget=10000"],
        &url,
    );
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(dom.contains(r#"data-ready="true""#), "{dom}");
    assert!(
        dom.contains(r##"href="#/zones""##),
        "the navigation links the zones: {dom}"
    );
    for seen in ["zone-1", "zone-2", "online"] {
        assert!(dom.contains(seen), "{seen:?} in {dom}");
    }
    drop(web);
}

/// Sends `signal` to the control plane's process.
fn signal(cp: &Standalone, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(cp.child.id().unwrap()).unwrap());
    nix::sys::signal::kill(pid, signal).unwrap();
}

/// Kills `cp` (SIGKILL) and waits for it to exit; returns the settings of its ports.
async fn kill(mut cp: Standalone) -> Vec<(String, String)> {
    let ports = cp.port_env();
    cp.child.start_kill().unwrap();
    cp.child.wait().await.unwrap();
    ports
}

/// Starts `binary` again on `ports` with `env`.
async fn relaunch(
    binary: &str,
    ports: Vec<(String, String)>,
    env: &[(String, String)],
) -> Standalone {
    let mut all = ports;
    all.extend(env.iter().cloned());
    Standalone::launch_binary(binary, &[], &[], &as_refs(&all), Stdio::null()).await
}

/// Whether global shows `zone` online (its last connection open).
async fn online(global: &Standalone, zone: &str) -> bool {
    let overview = get(global.api_port, &format!("/zones+insights/{zone}")).await;
    let subs = overview["zoneInsight"]["subscriptions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    subs.last()
        .is_some_and(|s| s.get("connectTime").is_some() && s.get("disconnectTime").is_none())
}

/// What must survive every failure: global's proxies and policies, each zone's policies.
async fn synced_state(global: &Standalone, zones: &[&Standalone]) -> Vec<Vec<String>> {
    let mut state = vec![
        names(global.api_port, "/meshes/default/dataplanes").await,
        names(global.api_port, "/meshes/default/meshtimeouts").await,
    ];
    for z in zones {
        state.push(names(z.api_port, "/meshes/default/meshtimeouts").await);
        state.push(names(z.api_port, "/meshes/default/dataplanes").await);
    }
    state
}

/// The sum of an Envoy's `*.update_rejected` counters.
async fn rejected_updates(admin: u16) -> u64 {
    kuma_testkit::envoy_stats(admin)
        .await
        .lines()
        .filter(|l| l.contains("update_rejected: "))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zones_and_global_survive_freezes_kills_and_restarts() {
    let dir = test_dir("multizone-failures");
    let path = |name: &str| dir.join(name).display().to_string();
    // Stores on disk and certificates kept across restarts, as with volumes in production.
    let global_env: Vec<(String, String)> = [
        ("KUMA_STORE_TYPE", "sqlite".to_string()),
        ("KUMA_STORE_SQLITE_PATH", path("global.db")),
        ("KUMA_GENERAL_WORK_DIR", path("global")),
        (
            "KUMA_MULTIZONE_GLOBAL_KDS_ZONE_INSIGHT_FLUSH_INTERVAL",
            "1s".into(),
        ),
        (
            "KUMA_MULTIZONE_GLOBAL_KDS_ZONE_HEALTH_CHECK_POLL_INTERVAL",
            "1s".into(),
        ),
        (
            "KUMA_MULTIZONE_GLOBAL_KDS_ZONE_HEALTH_CHECK_TIMEOUT",
            "3s".into(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut global = global(&as_refs(&global_env)).await;
    let zone_env = |name: &str, global: &Standalone| -> Vec<(String, String)> {
        vec![
            ("KUMA_MULTIZONE_ZONE_NAME".into(), name.into()),
            (
                "KUMA_MULTIZONE_ZONE_GLOBAL_ADDRESS".into(),
                format!("grpcs://127.0.0.1:{}", global.kds_port),
            ),
            (
                "KUMA_MULTIZONE_ZONE_KDS_ROOT_CA_FILE".into(),
                global.ca_file.clone(),
            ),
            ("KUMA_STORE_TYPE".into(), "sqlite".into()),
            ("KUMA_STORE_SQLITE_PATH".into(), path(&format!("{name}.db"))),
            ("KUMA_GENERAL_WORK_DIR".into(), path(name)),
        ]
    };
    let zone1_env = zone_env("zone-1", &global);
    let zone2_env = zone_env("zone-2", &global);
    let mut zone1 =
        Standalone::launch_binary("zone", &[], &[], &as_refs(&zone1_env), Stdio::null()).await;
    let zone2 =
        Standalone::launch_binary("zone", &[], &[], &as_refs(&zone2_env), Stdio::null()).await;

    // A policy from global, and traffic through Envoys in zone-1.
    let policy = json!({
        "type": "MeshTimeout", "mesh": "default", "name": "idle",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"},
            "default": {"idleTimeout": "30s"}}]}
    });
    let (status, body) = send_json(
        global.api_port,
        "PUT",
        "/meshes/default/meshtimeouts/idle",
        &policy.to_string(),
    )
    .await;
    assert!((200..300).contains(&status), "{status} {body}");
    let hashed = hashed_name("default", "idle", &[]);
    for z in [&zone1, &zone2] {
        eventually("the policy reaches the zone", || async {
            names(z.api_port, "/meshes/default/meshtimeouts")
                .await
                .contains(&hashed)
        })
        .await;
    }
    let backend_app = app(Duration::ZERO).await;
    let backend_in = free_port().await;
    let backend = zone1
        .proxy(
            &dir,
            "backend-1",
            &dataplane("backend-1", "backend", backend_in, backend_app, &[]),
            &[],
        )
        .await;
    let web_app = app(Duration::ZERO).await;
    let (web_in, to_backend) = (free_port().await, free_port().await);
    let web = zone1
        .proxy(
            &dir,
            "web-1",
            &dataplane("web-1", "web", web_in, web_app, &[("backend", to_backend)]),
            &[],
        )
        .await;
    eventually("web reaches backend", || async {
        status_of(to_backend).await == 200
    })
    .await;
    let web_on_global = hashed_name("default", "web-1", &["zone-1"]);
    eventually("zone-1's proxies on global, both zones online", || async {
        names(global.api_port, "/meshes/default/dataplanes")
            .await
            .len()
            == 2
            && online(&global, "zone-1").await
            && online(&global, "zone-2").await
    })
    .await;
    assert!(
        names(global.api_port, "/meshes/default/dataplanes")
            .await
            .contains(&web_on_global)
    );
    let before = synced_state(&global, &[&zone1, &zone2]).await;
    let admins = [web.admin_port, backend.admin_port];

    // Steady traffic through web's Envoy for the whole scenario.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut sent, mut failed) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if status_of(to_backend).await != 200 {
                    failed += 1;
                }
                sent += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (sent, failed)
        })
    };

    // A frozen zone stops pinging: the health check takes it offline; thawed, it reconnects.
    signal(&zone2, nix::sys::signal::Signal::SIGSTOP);
    eventually("the frozen zone is offline", || async {
        !online(&global, "zone-2").await
    })
    .await;
    signal(&zone2, nix::sys::signal::Signal::SIGCONT);
    eventually("the thawed zone is online again", || async {
        online(&global, "zone-2").await
    })
    .await;

    // kill -9 a zone: offline; restarted, it resyncs without duplicates.
    let ports = kill(zone1).await;
    eventually("the killed zone is offline", || async {
        !online(&global, "zone-1").await
    })
    .await;
    zone1 = relaunch("zone", ports, &zone1_env).await;
    eventually("the restarted zone is online", || async {
        online(&global, "zone-1").await
    })
    .await;
    eventually(
        "after the zone's restart, nothing lost or duplicated",
        || async { synced_state(&global, &[&zone1, &zone2]).await == before },
    )
    .await;

    // Restart global: the zones reconnect and nothing is lost or duplicated.
    let ports = kill(global).await;
    global = relaunch("global", ports, &global_env).await;
    eventually("both zones reconnect to the restarted global", || async {
        online(&global, "zone-1").await && online(&global, "zone-2").await
    })
    .await;
    eventually(
        "after global's restart, nothing lost or duplicated",
        || async { synced_state(&global, &[&zone1, &zone2]).await == before },
    )
    .await;
    // Still in step: a new policy reaches both zones.
    let (status, body) = send_json(
        global.api_port,
        "PUT",
        "/meshes/default/meshtimeouts/after",
        &policy.to_string().replace("\"idle\"", "\"after\""),
    )
    .await;
    assert!((200..300).contains(&status), "{status} {body}");
    let after = hashed_name("default", "after", &[]);
    for z in [&zone1, &zone2] {
        eventually("a new policy reaches the zone", || async {
            names(z.api_port, "/meshes/default/meshtimeouts")
                .await
                .contains(&after)
        })
        .await;
    }

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, failed) = traffic.await.unwrap();
    assert!(sent > 50, "{sent} requests");
    assert_eq!(failed, 0, "{failed} of {sent} requests failed");
    for admin in admins {
        assert_eq!(
            rejected_updates(admin).await,
            0,
            "Envoy on {admin} rejected nothing"
        );
    }
    drop(zone2);
}

/// `env` as the string pairs the launcher takes.
fn as_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// The instance id a control plane reports (`GET /`).
async fn instance_id(cp: &Standalone) -> String {
    get(cp.api_port, "/").await["instanceId"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Global's record of `zone`'s connections: (how many, the last one's zone instance, online).
async fn connections(global: &Standalone, zone: &str) -> (usize, String, bool) {
    let overview = get(global.api_port, &format!("/zones+insights/{zone}")).await;
    let subs = overview["zoneInsight"]["subscriptions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let last = subs.last().cloned().unwrap_or_default();
    (
        subs.len(),
        last["zoneInstanceId"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        last.get("connectTime").is_some() && last.get("disconnectTime").is_none(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_zone_leader_syncs_and_the_other_instance_takes_over() {
    let dir = test_dir("multizone-leader");
    let global = global(&[(
        "KUMA_MULTIZONE_GLOBAL_KDS_ZONE_INSIGHT_FLUSH_INTERVAL",
        "1s",
    )])
    .await;
    let cluster = kuma_testkit::PgCluster::start().await;
    let mut env = common::pg_env(&cluster);
    env.extend([
        ("KUMA_MULTIZONE_ZONE_NAME".to_string(), "zone-1".to_string()),
        (
            "KUMA_MULTIZONE_ZONE_GLOBAL_ADDRESS".into(),
            format!("grpcs://127.0.0.1:{}", global.kds_port),
        ),
        (
            "KUMA_MULTIZONE_ZONE_KDS_ROOT_CA_FILE".into(),
            global.ca_file.clone(),
        ),
    ]);
    let migrate = tokio::process::Command::new(env!("CARGO_BIN_EXE_zone"))
        .args(["migrate", "up"])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .await
        .unwrap();
    assert!(migrate.status.success(), "{migrate:?}");
    let instance = |name: &str| {
        let mut env = env.clone();
        env.push((
            "KUMA_GENERAL_WORK_DIR".into(),
            dir.join(name).display().to_string(),
        ));
        env
    };
    let a_env = instance("a");
    let b_env = instance("b");
    let a = Standalone::launch_binary("zone", &[], &[], &as_refs(&a_env), Stdio::null()).await;
    let b = Standalone::launch_binary("zone", &[], &[], &as_refs(&b_env), Stdio::null()).await;
    eventually("one instance leads", || async {
        let (la, lb) = (
            common::leads(a.diagnostics_port).await,
            common::leads(b.diagnostics_port).await,
        );
        matches!(
            (la, lb),
            (Some(true), Some(false)) | (Some(false), Some(true))
        )
    })
    .await;
    let (leader, follower) = if common::leads(a.diagnostics_port).await == Some(true) {
        (a, b)
    } else {
        (b, a)
    };
    let (leader_id, follower_id) = (instance_id(&leader).await, instance_id(&follower).await);
    assert_ne!(leader_id, follower_id);
    eventually("global sees the leader's connection", || async {
        let (_, id, online) = connections(&global, "zone-1").await;
        online && id == leader_id
    })
    .await;
    // Only the leader holds the streams: the connection stays the leader's, with no
    // replacement back and forth.
    let settled = connections(&global, "zone-1").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(connections(&global, "zone-1").await, settled);
    // Global's resources reach the zone's store (both instances read it).
    let hashed = hashed_name("default", "t", &[]);
    let policy = json!({"type": "MeshTimeout", "mesh": "default", "name": "t",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"},
            "default": {"idleTimeout": "30s"}}]}});
    let (status, body) = send_json(
        global.api_port,
        "PUT",
        "/meshes/default/meshtimeouts/t",
        &policy.to_string(),
    )
    .await;
    assert!((200..300).contains(&status), "{status} {body}");
    eventually("the policy reaches the zone's store", || async {
        names(follower.api_port, "/meshes/default/meshtimeouts")
            .await
            .contains(&hashed)
    })
    .await;

    // The leader dies: the other instance takes over the connection within a few seconds.
    let killed = Instant::now();
    kill(leader).await;
    eventually("the other instance connects to global", || async {
        let (_, id, online) = connections(&global, "zone-1").await;
        online && id == follower_id
    })
    .await;
    let took = killed.elapsed();
    eprintln!("zone leader failover, kill to connected: {took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(common::leads(follower.diagnostics_port).await, Some(true));
    let second = hashed_name("default", "t2", &[]);
    let (status, body) = send_json(
        global.api_port,
        "PUT",
        "/meshes/default/meshtimeouts/t2",
        &policy.to_string().replace("\"t\"", "\"t2\""),
    )
    .await;
    assert!((200..300).contains(&status), "{status} {body}");
    eventually("the new leader syncs", || async {
        names(follower.api_port, "/meshes/default/meshtimeouts")
            .await
            .contains(&second)
    })
    .await;
}
