//! A refused puppet-service token: a clear error state, retried slowly. In its own test
//! binary because it counts a process-wide metric that other tests would also move.

mod common;

use std::time::Duration;

use common::puppet_fixture::{PuppetFixture, TOKEN};
use common::spawn_app_unready;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_a_clear_error_retried_slowly() {
    let fixture = PuppetFixture::start(TOKEN).await;
    let wrong = "wrong_token_for_waas_tests";
    let config = fixture
        .puppet_config(wrong)
        .replace("max = \"1s\"", "max = \"2s\"");
    let app = spawn_app_unready(&config).await;

    let session = app
        .eventually(10, "the refusal", || async {
            let (_, s) = app.get("/v1/session").await;
            (s["state"] == "disconnected").then_some(s)
        })
        .await;
    assert_eq!(session["user"], Value::Null);
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    let reason = body["error"]["message"].as_str().unwrap();
    assert!(reason.contains("refused the token"), "{reason}");
    assert!(reason.contains("puppet.service.token"), "{reason}");
    assert!(
        !reason.contains(wrong),
        "the token leaked into the reason: {reason}"
    );

    // Refusals are retried at `reconnect.max` (2 s here), not from `initial` (100 ms):
    // over 3 s that is at most 2 more attempts, where the ordinary backoff would make
    // 4 or 5 (0.1 + 0.2 + 0.4 + 0.8 + 1.6 s) and a tight loop dozens.
    let disconnects = || async {
        let text = app
            .client
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find(|l| l.starts_with("waas_puppet_disconnects_total"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let before = disconnects().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = disconnects().await;
    assert!(
        after - before <= 2.0,
        "{} refusals in 3 s: not retried slowly",
        after - before
    );
    assert!(after >= 1.0);
    app.stop().await;
}

/// What the puppet says reaches `/readyz` and `/v1/session`: a gateway never reached
/// is "cannot reach", not "lost"; a logged-out puppet's error is the reason shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puppet_errors_are_the_reason_readiness_gives() {
    // Nothing listens on this port: never reached.
    let port = common::free_port();
    let app = spawn_app_unready(&format!(
        "[puppet]\nkind = \"service\"\n[puppet.service]\nendpoint = \"127.0.0.1:{port}\"\ntoken = \"{TOKEN}\"\nreconnect = {{ initial = \"100ms\", max = \"1s\" }}\n"
    ))
    .await;
    app.eventually(10, "the disconnected state", || async {
        let (_, s) = app.get("/v1/session").await;
        (s["state"] == "disconnected").then_some(())
    })
    .await;
    let body: Value = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let reason = body["error"]["message"].as_str().unwrap().to_string();
    assert!(
        reason.contains("cannot reach the puppet service"),
        "{reason}"
    );
    assert!(!reason.contains("lost"), "{reason}");
    app.stop().await;

    // A gateway whose puppet is logged out and cannot reach WeChat says so.
    let fixture = PuppetFixture::start(TOKEN).await;
    let app = common::spawn_app(&fixture.puppet_config(TOKEN)).await;
    fixture.post("/logout", serde_json::json!({})).await;
    app.eventually(10, "the logout", || async {
        let (_, s) = app.get("/v1/session").await;
        (s["state"] != "logged_in").then_some(())
    })
    .await;
    fixture
        .post(
            "/error",
            serde_json::json!({"message": "getaddrinfo ENOTFOUND login.wx.qq.com"}),
        )
        .await;
    let reason = app
        .eventually(10, "the puppet's error as the reason", || async {
            let resp = app.client.get(app.url("/readyz")).send().await.ok()?;
            let body: Value = resp.json().await.ok()?;
            let reason = body["error"]["message"].as_str()?.to_string();
            reason.contains("ENOTFOUND").then_some(reason)
        })
        .await;
    assert!(
        !reason.contains("connecting to the puppet service"),
        "{reason}"
    );
    app.stop().await;
}
