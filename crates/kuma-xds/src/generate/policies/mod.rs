//! One generator per policy type, applying the merged rules of the policy engine
//! ([`kuma_core::rules`]) to what the core generators built. They run in this order: routes
//! first (they add clusters), then what configures clusters, routes and listeners.

mod timeout;

use kuma_core::resource::ResourceType;
use kuma_core::rules::{ProxyRules, Rule};
use serde::de::DeserializeOwned;

use super::ResourceGenerator;

pub use timeout::MeshTimeout;

/// Every policy generator, in the order they apply.
pub fn all() -> Vec<Box<dyn ResourceGenerator>> {
    vec![Box::new(MeshTimeout)]
}

/// The typed conf of `rule`, or an error naming the policies it came from.
fn typed<T: DeserializeOwned>(rtype: ResourceType, rule: &Rule) -> Result<T, String> {
    rule.conf_as().map_err(|e| {
        let names: Vec<&str> = rule.origins.iter().map(|o| o.name.as_str()).collect();
        format!("{rtype} {names:?}: merged conf does not fit: {e}")
    })
}

/// The typed conf for traffic to `service`.
fn to_conf<T: DeserializeOwned>(rules: &ProxyRules, service: &str) -> Result<Option<T>, String> {
    rules
        .to_rule(service)
        .map(|r| typed(rules.rtype, r))
        .transpose()
}

/// The typed conf for traffic into the inbound on `port`.
fn from_conf<T: DeserializeOwned>(rules: &ProxyRules, port: u32) -> Result<Option<T>, String> {
    rules
        .from_rule(port)
        .map(|r| typed(rules.rtype, r))
        .transpose()
}
