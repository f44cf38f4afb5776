//! Shared test fixtures: the real app on 127.0.0.1:0 and real HTTP receivers.
#![allow(dead_code)]

pub mod puppet_fixture;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::{Value, json};
use waas::harness::Embedded;

pub const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// A free loopback port for a server that a test starts later (a child process, a
/// receiver it restarts). Drawn from 20000–31999, below the kernel's ephemeral range
/// (32768 and up): a port taken from that range with a `:0` bind and released can be
/// handed to any outgoing connection before the server binds it (CI once failed on
/// exactly that, EADDRINUSE). The counter keeps this process's tests apart; the
/// bind check skips ports other programs hold.
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let offset = std::process::id().wrapping_mul(7_919) % SPAN;
    for _ in 0..SPAN {
        let n = u32::from(NEXT.fetch_add(1, Ordering::Relaxed));
        let port = (FIRST + (offset + n) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + SPAN)
}

/// Headers for `body` signed with [`SECRET`] by the official Python `standardwebhooks`
/// library: `{"webhook-timestamp", "webhook-signature"}`.
pub fn python_signed(id: &str, body: &str) -> Value {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("python3")
        .arg("tests/interop/sign_standardwebhooks.py")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with standardwebhooks (see .ci/run)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            json!({"secret": SECRET, "id": id, "body": body})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the signing script failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn init_logs() {
    waas::install_crypto_provider();
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("waas=debug,info")
            .with_test_writer()
            .try_init();
    }
}

/// One request a receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("webhook body is JSON")
    }

    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }
}

#[derive(Default)]
struct ReceiverState {
    status: AtomicU16,
    delay_ms: AtomicU64,
    /// Sleep a random time up to `delay_ms` instead of exactly it.
    jitter: AtomicBool,
    response: Mutex<String>,
    extra_header: Mutex<Option<(&'static str, String)>>,
    received: Mutex<Vec<Received>>,
}

/// A real HTTP webhook receiver whose answer can be switched mid-test.
#[derive(Clone)]
pub struct TestReceiver {
    pub url: String,
    state: Arc<ReceiverState>,
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let mut delay = state.delay_ms.load(Ordering::Relaxed);
    if state.jitter.load(Ordering::Relaxed) && delay > 0 {
        delay = rand::random_range(0..=delay);
    }
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    state.received.lock().unwrap().push(Received {
        headers,
        body,
        at: Instant::now(),
    });
    let status = StatusCode::from_u16(state.status.load(Ordering::Relaxed)).unwrap();
    let response = state.response.lock().unwrap().clone();
    let mut headers = HeaderMap::new();
    if let Some((name, value)) = state.extra_header.lock().unwrap().clone() {
        headers.insert(name, value.parse().unwrap());
    }
    (status, headers, response)
}

impl TestReceiver {
    pub async fn start() -> TestReceiver {
        init_logs();
        let state = Arc::new(ReceiverState::default());
        state.status.store(200, Ordering::Relaxed);
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        TestReceiver {
            url: format!("http://{addr}/hook"),
            state,
        }
    }

    pub fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::Relaxed);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Each request waits a random time up to `max`.
    pub fn set_random_delay(&self, max: Duration) {
        self.set_delay(max);
        self.state.jitter.store(true, Ordering::Relaxed);
    }

    /// Adds this header to every answer.
    pub fn set_header(&self, name: &'static str, value: &str) {
        *self.state.extra_header.lock().unwrap() = Some((name, value.to_string()));
    }

    pub fn set_response(&self, body: &str) {
        *self.state.response.lock().unwrap() = body.to_string();
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Received requests whose body has `type == t`.
    pub fn of_type(&self, t: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.json()["type"] == t)
            .collect()
    }

    /// Waits until `pred` holds over what was received, or panics after `secs`.
    pub async fn wait_for(&self, secs: u64, what: &str, pred: impl Fn(&[Received]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if pred(&self.received()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; received {} requests",
                self.received().len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A webhook config block pointing at `receiver`, with a short retry schedule.
pub fn webhook(name: &str, receiver: &TestReceiver, extra: &str) -> String {
    let retry = if extra.contains("retry =") {
        ""
    } else {
        "retry = [\"50ms\", \"100ms\", \"150ms\"]\n"
    };
    format!(
        "[[webhooks]]\nname = \"{name}\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\n{retry}timeout = \"2s\"\n{extra}\n",
        receiver.url
    )
}

/// The real app, serving on a free loopback port, with its own SQLite file: the
/// library's embedded harness, with what tests add (a client, the first token, a
/// folder kept across restarts).
pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub token: Option<String>,
    pub embedded: Embedded,
    pub dir: Arc<tempfile::TempDir>,
}

pub async fn spawn_app(toml: &str) -> TestApp {
    spawn_app_in(Arc::new(tempfile::tempdir().unwrap()), toml).await
}

/// Spawns the app on the database in `dir` (to restart on the same store).
pub async fn spawn_app_in(dir: Arc<tempfile::TempDir>, toml: &str) -> TestApp {
    let app = start_with(dir, None, toml).await;
    app.wait_logged_in().await;
    app
}

/// Spawns the app with its database at `db` (say, on a small tmpfs), without waiting
/// for the login.
pub async fn spawn_app_on(
    dir: Arc<tempfile::TempDir>,
    db: &std::path::Path,
    toml: &str,
) -> TestApp {
    start_with(dir, Some(db), toml).await
}

/// Spawns the app without waiting for the login.
pub async fn spawn_app_unready(toml: &str) -> TestApp {
    spawn_app_unready_in(Arc::new(tempfile::tempdir().unwrap()), toml).await
}

/// Spawns the app on the database in `dir`, without waiting for the login.
pub async fn spawn_app_unready_in(dir: Arc<tempfile::TempDir>, toml: &str) -> TestApp {
    let app = start_with(dir, None, toml).await;
    app.eventually(10, "the API", || async {
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    app
}

async fn start_with(
    dir: Arc<tempfile::TempDir>,
    db: Option<&std::path::Path>,
    toml: &str,
) -> TestApp {
    init_logs();
    let db = db.map_or_else(|| dir.path().join("waas.db"), |p| p.to_path_buf());
    let paced = toml.contains("[send]");
    let mut token = None;
    let embedded = Embedded::builder(toml)
        .database(db)
        .without_login()
        .settings(|settings| {
            // No pacing in tests unless a test sets its own.
            if !paced {
                settings.send.min_interval = Duration::ZERO;
            }
            token = settings.auth.tokens.first().map(|t| t.expose().to_string());
        })
        .start()
        .await
        .expect("the app builds");
    TestApp {
        addr: embedded.addr,
        client: reqwest::Client::new(),
        token,
        embedded,
        dir,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn auth(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// A GET with this bearer token instead of the app's own.
    pub async fn get_as(&self, token: &str, path: &str) -> (u16, Value) {
        let resp = self
            .client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// A POST with this bearer token instead of the app's own.
    pub async fn post_as(&self, token: &str, path: &str, body: Value) -> (u16, Value) {
        let resp = self
            .client
            .post(self.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Any method, with the app's token and an optional JSON body.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut rb = self.auth(self.client.request(method, self.url(path)));
        if let Some(body) = body {
            rb = rb.json(&body);
        }
        let resp = rb.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self
            .auth(self.client.get(self.url(path)))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let resp = self
            .auth(self.client.post(self.url(path)))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Injects a message through the mock puppet; returns (status, body).
    pub async fn inject(&self, from: &str, room: Option<&str>, text: &str) -> (u16, Value) {
        let mut body = json!({"from": from, "text": text});
        if let Some(room) = room {
            body["room"] = json!(room);
        }
        self.post("/v1/mock/messages", body).await
    }

    pub async fn deliveries(&self, query: &str) -> Vec<Value> {
        let (status, body) = self.get(&format!("/v1/deliveries?{query}")).await;
        assert_eq!(status, 200, "{body}");
        body["deliveries"].as_array().cloned().unwrap_or_default()
    }

    pub async fn sent(&self) -> Vec<Value> {
        let (_, body) = self.get("/v1/mock/sent").await;
        body["messages"].as_array().cloned().unwrap_or_default()
    }

    pub async fn webhook(&self, name: &str) -> Value {
        let (_, body) = self.get("/v1/webhooks").await;
        body["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    }

    pub async fn wait_logged_in(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let resp = self.client.get(self.url("/readyz")).send().await;
            if matches!(resp, Ok(ref r) if r.status() == 200) {
                return;
            }
            assert!(Instant::now() < deadline, "app never became ready");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Polls `check` until it returns Some, or panics after `secs`.
    pub async fn eventually<T, F, Fut>(&self, secs: u64, what: &str, check: F) -> T
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
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Graceful shutdown, as SIGTERM does.
    pub async fn stop(self) -> Arc<tempfile::TempDir> {
        self.embedded
            .stop()
            .await
            .expect("the app ran and stopped cleanly");
        self.dir
    }
}
