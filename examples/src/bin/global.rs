//! `global`: the global control plane of a multi-zone deployment. It owns meshes, policies
//! and secrets, sends them to every zone over KDS (`multizone.global.kds.grpcPort`, 5685, TLS),
//! and shows what the zones send back (their proxies, insights and zone status). It serves no
//! proxies itself.
//!
//! ```text
//! global [run] [--config-file <path>] [--port-layout default|split]
//! global migrate up [--config-file <path>]
//! ```
//! Configuration as for `standalone`; `KUMA_MODE`, when set, must be `global`.

#[path = "../control_plane.rs"]
mod control_plane;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    control_plane::main(kuma_cp::config::Mode::Global).await
}
