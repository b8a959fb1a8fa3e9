//! `standalone`: a single-zone Kuma-compatible control plane.
//!
//! ```text
//! standalone [run] [--config-file <path>] [--port-layout default|split]
//! standalone migrate up [--config-file <path>]
//! ```
//! `--port-layout split` gives SDS, the admin server, the bootstrap server and the GUI ports of
//! their own, as Kuma 0.6/0.7 did (the `portLayout` key, `KUMA_PORT_LAYOUT`).
//! `migrate up` brings the PostgreSQL schema (`store.type: postgres`) to this binary's version;
//! `run` refuses a database whose schema is older or newer.
//! Configuration: defaults, then the file (Kuma's `kuma-cp.defaults.yaml` keys), then `KUMA_*`
//! environment variables. Stops cleanly on SIGINT or SIGTERM.

#[path = "../control_plane.rs"]
mod control_plane;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    control_plane::main(kuma_cp::config::Mode::Standalone).await
}
