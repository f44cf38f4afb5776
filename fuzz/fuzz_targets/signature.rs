//! Inbound signature verification (`POST /v1/*` with Standard Webhooks headers): any
//! headers and body must give an answer, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use waas::relay::signing::{SigningKey, verify};

fuzz_target!(|data: &[u8]| {
    let key = SigningKey::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
    // Split the input into the three headers and the body at the first three NULs.
    let mut parts = data.splitn(4, |b| *b == 0);
    let id = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let timestamp = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let signature = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let body = parts.next().unwrap_or_default();
    let _ = verify(&[key], &id, &timestamp, &signature, body, 1_700_000_000, 300);
    // Secrets from configuration go through the same parser.
    let _ = SigningKey::parse(&String::from_utf8_lossy(data));
});
