//! Workload identity issuance: ECDSA P-256 against RSA 2048 (Kuma's default key type), each
//! CA issuing identities with keys of its own type, in one run. Every identity gets a fresh
//! key, as Kuma's do. RSA key generation dominates, so RSA runs fewer identities and reports
//! the same per-identity rate; `IDENTITIES_N=10000` and `IDENTITIES_RSA_N=50` set the counts.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kuma_ca::ca::{BuiltinCa, CertificateAuthority, IdentityRequest, KeyType, SanLayout};

fn run(key_type: KeyType, n: usize) -> Duration {
    let ca = BuiltinCa::generate("bench", key_type).expect("a CA");
    let started = Instant::now();
    for i in 0..n {
        let request = IdentityRequest {
            mesh: "bench".into(),
            services: BTreeSet::from([format!("svc-{}", i % 100)]),
            tags: BTreeMap::from([(
                "version".to_string(),
                BTreeSet::from([format!("v{}", i % 3)]),
            )]),
            lifetime: Duration::from_secs(24 * 3600),
            layout: SanLayout::Kuma,
        };
        ca.issue(&request).expect("issued");
    }
    started.elapsed()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("identities: bench");
        return;
    }
    let count = |var: &str, default: usize| {
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (ecdsa_n, rsa_n) = (count("IDENTITIES_N", 10_000), count("IDENTITIES_RSA_N", 50));
    let ecdsa = run(KeyType::EcdsaP256, ecdsa_n);
    let rsa = run(KeyType::Rsa2048, rsa_n);
    let per = |d: Duration, n: usize| d.as_secs_f64() * 1e3 / n as f64;
    println!("| key type | identities | time | per identity | 10,000 at that rate |");
    println!("|---|---:|---:|---:|---:|");
    for (name, d, n) in [("ECDSA P-256", ecdsa, ecdsa_n), ("RSA 2048", rsa, rsa_n)] {
        println!(
            "| {name} | {n} | {:.2} s | {:.3} ms | {:.1} s |",
            d.as_secs_f64(),
            per(d, n),
            per(d, n) * 10.0
        );
    }
    println!(
        "RSA 2048 / ECDSA P-256 per identity: {:.0}x",
        per(rsa, rsa_n) / per(ecdsa, ecdsa_n)
    );
}
