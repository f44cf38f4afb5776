//! `waas bench`: the relay measured against a raw baseline in the same run.
//!
//! 1. **Raw baseline**: a plain reqwest client POSTs event-sized bodies to a local
//!    receiver at the same concurrency the relay uses. This is the ceiling: what this
//!    machine's HTTP stack does with no store, no signing, no retries.
//! 2. **Relay throughput**: the real relay (SQLite store on disk, durable commits,
//!    signing, dispatcher) fed by the mock puppet's synthetic source as fast as it
//!    takes events, until the receiver has every one.
//! 3. **Latency**: events injected at a steady rate; time from the injection call to
//!    receipt at the webhook, p50/p99/max.
//!
//! Then peak RSS of the whole process (relay, receiver and load generator together).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use tokio::sync::Notify;

use waas::harness::Embedded;
use waas::puppet::mock::Injection;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Events in each throughput run.
    #[arg(long, default_value_t = 20_000)]
    pub events: usize,
    /// Concurrent requests (the webhook's max_in_flight, and the baseline's).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Concurrent injectors feeding the relay in the throughput run (like that many
    /// clients of `POST /v1/mock/messages`, each waiting for its commit).
    #[arg(long, default_value_t = 256)]
    pub injectors: usize,
    /// Events per second in the latency run.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Length of the latency run, in seconds.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// SQLite synchronous mode for the relay's store: full or normal.
    #[arg(long, default_value = "full")]
    pub synchronous: String,
    /// Mock accounts the events are spread over (round robin), each with its own
    /// puppet, ingest and sender.
    #[arg(long, default_value_t = 1)]
    pub accounts: usize,
    /// Measure events to a OneBot bot over a reverse WebSocket instead, against a
    /// standard webhook measured the same way in the same run.
    #[arg(long)]
    pub onebot: bool,
    /// Measure waas from outside instead: a `waas serve` process fed over HTTP
    /// (`POST /v1/mock/messages`) by `--clients` concurrent clients, against a null
    /// relay (same routes and webhook, nothing stored) measured in the same run.
    #[arg(long, conflicts_with_all = ["onebot", "cluster"])]
    pub http: bool,
    /// Like --http, with the events coming from the real puppet-service fixture over
    /// gRPC (`node tests/fixtures/puppet-service/server.mjs`, installed with npm).
    #[arg(long, conflicts_with_all = ["onebot", "cluster", "http"])]
    pub grpc: bool,
    /// With --http or --grpc: concurrent injecting clients, each waiting for its answer.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// With --http or --grpc: also measure another waas binary (an earlier build, say)
    /// the same way in the same run, and compare waas with it.
    #[arg(long, value_name = "WAAS_BINARY")]
    pub against: Option<std::path::PathBuf>,
    /// With --http or --grpc: measure every relay this many times, in an order that
    /// rotates from round to round (whichever runs later in a round is measured on a
    /// warmer, busier machine), and sum up with medians.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Measure several waas processes on one PostgreSQL database instead (throughput
    /// with each of `--instances`, then failover).
    #[arg(long)]
    pub cluster: bool,
    /// With --cluster: the server the bench makes its databases on (and drops them).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub postgres: String,
    /// With --cluster: the instance counts to measure, the first being the baseline.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub instances: Vec<usize>,
    /// With --cluster: kills of the holder in the failover run (0: none).
    #[arg(long, default_value_t = 10)]
    pub failovers: usize,
    /// With --cluster: `cluster.lease` in the failover run.
    #[arg(long, default_value = "10s")]
    pub lease: String,
}

/// Counts receipts and records when each numbered event arrived.
pub(super) struct Receiver {
    pub(super) count: AtomicUsize,
    pub(super) arrived: std::sync::Mutex<Vec<Option<Instant>>>,
    pub(super) notify: Notify,
}

impl Receiver {
    pub(super) fn new() -> Arc<Receiver> {
        Arc::new(Receiver {
            count: AtomicUsize::new(0),
            arrived: std::sync::Mutex::new(Vec::new()),
            notify: Notify::new(),
        })
    }

    /// Notes that event `n` arrived. With slots (a measured run), only the first
    /// arrival of an event that has one counts; without (the raw baseline), every
    /// bench event does.
    pub(super) fn arrived(&self, n: Option<usize>) {
        let counts = n.is_some_and(|n| {
            let mut arrived = self.arrived.lock().unwrap_or_else(|e| e.into_inner());
            if arrived.is_empty() {
                return true;
            }
            match arrived.get_mut(n) {
                Some(slot @ None) => {
                    *slot = Some(Instant::now());
                    true
                }
                _ => false,
            }
        });
        if counts {
            self.count.fetch_add(1, Ordering::SeqCst);
        }
        self.notify.notify_one();
    }

    /// A receiver serving `POST /hook` on a free loopback port, and that URL.
    pub(super) async fn serve() -> anyhow::Result<(Arc<Receiver>, String)> {
        let receiver = Receiver::new();
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok((receiver, url))
    }

    /// Inject → receipt of the events numbered from `offset` that were sent at
    /// `sent_at` and arrived, sorted.
    pub(super) fn latencies(&self, sent_at: &[Option<Instant>], offset: usize) -> Vec<Duration> {
        let arrived = self
            .arrived
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut latencies: Vec<Duration> = sent_at
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some(arrived.get(offset + i).copied()??.duration_since((*s)?)))
            .collect();
        latencies.sort();
        latencies
    }

    pub(super) fn reset(&self, slots: usize) {
        self.count.store(0, Ordering::SeqCst);
        *self.arrived.lock().unwrap_or_else(|e| e.into_inner()) = vec![None; slots];
    }

    pub(super) async fn wait_for(&self, n: usize, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        while self.count.load(Ordering::SeqCst) < n {
            let left = deadline.saturating_duration_since(Instant::now());
            anyhow::ensure!(
                !left.is_zero(),
                "only {} of {n} events arrived within {limit:?}",
                self.count.load(Ordering::SeqCst)
            );
            let _ =
                tokio::time::timeout(left.min(Duration::from_millis(50)), self.notify.notified())
                    .await;
        }
        Ok(())
    }
}

/// The number `n` in an event whose message id is `bench-n`.
fn bench_number(body: &[u8]) -> Option<usize> {
    const NEEDLE: &[u8] = b"\"id\":\"bench-";
    let at = body.windows(NEEDLE.len()).position(|w| w == NEEDLE)? + NEEDLE.len();
    let digits: Vec<u8> = body[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

pub(super) async fn receive(State(r): State<Arc<Receiver>>, body: Bytes) -> &'static str {
    r.arrived(bench_number(&body));
    "ok"
}

pub(super) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

pub(super) fn peak_rss_mib() -> f64 {
    waas::metrics::proc_status_kib("VmHWM").map_or(0.0, |kib| kib as f64 / 1024.0)
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    waas::install_crypto_provider();
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build; run `cargo run --release -- bench` for real figures"
        );
    }

    let receiver = Receiver::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hook_url = format!("http://{}/hook", listener.local_addr()?);
    let router = axum::Router::new()
        .fallback(receive)
        .with_state(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });

    let sample_body = sample_event_body();
    println!(
        "waas bench: {} events, concurrency {}, body {} bytes, storage.synchronous = {}",
        args.events,
        args.concurrency,
        sample_body.len(),
        args.synchronous
    );

    // 1. Raw baseline.
    receiver.reset(0);
    let raw = raw_baseline(&hook_url, &sample_body, args.events, args.concurrency).await?;
    receiver
        .wait_for(args.events, Duration::from_secs(60))
        .await?;
    let raw_rate = args.events as f64 / raw.as_secs_f64();
    println!(
        "raw baseline      {raw_rate:>10.0} events/s  ({:.2}s)",
        raw.as_secs_f64()
    );

    // 2. Relay throughput.
    let accounts = if args.accounts <= 1 {
        "[puppet]\nskip_older_than = \"1h\"\n".to_string()
    } else {
        (0..args.accounts)
            .map(|n| {
                format!(
                    "[[accounts]]\nname = \"a{n}\"\n[accounts.puppet]\nskip_older_than = \"1h\"\n"
                )
            })
            .collect()
    };
    let embedded = Embedded::start(&format!(
        "[storage]\nsynchronous = \"{}\"\n[log]\nlevel = \"warn\"\n{accounts}\
         [[webhooks]]\nname = \"bench\"\nurl = \"{hook_url}\"\nsecret = \"{}\"\nevents = [\"message\"]\nmax_in_flight = {}\n",
        args.synchronous,
        waas::relay::signing::generate_secret(),
        args.concurrency
    ))
    .await
    .context("starting the relay")?;
    println!("accounts          {:>10}", embedded.mocks.len());
    let mocks = Arc::new(embedded.mocks.clone());

    receiver.reset(args.events);
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut injectors = Vec::new();
    for _ in 0..args.injectors {
        let (mocks, next, total) = (mocks.clone(), next.clone(), args.events);
        injectors.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                mocks[i % mocks.len()].inject(injection(i)).await?;
            }
        }));
    }
    for i in injectors {
        i.await??;
    }
    let stored = started.elapsed();
    receiver
        .wait_for(args.events, Duration::from_secs(120))
        .await?;
    let relay = started.elapsed();
    let relay_rate = args.events as f64 / relay.as_secs_f64();
    let lost = receiver
        .arrived
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|a| a.is_none())
        .count();
    println!(
        "relay (durable)   {relay_rate:>10.0} events/s  ({:.2}s; all stored after {:.2}s)",
        relay.as_secs_f64(),
        stored.as_secs_f64()
    );
    println!(
        "relay / raw       {:>10.1} %",
        relay_rate / raw_rate * 100.0
    );
    println!("lost              {lost:>10}");

    // 3. Latency at a steady rate, on the same relay (offset ids to stay apart).
    let total = (args.rate * args.seconds) as usize;
    let (achieved, latencies) = steady(&receiver, args.rate, total, args.events, |i| {
        mocks[i % mocks.len()].clone()
    })
    .await?;
    let lost_steady = total - latencies.len();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "latency @ {:.0}/s  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} events, lost {lost_steady})",
        achieved,
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default()),
        total
    );
    println!(
        "peak RSS          {:>10.1} MiB (whole process: relay + receiver + load)",
        peak_rss_mib()
    );

    embedded.stop().await?;
    anyhow::ensure!(lost == 0 && lost_steady == 0, "events were lost");
    Ok(())
}

/// Injects `total` events at `rate` per second (numbered from `offset`, each through
/// the mock `mock(i)` gives) and waits for all of them at the receiver. Answers the rate
/// achieved and each event's latency, injection call to receipt, sorted.
pub(super) async fn steady(
    receiver: &Receiver,
    rate: u64,
    total: usize,
    offset: usize,
    mock: impl Fn(usize) -> Arc<waas::puppet::mock::MockPuppet>,
) -> anyhow::Result<(f64, Vec<Duration>)> {
    receiver.reset(offset + total);
    let mut sent_at = vec![None; total];
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let begin = tokio::time::Instant::now();
    let mut pending = tokio::task::JoinSet::new();
    for (i, slot) in sent_at.iter_mut().enumerate() {
        tokio::time::sleep_until(begin + interval * i as u32).await;
        *slot = Some(Instant::now());
        let mock = mock(i);
        pending.spawn(async move { mock.inject(injection(offset + i)).await.map(|_| ()) });
        while let Some(done) = pending.try_join_next() {
            done??;
        }
    }
    while let Some(done) = pending.join_next().await {
        done??;
    }
    let achieved = total as f64 / begin.elapsed().as_secs_f64();
    receiver.wait_for(total, Duration::from_secs(60)).await?;
    Ok((achieved, receiver.latencies(&sent_at, offset)))
}

pub(super) fn injection(i: usize) -> Injection {
    Injection {
        from: "alice".into(),
        room: i.is_multiple_of(2).then(|| "room1@chatroom".to_string()),
        text: format!("bench message {i}"),
        mentions: Vec::new(),
        id: Some(format!("bench-{i}")),
        media: None,
    }
}

/// A body the size of a real message event, for the baseline.
fn sample_event_body() -> String {
    let contact = r#"{"id":"alice","name":"Alice","alias":null,"friend":true,"gender":"unknown","province":null,"city":null,"avatar":null,"self":false}"#;
    format!(
        r#"{{"id":"evt_01JD0000000000000000000000","type":"message","timestamp":"2026-11-23T18:00:00.123Z","seq":1,"bot":{{"id":"bot-user","name":"MockBot"}},"data":{{"id":"bench-0","kind":"text","text":"bench message 0","from":{contact},"to":null,"room":{{"id":"room1@chatroom","topic":"Mock Room","member_count":4}},"mentions":[],"mentions_self":false,"sent_at":"2026-11-23T17:59:59Z"}}}}"#
    )
}

async fn raw_baseline(
    url: &str,
    body: &str,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Duration> {
    let client = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, next, url, body) = (
            client.clone(),
            next.clone(),
            url.to_string(),
            body.to_string(),
        );
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let resp = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await?;
                anyhow::ensure!(
                    resp.status().is_success(),
                    "receiver said {}",
                    resp.status()
                );
                resp.bytes().await?;
            }
            Ok(())
        }));
    }
    for w in workers {
        w.await??;
    }
    Ok(started.elapsed())
}
