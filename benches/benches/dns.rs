//! The `.mesh` DNS server against Knot DNS, side by side in one run: both serve the same zone
//! of `DNS_NAMES` (default 10,000) names on 127.0.0.1 with the same number of worker threads,
//! and dnsperf (Debian `dnsperf`) queries each with the same random mix of A lookups.
//!
//! Two measurements per server: the throughput dnsperf reaches (`DNS_SECONDS`, default 10 s,
//! unlimited rate), and latency percentiles at a fixed rate everybody sustains (`DNS_RATE`
//! queries/s, default 20,000, for 5 s, every response timed by dnsperf `-v`). Each is repeated
//! `DNS_REPEATS` times (default 3), the servers taking turns at going first, and the table shows
//! medians. Where the machine has two cores or more, the servers run on the first half of them
//! and dnsperf on the rest (`taskset`), so the load generator does not take the servers' CPU.
//! Needs Debian's `knot` and `dnsperf`.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kuma_dns::server::DnsServer;
use kuma_dns::vips::service_table;
use kuma_dns::zone::Zone;

fn env(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(0xF000_0001u32 + u32::try_from(i).expect("fits"))
}

fn free_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("a port");
    s.local_addr().expect("addr").port()
}

/// Starts knotd serving `mesh.` with `n` names on 127.0.0.1:`port`, `threads` UDP workers, on
/// the servers' CPUs.
fn knot(cores: &Cores, dir: &Path, n: usize, port: u16, threads: usize) -> Child {
    let mut zone = String::from(
        "$ORIGIN mesh.\n$TTL 60\n@ SOA ns.mesh. hostmaster.mesh. 1 3600 600 86400 60\n@ NS ns.mesh.\nns A 127.0.0.1\n",
    );
    for i in 0..n {
        zone.push_str(&format!("svc-{i} A {}\n", vip(i)));
    }
    std::fs::write(dir.join("mesh.zone"), zone).expect("zone file");
    let conf = format!(
        "server:\n  rundir: \"{d}\"\n  listen: 127.0.0.1@{port}\n  udp-workers: {threads}\n  tcp-workers: 1\n  background-workers: 1\ndatabase:\n  storage: \"{d}\"\nlog:\n  - target: stderr\n    any: error\nzone:\n  - domain: mesh\n    file: \"{d}/mesh.zone\"\n    journal-content: none\n    zonefile-sync: -1\n",
        d = dir.display()
    );
    std::fs::write(dir.join("knot.conf"), conf).expect("knot config");
    cores
        .server_command("knotd")
        .args(["-c"])
        .arg(dir.join("knot.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("knotd runs (Debian package knot)")
}

struct Run {
    qps: f64,
    lost: String,
}

/// dnsperf against 127.0.0.1:`port` for `seconds` (`rate` queries/s, 0 for unlimited); with
/// `verbose`, the latency of every response in microseconds.
fn dnsperf(
    cores: &Cores,
    queries: &Path,
    port: u16,
    seconds: usize,
    rate: usize,
    verbose: bool,
) -> (Run, Vec<u64>) {
    let mut cmd = cores.client_command("dnsperf");
    cmd.args(["-s", "127.0.0.1", "-p", &port.to_string(), "-d"])
        .arg(queries)
        .args([
            "-l",
            &seconds.to_string(),
            "-c",
            "4",
            "-T",
            "2",
            "-q",
            "500",
        ]);
    if rate > 0 {
        cmd.args(["-Q", &rate.to_string()]);
    }
    if verbose {
        cmd.arg("-v");
    }
    let out = cmd.output().expect("dnsperf runs (Debian package dnsperf)");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |label: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label).map(|v| v.trim().to_string()))
            .unwrap_or_default()
    };
    let qps = field("Queries per second:").parse().unwrap_or(0.0);
    let lost = field("Queries lost:");
    let mut latencies: Vec<u64> = text
        .lines()
        .filter(|l| l.starts_with("> "))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|s| (s * 1e6) as u64)
        .collect();
    latencies.sort_unstable();
    (Run { qps, lost }, latencies)
}

/// Which CPUs the servers and the load generator use (`None`: all of them, for both).
struct Cores {
    servers: Option<String>,
    client: Option<String>,
    /// How many CPUs the servers get (their worker threads).
    server_count: usize,
}

impl Cores {
    fn split(total: usize) -> Cores {
        if total < 2 {
            return Cores {
                servers: None,
                client: None,
                server_count: total.max(1),
            };
        }
        let half = total / 2;
        let list =
            |r: std::ops::Range<usize>| r.map(|c| c.to_string()).collect::<Vec<_>>().join(",");
        Cores {
            servers: Some(list(0..half)),
            client: Some(list(half..total)),
            server_count: half,
        }
    }

    /// `program`, on the client's CPUs.
    fn client_command(&self, program: &str) -> Command {
        pinned(program, self.client.as_deref())
    }

    /// `program`, on the servers' CPUs.
    fn server_command(&self, program: &str) -> Command {
        pinned(program, self.servers.as_deref())
    }

    /// Pins every thread of this process (the in-process server) to the servers' CPUs.
    fn pin_this_process(&self) {
        if let Some(cpus) = &self.servers {
            let status = Command::new("taskset")
                .args(["-a", "-p", "-c", cpus, &std::process::id().to_string()])
                .stdout(Stdio::null())
                .status();
            assert!(
                status.is_ok_and(|s| s.success()),
                "taskset pins the process"
            );
        }
    }

    fn describe(&self) -> String {
        match (&self.servers, &self.client) {
            (Some(s), Some(c)) => format!("servers on CPU {s}, dnsperf on CPU {c}"),
            _ => "servers and dnsperf share the CPU".to_string(),
        }
    }
}

fn pinned(program: &str, cpus: Option<&str>) -> Command {
    match cpus {
        Some(cpus) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", cpus, program]);
            cmd
        }
        None => Command::new(program),
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let at = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[at]
}

/// Waits until `dig` gets an answer from 127.0.0.1:`port`.
fn wait_for(port: u16) {
    for _ in 0..100 {
        let out = Command::new("dig")
            .args([
                "@127.0.0.1",
                "-p",
                &port.to_string(),
                "svc-0.mesh",
                "+short",
                "+tries=1",
                "+time=1",
            ])
            .output();
        if out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == vip(0).to_string()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the DNS server on {port} does not answer");
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("dns: bench");
        return;
    }
    let (n, seconds, rate, repeats) = (
        env("DNS_NAMES", 10_000),
        env("DNS_SECONDS", 10),
        env("DNS_RATE", 20_000),
        env("DNS_REPEATS", 3).max(1),
    );
    let cores =
        Cores::split(std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get));
    let threads = cores.server_count;
    let dir = std::env::temp_dir().join(format!("kuma-dns-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");

    // The same names for both: a VIP table of n services.
    let table = service_table((0..n).map(|i| (format!("svc-{i}"), vip(i))));
    let zone = Zone::new("mesh", 60).with_tables([&table]);
    // Every name once, in a scrambled order (a fixed permutation: i * 7919 mod n).
    let queries: String = (0..n)
        .map(|i| format!("svc-{}.mesh A\n", (i * 7919) % n))
        .collect();
    let queries_file = dir.join("queries.txt");
    std::fs::write(&queries_file, queries).expect("query file");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("runtime");
    // Every thread exists now (the runtime's workers included): pin them all.
    cores.pin_this_process();
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let ours = runtime.block_on(async {
        let server = DnsServer::new(zone);
        server
            .bind("127.0.0.1:0".parse().expect("addr"), stop_rx)
            .await
            .expect("bind")
            .port()
    });
    let knot_port = free_port();
    let mut knotd = knot(&cores, &dir, n, knot_port, threads);
    wait_for(ours);
    wait_for(knot_port);

    /// One server's measurements over every repetition.
    #[derive(Default)]
    struct Samples {
        qps: Vec<f64>,
        lost: Vec<String>,
        p50: Vec<f64>,
        p99: Vec<f64>,
        p999: Vec<f64>,
        fixed_lost: Vec<String>,
    }
    let servers = [("kuma-dns", ours), ("Knot DNS", knot_port)];
    let mut samples: Vec<Samples> = servers.iter().map(|_| Samples::default()).collect();
    for repeat in 0..repeats {
        // The servers take turns at going first.
        let order: Vec<usize> = if repeat % 2 == 0 {
            vec![0, 1]
        } else {
            vec![1, 0]
        };
        for i in order {
            let port = servers[i].1;
            let (max, _) = dnsperf(&cores, &queries_file, port, seconds, 0, false);
            let (fixed, latencies) = dnsperf(&cores, &queries_file, port, 5, rate, true);
            let s = &mut samples[i];
            s.qps.push(max.qps);
            s.lost.push(max.lost);
            s.p50.push(percentile(&latencies, 0.5) as f64);
            s.p99.push(percentile(&latencies, 0.99) as f64);
            s.p999.push(percentile(&latencies, 0.999) as f64);
            s.fixed_lost.push(fixed.lost);
        }
    }
    let _ = knotd.kill();
    let _ = knotd.wait();
    println!(
        "{n} names, {threads} worker thread(s) each, {}, dnsperf -c 4 -T 2 -q 500; medians of {repeats} runs, servers alternating first",
        cores.describe()
    );
    println!("| server | max QPS ({seconds} s) | lost | p50 at {rate}/s | p99 | p99.9 | lost |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for ((name, _), s) in servers.iter().zip(&samples) {
        println!(
            "| {name} | {:.0} | {} | {:.0} us | {:.0} us | {:.0} us | {} |",
            median(s.qps.clone()),
            s.lost.join(" / "),
            median(s.p50.clone()),
            median(s.p99.clone()),
            median(s.p999.clone()),
            s.fixed_lost.join(" / ")
        );
    }
    if let [ours, knot] = samples.as_slice() {
        println!(
            "kuma-dns / Knot max QPS (medians): {:.2}",
            median(ours.qps.clone()) / median(knot.qps.clone()).max(1.0)
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
