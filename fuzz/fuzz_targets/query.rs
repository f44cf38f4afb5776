//! Query strings and the durations in them (`?wait=1e20`, `?types=…`, `?limit=…`):
//! every parser answers or refuses, none panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(raw) = std::str::from_utf8(data) {
        waas::api::fuzz_queries(raw);
        let _ = waas::api::parse_seconds_or_duration(raw);
    }
});
