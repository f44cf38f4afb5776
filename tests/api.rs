//! The API's answers to bad input and missing credentials: the contract's JSON errors.

mod common;

use common::spawn_app;
use serde_json::json;

#[tokio::test]
async fn bad_input_gets_the_contracts_errors() {
    let app = spawn_app("").await;
    let client = reqwest::Client::new();

    let resp = client
        .post(app.url("/v1/mock/messages"))
        .header("content-type", "application/json")
        .body("{\"from\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_json");

    let resp = client
        .post(app.url("/v1/mock/messages"))
        .body("from=alice")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unsupported_media_type");

    let (status, body) = app
        .post("/v1/mock/messages", json!({"from": "alice"}))
        .await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["code"], "invalid_request");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("text"),
        "{body}"
    );

    let (status, body) = app
        .post(
            "/v1/mock/messages",
            json!({"from": "mallory", "text": "hi"}),
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("mallory")
    );

    let (status, body) = app
        .post(
            "/v1/mock/messages",
            json!({"from": "alice", "room": "No Such Room", "text": "hi"}),
        )
        .await;
    assert_eq!(status, 404, "{body}");

    let (status, body) = app
        .post(
            "/v1/mock/messages",
            json!({"from": "alice", "text": "hi", "mentions": ["bob"]}),
        )
        .await;
    assert_eq!(status, 422);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("mentions")
    );

    let (status, body) = app.get("/v1/deliveries?status=lost").await;
    assert_eq!(status, 422);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("status")
    );

    let (status, body) = app.get("/v1/nothing-here").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");

    let big = "x".repeat(2 << 20);
    let (status, body) = app
        .post("/v1/mock/messages", json!({"from": "alice", "text": big}))
        .await;
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "payload_too_large");

    let (status, body) = app.post("/v1/mock/scan", json!({})).await;
    assert_eq!(status, 409, "already logged in: {body}");
}

#[tokio::test]
async fn tokens_guard_v1_but_not_health() {
    let app = spawn_app("[auth]\ntokens = [\"test-token-0123456789\"]\n").await;
    let client = reqwest::Client::new();
    let resp = client.get(app.url("/v1/session")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let resp = client
        .get(app.url("/v1/session"))
        .bearer_auth("test-token-0123456780")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let (status, body) = app.get("/v1/session").await;
    assert_eq!(status, 200);
    assert_eq!(body["state"], "logged_in");
    assert_eq!(body["puppet"], "mock");
    assert_eq!(body["user"]["id"], "bot-user");
    let resp = client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn manual_login_waits_for_the_scan() {
    let app = common::spawn_app_unready("[puppet.mock]\nauto_login = false\n").await;
    let (_, session) = app.get("/v1/session").await;
    assert_eq!(session["state"], "waiting_for_scan");
    assert!(
        session["qr"]["payload"]
            .as_str()
            .unwrap()
            .starts_with("https://")
    );
    let ready = reqwest::get(app.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_ready");
    let (status, body) = app.inject("alice", None, "too early").await;
    assert_eq!(status, 503, "{body}");

    let (status, _) = app.post("/v1/mock/scan", json!({})).await;
    assert_eq!(status, 200);
    app.wait_logged_in().await;
    let (status, _) = app.inject("alice", None, "now").await;
    assert_eq!(status, 201);
}

#[tokio::test]
async fn a_public_address_without_auth_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Refused by the configuration's checks (the ones `check-config` runs too), or by
    // the start itself for settings built another way.
    let err = match waas::config::Settings::from_toml(&format!(
        "[server]\nlisten = \"0.0.0.0:0\"\n[storage]\nurl = \"sqlite://{}/w.db\"\n",
        dir.path().display()
    )) {
        Err(e) => e.to_string(),
        Ok(settings) => waas::app::Application::build(settings)
            .await
            .err()
            .expect("refused")
            .to_string(),
    };
    assert!(err.contains("not a loopback address"), "{err}");
}

#[tokio::test]
async fn metrics_describe_events_deliveries_backlog_and_session() {
    let r = common::TestReceiver::start().await;
    let app = spawn_app(&common::webhook(
        "metrics-hook",
        &r,
        "events = [\"message\"]",
    ))
    .await;
    app.inject("alice", None, "count me").await;
    r.wait_for(10, "a delivery", |r| r.len() == 1).await;
    let body = app
        .eventually(10, "the delivery counted", || async {
            let text = reqwest::get(app.url("/metrics"))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            text.contains("waas_deliveries_total{webhook=\"metrics-hook\",outcome=\"delivered\"}")
                .then_some(text)
        })
        .await;
    assert!(
        body.contains("waas_events_stored_total{account=\"default\",type=\"message\"}"),
        "{body}"
    );
    assert!(body.contains("waas_delivery_attempt_seconds_bucket{webhook=\"metrics-hook\""));
    assert!(body.contains("waas_webhook_pending{webhook=\"metrics-hook\"} 0"));
    assert!(body.contains("waas_webhook_dead{webhook=\"metrics-hook\"} 0"));
    assert!(body.contains("waas_session_state{account=\"default\",state=\"logged_in\"} 1"));
    assert!(body.contains("waas_process_resident_memory_bytes"));
    // A sample's value: the first line starting with `prefix`, its last field.
    let value = |prefix: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().last()?.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix}: {body}"))
    };
    // The store's writer committed the event (and its delivery's result): its commit
    // time and operations are counted.
    assert!(
        value("waas_store_commit_seconds_count{sync=\"") >= 1.0,
        "{body}"
    );
    assert!(
        body.contains("waas_store_commit_seconds_bucket{sync=\""),
        "{body}"
    );
    let writes = value("waas_store_writes_total ");
    assert!(writes >= 2.0, "the append and the attempt: {body}");
    // The inject request waited for its event's commit: counted, in the store's
    // sub-millisecond buckets.
    assert!(value("waas_store_append_seconds_count ") >= 1.0, "{body}");
    assert!(
        body.contains("waas_store_append_seconds_bucket{le=\"0.0001\"}"),
        "{body}"
    );
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let app = spawn_app("").await;
    let resp = reqwest::get(app.url("/v1/session")).await.unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(id.starts_with("req_"), "{id}");
    let resp = reqwest::Client::new()
        .get(app.url("/nowhere"))
        .header("x-request-id", "trace-42")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["x-request-id"],
        "trace-42",
        "a caller's id is kept"
    );
    let resp = reqwest::Client::new()
        .get(app.url("/healthz"))
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    assert!(
        resp.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .starts_with("req_")
    );
}
