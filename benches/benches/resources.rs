//! Parsing and validating 10,000 Dataplanes from one YAML stream, against the baseline of only
//! parsing the same YAML into untyped values.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kuma_benches::dataplane_stream;
use kuma_core::resource::parse_documents;
use serde::Deserialize as _;

const N: usize = 10_000;

fn parse_validate(c: &mut Criterion) {
    let text = dataplane_stream(N);
    let mut g = c.benchmark_group("dataplanes_10k");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(10);
    g.bench_function("baseline_yaml_to_untyped_value", |b| {
        b.iter(|| {
            serde_norway::Deserializer::from_str(&text)
                .map(|d| serde_json::Value::deserialize(d).expect("yaml"))
                .filter(serde_json::Value::is_object)
                .count()
        })
    });
    g.bench_function("parse_typed", |b| {
        b.iter(|| parse_documents(&text).expect("parse").len())
    });
    g.bench_function("parse_typed_and_validate", |b| {
        b.iter(|| {
            let docs = parse_documents(&text).expect("parse");
            docs.iter().filter(|r| r.validate().is_ok()).count()
        })
    });
    let docs = parse_documents(&text).expect("parse");
    g.bench_function("validate_only", |b| {
        b.iter(|| docs.iter().filter(|r| r.validate().is_ok()).count())
    });
    g.finish();
}

/// The most a hostile document of the largest accepted size (4 MiB) costs the parser: flow
/// collections as deep as the nesting check lets through (120 levels, repeated), against the
/// same size of deeper nesting, which the check refuses before parsing. Before the check,
/// 240 KB of `{a: ` took about 35 s here.
fn hostile(c: &mut Criterion) {
    use kuma_core::resource::{MAX_DOCUMENT_BYTES, parse_yaml};
    let mut g = c.benchmark_group("hostile_4mib");
    g.sample_size(10);
    let unit = format!("{}1{}", "[".repeat(120), "]".repeat(120));
    let mut deep_seqs = String::from("[");
    while deep_seqs.len() + unit.len() + 2 < MAX_DOCUMENT_BYTES {
        deep_seqs.push_str(&unit);
        deep_seqs.push(',');
    }
    deep_seqs.push_str("1]");
    let unit = format!("{}1{}", "{a: ".repeat(120), "}".repeat(120));
    let mut deep_maps = String::from("[");
    while deep_maps.len() + unit.len() + 2 < MAX_DOCUMENT_BYTES {
        deep_maps.push_str(&unit);
        deep_maps.push(',');
    }
    deep_maps.push_str("1]");
    let too_deep = "{a: ".repeat(MAX_DOCUMENT_BYTES / 4 - 1);
    for (name, doc) in [
        ("flow_seqs_120_deep", &deep_seqs),
        ("flow_maps_120_deep", &deep_maps),
        ("flow_maps_too_deep_refused", &too_deep),
    ] {
        g.bench_function(name, |b| b.iter(|| parse_yaml(doc).is_err()));
    }
    g.finish();
}

criterion_group!(benches, parse_validate, hostile);
criterion_main!(benches);
