//! `waas soak`: the relay under a steady load against a hostile receiver that fails
//! 30 % of requests (HTTP 500), times out 5 % (answers after the webhook's timeout) and
//! resets 5 % of connections. It ends when every event has been delivered (or fails
//! when some were not by the deadline) and prints RSS at the start and end of the load.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use waas::harness::Embedded;
use waas::puppet::mock::Injection;

#[derive(clap::Args, Debug, Clone)]
pub struct SoakArgs {
    /// How long to inject, in seconds.
    #[arg(long, default_value_t = 600)]
    pub seconds: u64,
    /// Events per second.
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
    /// How long after the load every event must have landed, in seconds.
    #[arg(long, default_value_t = 120)]
    pub drain_seconds: u64,
}

/// What the chaotic receiver saw. Deliveries are marked in a bitmap by the soak
/// number in the message id, so the harness's own memory stays flat and RSS growth
/// belongs to the relay.
#[derive(Default)]
struct Seen {
    delivered: Mutex<Vec<bool>>,
    delivered_count: AtomicUsize,
    requests: AtomicUsize,
    failed: AtomicUsize,
    timed_out: AtomicUsize,
    reset: AtomicUsize,
}

/// A hand-written HTTP/1.1 receiver, so it can misbehave at the socket level.
async fn chaos_receiver(listener: TcpListener, seen: Arc<Seen>, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
            _ = stop.cancelled() => return,
        };
        let seen = seen.clone();
        tokio::spawn(async move {
            let _ = serve_one(stream, &seen).await;
        });
    }
}

async fn serve_one(mut stream: TcpStream, seen: &Seen) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (key, value) = l.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let _ = header("webhook-id");
    while buf.len() < header_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    seen.requests.fetch_add(1, Ordering::Relaxed);
    let roll: f64 = rand::random();
    if roll < 0.05 {
        // Reset: close with SO_LINGER 0, which sends RST instead of FIN.
        seen.reset.fetch_add(1, Ordering::Relaxed);
        // Deprecated because a non-zero linger blocks on drop; zero never does.
        #[allow(deprecated)]
        stream.set_linger(Some(Duration::ZERO))?;
        return Ok(());
    }
    if roll < 0.10 {
        seen.timed_out.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let status = if roll < 0.40 {
        if roll >= 0.10 {
            seen.failed.fetch_add(1, Ordering::Relaxed);
        }
        "500 Internal Server Error"
    } else {
        if let Some(n) = soak_number(&buf[header_end..]) {
            let mut delivered = seen.delivered.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(slot) = delivered.get_mut(n)
                && !*slot
            {
                *slot = true;
                seen.delivered_count.fetch_add(1, Ordering::Relaxed);
            }
        }
        "200 OK"
    };
    let response = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// `n` in a body whose message id is `soak-n`.
fn soak_number(body: &[u8]) -> Option<usize> {
    const NEEDLE: &[u8] = b"\"id\":\"soak-";
    let at = body.windows(NEEDLE.len()).position(|w| w == NEEDLE)? + NEEDLE.len();
    let digits = body[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&body[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

fn rss_mib() -> f64 {
    waas::metrics::proc_status_kib("VmRSS").map_or(0.0, |kib| kib as f64 / 1024.0)
}

/// Runs the soak; an error when any event was not delivered by the deadline.
pub async fn run(args: SoakArgs) -> anyhow::Result<()> {
    waas::install_crypto_provider();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let seen = Arc::new(Seen::default());
    let stop = CancellationToken::new();
    tokio::spawn(chaos_receiver(listener, seen.clone(), stop.clone()));

    // Enough quick steps that 40 % failing attempts never exhaust them (0.4^16 ≈ 4e-7).
    let relay = Embedded::start(&format!(
        "[log]\nlevel = \"error\"\n[puppet]\nskip_older_than = \"1h\"\n\
         [[webhooks]]\nname = \"chaos\"\nurl = \"{url}\"\nsecret = \"{}\"\nevents = [\"message\"]\n\
         timeout = \"1s\"\nmax_in_flight = 64\nretry = [{}]\n",
        waas::relay::signing::generate_secret(),
        vec!["\"1s\""; 16].join(", ")
    ))
    .await
    .context("starting the relay")?;
    let mock = relay.mock()?.clone();

    let total = (args.seconds * args.rate) as usize;
    println!(
        "waas soak: {total} events at {}/s for {} s; receiver fails 30 %, times out 5 %, resets 5 %",
        args.rate, args.seconds
    );
    *seen.delivered.lock().unwrap_or_else(|e| e.into_inner()) = vec![false; total];
    let rss_start = rss_mib();
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    let begin = tokio::time::Instant::now();
    let mut next_report = Instant::now() + Duration::from_secs(10);
    for i in 0..total {
        tokio::time::sleep_until(begin + interval * i as u32).await;
        mock.inject(Injection {
            from: "alice".into(),
            text: format!("soak {i}"),
            id: Some(format!("soak-{i}")),
            ..Injection::default()
        })
        .await?;
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(10);
            let delivered = seen.delivered_count.load(Ordering::Relaxed);
            println!(
                "  {:>4} s: injected {}, delivered {delivered}, requests {}, RSS {:.1} MiB",
                begin.elapsed().as_secs(),
                i + 1,
                seen.requests.load(Ordering::Relaxed),
                rss_mib()
            );
        }
    }
    let rss_loaded = rss_mib();
    let deadline = Instant::now() + Duration::from_secs(args.drain_seconds);
    // Until every event arrived and its delivery is recorded (the backlog is empty).
    let (missing, backlog) = loop {
        let missing = total - seen.delivered_count.load(Ordering::Relaxed);
        let backlog = relay
            .app
            .store
            .webhook_stats()
            .await?
            .get("chaos")
            .map_or((0, 0), |s| (s.pending, s.dead));
        if (missing == 0 && backlog == (0, 0)) || Instant::now() >= deadline {
            break (missing, backlog);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "events {total}, delivered {}, missing {missing}; requests {}: 500 {}, timeouts {}, resets {}",
        total - missing,
        seen.requests.load(Ordering::Relaxed),
        seen.failed.load(Ordering::Relaxed),
        seen.timed_out.load(Ordering::Relaxed),
        seen.reset.load(Ordering::Relaxed)
    );
    println!(
        "backlog after drain: pending {}, dead {}; RSS start {rss_start:.1} MiB, end of load {rss_loaded:.1} MiB, after drain {:.1} MiB",
        backlog.0,
        backlog.1,
        rss_mib()
    );
    relay.stop().await?;
    stop.cancel();
    anyhow::ensure!(missing == 0, "{missing} events were not delivered in time");
    anyhow::ensure!(backlog == (0, 0), "backlog not empty: {backlog:?}");
    Ok(())
}
