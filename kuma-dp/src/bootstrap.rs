//! Getting the Envoy bootstrap from the control plane: where it is ([`cp_address`]),
//! `POST /bootstrap` ([`fetch`]) with Kuma's request ([`kuma_core::bootstrap::BootstrapRequest`],
//! the type the server reads), and pinning the control plane's CA in what comes back
//! ([`pin_control_plane_ca`]).

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where the bootstrap comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpAddress {
    /// `https`: the dp-server; plain `http`: the split layout's bootstrap server.
    pub tls: bool,
    /// Host name or IP.
    pub host: String,
    /// Port.
    pub port: u16,
}

/// `https://host[:5678]` or `http://host[:5682]`.
pub fn cp_address(address: &str) -> Result<CpAddress, String> {
    let (tls, rest, default_port) = if let Some(rest) = address.strip_prefix("https://") {
        (true, rest, 5678)
    } else if let Some(rest) = address.strip_prefix("http://") {
        (false, rest, 5682)
    } else {
        return Err(format!(
            "--cp-address {address:?}: expected https://host:port (the dp-server) or http://host:port (the bootstrap server of the split port layout)"
        ));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (
            h,
            p.parse().map_err(|_| format!("bad port in {address:?}"))?,
        ),
        _ => (rest, default_port),
    };
    Ok(CpAddress {
        tls,
        host: host.trim_matches(['[', ']']).to_string(),
        port,
    })
}

/// `POST /bootstrap` with `body` to the control plane at `cp` (over TLS trusting `ca_pem`, or
/// over plain HTTP to the split layout's bootstrap server, found through the API's `/catalog`
/// when `cp` is the API); the bootstrap YAML.
pub async fn fetch(cp: &CpAddress, ca_pem: Option<&str>, body: &str) -> Result<String, String> {
    let (host, port) = (cp.host.as_str(), cp.port);
    let unreachable = |e: String| format!("cannot reach the control plane at {host}:{port}: {e}");
    if cp.tls {
        if ca_pem.is_none() {
            tracing::warn!("no --ca-cert-file: the control plane's certificate is not verified");
        }
        let tls = crate::tls::client_config(ca_pem)?;
        let s = crate::tls::connect(host, port, tls)
            .await
            .map_err(unreachable)?;
        http_post_bootstrap(s, host, port, body).await
    } else {
        tracing::warn!(
            "the bootstrap is fetched over plain HTTP: the dataplane token travels unencrypted"
        );
        if ca_pem.is_none() {
            tracing::warn!(
                "no --ca-cert-file: Envoy will trust whatever CA the plain-HTTP bootstrap names"
            );
        }
        let (host, port) = match catalog_bootstrap(host, port).await {
            Some(at) => {
                tracing::info!(
                    "the API's catalog names the bootstrap server {}:{}",
                    at.host,
                    at.port
                );
                (at.host, at.port)
            }
            None => (host.to_string(), port),
        };
        let s = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        http_post_bootstrap(s, &host, port, body).await
    }
}

/// The bootstrap server the API at `host:port` names in its `/catalog` (split layout), or
/// `None` when `host:port` is no API with a catalog (the bootstrap server itself, say).
async fn catalog_bootstrap(host: &str, port: u16) -> Option<CpAddress> {
    let s = TcpStream::connect((host, port)).await.ok()?;
    let (status, response) = http_exchange(s, "GET", "/catalog", host, port, "")
        .await
        .ok()?;
    if status != "200" {
        return None;
    }
    let catalog: serde_json::Value = serde_json::from_str(&response).ok()?;
    let at = cp_address(catalog.pointer("/apis/bootstrap/url")?.as_str()?).ok()?;
    (!at.tls).then_some(at)
}

/// `POST /bootstrap` over `s` (TLS or plain), returning the response body.
async fn http_post_bootstrap<S>(s: S, host: &str, port: u16, body: &str) -> Result<String, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (status, body) = http_exchange(s, "POST", "/bootstrap", host, port, body).await?;
    if status != "200" {
        return Err(format!(
            "the control plane refused the bootstrap ({status}): {body}"
        ));
    }
    Ok(body)
}

/// One HTTP/1.1 `method path` over `s` with a JSON `body`: the response's status and body.
async fn http_exchange<S>(
    mut s: S,
    method: &str,
    path: &str,
    host: &str,
    port: u16,
    body: &str,
) -> Result<(String, String), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    // The server may close without a TLS close_notify; what was read is still complete.
    if let Err(e) = s.read_to_end(&mut out).await
        && out.is_empty()
    {
        return Err(e.to_string());
    }
    let out = String::from_utf8_lossy(&out);
    let (head, body) = out
        .split_once("\r\n\r\n")
        .ok_or("malformed response from the control plane")?;
    let status = head.split_whitespace().nth(1).unwrap_or("?").to_string();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Err("unexpected chunked response from the control plane".into());
    }
    Ok((status, body.to_string()))
}

/// Makes every TLS connection of a bootstrap (`yaml`, as the bootstrap server returns it) to
/// the control plane trust `ca_pem` alone: what kuma-dp does with its `--ca-cert-file`, so a
/// bootstrap fetched over plain HTTP (the split layout's bootstrap server) cannot point Envoy
/// at a control plane the agent does not trust. A static cluster without TLS (every static
/// cluster of a bootstrap reaches the control plane) is refused: over plain HTTP, TLS could
/// have been stripped. Returns the rewritten bootstrap.
pub fn pin_control_plane_ca(yaml: &str, ca_pem: &str) -> Result<String, String> {
    let mut bootstrap: Value =
        serde_norway::from_str(yaml).map_err(|e| format!("the bootstrap is not YAML: {e}"))?;
    if let Some(clusters) = bootstrap
        .pointer_mut("/static_resources/clusters")
        .and_then(Value::as_array_mut)
    {
        for cluster in clusters {
            let name = cluster["name"].as_str().unwrap_or("?").to_string();
            let Some(ca) = cluster
                .pointer_mut("/transport_socket/typed_config/common_tls_context/validation_context")
                .and_then(Value::as_object_mut)
            else {
                return Err(format!(
                    "the bootstrap's cluster {name:?} reaches the control plane without verifying its certificate"
                ));
            };
            ca.insert("trusted_ca".into(), json!({"inline_string": ca_pem}));
        }
    }
    serde_norway::to_string(&bootstrap).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cp_address_is_the_dp_server_or_the_bootstrap_server() {
        let at = |tls, host: &str, port| CpAddress {
            tls,
            host: host.into(),
            port,
        };
        assert_eq!(cp_address("https://cp:5678"), Ok(at(true, "cp", 5678)));
        assert_eq!(cp_address("https://cp/"), Ok(at(true, "cp", 5678)));
        assert_eq!(cp_address("http://cp"), Ok(at(false, "cp", 5682)));
        assert_eq!(cp_address("http://[::1]:9"), Ok(at(false, "::1", 9)));
        assert_eq!(cp_address("https://[::1]"), Ok(at(true, "::1", 5678)));
        assert!(
            cp_address("grpcs://cp:5678")
                .unwrap_err()
                .contains("expected https://")
        );
        assert!(cp_address("http://cp:x").unwrap_err().contains("bad port"));
    }
}
