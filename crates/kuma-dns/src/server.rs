//! The DNS server: [`Zone`] answers over UDP and TCP on one port (5653 by default).
//!
//! UDP queries are read by one task per core from a shared socket and answered in place. TCP
//! connections carry length-prefixed queries until the client closes them or stays idle for
//! 10 s; at most 256 connections are served at once. The zone is swapped whole
//! ([`DnsServer::set_zone`]) when VIPs change; a query sees one zone from start to end.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, watch};

use crate::zone::{Transport, Zone};

/// How long a TCP connection may wait for its next query.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// TCP connections served at once.
const TCP_CONNECTIONS: usize = 256;

/// Serves a [`Zone`] over UDP and TCP.
pub struct DnsServer {
    zone: RwLock<Arc<Zone>>,
}

impl DnsServer {
    /// A server answering from `zone`.
    pub fn new(zone: Zone) -> Arc<Self> {
        Arc::new(DnsServer {
            zone: RwLock::new(Arc::new(zone)),
        })
    }

    /// Answers from `zone` from now on.
    pub fn set_zone(&self, zone: Zone) {
        *self.zone.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(zone);
    }

    /// The zone in force.
    pub fn zone(&self) -> Arc<Zone> {
        self.zone.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Binds UDP and TCP on `addr` (port 0: a free port, the same for both) and serves until
    /// `shutdown` reads true. Returns the bound address.
    pub async fn bind(
        self: &Arc<Self>,
        addr: SocketAddr,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<SocketAddr> {
        let udp = UdpSocket::bind(addr).await?;
        let bound = udp.local_addr()?;
        let tcp = TcpListener::bind(bound).await?;
        let udp = Arc::new(udp);
        let workers = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        for _ in 0..workers {
            tokio::spawn(self.clone().serve_udp(udp.clone(), shutdown.clone()));
        }
        tokio::spawn(self.clone().serve_tcp(tcp, shutdown));
        Ok(bound)
    }

    async fn serve_udp(
        self: Arc<Self>,
        socket: Arc<UdpSocket>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut buf = vec![0u8; 65535];
        loop {
            let (n, peer) = tokio::select! {
                r = socket.recv_from(&mut buf) => match r {
                    Ok(r) => r,
                    // ICMP errors of earlier sends surface here; keep serving.
                    Err(_) => continue,
                },
                _ = shutdown.wait_for(|s| *s) => return,
            };
            let zone = self.zone();
            if let Some(response) = zone.answer(&buf[..n], Transport::Udp) {
                let _ = socket.send_to(&response, peer).await;
            }
        }
    }

    async fn serve_tcp(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let slots = Arc::new(Semaphore::new(TCP_CONNECTIONS));
        loop {
            let stream = tokio::select! {
                r = listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(_) => continue,
                },
                _ = shutdown.wait_for(|s| *s) => return,
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                continue; // full: the connection is closed right away
            };
            let server = self.clone();
            tokio::spawn(async move {
                server.serve_connection(stream).await;
                drop(permit);
            });
        }
    }

    async fn serve_connection(&self, mut stream: TcpStream) {
        let mut buf = Vec::new();
        loop {
            let mut len = [0u8; 2];
            match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
                Ok(Ok(_)) => {}
                _ => return,
            }
            buf.resize(usize::from(u16::from_be_bytes(len)), 0);
            match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut buf)).await {
                Ok(Ok(_)) => {}
                _ => return,
            }
            let Some(response) = self.zone().answer(&buf, Transport::Tcp) else {
                continue;
            };
            let Ok(len) = u16::try_from(response.len()) else {
                return;
            };
            let mut framed = Vec::with_capacity(response.len() + 2);
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(&response);
            if stream.write_all(&framed).await.is_err() {
                return;
            }
        }
    }
}
