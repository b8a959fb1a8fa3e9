//! Builders for the Envoy resources the generators emit.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::Hash;
use std::sync::LazyLock;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig,
};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiConfigSource, ApiVersion, ConfigSource, GrpcService,
    SocketAddress, api_config_source, grpc_service,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier as RouteCluster;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::CodecType;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier;
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{
    Any, BoolValue, Duration, Struct, UInt32Value, Value as PbValue,
};
use prost::{Message, Name};

/// A map whose protobuf encoding depends only on its entries.
///
/// prost encodes a map field in the map's iteration order, and every `HashMap` built with a
/// fresh `RandomState` iterates in its own order: the same config would encode differently on
/// each generation, change its content-derived version and be pushed again to every proxy.
/// Maps built here share one process-wide hasher and receive their entries in key order, so
/// equal entries give equal bytes within a process; across processes (a restart, another
/// instance) [`crate::canonical`] puts the encoded entries in key order.
pub fn ordered_map<K: Ord + Hash, V>(entries: impl IntoIterator<Item = (K, V)>) -> HashMap<K, V> {
    static HASHER: LazyLock<RandomState> = LazyLock::new(RandomState::new);
    let mut sorted: Vec<(K, V)> = entries.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0)); // stable: a repeated key keeps its last value
    let mut map = HashMap::with_capacity_and_hasher(sorted.len(), HASHER.clone());
    map.extend(sorted);
    map
}

/// A `google.protobuf.Struct` of string fields, encoded the same way every time.
pub fn string_struct(fields: impl IntoIterator<Item = (String, String)>) -> Struct {
    Struct {
        fields: ordered_map(fields.into_iter().map(|(k, v)| {
            (
                k,
                PbValue {
                    kind: Some(Kind::StringValue(v)),
                },
            )
        })),
    }
}

/// Packs a message into an `Any` with its canonical type URL.
pub fn any<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

/// `ip:port` as an Envoy address.
pub fn socket_address(ip: &str, port: u32) -> Address {
    Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

/// "Fetch this over the ADS stream."
pub fn ads_config_source() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

/// "Fetch this from the gRPC server behind `cluster`" (a static cluster of the bootstrap).
pub fn grpc_config_source(cluster: &str) -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::ApiConfigSource(ApiConfigSource {
            api_type: api_config_source::ApiType::Grpc as i32,
            transport_api_version: ApiVersion::V3 as i32,
            grpc_services: vec![GrpcService {
                target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                    grpc_service::EnvoyGrpc {
                        cluster_name: cluster.to_string(),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }],
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn connect_timeout() -> Option<Duration> {
    Some(Duration {
        seconds: 5,
        nanos: 0,
    })
}

/// A cluster whose endpoints come over ADS (EDS).
pub fn eds_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.to_string(),
        connect_timeout: connect_timeout(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads_config_source()),
            service_name: String::new(),
        }),
        ..Default::default()
    }
}

/// A cluster sending each connection to its original destination (transparent proxying).
pub fn original_destination_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.to_string(),
        connect_timeout: connect_timeout(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(
            DiscoveryType::OriginalDst as i32,
        )),
        lb_policy: envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy::ClusterProvided
            as i32,
        ..Default::default()
    }
}

/// A cluster with fixed endpoints.
pub fn static_cluster(name: &str, endpoints: &[(String, u32)]) -> Cluster {
    Cluster {
        name: name.to_string(),
        connect_timeout: connect_timeout(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        load_assignment: Some(load_assignment(name, endpoints)),
        ..Default::default()
    }
}

/// The endpoints of a cluster.
pub fn load_assignment(cluster: &str, endpoints: &[(String, u32)]) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: cluster.to_string(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: endpoints
                .iter()
                .map(|(ip, port)| LbEndpoint {
                    host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket_address(ip, *port)),
                        ..Default::default()
                    })),
                    ..Default::default()
                })
                .collect(),
            // gRPC's xDS client drops localities without a weight; Envoy ignores it unless
            // locality-weighted balancing is on.
            load_balancing_weight: Some(UInt32Value { value: 1 }),
            locality: Some(envoy_types::pb::envoy::config::core::v3::Locality::default()),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A listener on `ip:port` (filter chains are added by the caller).
pub fn listener(name: &str, ip: &str, port: u32, direction: TrafficDirection) -> Listener {
    Listener {
        name: name.to_string(),
        address: Some(socket_address(ip, port)),
        traffic_direction: direction as i32,
        ..Default::default()
    }
}

/// TCP proxying to `cluster`.
pub fn tcp_proxy(stat_prefix: &str, cluster: &str) -> TcpProxy {
    TcpProxy {
        stat_prefix: stat_prefix.to_string(),
        cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.to_string())),
        ..Default::default()
    }
}

/// An HTTP connection manager (filters and routes are added by the caller).
pub fn http_connection_manager(stat_prefix: &str) -> HttpConnectionManager {
    HttpConnectionManager {
        stat_prefix: stat_prefix.to_string(),
        codec_type: CodecType::Auto as i32,
        ..Default::default()
    }
}

/// A route table with one virtual host answering every domain.
pub fn route_table(name: &str, virtual_host: &str, routes: Vec<Route>) -> RouteConfiguration {
    RouteConfiguration {
        name: name.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: virtual_host.to_string(),
            domains: vec!["*".to_string()],
            routes,
            ..Default::default()
        }],
        validate_clusters: Some(BoolValue { value: false }),
        ..Default::default()
    }
}

/// Requests whose path matches `path` go to `cluster`.
pub fn cluster_route(path: PathSpecifier, cluster: &str) -> Route {
    Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(path),
            ..Default::default()
        }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(RouteCluster::Cluster(cluster.to_string())),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// A protobuf duration from a std one.
pub fn duration(d: std::time::Duration) -> Duration {
    Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}
