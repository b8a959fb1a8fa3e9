//! Who may write what in a multi-zone deployment, as Kuma 2.14 decides it.
//!
//! - On global, the kinds zones provide (Dataplane, ZoneIngress, ZoneEgress, insights) are
//!   read-only, and so is every resource that came from a zone.
//! - On a zone connected to global (federated), the kinds only global provides (Mesh, ...) are
//!   read-only, and so is every resource that came from global.
//! - On any zone, what is written there is labelled as the zone's own (`kuma.io/origin: zone`,
//!   `kuma.io/zone: <name>`, `kuma.io/env: universal`), so that it syncs up.

use kuma_core::model::common::ZONE_TAG;
use kuma_core::resource::{KdsFlags, Resource, ResourceType};
use kuma_core::rules::ORIGIN_LABEL;
use kuma_core::validation::{Path, ValidationError};

use crate::error::ApiError;

/// Kuma's `kuma.io/env` label.
const ENV_LABEL: &str = "kuma.io/env";

/// The API's place in a multi-zone deployment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Federation {
    /// Standalone: everything is writable here.
    #[default]
    Standalone,
    /// The global control plane.
    Global,
    /// A zone control plane named so; `federated` when it syncs with global.
    Zone {
        /// The zone's name.
        name: String,
        /// Whether it is connected to global (`multizone.zone.globalAddress` is set).
        federated: bool,
    },
}

const GLOBAL_READ_ONLY: &str = "On global control plane you can not modify dataplane resources with 'kumactl apply' or via the HTTP API. You can still use 'kumactl' or the HTTP API to modify them on the zone control plane.";
const ZONE_READ_ONLY: &str = "On zone control plane you can only modify zone resources with 'kumactl apply' or via the HTTP API. You can still use 'kumactl' or the HTTP API to modify the rest of the resource on the global control plane.";

impl Federation {
    /// Whether resources of `rtype` may be written through this API at all.
    pub fn check_type(&self, rtype: ResourceType) -> Result<(), ApiError> {
        let flags = rtype.kds_flags();
        match self {
            Federation::Global if !flags.has(KdsFlags::PROVIDED_BY_GLOBAL) => {
                Err(ApiError::method_not_allowed(GLOBAL_READ_ONLY))
            }
            Federation::Zone {
                federated: true, ..
            } if !flags.has(KdsFlags::PROVIDED_BY_ZONE) => {
                Err(ApiError::method_not_allowed(ZONE_READ_ONLY))
            }
            _ => Ok(()),
        }
    }

    /// Whether the stored resource `existing` may be changed or deleted here: not when it came
    /// from the other side.
    pub fn check_existing(&self, existing: &Resource) -> Result<(), ApiError> {
        let origin = existing
            .meta
            .labels
            .get(ORIGIN_LABEL)
            .map(String::as_str)
            .unwrap_or("");
        let what = format!("{} {:?}", existing.spec.rtype(), existing.meta.name);
        match self {
            Federation::Global if origin == "zone" => {
                let zone = existing
                    .meta
                    .labels
                    .get(ZONE_TAG)
                    .map(String::as_str)
                    .unwrap_or("its zone");
                Err(ApiError::method_not_allowed(format!(
                    "{what} came from zone {zone} (kuma.io/origin: zone): change it on that zone's control plane"
                )))
            }
            Federation::Zone {
                federated: true, ..
            } if origin == "global" => Err(ApiError::method_not_allowed(format!(
                "{what} came from the global control plane (kuma.io/origin: global): change it on global"
            ))),
            _ => Ok(()),
        }
    }

    /// Checks the origin label a write carries and stamps the labels a zone's own resources
    /// carry.
    pub fn label(&self, resource: &mut Resource, title: &str) -> Result<(), ApiError> {
        let rtype = resource.spec.rtype();
        let labels = &mut resource.meta.labels;
        let wrong = |expected: &str| {
            let mut err = ValidationError::new();
            err.add(
                &Path::at("labels").key(ORIGIN_LABEL),
                format!("the origin label must be set to '{expected}'"),
            );
            ApiError::invalid(title, &err)
        };
        let origin = labels.get(ORIGIN_LABEL).cloned();
        match self {
            Federation::Standalone => {}
            Federation::Global => {
                if origin.as_deref().is_some_and(|o| o != "global") {
                    return Err(wrong("global"));
                }
            }
            Federation::Zone { name, federated } => {
                if *federated && origin.as_deref().is_some_and(|o| o != "zone") {
                    return Err(wrong("zone"));
                }
                if rtype.kds_flags().has(KdsFlags::PROVIDED_BY_ZONE) {
                    labels
                        .entry(ORIGIN_LABEL.into())
                        .or_insert_with(|| "zone".into());
                    if labels.get(ORIGIN_LABEL).map(String::as_str) != Some("global") {
                        if let Some(zone) = labels.get(ZONE_TAG)
                            && zone != name
                        {
                            let mut err = ValidationError::new();
                            err.add(
                                &Path::at("labels").key(ZONE_TAG),
                                format!("{ZONE_TAG} label should have {name} value"),
                            );
                            return Err(ApiError::invalid(title, &err));
                        }
                        labels.insert(ZONE_TAG.into(), name.clone());
                        labels
                            .entry(ENV_LABEL.into())
                            .or_insert_with(|| "universal".into());
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kuma_core::resource::parse_yaml;

    fn policy(labels: &str) -> Resource {
        parse_yaml(&format!(
            "type: MeshTimeout\nmesh: default\nname: t\nlabels: {labels}\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n  - targetRef:\n      kind: Mesh\n    default:\n      idleTimeout: 1s\n"
        ))
        .expect("valid")
    }

    #[test]
    fn global_refuses_zone_kinds_and_zone_resources() {
        let global = Federation::Global;
        assert!(global.check_type(ResourceType::Dataplane).is_err());
        assert!(global.check_type(ResourceType::MeshTimeout).is_ok());
        assert!(global.check_type(ResourceType::Mesh).is_ok());
        let from_zone = policy("{kuma.io/origin: zone, kuma.io/zone: zone-1}");
        let err = global.check_existing(&from_zone).expect_err("refused");
        assert!(err.to_string().contains("zone-1"), "{err}");
        let mut p = policy("{kuma.io/origin: zone}");
        assert!(global.label(&mut p, "t").is_err());
        let mut p = policy("{}");
        global.label(&mut p, "t").expect("no origin is global's");
    }

    #[test]
    fn a_federated_zone_refuses_global_kinds_and_stamps_its_own() {
        let zone = Federation::Zone {
            name: "zone-1".into(),
            federated: true,
        };
        assert!(zone.check_type(ResourceType::Mesh).is_err());
        assert!(zone.check_type(ResourceType::MeshTimeout).is_ok());
        assert!(zone.check_type(ResourceType::Dataplane).is_ok());
        let err = zone
            .check_existing(&policy("{kuma.io/origin: global}"))
            .expect_err("refused");
        assert!(err.to_string().contains("kuma.io/origin: global"), "{err}");
        let mut p = policy("{}");
        zone.label(&mut p, "t").expect("stamped");
        assert_eq!(p.meta.labels[ORIGIN_LABEL], "zone");
        assert_eq!(p.meta.labels[ZONE_TAG], "zone-1");
        assert_eq!(p.meta.labels[ENV_LABEL], "universal");
        let mut p = policy("{kuma.io/origin: global}");
        assert!(zone.label(&mut p, "t").is_err());
        let mut p = policy("{kuma.io/zone: zone-2}");
        assert!(zone.label(&mut p, "t").is_err());
    }
}
