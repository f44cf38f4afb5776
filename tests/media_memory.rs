//! A large file behind a media link is streamed, never held whole: fetching 48 MB
//! through waas from the real puppet-service server raises the test process's peak
//! memory (waas runs in it) by far less than the file's size. Alone in its own test
//! binary, so no other test's allocations blur the figure.

mod common;

use common::puppet_fixture::{PuppetFixture, TOKEN};
use common::{TestReceiver, spawn_app, webhook};
use sha2::{Digest, Sha256};

const SIZE: usize = 48 * 1024 * 1024;

fn peak_kib() -> u64 {
    waas::metrics::proc_status_kib("VmHWM").expect("Linux /proc")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_is_streamed_through_not_buffered() {
    let fixture = PuppetFixture::start(TOKEN).await;
    let receiver = TestReceiver::start().await;
    let app = spawn_app(&format!(
        "{}\n{}",
        fixture.puppet_config(TOKEN),
        webhook("all", &receiver, "")
    ))
    .await;
    let id = fixture
        .post(
            "/say-file",
            serde_json::json!({"from": "alice", "name": "big.bin", "size": SIZE}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    receiver
        .wait_for(15, "the file message", |r| {
            r.iter().any(|x| x.json()["data"]["id"] == id.as_str())
        })
        .await;
    let event = receiver
        .received()
        .iter()
        .map(|r| r.json())
        .find(|e| e["data"]["id"] == id.as_str())
        .unwrap();
    let path = event["data"]["media"]["url"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://127.0.0.1:3010")
        .to_string();

    let before = peak_kib();
    let mut response = reqwest::get(app.url(&path)).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut digest = Sha256::new();
    let mut got = 0usize;
    while let Some(chunk) = response.chunk().await.unwrap() {
        got += chunk.len();
        digest.update(&chunk);
    }
    let grew_mib = (peak_kib().saturating_sub(before)) as f64 / 1024.0;
    let mut want = Sha256::new();
    let expected: Vec<u8> = (0..SIZE as u32).map(|i| (i * 31 + 7) as u8).collect();
    want.update(&expected);
    assert_eq!(got, SIZE);
    assert_eq!(digest.finalize(), want.finalize(), "the exact bytes");
    println!(
        "fetched {} MiB through a media link; peak memory grew by {grew_mib:.1} MiB",
        SIZE / (1024 * 1024)
    );
    assert!(
        grew_mib < (SIZE / (1024 * 1024)) as f64 / 3.0,
        "peak memory grew by {grew_mib:.1} MiB while streaming a {} MiB file",
        SIZE / (1024 * 1024)
    );
}
