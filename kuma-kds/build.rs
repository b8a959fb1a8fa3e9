//! Compiles the Kuma spec messages (`proto/`) into a descriptor set, and generates the gRPC
//! client and server code of KDS's two services.

use std::error::Error;
use std::path::PathBuf;

use prost::Message;
use tonic_build::manual::{Builder, Method, Service};

const PROTOS: &[&str] = &[
    "kuma/mesh/v1alpha1/resources.proto",
    "kuma/system/v1alpha1/system.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    std::fs::write(out.join("kuma_specs.bin"), descriptors.encode_to_vec())?;

    let delta_request = "::envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest";
    let delta_response = "::envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse";
    let codec = "::tonic_prost::ProstCodec";
    let streaming = |name: &str, route: &str, input: &str, output: &str| {
        Method::builder()
            .name(name)
            .route_name(route)
            .input_type(input)
            .output_type(output)
            .codec_path(codec)
            .client_streaming()
            .server_streaming()
            .build()
    };
    let sync = Service::builder()
        .name("KDSSyncService")
        .package("kuma.mesh.v1alpha1")
        .comment("Resource sync between global and a zone, both ways, as Envoy delta xDS.")
        .method(streaming(
            "global_to_zone_sync",
            "GlobalToZoneSync",
            delta_request,
            delta_response,
        ))
        .method(streaming(
            "zone_to_global_sync",
            "ZoneToGlobalSync",
            delta_response,
            delta_request,
        ))
        .build();
    let global = Service::builder()
        .name("GlobalKDSService")
        .package("kuma.mesh.v1alpha1")
        .comment("Global's side services for zones: the health check.")
        .method(
            Method::builder()
                .name("health_check")
                .route_name("HealthCheck")
                .input_type("crate::grpc::ZoneHealthCheckRequest")
                .output_type("crate::grpc::ZoneHealthCheckResponse")
                .codec_path(codec)
                .build(),
        )
        .build();
    Builder::new()
        .build_client(true)
        .build_server(true)
        .compile(&[sync, global]);
    Ok(())
}
