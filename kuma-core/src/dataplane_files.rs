//! Files a proxy's Envoy and its kuma-dp share in kuma-dp's work directory, named as Kuma names
//! them: the config generator points Envoy at them, the agent opens them.

/// The pipe on which a proxy's Envoy serves kuma-dp its dynamic configuration (the DNS
/// records at `/dns`), as Kuma names it: `<workdir>/kuma-mesh-metric-config.sock`.
pub fn dynamic_config_pipe(workdir: &str) -> String {
    std::path::Path::new(workdir)
        .join("kuma-mesh-metric-config.sock")
        .to_string_lossy()
        .into_owned()
}

/// The named pipe kuma-dp reads access logs for TCP collectors from, as Kuma names it:
/// `<workdir>/kuma-al-<name>-<mesh>`, cut to 98 bytes (Unix socket paths are short on some
/// systems), then `.sock`.
pub fn access_log_pipe(workdir: &str, name: &str, mesh: &str) -> String {
    let mut path = std::path::Path::new(workdir)
        .join(format!("kuma-al-{name}-{mesh}"))
        .to_string_lossy()
        .into_owned();
    let mut cut = path.len().min(98);
    while !path.is_char_boundary(cut) {
        cut -= 1;
    }
    path.truncate(cut);
    path.push_str(".sock");
    path
}
