//! The command line: config validation with errors that name the key, secrets, signing.

use std::process::Command;

fn waas(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_waas"))
        .args(args)
        .env_remove("WAAS_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn check_config_prints_the_effective_config_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[auth]\ntokens = [\"super-secret-token-123\"]\n[[webhooks]]\nname = \"a\"\nurl = \"https://example.com/h\"\nsecret = \"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"\n",
    )
    .unwrap();
    let (code, out, err) = waas(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("listen = \"127.0.0.1:3010\""), "{out}");
    assert!(out.contains("[[webhooks]]"));
    assert!(!out.contains("super-secret-token-123"));
    assert!(!out.contains("C2FVsBQIhrsc"));
}

#[test]
fn check_config_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[[webhooks]]\nname = \"a\"\nurl = \"https://example.com\"\nsecret = \"hunter2\"\n",
    )
    .unwrap();
    let (code, _, err) = waas(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("webhooks[0].secret[0]"), "{err}");
    assert!(!err.contains("hunter2"), "secrets are not echoed: {err}");

    std::fs::write(&path, "[server\nlisten = 1").unwrap();
    let (code, _, err) = waas(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("TOML parse error"), "{err}");

    let (code, _, err) = waas(&["check-config", "--config", "/nonexistent/waas.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("does not exist"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_waas"))
        .args(["check-config"])
        .env("WAAS__SEND__BURST", "many")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("burst"));
}

#[test]
fn secret_and_sign_produce_verifiable_headers() {
    let (code, secret, _) = waas(&["secret"]);
    assert_eq!(code, 0);
    let secret = secret.trim();
    assert!(secret.starts_with("whsec_"));
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body.json");
    std::fs::write(&body, "{\"to\":{\"contact\":\"alice\"},\"text\":\"hi\"}").unwrap();
    let (code, out, err) = waas(&["sign", "--secret", secret, "--body", body.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let header = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap()
            .to_string()
    };
    let key = waas::relay::signing::SigningKey::parse(secret).unwrap();
    let ts: i64 = header("webhook-timestamp").parse().unwrap();
    let expected = key.sign(&header("webhook-id"), ts, &std::fs::read(&body).unwrap());
    assert_eq!(header("webhook-signature"), expected);
}

#[test]
fn the_documented_example_config_is_valid() {
    let (code, _, err) = waas(&["check-config", "--config", "config/example.toml"]);
    assert_eq!(code, 0, "config/example.toml must stay valid: {err}");
}

#[tokio::test]
async fn tail_prints_live_events_readably() {
    use std::io::{BufRead, BufReader};
    waas::install_crypto_provider();
    let relay = waas::harness::Embedded::start("[auth]\ntokens = [\"tail-token-0123456789\"]\n")
        .await
        .unwrap();
    let base = format!("http://{}", relay.addr);
    let mock = relay.mock().unwrap().clone();
    let inject = |text: &str, room: Option<&str>| waas::puppet::mock::Injection {
        from: "alice".into(),
        room: room.map(str::to_string),
        text: text.into(),
        ..Default::default()
    };
    mock.inject(inject("before tail", None)).await.unwrap();

    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_waas"))
            .args(["tail", "--url", &base, "--types", "message"])
            .env("WAAS_API_TOKEN", "tail-token-0123456789")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Keep talking until tail (which starts after the newest stored event) prints.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let line = loop {
        mock.inject(inject("hello tail", Some("Mock Room")))
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        if let Ok(line) = rx.try_recv() {
            break line;
        }
        assert!(std::time::Instant::now() < deadline, "tail printed nothing");
    };
    drop(child);
    relay.stop().await.unwrap();
    assert!(
        line.contains("message") && line.contains("Alice @ Mock Room: hello tail"),
        "{line}"
    );
    assert!(!line.contains("before tail"), "only new events by default");
}

/// Ends the child process however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
