//! The DNS server: [`Zone`] answers over UDP and TCP on one port (5653 by default).
//!
//! UDP is served by one thread per core, each with its own socket on the same port
//! (`SO_REUSEPORT`: the kernel spreads the queries), reading, answering and sending in place.
//! TCP connections carry length-prefixed queries until the client closes them or stays idle
//! for 10 s; at most 256 connections are served at once. The zone is swapped whole
//! ([`DnsServer::set_zone`]) when VIPs change; a query sees one zone from start to end, and
//! threads pick up a new zone through a generation counter, without sharing a reference count
//! per query.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::zone::{Transport, Zone};

/// How long a TCP connection may wait for its next query.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// TCP connections served at once.
const TCP_CONNECTIONS: usize = 256;

/// How often a UDP thread looks whether the server is stopping.
const UDP_POLL: Duration = Duration::from_millis(250);

/// Serves a [`Zone`] over UDP and TCP.
pub struct DnsServer {
    zone: RwLock<Arc<Zone>>,
    /// Bumped on every [`DnsServer::set_zone`].
    generation: AtomicU64,
}

impl DnsServer {
    /// A server answering from `zone`.
    pub fn new(zone: Zone) -> Arc<Self> {
        Arc::new(DnsServer {
            zone: RwLock::new(Arc::new(zone)),
            generation: AtomicU64::new(0),
        })
    }

    /// Answers from `zone` from now on.
    pub fn set_zone(&self, zone: Zone) {
        *self.zone.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(zone);
        self.generation.fetch_add(1, Ordering::Release);
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
        mut shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<SocketAddr> {
        let workers = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let first = udp_socket(addr)?;
        let bound = first
            .local_addr()?
            .as_socket()
            .ok_or_else(|| std::io::Error::other("not an IP socket"))?;
        let mut sockets = vec![first];
        for _ in 1..workers {
            sockets.push(udp_socket(bound)?);
        }
        let tcp = TcpListener::bind(bound).await?;
        let stopping = Arc::new(AtomicBool::new(false));
        for socket in sockets {
            let (server, stopping) = (self.clone(), stopping.clone());
            std::thread::Builder::new()
                .name("dns-udp".into())
                .spawn(move || server.serve_udp(socket.into(), &stopping))?;
        }
        tokio::spawn(self.clone().serve_tcp(tcp, shutdown.clone()));
        // The UDP threads look at a flag the shutdown signal sets.
        tokio::spawn(async move {
            let _ = shutdown.wait_for(|s| *s).await;
            stopping.store(true, Ordering::Relaxed);
        });
        Ok(bound)
    }

    /// Answers UDP queries on `socket` until `stopping`.
    fn serve_udp(&self, socket: std::net::UdpSocket, stopping: &AtomicBool) {
        if socket.set_read_timeout(Some(UDP_POLL)).is_err() {
            return;
        }
        let mut buf = vec![0u8; 65535];
        let mut seen = self.generation.load(Ordering::Acquire);
        let mut zone = self.zone();
        while !stopping.load(Ordering::Relaxed) {
            let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                continue; // the poll timeout, or an ICMP error of an earlier send
            };
            let now = self.generation.load(Ordering::Acquire);
            if now != seen {
                seen = now;
                zone = self.zone();
            }
            if let Some(response) = zone.answer(&buf[..n], Transport::Udp) {
                let _ = socket.send_to(&response, peer);
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

/// A blocking UDP socket bound to `addr` that shares its port with the server's other UDP
/// sockets.
fn udp_socket(addr: SocketAddr) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}
