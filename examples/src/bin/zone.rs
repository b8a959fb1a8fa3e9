//! `zone`: a zone control plane of a multi-zone deployment. It serves its zone's proxies as
//! `standalone` does (same ports, same layouts) and, with `multizone.zone.globalAddress`
//! (`KUMA_MULTIZONE_ZONE_GLOBAL_ADDRESS`, e.g. `grpcs://global:5685`), syncs with global: the
//! leader instance receives meshes, policies and secrets, and sends up its proxies, insights
//! and zone-written policies. Its name is `multizone.zone.name` (`KUMA_MULTIZONE_ZONE_NAME`).
//!
//! ```text
//! zone [run] [--config-file <path>] [--port-layout default|split]
//! zone migrate up [--config-file <path>]
//! ```
//! Configuration as for `standalone`; `KUMA_MODE`, when set, must be `zone`.

#[path = "../control_plane.rs"]
mod control_plane;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    control_plane::main(kuma_cp::config::Mode::Zone).await
}
