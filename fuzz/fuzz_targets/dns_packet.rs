//! DNS queries (anonymous, UDP and TCP) against a zone with VIPs in two meshes.
#![no_main]

use std::sync::OnceLock;

use kuma_dns::vips::service_table;
use kuma_dns::zone::{Transport, Zone};
use libfuzzer_sys::fuzz_target;

fn zone() -> &'static Zone {
    static ZONE: OnceLock<Zone> = OnceLock::new();
    ZONE.get_or_init(|| {
        let tables = [
            service_table([("backend", "240.0.0.1"), ("web_kuma-demo_svc_80", "240.0.0.2")]),
            service_table([("db", "240.0.0.3")]),
        ];
        Zone::new("mesh", 60).with_tables(&tables)
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = zone().answer(data, Transport::Udp);
    let _ = zone().answer(data, Transport::Tcp);
});
