//! `ExternalService`: a service outside the mesh (Kuma's mesh-scoped kind), reached at
//! `networking.address` by the proxies of the mesh, directly or through the zone egress when
//! the mesh says `routing.zoneEgress: true`, optionally with TLS originated by the proxy.

use serde::{Deserialize, Serialize};

use super::common::{
    DataSource, SERVICE_TAG, TagRules, Tags, is_dns_name, is_ip, validate_port, validate_tags,
};
use crate::validation::{Path, ValidationError};

/// The spec of an `ExternalService`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExternalServiceSpec {
    /// Where the service is and how to talk to it.
    pub networking: Option<ExternalServiceNetworking>,
    /// Its tags: `kuma.io/service` names it (what proxies send to), `kuma.io/protocol` says
    /// how to speak to it.
    #[serde(default)]
    pub tags: Tags,
}

/// `networking` of an ExternalService.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExternalServiceNetworking {
    /// `host:port` (a domain name or an IP address).
    #[serde(default)]
    pub address: String,
    /// TLS originated by the proxy that connects out.
    pub tls: Option<ExternalServiceTls>,
    /// Do not give the host a VIP of its own (only `<service>.mesh` resolves).
    #[serde(
        default,
        rename = "disableHostDNSEntry",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub disable_host_dns_entry: bool,
}

/// `networking.tls` of an ExternalService.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExternalServiceTls {
    /// Originate TLS.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enabled: bool,
    /// The CA the server's certificate must chain to (without it the server is not verified,
    /// as in Kuma).
    pub ca_cert: Option<DataSource>,
    /// A client certificate to present (with `clientKey`).
    pub client_cert: Option<DataSource>,
    /// The client certificate's key.
    pub client_key: Option<DataSource>,
    /// Let the server renegotiate.
    pub allow_renegotiation: Option<bool>,
    /// The SNI to send and the name the certificate must carry (default: the address's host,
    /// when it is a domain name).
    pub server_name: Option<String>,
    /// Accept a certificate for another name (still one the CA signed).
    pub skip_hostname_verification: Option<bool>,
}

impl ExternalServiceSpec {
    /// The service it provides (`kuma.io/service`).
    pub fn service(&self) -> Option<&str> {
        self.tags.get(SERVICE_TAG).map(String::as_str)
    }

    /// `networking.address` split into host and port, when it parses.
    pub fn host_port(&self) -> Option<(&str, u32)> {
        split_host_port(&self.networking.as_ref()?.address)
    }

    /// The TLS to originate, when enabled.
    pub fn tls(&self) -> Option<&ExternalServiceTls> {
        self.networking
            .as_ref()?
            .tls
            .as_ref()
            .filter(|tls| tls.enabled)
    }

    /// Checks the ExternalService as Kuma does.
    pub fn validate(&self) -> ValidationError {
        let mut err = ValidationError::new();
        let net_path = Path::at("networking");
        match &self.networking {
            None => err.add(&net_path, "should have networking"),
            Some(net) => validate_networking(&net_path, net, &mut err),
        }
        let tags_path = Path::at("tags");
        validate_tags(
            &tags_path,
            &self.tags,
            TagRules {
                require_service: true,
                require_one: true,
                selector: false,
            },
            &mut err,
        );
        super::dataplane::validate_protocol_tag(&tags_path, &self.tags, &mut err);
        if let (Some(service), Some((host, _))) = (self.service(), self.host_port())
            && service == host
        {
            err.add(
                &tags_path.key(SERVICE_TAG),
                "cannot be the same as networking.address",
            );
        }
        err
    }
}

fn validate_networking(path: &Path, net: &ExternalServiceNetworking, err: &mut ValidationError) {
    let address = path.field("address");
    if net.address.is_empty() {
        err.add(&address, "address can't be empty");
    } else {
        match split_host_port(&net.address) {
            None => err.add(&address, "unable to parse address: it must be host:port"),
            Some((host, port)) => {
                if !is_ip(host) && !is_dns_name(host) {
                    err.add(
                        &address,
                        "address has to be a valid IP address or a domain name",
                    );
                }
                validate_port(&address, port, err);
            }
        }
    }
    let Some(tls) = &net.tls else {
        return;
    };
    let tls_path = path.field("tls");
    if tls.server_name.as_deref() == Some("") {
        err.add(&tls_path.field("serverName"), "cannot be empty");
    }
    for (field, source) in [
        ("caCert", &tls.ca_cert),
        ("clientCert", &tls.client_cert),
        ("clientKey", &tls.client_key),
    ] {
        if let Some(source) = source {
            source.validate(&tls_path.field(field), err);
        }
    }
    if tls.client_cert.is_some() != tls.client_key.is_some() {
        err.add(&tls_path, "clientCert and clientKey must be given together");
    }
}

/// `host:port` (IPv6 hosts in brackets) into its parts; `None` when it is not that.
fn split_host_port(address: &str) -> Option<(&str, u32)> {
    let (host, port) = address.rsplit_once(':')?;
    let host = match host.strip_prefix('[') {
        Some(inner) => inner.strip_suffix(']')?,
        None if host.contains(':') => return None,
        None => host,
    };
    if host.is_empty() || port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((host, port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::resource::parse_yaml;

    fn violations(yaml: &str) -> Vec<(String, String)> {
        let spec: ExternalServiceSpec = serde_norway::from_str(yaml).unwrap();
        spec.validate()
            .violations()
            .iter()
            .map(|v| (v.field.clone(), v.message.clone()))
            .collect()
    }

    #[test]
    fn a_valid_external_service_parses_and_tells_its_parts() {
        let r = parse_yaml(
            "type: ExternalService\nmesh: default\nname: httpbin\nnetworking:\n  address: httpbin.org:443\n  tls:\n    enabled: true\n    serverName: httpbin.org\n    caCert: {inlineString: abc}\ntags:\n  kuma.io/service: httpbin\n  kuma.io/protocol: http\n",
        )
        .unwrap();
        let spec = r.spec_as::<ExternalServiceSpec>().unwrap();
        assert_eq!(spec.service(), Some("httpbin"));
        assert_eq!(spec.host_port(), Some(("httpbin.org", 443)));
        assert!(spec.tls().is_some());
        assert!(spec.validate().is_empty());
        let v6 =
            violations("networking: {address: \"[fd00::1]:8080\"}\ntags: {kuma.io/service: v6}\n");
        assert!(v6.is_empty(), "{v6:?}");
    }

    #[test]
    fn bad_external_services_name_the_field() {
        let v = violations("tags: {kuma.io/service: a}\n");
        assert_eq!(v, [("networking".into(), "should have networking".into())]);
        let v = violations("networking: {address: httpbin.org}\ntags: {kuma.io/service: a}\n");
        assert_eq!(v[0].0, "networking.address");
        let v = violations("networking: {address: \"bad host:80\"}\ntags: {kuma.io/service: a}\n");
        assert_eq!(v[0].0, "networking.address");
        let v = violations("networking: {address: \"a.b:0\"}\ntags: {kuma.io/service: a}\n");
        assert_eq!(v[0].0, "networking.address");
        let v = violations("networking: {address: \"a.b:80\"}\ntags: {version: v1}\n");
        assert_eq!(v[0].0, "tags");
        let v = violations(
            "networking: {address: \"a.b:80\"}\ntags: {kuma.io/service: a, kuma.io/protocol: smtp}\n",
        );
        assert_eq!(v[0].0, "tags[\"kuma.io/protocol\"]");
        let v = violations("networking: {address: \"a.b:80\"}\ntags: {kuma.io/service: a.b}\n");
        assert_eq!(v[0].0, "tags[\"kuma.io/service\"]");
        let v = violations(
            "networking:\n  address: a.b:80\n  tls: {enabled: true, serverName: \"\", clientCert: {secret: c}}\ntags: {kuma.io/service: a}\n",
        );
        let fields: Vec<&str> = v.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["networking.tls.serverName", "networking.tls"]);
    }
}
