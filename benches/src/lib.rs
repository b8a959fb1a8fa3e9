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
