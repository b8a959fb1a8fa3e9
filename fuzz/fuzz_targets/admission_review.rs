//! `AdmissionReview` bodies for the admission webhook (TLS, no authentication).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kuma_api::admission::answer(data);
});
