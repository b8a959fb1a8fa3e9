//! Shared fixtures for the benchmarks: realistic Dataplanes in bulk.

use kuma_core::model::mesh::MeshSpec;
use kuma_core::resource::{Resource, parse_yaml};

/// Universal YAML of Dataplane number `i` in `mesh`: two inbounds, an outbound, admin port.
pub fn dataplane_yaml(mesh: &str, i: usize) -> String {
    let svc = i % 500;
    format!(
        "type: Dataplane\nmesh: {mesh}\nname: dp-{i:06}\nlabels:\n  team: team-{team}\nnetworking:\n  address: 10.{a}.{b}.{c}\n  inbound:\n  - port: 8080\n    servicePort: 18080\n    tags:\n      kuma.io/service: svc-{svc}\n      kuma.io/protocol: http\n      version: v{v}\n  - port: 9090\n    tags:\n      kuma.io/service: svc-{svc}-metrics\n  outbound:\n  - port: 33033\n    tags:\n      kuma.io/service: redis\n  admin:\n    port: 9901\n",
        team = i % 20,
        a = (i >> 16) & 255,
        b = (i >> 8) & 255,
        c = i & 255,
        v = i % 3,
    )
}

/// `n` Dataplanes as one multi-document YAML stream.
pub fn dataplane_stream(n: usize) -> String {
    (0..n)
        .map(|i| dataplane_yaml("default", i))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Dataplane `i` of `mesh` as a resource.
pub fn dataplane(mesh: &str, i: usize) -> Resource {
    parse_yaml(&dataplane_yaml(mesh, i)).expect("fixture parses")
}

/// A mesh named `name`.
pub fn mesh(name: &str) -> Resource {
    Resource::new("", name, MeshSpec::default())
}

/// This process's resources, as the scale harnesses measure them.
pub mod process {
    use std::time::Duration;

    /// This process's resident set, in KiB.
    pub fn rss_kib() -> u64 {
        status_kib("VmRSS:")
    }

    /// This process's largest resident set so far, in KiB.
    pub fn peak_rss_kib() -> u64 {
        status_kib("VmHWM:")
    }

    /// The bytes this process's allocator has handed out and not had back.
    pub fn heap_bytes() -> u64 {
        // Statistics are refreshed when the epoch advances.
        let _ = tikv_jemalloc_ctl::epoch::advance();
        tikv_jemalloc_ctl::stats::allocated::read().map_or(0, |b| b as u64)
    }

    /// A `kB` field of /proc/self/status.
    fn status_kib(field: &str) -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(field))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }

    /// User + system CPU time of this process.
    pub fn cpu_time() -> Duration {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
            + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
    }
}
