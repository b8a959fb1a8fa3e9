//! A control plane whose proxies get one more thing than Kuma gives them: every HTTP response
//! of a proxy's inbounds carries `x-served-by: <mesh>/<dataplane>`. Config generation is a list
//! of generators; this adds one after Kuma's own, through the builder.
//!
//! ```text
//! cargo run -p kuma-cp --example custom_generator
//! ```

use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use kuma_cp::{Config, ControlPlane};
use kuma_xds::generate::{BoxError, GeneratorList, ProxyContext, ResourceGenerator, ResourceSet};

/// Adds `x-served-by` to the responses of every HTTP inbound.
pub struct ServedBy;

impl ResourceGenerator for ServedBy {
    fn name(&self) -> &str {
        "served-by"
    }

    fn apply(&self, ctx: &ProxyContext<'_>, resources: &mut ResourceSet) -> Result<(), BoxError> {
        let value = format!("{}/{}", ctx.mesh.mesh, ctx.name);
        let inbounds: Vec<String> = resources
            .inbounds
            .iter()
            .map(|i| i.listener.clone())
            .collect();
        for name in inbounds {
            if let Some(http) = resources
                .listeners
                .get_mut(&name)
                .and_then(|l| l.http_mut())
            {
                http.route.response_headers_to_add.push(HeaderValueOption {
                    header: Some(HeaderValue {
                        key: "x-served-by".into(),
                        value: value.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
            }
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::load(None, |k| std::env::var(k).ok())?;
    let cp = ControlPlane::builder(config)
        .generator(GeneratorList::kuma_profile().with(ServedBy))
        .start()
        .await?;
    println!(
        "control plane with the served-by generator; dp-server on {:?}",
        cp.dp_server_addr()
    );
    tokio::signal::ctrl_c().await?;
    cp.shutdown().await;
    Ok(())
}
