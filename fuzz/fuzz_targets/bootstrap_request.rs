//! `POST /bootstrap` bodies: the request JSON, then the Dataplane it carries (parsed only once
//! the token verifies, but a token holder may send anything).
#![no_main]

use kuma_xds::bootstrap::{BootstrapRequest, dataplane_of};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = serde_json::from_slice::<BootstrapRequest>(data)
        && let Ok(dataplane) = dataplane_of(&request)
    {
        let _ = dataplane.validate();
    }
});
