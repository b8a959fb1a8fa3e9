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

criterion_group!(benches, parse_validate);
criterion_main!(benches);
