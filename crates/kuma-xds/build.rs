//! With the `inspect` feature: copies the Envoy descriptor set that the `envoy-types` package
//! ships (but does not export) into OUT_DIR, so `inspect` can expand every `Any` the generated
//! config holds. The package is found through `cargo metadata`, which reads the lock file.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_INSPECT").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target = out.join("envoy-descriptors.bin");
    match find_descriptors() {
        Ok(path) => {
            println!("cargo:rerun-if-changed={}", path.display());
            std::fs::copy(&path, &target).expect("copy the envoy-types descriptor set");
        }
        Err(e) => panic!("kuma-xds `inspect`: cannot find envoy-types' descriptor set: {e}"),
    }
}

fn find_descriptors() -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?)
        .join("Cargo.toml");
    // Only this target's packages: those are downloaded already.
    let target = std::env::var("TARGET").map_err(|e| e.to_string())?;
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline"])
        .args(["--filter-platform", &target, "--manifest-path"])
        .arg(&manifest)
        .output()
        .map_err(|e| format!("cargo metadata: {e}"))?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|e| format!("cargo metadata: {e}"))?;
    let packages = meta["packages"]
        .as_array()
        .ok_or("no packages in metadata")?;
    let package = packages
        .iter()
        .find(|p| p["name"] == "envoy-types")
        .ok_or("envoy-types is not a dependency")?;
    let manifest_path = package["manifest_path"]
        .as_str()
        .ok_or("envoy-types has no manifest path")?;
    let path = PathBuf::from(manifest_path)
        .parent()
        .ok_or("bad manifest path")?
        .join("src/generated/types.bin");
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!("{} is missing", path.display()))
    }
}
