//! What each side of KDS sends: the types (from the registry's KDS flags) and, of those, the
//! resources, as Kuma 2.14 decides.

use kuma_core::model::common::ZONE_TAG;
use kuma_core::resource::{KdsFlags, Labels, Resource, ResourceType};
use kuma_core::rules::{ORIGIN_LABEL, POLICY_ROLE_LABEL};

/// `kuma.io/kds-sync`: `disabled` keeps a resource on its control plane.
pub const KDS_SYNC_LABEL: &str = "kuma.io/kds-sync";

/// The one config global shares with zones (the cluster id).
const SYNCED_CONFIGS: &[&str] = &["kuma-cluster-id"];
/// Global secrets that belong to the global control plane alone.
const PRIVATE_GLOBAL_SECRETS: &[&str] = &[
    "envoy-admin-ca",
    "admin-user-token",
    "inter-cp-ca",
    "user-token-revocations",
];
/// Prefix of the user-token signing keys, which stay on global.
const USER_TOKEN_SIGNING_KEY_PREFIX: &str = "user-token-signing-key";

/// The types global sends to zones, in registry order.
pub fn global_to_zone_types() -> impl Iterator<Item = ResourceType> {
    ResourceType::ALL
        .iter()
        .copied()
        .filter(|t| t.kds_flags().sent_to_zones())
}

/// The types zones send to global, in registry order.
pub fn zone_to_global_types() -> impl Iterator<Item = ResourceType> {
    ResourceType::ALL
        .iter()
        .copied()
        .filter(|t| t.kds_flags().sent_to_global())
}

/// Whether the label turns KDS off for the resource.
fn sync_disabled(labels: &Labels) -> bool {
    labels.get(KDS_SYNC_LABEL).map(String::as_str) == Some("disabled")
}

/// Where the resource says it was created, when it says.
fn origin(labels: &Labels) -> Option<&str> {
    labels
        .get(ORIGIN_LABEL)
        .map(String::as_str)
        .filter(|o| !o.is_empty())
}

/// Whether global sends `resource` to zone `zone`. `zone_enabled` tells whether a zone (by
/// name) is enabled: a disabled zone's resources do not reach the other zones (a Zone resource
/// with `enabled: false`; an unknown zone counts as enabled), as in Kuma.
pub fn global_sends(resource: &Resource, zone: &str, zone_enabled: impl Fn(&str) -> bool) -> bool {
    let labels = &resource.meta.labels;
    let rtype = resource.spec.rtype();
    if sync_disabled(labels) {
        return false;
    }
    match rtype {
        ResourceType::Config if !SYNCED_CONFIGS.contains(&resource.meta.name.as_str()) => {
            return false;
        }
        ResourceType::GlobalSecret
            if PRIVATE_GLOBAL_SECRETS.contains(&resource.meta.name.as_str())
                || resource
                    .meta
                    .name
                    .starts_with(USER_TOKEN_SIGNING_KEY_PREFIX) =>
        {
            return false;
        }
        _ => {}
    }
    let flags = rtype.kds_flags();
    let from_global = origin(labels).is_none_or(|o| o == "global");
    if from_global {
        return flags.has(KdsFlags::GLOBAL_TO_ZONES);
    }
    if !flags.has(KdsFlags::SYNCED_ACROSS_ZONES) {
        return false;
    }
    // A zone's policy reaches the other zones only when it is a producer policy.
    if rtype.is_policy() && labels.get(POLICY_ROLE_LABEL).map(String::as_str) != Some("producer") {
        return false;
    }
    // Never back to the zone it came from.
    let source = labels
        .get(ZONE_TAG)
        .filter(|z| !z.is_empty())
        .cloned()
        .unwrap_or_else(|| {
            let name = &resource.meta.name;
            name.split('.').next().unwrap_or(name).to_string()
        });
    source != zone && zone_enabled(&source)
}

/// Whether a zone sends `resource` to global: the types zones provide, created on the zone
/// (not received from global), unless KDS is turned off for it.
pub fn zone_sends(resource: &Resource) -> bool {
    let labels = &resource.meta.labels;
    resource.spec.rtype().kds_flags().sent_to_global()
        && !sync_disabled(labels)
        && origin(labels).is_none_or(|o| o == "zone")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kuma_core::resource::parse_yaml;

    fn resource(yaml: &str) -> Resource {
        parse_yaml(yaml).expect("valid resource")
    }

    fn timeout(labels: &str) -> Resource {
        resource(&format!(
            "type: MeshTimeout\nmesh: default\nname: t\nlabels: {labels}\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n  - targetRef:\n      kind: Mesh\n    default:\n      idleTimeout: 1s\n"
        ))
    }

    #[test]
    fn directions_follow_kumas_flags() {
        let to_zone: Vec<&str> = global_to_zone_types().map(ResourceType::name).collect();
        let to_global: Vec<&str> = zone_to_global_types().map(ResourceType::name).collect();
        for t in [
            "Mesh",
            "Secret",
            "GlobalSecret",
            "Config",
            "MeshGateway",
            "MeshTimeout",
        ] {
            assert!(to_zone.contains(&t), "{t} goes to zones");
        }
        // ZoneIngress goes to zones only as a zone's, shared with the others.
        assert!(to_zone.contains(&"ZoneIngress"));
        for t in [
            "Dataplane",
            "DataplaneInsight",
            "Zone",
            "ZoneInsight",
            "ZoneEgress",
        ] {
            assert!(!to_zone.contains(&t), "{t} stays off zones");
        }
        for t in [
            "Dataplane",
            "DataplaneInsight",
            "ZoneIngress",
            "ZoneEgress",
            "MeshTimeout",
        ] {
            assert!(to_global.contains(&t), "{t} goes to global");
        }
        for t in [
            "Mesh",
            "Secret",
            "GlobalSecret",
            "Config",
            "Zone",
            "ZoneInsight",
        ] {
            assert!(!to_global.contains(&t), "{t} stays off global");
        }
    }

    #[test]
    fn global_sends_its_own_and_zones_producer_policies_to_other_zones() {
        let everyone = |_: &str| true;
        assert!(global_sends(&timeout("{}"), "zone-1", everyone));
        assert!(global_sends(
            &timeout("{kuma.io/origin: global}"),
            "zone-1",
            everyone
        ));
        assert!(!global_sends(
            &timeout("{kuma.io/kds-sync: disabled}"),
            "zone-1",
            everyone
        ));
        // A zone's policy: only a producer one, never to its own zone, never from a disabled zone.
        let zone_policy = "{kuma.io/origin: zone, kuma.io/zone: zone-1}";
        assert!(!global_sends(&timeout(zone_policy), "zone-2", everyone));
        let producer =
            "{kuma.io/origin: zone, kuma.io/zone: zone-1, kuma.io/policy-role: producer}";
        assert!(global_sends(&timeout(producer), "zone-2", everyone));
        assert!(!global_sends(&timeout(producer), "zone-1", everyone));
        assert!(!global_sends(&timeout(producer), "zone-2", |z| z != "zone-1"));
    }

    #[test]
    fn private_configs_and_global_secrets_stay_on_global() {
        let secret =
            |name: &str| resource(&format!("type: GlobalSecret\nname: {name}\ndata: YWJj\n"));
        let everyone = |_: &str| true;
        assert!(global_sends(&secret("my-secret"), "zone-1", everyone));
        assert!(!global_sends(
            &secret("admin-user-token"),
            "zone-1",
            everyone
        ));
        assert!(!global_sends(
            &secret("user-token-signing-key-1"),
            "zone-1",
            everyone
        ));
        assert!(!global_sends(&secret("inter-cp-ca"), "zone-1", everyone));
    }

    #[test]
    fn zones_send_what_they_created() {
        let dp = resource(
            "type: Dataplane\nmesh: default\nname: web-1\nnetworking:\n  address: 10.0.0.1\n  inbound:\n  - port: 80\n    tags:\n      kuma.io/service: web\n",
        );
        assert!(zone_sends(&dp));
        assert!(zone_sends(&timeout("{kuma.io/origin: zone}")));
        assert!(!zone_sends(&timeout("{kuma.io/origin: global}")));
        assert!(!zone_sends(&timeout(
            "{kuma.io/origin: zone, kuma.io/kds-sync: disabled}"
        )));
        let mesh = resource("type: Mesh\nname: default\n");
        assert!(!zone_sends(&mesh), "meshes come from global");
    }
}
