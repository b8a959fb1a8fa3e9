//! kuma-dp's DNS proxy for transparent proxies (on 127.0.0.1:15053 unless `--dns-port` says
//! otherwise, UDP and TCP): `.mesh` names are answered from the records the control plane
//! gives this proxy, everything else is forwarded to the upstream resolver (`--dns-upstream`,
//! else the first `nameserver` of `/etc/resolv.conf`). It is a forwarding
//! [`DnsServer`].
//!
//! The records come as Kuma delivers them: Envoy serves `GET /dns` on the pipe
//! `<workdir>/kuma-mesh-metric-config.sock` (the `_kuma:dynamicconfig` listener), and this
//! proxy polls it every second with `If-None-Match`, rebuilding its zone on a 200.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kuma_dns::server::DnsServer;
use kuma_dns::zone::Zone;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::watch;

/// How often the records are polled.
const POLL: Duration = Duration::from_secs(1);

/// The resolver of `/etc/resolv.conf` (its first `nameserver`, port 53).
pub fn system_upstream() -> Option<SocketAddr> {
    let conf = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    conf.lines().find_map(|l| {
        let ip = l.trim().strip_prefix("nameserver")?.trim();
        Some(SocketAddr::new(ip.parse().ok()?, 53))
    })
}

/// Binds 127.0.0.1:`port` (UDP and TCP) and serves until the returned sender is dropped.
pub async fn start(
    port: u16,
    pipe: PathBuf,
    domain: String,
    upstream: Option<SocketAddr>,
) -> Result<watch::Sender<bool>, String> {
    let zone = Zone::new(&domain, 30);
    let server = match upstream {
        Some(upstream) => DnsServer::forwarding(zone, upstream),
        None => DnsServer::new(zone),
    };
    let (stop, stopped) = watch::channel(false);
    server
        .bind(([127, 0, 0, 1], port).into(), stopped)
        .await
        .map_err(|e| format!("DNS proxy: cannot listen on 127.0.0.1:{port}: {e}"))?;
    tokio::spawn(poll_records(pipe, domain, server));
    Ok(stop)
}

/// Polls Envoy's `/dns` on `pipe` and swaps the zone when the records change.
async fn poll_records(pipe: PathBuf, domain: String, server: Arc<DnsServer>) {
    let mut etag = String::new();
    loop {
        if let Some((tag, body)) = fetch(&pipe, &etag).await {
            match parse_records(&body) {
                Some((ttl, records)) => {
                    server.set_zone(Zone::new(&domain, ttl).with_records(records));
                    etag = tag;
                }
                None => {
                    eprintln!("kuma-dp: DNS records from Envoy do not parse; keeping the last ones")
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `GET /dns` over the pipe: the new tag and body on a 200, `None` otherwise (304, or Envoy
/// not serving yet).
async fn fetch(pipe: &PathBuf, etag: &str) -> Option<(String, String)> {
    let mut s = UnixStream::connect(pipe).await.ok()?;
    let request = format!(
        "GET /dns HTTP/1.1\r\nHost: kuma-dp\r\nIf-None-Match: {etag}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(request.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut raw))
        .await
        .ok()?
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    if head.split_whitespace().nth(1) != Some("200") {
        return None;
    }
    let tag = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("etag")
            .then(|| v.trim().to_string())
    })?;
    Some((tag, body.to_string()))
}

/// Kuma's `{"records": [{"name", "ips"}], "ttl"}`: the TTL and the IPv4 records.
fn parse_records(body: &str) -> Option<(u32, Vec<(String, Ipv4Addr)>)> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let ttl = u32::try_from(v.get("ttl")?.as_u64()?).ok()?;
    let mut records = Vec::new();
    for r in v.get("records")?.as_array()? {
        let name = r.get("name")?.as_str()?;
        for ip in r.get("ips")?.as_array()? {
            if let Some(ip) = ip.as_str().and_then(|s| s.parse().ok()) {
                records.push((name.to_string(), ip));
            }
        }
    }
    Some((ttl, records))
}
