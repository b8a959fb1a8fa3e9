//! The generated files under `src/generated/` are what this crate's definitions produce: the
//! descriptor set of `proto/` (compiled by protox) and the gRPC code of KDS's two services
//! (tonic-build). They are committed so that builds need neither generator; this test
//! regenerates them and fails when they differ. `KDS_REGENERATE=1 cargo test -p kuma-kds --test
//! generated` writes them anew.

use std::path::{Path, PathBuf};

use prost::Message;
use tonic_build::manual::{Builder, Method, Service};

const PROTOS: &[&str] = &[
    "kuma/mesh/v1alpha1/resources.proto",
    "kuma/system/v1alpha1/system.proto",
];

/// Generates every file into `out`.
fn generate(out: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let descriptors = protox::compile(PROTOS, [root.join("proto")]).expect("proto/ compiles");
    std::fs::write(out.join("kuma_specs.bin"), descriptors.encode_to_vec()).expect("write");

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
        .out_dir(out)
        .compile(&[sync, global]);
    // tonic-build names its files after the services.
    for (from, to) in [
        (
            "kuma.mesh.v1alpha1.KDSSyncService.rs",
            "kds_sync_service.rs",
        ),
        (
            "kuma.mesh.v1alpha1.GlobalKDSService.rs",
            "global_kds_service.rs",
        ),
    ] {
        std::fs::rename(out.join(from), out.join(to)).expect("rename");
    }
}

#[test]
fn the_committed_generated_files_are_up_to_date() {
    let committed = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/generated");
    let fresh = std::env::temp_dir().join(format!("kuma-kds-generated-{}", std::process::id()));
    std::fs::create_dir_all(&fresh).expect("temp dir");
    generate(&fresh);
    let regenerate = std::env::var("KDS_REGENERATE").is_ok_and(|v| v == "1");
    for file in [
        "kuma_specs.bin",
        "kds_sync_service.rs",
        "global_kds_service.rs",
    ] {
        let new = std::fs::read(fresh.join(file)).expect("generated");
        if regenerate {
            std::fs::write(committed.join(file), &new).expect("write");
            continue;
        }
        let old = std::fs::read(committed.join(file)).unwrap_or_default();
        assert!(
            old == new,
            "src/generated/{file} is out of date: run KDS_REGENERATE=1 cargo test -p kuma-kds --test generated"
        );
    }
    let _ = std::fs::remove_dir_all(&fresh);
}
