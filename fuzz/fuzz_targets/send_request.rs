//! The body of `POST /v1/messages`: JSON in, a send request or a clear refusal out.
#![no_main]

use libfuzzer_sys::fuzz_target;
use waas::send::SendBody;

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = serde_json::from_slice::<SendBody>(data) {
        let _ = body.into_request();
    }
});
