//! Which server listens where, as data: a [`Layout`] lists the control plane's listeners, each
//! with its address, its TLS, its limits and the services it serves. The configured port
//! layouts ([`Layout::from_config`]: Kuma's current one and the older split one) are two values
//! of it; another mode is another value, not another branch of the start-up code.

use crate::config::{Config, Mode, PortLayout};

/// The name of the split layout's GUI listener.
pub const GUI_SERVER: &str = "GUI server";
/// The name of the API's plain-HTTP listener.
pub const API_HTTP: &str = "API (HTTP)";
/// The name of the API's HTTPS listener.
pub const API_HTTPS: &str = "API (HTTPS)";

/// A logical service of the control plane, mounted on one of the layout's listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    /// `/ready`, `/healthy` and `/metrics`.
    Diagnostics,
    /// ADS (gRPC, state of the world and delta), secrets included unless [`Service::Sds`] is
    /// served on a listener of its own.
    Ads,
    /// `envoy.service.secret.v3.SecretDiscoveryService` alone.
    Sds,
    /// `POST /bootstrap`.
    Bootstrap,
    /// The HTTP API and the GUI. `tokens`: it issues dataplane tokens; `catalog`: it serves
    /// `/catalog` naming the other listeners.
    Api {
        /// Only reads are allowed.
        read_only: bool,
        /// `POST /tokens/dataplane` is served here.
        tokens: bool,
        /// `/catalog` is served here.
        catalog: bool,
    },
    /// The admin server: tokens and secrets (the split layout's localhost port).
    Admin,
    /// MADS: monitoring assignments for Prometheus.
    Mads,
    /// The Kubernetes admission webhook.
    Admission,
    /// KDS: zones' sync streams and health checks (global only).
    Kds,
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Service::Diagnostics => f.write_str("/ready /healthy /metrics"),
            Service::Ads => f.write_str("ADS (gRPC)"),
            Service::Sds => f.write_str("SDS (gRPC)"),
            Service::Bootstrap => f.write_str("POST /bootstrap"),
            Service::Api {
                read_only: true, ..
            } => f.write_str("read-only API, GUI at /gui"),
            Service::Api { .. } => f.write_str("API (kumactl), GUI at /gui"),
            Service::Admin => f.write_str("tokens, secrets"),
            Service::Mads => f.write_str("MADS (Prometheus kuma_sd_configs)"),
            Service::Admission => f.write_str("admission webhook (AdmissionReview)"),
            Service::Kds => f.write_str("KDS (gRPC, zones connect here)"),
        }
    }
}

impl std::fmt::Display for Listener {
    /// What the listener is, as `standalone` lists it: `dp-server (TLS): ADS (gRPC)`, say.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tls = !matches!(self.tls, Tls::Plain);
        match self.services.as_slice() {
            [Service::Diagnostics] => f.write_str("diagnostics: /ready /healthy"),
            [Service::Ads, Service::Bootstrap] => {
                f.write_str("dp-server (TLS): ADS + SDS (gRPC), POST /bootstrap")
            }
            [Service::Ads] => f.write_str("dp-server (TLS): ADS (gRPC)"),
            [Service::Sds] => f.write_str("SDS (TLS, gRPC)"),
            [Service::Bootstrap] => f.write_str("bootstrap server (HTTP): POST /bootstrap"),
            [Service::Admin] => f.write_str("admin server (HTTP): tokens, secrets"),
            [
                Service::Api {
                    read_only: true, ..
                },
            ] if self.name == GUI_SERVER => f.write_str("GUI server: /gui, read-only API"),
            [Service::Api { .. }] if tls => f.write_str("HTTPS API"),
            [Service::Api { .. }] => f.write_str("HTTP API (kumactl)"),
            [Service::Mads] => f.write_str("MADS (Prometheus kuma_sd_configs)"),
            [Service::Admission] => f.write_str("admission webhook (HTTPS, AdmissionReview)"),
            [Service::Kds] if tls => f.write_str("KDS (TLS): zone sync (gRPC)"),
            [Service::Kds] => f.write_str("KDS: zone sync (gRPC)"),
            services => {
                write!(f, "{}{}: ", self.name, if tls { " (TLS)" } else { "" })?;
                for (i, service) in services.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{service}")?;
                }
                Ok(())
            }
        }
    }
}

/// Which certificate a listener serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    /// Plain TCP.
    Plain,
    /// The files' certificate, or the control plane's own when `cert_file` is empty.
    Files {
        /// PEM certificate chain.
        cert_file: String,
        /// PEM private key.
        key_file: String,
    },
}

impl Tls {
    /// The control plane's own certificate.
    pub fn ours() -> Self {
        Tls::Files {
            cert_file: String::new(),
            key_file: String::new(),
        }
    }
}

/// Which timeouts a listener follows: the API's, or the dp-server's (for ports proxies use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peers {
    /// Users, tools and Prometheus: `apiServer` timeouts.
    Users,
    /// Data-plane proxies: `dpServer` timeouts.
    Proxies,
}

/// One TCP listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// What the logs and bind errors call it.
    pub name: &'static str,
    /// The interface to bind (`0.0.0.0` for all).
    pub interface: String,
    /// The port (0: any free one).
    pub port: u16,
    /// Its TLS.
    pub tls: Tls,
    /// Whose timeouts it follows.
    pub peers: Peers,
    /// What it serves; their routes are merged.
    pub services: Vec<Service>,
}

/// The control plane's listeners, bound in order: a listener's routes may name the addresses
/// of the ones before it (the split layout's `/catalog` does). DNS (UDP and TCP) is a listener
/// of its own kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The TCP listeners.
    pub listeners: Vec<Listener>,
    /// The DNS server's interface and port (`None`: no DNS server).
    pub dns: Option<(String, u16)>,
}

impl Layout {
    /// The layout `config` asks for: its mode, `portLayout`, and which optional servers are
    /// enabled.
    pub fn from_config(config: &Config) -> Layout {
        let split = config.port_layout == PortLayout::Split;
        let proxies = config.mode != Mode::Global;
        let any = |port: u16| ("0.0.0.0".to_string(), port);
        let listener = |name, (interface, port): (String, u16), tls, peers, services| Listener {
            name,
            interface,
            port,
            tls,
            peers,
            services,
        };
        let mut listeners = vec![listener(
            "diagnostics",
            any(config.diagnostics.server_port),
            Tls::Plain,
            Peers::Users,
            vec![Service::Diagnostics],
        )];
        if !proxies {
            let kds = &config.multizone.global.kds;
            let tls = if kds.tls_enabled {
                Tls::Files {
                    cert_file: kds.tls_cert_file.clone(),
                    key_file: kds.tls_key_file.clone(),
                }
            } else {
                Tls::Plain
            };
            listeners.push(listener(
                "KDS",
                any(kds.grpc_port),
                tls,
                Peers::Proxies,
                vec![Service::Kds],
            ));
        }
        if proxies && split {
            listeners.push(listener(
                "SDS",
                any(config.sds_server.grpc_port),
                Tls::ours(),
                Peers::Proxies,
                vec![Service::Sds],
            ));
            listeners.push(listener(
                "bootstrap server",
                any(config.bootstrap_server.port),
                Tls::Plain,
                Peers::Proxies,
                vec![Service::Bootstrap],
            ));
        }
        if proxies {
            let mut services = vec![Service::Ads];
            if !split {
                services.push(Service::Bootstrap);
            }
            listeners.push(listener(
                "dp-server",
                any(config.dp_server.port),
                Tls::ours(),
                Peers::Proxies,
                services,
            ));
        }
        let m = &config.monitoring_assignment_server;
        if proxies && m.enabled {
            let tls = if m.tls_enabled {
                Tls::Files {
                    cert_file: m.tls_cert_file.clone(),
                    key_file: m.tls_key_file.clone(),
                }
            } else {
                Tls::Plain
            };
            listeners.push(listener(
                "MADS",
                any(m.port),
                tls,
                Peers::Users,
                vec![Service::Mads],
            ));
        }
        let api = &config.api_server;
        let read_only = api.read_only;
        if split {
            listeners.push(listener(
                "admin server",
                ("127.0.0.1".into(), config.admin_server.local.port),
                Tls::Plain,
                Peers::Users,
                vec![Service::Admin],
            ));
            let gui = Service::Api {
                read_only: true,
                tokens: false,
                catalog: false,
            };
            listeners.push(listener(
                GUI_SERVER,
                any(config.gui_server.port),
                Tls::Plain,
                Peers::Users,
                vec![gui],
            ));
        }
        let main_api = Service::Api {
            read_only,
            tokens: !split,
            catalog: split,
        };
        if api.http.enabled {
            listeners.push(listener(
                API_HTTP,
                (api.http.interface.clone(), api.http.port),
                Tls::Plain,
                Peers::Users,
                vec![main_api],
            ));
        }
        if config.serves_https_api() {
            listeners.push(listener(
                API_HTTPS,
                (api.https.interface.clone(), api.https.port),
                Tls::Files {
                    cert_file: api.https.tls_cert_file.clone(),
                    key_file: api.https.tls_key_file.clone(),
                },
                Peers::Users,
                vec![main_api],
            ));
        }
        let a = &config.runtime.kubernetes.admission_server;
        if a.enabled {
            let file = |f: &str| match a.cert_dir.as_str() {
                "" => String::new(),
                dir => std::path::Path::new(dir)
                    .join(f)
                    .to_string_lossy()
                    .into_owned(),
            };
            listeners.push(listener(
                "admission webhook",
                (a.address.clone(), a.port),
                Tls::Files {
                    cert_file: file("tls.crt"),
                    key_file: file("tls.key"),
                },
                Peers::Users,
                vec![Service::Admission],
            ));
        }
        let dns = proxies.then(|| any(config.dns_server.port));
        Layout { listeners, dns }
    }

    /// Whether some listener serves `service`.
    pub fn serves(&self, service: Service) -> bool {
        self.listener_of(service).is_some()
    }

    /// The listener serving `service`.
    pub fn listener_of(&self, service: Service) -> Option<&Listener> {
        self.listeners
            .iter()
            .find(|l| l.services.contains(&service))
    }

    /// Whether secrets have a listener of their own, apart from ADS.
    pub fn sds_apart(&self) -> bool {
        match (
            self.listener_of(Service::Sds),
            self.listener_of(Service::Ads),
        ) {
            (Some(sds), Some(ads)) => sds.name != ads.name,
            (Some(_), None) => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(layout: &Layout) -> Vec<&str> {
        layout.listeners.iter().map(|l| l.name).collect()
    }

    #[test]
    fn the_default_layout_serves_ads_and_the_bootstrap_on_one_tls_port() {
        let config = Config::default();
        let layout = Layout::from_config(&config);
        let dp = layout.listener_of(Service::Ads).expect("ADS is served");
        assert_eq!(dp.port, 5678);
        assert_eq!(dp.services, vec![Service::Ads, Service::Bootstrap]);
        assert_eq!(dp.tls, Tls::ours());
        assert!(!layout.sds_apart());
        assert_eq!(
            names(&layout),
            [
                "diagnostics",
                "dp-server",
                "MADS",
                "API (HTTP)",
                "API (HTTPS)"
            ]
        );
        assert_eq!(layout.dns, Some(("0.0.0.0".into(), 5653)));
    }

    #[test]
    fn the_split_layout_gives_sds_bootstrap_admin_and_gui_ports_of_their_own() {
        let config = Config {
            port_layout: PortLayout::Split,
            ..Config::default()
        };
        let layout = Layout::from_config(&config);
        assert!(layout.sds_apart());
        assert_eq!(layout.listener_of(Service::Sds).map(|l| l.port), Some(5677));
        assert_eq!(
            layout
                .listener_of(Service::Bootstrap)
                .map(|l| (l.port, &l.tls)),
            Some((5682, &Tls::Plain))
        );
        assert_eq!(
            layout
                .listener_of(Service::Admin)
                .map(|l| (l.interface.as_str(), l.port)),
            Some(("127.0.0.1", 5679))
        );
        // The API comes after the listeners its catalog names.
        let api = names(&layout)
            .iter()
            .position(|n| *n == "API (HTTP)")
            .expect("the API is served");
        let admin = names(&layout)
            .iter()
            .position(|n| *n == "admin server")
            .expect("the admin server is served");
        assert!(admin < api);
        assert!(!names(&layout).contains(&"API (HTTPS)"));
    }

    #[test]
    fn global_mode_serves_kds_and_no_proxy_facing_port() {
        let config = Config {
            mode: Mode::Global,
            ..Config::default()
        };
        let layout = Layout::from_config(&config);
        assert!(!layout.serves(Service::Ads));
        assert!(!layout.serves(Service::Mads));
        assert_eq!(layout.dns, None);
        let kds = layout.listener_of(Service::Kds).expect("KDS is served");
        assert_eq!((kds.port, &kds.tls), (5685, &Tls::ours()));
    }
}
