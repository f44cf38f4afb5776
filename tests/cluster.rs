//! Several instances on one PostgreSQL database, as the built binary: one holder per
//! account, failover after kill -9, work shared across instances. Each test makes its
//! own database on the test server (`WAAS_TEST_POSTGRES`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`; `.ci/run` starts one) and drops it.
//! WeChat itself is the mock puppet (out of our reach); everything else is real.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{SECRET, TestReceiver, free_port};
use serde_json::{Value, json};
use waas::harness::{ScratchDatabase, test_postgres};

/// A database made for one test, dropped at its end; or (`url` only) one this test
/// does not own.
struct Database {
    url: String,
    _scratch: Option<ScratchDatabase>,
}

impl Database {
    async fn create() -> Database {
        let scratch = ScratchDatabase::create(&test_postgres(), "waas_cluster")
            .await
            .unwrap();
        Database {
            url: scratch.url.clone(),
            _scratch: Some(scratch),
        }
    }
}

/// One waas process; SIGKILLed and reaped however the test ends.
struct Instance {
    name: String,
    base: String,
    child: Option<Child>,
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Instance {
    fn start(name: &str, db: &Database, extra: &str) -> Instance {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("waas.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\n[storage]\nurl = \"{}\"\n\
                 [cluster]\ninstance = \"{name}\"\nlease = \"3s\"\n{extra}",
                db.url
            ),
        )
        .unwrap();
        let mut instance = Instance {
            name: name.to_string(),
            base: format!("http://127.0.0.1:{port}"),
            child: None,
            config,
            _dir: dir,
        };
        instance.spawn();
        instance
    }

    fn spawn(&mut self) {
        self.child = Some(
            Command::new(env!("CARGO_BIN_EXE_waas"))
                .args(["serve", "--config"])
                .arg(&self.config)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("waas starts"),
        );
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL");
            child.wait().unwrap();
        }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        match reqwest::get(format!("{}{path}", self.base)).await {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.json().await.unwrap_or(Value::Null))
            }
            Err(_) => (0, Value::Null),
        }
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The holder of account `default`, as this instance's `GET /v1/cluster` says.
    async fn holder(&self) -> Option<String> {
        let (status, body) = self.get("/v1/cluster").await;
        if status != 200 {
            return None;
        }
        body["accounts"][0]["holder"].as_str().map(str::to_string)
    }

    async fn logged_in(&self) -> bool {
        let (_, session) = self.get("/v1/session").await;
        session["state"] == "logged_in"
    }

    async fn wait_ready(&self) {
        eventually(20, &format!("{} ready", self.name), || async {
            (self.get("/readyz").await.0 == 200).then_some(())
        })
        .await;
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn eventually<T, F, Fut>(secs: u64, what: &str, check: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn webhook(receiver: &TestReceiver) -> String {
    format!(
        "[[webhooks]]\nname = \"hook\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\nevents = [\"message\"]\n\
         max_in_flight = 4\nretry = [\"100ms\", \"200ms\", \"400ms\"]\n",
        receiver.url
    )
}

/// Injects `total` messages on `base` from 16 concurrent clients; records every
/// acknowledged event id, and stops at the first refusal (the instance was killed).
fn burst(
    base: &str,
    total: usize,
    acked: Arc<std::sync::Mutex<Vec<String>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let next = Arc::new(AtomicUsize::new(0));
    let client = reqwest::Client::new();
    (0..16)
        .map(|_| {
            let (acked, next, client, base) = (
                acked.clone(),
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
                    let Ok(resp) = client
                        .post(format!("{base}/v1/mock/messages"))
                        .json(&json!({"from": "alice", "text": format!("burst {i}")}))
                        .send()
                        .await
                    else {
                        return;
                    };
                    if resp.status() != 201 {
                        return;
                    }
                    let Ok(body) = resp.json::<Value>().await else {
                        return;
                    };
                    acked
                        .lock()
                        .unwrap()
                        .push(body["event_id"].as_str().unwrap().to_string());
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_survivor_takes_over_and_nothing_acknowledged_is_lost() {
    waas::install_crypto_provider();
    let db = Database::create().await;
    let receiver = TestReceiver::start().await;
    // Slower than the burst: deliveries a had claimed are in flight or queued at the
    // kill, and must be taken over by b.
    receiver.set_delay(Duration::from_millis(40));
    let mut a = Instance::start("a", &db, &webhook(&receiver));
    a.wait_ready().await;
    eventually(10, "a holds the account", || async {
        (a.holder().await.as_deref() == Some("a")).then_some(())
    })
    .await;
    let b = Instance::start("b", &db, &webhook(&receiver));
    // b serves the API (ready) while a runs the puppet.
    b.wait_ready().await;
    let (_, cluster) = b.get("/v1/cluster").await;
    let names: HashSet<&str> = cluster["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(names, HashSet::from(["a", "b"]), "{cluster}");
    assert_eq!(cluster["accounts"][0]["holder"], "a");
    assert!(cluster["accounts"][0]["epoch"].as_i64().unwrap() >= 1);
    assert!(!b.logged_in().await, "only the holder runs the puppet");

    // A long poll on b wakes on an event stored by a.
    let (_, page) = b.get("/v1/events").await;
    let after = page["next_after"].as_i64().unwrap();
    let poll = {
        let base = b.base.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let body: Value = reqwest::get(format!("{base}/v1/events?after={after}&wait=20s"))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (body, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, injected) = a
        .post(
            "/v1/mock/messages",
            json!({"from": "bob", "text": "hello across"}),
        )
        .await;
    assert_eq!(status, 201, "{injected}");
    let (body, waited) = poll.await.unwrap();
    assert_eq!(
        body["events"][0]["id"], injected["event_id"],
        "the long poll on b returned a's event"
    );
    assert!(waited < Duration::from_secs(10), "woken, not timed out");
    eprintln!("long poll on b woke {waited:?} after it started (a stored the event 300 ms in)");

    // A send accepted by b is sent once, by a.
    let (status, queued) = b
        .post(
            "/v1/messages",
            json!({"to": {"contact": "carol"}, "text": "sent by the holder"}),
        )
        .await;
    assert_eq!(status, 202, "{queued}");
    let id = queued["id"].as_str().unwrap().to_string();
    eventually(10, "the send accepted by b went out", || async {
        let (_, view) = b.get(&format!("/v1/messages/{id}")).await;
        (view["status"] == "sent").then_some(())
    })
    .await;
    let (_, sent) = a.get("/v1/mock/sent").await;
    let copies = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m.to_string().contains("sent by the holder"))
        .count();
    assert_eq!(copies, 1, "sent once, by the holder: {sent}");

    // A burst into a; kill -9 a halfway.
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let workers = burst(&a.base, 600, acked.clone());
    eventually(60, "300 acknowledged", || async {
        (acked.lock().unwrap().len() >= 300).then_some(())
    })
    .await;
    a.kill();
    let killed = Instant::now();
    for w in workers {
        let _ = w.await;
    }
    let acked: Vec<String> = acked.lock().unwrap().clone();
    let delivered_at_kill = receiver.received().len();

    // b takes the account over and logs it in.
    eventually(30, "b holds the account and is logged in", || async {
        (b.holder().await.as_deref() == Some("b") && b.logged_in().await).then_some(())
    })
    .await;
    let failover = killed.elapsed();
    eprintln!(
        "failover: b held the account and was logged in {:.2} s after the kill -9 of a \
         (cluster.lease = 3s); {} acknowledged, {delivered_at_kill} delivered at the kill",
        failover.as_secs_f64(),
        acked.len()
    );
    assert!(
        failover < Duration::from_secs(10),
        "failover took {failover:?}"
    );

    // Every acknowledged event arrives; a duplicate carries the same webhook-id.
    let mut want: HashSet<String> = acked.into_iter().collect();
    want.insert(injected["event_id"].as_str().unwrap().to_string());
    receiver
        .wait_for(60, "every acknowledged event", |r| {
            let got: HashSet<String> = r
                .iter()
                .map(|r| r.json()["id"].as_str().unwrap_or_default().to_string())
                .collect();
            want.is_subset(&got)
        })
        .await;
    // Keyed by the WeChat message: the same message under two webhook-ids would be
    // two events.
    let mut ids_by_event: HashMap<String, HashSet<String>> = HashMap::new();
    for r in receiver.received() {
        let body = r.json();
        assert_eq!(body["id"].as_str().unwrap(), r.header("webhook-id"));
        ids_by_event
            .entry(body["data"]["id"].as_str().unwrap().to_string())
            .or_default()
            .insert(r.header("webhook-id"));
    }
    assert!(ids_by_event.values().all(|ids| ids.len() == 1));
    let (_, cluster) = b.get("/v1/cluster").await;
    assert!(
        cluster["accounts"][0]["epoch"].as_i64().unwrap() >= 2,
        "a new holder, a new epoch: {cluster}"
    );
    eprintln!(
        "received {} requests for {} events ({} redelivered after the kill)",
        receiver.received().len(),
        ids_by_event.len(),
        receiver.received().len() - ids_by_event.len()
    );
}

/// A PostgreSQL server of this test's own (initdb in a temporary folder, on a free
/// port), so that it can be stopped and started under load: the machine's server is not
/// ours to restart. Runs as user `postgres` when the test runs as root (PostgreSQL
/// refuses root).
struct OwnServer {
    dir: tempfile::TempDir,
    port: u16,
    bin: std::path::PathBuf,
}

impl OwnServer {
    fn tool(bin: &std::path::Path, name: &str, args: &[&str]) -> std::process::Output {
        let tool = bin.join(name);
        let mut cmd = if running_as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&tool);
            c
        } else {
            Command::new(&tool)
        };
        cmd.args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", tool.display()))
    }

    fn start() -> OwnServer {
        let bin = [
            "/usr/local/bin",
            "/usr/lib/postgresql/17/bin",
            "/usr/lib/postgresql/16/bin",
            "/usr/lib/postgresql/15/bin",
        ]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|d| d.join("initdb").exists() && d.join("pg_ctl").exists())
        .expect("PostgreSQL's initdb and pg_ctl (the postgresql server package)");
        let dir = tempfile::tempdir().unwrap();
        if running_as_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let data = dir.path().join("data");
        let out = Self::tool(
            &bin,
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let server = OwnServer {
            dir,
            port: free_port(),
            bin,
        };
        server.up();
        server
    }

    fn up(&self) {
        let data = self.dir.path().join("data");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log");
        let out = Self::tool(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &options,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the server the way a crash would (`immediate`: no checkpoint, every
    /// connection cut), recovering from its WAL at the next start.
    fn crash(&self) {
        let data = self.dir.path().join("data");
        let out = Self::tool(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = Self::tool(
            &self.bin,
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-m", "immediate", "stop"],
        );
    }
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_under_load_loses_nothing_acknowledged() {
    waas::install_crypto_provider();
    let server = OwnServer::start();
    let db = Database {
        url: server.url(),
        _scratch: None,
    };
    let receiver = TestReceiver::start().await;
    let waas = Instance::start("solo", &db, &webhook(&receiver));
    waas.wait_ready().await;

    // 16 clients inject 800 messages; refusals while the database is down are not
    // acknowledged (the client would retry), and the burst goes on.
    let acked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let client = reqwest::Client::new();
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let (acked, refused, next, client, base) = (
                acked.clone(),
                refused.clone(),
                next.clone(),
                client.clone(),
                waas.base.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= 800 {
                        return;
                    }
                    let resp = client
                        .post(format!("{base}/v1/mock/messages"))
                        .json(&json!({"from": "alice", "text": format!("load {i}")}))
                        .timeout(Duration::from_secs(30))
                        .send()
                        .await;
                    match resp {
                        Ok(r) if r.status() == 201 => {
                            let body: Value = r.json().await.unwrap();
                            acked
                                .lock()
                                .unwrap()
                                .push(body["event_id"].as_str().unwrap().to_string());
                        }
                        Ok(r) => {
                            assert!(
                                r.status().is_server_error(),
                                "a refusal is a 5xx: {}",
                                r.status()
                            );
                            refused.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(_) => {
                            refused.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            })
        })
        .collect();
    eventually(60, "200 acknowledged", || async {
        (acked.lock().unwrap().len() >= 200).then_some(())
    })
    .await;
    server.crash();
    let down = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, ready) = waas.get("/readyz").await;
    assert_eq!(status, 503, "not ready while the database is down: {ready}");
    server.up();
    eprintln!("PostgreSQL was down {:.1} s", down.elapsed().as_secs_f64());
    for w in workers {
        w.await.unwrap();
    }
    waas.wait_ready().await;
    let acked: HashSet<String> = acked.lock().unwrap().iter().cloned().collect();
    receiver
        .wait_for(60, "every acknowledged event after the restart", |r| {
            let got: HashSet<String> = r
                .iter()
                .map(|r| r.json()["id"].as_str().unwrap_or_default().to_string())
                .collect();
            acked.is_subset(&got)
        })
        .await;
    eprintln!(
        "{} acknowledged, {} refused while the database was away, {} received",
        acked.len(),
        refused.load(Ordering::SeqCst),
        receiver.received().len()
    );
    assert!(acked.len() >= 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_spread_over_the_instances() {
    waas::install_crypto_provider();
    let db = Database::create().await;
    let accounts: String = (1..=4)
        .map(|i| format!("[[accounts]]\nname = \"acct{i}\"\n[accounts.puppet.mock]\nbot = {{ id = \"bot-user\", name = \"Bot{i}\" }}\n"))
        .collect();
    let a = Instance::start("a", &db, &accounts);
    a.wait_ready().await;
    let held_by = |cluster: &Value, who: &str| {
        cluster["accounts"].as_array().map_or(0, |all| {
            all.iter().filter(|acct| acct["holder"] == who).count()
        })
    };
    eventually(10, "a alone holds all four", || async {
        let (_, cluster) = a.get("/v1/cluster").await;
        (held_by(&cluster, "a") == 4).then_some(())
    })
    .await;
    let started = Instant::now();
    let b = Instance::start("b", &db, &accounts);
    let cluster = eventually(30, "two accounts each", || async {
        let (_, cluster) = b.get("/v1/cluster").await;
        (held_by(&cluster, "a") == 2 && held_by(&cluster, "b") == 2).then_some(cluster)
    })
    .await;
    eprintln!(
        "accounts spread 2 + 2 {:.1} s after b started: {cluster}",
        started.elapsed().as_secs_f64()
    );
    // Each account is logged in where it is held, and only there.
    for i in 1..=4 {
        let name = format!("acct{i}");
        let holder = cluster["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|acct| acct["name"] == name.as_str())
            .unwrap()["holder"]
            .clone();
        let (on, off) = if holder == "a" { (&a, &b) } else { (&b, &a) };
        eventually(10, "logged in on its holder", || async {
            let (_, s) = on.get(&format!("/v1/accounts/{name}/session")).await;
            (s["state"] == "logged_in").then_some(())
        })
        .await;
        let (_, s) = off.get(&format!("/v1/accounts/{name}/session")).await;
        assert_ne!(s["state"], "logged_in", "{name} runs on its holder only");
    }
    drop(b);
    // b is gone (kill -9): a takes its accounts back once their leases run out.
    eventually(20, "a holds all four again", || async {
        let (_, cluster) = a.get("/v1/cluster").await;
        (held_by(&cluster, "a") == 4).then_some(())
    })
    .await;
}

#[test]
fn an_unreachable_database_at_start_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("waas.toml");
    // Nothing listens there; the password must not be printed.
    let url = format!(
        "postgres://waas:hunter2-secret@127.0.0.1:{}/waas",
        free_port()
    );
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{}\"\n[storage]\nurl = \"{url}\"\n",
            free_port()
        ),
    )
    .unwrap();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_waas"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot connect to PostgreSQL at postgres://waas:***@127.0.0.1"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "the password leaked: {stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}
