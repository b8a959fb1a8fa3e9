//! The resources of one proxy while generators build them.
//!
//! Generators add and edit typed Envoy messages here; a listener's last network filter (TCP
//! proxy or HTTP connection manager), its HTTP filters and its route table stay separate until
//! [`ResourceSet::into_snapshot`] assembles and encodes them, so a policy edits a route or adds
//! an HTTP filter without decoding anything. Endpoints a whole mesh shares stay encoded.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::core::v3::{TransportSocket, TypedExtensionConfig};
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as SocketConfig;
use envoy_types::pb::envoy::config::listener::v3::listener_filter::ConfigType as ListenerFilterConfig;
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
};
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    DownstreamTlsContext, Secret,
};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions,
};
use envoy_types::pb::envoy::config::core::v3::{Http1ProtocolOptions, Http2ProtocolOptions};

use kuma_core::model::common::Tags;

use super::context::Protocol;
use xds_server::cache::{EncodedResource, Snapshot};
use xds_server::envoy::any;

/// The HTTP connection manager of a listener, its HTTP filters (the router is added last) and
/// its route table (inlined into the manager).
#[derive(Debug, Clone)]
pub struct HttpDraft {
    /// The manager, without filters and routes.
    pub hcm: HttpConnectionManager,
    /// HTTP filters before the router, in order.
    pub filters: Vec<HttpFilter>,
    /// The route table.
    pub route: RouteConfiguration,
}

/// The last network filter of a listener.
#[derive(Debug, Clone)]
pub enum Terminal {
    /// Proxy TCP.
    Tcp(Box<TcpProxy>),
    /// Serve HTTP.
    Http(Box<HttpDraft>),
}

/// A listener with one filter chain, in parts.
#[derive(Debug, Clone)]
pub struct ListenerDraft {
    /// The listener (its filter chain is assembled from the parts below).
    pub listener: Listener,
    /// Network filters before the terminal one.
    pub network_filters: Vec<Filter>,
    /// The terminal network filter.
    pub terminal: Terminal,
    /// TLS the listener terminates (mTLS on inbounds); `None` for plaintext.
    pub tls: Option<ListenerTls>,
}

/// TLS terminated by a listener.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    /// Certificates, and how clients are verified.
    pub context: DownstreamTlsContext,
    /// Plaintext connections are accepted too (mTLS `PERMISSIVE`): the listener tells TLS from
    /// plaintext with the TLS inspector and serves each on its own filter chain.
    pub plaintext_too: bool,
}

impl ListenerDraft {
    /// The HTTP parts, when the listener serves HTTP.
    pub fn http_mut(&mut self) -> Option<&mut HttpDraft> {
        match &mut self.terminal {
            Terminal::Http(h) => Some(h),
            Terminal::Tcp(_) => None,
        }
    }

    pub(crate) fn build(self) -> Listener {
        let (name, config) = match self.terminal {
            Terminal::Tcp(tcp) => ("envoy.filters.network.tcp_proxy", any(tcp.as_ref())),
            Terminal::Http(http) => {
                let HttpDraft {
                    mut hcm,
                    mut filters,
                    route,
                } = *http;
                filters.push(HttpFilter {
                    name: "envoy.filters.http.router".into(),
                    config_type: Some(HttpConfigType::TypedConfig(any(&Router::default()))),
                    ..Default::default()
                });
                hcm.http_filters = filters;
                hcm.route_specifier = Some(RouteSpecifier::RouteConfig(route));
                ("envoy.filters.network.http_connection_manager", any(&hcm))
            }
        };
        let mut filters = self.network_filters;
        filters.push(Filter {
            name: name.into(),
            config_type: Some(ConfigType::TypedConfig(config)),
        });
        let mut listener = self.listener;
        let Some(tls) = self.tls else {
            listener.filter_chains = vec![FilterChain {
                filters,
                ..Default::default()
            }];
            return listener;
        };
        let mut secure = FilterChain {
            filters: filters.clone(),
            transport_socket: Some(TransportSocket {
                name: "envoy.transport_sockets.tls".into(),
                config_type: Some(SocketConfig::TypedConfig(any(&tls.context))),
            }),
            ..Default::default()
        };
        if !tls.plaintext_too {
            listener.filter_chains = vec![secure];
            return listener;
        }
        let by_transport = |protocol: &str| {
            Some(FilterChainMatch {
                transport_protocol: protocol.into(),
                ..Default::default()
            })
        };
        secure.filter_chain_match = by_transport("tls");
        let plain = FilterChain {
            filters,
            filter_chain_match: by_transport("raw_buffer"),
            ..Default::default()
        };
        listener.filter_chains = vec![secure, plain];
        listener.listener_filters.push(ListenerFilter {
            name: "envoy.filters.listener.tls_inspector".into(),
            config_type: Some(ListenerFilterConfig::TypedConfig(any(
                &TlsInspector::default(),
            ))),
            ..Default::default()
        });
        listener
    }
}

/// What a cluster is for (policies pick clusters by it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterRole {
    /// Traffic to a mesh service.
    Outbound {
        /// The destination service.
        service: String,
    },
    /// Traffic from an inbound to the local workload.
    Inbound {
        /// The inbound's port.
        port: u32,
    },
    /// The proxy's own plumbing (admin, readiness).
    System,
}

/// A cluster and its HTTP upstream options (encoded into the cluster at the end).
#[derive(Debug, Clone)]
pub struct ClusterDraft {
    /// The cluster.
    pub cluster: Cluster,
    /// What it is for.
    pub role: ClusterRole,
    /// The protocol spoken to its endpoints.
    pub protocol: Protocol,
    /// Tags its endpoints are narrowed to (a route's `MeshServiceSubset`); empty for all.
    pub subset: Tags,
    /// HTTP options (idle timeouts, stream limits); written when the protocol is HTTP.
    pub http_options: HttpProtocolOptions,
}

impl ClusterDraft {
    /// A cluster for `role` speaking `protocol`.
    pub fn new(cluster: Cluster, role: ClusterRole, protocol: Protocol) -> Self {
        ClusterDraft {
            cluster,
            role,
            protocol,
            subset: Tags::new(),
            http_options: HttpProtocolOptions::default(),
        }
    }

    /// The service this cluster sends traffic to, for an outbound cluster.
    pub fn service(&self) -> Option<&str> {
        match &self.role {
            ClusterRole::Outbound { service } => Some(service),
            _ => None,
        }
    }

    pub(crate) fn build(self) -> Cluster {
        let mut cluster = self.cluster;
        if self.protocol.is_http() {
            let mut options = self.http_options;
            if options.upstream_protocol_options.is_none() {
                let config = if self.protocol.is_http2() {
                    ProtocolConfig::Http2ProtocolOptions(Http2ProtocolOptions::default())
                } else {
                    ProtocolConfig::HttpProtocolOptions(Http1ProtocolOptions::default())
                };
                options.upstream_protocol_options = Some(
                    UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
                        protocol_config: Some(config),
                    }),
                );
            }
            cluster.typed_extension_protocol_options.insert(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
                any(&options),
            );
        }
        cluster
    }
}

/// Endpoints of a cluster: shared bytes, or built for this proxy.
#[derive(Debug, Clone)]
pub enum Endpoints {
    /// Encoded once for the mesh.
    Shared(EncodedResource),
    /// Built for this proxy.
    Owned(ClusterLoadAssignment),
}

/// An inbound the generators set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundInfo {
    /// Its listener's name.
    pub listener: String,
    /// The local cluster its traffic goes to.
    pub cluster: String,
    /// The inbound's port.
    pub port: u32,
    /// The inbound's `kuma.io/service`.
    pub service: String,
    /// The protocol it serves.
    pub protocol: Protocol,
}

/// An outbound the generators set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundInfo {
    /// Its listener's name.
    pub listener: String,
    /// The destination service.
    pub service: String,
    /// The protocol it proxies.
    pub protocol: Protocol,
}

/// Every resource of one proxy, by name, while generators run.
#[derive(Debug, Clone, Default)]
pub struct ResourceSet {
    /// Listeners (boxed: a draft is kilobytes, and the map moves its values as it grows).
    pub listeners: BTreeMap<String, Box<ListenerDraft>>,
    /// Clusters (boxed, as listeners).
    pub clusters: BTreeMap<String, Box<ClusterDraft>>,
    /// Endpoints of EDS clusters, by cluster name.
    pub endpoints: BTreeMap<String, Endpoints>,
    /// SDS secrets, by name.
    pub secrets: BTreeMap<String, Secret>,
    /// Extension configs served over ECDS (filters whose config is the proxy's own while the
    /// listener holding them is shared), by name.
    pub extensions: BTreeMap<String, TypedExtensionConfig>,
    /// Inbounds set up so far.
    pub inbounds: Vec<InboundInfo>,
    /// Outbounds set up so far.
    pub outbounds: Vec<OutboundInfo>,
    /// A generator read Dataplanes beyond the endpoints of the outbound clusters' services:
    /// any Dataplane change may change these resources.
    pub reads_every_dataplane: bool,
}

impl ResourceSet {
    /// Adds (or replaces) the listener `name`.
    pub fn add_listener(&mut self, name: impl Into<String>, draft: ListenerDraft) {
        self.listeners.insert(name.into(), Box::new(draft));
    }

    /// Adds (or replaces) the cluster `name`.
    pub fn add_cluster(&mut self, name: impl Into<String>, draft: ClusterDraft) {
        self.clusters.insert(name.into(), Box::new(draft));
    }

    /// The services whose endpoints or protocol went into these resources: those of the
    /// outbound clusters.
    pub fn services(&self) -> BTreeSet<String> {
        self.clusters
            .values()
            .filter_map(|c| match &c.role {
                ClusterRole::Outbound { service } => Some(service.clone()),
                _ => None,
            })
            .collect()
    }

    /// Adds every resource of `other` (replacing those of the same name).
    pub fn absorb(&mut self, other: ResourceSet) {
        self.listeners.extend(other.listeners);
        self.clusters.extend(other.clusters);
        self.endpoints.extend(other.endpoints);
        self.secrets.extend(other.secrets);
        self.extensions.extend(other.extensions);
        self.inbounds.extend(other.inbounds);
        self.outbounds.extend(other.outbounds);
        self.reads_every_dataplane |= other.reads_every_dataplane;
    }

    /// Encodes every resource, by name.
    pub fn into_encoded(self) -> Vec<(String, EncodedResource)> {
        let mut out: Vec<(String, EncodedResource)> = Vec::with_capacity(
            self.listeners.len()
                + self.clusters.len()
                + self.endpoints.len()
                + self.secrets.len()
                + self.extensions.len(),
        );
        for (name, l) in self.listeners {
            out.push((name, EncodedResource::from_message(&(*l).build())));
        }
        for (name, c) in self.clusters {
            out.push((name, EncodedResource::from_message(&(*c).build())));
        }
        for (name, e) in self.endpoints {
            let encoded = match e {
                Endpoints::Shared(bytes) => bytes,
                Endpoints::Owned(cla) => EncodedResource::from_message(&cla),
            };
            out.push((name, encoded));
        }
        for (name, secret) in self.secrets {
            out.push((name, EncodedResource::from_message(&secret)));
        }
        for (name, extension) in self.extensions {
            out.push((name, EncodedResource::from_message(&extension)));
        }
        out
    }

    /// Encodes everything into a snapshot.
    pub fn into_snapshot(self) -> Snapshot {
        Snapshot::new(self.into_encoded())
    }
}
