//! VIP allocation: the invariants of `allocate` under property tests, and `CidrVipAllocator`
//! through a real store (Kuma's JSON, stability across instances, no duplicates under races).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;
use kuma_core::manager::{ManagerOptions, ResourceManager};
use kuma_core::model::system::ConfigSpec;
use kuma_core::resource::{ResourceKey, ResourceType};
use kuma_dns::vips::{
    CidrVipAllocator, HostnameEntry, OutboundEntry, VipError, VipTable, VipTables, allocate,
};
use proptest::prelude::*;

fn wanted(services: &BTreeSet<String>) -> BTreeMap<HostnameEntry, Vec<OutboundEntry>> {
    services
        .iter()
        .map(|s| (HostnameEntry::service(s), vec![OutboundEntry::service(s)]))
        .collect()
}

fn ips(table: &VipTable) -> Vec<Ipv4Addr> {
    table
        .values()
        .map(|vo| vo.address.parse().unwrap())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Whatever the history, no two hostnames share a VIP, every VIP is a usable address of
    /// the range, a hostname keeps its VIP while it stays, and exactly the overflow goes
    /// without.
    #[test]
    fn allocation_invariants(
        prefix in 24u8..=29,
        rounds in prop::collection::vec(prop::collection::btree_set("[a-z]{1,3}", 0..40), 1..6),
    ) {
        let cidr: Ipv4Net = format!("10.1.0.0/{prefix}").parse().unwrap();
        let capacity = (1usize << (32 - prefix)) - 2;
        let mut table = VipTable::new();
        for services in rounds {
            let (next, unallocated) = allocate(cidr, &table, &wanted(&services));
            let addresses = ips(&next);
            let distinct: BTreeSet<_> = addresses.iter().collect();
            prop_assert_eq!(distinct.len(), addresses.len(), "a VIP given twice");
            for ip in &addresses {
                prop_assert!(cidr.contains(ip) && *ip != cidr.network() && *ip != cidr.broadcast());
            }
            for (h, vo) in &next {
                prop_assert!(services.contains(&h.name), "only wanted hostnames");
                if let Some(old) = table.get(h) {
                    prop_assert_eq!(&old.address, &vo.address, "a VIP moved");
                }
            }
            prop_assert_eq!(next.len(), services.len().min(capacity));
            prop_assert_eq!(unallocated.len(), services.len().saturating_sub(capacity));
            table = next;
        }
    }
}

#[test]
fn first_vips_and_kumas_json() {
    let cidr: Ipv4Net = "240.0.0.0/4".parse().unwrap();
    let services = BTreeSet::from(["backend".to_string(), "web".to_string()]);
    let (table, unallocated) = allocate(cidr, &VipTable::new(), &wanted(&services));
    assert!(unallocated.is_empty());
    assert_eq!(
        ips(&table),
        [
            "240.0.0.1".parse::<Ipv4Addr>().unwrap(),
            "240.0.0.2".parse().unwrap()
        ]
    );
    let json: serde_json::Value = serde_json::to_value(&table).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "0:backend": {"address": "240.0.0.1", "outbounds": [
                {"Port": 0, "TagSet": {"kuma.io/service": "backend"}, "Origin": "service"}]},
            "0:web": {"address": "240.0.0.2", "outbounds": [
                {"Port": 0, "TagSet": {"kuma.io/service": "web"}, "Origin": "service"}]},
        })
    );
    // A table Kuma wrote reads back.
    let back: VipTable = serde_json::from_value(json).unwrap();
    assert_eq!(back, table);
}

/// VIP tables kept through `m`, allocated from `cidr`.
fn cidr_tables(m: &ResourceManager, cidr: &str) -> Result<VipTables, kuma_dns::vips::InvalidCidr> {
    let allocator = CidrVipAllocator::new(cidr)?;
    Ok(VipTables::new(m.clone(), Arc::new(allocator)))
}

fn manager() -> ResourceManager {
    ResourceManager::new(
        Arc::new(kuma_store::MemoryStore::new()),
        ManagerOptions::default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_keeps_vips_stable_and_unique() {
    let m = manager();
    let a = cidr_tables(&m, "240.0.0.0/4").unwrap();
    let services = |names: &[&str]| wanted(&names.iter().map(|s| s.to_string()).collect());
    let first = a
        .sync("default", &services(&["backend", "web"]))
        .await
        .unwrap();
    let stored = m
        .get(&ResourceKey::global(
            ResourceType::Config,
            "kuma-default-dns-vips",
        ))
        .await
        .unwrap();
    let spec = stored.spec_as::<ConfigSpec>().unwrap();
    assert!(
        spec.config
            .contains(r#""0:backend":{"address":"240.0.0.1""#),
        "{}",
        spec.config
    );

    // Another instance (a restart) sees the same VIPs; a removed service frees its VIP, which
    // a new one may then take, while the others keep theirs.
    let b = cidr_tables(&m, "240.0.0.0/4").unwrap();
    assert_eq!(b.get("default").await.unwrap(), first);
    let second = b.sync("default", &services(&["web", "db"])).await.unwrap();
    assert_eq!(
        second[&HostnameEntry::service("web")],
        first[&HostnameEntry::service("web")]
    );
    assert_eq!(second[&HostnameEntry::service("db")].address, "240.0.0.1");
    assert!(!second.contains_key(&HostnameEntry::service("backend")));

    // Meshes are separate ranges: the same VIP may exist in both.
    let other = a.sync("other", &services(&["web"])).await.unwrap();
    assert_eq!(other[&HostnameEntry::service("web")].address, "240.0.0.1");

    // Instances racing over one mesh never give one VIP to two services.
    let names: Vec<String> = (0..40).map(|i| format!("svc-{i}")).collect();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let allocator = cidr_tables(&m, "240.0.0.0/4").unwrap();
        let mine: BTreeSet<String> = names.iter().take(20 + i * 2).cloned().collect();
        tasks.push(tokio::spawn(async move {
            allocator.sync("race", &wanted(&mine)).await
        }));
    }
    let mut succeeded = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => succeeded += 1,
            Err(VipError::Contended(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(succeeded >= 1, "some instance's allocation went through");
    let table = a.get("race").await.unwrap();
    // Every instance wanted the first 20 services: whoever wrote last, they have VIPs.
    for name in names.iter().take(20) {
        assert!(
            table.contains_key(&HostnameEntry::service(name)),
            "{name} has a VIP"
        );
    }
    let addresses = ips(&table);
    assert_eq!(
        addresses.iter().collect::<BTreeSet<_>>().len(),
        addresses.len(),
        "no VIP is given to two services"
    );

    // Exhaustion is an error naming what got no VIP; the rest is allocated and stored.
    let tiny = cidr_tables(&m, "10.0.0.0/30").unwrap();
    let e = tiny
        .sync("tiny", &services(&["a", "b", "c"]))
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "no free VIP left in 10.0.0.0/30 for 0:c");
    assert_eq!(tiny.get("tiny").await.unwrap().len(), 2);
    assert!(cidr_tables(&m, "fd00::/8").is_err());
}

/// The services that get VIPs: every served inbound's, and those of the mesh that another
/// zone's ZoneIngress makes available.
#[test]
fn services_come_from_inbounds_and_remote_ingresses() {
    use kuma_core::resource::parse_yaml;
    let dataplane = parse_yaml(
        "type: Dataplane\nmesh: default\nname: dp\nnetworking:\n  address: 10.0.0.1\n  inbound:\n  - port: 8080\n    tags:\n      kuma.io/service: backend\n  - port: 8081\n    state: Ignored\n    tags:\n      kuma.io/service: ignored\n  - port: 49151\n    tags:\n      kuma.io/service: reserved\n",
    )
    .unwrap();
    let ingress = |zone: &str, services: &[(&str, &str)]| {
        let list: String = services
            .iter()
            .map(|(mesh, s)| format!("- mesh: {mesh}\n  tags:\n    kuma.io/service: {s}\n"))
            .collect();
        parse_yaml(&format!(
            "type: ZoneIngress\nname: zi-{zone}\nzone: {zone}\nnetworking:\n  port: 10001\navailableServices:\n{list}"
        ))
        .unwrap()
    };
    let remote = ingress("east", &[("default", "payments"), ("other", "ledger")]);
    let local = ingress("west", &[("default", "west-only")]);
    let got: Vec<String> =
        kuma_dns::vips::service_hostnames("default", "west", [&dataplane], [&remote, &local])
            .into_keys()
            .map(|h| h.name)
            .collect();
    assert_eq!(got, ["backend", "payments"]);
}

#[test]
fn external_services_get_their_port_and_a_host_entry_by_name() {
    use kuma_core::resource::parse_yaml;
    use kuma_dns::vips::HostnameKind;
    let es = |name: &str, address: &str, extra: &str| {
        parse_yaml(&format!(
            "type: ExternalService\nmesh: default\nname: {name}\nnetworking:\n  address: \"{address}\"\n{extra}tags:\n  kuma.io/service: {name}\n"
        ))
        .unwrap()
    };
    let all = [
        es("httpbin", "HttpBin.org:443", ""),
        es("by-ip", "10.1.2.3:80", ""),
        es(
            "hidden",
            "hidden.example:8080",
            "  disableHostDNSEntry: true\n",
        ),
    ];
    let got = kuma_dns::vips::external_service_hostnames(&all);
    let entries: Vec<(HostnameKind, &str, u32)> = got
        .iter()
        .map(|(h, outbounds)| (h.kind, h.name.as_str(), outbounds[0].port))
        .collect();
    assert_eq!(
        entries,
        [
            (HostnameKind::Service, "by-ip", 80),
            (HostnameKind::Service, "hidden", 8080),
            (HostnameKind::Service, "httpbin", 443),
            (HostnameKind::Host, "httpbin.org", 443),
        ]
    );
}
