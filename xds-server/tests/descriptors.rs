//! The Envoy descriptor set `inspect` renders with (`descriptors/envoy.bin`) is the one the
//! locked `envoy-types` package ships, without its source comments.
//!
//! The package ships it but does not export it, and a build script cannot find a dependency's
//! files without asking cargo, which needs every package of the workspace downloaded (a fresh
//! machine building one binary has not). So the set is kept in the repository, and this test
//! checks it against the package: after an `envoy-types` upgrade it fails until the file is
//! regenerated with `UPDATE_DESCRIPTORS=1 cargo test -p xds-server --test descriptors`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::PathBuf;
use std::process::Command;

const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/descriptors/envoy.bin");

/// `types.bin` of the `envoy-types` package this workspace locks, found with `cargo metadata`
/// (a test may ask cargo; every package is downloaded by the time tests run).
fn shipped_descriptors() -> PathBuf {
    let rustc = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("-vV")
        .output()
        .expect("rustc -vV runs");
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .expect("rustc names its host");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Packages of other platforms are never downloaded here: leave them out.
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline"])
        .args(["--filter-platform", &host, "--manifest-path"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let package = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "envoy-types")
        .expect("envoy-types is a dependency");
    PathBuf::from(package["manifest_path"].as_str().unwrap())
        .parent()
        .unwrap()
        .join("src/generated/types.bin")
}

/// Reads a varint at `at`; returns it and where the next field starts.
fn varint(bytes: &[u8], mut at: usize) -> (u64, usize) {
    let (mut value, mut shift) = (0u64, 0);
    loop {
        let b = bytes[at];
        at += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return (value, at);
        }
        shift += 7;
    }
}

/// The top-level fields of a protobuf message: (field number, the field's bytes with its key).
fn fields(bytes: &[u8]) -> Vec<(u64, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let start = at;
        let (key, next) = varint(bytes, at);
        at = match key & 7 {
            0 => varint(bytes, next).1,
            1 => next + 8,
            2 => {
                let (len, body) = varint(bytes, next);
                body + usize::try_from(len).unwrap()
            }
            5 => next + 4,
            other => panic!("unexpected wire type {other}"),
        };
        out.push((key >> 3, &bytes[start..at]));
    }
    out
}

/// `set` (a FileDescriptorSet) with every file's `source_code_info` (field 9) dropped. Done on
/// the wire, so every option and extension (such as `udpa.annotations.sensitive`, which the
/// redaction of private keys relies on) is kept byte for byte.
fn without_source_info(set: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(set.len() / 4);
    for (number, field) in fields(set) {
        assert_eq!(number, 1, "a FileDescriptorSet has only files");
        let (len, body) = varint(field, 1);
        let file = &field[body..body + usize::try_from(len).unwrap()];
        let kept: Vec<u8> = fields(file)
            .into_iter()
            .filter(|(n, _)| *n != 9)
            .flat_map(|(_, f)| f.iter().copied())
            .collect();
        out.push(0x0a);
        let mut n = kept.len() as u64;
        while n >= 0x80 {
            out.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
        out.extend_from_slice(&kept);
    }
    out
}

#[test]
fn committed_descriptors_are_the_locked_envoy_types_ones() {
    let shipped = std::fs::read(shipped_descriptors()).unwrap();
    let expected = without_source_info(&shipped);
    if std::env::var_os("UPDATE_DESCRIPTORS").is_some() {
        std::fs::write(COMMITTED, &expected).unwrap();
    }
    let committed = std::fs::read(COMMITTED).unwrap();
    assert!(
        committed == expected,
        "descriptors/envoy.bin is not envoy-types' set: run UPDATE_DESCRIPTORS=1 cargo test -p xds-server --test descriptors"
    );
    assert!(
        expected.len() < shipped.len() / 2,
        "source comments are dropped"
    );
}
