//! The `dnsServer` section of the control-plane configuration (Kuma's keys,
//! `KUMA_DNS_SERVER_*`).

use kuma_core::validation::{Path, ValidationError};
use serde::{Deserialize, Serialize};

/// `dnsServer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DnsServerConfig {
    /// The domain answered for (`mesh`).
    pub domain: String,
    /// UDP port.
    pub port: u16,
    /// Range VIPs are taken from.
    #[serde(rename = "CIDR")]
    pub cidr: String,
    /// Give services VIPs.
    pub service_vip_enabled: bool,
    /// Port on the VIPs.
    pub service_vip_port: u16,
    /// TTL of the answers, in seconds.
    pub ttl: u32,
}

impl Default for DnsServerConfig {
    fn default() -> Self {
        DnsServerConfig {
            domain: "mesh".into(),
            port: 5653,
            cidr: "240.0.0.0/4".into(),
            service_vip_enabled: true,
            service_vip_port: 80,
            ttl: 60,
        }
    }
}

impl DnsServerConfig {
    /// Adds what is wrong with the section, under `at` (the section's key), to `err`: the
    /// domain must be set and `CIDR` must be an IPv4 range.
    pub fn validate(&self, at: &Path, err: &mut ValidationError) {
        if self.domain.is_empty() {
            err.add(&at.field("domain"), "must not be empty");
        }
        if self.cidr.parse::<ipnet::Ipv4Net>().is_err() {
            err.add(
                &at.field("CIDR"),
                format!("{:?} is not an IPv4 CIDR", self.cidr),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_key_that_is_wrong() {
        let mut c = DnsServerConfig::default();
        let mut err = ValidationError::new();
        c.validate(&Path::at("dnsServer"), &mut err);
        assert!(err.is_empty(), "{err}");
        c.cidr = "fd00::/8".into();
        c.domain.clear();
        c.validate(&Path::at("dnsServer"), &mut err);
        let fields: Vec<_> = err.violations().iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["dnsServer.domain", "dnsServer.CIDR"]);
    }
}
