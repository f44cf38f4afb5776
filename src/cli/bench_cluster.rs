//! `waas bench --cluster`: several waas processes (this binary) on one PostgreSQL
//! database, measured from outside. Throughput: `--events` messages injected over HTTP
//! (`POST /v1/accounts/{account}/mock/messages`, 16 concurrent clients, each message to
//! the instance holding its account) until every one has reached a local webhook
//! receiver, with 1, 2 and 4 instances in the same run (1 is the baseline). Failover:
//! two instances, one account; the holder is killed (SIGKILL) `--failovers` times and
//! the time until the survivor holds the account and is logged in is measured.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use waas::harness::ScratchDatabase;

use super::bench::{BenchArgs, Receiver};
use super::child::{Proc, Scratch, port};

fn spawn(
    dir: &std::path::Path,
    name: &str,
    db: &ScratchDatabase,
    accounts: usize,
    lease: &str,
    webhook: &str,
) -> anyhow::Result<Proc> {
    let port = port()?;
    let config = dir.join(format!("{name}.toml"));
    let accounts: String = (1..=accounts)
        .map(|i| {
            format!(
                "[[accounts]]\nname = \"acct{i}\"\n[accounts.puppet.mock]\nbot = {{ id = \"bot-user\", name = \"Bot{i}\" }}\n"
            )
        })
        .collect();
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[storage]\nurl = \"{}\"\n\
             [cluster]\ninstance = \"{name}\"\nlease = \"{lease}\"\n\
             [[webhooks]]\nname = \"bench\"\nurl = \"{webhook}\"\n\
             secret = \"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"\nevents = [\"message\"]\n\
             max_in_flight = 32\n{accounts}",
            db.url
        ),
    )?;
    let child = Command::new(std::env::current_exe()?)
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start a waas child process")?;
    Ok(Proc {
        child,
        base: format!("http://127.0.0.1:{port}"),
        name: name.to_string(),
    })
}

async fn get(client: &reqwest::Client, url: &str) -> Option<Value> {
    let r = client.get(url).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

/// Waits until every account is held and logged in, and the accounts are spread evenly;
/// answers each account's holder's base URL.
async fn settled(
    client: &reqwest::Client,
    children: &[Proc],
    accounts: usize,
    limit: Duration,
) -> anyhow::Result<HashMap<String, String>> {
    let deadline = Instant::now() + limit;
    loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the accounts did not settle over the instances"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Some(cluster) = get(client, &format!("{}/v1/cluster", children[0].base)).await else {
            continue;
        };
        let mut counts: HashMap<String, usize> = HashMap::new();
        let mut holders = HashMap::new();
        for account in cluster["accounts"].as_array().into_iter().flatten() {
            if let (Some(name), Some(holder)) =
                (account["name"].as_str(), account["holder"].as_str())
            {
                *counts.entry(holder.to_string()).or_default() += 1;
                holders.insert(name.to_string(), holder.to_string());
            }
        }
        let fair = accounts.div_ceil(children.len());
        if holders.len() < accounts
            || counts.len() < children.len().min(accounts)
            || counts.values().any(|n| *n > fair)
        {
            continue;
        }
        let mut bases = HashMap::new();
        let mut all_in = true;
        for (account, holder) in &holders {
            let Some(child) = children.iter().find(|c| &c.name == holder) else {
                all_in = false;
                break;
            };
            let session = get(
                client,
                &format!("{}/v1/accounts/{account}/session", child.base),
            )
            .await;
            if session.is_none_or(|s| s["state"] != "logged_in") {
                all_in = false;
                break;
            }
            bases.insert(account.clone(), child.base.clone());
        }
        if all_in {
            return Ok(bases);
        }
    }
}

async fn throughput(
    args: &BenchArgs,
    admin: &str,
    instances: usize,
    receiver: &Arc<Receiver>,
    webhook: &str,
) -> anyhow::Result<f64> {
    let db = ScratchDatabase::create(admin, "waas_bench").await?;
    let dir = Scratch::new()?;
    let client = reqwest::Client::new();
    let mut children = Vec::new();
    for i in 0..instances {
        children.push(spawn(
            dir.path(),
            &format!("i{i}"),
            &db,
            args.accounts,
            "3s",
            webhook,
        )?);
    }
    let holders = settled(&client, &children, args.accounts, Duration::from_secs(60)).await?;
    receiver.reset(args.events);
    let next = Arc::new(AtomicUsize::new(0));
    let holders = Arc::new(holders);
    let started = Instant::now();
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let (next, holders, client, total, accounts) = (
                next.clone(),
                holders.clone(),
                client.clone(),
                args.events,
                args.accounts,
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= total {
                        return Ok::<_, anyhow::Error>(());
                    }
                    let account = format!("acct{}", i % accounts + 1);
                    let base = &holders[&account];
                    let resp = client
                        .post(format!("{base}/v1/accounts/{account}/mock/messages"))
                        .json(&json!({"from": "alice", "text": format!("bench message {i}"), "id": format!("bench-{i}")}))
                        .send()
                        .await?;
                    anyhow::ensure!(resp.status() == 201, "inject answered {}", resp.status());
                }
            })
        })
        .collect();
    for c in clients {
        c.await??;
    }
    let injected = started.elapsed();
    receiver
        .wait_for(args.events, Duration::from_secs(300))
        .await?;
    let elapsed = started.elapsed();
    drop(children);
    drop(db);
    let rate = args.events as f64 / elapsed.as_secs_f64();
    println!(
        "  {instances} instance(s), {} accounts: {} events injected in {:.2} s, all delivered in {:.2} s: {rate:.0} events/s",
        args.accounts,
        args.events,
        injected.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    Ok(rate)
}

async fn failovers(args: &BenchArgs, admin: &str, webhook: &str) -> anyhow::Result<Vec<Duration>> {
    let db = ScratchDatabase::create(admin, "waas_bench").await?;
    let dir = Scratch::new()?;
    let client = reqwest::Client::new();
    let lease = args.lease.as_str();
    let mut children = vec![
        spawn(dir.path(), "f0", &db, 1, lease, webhook)?,
        spawn(dir.path(), "f1", &db, 1, lease, webhook)?,
    ];
    settled(&client, &children, 1, Duration::from_secs(60)).await?;
    let mut times = Vec::new();
    let lease_ms = humantime::parse_duration(lease)
        .context("--lease is a duration like 10s")?
        .as_millis() as u64;
    for round in 0..args.failovers {
        // Killed anywhere in the holder's renewal cycle.
        tokio::time::sleep(Duration::from_millis(rand::random_range(0..lease_ms))).await;
        let cluster = get(&client, &format!("{}/v1/cluster", children[0].base))
            .await
            .context("no /v1/cluster")?;
        let holder = cluster["accounts"][0]["holder"]
            .as_str()
            .context("nobody holds the account")?
            .to_string();
        let at = children
            .iter()
            .position(|c| c.name == holder)
            .context("the holder is not one of ours")?;
        let survivor = children[1 - at].base.clone();
        let mut dead = children.remove(at);
        let _ = dead.child.kill();
        let _ = dead.child.wait();
        let killed = Instant::now();
        loop {
            anyhow::ensure!(
                killed.elapsed() < Duration::from_secs(120),
                "no takeover after the kill"
            );
            let held = get(&client, &format!("{survivor}/v1/cluster"))
                .await
                .is_some_and(|c| {
                    c["accounts"][0]["holder"].as_str() != Some(holder.as_str())
                        && !c["accounts"][0]["holder"].is_null()
                });
            let logged_in = held
                && get(&client, &format!("{survivor}/v1/accounts/acct1/session"))
                    .await
                    .is_some_and(|s| s["state"] == "logged_in");
            if logged_in {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = killed.elapsed();
        println!(
            "  kill {}: {holder} killed, the survivor logged in after {:.2} s",
            round + 1,
            took.as_secs_f64()
        );
        times.push(took);
        // The killed instance comes back (under a new name) as the next standby.
        let name = format!("f{}", round + 2);
        children.insert(at, spawn(dir.path(), &name, &db, 1, lease, webhook)?);
        let base = children[at].base.clone();
        let deadline = Instant::now() + Duration::from_secs(30);
        while get(&client, &format!("{base}/readyz")).await.is_none() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the restarted instance never got ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    drop(children);
    drop(db);
    Ok(times)
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    waas::install_crypto_provider();
    let admin = args.postgres.clone();
    let most = args.instances.iter().copied().max().unwrap_or(1);
    anyhow::ensure!(
        args.accounts >= most,
        "--cluster needs at least as many accounts as instances (--accounts {most} or more): an account runs in one instance"
    );
    let (receiver, webhook) = Receiver::serve().await?;

    println!(
        "waas bench --cluster: {} events over HTTP (16 clients) to {} mock accounts, delivered to a local receiver; PostgreSQL at {}",
        args.events,
        args.accounts,
        waas::store::postgres::redact(&admin)
    );
    let mut rates = Vec::new();
    for n in &args.instances {
        rates.push((
            *n,
            throughput(&args, &admin, *n, &receiver, &webhook).await?,
        ));
    }
    let base = rates.first().map_or(1.0, |(_, r)| *r);
    println!("instances  events/s  vs {} instance(s)", rates[0].0);
    for (n, rate) in &rates {
        println!("{n:>9}  {rate:>8.0}  {:>5.2}", rate / base);
    }
    if args.failovers > 0 {
        println!(
            "failover: two instances, one account, cluster.lease = {}, {} kills of the holder",
            args.lease, args.failovers
        );
        let mut times = failovers(&args, &admin, &webhook).await?;
        times.sort();
        let median = times[times.len() / 2];
        let max = times[times.len() - 1];
        println!(
            "failover: median {:.2} s, max {:.2} s, min {:.2} s over {} kills",
            median.as_secs_f64(),
            max.as_secs_f64(),
            times[0].as_secs_f64(),
            times.len()
        );
    }
    Ok(())
}
