//! A control plane in a few lines: Kuma's configuration (YAML file in `KUMA_CONFIG`, `KUMA_*`
//! variables), resources in memory whatever `store.type` says, everything else as configured.
//!
//! ```text
//! KUMA_API_SERVER_HTTP_PORT=15681 cargo run -p kuma-cp --example minimal
//! ```

use std::sync::Arc;

use kuma_cp::{Config, ControlPlane};
use kuma_store::MemoryStore;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = std::env::var("KUMA_CONFIG").ok();
    let config = Config::load(file.as_deref().map(std::path::Path::new), |k| {
        std::env::var(k).ok()
    })?;
    let cp = ControlPlane::builder(config)
        .store(Arc::new(MemoryStore::new()))
        .start()
        .await?;
    for (listener, addr) in cp.listeners() {
        println!("{listener:<50} {addr}");
    }
    tokio::signal::ctrl_c().await?;
    cp.shutdown().await;
    Ok(())
}
