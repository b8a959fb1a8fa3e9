//! Virtual IPs: one stable address per hostname of a mesh, taken from a CIDR.
//!
//! A mesh's VIPs are kept, as Kuma keeps them, in the Config resource `kuma-<mesh>-dns-vips`:
//! a JSON map from `"<type>:<name>"` (type 0 for a service) to
//! `{"address": "240.0.0.1", "outbounds": [{"Port": 0, "TagSet": {...}, "Origin": "service"}]}`.
//! [`allocate`] is the pure rule (keep what has a VIP, free what is gone, give the lowest free
//! address to what is new); [`CidrVipAllocator`] applies it through the store with optimistic
//! concurrency, so control-plane instances never hand one VIP to two hostnames.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use kuma_core::manager::{ManagerError, ResourceManager};
use kuma_core::model::system::ConfigSpec;
use kuma_core::resource::{Resource, ResourceKey, ResourceType, Spec};
use kuma_core::store::StoreError;
use serde::{Deserialize, Serialize};

/// The name of the Config resource holding `mesh`'s VIPs.
pub fn config_name(mesh: &str) -> String {
    format!("kuma-{mesh}-dns-vips")
}

/// The mesh whose VIPs the Config resource `name` holds.
pub fn mesh_of_config(name: &str) -> Option<&str> {
    name.strip_prefix("kuma-")?.strip_suffix("-dns-vips")
}

/// What a hostname names, as Kuma numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HostnameKind {
    /// A `kuma.io/service` (`0`).
    Service,
    /// An external service's host (`1`).
    Host,
    /// A fully qualified domain (`2`).
    Fqdn,
}

/// A hostname with a VIP: `0:backend` in Kuma's JSON.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostnameEntry {
    /// What it names.
    pub kind: HostnameKind,
    /// The name.
    pub name: String,
}

impl HostnameEntry {
    /// The entry of service `name`.
    pub fn service(name: &str) -> Self {
        HostnameEntry {
            kind: HostnameKind::Service,
            name: name.to_string(),
        }
    }
}

impl fmt::Display for HostnameEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            HostnameKind::Service => 0,
            HostnameKind::Host => 1,
            HostnameKind::Fqdn => 2,
        };
        write!(f, "{kind}:{}", self.name)
    }
}

impl std::str::FromStr for HostnameEntry {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, name) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not <type>:<name>"))?;
        let kind = match kind {
            "0" => HostnameKind::Service,
            "1" => HostnameKind::Host,
            "2" => HostnameKind::Fqdn,
            other => return Err(format!("{other:?} is not a hostname type (0, 1, 2)")),
        };
        Ok(HostnameEntry {
            kind,
            name: name.to_string(),
        })
    }
}

impl Serialize for HostnameEntry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HostnameEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One way to reach a hostname: a port and the tags of its destination (Kuma's field names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundEntry {
    /// The port (0: the service's VIP port).
    #[serde(rename = "Port", default)]
    pub port: u32,
    /// The destination's tags.
    #[serde(rename = "TagSet", default)]
    pub tag_set: BTreeMap<String, String>,
    /// What produced it (`service` for a mesh service).
    #[serde(rename = "Origin", default)]
    pub origin: String,
}

impl OutboundEntry {
    /// The outbound of mesh service `name`.
    pub fn service(name: &str) -> Self {
        OutboundEntry {
            port: 0,
            tag_set: BTreeMap::from([(
                kuma_core::model::common::SERVICE_TAG.to_string(),
                name.to_string(),
            )]),
            origin: "service".into(),
        }
    }
}

/// A hostname's VIP and outbounds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtualOutbound {
    /// The VIP (empty when none could be allocated).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    /// How the hostname is reached.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbounds: Vec<OutboundEntry>,
}

/// The VIPs of one mesh, by hostname.
pub type VipTable = BTreeMap<HostnameEntry, VirtualOutbound>;

/// The table that gives each service of `entries` its VIP, as the allocator records it: for
/// zones built by hand (tests, benchmarks, an embedding control plane with fixed VIPs).
pub fn service_table<N: AsRef<str>, A: ToString>(
    entries: impl IntoIterator<Item = (N, A)>,
) -> VipTable {
    entries
        .into_iter()
        .map(|(name, address)| {
            let name = name.as_ref();
            (
                HostnameEntry::service(name),
                VirtualOutbound {
                    address: address.to_string(),
                    outbounds: vec![OutboundEntry::service(name)],
                },
            )
        })
        .collect()
}

/// The VIP of each hostname of `table` (those without a valid address are left out).
pub fn addresses(table: &VipTable) -> BTreeMap<&HostnameEntry, Ipv4Addr> {
    table
        .iter()
        .filter_map(|(h, vo)| Some((h, vo.address.parse().ok()?)))
        .collect()
}

/// Why VIPs could not be allocated or stored.
#[derive(Debug, thiserror::Error)]
pub enum VipError {
    /// The pool has no free address left for these hostnames (the others got theirs).
    #[error("no free VIP left in {pool} for {}", unallocated.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))]
    Exhausted {
        /// What ran out (the CIDR).
        pool: String,
        /// The hostnames left without a VIP.
        unallocated: Vec<HostnameEntry>,
    },
    /// The stored table is not Kuma's JSON.
    #[error("Config {name}: {reason}")]
    Corrupt {
        /// The Config resource.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] ManagerError),
    /// An allocator added by an embedder failed.
    #[error("VIP allocator")]
    Allocator(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Other instances kept changing the table.
    #[error("Config {0}: gave up after repeated concurrent updates")]
    Contended(String),
}

/// The table for `wanted` (each hostname with its outbounds), keeping every VIP of `previous`
/// that is in `cidr` and still wanted, and giving each new hostname the lowest free address
/// (never the network or broadcast address of a range wider than /31). Returns the table and
/// the hostnames no address was left for.
pub fn allocate(
    cidr: Ipv4Net,
    previous: &VipTable,
    wanted: &BTreeMap<HostnameEntry, Vec<OutboundEntry>>,
) -> (VipTable, Vec<HostnameEntry>) {
    let mut taken: HashSet<u32> = HashSet::new();
    let mut table = VipTable::new();
    // Kept first, so a new hostname can never take a kept address.
    for (hostname, outbounds) in wanted {
        let kept = previous
            .get(hostname)
            .and_then(|vo| vo.address.parse::<Ipv4Addr>().ok())
            .filter(|ip| cidr.contains(ip) && taken.insert(u32::from(*ip)));
        if let Some(ip) = kept {
            table.insert(
                hostname.clone(),
                VirtualOutbound {
                    address: ip.to_string(),
                    outbounds: outbounds.clone(),
                },
            );
        }
    }
    let (first, last) = usable_range(cidr);
    let mut next = first;
    let mut unallocated = Vec::new();
    for (hostname, outbounds) in wanted {
        if table.contains_key(hostname) {
            continue;
        }
        while next <= last && taken.contains(&next) {
            next += 1;
        }
        if next > last {
            unallocated.push(hostname.clone());
            continue;
        }
        taken.insert(next);
        table.insert(
            hostname.clone(),
            VirtualOutbound {
                address: Ipv4Addr::from(next).to_string(),
                outbounds: outbounds.clone(),
            },
        );
    }
    (table, unallocated)
}

/// The first and last addresses handed out from `cidr`.
fn usable_range(cidr: Ipv4Net) -> (u32, u32) {
    let (network, broadcast) = (u32::from(cidr.network()), u32::from(cidr.broadcast()));
    if cidr.prefix_len() >= 31 {
        (network, broadcast)
    } else {
        (network + 1, broadcast - 1)
    }
}

/// What an allocator chose for one mesh.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocation {
    /// The table to keep in force.
    pub table: VipTable,
    /// The wanted hostnames it found no address for (left out of `table`).
    pub unallocated: Vec<HostnameEntry>,
    /// What ran out, for the error naming them (the CIDR, say).
    pub pool: String,
}

/// Chooses stable virtual IPs for the hostnames of each mesh. Where the chosen table is kept
/// is not its business: [`VipTables`] stores it as Kuma does (the Config
/// `kuma-<mesh>-dns-vips`), from which DNS and config generation read it on every instance.
///
/// ```
/// use std::collections::BTreeMap;
///
/// use kuma_dns::vips::{
///     Allocation, HostnameEntry, OutboundEntry, VipAllocator, VipError, VipTable, VirtualOutbound,
/// };
///
/// /// Each hostname gets 127.1.0.x, in order (no reuse: a sketch).
/// struct Loopback;
///
/// #[async_trait::async_trait]
/// impl VipAllocator for Loopback {
///     async fn allocate(
///         &self,
///         _mesh: &str,
///         _previous: &VipTable,
///         wanted: &BTreeMap<HostnameEntry, Vec<OutboundEntry>>,
///     ) -> Result<Allocation, VipError> {
///         let table = wanted
///             .iter()
///             .zip(1..)
///             .map(|((hostname, outbounds), i)| {
///                 let vip = VirtualOutbound {
///                     address: format!("127.1.0.{i}"),
///                     outbounds: outbounds.clone(),
///                 };
///                 (hostname.clone(), vip)
///             })
///             .collect();
///         Ok(Allocation { table, ..Allocation::default() })
///     }
/// }
/// ```
#[async_trait::async_trait]
pub trait VipAllocator: Send + Sync + 'static {
    /// The table of `mesh` for exactly the `wanted` hostnames, given `previous`, the table in
    /// force: a hostname still wanted should keep its VIP, one no longer wanted gives it back,
    /// a new one gets a free address.
    async fn allocate(
        &self,
        mesh: &str,
        previous: &VipTable,
        wanted: &BTreeMap<HostnameEntry, Vec<OutboundEntry>>,
    ) -> Result<Allocation, VipError>;
}

/// VIPs from an IPv4 CIDR (Kuma's `dnsServer.CIDR`, 240.0.0.0/4 by default): the lowest free
/// address for each new hostname ([`allocate`]).
#[derive(Debug, Clone, Copy)]
pub struct CidrVipAllocator {
    cidr: Ipv4Net,
}

/// A VIP range that is not an IPv4 CIDR.
#[derive(Debug, thiserror::Error)]
#[error("{cidr:?} is not an IPv4 CIDR")]
pub struct InvalidCidr {
    cidr: String,
    source: ipnet::AddrParseError,
}

impl CidrVipAllocator {
    /// Allocates from `cidr` (IPv4).
    pub fn new(cidr: &str) -> Result<Self, InvalidCidr> {
        let parsed: Ipv4Net = cidr.parse().map_err(|source| InvalidCidr {
            cidr: cidr.to_string(),
            source,
        })?;
        Ok(CidrVipAllocator { cidr: parsed })
    }
}

#[async_trait::async_trait]
impl VipAllocator for CidrVipAllocator {
    async fn allocate(
        &self,
        _mesh: &str,
        previous: &VipTable,
        wanted: &BTreeMap<HostnameEntry, Vec<OutboundEntry>>,
    ) -> Result<Allocation, VipError> {
        let (table, unallocated) = allocate(self.cidr, previous, wanted);
        Ok(Allocation {
            table,
            unallocated,
            pool: self.cidr.to_string(),
        })
    }
}

/// Each mesh's VIP table in the store, as Kuma keeps it, with addresses its allocator chooses.
#[derive(Clone)]
pub struct VipTables {
    manager: ResourceManager,
    allocator: std::sync::Arc<dyn VipAllocator>,
}

impl VipTables {
    /// Tables stored through `manager`, allocated by `allocator`.
    pub fn new(manager: ResourceManager, allocator: std::sync::Arc<dyn VipAllocator>) -> Self {
        VipTables { manager, allocator }
    }

    /// Makes `mesh`'s table hold exactly `wanted`, as the allocator chooses, and stores it
    /// (again from the newer table when another instance wrote first). Returns the table in
    /// force; hostnames that got no address are an error, after the rest is stored.
    pub async fn sync(
        &self,
        mesh: &str,
        wanted: &BTreeMap<HostnameEntry, Vec<OutboundEntry>>,
    ) -> Result<VipTable, VipError> {
        let name = config_name(mesh);
        for _ in 0..5 {
            let (previous, stored) = stored_table(&self.manager, mesh).await?;
            let allocation = self.allocator.allocate(mesh, &previous, wanted).await?;
            let done = |table: VipTable| {
                if allocation.unallocated.is_empty() {
                    Ok(table)
                } else {
                    Err(VipError::Exhausted {
                        pool: allocation.pool.clone(),
                        unallocated: allocation.unallocated.clone(),
                    })
                }
            };
            let table = allocation.table.clone();
            if stored.is_some() && table == previous {
                return done(table);
            }
            let json = serde_json::to_string(&table).map_err(|e| VipError::Corrupt {
                name: name.clone(),
                reason: e.to_string(),
            })?;
            let spec = Spec::Config(ConfigSpec { config: json });
            let written = match stored {
                Some(mut r) => {
                    r.spec = spec;
                    self.manager.update(r).await.map(|_| ())
                }
                None => self
                    .manager
                    .create(Resource::new("", &name, spec))
                    .await
                    .map(|_| ()),
            };
            match written {
                Ok(()) => return done(table),
                // Another instance wrote first: start again from its table.
                Err(ManagerError::Store(
                    StoreError::Conflict { .. } | StoreError::AlreadyExists(_),
                )) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(VipError::Contended(name))
    }

    /// `mesh`'s stored table.
    pub async fn get(&self, mesh: &str) -> Result<VipTable, VipError> {
        Ok(stored_table(&self.manager, mesh).await?.0)
    }
}

/// `mesh`'s table as the store holds it, and the Config resource holding it (an empty table
/// and `None` when there is none yet).
pub async fn stored_table(
    manager: &ResourceManager,
    mesh: &str,
) -> Result<(VipTable, Option<Resource>), VipError> {
    let name = config_name(mesh);
    match manager
        .get(&ResourceKey::global(ResourceType::Config, &name))
        .await
    {
        Ok(r) => {
            let table = parse_table(&name, &r)?;
            Ok((table, Some(r)))
        }
        Err(ManagerError::Store(StoreError::NotFound(_))) => Ok((VipTable::new(), None)),
        Err(e) => Err(e.into()),
    }
}

/// The VIP of each service of `mesh` (by `kuma.io/service`), from its stored table.
pub async fn stored_service_vips(
    manager: &ResourceManager,
    mesh: &str,
) -> Result<BTreeMap<String, Ipv4Addr>, VipError> {
    Ok(service_vips(&stored_table(manager, mesh).await?.0))
}

/// The VIP of each service (by `kuma.io/service`) in `table`.
pub fn service_vips(table: &VipTable) -> BTreeMap<String, Ipv4Addr> {
    addresses(table)
        .into_iter()
        .filter(|(h, _)| h.kind == HostnameKind::Service)
        .map(|(h, ip)| (h.name.clone(), ip))
        .collect()
}

/// The table held by the Config resource `r` (named `name`).
pub fn parse_table(name: &str, r: &Resource) -> Result<VipTable, VipError> {
    let Some(spec) = r.spec_as::<ConfigSpec>() else {
        return Err(VipError::Corrupt {
            name: name.to_string(),
            reason: "not a Config".into(),
        });
    };
    if spec.config.trim().is_empty() {
        return Ok(VipTable::new());
    }
    serde_json::from_str(&spec.config).map_err(|e| VipError::Corrupt {
        name: name.to_string(),
        reason: e.to_string(),
    })
}

/// The services of `external_services` (a mesh's ExternalServices), each reached at the port of
/// its address, as Kuma records them: `0:<service>` with that port, and `1:<host>` for a
/// host that is a domain name, unless `disableHostDNSEntry` (by name order, the first
/// ExternalService of a service or host is kept).
pub fn external_service_hostnames<'a>(
    external_services: impl IntoIterator<Item = &'a Resource>,
) -> BTreeMap<HostnameEntry, Vec<OutboundEntry>> {
    use kuma_core::model::external_service::ExternalServiceSpec;
    let mut out: BTreeMap<HostnameEntry, Vec<OutboundEntry>> = BTreeMap::new();
    let mut sorted: Vec<&Resource> = external_services.into_iter().collect();
    sorted.sort_by(|a, b| a.meta.name.cmp(&b.meta.name));
    for spec in sorted
        .into_iter()
        .filter_map(|r| r.spec_as::<ExternalServiceSpec>())
    {
        let (Some(service), Some((_, port))) = (spec.service(), spec.host_port()) else {
            continue;
        };
        let entry = OutboundEntry {
            port,
            ..OutboundEntry::service(service)
        };
        let outbounds = out.entry(HostnameEntry::service(service)).or_default();
        if !outbounds.contains(&entry) {
            outbounds.push(entry.clone());
        }
        let host = spec.host_port().map(|(h, _)| h.to_ascii_lowercase());
        let by_name = host.filter(|h| !kuma_core::model::common::is_ip(h));
        let disabled = spec
            .networking
            .as_ref()
            .is_some_and(|n| n.disable_host_dns_entry);
        if let (Some(host), false) = (by_name, disabled) {
            let outbounds = out
                .entry(HostnameEntry {
                    kind: HostnameKind::Host,
                    name: host,
                })
                .or_default();
            if outbounds.is_empty() {
                outbounds.push(OutboundEntry {
                    origin: "host".into(),
                    ..entry
                });
            }
        }
    }
    out
}

/// An external service's host with a VIP: proxies reach `service` on `port` at `ip` when
/// they resolve `host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostVip {
    /// The host name (lowercase).
    pub host: String,
    /// Its VIP.
    pub ip: Ipv4Addr,
    /// The external service behind it.
    pub service: String,
    /// The port it is reached on.
    pub port: u32,
}

/// The hosts of `mesh`'s external services with VIPs, from its stored table.
pub async fn stored_host_vips(
    manager: &ResourceManager,
    mesh: &str,
) -> Result<Vec<HostVip>, VipError> {
    Ok(host_vips(&stored_table(manager, mesh).await?.0))
}

/// The hosts of external services with VIPs in `table`.
pub fn host_vips(table: &VipTable) -> Vec<HostVip> {
    table
        .iter()
        .filter(|(h, _)| h.kind == HostnameKind::Host)
        .filter_map(|(h, vo)| {
            let ip = vo.address.parse().ok()?;
            let outbound = vo.outbounds.first()?;
            Some(HostVip {
                host: h.name.clone(),
                ip,
                service: outbound
                    .tag_set
                    .get(kuma_core::model::common::SERVICE_TAG)?
                    .clone(),
                port: outbound.port,
            })
        })
        .collect()
}

/// The port Kuma reserves on inbounds that serve no traffic (they get no VIP).
const RESERVED_PORT: u32 = 49151;

/// The services that get VIPs in `mesh`: those of its Dataplanes' inbounds (but `Ignored` ones
/// and those on the reserved port 49151), and those of `mesh` that a ZoneIngress of another
/// zone than `local_zone` makes available. `dataplanes` are `mesh`'s; `zone_ingresses` may be
/// every ZoneIngress.
pub fn service_hostnames<'a>(
    mesh: &str,
    local_zone: &str,
    dataplanes: impl IntoIterator<Item = &'a Resource>,
    zone_ingresses: impl IntoIterator<Item = &'a Resource>,
) -> BTreeMap<HostnameEntry, Vec<OutboundEntry>> {
    use kuma_core::model::common::SERVICE_TAG;
    use kuma_core::model::dataplane::{DataplaneSpec, InboundState};
    use kuma_core::model::zone::ZoneIngressSpec;
    let local = dataplanes
        .into_iter()
        .filter_map(|r| r.spec_as::<DataplaneSpec>())
        .flat_map(|dp| dp.inbounds().iter())
        .filter(|i| i.state != Some(InboundState::Ignored) && i.port != RESERVED_PORT)
        .filter_map(|i| i.tags.get(SERVICE_TAG));
    let remote = zone_ingresses
        .into_iter()
        .filter_map(|r| r.spec_as::<ZoneIngressSpec>())
        .filter(|zi| {
            zi.zone
                .as_deref()
                .is_some_and(|z| !z.is_empty() && z != local_zone)
        })
        .flat_map(|zi| zi.available_services.iter())
        .filter(|s| s.mesh.as_deref() == Some(mesh))
        .filter_map(|s| s.tags.get(SERVICE_TAG));
    let services: BTreeSet<&str> = local.chain(remote).map(String::as_str).collect();
    services
        .into_iter()
        .map(|s| (HostnameEntry::service(s), vec![OutboundEntry::service(s)]))
        .collect()
}
