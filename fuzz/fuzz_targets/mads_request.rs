//! MADS requests (anonymous): the query string (`fetch-timeout`) and the JSON
//! `DiscoveryRequest` body. The first byte says how long the query is.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (query, body) = rest.split_at(usize::from(n).min(rest.len()));
    let query = std::str::from_utf8(query).ok();
    let _ = kuma_xds::mads::parse_poll(query, body, Duration::from_secs(30));
    if let Some(q) = query {
        let _ = kuma_xds::mads::parse_fetch_timeout(q);
    }
});
