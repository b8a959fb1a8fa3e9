//! The Dataplane resource: one proxy, its inbounds, outbounds and proxy settings.

use serde::{Deserialize, Serialize};

use super::common::{
    EnvoyAdmin, Health, PROTOCOL_TAG, PROTOCOLS, SERVICE_TAG, TagRules, Tags, is_dns_name, is_ip,
    validate_port, validate_tags,
};
use super::mesh::MetricsBackend;
use crate::duration::Duration;
use crate::validation::{Path, ValidationError};

/// The spec of a `Dataplane` (Kuma's `mesh.v1alpha1.Dataplane`).
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataplaneSpec {
    /// Addresses, inbounds, outbounds and proxy settings.
    pub networking: Option<Networking>,
    /// A metrics backend overriding the mesh's.
    pub metrics: Option<MetricsBackend>,
    /// Virtual probes: HTTP probes of the workload rewritten onto one port.
    pub probes: Option<Probes>,
}

/// `networking` of a Dataplane.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Networking {
    /// IP or DNS name other proxies reach this one at.
    pub address: Option<String>,
    /// The address other proxies dial when `address` is not reachable (NAT).
    pub advertised_address: Option<String>,
    /// Makes the proxy a gateway instead of a sidecar.
    pub gateway: Option<Gateway>,
    /// Services this proxy fronts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inbound: Vec<Inbound>,
    /// Services this proxy consumes through explicit local ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbound: Vec<Outbound>,
    /// Transparent proxying (iptables redirection) settings.
    #[serde(alias = "transparent_proxying")]
    pub transparent_proxying: Option<TransparentProxying>,
    /// Envoy admin settings.
    pub admin: Option<EnvoyAdmin>,
    /// Zone ingress / egress listeners of a unified proxy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<Listener>,
}

/// One inbound: a port the proxy listens on for a service of its workload.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Inbound {
    /// The port the proxy listens on.
    #[serde(default)]
    pub port: u32,
    /// The workload's port (defaults to `port`).
    pub service_port: Option<u32>,
    /// The workload's address (defaults to the Dataplane address).
    pub service_address: Option<String>,
    /// The address the proxy listens on (defaults to the Dataplane address).
    pub address: Option<String>,
    /// Tags; `kuma.io/service` is required.
    #[serde(default)]
    pub tags: Tags,
    /// Readiness reported by the workload.
    pub health: Option<Health>,
    /// Active TCP probe run by the control plane side.
    pub service_probe: Option<ServiceProbe>,
    /// Inbound state (`Ready`, `NotReady`, `Ignored`).
    pub state: Option<InboundState>,
    /// Name of the inbound, used as `sectionName` in policies.
    pub name: Option<String>,
    /// Protocol of the inbound (alternative to the `kuma.io/protocol` tag).
    pub protocol: Option<String>,
}

impl Inbound {
    /// The value of `kuma.io/service`, if any.
    pub fn service(&self) -> Option<&str> {
        self.tags.get(SERVICE_TAG).map(String::as_str)
    }

    /// The port of the workload (`servicePort`, or `port` when unset).
    pub fn workload_port(&self) -> u32 {
        match self.service_port {
            Some(p) if p != 0 => p,
            _ => self.port,
        }
    }
}

/// State of an inbound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InboundState {
    /// Takes traffic.
    Ready,
    /// Does not take traffic.
    NotReady,
    /// Not part of the mesh.
    Ignored,
}

/// Active health checking of an inbound.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceProbe {
    /// Time between probes.
    pub interval: Option<Duration>,
    /// Time to wait for an answer.
    pub timeout: Option<Duration>,
    /// Failures before the inbound is unhealthy.
    #[serde(alias = "unhealthy_threshold")]
    pub unhealthy_threshold: Option<u32>,
    /// Successes before the inbound is healthy again.
    #[serde(alias = "healthy_threshold")]
    pub healthy_threshold: Option<u32>,
    /// TCP probing (the only kind).
    pub tcp: Option<serde_json::Map<String, serde_json::Value>>,
}

/// One explicit outbound: a local port that leads to a service.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Outbound {
    /// Local address (default 127.0.0.1).
    pub address: Option<String>,
    /// Local port.
    #[serde(default)]
    pub port: u32,
    /// Tags of the destination; `kuma.io/service` is required.
    #[serde(default, skip_serializing_if = "Tags::is_empty")]
    pub tags: Tags,
    /// A destination resource instead of tags.
    pub backend_ref: Option<OutboundBackendRef>,
}

impl Outbound {
    /// The destination service (`kuma.io/service` tag), if any.
    pub fn service(&self) -> Option<&str> {
        self.tags.get(SERVICE_TAG).map(String::as_str)
    }
}

/// The destination of an outbound given as a resource reference.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboundBackendRef {
    /// `MeshService`, `MeshExternalService` or `MeshMultiZoneService`.
    #[serde(default)]
    pub kind: String,
    /// Name of the resource.
    pub name: Option<String>,
    /// Port of the resource.
    pub port: Option<u32>,
    /// Labels selecting the resource.
    #[serde(default, skip_serializing_if = "Tags::is_empty")]
    pub labels: Tags,
}

/// The gateway settings of a gateway Dataplane.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Gateway {
    /// Tags of the gateway; `kuma.io/service` is required.
    #[serde(default)]
    pub tags: Tags,
    /// `DELEGATED` (default) or `BUILTIN`.
    #[serde(rename = "type")]
    pub kind: Option<GatewayType>,
}

/// Kind of gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GatewayType {
    /// A third-party gateway with a Kuma sidecar.
    #[serde(rename = "DELEGATED")]
    Delegated,
    /// Kuma's own gateway (configured by MeshGateway).
    #[serde(rename = "BUILTIN")]
    Builtin,
}

/// Transparent proxying settings.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TransparentProxying {
    /// Port inbound traffic is redirected to (Kuma: 15006).
    #[serde(alias = "redirect_port_inbound")]
    pub redirect_port_inbound: Option<u32>,
    /// Port outbound traffic is redirected to (Kuma: 15001).
    #[serde(alias = "redirect_port_outbound")]
    pub redirect_port_outbound: Option<u32>,
    /// Services reached directly, bypassing the outbound listeners.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        alias = "direct_access_services"
    )]
    pub direct_access_services: Vec<String>,
    /// When set, only these services get outbounds.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        alias = "reachable_services"
    )]
    pub reachable_services: Vec<String>,
    /// IP families redirected.
    #[serde(alias = "ip_family_mode")]
    pub ip_family_mode: Option<IpFamilyMode>,
    /// When set, only these resources get outbounds.
    #[serde(alias = "reachable_backends")]
    pub reachable_backends: Option<ReachableBackends>,
}

/// IP families of transparent proxying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IpFamilyMode {
    /// Not specified (dual stack).
    UnSpecified,
    /// IPv4 and IPv6.
    DualStack,
    /// IPv4 only.
    IPv4,
    /// IPv6 only.
    IPv6,
}

/// `reachableBackends` of transparent proxying.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReachableBackends {
    /// The references.
    #[serde(default)]
    pub refs: Vec<ReachableBackendRef>,
}

/// One reachable backend.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReachableBackendRef {
    /// `MeshService`, `MeshExternalService` or `MeshMultiZoneService`.
    #[serde(default)]
    pub kind: String,
    /// Name of the resource.
    pub name: Option<String>,
    /// Namespace (Kubernetes only).
    pub namespace: Option<String>,
    /// Port of the resource.
    pub port: Option<u32>,
    /// Labels selecting resources.
    #[serde(default, skip_serializing_if = "Tags::is_empty")]
    pub labels: Tags,
}

/// A zone ingress/egress listener of a unified proxy.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    /// `ZoneIngress` or `ZoneEgress`.
    #[serde(rename = "type")]
    pub kind: Option<ListenerType>,
    /// Listen address.
    pub address: Option<String>,
    /// Listen port.
    #[serde(default)]
    pub port: u32,
    /// Name, unique across inbounds and listeners.
    pub name: Option<String>,
    /// `Ready` or `NotReady`.
    pub state: Option<ListenerState>,
}

/// Type of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ListenerType {
    /// Invalid placeholder Kuma's proto has.
    Unspecified,
    /// Zone ingress.
    ZoneIngress,
    /// Zone egress.
    ZoneEgress,
}

/// State of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ListenerState {
    /// Takes traffic.
    Ready,
    /// Does not take traffic.
    NotReady,
}

/// Virtual probes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Probes {
    /// Port the probe listener binds.
    #[serde(default)]
    pub port: u32,
    /// Rewritten probe endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<ProbeEndpoint>,
}

/// One virtual probe endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProbeEndpoint {
    /// The inbound port the probe targets.
    #[serde(default, alias = "inbound_port")]
    pub inbound_port: u32,
    /// The path on the workload.
    #[serde(default, alias = "inbound_path")]
    pub inbound_path: String,
    /// The path on the probe listener.
    #[serde(default)]
    pub path: String,
}

const LOOPBACK: &str = "127.0.0.1";
const BACKEND_REF_KINDS: &[&str] = &["MeshExternalService", "MeshMultiZoneService", "MeshService"];

impl DataplaneSpec {
    /// True for a delegated gateway (`gateway` set without `type: BUILTIN`).
    pub fn is_delegated_gateway(&self) -> bool {
        self.gateway()
            .is_some_and(|g| g.kind.unwrap_or(GatewayType::Delegated) == GatewayType::Delegated)
    }

    /// True for a builtin gateway.
    pub fn is_builtin_gateway(&self) -> bool {
        self.gateway()
            .is_some_and(|g| g.kind == Some(GatewayType::Builtin))
    }

    fn gateway(&self) -> Option<&Gateway> {
        self.networking.as_ref().and_then(|n| n.gateway.as_ref())
    }

    /// Every inbound (empty when there is no networking).
    pub fn inbounds(&self) -> &[Inbound] {
        self.networking
            .as_ref()
            .map_or(&[], |n| n.inbound.as_slice())
    }

    /// Every explicit outbound.
    pub fn outbounds(&self) -> &[Outbound] {
        self.networking
            .as_ref()
            .map_or(&[], |n| n.outbound.as_slice())
    }
    /// Kuma's fuzzy tag filter: some inbound (or the gateway) has every key of `selector` with a
    /// value containing the selector's value (`*` matches any value).
    pub fn matches_tags_fuzzy(&self, selector: &super::common::Tags) -> bool {
        let matches = |tags: &super::common::Tags| {
            selector.iter().all(|(k, v)| {
                tags.get(k)
                    .is_some_and(|t| v == "*" || t.contains(v.as_str()))
            })
        };
        if selector.is_empty() {
            return true;
        }
        self.inbounds().iter().any(|i| matches(&i.tags))
            || self.gateway().is_some_and(|g| matches(&g.tags))
    }

    /// Every tag of the inbounds and the gateway, with all its values in order (Kuma's
    /// `TagSet`).
    pub fn tag_set(&self) -> std::collections::BTreeMap<&str, std::collections::BTreeSet<&str>> {
        let mut set: std::collections::BTreeMap<&str, std::collections::BTreeSet<&str>> =
            std::collections::BTreeMap::new();
        let gateway = self.gateway().map(|g| &g.tags);
        for tags in self.inbounds().iter().map(|i| &i.tags).chain(gateway) {
            for (k, v) in tags {
                set.entry(k.as_str()).or_default().insert(v.as_str());
            }
        }
        set
    }

    /// True when some inbound has `key: value`.
    pub fn has_inbound_tag(&self, key: &str, value: &str) -> bool {
        self.inbounds()
            .iter()
            .any(|i| i.tags.get(key).is_some_and(|v| v == value))
            || self
                .gateway()
                .is_some_and(|g| g.tags.get(key).is_some_and(|v| v == value))
    }

    /// Checks the Dataplane the way Kuma does; paths are relative to the resource root.
    pub fn validate(&self) -> ValidationError {
        let mut err = ValidationError::new();
        let net_path = Path::at("networking");
        let Some(net) = &self.networking else {
            err.add(&net_path, "must be defined");
            return err;
        };
        if let Some(admin) = &net.admin {
            let p = net_path.field("admin").field("port");
            validate_port(&p, admin.port, &mut err);
            // The admin API binds loopback; an inbound on that port would clash with it.
            let used_by_inbound = net.inbound.iter().any(|i| i.port == admin.port);
            if used_by_inbound {
                err.add(&p, "must differ from inbound");
            }
            if net
                .outbound
                .iter()
                .any(|o| o.port == admin.port && o.address.as_deref().is_none_or(|a| a == LOOPBACK))
            {
                err.add(&p, "must differ from outbound");
            }
        }
        if self.is_delegated_gateway() {
            if !net.inbound.is_empty() {
                err.add(
                    &net_path.field("inbound"),
                    "inbound cannot be defined for delegated gateways",
                );
            }
            if !net.listeners.is_empty() {
                err.add(
                    &net_path.field("listeners"),
                    "listeners cannot be defined for delegated gateways",
                );
            }
            if let Some(g) = &net.gateway {
                validate_gateway(&net_path.field("gateway"), g, &mut err);
            }
            validate_networking(net, &mut err);
            validate_probes(self.probes.as_ref(), &mut err);
        } else if self.is_builtin_gateway() {
            if !net.inbound.is_empty() {
                err.add(
                    &net_path.field("inbound"),
                    "inbound cannot be defined for builtin gateways",
                );
            }
            if !net.outbound.is_empty() {
                err.add(
                    &net_path.field("outbound"),
                    "outbound cannot be defined for builtin gateways",
                );
            }
            if !net.listeners.is_empty() {
                err.add(
                    &net_path.field("listeners"),
                    "listeners cannot be defined for builtin gateways",
                );
            }
            if self.probes.is_some() {
                err.add(
                    &Path::at("probes"),
                    "probes cannot be defined for builtin gateways",
                );
            }
            if let Some(g) = &net.gateway {
                validate_gateway(&net_path.field("gateway"), g, &mut err);
            }
            validate_networking(net, &mut err);
        } else {
            validate_networking(net, &mut err);
            validate_probes(self.probes.as_ref(), &mut err);
            if let Some(m) = &self.metrics {
                m.validate_for_dataplane(&Path::at("metrics"), &mut err);
            }
            validate_listeners(net, &mut err);
        }
        err
    }
}

fn is_wildcard(addr: &str) -> bool {
    addr == "0.0.0.0" || addr == "::"
}

fn validate_address(path: &Path, address: Option<&str>, err: &mut ValidationError) {
    match address {
        None | Some("") => err.add(path, "address can't be empty"),
        Some(a) if is_wildcard(a) => err.add(path, "must not be 0.0.0.0 or ::"),
        Some(a) if !is_ip(a) && !is_dns_name(a) => {
            err.add(path, "address has to be valid IP address or domain name")
        }
        Some(_) => {}
    }
}

fn validate_networking(net: &Networking, err: &mut ValidationError) {
    let path = Path::at("networking");
    validate_address(&path.field("address"), net.address.as_deref(), err);
    if let Some(a) = net.advertised_address.as_deref()
        && (a.is_empty() || (!is_ip(a) && !is_dns_name(a)))
    {
        err.add(
            &path.field("advertisedAddress"),
            "has to be valid IP address or domain name",
        );
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, inbound) in net.inbound.iter().enumerate() {
        let p = path.field("inbound").index(i);
        validate_inbound(&p, inbound, net.address.as_deref().unwrap_or(""), err);
        if let Some(n) = inbound.name.as_deref().filter(|n| !n.is_empty())
            && !names.insert(n)
        {
            err.add(
                &p.field("name"),
                format!("name {n:?} is already used by another inbound"),
            );
        }
    }
    for (i, outbound) in net.outbound.iter().enumerate() {
        validate_outbound(&path.field("outbound").index(i), outbound, err);
    }
    if let Some(tp) = &net.transparent_proxying {
        validate_transparent_proxying(&path.field("transparentProxying"), tp, err);
    }
}

pub(crate) fn validate_protocol_tag(path: &Path, tags: &Tags, err: &mut ValidationError) {
    if let Some(p) = tags.get(PROTOCOL_TAG)
        && !PROTOCOLS.contains(&p.as_str())
    {
        err.add(
            &path.key(PROTOCOL_TAG),
            format!(
                "tag {PROTOCOL_TAG:?} has an invalid value {p:?}. Allowed values: {}",
                PROTOCOLS.join(", ")
            ),
        );
    }
}

fn validate_inbound(path: &Path, inbound: &Inbound, dp_address: &str, err: &mut ValidationError) {
    validate_port(&path.field("port"), inbound.port, err);
    if let Some(sp) = inbound.service_port
        && sp != 0
    {
        validate_port(&path.field("servicePort"), sp, err);
    }
    let same_port = inbound
        .service_port
        .is_none_or(|sp| sp == 0 || sp == inbound.port);
    if let Some(sa) = inbound.service_address.as_deref().filter(|s| !s.is_empty()) {
        if !is_ip(sa) {
            err.add(
                &path.field("serviceAddress"),
                "serviceAddress has to be valid IP address",
            );
        }
        if sa == dp_address && same_port {
            err.add(
                &path.field("serviceAddress"),
                "serviceAddress and servicePort has to differ from address and port",
            );
        }
    }
    if let Some(a) = inbound.address.as_deref().filter(|s| !s.is_empty()) {
        if !is_ip(a) {
            err.add(&path.field("address"), "address has to be valid IP address");
        }
        if inbound.service_address.as_deref() == Some(a) && same_port {
            err.add(
                &path.field("serviceAddress"),
                "serviceAddress and servicePort has to differ from address and port",
            );
        }
    }
    let tags_path = path.field("tags");
    validate_tags(&tags_path, &inbound.tags, TagRules::default(), err);
    if !inbound.tags.contains_key(SERVICE_TAG) {
        err.add(&tags_path.key(SERVICE_TAG), "tag has to exist");
    }
    validate_protocol_tag(&tags_path, &inbound.tags, err);
    if let Some(p) = inbound.protocol.as_deref()
        && !p.is_empty()
        && !PROTOCOLS.contains(&p)
    {
        err.add(
            &path.field("protocol"),
            format!(
                "has an invalid value {p:?}. Allowed values: {}",
                PROTOCOLS.join(", ")
            ),
        );
    }
    if let Some(name) = inbound.name.as_deref()
        && !name.is_empty()
        && !super::common::is_dns_subdomain(name)
    {
        err.add(&path.field("name"), "must be a valid DNS-1123 label");
    }
    if let Some(probe) = &inbound.service_probe {
        let p = path.field("serviceProbe");
        for (field, d) in [("interval", &probe.interval), ("timeout", &probe.timeout)] {
            if let Some(d) = d
                && d.get().is_zero()
            {
                err.add(&p.field(field), "must have a positive value");
            }
        }
        for (field, t) in [
            ("unhealthyThreshold", probe.unhealthy_threshold),
            ("healthyThreshold", probe.healthy_threshold),
        ] {
            if t == Some(0) {
                err.add(&p.field(field), "must have a positive value");
            }
        }
    }
}

fn validate_outbound(path: &Path, outbound: &Outbound, err: &mut ValidationError) {
    validate_port(&path.field("port"), outbound.port, err);
    if let Some(a) = outbound.address.as_deref()
        && !a.is_empty()
        && !is_ip(a)
    {
        err.add(&path.field("address"), "address has to be valid IP address");
    }
    match &outbound.backend_ref {
        Some(br) => {
            if !BACKEND_REF_KINDS.contains(&br.kind.as_str()) {
                err.add(
                    &path.field("backendRef").field("kind"),
                    format!(
                        "invalid value. Available values are: {}",
                        BACKEND_REF_KINDS.join(",")
                    ),
                );
            }
            if br.name.as_deref().is_none_or(str::is_empty) && br.labels.is_empty() {
                err.add(
                    &path.field("backendRef"),
                    "either 'name' or 'labels' should be specified",
                );
            }
            if br.kind != "MeshExternalService" {
                validate_port(
                    &path.field("backendRef").field("port"),
                    br.port.unwrap_or(0),
                    err,
                );
            }
            if !outbound.tags.is_empty() {
                err.add(
                    &path.field("backendRef"),
                    "both backendRef and tags/service cannot be defined",
                );
            }
        }
        None if outbound.tags.is_empty() => {
            err.add(
                &path.field("tags"),
                format!("mandatory tag {SERVICE_TAG:?} is missing"),
            );
        }
        None => validate_tags(
            &path.field("tags"),
            &outbound.tags,
            TagRules {
                require_service: true,
                ..Default::default()
            },
            err,
        ),
    }
}

fn validate_transparent_proxying(path: &Path, tp: &TransparentProxying, err: &mut ValidationError) {
    for (field, port) in [
        ("redirectPortInbound", tp.redirect_port_inbound),
        ("redirectPortOutbound", tp.redirect_port_outbound),
    ] {
        if let Some(p) = port
            && p > 65535
        {
            err.add(&path.field(field), "port must be in the range [1, 65535]");
        }
    }
    if let Some(rb) = &tp.reachable_backends {
        let rp = path.field("reachableBackends").field("refs");
        for (i, r) in rb.refs.iter().enumerate() {
            let p = rp.index(i);
            if !BACKEND_REF_KINDS.contains(&r.kind.as_str()) {
                err.add(
                    &p.field("kind"),
                    format!(
                        "invalid value. Available values are: {}",
                        BACKEND_REF_KINDS.join(",")
                    ),
                );
            }
            let has_name = r.name.as_deref().is_some_and(|n| !n.is_empty());
            let has_ns = r.namespace.as_deref().is_some_and(|n| !n.is_empty());
            if !has_name && !has_ns && r.labels.is_empty() {
                err.add(&p.field("name"), "name or labels are required");
            }
            if !has_name && has_ns {
                err.add(
                    &p.field("name"),
                    "name is required, when namespace is defined",
                );
            }
            if (has_name || has_ns) && !r.labels.is_empty() {
                err.add(
                    &p.field("labels"),
                    "labels cannot be defined when name is specified",
                );
            }
        }
    }
}

fn validate_gateway(path: &Path, g: &Gateway, err: &mut ValidationError) {
    let tp = path.field("tags");
    validate_tags(
        &tp,
        &g.tags,
        TagRules {
            require_service: true,
            require_one: true,
            ..Default::default()
        },
        err,
    );
    if let Some(p) = g.tags.get(PROTOCOL_TAG)
        && p != "tcp"
    {
        err.add(
            &tp.key(PROTOCOL_TAG),
            format!("other values than tcp are not allowed, provided value {p:?}"),
        );
    }
}

fn validate_probes(probes: Option<&Probes>, err: &mut ValidationError) {
    let Some(probes) = probes else { return };
    let path = Path::at("probes");
    validate_port(&path.field("port"), probes.port, err);
    for (i, e) in probes.endpoints.iter().enumerate() {
        let p = path.field("endpoints").index(i);
        validate_port(&p.field("inboundPort"), e.inbound_port, err);
        if !e.inbound_path.starts_with('/') {
            err.add(&p.field("inboundPath"), "should be a valid URL Path");
        }
        if !e.path.starts_with('/') {
            err.add(&p.field("path"), "should be a valid URL Path");
        }
    }
}

fn validate_listeners(net: &Networking, err: &mut ValidationError) {
    let path = Path::at("networking").field("listeners");
    let mut names: std::collections::BTreeSet<&str> = net
        .inbound
        .iter()
        .filter_map(|i| i.name.as_deref())
        .collect();
    let mut seen: std::collections::BTreeMap<String, Option<ListenerType>> = Default::default();
    for (i, l) in net.listeners.iter().enumerate() {
        let p = path.index(i);
        if matches!(l.kind, None | Some(ListenerType::Unspecified)) {
            err.add(&p.field("type"), "type must be ZoneIngress or ZoneEgress");
        }
        validate_address(&p.field("address"), l.address.as_deref(), err);
        validate_port(&p.field("port"), l.port, err);
        if let Some(n) = l.name.as_deref().filter(|n| !n.is_empty())
            && !names.insert(n)
        {
            err.add(
                &p.field("name"),
                format!("name {n:?} must be unique across inbounds and listeners"),
            );
        }
        let key = format!("{}:{}", l.address.as_deref().unwrap_or(""), l.port);
        match seen.get(&key) {
            Some(t) if *t == l.kind => err.add(
                &p,
                format!("address:port {key} is already used by another listener"),
            ),
            Some(_) => err.add(
                &p,
                format!("address:port {key} is used by listeners of different types"),
            ),
            None => {
                seen.insert(key.clone(), l.kind);
            }
        }
        if net.inbound.iter().any(|inb| {
            let a = inb
                .address
                .as_deref()
                .or(net.address.as_deref())
                .unwrap_or("");
            format!("{a}:{}", inb.port) == key
        }) {
            err.add(
                &p,
                format!("address:port {key} collides with an inbound listener"),
            );
        }
    }
}
