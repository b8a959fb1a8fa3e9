//! Resource documents as the API, kumactl and the node metadata of a proxy deliver them: YAML,
//! JSON and multi-document YAML. Whatever the input: no panic, and a parsed resource validates
//! and renders without one.
#![no_main]

use kuma_core::resource::{parse_documents, parse_json, parse_yaml};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for parsed in [parse_yaml(text), parse_json(text)] {
        if let Ok(resource) = parsed {
            let _ = resource.validate();
            let _ = resource.to_yaml();
        }
    }
    if let Ok(all) = parse_documents(text) {
        for resource in all {
            let _ = resource.validate();
        }
    }
});
