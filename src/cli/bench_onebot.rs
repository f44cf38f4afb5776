//! `waas bench --onebot`: events to a OneBot bot over a reverse WebSocket, against a
//! standard webhook measured the same way in the same run.
//!
//! Each path gets a fresh relay (SQLite on disk, `synchronous` as asked): the baseline
//! a standard webhook to a local HTTP receiver, the other a reverse WebSocket to a
//! local WebSocket server standing in for the bot (it answers pings, as NoneBot's
//! server does, so the cursor is confirmed as in production). Both are fed the same
//! way (`--injectors` concurrent injections, each waiting for its commit), then at a
//! steady `--rate` for the latency (injection call → frame or request received).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;

use super::bench::{BenchArgs, Receiver, injection, peak_rss_mib, percentile, steady};
use waas::harness::Embedded;

/// One path's figures.
struct Figures {
    rate: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
    achieved: f64,
    lost: usize,
}

/// The `N` of a OneBot event carrying "bench message N".
fn onebot_number(text: &str) -> Option<usize> {
    const NEEDLE: &str = "bench message ";
    let at = text.find(NEEDLE)? + NEEDLE.len();
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// A stand-in bot: accepts WebSocket connections and notes each message event.
async fn bot(receiver: Arc<Receiver>) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}/onebot/v11/ws", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let receiver = receiver.clone();
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                // Reading answers pings (tungstenite queues the pong and flushes it).
                while let Some(Ok(frame)) = socket.next().await {
                    if let tokio_tungstenite::tungstenite::Message::Text(text) = frame
                        && text.contains("\"post_type\":\"message\"")
                    {
                        receiver.arrived(onebot_number(&text));
                    }
                }
            });
        }
    });
    Ok(url)
}

async fn measure(
    args: &BenchArgs,
    extra: &str,
    receiver: &Arc<Receiver>,
) -> anyhow::Result<Figures> {
    let embedded = Embedded::start(&format!(
        "[storage]\nsynchronous = \"{}\"\n[log]\nlevel = \"warn\"\n[puppet]\nskip_older_than = \"1h\"\n{extra}",
        args.synchronous
    ))
    .await
    .context("starting the relay")?;
    let mock = embedded.mock()?.clone();
    // The WebSocket connects after the start: warm-up events (numbered past the runs
    // below) until one gets through.
    let warm_up = args.events + (args.rate * args.seconds) as usize;
    receiver.reset(warm_up + 100);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut n = warm_up;
    while receiver.count.load(Ordering::SeqCst) == 0 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline && n < warm_up + 100,
            "no warm-up event reached the receiver"
        );
        mock.inject(injection(n)).await?;
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    receiver.reset(args.events);
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut injectors = Vec::new();
    for _ in 0..args.injectors {
        let (mock, next, total) = (mock.clone(), next.clone(), args.events);
        injectors.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                mock.inject(injection(i)).await?;
            }
        }));
    }
    for i in injectors {
        i.await??;
    }
    receiver
        .wait_for(args.events, Duration::from_secs(300))
        .await?;
    let rate = args.events as f64 / started.elapsed().as_secs_f64();
    let mut lost = receiver
        .arrived
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|a| a.is_none())
        .count();

    let total = (args.rate * args.seconds) as usize;
    let (achieved, latencies) =
        steady(receiver, args.rate, total, args.events, |_| mock.clone()).await?;
    lost += total - latencies.len();
    embedded.stop().await?;
    Ok(Figures {
        rate,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        max: latencies.last().copied().unwrap_or_default(),
        achieved,
        lost,
    })
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    waas::install_crypto_provider();
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build; run `cargo run --release -- bench --onebot` for real figures"
        );
    }
    println!(
        "waas bench --onebot: {} events, {} injectors, then {}/s for {} s; storage.synchronous = {}",
        args.events, args.injectors, args.rate, args.seconds, args.synchronous
    );
    let receiver = Receiver::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hook_url = format!("http://{}/hook", listener.local_addr()?);
    let router = axum::Router::new()
        .fallback(super::bench::receive)
        .with_state(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let ws_url = bot(receiver.clone()).await?;

    let webhook = measure(
        &args,
        &format!(
            "[[webhooks]]\nname = \"bench\"\nurl = \"{hook_url}\"\nsecret = \"{}\"\nevents = [\"message\"]\nmax_in_flight = {}\n",
            waas::relay::signing::generate_secret(),
            args.concurrency
        ),
        &receiver,
    )
    .await?;
    let onebot = measure(
        &args,
        &format!("[onebot]\nheartbeat = \"0s\"\n[[onebot.reverse_ws]]\nurl = \"{ws_url}\"\n"),
        &receiver,
    )
    .await?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for (name, f) in [
        ("standard webhook", &webhook),
        ("onebot reverse ws", &onebot),
    ] {
        println!(
            "{name:<18} {:>8.0} events/s   latency @ {:.0}/s p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms   lost {}",
            f.rate,
            f.achieved,
            ms(f.p50),
            ms(f.p99),
            ms(f.max),
            f.lost
        );
    }
    println!(
        "onebot / webhook   {:>8.1} %",
        onebot.rate / webhook.rate * 100.0
    );
    println!(
        "peak RSS           {:>8.1} MiB (whole process: both relays in turn, receivers, load)",
        peak_rss_mib()
    );
    anyhow::ensure!(webhook.lost == 0 && onebot.lost == 0, "events were lost");
    Ok(())
}
