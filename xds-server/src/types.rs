//! Type URLs of the xDS resource types, in the order a server must push them.

/// Clusters (CDS).
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// Endpoints (EDS).
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// Listeners (LDS).
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// Route configurations (RDS).
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// Secrets (SDS).
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// Push order honouring Envoy's warming rules: clusters before their endpoints, listeners
/// before their routes; types not listed here go last, in name order.
pub const PUSH_ORDER: &[&str] = &[CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET];

/// Position of `type_url` in [`PUSH_ORDER`] (unknown types after known ones).
pub fn push_rank(type_url: &str) -> usize {
    PUSH_ORDER
        .iter()
        .position(|t| *t == type_url)
        .unwrap_or(PUSH_ORDER.len())
}

/// `type_urls` sorted for pushing: [`PUSH_ORDER`] first, other types after, by name.
pub fn in_push_order<'a>(type_urls: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    let mut sorted: Vec<String> = type_urls.into_iter().cloned().collect();
    sorted.sort_by_key(|t| (push_rank(t), t.clone()));
    sorted
}
