//! `waas bench --http` and `waas bench --grpc`: waas measured from outside, through its
//! public contract, against a relay that stores nothing, in the same run.
//!
//! Two processes of this binary are measured one after the other, each on its own:
//! the **null relay** (a hidden `waas null-relay`: the same inject request and the same
//! signed webhook, nothing stored; see `null_relay.rs`) and **waas** (`waas serve`, the
//! SQLite store at `synchronous = full` by default, one standard webhook). Events reach
//! them the way a real puppet or a load test would bring them:
//!
//! - `--http`: `POST /v1/mock/messages` by `--clients` concurrent HTTP clients, each
//!   waiting for its answer (201 from waas once the event is committed);
//! - `--grpc`: `POST /say` to the real Wechaty puppet-service fixture (npm), which emits
//!   each message over the gRPC event stream; the relay reads its payload over gRPC.
//!
//! For each: events/s over `--events` (from the first request until the local webhook
//! receiver holds every event), CPU time per event of the relay's process (user + sys
//! from `/proc`, over the same window), then inject→receipt latency at a steady
//! `--rate` for `--seconds`, and the events lost (the bench fails if any is).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use super::bench::{BenchArgs, Receiver, percentile};
use super::child::{Proc, Scratch, cpu_time, peak_rss_mib, port};

#[derive(Clone, Copy, PartialEq)]
enum Relay {
    Null,
    /// `--against`: another waas binary, measured as waas is.
    Earlier,
    Waas,
}

impl Relay {
    fn label(self) -> &'static str {
        match self {
            Relay::Null => "null relay",
            Relay::Earlier => "against",
            Relay::Waas => "waas",
        }
    }
}

/// Where events are injected: a relay's mock route or the fixture's control API.
#[derive(Clone)]
struct Target {
    url: String,
    status: u16,
}

impl Target {
    async fn inject(&self, client: &reqwest::Client, i: usize) -> anyhow::Result<()> {
        let mut body = json!({"from": "alice", "text": format!("bench message {i}"), "id": format!("bench-{i}")});
        if i.is_multiple_of(2) {
            body["room"] = json!("room1@chatroom");
        }
        let response = client.post(&self.url).json(&body).send().await?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        anyhow::ensure!(
            status == self.status,
            "{} answered {status}: {text}",
            self.url
        );
        Ok(())
    }
}

/// What one relay did.
struct Figures {
    rate: f64,
    cpu_per_event: Duration,
    fixture_cpu_per_event: Option<Duration>,
    latencies: Vec<Duration>,
    achieved: f64,
    lost: usize,
    steady_total: usize,
    peak_rss: Option<f64>,
    /// The store's group commits over the throughput window (waas's own
    /// `/metrics`; `None` for the null relay and for a build without them).
    store: Option<Commits>,
}

/// `waas_store_commit_seconds`, `waas_store_writes_total` and
/// `waas_store_append_seconds`, or their change over a window.
#[derive(Clone, Copy, Default)]
struct Commits {
    /// Commits that waited for the disk (`sync="full"`), and their total time (s).
    synced: f64,
    synced_seconds: f64,
    /// Commits that did not (attempt records alone, with nothing else to wait for).
    unsynced: f64,
    writes: f64,
    /// Appends handed to the store (`waas_store_append_seconds`), and their total wait
    /// for a commit (s).
    appends: f64,
    append_seconds: f64,
}

impl Commits {
    /// Read off a relay's Prometheus text; `None` if it has no such metrics.
    async fn read(client: &reqwest::Client, base: &str) -> Option<Commits> {
        let text = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        };
        Some(Commits {
            synced: value("waas_store_commit_seconds_count{sync=\"full\"}").unwrap_or(0.0),
            synced_seconds: value("waas_store_commit_seconds_sum{sync=\"full\"}").unwrap_or(0.0),
            unsynced: value("waas_store_commit_seconds_count{sync=\"normal\"}").unwrap_or(0.0),
            writes: value("waas_store_writes_total")?,
            appends: value("waas_store_append_seconds_count").unwrap_or(0.0),
            append_seconds: value("waas_store_append_seconds_sum").unwrap_or(0.0),
        })
    }

    fn since(self, before: Commits) -> Commits {
        Commits {
            synced: self.synced - before.synced,
            synced_seconds: self.synced_seconds - before.synced_seconds,
            unsynced: self.unsynced - before.unsynced,
            writes: self.writes - before.writes,
            appends: self.appends - before.appends,
            append_seconds: self.append_seconds - before.append_seconds,
        }
    }

    /// An append's mean wait for its commit (ms), if the build measures it.
    fn append_wait(&self) -> Option<f64> {
        (self.appends > 0.0).then(|| self.append_seconds / self.appends * 1000.0)
    }

    /// Events per commit that waited for the disk, and such a commit's mean time (ms).
    fn per_synced(&self, events: usize) -> Option<(f64, f64)> {
        (self.synced > 0.0).then(|| {
            (
                events as f64 / self.synced,
                self.synced_seconds / self.synced * 1000.0,
            )
        })
    }
}

/// The puppet-service fixture (Node), started fresh for each relay.
fn start_fixture(dir: &std::path::Path) -> anyhow::Result<(Proc, String, String)> {
    let (grpc, control) = (port()?, port()?);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/puppet-service/server.mjs");
    anyhow::ensure!(
        script
            .parent()
            .is_some_and(|d| d.join("node_modules").exists()),
        "--grpc needs the puppet-service fixture installed: (cd tests/fixtures/puppet-service && npm install)"
    );
    let log = std::fs::File::create(dir.join("fixture.log"))?;
    let child = std::process::Command::new("node")
        .arg(&script)
        .env("PORT", grpc.to_string())
        .env("CONTROL_PORT", control.to_string())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start node (is Node.js installed?)")?;
    let base = format!("http://127.0.0.1:{control}");
    Ok((
        Proc {
            child,
            base: base.clone(),
            name: "fixture".into(),
        },
        format!("127.0.0.1:{grpc}"),
        base,
    ))
}

fn start_relay(
    relay: Relay,
    dir: &std::path::Path,
    args: &BenchArgs,
    webhook: &str,
    secret: &str,
    puppet_service: Option<&str>,
) -> anyhow::Result<Proc> {
    let port = port()?;
    let listen = format!("127.0.0.1:{port}");
    let log = std::fs::File::create(dir.join(format!("{}.log", relay.label().replace(' ', "-"))))?;
    let mut command = std::process::Command::new(match (relay, &args.against) {
        (Relay::Earlier, Some(binary)) => binary.clone(),
        _ => std::env::current_exe()?,
    });
    match relay {
        Relay::Null => {
            command.args([
                "null-relay",
                "--listen",
                &listen,
                "--webhook",
                webhook,
                "--secret",
                secret,
                "--max-in-flight",
                &args.concurrency.to_string(),
            ]);
            if let Some(endpoint) = puppet_service {
                command.args(["--puppet-service", endpoint]);
            }
        }
        Relay::Waas | Relay::Earlier => {
            let puppet = match puppet_service {
                Some(endpoint) => format!(
                    "[puppet]\nkind = \"service\"\n[puppet.service]\nendpoint = \"{endpoint}\"\ntoken = \"insecure_waas_test\"\n"
                ),
                None => String::new(),
            };
            let config = dir.join("waas.toml");
            std::fs::write(
                &config,
                format!(
                    "[server]\nlisten = \"{listen}\"\npublic_url = \"http://{listen}\"\n\
                     [storage]\nurl = \"sqlite://{}\"\nsynchronous = \"{}\"\n\
                     [log]\nlevel = \"warn\"\n{puppet}\
                     [[webhooks]]\nname = \"bench\"\nurl = \"{webhook}\"\nsecret = \"{secret}\"\n\
                     events = [\"message\"]\nmax_in_flight = {}\n",
                    dir.join("waas.db").display(),
                    args.synchronous,
                    args.concurrency
                ),
            )?;
            command.args(["serve", "--config"]).arg(&config);
        }
    }
    let child = command
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start a child process of this binary")?;
    Ok(Proc {
        child,
        base: format!("http://{listen}"),
        name: relay.label().into(),
    })
}

async fn wait_ready(client: &reqwest::Client, url: &str, proc: &mut Proc) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if let Some(status) = proc.child.try_wait()? {
            anyhow::bail!("{} exited ({status}) before it was ready", proc.name);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} was not ready within 60 s ({url})",
            proc.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `total` events numbered from `offset` by `clients` concurrent clients, as fast as
/// they are answered.
async fn flood(
    client: &reqwest::Client,
    target: &Target,
    offset: usize,
    total: usize,
    clients: usize,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..clients.max(1))
        .map(|_| {
            let (client, target, next) = (client.clone(), target.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return Ok::<_, anyhow::Error>(());
                    }
                    target.inject(&client, offset + i).await?;
                }
            })
        })
        .collect();
    for w in workers {
        w.await??;
    }
    Ok(())
}

/// The last lines of the logs in `dir`, for an error message.
fn log_tail(dir: &std::path::Path) -> String {
    let mut tail = String::new();
    for name in ["waas.log", "against.log", "null-relay.log", "fixture.log"] {
        if let Ok(log) = std::fs::read_to_string(dir.join(name)) {
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("panicked") || !l.contains("the store is shut down"))
                .collect();
            let from = lines.len().saturating_sub(20);
            if from < lines.len() {
                tail.push_str(&format!(
                    "\n--- the end of {name}:\n{}",
                    lines[from..].join("\n")
                ));
            }
        }
    }
    tail
}

/// What every relay of a run is measured with.
struct Setup<'a> {
    args: &'a BenchArgs,
    grpc: bool,
    receiver: &'a Arc<Receiver>,
    webhook: &'a str,
}

async fn measure(relay: Relay, setup: &Setup<'_>) -> anyhow::Result<Figures> {
    let dir = Scratch::new()?;
    match measure_in(&dir, relay, setup).await {
        Ok(figures) => Ok(figures),
        Err(e) => Err(e.context(format!("{}{}", relay.label(), log_tail(dir.path())))),
    }
}

async fn measure_in(dir: &Scratch, relay: Relay, setup: &Setup<'_>) -> anyhow::Result<Figures> {
    let Setup {
        args,
        grpc,
        receiver,
        webhook,
    } = *setup;
    let secret = waas::relay::signing::generate_secret();
    let client = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let mut fixture = None;
    let endpoint = if grpc {
        let (mut proc, endpoint, control) = start_fixture(dir.path())?;
        wait_ready(&client, &format!("{control}/health"), &mut proc).await?;
        fixture = Some(proc);
        Some(endpoint)
    } else {
        None
    };
    let mut proc = start_relay(
        relay,
        dir.path(),
        args,
        webhook,
        &secret,
        endpoint.as_deref(),
    )?;
    wait_ready(&client, &format!("{}/readyz", proc.base), &mut proc).await?;
    let target = match &fixture {
        Some(f) => Target {
            url: format!("{}/say", f.base),
            status: 200,
        },
        None => Target {
            url: format!("{}/v1/mock/messages", proc.base),
            status: 201,
        },
    };

    // Warm-up: connections, caches, the store's first pages.
    let warm = 1000.min(args.events);
    receiver.reset(warm);
    flood(&client, &target, 0, warm, args.clients).await?;
    receiver.wait_for(warm, Duration::from_secs(60)).await?;

    // Throughput, and CPU per event over the same window.
    let offset = warm;
    receiver.reset(offset + args.events);
    let commits_before = Commits::read(&client, &proc.base).await;
    let cpu_before = proc.cpu()?;
    let fixture_before = fixture.as_ref().map(Proc::cpu).transpose()?;
    let started = Instant::now();
    flood(&client, &target, offset, args.events, args.clients).await?;
    receiver
        .wait_for(args.events, Duration::from_secs(300))
        .await
        .with_context(|| format!("{}: not every event arrived", relay.label()))?;
    let elapsed = started.elapsed();
    let cpu = proc.cpu()?.saturating_sub(cpu_before);
    let fixture_cpu = match (&fixture, fixture_before) {
        (Some(f), Some(before)) => Some(f.cpu()?.saturating_sub(before)),
        _ => None,
    };
    let store = match commits_before {
        Some(before) => Commits::read(&client, &proc.base)
            .await
            .map(|after| after.since(before)),
        None => None,
    };
    let per_event = |d: Duration| d / args.events as u32;
    let rate = args.events as f64 / elapsed.as_secs_f64();
    let lost = {
        let arrived = receiver.arrived.lock().unwrap_or_else(|e| e.into_inner());
        arrived[offset..].iter().filter(|a| a.is_none()).count()
    };

    // Latency at a steady rate.
    let offset = offset + args.events;
    let total = (args.rate * args.seconds) as usize;
    receiver.reset(offset + total);
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let mut sent_at = vec![None; total];
    let begin = tokio::time::Instant::now();
    let mut pending = tokio::task::JoinSet::new();
    for (i, slot) in sent_at.iter_mut().enumerate() {
        tokio::time::sleep_until(begin + interval * i as u32).await;
        *slot = Some(Instant::now());
        let (client, target) = (client.clone(), target.clone());
        pending.spawn(async move { target.inject(&client, offset + i).await });
        while let Some(done) = pending.try_join_next() {
            done??;
        }
    }
    while let Some(done) = pending.join_next().await {
        done??;
    }
    let achieved = total as f64 / begin.elapsed().as_secs_f64();
    let _ = receiver.wait_for(total, Duration::from_secs(60)).await;
    let latencies = receiver.latencies(&sent_at, offset);
    let lost = lost + total - latencies.len();
    let peak_rss = peak_rss_mib(proc.child.id());
    drop(proc);
    drop(fixture);
    Ok(Figures {
        rate,
        cpu_per_event: per_event(cpu),
        fixture_cpu_per_event: fixture_cpu.map(per_event),
        latencies,
        achieved,
        lost,
        steady_total: total,
        peak_rss,
        store,
    })
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    waas::install_crypto_provider();
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build; run `cargo run --release -- bench` for real figures"
        );
    }
    // Make sure the CPU figures can be read before anything is started.
    cpu_time(std::process::id())?;
    let grpc = args.grpc;
    let (receiver, webhook) = Receiver::serve().await?;
    println!(
        "waas bench --{}: {} events by {} concurrent clients ({}), then {}/s for {} s; webhook max_in_flight {}, storage.synchronous = {}",
        if grpc { "grpc" } else { "http" },
        args.events,
        args.clients,
        if grpc {
            "POST /say to the puppet-service fixture, over its gRPC stream"
        } else {
            "POST /v1/mock/messages"
        },
        args.rate,
        args.seconds,
        args.concurrency,
        args.synchronous
    );
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    if let Some(binary) = &args.against {
        anyhow::ensure!(
            binary.is_file(),
            "--against {}: no such file (give the path of a waas binary, e.g. an earlier build's target/release/waas)",
            binary.display()
        );
        println!("against      {}", binary.display());
    }
    let relays: Vec<Relay> = [Relay::Null, Relay::Earlier, Relay::Waas]
        .into_iter()
        .filter(|r| *r != Relay::Earlier || args.against.is_some())
        .collect();
    let rounds = args.rounds.max(1);
    // figures[round][relay], in the order of `relays`.
    let mut figures: Vec<Vec<Figures>> = Vec::with_capacity(rounds);
    for round in 0..rounds {
        if rounds > 1 {
            println!("round {} of {rounds}", round + 1);
        }
        // Round r starts with relay r (mod n): each relay runs first, in the middle and
        // last equally often over n rounds.
        let mut measured: Vec<Option<Figures>> = relays.iter().map(|_| None).collect();
        for k in 0..relays.len() {
            let i = (round + k) % relays.len();
            let relay = relays[i];
            let setup = Setup {
                args: &args,
                grpc,
                receiver: &receiver,
                webhook: &webhook,
            };
            let f = measure(relay, &setup).await?;
            println!(
                "{:<11} {:>7.0} events/s  CPU {:>6.1} µs/event{}  latency @ {:.0}/s p50 {:.2} ms p99 {:.2} ms max {:.2} ms  lost {} of {}  peak RSS {:.1} MiB",
                relay.label(),
                f.rate,
                f.cpu_per_event.as_secs_f64() * 1e6,
                f.fixture_cpu_per_event
                    .map(|d| format!(" (fixture {:.1} µs/event)", d.as_secs_f64() * 1e6))
                    .unwrap_or_default(),
                f.achieved,
                ms(percentile(&f.latencies, 0.50)),
                ms(percentile(&f.latencies, 0.99)),
                ms(f.latencies.last().copied().unwrap_or_default()),
                f.lost,
                args.events + f.steady_total,
                f.peak_rss.unwrap_or(0.0)
            );
            if let Some(store) = &f.store {
                print_commits(store, args.events);
            }
            measured[i] = Some(f);
        }
        let round_figures: Vec<Figures> = measured.into_iter().flatten().collect();
        compare(&relays, &round_figures);
        figures.push(round_figures);
    }
    if rounds > 1 {
        summarize(&relays, &figures, args.rate, args.events);
    }
    anyhow::ensure!(
        figures.iter().flatten().all(|f| f.lost == 0),
        "events were lost"
    );
    Ok(())
}

/// What the store did over the throughput window: each commit that waits for the disk
/// adds an fsync to the answer of every request in it, and an append's wait adds up the
/// commits it sat through.
fn print_commits(store: &Commits, events: usize) {
    let waited = match store.append_wait() {
        Some(ms) => format!("; an append waited {ms:.2} ms for its commit"),
        None => String::new(),
    };
    match store.per_synced(events) {
        Some((per, ms)) => println!(
            "            store: {:.0} commits with fsync ({per:.1} events each, {ms:.2} ms mean), {:.0} without; {:.1} writes per event{waited}",
            store.synced,
            store.unsynced,
            store.writes / events as f64
        ),
        None => println!(
            "            store: {:.0} commits, none with fsync; {:.1} writes per event{waited}",
            store.unsynced,
            store.writes / events as f64
        ),
    }
}

fn cpu_us(f: &Figures) -> f64 {
    f.cpu_per_event.as_secs_f64().max(1e-9) * 1e6
}

/// One round's ratios: each relay against the null relay, and waas against the other
/// build.
fn compare(relays: &[Relay], figures: &[Figures]) {
    let null = &figures[0];
    for (relay, f) in relays.iter().zip(figures).skip(1) {
        println!(
            "{} / null relay  {:.2} of the events/s; {:.1}× the CPU per event",
            relay.label(),
            f.rate / null.rate,
            cpu_us(f) / cpu_us(null)
        );
    }
    if let [_, earlier, waas] = figures {
        println!(
            "waas / against  {:.2}× the events/s; {:.2} of the CPU per event",
            waas.rate / earlier.rate,
            cpu_us(waas) / cpu_us(earlier)
        );
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Medians over the rounds: of each relay's figures, and of the ratios taken within
/// each round (the machine's pace drifts from round to round; a ratio within a round
/// does not see it).
fn summarize(relays: &[Relay], figures: &[Vec<Figures>], rate: u64, events: usize) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("medians of {} rounds:", figures.len());
    for (i, relay) in relays.iter().enumerate() {
        let of =
            |pick: &dyn Fn(&Figures) -> f64| median(figures.iter().map(|r| pick(&r[i])).collect());
        let synced: Vec<(f64, f64)> = figures
            .iter()
            .filter_map(|r| r[i].store.as_ref()?.per_synced(events))
            .collect();
        let mut store = match synced.len() {
            0 => String::new(),
            _ => format!(
                "  {:.1} events per fsync'd commit of {:.2} ms",
                median(synced.iter().map(|s| s.0).collect()),
                median(synced.iter().map(|s| s.1).collect())
            ),
        };
        let waits: Vec<f64> = figures
            .iter()
            .filter_map(|r| r[i].store.as_ref()?.append_wait())
            .collect();
        if !waits.is_empty() {
            store += &format!(", appends waiting {:.2} ms", median(waits));
        }
        println!(
            "{:<11} {:>7.0} events/s  CPU {:>6.1} µs/event  p99 @ {}/s {:.2} ms{store}",
            relay.label(),
            of(&|f| f.rate),
            of(&cpu_us),
            rate,
            of(&|f| ms(percentile(&f.latencies, 0.99)))
        );
    }
    for (i, relay) in relays.iter().enumerate().skip(1) {
        let rates = median(figures.iter().map(|r| r[i].rate / r[0].rate).collect());
        let cpus = median(
            figures
                .iter()
                .map(|r| cpu_us(&r[i]) / cpu_us(&r[0]))
                .collect(),
        );
        println!(
            "{} / null relay  {rates:.2} of the events/s; {cpus:.2}× the CPU per event (median of the rounds' ratios)",
            relay.label()
        );
    }
    if relays.len() == 3 {
        let rates = median(figures.iter().map(|r| r[2].rate / r[1].rate).collect());
        let cpus = median(
            figures
                .iter()
                .map(|r| cpu_us(&r[2]) / cpu_us(&r[1]))
                .collect(),
        );
        println!(
            "waas / against  {rates:.2}× the events/s; {cpus:.2} of the CPU per event (median of the rounds' ratios)"
        );
    }
}
