//! Tokens as callers present them (dataplane tokens on `/bootstrap` and ADS, user tokens on the
//! API): split, decoded and read before any signature is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(token) = kuma_ca::jwt::parse(text) {
        let _ = token.kid();
        let _ = token.claim_str("Mesh");
        let _ = token.claim_str("Name");
    }
});
