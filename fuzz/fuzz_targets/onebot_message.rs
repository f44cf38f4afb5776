//! OneBot messages from a bot (CQ strings, segment JSON) and WeChat text turned into
//! segments: never a panic; CQ strings read back to what was written.
#![no_main]

use libfuzzer_sys::fuzz_target;
use waas::onebot::message::{Mentioned, inbound_text, parse, parse_cq, to_cq};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Reading is normalising: what waas writes reads back the same.
    let segments = parse_cq(text);
    let written = to_cq(&segments);
    assert_eq!(parse_cq(&written), segments, "{text:?} → {written:?}");
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(text) {
        let _ = parse(&value, false);
        let _ = parse(&value, true);
    }
    // Mentions with names taken from the input itself, and unnamed ones.
    let name: String = text.chars().skip(1).take(5).collect();
    let mentions = [
        Mentioned {
            qq: 1,
            name: Some(name),
        },
        Mentioned { qq: 2, name: None },
        Mentioned { qq: 3, name: None },
    ];
    let _ = inbound_text(text, &mentions);
});
