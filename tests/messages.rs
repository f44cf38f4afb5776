//! Sending back out: `POST /v1/messages`, signed or with a token, idempotent, durable.

mod common;

use std::process::{Command, Stdio};

use common::{SECRET, python_signed, spawn_app};
use serde_json::{Value, json};

const TOKEN: &str = "test-token-0123456789";

fn auth_config() -> String {
    format!("[auth]\ntokens = [\"{TOKEN}\"]\nsigning_secrets = [\"{SECRET}\"]\n")
}

async fn post_signed(
    app: &common::TestApp,
    id: &str,
    ts: &str,
    sig: &str,
    body: &str,
) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(app.url("/v1/messages?wait=5s"))
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", ts)
        .header("webhook-signature", sig)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn signed_requests_from_the_official_library_are_accepted_once() {
    let app = spawn_app(&auth_config()).await;
    let body = json!({"to": {"contact_name": "Bob"}, "text": "signed hello"}).to_string();
    let headers = python_signed("msg_reply_1", &body);
    let (ts, sig) = (
        headers["webhook-timestamp"].as_str().unwrap(),
        headers["webhook-signature"].as_str().unwrap(),
    );
    let (status, first) = post_signed(&app, "msg_reply_1", ts, sig, &body).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["status"], "sent");
    assert!(first["id"].as_str().unwrap().starts_with("out_"));

    // A replay (same webhook-id) answers the first response and sends nothing more.
    let (status, again) = post_signed(&app, "msg_reply_1", ts, sig, &body).await;
    assert_eq!(status, 200);
    assert_eq!(again["id"], first["id"]);
    let sent = app.sent().await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["to"], json!({"contact": "bob"}));
    assert_eq!(sent[0]["text"], "signed hello");

    // Tampered, stale, unsigned.
    let tampered = body.replace("hello", "hellO");
    let (status, err) = post_signed(&app, "msg_reply_1", ts, sig, &tampered).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (401, Some("invalid_signature"))
    );
    let stale_ts = (time::OffsetDateTime::now_utc().unix_timestamp() - 600).to_string();
    let key = waas::relay::signing::SigningKey::parse(SECRET).unwrap();
    let stale_sig = key.sign("msg_old", stale_ts.parse().unwrap(), body.as_bytes());
    let (status, err) = post_signed(&app, "msg_old", &stale_ts, &stale_sig, &body).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (401, Some("stale_timestamp"))
    );
    let resp = reqwest::Client::new()
        .post(app.url("/v1/messages"))
        .json(&json!({"to": {"contact": "bob"}, "text": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "unauthorized");
    assert_eq!(app.sent().await.len(), 1, "nothing refused was sent");
}

#[tokio::test]
async fn every_kind_of_content_reaches_the_puppet() {
    let app = spawn_app(&auth_config()).await;
    let cases = [
        json!({"to": {"room_topic": "Mock Room"}, "text": "hi @Alice", "mentions": ["alice"]}),
        json!({"to": {"room": "room1@chatroom"}, "link": {"url": "https://example.com", "title": "Example"}}),
        json!({"to": {"contact": "carol"}, "file": {"url": "https://example.com/a.pdf", "name": "a.pdf"}}),
        json!({"to": {"contact": "carol"}, "contact_card": "alice"}),
    ];
    for body in &cases {
        let (status, view) = app.post("/v1/messages?wait=5", body.clone()).await;
        assert_eq!(status, 200, "{body} → {view}");
        assert_eq!(view["status"], "sent");
        assert!(view["message_id"].is_string());
        let (status, again) = app
            .get(&format!("/v1/messages/{}", view["id"].as_str().unwrap()))
            .await;
        assert_eq!(status, 200);
        assert_eq!(again["status"], "sent");
    }
    let sent = app.sent().await;
    assert_eq!(sent[0]["to"], json!({"room": "room1@chatroom"}));
    assert_eq!(sent[0]["mentions"], json!(["alice"]));
    assert_eq!(sent[1]["link"]["title"], "Example");
    assert_eq!(sent[2]["file"]["name"], "a.pdf");
    assert_eq!(sent[3]["contact_card"], "alice");
}

#[tokio::test]
async fn bad_sends_get_clear_errors() {
    let app = spawn_app(&auth_config()).await;
    let (status, err) = app
        .post(
            "/v1/messages",
            json!({"to": {"contact": "mallory"}, "text": "x"}),
        )
        .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, err) = app
        .post("/v1/messages", json!({"to": {"contact": "bob"}}))
        .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (422, Some("invalid_request"))
    );
    assert!(err["error"]["message"].as_str().unwrap().contains("text"));
    let (status, err) = app
        .post(
            "/v1/messages",
            json!({"to": {"contact": "bob"}, "text": "x", "mentions": ["alice"]}),
        )
        .await;
    assert_eq!(status, 422, "{err}");
    let (status, _) = app
        .post(
            "/v1/messages",
            json!({"to": {"planet": "mars"}, "text": "x"}),
        )
        .await;
    assert_eq!(status, 422);
    let (status, err) = app.get("/v1/messages/out_nothing").await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, _) = app.get("/v1/messages/out_nothing?wait=forever").await;
    assert_eq!(status, 422);

    let client = reqwest::Client::new();
    let resp = client
        .post(app.url("/v1/messages"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{\"to\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let big = json!({"to": {"contact": "bob"}, "text": "x".repeat(8 << 20)});
    let resp = client
        .post(app.url("/v1/messages"))
        .bearer_auth(TOKEN)
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "payload_too_large");

    // The same Idempotency-Key with another body is a conflict.
    for (text, expected) in [("first", 202), ("first", 202), ("second", 409)] {
        let resp = client
            .post(app.url("/v1/messages"))
            .bearer_auth(TOKEN)
            .header("idempotency-key", "k-1")
            .json(&json!({"to": {"contact": "bob"}, "text": text}))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        assert!(
            status == expected || (expected == 202 && status == 200),
            "{text}: {status}"
        );
    }
}

#[tokio::test]
async fn the_python_example_sends_a_signed_message() {
    let app = spawn_app(&auth_config()).await;
    let url = app.url("");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args([
                "examples/send.py",
                "--url",
                &url,
                "--to-topic",
                "Mock Room",
                "from python",
            ])
            .env("WAAS_SIGNING_SECRET", SECRET)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("200 "), "{stdout}");
    let sent = app.sent().await;
    assert_eq!(sent[0]["to"], json!({"room": "room1@chatroom"}));
    assert_eq!(sent[0]["text"], "from python");
}

#[tokio::test]
async fn sends_into_one_chat_are_paced_not_dropped() {
    let app = spawn_app(&format!(
        "{}[send]\nmin_interval = \"200ms\"\nburst = 2\n",
        auth_config().replace("[send]", "")
    ))
    .await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let (status, view) = app
            .post(
                "/v1/messages",
                json!({"to": {"contact": "alice"}, "text": format!("p{i}")}),
            )
            .await;
        assert_eq!(status, 202);
        ids.push(view["id"].as_str().unwrap().to_string());
    }
    // Another chat is not held up by alice's pacing.
    let (status, _) = app
        .post(
            "/v1/messages?wait=5",
            json!({"to": {"contact": "bob"}, "text": "quick"}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, last) = app.get(&format!("/v1/messages/{}?wait=10", ids[4])).await;
    assert_eq!(last["status"], "sent");
    let sent = app.sent().await;
    let alice: Vec<&Value> = sent
        .iter()
        .filter(|m| m["to"] == json!({"contact": "alice"}))
        .collect();
    let texts: Vec<&str> = alice.iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(
        texts,
        ["p0", "p1", "p2", "p3", "p4"],
        "in order, none dropped"
    );
    let at = |m: &Value| {
        time::OffsetDateTime::parse(
            m["sent_at"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    };
    let spread = at(alice[4]) - at(alice[0]);
    // Two at once, then one per 200 ms: the fifth goes out ≥ 600 ms after the first.
    assert!(
        spread >= time::Duration::milliseconds(580),
        "spread {spread}"
    );
}

/// The Flask bot in `examples/` verifies waas's signature and answers in the response.
#[tokio::test]
async fn the_flask_example_bot_answers_through_its_response() {
    let port = common::free_port();
    struct Bot(std::process::Child);
    impl Drop for Bot {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _bot = Bot(Command::new("python3")
        .args(["examples/bot_flask.py", "--port", &port.to_string()])
        .env("WAAS_WEBHOOK_SECRET", SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 with flask and standardwebhooks (see .ci/run)"));
    let app = spawn_app(&format!(
        "[[webhooks]]\nname = \"flask\"\nurl = \"http://127.0.0.1:{port}/hook\"\nsecret = \"{SECRET}\"\nevents = [\"message\"]\nretry = [\"1s\", \"1s\", \"1s\", \"1s\", \"1s\"]\n"
    ))
    .await;
    app.inject("alice", None, "ping").await;
    app.inject("bob", Some("Mock Room"), "echo hi room").await;
    let sent = app
        .eventually(20, "the bot's two answers", || async {
            let sent = app.sent().await;
            (sent.len() >= 2).then_some(sent)
        })
        .await;
    let answers: Vec<(Value, Value)> = sent
        .iter()
        .map(|m| (m["to"].clone(), m["text"].clone()))
        .collect();
    assert!(
        answers.contains(&(json!({"contact": "alice"}), json!("pong"))),
        "{answers:?}"
    );
    assert!(
        answers.contains(&(json!({"room": "room1@chatroom"}), json!("hi room"))),
        "{answers:?}"
    );
}

#[test]
fn send_py_says_when_the_secret_is_missing() {
    let out = Command::new("python3")
        .args(["examples/send.py", "--to-name", "Bob", "hi"])
        .env_remove("WAAS_SIGNING_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("WAAS_SIGNING_SECRET is not set"), "{err}");
}

#[tokio::test]
async fn every_final_send_outcome_has_its_receipt_event() {
    let receipts = common::TestReceiver::start().await;
    let everything = common::TestReceiver::start().await;
    let app = spawn_app(&format!(
        "{}{}{}",
        auth_config(),
        common::webhook(
            "receipts",
            &receipts,
            "events = [\"message.sent\", \"message.failed\"]"
        ),
        common::webhook("everything", &everything, ""),
    ))
    .await;
    let (status, sent) = app
        .post(
            "/v1/messages?wait=5s",
            json!({"to": {"contact": "alice"}, "text": "receipt please"}),
        )
        .await;
    assert_eq!(status, 200, "{sent}");
    // The mock refuses a mention of someone who is not in the room: a final failure.
    let (status, failed) = app
        .post(
            "/v1/messages?wait=5s",
            json!({"to": {"room_topic": "Mock Room"}, "text": "hi", "mentions": ["nobody"]}),
        )
        .await;
    assert_eq!(status, 200, "{failed}");
    assert_eq!(failed["status"], "failed");
    receipts
        .wait_for(10, "two receipts", |r| r.len() >= 2)
        .await;
    let got: Vec<Value> = receipts.received().iter().map(|r| r.json()).collect();
    let of = |t: &str| got.iter().find(|e| e["type"] == t).cloned().unwrap();
    let ok = of("message.sent");
    assert_eq!(ok["data"]["id"], sent["id"]);
    assert_eq!(ok["data"]["to"], json!({"contact": "alice"}));
    assert_eq!(ok["data"]["message_id"], sent["message_id"]);
    let bad = of("message.failed");
    assert_eq!(bad["data"]["id"], failed["id"]);
    assert_eq!(bad["data"]["to"], json!({"room_topic": "Mock Room"}));
    assert!(
        bad["data"]["error"].as_str().unwrap().contains("nobody"),
        "{bad}"
    );
    // In the pull API too; a webhook without an `events` filter keeps v0.1's types.
    let (_, page) = app
        .get("/v1/events?types=message.sent,message.failed")
        .await;
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
    app.post("/v1/webhooks/everything/test", json!({})).await;
    everything
        .wait_for(10, "the test event", |r| {
            r.iter().any(|r| r.json()["type"] == "webhook.test")
        })
        .await;
    assert!(
        everything
            .received()
            .iter()
            .all(|r| !r.json()["type"].as_str().unwrap().starts_with("message.")),
        "receipts go to webhooks that list them"
    );
    app.stop().await;
}
