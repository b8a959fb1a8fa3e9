//! KDS's gRPC services, generated from their definitions in the build script:
//! `kuma.mesh.v1alpha1.KDSSyncService` (the two sync streams) and
//! `kuma.mesh.v1alpha1.GlobalKDSService` (the zone health check).

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// `kuma.mesh.v1alpha1.ZoneHealthCheckRequest`: a zone's ping.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct ZoneHealthCheckRequest {}

/// `kuma.mesh.v1alpha1.ZoneHealthCheckResponse`: how often global wants the pings.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct ZoneHealthCheckResponse {
    /// `interval`.
    #[prost(message, optional, tag = "1")]
    pub interval: Option<envoy_types::pb::google::protobuf::Duration>,
}

include!(concat!(
    env!("OUT_DIR"),
    "/kuma.mesh.v1alpha1.KDSSyncService.rs"
));
include!(concat!(
    env!("OUT_DIR"),
    "/kuma.mesh.v1alpha1.GlobalKDSService.rs"
));

pub use global_k_d_s_service_client as global_kds_service_client;
pub use global_k_d_s_service_server as global_kds_service_server;
pub use k_d_s_sync_service_client as kds_sync_service_client;
pub use k_d_s_sync_service_server as kds_sync_service_server;
