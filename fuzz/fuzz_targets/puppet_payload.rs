//! The puppet service's event stream: an event type number and its JSON payload, as a
//! (possibly hostile or buggy) gateway sends them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use waas::puppet::service::map;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, payload)) = data.split_first() else {
        return;
    };
    let payload = String::from_utf8_lossy(payload);
    let _ = map::stream_event(i32::from(kind % 32), &payload);
    let _ = map::message_kind(i32::from(kind) - 64);
    let _ = map::scan_status(i64::from(kind) - 64);
});
