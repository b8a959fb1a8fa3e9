//! The DNS server: [`Zone`] answers over UDP and TCP on one port (5653 by default).
//!
//! UDP is served by one thread per core, each with its own socket on the same port
//! (`SO_REUSEPORT`: the kernel spreads the queries), reading, answering and sending in place.
//! TCP connections carry length-prefixed queries until the client closes them or stays idle
//! for 10 s (1 s once more than half the slots are taken); at most 256 connections are served
//! at once, and at most 16 per client address, so one client cannot take them all. The zone is swapped whole
//! ([`DnsServer::set_zone`]) when VIPs change; a query sees one zone from start to end, and
//! threads pick up a new zone through a generation counter, without sharing a reference count
//! per query.
//!
//! A forwarding server ([`DnsServer::forwarding`], what kuma-dp's DNS proxy is) sends the
//! queries its zone refuses (names outside the domain) to an upstream resolver, over the
//! transport they came by, and relays the answer; a forward that fails or times out gets
//! SERVFAIL. At most 1,024 forwards are in flight; queries beyond that are dropped (UDP) or
//! answered SERVFAIL (TCP).

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, watch};

use crate::zone::{Transport, Zone};

/// How long a TCP connection may wait for its next query.
pub const TCP_IDLE: Duration = Duration::from_secs(10);
/// How long it may wait once more than half of [`TCP_CONNECTIONS`] are taken (RFC 7766 asks
/// servers under pressure to close idle connections sooner).
pub const TCP_IDLE_BUSY: Duration = Duration::from_secs(1);
/// TCP connections served at once.
pub const TCP_CONNECTIONS: usize = 256;
/// TCP connections one client address may hold at once.
pub const TCP_PER_CLIENT: usize = 16;
/// How long a forwarded query may take.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// Forwards in flight at once.
const FORWARDS: usize = 1024;
/// The RCODE of a query the zone does not answer: a name outside its domain.
const REFUSED: u8 = 5;
/// The RCODE of a forward that failed.
const SERVFAIL: u8 = 2;

/// Serves a [`Zone`] over UDP and TCP.
pub struct DnsServer {
    zone: RwLock<Arc<Zone>>,
    /// Bumped on every [`DnsServer::set_zone`].
    generation: AtomicU64,
    /// Where refused queries go, with the permits of forwards in flight.
    upstream: Option<(SocketAddr, Arc<Semaphore>)>,
}

impl DnsServer {
    /// A server answering from `zone` (and REFUSED for names outside it).
    pub fn new(zone: Zone) -> Arc<Self> {
        Arc::new(DnsServer {
            zone: RwLock::new(Arc::new(zone)),
            generation: AtomicU64::new(0),
            upstream: None,
        })
    }

    /// A server answering from `zone` and forwarding every other name to `upstream`.
    pub fn forwarding(zone: Zone, upstream: SocketAddr) -> Arc<Self> {
        Arc::new(DnsServer {
            zone: RwLock::new(Arc::new(zone)),
            generation: AtomicU64::new(0),
            upstream: Some((upstream, Arc::new(Semaphore::new(FORWARDS)))),
        })
    }

    /// Where refused queries go, when `response` refuses and this server forwards.
    fn forward_to(&self, response: &[u8]) -> Option<(SocketAddr, &Arc<Semaphore>)> {
        let refused = response.get(3).is_some_and(|b| b & 0x0f == REFUSED);
        let (upstream, permits) = self.upstream.as_ref()?;
        refused.then_some((*upstream, permits))
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
        // With port 0 the UDP port is picked first and TCP must get the same number, which a
        // TCP socket may hold already: then another port is picked.
        let mut attempts = if addr.port() == 0 { 16 } else { 1 };
        let (bound, sockets, tcp) = loop {
            attempts -= 1;
            let first = udp_socket(addr)?;
            let bound = first
                .local_addr()?
                .as_socket()
                .ok_or_else(|| std::io::Error::other("not an IP socket"))?;
            let mut sockets = vec![first];
            for _ in 1..workers {
                sockets.push(udp_socket(bound)?);
            }
            match TcpListener::bind(bound).await {
                Ok(tcp) => break (bound, sockets, tcp),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && attempts > 0 => continue,
                Err(e) => return Err(e),
            }
        };
        // The UDP threads stop when the pipe's writing end closes (on shutdown, or when the
        // runtime that holds it goes away).
        let (stop, stopper) = std::io::pipe()?;
        let stop = Arc::new(stop);
        // Forwards run on the runtime the server was bound from.
        let runtime = tokio::runtime::Handle::current();
        for socket in sockets {
            let (server, stop, runtime) = (self.clone(), stop.clone(), runtime.clone());
            std::thread::Builder::new()
                .name("dns-udp".into())
                .spawn(move || server.serve_udp(Arc::new(socket.into()), &stop, &runtime))?;
        }
        tokio::spawn(self.clone().serve_tcp(tcp, shutdown.clone()));
        tokio::spawn(async move {
            let _ = shutdown.wait_for(|s| *s).await;
            drop(stopper);
        });
        Ok(bound)
    }

    /// Answers UDP queries on `socket` (non-blocking) until `stop`'s writing end closes;
    /// forwards go to `runtime`.
    fn serve_udp(
        &self,
        socket: Arc<std::net::UdpSocket>,
        stop: &std::io::PipeReader,
        runtime: &tokio::runtime::Handle,
    ) {
        let mut buf = vec![0u8; 65535];
        let mut seen = self.generation.load(Ordering::Acquire);
        let mut zone = self.zone();
        loop {
            let (n, peer) = match socket.recv_from(&mut buf) {
                Ok(received) => received,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if wait_readable(&socket, stop) {
                        continue;
                    }
                    return;
                }
                Err(_) => continue, // an ICMP error of an earlier send
            };
            let now = self.generation.load(Ordering::Acquire);
            if now != seen {
                seen = now;
                zone = self.zone();
            }
            let Some(response) = zone.answer(&buf[..n], Transport::Udp) else {
                continue;
            };
            match self.forward_to(&response) {
                None => send_udp(&socket, &response, peer),
                Some((upstream, permits)) => {
                    // Beyond the limit the query is dropped; the client asks again.
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        continue;
                    };
                    let (query, socket) = (buf[..n].to_vec(), socket.clone());
                    runtime.spawn(async move {
                        let reply = forward_udp(&query, upstream)
                            .await
                            .unwrap_or_else(|| servfail(&query));
                        send_udp(&socket, &reply, peer);
                        drop(permit);
                    });
                }
            }
        }
    }

    async fn serve_tcp(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let slots = Arc::new(TcpSlots::default());
        loop {
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(accepted) => accepted,
                    Err(_) => continue,
                },
                _ = shutdown.wait_for(|s| *s) => return,
            };
            // Full, or this client holds its share: the connection is closed right away.
            let Some(slot) = slots.take(peer.ip()) else {
                continue;
            };
            let server = self.clone();
            tokio::spawn(async move {
                server.serve_connection(stream, &slot).await;
                drop(slot);
            });
        }
    }

    async fn serve_connection(&self, mut stream: TcpStream, slot: &TcpSlot) {
        let mut buf = Vec::new();
        loop {
            let mut len = [0u8; 2];
            if !read_within(&mut stream, &mut len, slot).await {
                return;
            }
            buf.resize(usize::from(u16::from_be_bytes(len)), 0);
            if !read_within(&mut stream, &mut buf, slot).await {
                return;
            }
            let Some(mut response) = self.zone().answer(&buf, Transport::Tcp) else {
                continue;
            };
            if let Some((upstream, permits)) = self.forward_to(&response) {
                response = match permits.try_acquire() {
                    Ok(_permit) => forward_tcp(&buf, upstream).await,
                    Err(_) => None,
                }
                .unwrap_or_else(|| servfail(&buf));
            }
            let Some(framed) = tcp_frame(&response) else {
                return;
            };
            if stream.write_all(&framed).await.is_err() {
                return;
            }
        }
    }
}

/// The TCP connections in use: in all, and per client address.
#[derive(Default)]
struct TcpSlots {
    by_client: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    open: std::sync::atomic::AtomicUsize,
}

impl TcpSlots {
    /// A slot for a connection from `client`, unless the server or the client is at its limit.
    fn take(self: &Arc<Self>, client: std::net::IpAddr) -> Option<TcpSlot> {
        let mut by_client = self.by_client.lock().unwrap_or_else(|p| p.into_inner());
        let held = by_client.entry(client).or_default();
        if *held >= TCP_PER_CLIENT || self.open.load(Ordering::Relaxed) >= TCP_CONNECTIONS {
            return None;
        }
        *held += 1;
        self.open.fetch_add(1, Ordering::Relaxed);
        Some(TcpSlot {
            slots: self.clone(),
            client,
        })
    }

    /// How long a connection may wait for data now.
    fn idle_allowance(&self) -> Duration {
        if self.open.load(Ordering::Relaxed) > TCP_CONNECTIONS / 2 {
            TCP_IDLE_BUSY
        } else {
            TCP_IDLE
        }
    }
}

/// One connection's place; given back when dropped.
struct TcpSlot {
    slots: Arc<TcpSlots>,
    client: std::net::IpAddr,
}

impl Drop for TcpSlot {
    fn drop(&mut self) {
        let mut by_client = self
            .slots
            .by_client
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(held) = by_client.get_mut(&self.client) {
            *held -= 1;
            if *held == 0 {
                by_client.remove(&self.client);
            }
        }
        self.slots.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Fills `buf` from `stream` unless the client takes longer than the idle allowance, which
/// is looked at again every second: a connection already waiting is closed sooner once the
/// server comes under pressure. False when the connection is done (closed, failed, too slow).
async fn read_within(stream: &mut TcpStream, buf: &mut [u8], slot: &TcpSlot) -> bool {
    let started = tokio::time::Instant::now();
    let mut got = 0;
    while got < buf.len() {
        let deadline = started + slot.slots.idle_allowance();
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return false;
        }
        let step = (deadline - now).min(Duration::from_secs(1));
        // `read` is cancel-safe: a timed-out read has taken nothing.
        match tokio::time::timeout(step, stream.read(&mut buf[got..])).await {
            Ok(Ok(0) | Err(_)) => return false,
            Ok(Ok(n)) => got += n,
            Err(_) => {}
        }
    }
    true
}

/// Sends `query` to `upstream` over UDP from a fresh socket and returns its reply.
async fn forward_udp(query: &[u8], upstream: SocketAddr) -> Option<Vec<u8>> {
    let local: SocketAddr = if upstream.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await.ok()?;
    socket.connect(upstream).await.ok()?;
    socket.send(query).await.ok()?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = tokio::time::timeout(UPSTREAM_TIMEOUT, socket.recv(&mut buf))
            .await
            .ok()?
            .ok()?;
        // Only the reply to this query (same id), not a stray datagram.
        if n >= 12 && buf[..2] == query[..2] {
            buf.truncate(n);
            return Some(buf);
        }
    }
}

/// Sends `query` to `upstream` over TCP and returns its reply.
async fn forward_tcp(query: &[u8], upstream: SocketAddr) -> Option<Vec<u8>> {
    let exchange = async {
        let mut stream = TcpStream::connect(upstream).await.ok()?;
        stream.write_all(&tcp_frame(query)?).await.ok()?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await.ok()?;
        let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut reply).await.ok()?;
        Some(reply)
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, exchange)
        .await
        .ok()
        .flatten()
}

/// `message` as DNS over TCP sends it: after its length in two bytes (`None` when it does not
/// fit).
fn tcp_frame(message: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(message.len()).ok()?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    Some(framed)
}

/// SERVFAIL for `query`: its header and question as a response with that RCODE (queries
/// reaching here parsed, so they have a header).
fn servfail(query: &[u8]) -> Vec<u8> {
    let mut reply = query.to_vec();
    if reply.len() >= 12 {
        reply[2] |= 0x80; // QR: a response
        reply[3] = (reply[3] & 0xf0) | 0x80 | SERVFAIL; // RA, RCODE
    }
    reply
}

/// Sleeps until `socket` has a datagram (true) or `stop`'s writing end closed (false); no
/// timer, so an idle server does nothing.
fn wait_readable(socket: &std::net::UdpSocket, stop: &std::io::PipeReader) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    loop {
        let mut fds = [
            PollFd::new(socket.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            // The pipe is never written: any event on it is its writer closing.
            Ok(_) => return fds[1].revents().is_none_or(|r| r.is_empty()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return false,
        }
    }
}

/// Sends `datagram` to `peer` on the non-blocking `socket`, waiting (up to a second at a time)
/// for room when its buffer is full, as a blocking send would; a send that fails or finds no
/// room is dropped, as UDP may.
fn send_udp(socket: &std::net::UdpSocket, datagram: &[u8], peer: SocketAddr) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    loop {
        match socket.send_to(datagram, peer) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLOUT)];
                match poll(&mut fds, PollTimeout::from(1000u16)) {
                    Ok(ready) if ready > 0 => {}
                    Err(nix::errno::Errno::EINTR) => {}
                    _ => return,
                }
            }
            _ => return,
        }
    }
}

/// A non-blocking UDP socket bound to `addr` that shares its port with the server's other UDP
/// sockets.
fn udp_socket(addr: SocketAddr) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_nonblocking(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}
