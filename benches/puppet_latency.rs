//! Latency from a puppet emitting a message to the webhook receiving it, through the
//! gRPC puppet and a real `wechaty-puppet-service` server (npm), against a baseline
//! measured in the same run: the same relay fed by the embedded mock puppet.
//!
//!     cargo bench --bench puppet_latency            # 500 messages each
//!     cargo bench --bench puppet_latency -- 1000    # another count
//!
//! Under `cargo test` (no `--bench` argument) it runs 20 messages each, so the harness
//! stays working. Messages go one at a time with a short pause (a latency measurement,
//! not a throughput one). The clock starts just before the HTTP call that makes the
//! source emit the message (the fixture's control API, or `POST /v1/mock/messages`) and
//! stops when the receiver has read the webhook request: one loopback HTTP exchange is
//! included in both figures.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::puppet_fixture::{PuppetFixture, TOKEN};
use common::{TestApp, TestReceiver, spawn_app, webhook};
use serde_json::json;

const PAUSE: Duration = Duration::from_millis(5);

/// Waits for the webhook request carrying `text`; returns when it was received.
async fn received_at(receiver: &TestReceiver, text: &str, from: usize) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let all = receiver.received();
        if let Some(r) = all[from.min(all.len())..]
            .iter()
            .find(|r| r.json()["data"]["text"] == text)
        {
            return r.at;
        }
        assert!(Instant::now() < deadline, "{text:?} never arrived");
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank]
}

fn report(name: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p50 = percentile(&samples, 0.50);
    println!(
        "{name:<28} n={:<5} p50 {:>6.2} ms   p99 {:>6.2} ms   max {:>6.2} ms",
        samples.len(),
        ms(p50),
        ms(percentile(&samples, 0.99)),
        ms(*samples.last().unwrap()),
    );
    p50
}

async fn measure<F, Fut>(receiver: &TestReceiver, n: usize, label: &str, emit: F) -> Vec<Duration>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let text = format!("{label} {i}");
        let seen = receiver.received().len();
        let start = Instant::now();
        emit(text.clone()).await;
        let at = received_at(receiver, &text, seen).await;
        samples.push(at.saturating_duration_since(start));
        tokio::time::sleep(PAUSE).await;
    }
    samples
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let benching = args.iter().any(|a| a == "--bench");
    let n: usize = args
        .iter()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(if benching { 500 } else { 20 });

    // Baseline: the mock puppet, in process.
    let receiver = TestReceiver::start().await;
    let app: TestApp = spawn_app(&webhook("bot", &receiver, "events = [\"message\"]")).await;
    let mock = measure(&receiver, n, "mock", |text| {
        let app = &app;
        async move {
            let (status, body) = app.inject("alice", None, &text).await;
            assert_eq!(status, 201, "{body}");
        }
    })
    .await;
    app.stop().await;

    // The gRPC puppet and the real puppet-service server.
    let fixture = PuppetFixture::start(TOKEN).await;
    let receiver = TestReceiver::start().await;
    let app = spawn_app(&format!(
        "{}\n{}",
        fixture.puppet_config(TOKEN),
        webhook("bot", &receiver, "events = [\"message\"]")
    ))
    .await;
    let service = measure(&receiver, n, "service", |text| {
        let fixture = &fixture;
        async move {
            fixture.say(json!({"from": "alice", "text": text})).await;
        }
    })
    .await;
    app.stop().await;

    println!("emit → webhook received, one message at a time, {n} messages each:");
    let base = report("mock puppet (baseline)", mock);
    let grpc = report("puppet service over gRPC", service);
    println!(
        "the gRPC hop (stream event, MessagePayload, cached contact) adds {:.2} ms at p50",
        (grpc.as_secs_f64() - base.as_secs_f64()) * 1000.0
    );
}
