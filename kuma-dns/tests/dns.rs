//! The DNS server against real clients (`dig` from BIND, `kdig` from Knot) over UDP and TCP,
//! and the zone under a few hundred thousand random and mutated packets.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use kuma_dns::server::DnsServer;
use kuma_dns::vips::{VipTable, service_table};
use kuma_dns::zone::{Transport, Zone};

fn table(entries: &[(&str, &str)]) -> VipTable {
    service_table(entries.iter().copied())
}

/// Two meshes, plus 40 meshes with a service `big` (40 VIPs: too many for 512 bytes).
fn zone() -> Zone {
    let mut tables = vec![
        table(&[
            ("backend", "240.0.0.1"),
            ("backend_kuma-demo_svc_8080", "240.0.0.2"),
        ]),
        table(&[("web", "240.0.0.1")]),
    ];
    for i in 0..40 {
        tables.push(table(&[("big", &format!("240.0.1.{}", i + 1))]));
    }
    Zone::new("mesh", 60).with_tables(&tables)
}

async fn serve(zone: Zone) -> SocketAddr {
    serve_with(DnsServer::new(zone)).await
}

async fn serve_with(server: std::sync::Arc<DnsServer>) -> SocketAddr {
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let addr = server
        .bind("127.0.0.1:0".parse().unwrap(), rx)
        .await
        .unwrap();
    // The sender lives as long as the test process: the server is never told to stop.
    std::mem::forget(_tx);
    addr
}

fn run(tool: &str, addr: SocketAddr, args: &[&str]) -> String {
    let out = Command::new(tool)
        .arg(format!("@{}", addr.ip()))
        .args(["-p", &addr.port().to_string()])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} runs: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_and_kdig_get_kumas_answers() {
    let addr = serve(zone()).await;
    let dig = |args: &[&str]| run("dig", addr, args);

    assert_eq!(dig(&["backend.mesh", "+short"]).trim(), "240.0.0.1");
    assert_eq!(
        dig(&["BackEnd.Mesh.", "+short"]).trim(),
        "240.0.0.1",
        "names ignore case"
    );
    assert_eq!(
        dig(&["backend.mesh", "AAAA", "+short"]).trim(),
        "::ffff:240.0.0.1"
    );
    assert_eq!(
        dig(&["backend.kuma-demo.svc.8080.mesh", "+short"]).trim(),
        "240.0.0.2"
    );
    assert_eq!(
        dig(&["backend_kuma-demo_svc_8080.mesh", "+short"]).trim(),
        "240.0.0.2"
    );
    assert_eq!(dig(&["web.mesh", "+short", "+tcp"]).trim(), "240.0.0.1");

    let answer = dig(&["backend.mesh", "+noall", "+answer"]);
    assert!(
        answer.contains("backend.mesh.\t\t60\tIN\tA\t240.0.0.1"),
        "{answer}"
    );
    let full = dig(&["backend.mesh"]);
    assert!(
        full.contains("status: NOERROR") && full.contains("flags: qr aa rd"),
        "{full}"
    );
    assert!(
        full.contains("EDNS: version: 0, flags:; udp: 1232"),
        "{full}"
    );

    let missing = dig(&["nope.mesh"]);
    assert!(missing.contains("status: NXDOMAIN"), "{missing}");
    assert!(
        missing.contains("mesh.\t\t\t60\tIN\tSOA"),
        "the SOA comes along: {missing}"
    );
    let nodata = dig(&["backend.mesh", "TXT"]);
    assert!(
        nodata.contains("status: NOERROR") && nodata.contains("ANSWER: 0"),
        "{nodata}"
    );
    let elsewhere = dig(&["example.com"]);
    assert!(elsewhere.contains("status: REFUSED"), "{elsewhere}");

    // 40 addresses do not fit 512 bytes: UDP without EDNS is truncated, TCP carries them all.
    let udp = dig(&["big.mesh", "+noedns", "+ignore"]);
    assert!(udp.contains("flags: qr aa tc rd"), "{udp}");
    assert_eq!(dig(&["big.mesh", "+tcp", "+short"]).lines().count(), 40);
    // With EDNS the client's 1232 bytes are enough.
    assert_eq!(dig(&["big.mesh", "+short", "+ignore"]).lines().count(), 40);

    // kdig (Knot) agrees, over UDP and TCP.
    let kdig = |args: &[&str]| run("kdig", addr, args);
    assert_eq!(kdig(&["backend.mesh", "+short"]).trim(), "240.0.0.1");
    assert_eq!(
        kdig(&["backend.mesh", "AAAA", "+short", "+tcp"]).trim(),
        "::ffff:240.0.0.1"
    );
    let k = kdig(&["nope.mesh"]);
    assert!(k.contains("status: NXDOMAIN"), "{k}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_gets_formerr_or_silence_and_service_goes_on() {
    let addr = serve(zone()).await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(addr).await.unwrap();
    let mut buf = [0u8; 4096];
    // Shorter than a header: no answer.
    socket.send(&[1, 2, 3]).await.unwrap();
    // A header claiming a question that is not there: FORMERR with the same id.
    socket
        .send(&[0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0])
        .await
        .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf))
        .await
        .expect("an answer to a broken query")
        .unwrap();
    let reply = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(reply.metadata.id, 0xabcd);
    assert_eq!(
        reply.metadata.response_code,
        hickory_proto::op::ResponseCode::FormErr
    );
    // A TCP client that sends a length and then nothing does not hold up others.
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stalled, &[0, 40, 1])
        .await
        .unwrap();
    assert_eq!(
        run("dig", addr, &["backend.mesh", "+short"]).trim(),
        "240.0.0.1"
    );
    assert_eq!(
        run("dig", addr, &["backend.mesh", "+short", "+tcp"]).trim(),
        "240.0.0.1"
    );
}

/// A forwarding server (kuma-dp's DNS proxy) answers its zone itself and relays every other
/// name to its upstream over the transport the query came by; an upstream that does not answer
/// gives SERVFAIL, not silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarding_server_relays_other_names_upstream() {
    let upstream = serve(
        Zone::new("example", 60)
            .with_records([("www.example".into(), "192.0.2.10".parse().unwrap())]),
    )
    .await;
    let proxy = serve_with(DnsServer::forwarding(zone(), upstream)).await;
    let dig = |args: &[&str]| run("dig", proxy, args);
    assert_eq!(dig(&["backend.mesh", "+short"]).trim(), "240.0.0.1");
    for transport in ["+notcp", "+tcp"] {
        assert_eq!(
            dig(&["www.example", "+short", transport]).trim(),
            "192.0.2.10",
            "{transport}"
        );
        // The upstream's own answers come back as they are: NXDOMAIN in its zone, REFUSED
        // outside it (the proxy forwards once, it does not recurse).
        assert!(dig(&["nope.example", transport]).contains("status: NXDOMAIN"));
        assert!(dig(&["example.com", transport]).contains("status: REFUSED"));
    }
    assert_eq!(
        run("kdig", proxy, &["www.example", "+short", "+tcp"]).trim(),
        "192.0.2.10"
    );

    // Nothing listens upstream: SERVFAIL after the forwarding timeout, over UDP and TCP.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dead = serve_with(DnsServer::forwarding(zone(), closed)).await;
    for transport in ["+notcp", "+tcp"] {
        let out = run(
            "dig",
            dead,
            &["www.example", transport, "+tries=1", "+time=5"],
        );
        assert!(out.contains("status: SERVFAIL"), "{transport}: {out}");
    }
    assert_eq!(
        run("dig", dead, &["backend.mesh", "+short"]).trim(),
        "240.0.0.1"
    );
}

/// A small deterministic generator (xorshift64*), so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_and_mutated_packets_never_panic() {
    let zone = zone();
    let mut valid = Vec::new();
    for (name, rtype) in [
        ("backend.mesh.", RecordType::A),
        ("big.mesh.", RecordType::AAAA),
        ("nope.mesh.", RecordType::A),
        ("example.com.", RecordType::MX),
    ] {
        let mut m = Message::query();
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        m.metadata.recursion_desired = true;
        m.set_edns(hickory_proto::op::Edns::new());
        valid.push(m.to_vec().unwrap());
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut answered = 0usize;
    for i in 0..300_000 {
        let packet: Vec<u8> = if i % 3 == 0 {
            (0..rng.below(300)).map(|_| rng.next() as u8).collect()
        } else {
            let mut p = valid[rng.below(valid.len())].clone();
            for _ in 0..=rng.below(6) {
                match rng.below(4) {
                    0 if !p.is_empty() => {
                        let at = rng.below(p.len());
                        p[at] = rng.next() as u8;
                    }
                    1 if !p.is_empty() => {
                        let at = rng.below(p.len());
                        p.truncate(at);
                    }
                    2 => {
                        let at = rng.below(p.len() + 1);
                        p.insert(at, rng.next() as u8);
                    }
                    _ => p.extend((0..rng.below(20)).map(|_| rng.next() as u8)),
                }
            }
            p
        };
        let transport = if i % 2 == 0 {
            Transport::Udp
        } else {
            Transport::Tcp
        };
        if let Some(reply) = zone.answer(&packet, transport) {
            answered += 1;
            // Whatever we send is a well-formed response to that id.
            let m = Message::from_vec(&reply).expect("our replies parse");
            assert_eq!(m.metadata.id, u16::from_be_bytes([packet[0], packet[1]]));
            if transport == Transport::Udp {
                assert!(reply.len() <= 1232);
            }
        }
    }
    assert!(
        answered > 100_000,
        "most packets with a header get an answer: {answered}"
    );
}

/// A TCP connection to `server` from the loopback address `from` (127.0.0.0/8 is all
/// loopback, so each address is a different client).
async fn tcp_from(from: &str, server: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(server).await.unwrap()
}

/// Whether the server has closed `stream` (a read sees the end) within `within`.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(within, stream.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_take_every_tcp_connection() {
    use kuma_dns::server::{TCP_CONNECTIONS, TCP_IDLE, TCP_PER_CLIENT};
    let addr = serve(zone()).await;
    // One client opens more connections than its share and sends nothing.
    let mut held = Vec::new();
    for _ in 0..TCP_PER_CLIENT + 4 {
        held.push(tcp_from("127.0.0.2", addr).await);
    }
    for (i, stream) in held.iter_mut().enumerate().skip(TCP_PER_CLIENT) {
        assert!(
            closed_within(stream, Duration::from_secs(2)).await,
            "connection {i} beyond the client's share is closed at once"
        );
    }
    // Meanwhile another client's queries over TCP are answered.
    assert_eq!(dig_tcp_from("127.0.0.3", addr, "backend.mesh"), "240.0.0.1");
    for stream in held.iter_mut().take(TCP_PER_CLIENT) {
        assert!(
            !closed_within(stream, Duration::from_millis(10)).await,
            "the client's share stays open while the server is not under pressure"
        );
    }

    // Many clients together take more than half the slots: idle connections, those already
    // waiting included, are closed after TCP_IDLE_BUSY instead of TCP_IDLE, until no more
    // than half are taken.
    let clients = TCP_CONNECTIONS / 2 / TCP_PER_CLIENT + 1;
    let mut crowd = Vec::new();
    for c in 0..clients {
        for _ in 0..TCP_PER_CLIENT {
            crowd.push(tcp_from(&format!("127.0.1.{}", c + 1), addr).await);
        }
    }
    let started = std::time::Instant::now();
    let mut closed = 0;
    for stream in held.iter_mut().take(TCP_PER_CLIENT).chain(crowd.iter_mut()) {
        if closed_within(stream, (TCP_IDLE / 2).saturating_sub(started.elapsed())).await {
            closed += 1;
        }
    }
    let open = TCP_PER_CLIENT + crowd.len() - closed;
    assert!(
        closed >= TCP_PER_CLIENT && open <= TCP_CONNECTIONS / 2,
        "{closed} idle connections closed in {:?} under pressure, {open} left",
        started.elapsed()
    );
    assert_eq!(dig_tcp_from("127.0.0.3", addr, "backend.mesh"), "240.0.0.1");
}

/// `dig +tcp +short name` against `server`, from the loopback address `from`.
fn dig_tcp_from(from: &str, server: SocketAddr, name: &str) -> String {
    let out = Command::new("dig")
        .args(["-b", from, &format!("@{}", server.ip())])
        .args(["-p", &server.port().to_string(), "+tcp", "+short", name])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// This process's `dns-udp` threads: (thread id, voluntary context switches).
fn udp_threads() -> Vec<(String, u64)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim() != "dns-udp" {
            continue;
        }
        let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
        let switches = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        threads.push((task.file_name().to_string_lossy().into_owned(), switches));
    }
    threads.sort();
    threads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_udp_threads_sleep_until_a_query_or_the_stop() {
    let (stop, rx) = tokio::sync::watch::channel(false);
    let addr = DnsServer::new(zone())
        .bind("127.0.0.1:0".parse().unwrap(), rx)
        .await
        .unwrap();
    assert!(run("dig", addr, &["+short", "backend.mesh"]).contains("240.0.0.1"));
    let before = udp_threads();
    assert!(!before.is_empty());
    // A second with nothing to do: no thread wakes (a timer would wake each several times).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(udp_threads(), before, "idle UDP threads woke up");
    // They still answer, and they end when told to stop.
    assert!(run("dig", addr, &["+short", "web.mesh"]).contains("240.0.0.1"));
    stop.send(true).unwrap();
    for _ in 0..100 {
        if udp_threads().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "UDP threads still running after the stop: {:?}",
        udp_threads()
    );
}
