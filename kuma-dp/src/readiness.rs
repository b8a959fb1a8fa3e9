//! kuma-dp's readiness reporter: `GET /ready` on 127.0.0.1 answers 200 `READY` once Envoy's
//! admin `/ready` says LIVE, 503 `NOT READY` before.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Serves `GET /ready`: 200 when Envoy's admin `/ready` says LIVE, 503 otherwise.
pub async fn serve(port: u16, admin_port: u16) {
    let Ok(listener) = TcpListener::bind(("127.0.0.1", port)).await else {
        tracing::warn!(port, "cannot listen for readiness on 127.0.0.1");
        return;
    };
    while let Ok((mut s, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let live = envoy_live(admin_port).await;
            let (status, body) = if live {
                ("200 OK", "READY")
            } else {
                ("503 Service Unavailable", "NOT READY")
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        });
    }
}

/// Whether the Envoy with admin on 127.0.0.1:`admin_port` says it is LIVE.
pub async fn envoy_live(admin_port: u16) -> bool {
    let Ok(Ok(mut s)) = tokio::time::timeout(
        Duration::from_secs(1),
        TcpStream::connect(("127.0.0.1", admin_port)),
    )
    .await
    else {
        return false;
    };
    if s.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), s.read_to_string(&mut out)).await;
    out.starts_with("HTTP/1.1 200") && out.contains("LIVE")
}
