//! Slack-compatible mode, with the real `slack_bolt` and `slack_sdk` from PyPI: an
//! unmodified Bolt app (examples/slack_bolt_app.py) answers WeChat messages through the
//! mock puppet; Slack's signature and retry headers; the Web API's answers and errors;
//! incoming webhooks fed by slack_sdk's WebhookClient.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const BOT_TOKEN: &str = "xoxb-1234567890-waas-test-token";
const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";

/// The example Bolt app, run as a user would run it.
struct Bolt(Child);

impl Bolt {
    async fn start(port: u16, waas: &TestApp) -> Bolt {
        let child = Command::new("python3")
            .arg("examples/slack_bolt_app.py")
            .env("SLACK_BOT_TOKEN", BOT_TOKEN)
            .env("SLACK_SIGNING_SECRET", SLACK_SECRET)
            .env("SLACK_API_URL", waas.url("/slack/api/"))
            .env("PORT", port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs (pip install -r tests/interop/requirements.txt)");
        let bolt = Bolt(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the Bolt app never listened on {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bolt
    }
}

impl Drop for Bolt {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn slack_webhook(url: &str, extra: &str) -> String {
    format!(
        "[[webhooks]]\nname = \"bolt\"\nurl = \"{url}\"\nformat = \"slack\"\nsecret = \"{SLACK_SECRET}\"\n\
         bot_token = \"{BOT_TOKEN}\"\ntimeout = \"5s\"\n\
         retry = [\"100ms\", \"200ms\", \"300ms\", \"500ms\", \"500ms\", \"500ms\", \"1s\", \"1s\", \"1s\", \"1s\", \"1s\", \"1s\"]\n{extra}\n"
    )
}

async fn inject_mention(app: &TestApp, from: &str, text: &str) {
    let (status, body) = app
        .post(
            "/v1/mock/messages",
            json!({"from": from, "room": "Mock Room", "text": text, "mentions": ["bot-user"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

/// The texts the mock puppet sent into one conversation (`{"contact": id}` or
/// `{"room": id}`).
async fn sent_to(app: &TestApp, to: Value) -> Vec<Value> {
    app.sent()
        .await
        .into_iter()
        .filter(|m| m["to"] == to)
        .collect()
}

async fn wait_sent(app: &TestApp, to: Value, text: &str) -> Value {
    app.eventually(30, &format!("`{text}` sent to {to}"), || {
        let to = to.clone();
        async move {
            sent_to(app, to)
                .await
                .into_iter()
                .find(|m| m["text"] == text)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmodified_bolt_app_answers_wechat() {
    let port = free_port();
    // The bot's own messages reach the app too, so that Bolt's own loop guard is what
    // drops them.
    let app = spawn_app(&format!(
        "[puppet]\nskip_self = false\n{}",
        slack_webhook(&format!("http://127.0.0.1:{port}/slack/events"), "")
    ))
    .await;

    // The app is down: the event waits in the store and is retried.
    let (status, _) = app.inject("alice", None, "hello").await;
    assert_eq!(status, 201);
    app.eventually(10, "a failed attempt at the down app", || async {
        let ds = app.deliveries("webhook=bolt").await;
        ds.first()
            .filter(|d| !d["attempts"].as_array().unwrap().is_empty())
            .cloned()
    })
    .await;
    let bolt = Bolt::start(port, &app).await;
    let reply = wait_sent(&app, json!({"contact": "alice"}), "Hi @Alice!").await;
    assert!(
        reply.get("mentions").is_none(),
        "no mentions in a direct chat"
    );

    // A regex listener, and Web API calls from a handler.
    app.inject("bob", None, "weather Paris").await;
    wait_sent(&app, json!({"contact": "bob"}), "Sunny in Paris").await;
    app.inject("carol", None, "whoami").await;
    wait_sent(
        &app,
        json!({"contact": "carol"}),
        "I am MockBot (bot-user) on default",
    )
    .await;

    // A room message that mentions the bot: one app_mention, one answer, with a real
    // WeChat mention of the sender; users.info and conversations.info from the handler.
    inject_mention(&app, "bob", "@MockBot\u{2005}are you there?").await;
    let room = json!({"room": "room1@chatroom"});
    let answer = wait_sent(&app, room.clone(), "@Bob Bob, you called me in Mock Room").await;
    assert_eq!(answer["mentions"], json!(["bob"]));

    // Chatter no listener wants: Bolt answers 404 `unhandled request`, which is a
    // delivery, not a failure to retry.
    let (_, chatter) = app
        .inject("alice", Some("Mock Room"), "just chatting")
        .await;
    let event_id = chatter["event_id"].as_str().unwrap().to_string();
    let delivery = app
        .eventually(10, "the chatter delivered", || async {
            app.deliveries("webhook=bolt")
                .await
                .into_iter()
                .find(|d| d["event_id"] == event_id.as_str() && d["status"] == "delivered")
        })
        .await;
    assert_eq!(delivery["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(delivery["attempts"][0]["status_code"], 404);

    // The bot's own "hello": Bolt drops it (its user is auth.test's user_id).
    let (_, own) = app.inject("bot-user", None, "hello").await;
    let own_id = own["event_id"].as_str().unwrap().to_string();
    app.eventually(10, "the bot's own message delivered", || async {
        app.deliveries("webhook=bolt")
            .await
            .into_iter()
            .find(|d| d["event_id"] == own_id.as_str() && d["status"] == "delivered")
    })
    .await;
    // Something after it, so that a reply to it would have come by now.
    app.inject("carol", None, "weather Rome").await;
    wait_sent(&app, json!({"contact": "carol"}), "Sunny in Rome").await;
    assert!(
        sent_to(&app, json!({"contact": "bot-user"}))
            .await
            .is_empty(),
        "the app answered its own message"
    );
    assert_eq!(
        sent_to(&app, room.clone()).await.len(),
        1,
        "one answer to the mention (no message + app_mention pair)"
    );
    drop(bolt);
    app.stop().await;
}

#[tokio::test]
async fn events_are_signed_as_slack_signs_and_retries_say_so() {
    let receiver = TestReceiver::start().await;
    receiver.set_status(500);
    let app = spawn_app(&slack_webhook(&receiver.url, "")).await;
    // The url_verification handshake when the webhook starts.
    receiver
        .wait_for(10, "url_verification", |r| {
            r.iter().any(|r| r.json()["type"] == "url_verification")
        })
        .await;
    // The test event is for standard webhooks; a Slack app gets messages only.
    let (status, body) = app.post("/v1/webhooks/bolt/test", json!({})).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("messages only")
    );
    // Session events are not for a Slack app: only messages reach it.
    inject_mention(&app, "alice", "@MockBot\u{2005}ping").await;
    receiver
        .wait_for(10, "a retry", |r| {
            r.iter()
                .filter(|r| r.json()["type"] == "event_callback")
                .count()
                >= 2
        })
        .await;
    receiver.set_status(200);
    receiver
        .wait_for(10, "the delivery", |r| {
            r.iter()
                .filter(|r| r.json()["type"] == "event_callback")
                .count()
                >= 3
        })
        .await;
    let calls: Vec<Received> = receiver
        .received()
        .into_iter()
        .filter(|r| r.json()["type"] == "event_callback")
        .collect();
    assert!(
        receiver.received().iter().all(|r| matches!(
            r.json()["type"].as_str(),
            Some("url_verification" | "event_callback")
        )),
        "only the handshake and messages reach a Slack app (no login, ready…)"
    );
    let first = &calls[0];
    let body = first.json();
    assert_eq!(body["event"]["type"], "app_mention");
    assert_eq!(body["event"]["channel"], "room1@chatroom");
    assert_eq!(body["event"]["channel_type"], "group");
    assert_eq!(body["event"]["user"], "alice");
    assert_eq!(body["event"]["text"], "<@bot-user> ping");
    assert_eq!(body["team_id"], "default");
    assert_eq!(body["api_app_id"], "Abolt");
    assert_eq!(body["authorizations"][0]["user_id"], "bot-user");
    let ts = body["event"]["ts"].as_str().unwrap();
    assert!(
        ts.len() == 17 && ts.as_bytes()[10] == b'.',
        "a Slack-shaped ts: {ts}"
    );
    assert_eq!(first.header("x-slack-retry-num"), "");
    assert_eq!(calls[1].header("x-slack-retry-num"), "1");
    assert_eq!(calls[1].header("x-slack-retry-reason"), "http_error");
    assert_eq!(calls[2].header("x-slack-retry-num"), "2");
    assert_eq!(
        calls[1].json(),
        body,
        "a redelivery carries the same event (same ts and event_id)"
    );
    // Every call verifies with slack_sdk's own SignatureVerifier.
    for call in &calls {
        let script = "import sys, json\n\
            from slack_sdk.signature import SignatureVerifier\n\
            d = json.load(sys.stdin)\n\
            v = SignatureVerifier(d['secret'])\n\
            ok = v.is_valid(body=d['body'], timestamp=d['ts'], signature=d['sig'])\n\
            print('valid' if ok else 'invalid')";
        let input = json!({
            "secret": SLACK_SECRET,
            "body": String::from_utf8(call.body.to_vec()).unwrap(),
            "ts": call.header("x-slack-request-timestamp"),
            "sig": call.header("x-slack-signature"),
        });
        assert_eq!(python(script, &input.to_string()).trim(), "valid");
    }
    app.stop().await;
}

/// Runs a Python script with `input` on stdin; returns stdout.
fn python(script: &str, input: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the python script failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn web_api(app: &TestApp, method: &str, token: &str, body: Value) -> Value {
    let resp = app
        .client
        .post(app.url(&format!("/slack/api/{method}")))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the Web API always answers 200");
    resp.json().await.unwrap()
}

#[tokio::test]
async fn the_web_api_answers_as_slack_does() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app(&slack_webhook(&receiver.url, "")).await;

    let wrong = web_api(&app, "auth.test", "xoxb-not-the-token-at-all", json!({})).await;
    assert_eq!(wrong, json!({"ok": false, "error": "invalid_auth"}));
    let me = web_api(&app, "auth.test", BOT_TOKEN, json!({})).await;
    assert_eq!(me["ok"], true);
    assert_eq!(me["user_id"], "bot-user");
    assert_eq!(me["bot_id"], "Bbolt");
    assert_eq!(me["team_id"], "default");
    assert_eq!(
        web_api(&app, "chat.fly", BOT_TOKEN, json!({})).await["error"],
        "unknown_method"
    );
    assert_eq!(
        web_api(&app, "reactions.add", BOT_TOKEN, json!({})).await["error"],
        "not_supported"
    );
    assert_eq!(
        web_api(
            &app,
            "chat.postMessage",
            BOT_TOKEN,
            json!({"channel": "nobody", "text": "hi"})
        )
        .await["error"],
        "channel_not_found"
    );

    // A post with blocks and a mention, through the send queue, with a unique ts.
    let posted = web_api(
        &app,
        "chat.postMessage",
        BOT_TOKEN,
        json!({"channel": "room1@chatroom", "thread_ts": "1.2",
               "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "hey <@carol>"}}]}),
    )
    .await;
    assert_eq!(posted["ok"], true, "{posted}");
    assert_eq!(posted["channel"], "room1@chatroom");
    let sent = wait_sent(&app, json!({"room": "room1@chatroom"}), "hey @Carol").await;
    assert_eq!(sent["mentions"], json!(["carol"]));
    let again = web_api(
        &app,
        "chat.postMessage",
        BOT_TOKEN,
        json!({"channel": "alice", "text": "second"}),
    )
    .await;
    assert_ne!(posted["ts"], again["ts"], "every message its own ts");
    // Replayed with the same Idempotency-Key: the same message and ts, sent once.
    let replay = |key: &'static str| {
        app.client
            .post(app.url("/slack/api/chat.postMessage"))
            .bearer_auth(BOT_TOKEN)
            .header("idempotency-key", key)
            .json(&json!({"channel": "bob", "text": "just once"}))
            .send()
    };
    let one: Value = replay("k-1").await.unwrap().json().await.unwrap();
    let two: Value = replay("k-1").await.unwrap().json().await.unwrap();
    assert_eq!(one["ts"], two["ts"]);
    wait_sent(&app, json!({"contact": "bob"}), "just once").await;
    assert_eq!(sent_to(&app, json!({"contact": "bob"})).await.len(), 1);

    // chat.delete takes back the ts waas gave out: the message is recalled; an unknown
    // ts is not found.
    let ts = posted["ts"].as_str().unwrap();
    let deleted = web_api(
        &app,
        "chat.delete",
        BOT_TOKEN,
        json!({"channel": "room1@chatroom", "ts": ts}),
    )
    .await;
    assert_eq!(
        deleted,
        json!({"ok": true, "channel": "room1@chatroom", "ts": ts})
    );
    let recalled = wait_sent(&app, json!({"room": "room1@chatroom"}), "hey @Carol").await;
    assert_eq!(recalled["recalled"], true);
    assert_eq!(
        web_api(
            &app,
            "chat.delete",
            BOT_TOKEN,
            json!({"channel": "alice", "ts": "1.000001"})
        )
        .await["error"],
        "message_not_found"
    );

    // Form bodies, as slack_sdk sends users.info and conversations.info.
    let form = |method: &'static str, body: &'static str| {
        app.client
            .post(app.url(&format!("/slack/api/{method}")))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={BOT_TOKEN}&{body}"))
            .send()
    };
    let user: Value = form("users.info", "user=alice")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(user["user"]["real_name"], "Alice");
    let missing: Value = form("users.info", "user=zed")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(missing["error"], "user_not_found");
    let channel: Value = form("conversations.info", "channel=room1@chatroom")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(channel["channel"]["name"], "Mock Room");
    let members = web_api(
        &app,
        "conversations.members",
        BOT_TOKEN,
        json!({"channel": "room1@chatroom"}),
    )
    .await;
    assert_eq!(members["members"].as_array().unwrap().len(), 4);
    let list = web_api(&app, "conversations.list", BOT_TOKEN, json!({})).await;
    assert_eq!(list["channels"][0]["id"], "room1@chatroom");
    app.stop().await;
}

const HOOK_TOKEN: &str = "T0WAAS-incoming-0123456789abcdef";

// Multi-threaded: the Python client blocks its thread while waas answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_that_post_to_slack_post_into_a_wechat_room() {
    let app = spawn_app(&format!(
        "[[incoming]]\nname = \"alerts\"\ntoken = \"{HOOK_TOKEN}\"\nto = {{ room_topic = \"Mock Room\" }}\n"
    ))
    .await;
    let url = app.url(&format!("/slack/hooks/{HOOK_TOKEN}"));
    // slack_sdk's WebhookClient, as CI jobs and scripts use it; an Alertmanager
    // notification (attachments) and a Grafana one (blocks).
    let script = "import sys, json\n\
        from slack_sdk.webhook import WebhookClient\n\
        d = json.load(sys.stdin)\n\
        c = WebhookClient(d['url'])\n\
        out = []\n\
        r = c.send(text='Build #42 passed :white_check_mark:')\n\
        out.append([r.status_code, r.body])\n\
        r = c.send(attachments=[{'color': 'danger', 'title': '[FIRING:1] HighLatency api', 'title_link': 'http://alertmanager.local/#/alerts', 'text': '*Alert:* p99 above 2s\\n*Severity:* page', 'fallback': 'firing'}])\n\
        out.append([r.status_code, r.body])\n\
        r = c.send(text='', blocks=[{'type': 'header', 'text': {'type': 'plain_text', 'text': 'Grafana: Disk full'}}, {'type': 'section', 'fields': [{'type': 'mrkdwn', 'text': '*host* db-1'}, {'type': 'mrkdwn', 'text': '*used* 97%'}]}, {'type': 'section', 'text': {'type': 'mrkdwn', 'text': '<http://grafana.local/d/1|Open the dashboard>'}}])\n\
        out.append([r.status_code, r.body])\n\
        print(json.dumps(out))";
    let out: Value =
        serde_json::from_str(&python(script, &json!({"url": url}).to_string())).unwrap();
    assert_eq!(out, json!([[200, "ok"], [200, "ok"], [200, "ok"]]));
    let room = json!({"room": "room1@chatroom"});
    wait_sent(&app, room.clone(), "Build #42 passed :white_check_mark:").await;
    wait_sent(
        &app,
        room.clone(),
        "[FIRING:1] HighLatency api (http://alertmanager.local/#/alerts)\n*Alert:* p99 above 2s\n*Severity:* page",
    )
    .await;
    wait_sent(
        &app,
        room.clone(),
        "Grafana: Disk full\n*host* db-1\n*used* 97%\nOpen the dashboard (http://grafana.local/d/1)",
    )
    .await;

    let post = |path: String, body: &'static str| {
        app.client
            .post(app.url(&path))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let unknown = post(
        "/slack/hooks/not-a-token-of-ours-0123456789".into(),
        r#"{"text":"x"}"#,
    )
    .await
    .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(unknown.text().await.unwrap(), "no_service");
    let bad = post(format!("/slack/hooks/{HOOK_TOKEN}"), "{not json")
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(bad.text().await.unwrap(), "invalid_payload");
    let empty = post(format!("/slack/hooks/{HOOK_TOKEN}"), r#"{"text":""}"#)
        .await
        .unwrap();
    assert_eq!(empty.status(), 400);
    assert_eq!(empty.text().await.unwrap(), "no_text");
    app.stop().await;
}
