//! `GET /v1/media/{token}`: any token is refused or names what it was signed for, never
//! a panic; a token changed in any way is refused.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use waas::media::MediaLinks;

fuzz_target!(|data: &[u8]| {
    let links = MediaLinks::new(vec![42; 32], Duration::from_secs(3600), "http://127.0.0.1:3010");
    let now = 1_800_000_000;
    if let Ok(token) = std::str::from_utf8(data) {
        let _ = links.verify_at(token, now);
    }
    // A real token with these bytes appended is refused.
    let real = links.token_at("default", "msg", false, "a.txt", now);
    if !data.is_empty() {
        let changed = format!("{real}{}", String::from_utf8_lossy(data));
        assert!(links.verify_at(&changed, now).is_err(), "{changed}");
    }
});
