//! A webhook's response body, read for `reply` / `replies`: any bytes a receiver sends.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = waas::send::parse_replies(data);
});
