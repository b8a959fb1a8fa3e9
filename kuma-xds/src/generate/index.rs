//! A mesh's Dataplanes indexed by the services they provide, kept from one regeneration of the
//! mesh to the next and updated Dataplane by Dataplane.
//!
//! Generation reads each service's endpoints, protocol and ports, and (under strict SPIFFE) the
//! identities of its providers. [`MeshIndex::apply`] takes the Dataplanes that changed and
//! re-indexes only the services they provided before or provide now, so a change costs what
//! those services hold, not what the mesh holds. A service's endpoints are encoded as a
//! `ClusterLoadAssignment` when they change, and the same bytes are kept (and shared by every
//! snapshot) while they do not.

use std::collections::{BTreeMap, BTreeSet};

use kuma_core::model::common::{SERVICE_TAG, Tags};
use kuma_core::model::dataplane::DataplaneSpec;
use kuma_core::resource::Resource;
use xds_server::cache::EncodedResource;
use xds_server::envoy::load_assignment;

use super::context::{
    Endpoint, Protocol, Service, addresses, strict_spiffe_service, weighted_locality,
};
use super::reach::SERVICE_MATCH_TAGS;

/// Every Dataplane of one mesh, by name, and the services they provide.
#[derive(Debug, Clone, Default)]
pub struct MeshIndex {
    dataplanes: BTreeMap<String, Resource>,
    /// The services each Dataplane's inbounds name.
    provides: BTreeMap<String, BTreeSet<String>>,
    /// The Dataplanes naming each service in an inbound.
    providers: BTreeMap<String, BTreeSet<String>>,
    /// Services with at least one inbound other proxies can address.
    services: BTreeMap<String, Service>,
    /// Per service, the tags its instances share ([`SERVICE_MATCH_TAGS`]), from its first
    /// provider by name: what permissions are matched against for the whole service.
    match_tags: BTreeMap<String, Tags>,
    /// Per service, its endpoints in other zones: the remote zone ingresses offering it.
    remote: BTreeMap<String, Vec<Endpoint>>,
    /// How many distinct remote ingresses `remote` names: the weight of each local endpoint
    /// of a service also offered elsewhere (Kuma's).
    remote_ingresses: u32,
    /// Load assignments encoded so far.
    encoded: u64,
    /// Bumped whenever a service appears, goes or changes its match tags.
    shape: u64,
}

impl MeshIndex {
    /// The index of `dataplanes` (the whole mesh).
    pub fn new(dataplanes: impl IntoIterator<Item = Resource>) -> Self {
        let mut index = MeshIndex::default();
        index.apply(
            dataplanes
                .into_iter()
                .map(|r| (r.meta.name.clone(), Some(r))),
        );
        index
    }

    /// Takes in changed Dataplanes, by name (`None`: deleted), and re-indexes the services
    /// they provided or provide; returns those services.
    pub fn apply(
        &mut self,
        changes: impl IntoIterator<Item = (String, Option<Resource>)>,
    ) -> BTreeSet<String> {
        let mut touched = BTreeSet::new();
        for (name, dataplane) in changes {
            if let Some(old) = self.provides.remove(&name) {
                for service in &old {
                    if let Some(providers) = self.providers.get_mut(service) {
                        providers.remove(&name);
                        if providers.is_empty() {
                            self.providers.remove(service);
                        }
                    }
                }
                touched.extend(old);
            }
            self.dataplanes.remove(&name);
            let Some(dataplane) = dataplane else {
                continue;
            };
            let services = provided_services(&dataplane);
            for service in &services {
                self.providers
                    .entry(service.clone())
                    .or_default()
                    .insert(name.clone());
            }
            touched.extend(services.iter().cloned());
            self.provides.insert(name.clone(), services);
            self.dataplanes.insert(name, dataplane);
        }
        for service in &touched {
            self.reindex(service);
        }
        touched
    }

    /// Sets the endpoints of services in other zones (each a remote zone ingress, with its
    /// weight and tags; see [`Endpoint`]), and re-indexes the services whose remote endpoints
    /// changed; returns those services.
    pub fn set_remote(&mut self, remote: BTreeMap<String, Vec<Endpoint>>) -> BTreeSet<String> {
        let ingresses: BTreeSet<(&str, u32)> = remote
            .values()
            .flatten()
            .map(|e| (e.ip.as_str(), e.port))
            .collect();
        let count = u32::try_from(ingresses.len()).unwrap_or(u32::MAX);
        let touched: BTreeSet<String> = if count == self.remote_ingresses {
            remote
                .keys()
                .chain(self.remote.keys())
                .filter(|s| remote.get(*s) != self.remote.get(*s))
                .cloned()
                .collect()
        } else {
            // Local endpoints' weights move with the count: every service offered remotely.
            remote.keys().chain(self.remote.keys()).cloned().collect()
        };
        self.remote = remote;
        self.remote_ingresses = count;
        for service in &touched {
            self.reindex(service);
        }
        touched
    }

    /// Rebuilds what the index holds for `service` from its providers.
    fn reindex(&mut self, service: &str) {
        let mut endpoints = Vec::new();
        let mut protocol: Option<Protocol> = None;
        let mut ports = BTreeSet::new();
        let mut identities = BTreeSet::new();
        let mut match_tags: Option<Tags> = None;
        let providers = self.providers.get(service).into_iter().flatten();
        for dp in providers
            .filter_map(|name| self.dataplanes.get(name))
            .filter_map(|r| r.spec_as::<DataplaneSpec>())
        {
            let identity = strict_spiffe_service(dp);
            let inbounds = dp.inbounds().iter();
            for inbound in
                inbounds.filter(|i| i.tags.get(SERVICE_TAG).is_some_and(|s| s == service))
            {
                match_tags.get_or_insert_with(|| {
                    inbound
                        .tags
                        .iter()
                        .filter(|(k, _)| SERVICE_MATCH_TAGS.contains(&k.as_str()))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                });
                if let Some(identity) = identity {
                    identities.insert(identity.to_string());
                }
                let Some(ip) = reachable_ip(dp, inbound.address.as_deref()) else {
                    continue;
                };
                let this = Protocol::of_tags(&inbound.tags);
                protocol = Some(protocol.map_or(this, |p| p.common(this)));
                ports.insert(inbound.port);
                if inbound
                    .health
                    .as_ref()
                    .is_some_and(|h| h.ready == Some(false))
                {
                    continue; // not ready: no traffic until it is
                }
                endpoints.push(Endpoint {
                    ip: ip.to_string(),
                    port: inbound.port,
                    tags: inbound.tags.clone(),
                    weight: 0,
                });
            }
        }
        // Endpoints in other zones: local ones weigh as many as there are remote ingresses.
        let remote = self
            .remote
            .get(service)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if !remote.is_empty() {
            for e in &mut endpoints {
                e.weight = self.remote_ingresses;
            }
            for e in remote {
                let this = Protocol::of_tags(&e.tags);
                protocol = Some(protocol.map_or(this, |p| p.common(this)));
            }
        }
        let old_tags = match &match_tags {
            Some(tags) => self.match_tags.insert(service.to_string(), tags.clone()),
            None => self.match_tags.remove(service),
        };
        if old_tags != match_tags {
            self.shape += 1;
        }
        let Some(protocol) = protocol else {
            // No inbound other proxies can address: not a service to send to.
            self.services.remove(service);
            return;
        };
        endpoints.sort_by(|a, b| (&a.ip, a.port).cmp(&(&b.ip, b.port)));
        endpoints.dedup_by(|a, b| a.ip == b.ip && a.port == b.port);
        endpoints.extend(merge_remote(remote));
        let load_assignment = match self.services.get(service) {
            Some(old) if same_assignment(&old.endpoints, &endpoints) => old.load_assignment.clone(),
            _ => {
                self.encoded += 1;
                EncodedResource::from_message(&encode(service, &endpoints))
            }
        };
        self.services.insert(
            service.to_string(),
            Service {
                endpoints,
                protocol,
                ports,
                strict_identities: identities,
                load_assignment,
            },
        );
    }

    /// Every Dataplane, by name.
    pub fn dataplanes(&self) -> impl Iterator<Item = &Resource> {
        self.dataplanes.values()
    }

    /// The Dataplane named `name`.
    pub fn dataplane(&self, name: &str) -> Option<&Resource> {
        self.dataplanes.get(name)
    }

    /// How many Dataplanes the mesh has.
    pub fn len(&self) -> usize {
        self.dataplanes.len()
    }

    /// True when the mesh has no Dataplane.
    pub fn is_empty(&self) -> bool {
        self.dataplanes.is_empty()
    }

    /// A service other proxies can send to.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.get(name)
    }

    /// Every service other proxies can send to, by name.
    pub fn services(&self) -> impl Iterator<Item = (&str, &Service)> {
        self.services.iter().map(|(name, s)| (name.as_str(), s))
    }

    /// Every service any inbound names, with the tags all its instances are matched by.
    pub fn service_tags(&self) -> impl Iterator<Item = (&str, &Tags)> {
        self.match_tags.iter().map(|(name, t)| (name.as_str(), t))
    }

    /// How many load assignments were encoded since the index was made.
    pub fn encoded(&self) -> u64 {
        self.encoded
    }

    /// Changes whenever [`Self::service_tags`] does.
    pub(crate) fn shape(&self) -> u64 {
        self.shape
    }
}

/// Endpoints of other zones, one per zone and address: a remote ingress listed for several
/// tag sets of a service is one endpoint, weighted by all of them (per zone: through a zone
/// egress, every zone's endpoints share the egress's address, each in its zone's locality).
pub(crate) fn merge_remote(remote: &[Endpoint]) -> Vec<Endpoint> {
    let mut by_address: BTreeMap<(Option<&str>, &str, u32), Endpoint> = BTreeMap::new();
    for e in remote {
        by_address
            .entry((e.zone(), e.ip.as_str(), e.port))
            .and_modify(|known| known.weight = known.weight.saturating_add(e.weight))
            .or_insert_with(|| e.clone());
    }
    by_address.into_values().collect()
}

/// Whether two endpoint lists encode alike (addresses, weights, zones).
fn same_assignment(a: &[Endpoint], b: &[Endpoint]) -> bool {
    let key = |e: &Endpoint| (e.ip.clone(), e.port, e.weight, e.zone().map(str::to_string));
    a.len() == b.len() && a.iter().map(key).eq(b.iter().map(key))
}

/// A service's endpoints as a `ClusterLoadAssignment`: one locality when they are all in this
/// zone; with endpoints in other zones, one locality per zone (`kuma.io/zone`), all of the
/// same priority, each endpoint with its weight (locality awareness, which moves other zones
/// to a lower priority, is MeshLoadBalancingStrategy's).
fn encode(
    service: &str,
    endpoints: &[Endpoint],
) -> envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment {
    use envoy_types::pb::envoy::config::core::v3::Locality;
    if endpoints.iter().all(|e| e.weight == 0) {
        return load_assignment(service, &addresses(endpoints));
    }
    let mut zones: BTreeMap<&str, Vec<&Endpoint>> = BTreeMap::new();
    for e in endpoints {
        zones
            .entry(e.zone().unwrap_or_default())
            .or_default()
            .push(e);
    }
    let mut cla = load_assignment(service, &[]);
    cla.endpoints = zones
        .into_iter()
        .map(|(zone, members)| {
            let mut locality = weighted_locality(service, members);
            locality.locality = Some(Locality {
                zone: zone.to_string(),
                ..Default::default()
            });
            locality
        })
        .collect();
    cla
}

/// The services a Dataplane's inbounds name.
fn provided_services(dp: &Resource) -> BTreeSet<String> {
    dp.spec_as::<DataplaneSpec>()
        .map(|spec| {
            spec.inbounds()
                .iter()
                .filter_map(|i| i.tags.get(SERVICE_TAG).cloned())
                .collect()
        })
        .unwrap_or_default()
}

/// Where other proxies reach an inbound of `dp`: advertised address, inbound address, address.
fn reachable_ip<'a>(dp: &'a DataplaneSpec, inbound_address: Option<&'a str>) -> Option<&'a str> {
    let n = dp.networking.as_ref()?;
    n.advertised_address
        .as_deref()
        .or(inbound_address)
        .or(n.address.as_deref())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use kuma_core::resource::parse_yaml;

    fn dataplane(name: &str, ip: &str, service: &str, ready: bool) -> Resource {
        parse_yaml(&format!(
            "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: {ip}\n  inbound:\n  - port: 80\n    tags: {{kuma.io/service: {service}, kuma.io/protocol: http}}\n    health: {{ready: {ready}}}\n"
        ))
        .unwrap()
    }

    fn ips(index: &MeshIndex, service: &str) -> Vec<String> {
        let endpoints = &index.service(service).unwrap().endpoints;
        endpoints.iter().map(|e| e.ip.clone()).collect()
    }

    #[test]
    fn changes_reindex_only_the_services_they_touch() {
        let mut index = MeshIndex::new([
            dataplane("a-1", "10.0.0.1", "a", true),
            dataplane("a-2", "10.0.0.2", "a", false),
            dataplane("b-1", "10.0.0.3", "b", true),
        ]);
        assert_eq!(ips(&index, "a"), ["10.0.0.1"], "a-2 is not ready");
        assert_eq!(index.service("a").unwrap().ports, BTreeSet::from([80]));
        assert_eq!(index.service("a").unwrap().protocol, Protocol::Http);
        assert_eq!(index.encoded(), 2);
        let shape = index.shape();
        let b = index.service("b").unwrap().load_assignment.clone();

        // a-2 gets ready: only a is touched and encoded again.
        let touched = index.apply([("a-2".into(), Some(dataplane("a-2", "10.0.0.2", "a", true)))]);
        assert_eq!(touched, BTreeSet::from(["a".to_string()]));
        assert_eq!(ips(&index, "a"), ["10.0.0.1", "10.0.0.2"]);
        assert_eq!(index.encoded(), 3);
        assert!(b.shares_bytes_with(&index.service("b").unwrap().load_assignment));
        assert_eq!(index.shape(), shape, "the same services, the same tags");

        // b-1 moves to c: b goes, c comes.
        let touched = index.apply([("b-1".into(), Some(dataplane("b-1", "10.0.0.3", "c", true)))]);
        assert_eq!(touched, BTreeSet::from(["b".to_string(), "c".to_string()]));
        assert!(index.service("b").is_none());
        assert_eq!(ips(&index, "c"), ["10.0.0.3"]);
        assert_ne!(index.shape(), shape);
        let names: Vec<&str> = index.service_tags().map(|(s, _)| s).collect();
        assert_eq!(names, ["a", "c"]);

        // a-1 is deleted; a re-encoded with a-2 alone; a Dataplane nobody knows changes nothing.
        let touched = index.apply([("a-1".into(), None), ("ghost".into(), None)]);
        assert_eq!(touched, BTreeSet::from(["a".to_string()]));
        assert_eq!(ips(&index, "a"), ["10.0.0.2"]);
        assert_eq!(index.len(), 2);
        assert!(index.dataplane("a-1").is_none());
    }

    #[test]
    fn services_of_other_zones_are_reached_through_their_ingresses() {
        use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
        use prost::Message as _;
        let local = parse_yaml(
            "type: Dataplane\nmesh: default\nname: b-1\nnetworking:\n  address: 10.0.0.1\n  inbound:\n  - port: 80\n    tags: {kuma.io/service: backend, kuma.io/protocol: http, kuma.io/zone: zone-1}\n",
        )
        .unwrap();
        let mut index = MeshIndex::new([local]);
        let before = index.encoded();
        let remote = |service: &str, ip: &str, instances: u32| Endpoint {
            ip: ip.into(),
            port: 10001,
            tags: [
                ("kuma.io/service", service),
                ("kuma.io/zone", "zone-2"),
                ("kuma.io/protocol", "http"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            weight: instances,
        };
        let offered = BTreeMap::from([
            (
                "backend".to_string(),
                vec![remote("backend", "192.0.2.2", 3)],
            ),
            ("db".to_string(), vec![remote("db", "192.0.2.2", 1)]),
        ]);
        let touched = index.set_remote(offered.clone());
        assert_eq!(
            touched,
            BTreeSet::from(["backend".to_string(), "db".to_string()])
        );
        // db runs only in zone-2: a service all the same, with the ingress as its endpoint.
        assert_eq!(ips(&index, "db"), ["192.0.2.2"]);
        assert_eq!(index.service("db").unwrap().protocol, Protocol::Http);
        let backend = index.service("backend").unwrap();
        assert_eq!(ips(&index, "backend"), ["10.0.0.1", "192.0.2.2"]);
        let cla = ClusterLoadAssignment::decode(backend.load_assignment.to_any().value.as_slice())
            .unwrap();
        let zones: Vec<(String, Vec<u32>)> = cla
            .endpoints
            .iter()
            .map(|l| {
                let weights = l
                    .lb_endpoints
                    .iter()
                    .map(|e| e.load_balancing_weight.map_or(0, |w| w.value))
                    .collect();
                (l.locality.clone().unwrap_or_default().zone, weights)
            })
            .collect();
        // One locality per zone, same priority; the ingress weighs its 3 instances, a local
        // endpoint as many as there are remote ingresses.
        assert_eq!(
            zones,
            [
                ("zone-1".to_string(), vec![1]),
                ("zone-2".to_string(), vec![3])
            ]
        );
        assert!(cla.endpoints.iter().all(|l| l.priority == 0));

        // The same again changes nothing and encodes nothing.
        let encoded = index.encoded();
        assert!(encoded > before);
        assert!(index.set_remote(offered).is_empty());
        assert_eq!(index.encoded(), encoded);
        // The ingress goes: db is gone, backend is local again.
        let touched = index.set_remote(BTreeMap::new());
        assert_eq!(touched.len(), 2);
        assert!(index.service("db").is_none());
        assert_eq!(ips(&index, "backend"), ["10.0.0.1"]);
    }
}
