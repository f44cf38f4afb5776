//! The real Wechaty Puppet Service server from npm (`tests/fixtures/puppet-service`),
//! started as a child process on free loopback ports, with its control API.
//!
//! `bash .ci/run` installs its node_modules; by hand: `npm install` in that folder.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::free_port;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const TOKEN: &str = "insecure_waas_test_token";

pub struct PuppetFixture {
    child: Option<Child>,
    pub grpc_port: u16,
    pub control_port: u16,
    token: String,
    /// Certificate and key PEM files to serve TLS with.
    tls: Option<(PathBuf, PathBuf)>,
    log: PathBuf,
    _logs: tempfile::TempDir,
    client: reqwest::Client,
}

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/puppet-service")
}

impl PuppetFixture {
    /// Starts the server with `token`; returns once it accepts gRPC calls.
    pub async fn start(token: &str) -> PuppetFixture {
        Self::start_with(token, None).await
    }

    /// Starts the server serving TLS with the certificate and key in these PEM files.
    pub async fn start_tls(token: &str, cert: PathBuf, key: PathBuf) -> PuppetFixture {
        Self::start_with(token, Some((cert, key))).await
    }

    async fn start_with(token: &str, tls: Option<(PathBuf, PathBuf)>) -> PuppetFixture {
        super::init_logs();
        let dir = fixture_dir();
        assert!(
            dir.join("node_modules/wechaty-puppet-service").is_dir(),
            "the puppet-service fixture is not installed: run `npm install` in {} \
             (bash .ci/run does it)",
            dir.display()
        );
        let logs = tempfile::tempdir().unwrap();
        let mut fixture = PuppetFixture {
            child: None,
            grpc_port: free_port(),
            control_port: free_port(),
            token: token.to_string(),
            tls,
            log: logs.path().join("fixture.log"),
            _logs: logs,
            client: reqwest::Client::new(),
        };
        fixture.spawn().await;
        fixture
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.grpc_port)
    }

    /// The `[puppet]` block of a waas config that uses this server with `token`.
    pub fn puppet_config(&self, token: &str) -> String {
        format!(
            "[puppet]\nkind = \"service\"\n\n[puppet.service]\nendpoint = \"{}\"\ntoken = \"{token}\"\n\
             reconnect = {{ initial = \"100ms\", max = \"1s\" }}\n",
            self.endpoint()
        )
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut command = Command::new("node");
        if let Some((cert, key)) = &self.tls {
            command.env("TLS_CERT", cert).env("TLS_KEY", key);
        }
        let mut child = command
            .arg("server.mjs")
            .current_dir(fixture_dir())
            .env("PORT", self.grpc_port.to_string())
            .env("CONTROL_PORT", self.control_port.to_string())
            .env("TOKEN", &self.token)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("node runs (the puppet-service fixture needs Node.js)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let line = tokio::time::timeout_at(deadline.into(), lines.next_line()).await;
            match line {
                Ok(Ok(Some(line))) if line.starts_with("fixture ready") => break,
                Ok(Ok(Some(_))) => {}
                Ok(_) => panic!(
                    "the puppet-service fixture exited before it was ready; its log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ),
                Err(_) => panic!(
                    "the puppet-service fixture was not ready within 60 s; its log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ),
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.child = Some(child);
    }

    /// SIGKILL: the server vanishes without closing anything.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.start_kill().expect("kill the fixture");
            let _ = child.wait().await;
        }
    }

    /// Starts a fresh server on the same ports (its puppet logs in again).
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }

    async fn control(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("http://127.0.0.1:{}{path}", self.control_port);
        let mut request = self.client.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("fixture control API");
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "fixture {path}: {status} {value}");
        value
    }

    /// A contact says something; returns the puppet message id.
    pub async fn say(&self, body: Value) -> String {
        let reply = self
            .control(reqwest::Method::POST, "/say", Some(body))
            .await;
        reply["id"].as_str().unwrap().to_string()
    }

    pub async fn post(&self, path: &str, body: Value) -> Value {
        self.control(reqwest::Method::POST, path, Some(body)).await
    }

    /// The operations (recall, rooms, friendships…) that reached the puppet.
    pub async fn ops(&self) -> Vec<Value> {
        self.control(reqwest::Method::GET, "/ops", None)
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// What reached the puppet through its gRPC send calls.
    pub async fn sent(&self) -> Vec<Value> {
        self.control(reqwest::Method::GET, "/sent", None)
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}
