//! Crash safety: the built binary, a burst of injected messages to a slow receiver,
//! SIGKILL in the middle, restart on the same database: every acknowledged message is
//! delivered, and a message delivered twice carries the same `webhook-id` both times.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{SECRET, TestReceiver, free_port};
use serde_json::json;

const BURST: usize = 1200;
const KILL_AFTER_ACKS: usize = 600;

/// The child process, killed (SIGKILL) and reaped however the test ends.
struct Waas(Child);

impl Waas {
    fn kill(&mut self) -> std::io::Result<()> {
        self.0.kill()
    }
    fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.0.wait()
    }
    fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.0.try_wait()
    }
    fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Waas {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A config file for the binary: a free loopback port, a fresh database, and `extra`.
struct Setup {
    _dir: tempfile::TempDir,
    base: String,
    config: std::path::PathBuf,
}

fn setup(extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("waas.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[storage]\nurl = \"sqlite://{}/waas.db\"\n{extra}",
            dir.path().display()
        ),
    )
    .unwrap();
    Setup {
        _dir: dir,
        base: format!("http://127.0.0.1:{port}"),
        config,
    }
}

fn start(config: &std::path::Path) -> Waas {
    Waas(
        Command::new(env!("CARGO_BIN_EXE_waas"))
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("waas starts"),
    )
}

async fn wait_ready(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(r) = reqwest::get(format!("{base}/readyz")).await
            && r.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("waas did not become ready");
}

/// Concurrent injectors, recording every acknowledged (event id, message id).
struct Burst {
    count: Arc<AtomicUsize>,
    acked: Arc<std::sync::Mutex<Vec<(String, String)>>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Burst {
    fn start(base: &str, total: usize) -> Burst {
        let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let count = Arc::new(AtomicUsize::new(0));
        let next = Arc::new(AtomicUsize::new(0));
        let client = reqwest::Client::new();
        let workers = (0..16)
            .map(|_| {
                let (acked, count, next, client, base) = (
                    acked.clone(),
                    count.clone(),
                    next.clone(),
                    client.clone(),
                    base.to_string(),
                );
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= total {
                            return;
                        }
                        let sent = client
                            .post(format!("{base}/v1/mock/messages"))
                            .json(&json!({"from": "alice", "text": format!("burst {i}")}))
                            .send()
                            .await;
                        // Refused or cut off by the kill: not acknowledged, stop.
                        let Ok(resp) = sent else { return };
                        if resp.status() != 201 {
                            return;
                        }
                        let Ok(body) = resp.json::<serde_json::Value>().await else {
                            return;
                        };
                        acked.lock().unwrap().push((
                            body["event_id"].as_str().unwrap().to_string(),
                            body["message_id"].as_str().unwrap().to_string(),
                        ));
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        Burst {
            count,
            acked,
            workers,
        }
    }

    async fn finish(self) -> Vec<(String, String)> {
        for w in self.workers {
            let _ = w.await;
        }
        self.acked.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_burst_loses_no_acknowledged_message() {
    waas::install_crypto_provider();
    let receiver = TestReceiver::start().await;
    receiver.set_delay(Duration::from_millis(15));
    let Setup { base, config, .. } = &setup(&format!(
        "[[webhooks]]\nname = \"slow\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\nevents = [\"message\"]\n\
         max_in_flight = 4\nretry = [\"100ms\", \"200ms\", \"400ms\"]\n",
        receiver.url
    ));
    let (base, config) = (base.as_str(), config.as_path());

    let mut child = start(config);
    wait_ready(base).await;

    // Inject from 16 concurrent clients; SIGKILL once KILL_AFTER_ACKS are acknowledged.
    let burst = Burst::start(base, BURST);
    let deadline = Instant::now() + Duration::from_secs(60);
    while burst.count.load(Ordering::SeqCst) < KILL_AFTER_ACKS {
        assert!(Instant::now() < deadline, "the burst stalled");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    child.kill().expect("SIGKILL"); // std's kill() is SIGKILL on Unix
    child.wait().unwrap();
    let mut acked = burst.finish().await;
    let delivered_before_kill = receiver.received().len();
    assert!(acked.len() >= KILL_AFTER_ACKS);
    assert!(
        delivered_before_kill < acked.len(),
        "the kill must leave a backlog for this test to mean anything"
    );

    // Restart on the same database and finish the burst.
    let mut child = start(config);
    wait_ready(base).await;
    let rest = Burst::start(base, BURST - acked.len()).finish().await;
    acked.extend(rest);
    assert_eq!(
        acked.len(),
        BURST,
        "every message of the burst is acknowledged in the end"
    );
    let want: HashSet<String> = acked.iter().map(|(e, _)| e.clone()).collect();
    receiver
        .wait_for(60, "every acknowledged message", |r| {
            let got: HashSet<String> = r.iter().map(|r| r.header("webhook-id")).collect();
            want.is_subset(&got)
        })
        .await;
    child.kill().unwrap();
    child.wait().unwrap();

    // A message received more than once always carried the same webhook-id.
    let mut ids_by_message: HashMap<String, HashSet<String>> = HashMap::new();
    for r in receiver.received() {
        let body = r.json();
        assert_eq!(body["id"].as_str().unwrap(), r.header("webhook-id"));
        ids_by_message
            .entry(body["data"]["id"].as_str().unwrap().to_string())
            .or_default()
            .insert(r.header("webhook-id"));
    }
    assert!(ids_by_message.values().all(|ids| ids.len() == 1));
    let total = receiver.received().len();
    eprintln!(
        "acknowledged {}, delivered before kill {delivered_before_kill}, received in all {total} ({} duplicates)",
        acked.len(),
        total - ids_by_message.len()
    );
}

#[tokio::test]
async fn sigterm_stops_gracefully() {
    waas::install_crypto_provider();
    let Setup { base, config, .. } = &setup("");
    let (base, config) = (base.as_str(), config.as_path());
    let mut child = start(config);
    wait_ready(base).await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(exit) = child.try_wait().unwrap() {
            assert!(exit.success(), "exit status after SIGTERM: {exit}");
            break;
        }
        assert!(Instant::now() < deadline, "waas did not stop after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_alive(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if reqwest::get(format!("{base}/healthz")).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("waas did not start");
}

async fn get_json(client: &reqwest::Client, url: &str) -> serde_json::Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// Kill -9 after the 202 and before the send: after the restart it is sent once.
#[tokio::test]
async fn a_queued_send_survives_sigkill_and_goes_out_once() {
    waas::install_crypto_provider();
    // Not logged in until /v1/mock/scan, so the send stays queued.
    let Setup { base, config, .. } = &setup("[puppet.mock]\nauto_login = false\n");
    let (base, config) = (base.as_str(), config.as_path());
    let client = reqwest::Client::new();
    let mut child = start(config);
    wait_alive(base).await;
    let resp = client
        .post(format!("{base}/v1/messages"))
        .json(&json!({"to": {"contact": "alice"}, "text": "survive"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let queued: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(queued["status"], "queued");
    child.kill().unwrap();
    child.wait().unwrap();

    let mut child = start(config);
    wait_alive(base).await;
    let resp = client
        .post(format!("{base}/v1/mock/scan"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = queued["id"].as_str().unwrap();
    let outcome: serde_json::Value =
        get_json(&client, &format!("{base}/v1/messages/{id}?wait=10")).await;
    assert_eq!(outcome["status"], "sent", "{outcome}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent: serde_json::Value = get_json(&client, &format!("{base}/v1/mock/sent")).await;
    let texts: Vec<&str> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["text"].as_str())
        .collect();
    assert_eq!(texts, ["survive"]);
    child.kill().unwrap();
    child.wait().unwrap();
}

/// SIGHUP swaps webhooks and credentials without a restart; a bad file keeps the old.
#[tokio::test]
async fn sighup_reloads_webhooks_and_auth_and_keeps_them_on_a_bad_file() {
    waas::install_crypto_provider();
    let a = TestReceiver::start().await;
    let b = TestReceiver::start().await;
    let hook = |name: &str, r: &TestReceiver| {
        format!(
            "[[webhooks]]\nname = \"{name}\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\nevents = [\"message\"]\n",
            r.url
        )
    };
    let Setup { base, config, .. } = &setup(&hook("a", &a));
    let (base, config) = (base.as_str(), config.as_path());
    let head = std::fs::read_to_string(config).unwrap();
    let head = &head[..head.find("[[webhooks]]").unwrap()];
    let child = start(config);
    wait_ready(base).await;
    let client = reqwest::Client::new();
    let token = "reload-token-0123456789";
    let inject = |text: &'static str| {
        let client = client.clone();
        async move {
            client
                .post(format!("{base}/v1/mock/messages"))
                .bearer_auth(token)
                .json(&json!({"from": "alice", "text": text}))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(inject("one").await, 201);
    a.wait_for(10, "one at a", |r| r.len() == 1).await;

    std::fs::write(
        config,
        format!("{head}[auth]\ntokens = [\"{token}\"]\n{}", hook("b", &b)),
    )
    .unwrap();
    let hup = |pid: u32| {
        assert!(
            Command::new("kill")
                .args(["-HUP", &pid.to_string()])
                .status()
                .unwrap()
                .success()
        )
    };
    hup(child.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    while client
        .get(format!("{base}/v1/session"))
        .send()
        .await
        .unwrap()
        .status()
        != 401
    {
        assert!(Instant::now() < deadline, "the new auth never applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(inject("two").await, 201);
    b.wait_for(10, "two at b", |r| r.len() == 1).await;

    std::fs::write(config, "[server\nthis is not toml").unwrap();
    hup(child.id());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        inject("three").await,
        201,
        "still running on the old configuration"
    );
    b.wait_for(10, "three at b", |r| r.len() == 2).await;
    assert_eq!(
        a.received().len(),
        1,
        "the removed webhook got nothing more"
    );
    drop(child);
}
