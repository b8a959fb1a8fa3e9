//! Multi-zone resources: Zone, ZoneIngress, ZoneEgress.

use serde::{Deserialize, Serialize};

use super::common::{EnvoyAdmin, Tags, is_dns_name, is_ip, validate_port};
use crate::validation::{Path, ValidationError};

/// The spec of a `Zone` (created on global when a zone connects).
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZoneSpec {
    /// Whether the zone may connect (default true).
    pub enabled: Option<bool>,
}

/// The spec of a `ZoneIngress`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZoneIngressSpec {
    /// Zone the ingress belongs to (set by the control plane).
    pub zone: Option<String>,
    /// Addresses and ports.
    pub networking: Option<ZoneIngressNetworking>,
    /// Services reachable through the ingress (maintained by the control plane).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub available_services: Vec<AvailableService>,
}

/// `networking` of a ZoneIngress.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZoneIngressNetworking {
    /// Listen address.
    pub address: Option<String>,
    /// Address other zones dial.
    pub advertised_address: Option<String>,
    /// Listen port.
    #[serde(default)]
    pub port: u32,
    /// Port other zones dial.
    pub advertised_port: Option<u32>,
    /// Envoy admin.
    pub admin: Option<EnvoyAdmin>,
}

/// A service reachable through a zone ingress.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AvailableService {
    /// Tags of the service.
    #[serde(default)]
    pub tags: Tags,
    /// Number of instances.
    pub instances: Option<u32>,
    /// Mesh of the service.
    pub mesh: Option<String>,
    /// Whether it is an external service.
    pub external_service: Option<bool>,
}

/// The spec of a `ZoneEgress`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZoneEgressSpec {
    /// Zone the egress belongs to (set by the control plane).
    pub zone: Option<String>,
    /// Addresses and ports.
    pub networking: Option<ZoneEgressNetworking>,
}

/// `networking` of a ZoneEgress.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZoneEgressNetworking {
    /// Listen address.
    pub address: Option<String>,
    /// Listen port.
    #[serde(default)]
    pub port: u32,
    /// Envoy admin.
    pub admin: Option<EnvoyAdmin>,
}

fn validate_host(path: &Path, addr: Option<&str>, err: &mut ValidationError) {
    match addr {
        None | Some("") => err.add(path, "can't be empty"),
        Some(a) if !is_ip(a) && !is_dns_name(a) => {
            err.add(path, "address has to be valid IP address or domain name")
        }
        Some(_) => {}
    }
}

fn validate_admin_port(
    path: &Path,
    admin: Option<&EnvoyAdmin>,
    port: u32,
    err: &mut ValidationError,
) {
    if let Some(a) = admin {
        validate_port(&path.field("admin").field("port"), a.port, err);
        if a.port == port {
            err.add(&path.field("admin").field("port"), "must differ from port");
        }
    }
}

impl ZoneIngressSpec {
    /// Checks the ZoneIngress.
    pub fn validate(&self) -> ValidationError {
        let mut err = ValidationError::new();
        let p = Path::at("networking");
        let Some(net) = &self.networking else {
            err.add(&p, "must be defined");
            return err;
        };
        validate_host(&p.field("address"), net.address.as_deref(), &mut err);
        validate_port(&p.field("port"), net.port, &mut err);
        if let Some(a) = net.advertised_address.as_deref()
            && !a.is_empty()
        {
            validate_host(&p.field("advertisedAddress"), Some(a), &mut err);
            validate_port(
                &p.field("advertisedPort"),
                net.advertised_port.unwrap_or(0),
                &mut err,
            );
        } else if net.advertised_port.is_some_and(|p| p != 0) {
            err.add(
                &p.field("advertisedAddress"),
                "has to be defined with advertisedPort",
            );
        }
        validate_admin_port(&p, net.admin.as_ref(), net.port, &mut err);
        err
    }
}

impl ZoneEgressSpec {
    /// Checks the ZoneEgress.
    pub fn validate(&self) -> ValidationError {
        let mut err = ValidationError::new();
        let p = Path::at("networking");
        let Some(net) = &self.networking else {
            err.add(&p, "must be defined");
            return err;
        };
        validate_host(&p.field("address"), net.address.as_deref(), &mut err);
        validate_port(&p.field("port"), net.port, &mut err);
        validate_admin_port(&p, net.admin.as_ref(), net.port, &mut err);
        err
    }
}
