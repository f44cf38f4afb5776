//! The gRPC puppet against a real `wechaty-puppet-service` server (npm) backed by
//! `wechaty-puppet-mock`: the only simulated thing is WeChat itself.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;

use common::puppet_fixture::{PuppetFixture, TOKEN};
use common::{Received, TestApp, TestReceiver, spawn_app, spawn_app_unready, webhook};
use serde_json::{Value, json};

async fn relay(fixture: &PuppetFixture, receiver: &TestReceiver) -> TestApp {
    spawn_app(&format!(
        "{}\n{}",
        fixture.puppet_config(TOKEN),
        webhook("bot", receiver, "")
    ))
    .await
}

/// The `message` events received whose text is `text`.
fn messages(received: &[Received], text: &str) -> Vec<Value> {
    received
        .iter()
        .map(Received::json)
        .filter(|e| e["type"] == "message" && e["data"]["text"] == text)
        .collect()
}

async fn wait_message(receiver: &TestReceiver, text: &str) -> Value {
    receiver
        .wait_for(15, &format!("the message {text:?}"), |r| {
            !messages(r, text).is_empty()
        })
        .await;
    messages(&receiver.received(), text).remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_in_relays_messages_and_sends_through_the_puppet_service() {
    let fixture = PuppetFixture::start(TOKEN).await;
    let receiver = TestReceiver::start().await;
    let app = relay(&fixture, &receiver).await;

    let (_, session) = app.get("/v1/session").await;
    assert_eq!(session["state"], "logged_in", "{session}");
    assert_eq!(session["puppet"], "service");
    assert_eq!(session["user"]["id"], "bot-user");
    assert_eq!(session["user"]["self"], true);
    receiver
        .wait_for(10, "login and ready", |r| {
            let types: Vec<Value> = r.iter().map(|x| x.json()["type"].clone()).collect();
            types.contains(&json!("login")) && types.contains(&json!("ready"))
        })
        .await;
    let login = receiver.of_type("login").remove(0).json();
    assert_eq!(login["data"]["user"]["name"], "PuppetBot");
    assert_eq!(login["bot"]["id"], "bot-user");

    // A direct message.
    let id = fixture
        .say(json!({"from": "alice", "text": "hello from alice"}))
        .await;
    let dm = wait_message(&receiver, "hello from alice").await;
    assert_eq!(dm["data"]["id"], id);
    assert_eq!(dm["data"]["kind"], "text");
    assert_eq!(dm["data"]["from"]["id"], "alice");
    assert_eq!(dm["data"]["from"]["name"], "Alice");
    assert_eq!(dm["data"]["from"]["self"], false);
    assert_eq!(dm["data"]["to"]["id"], "bot-user");
    assert_eq!(dm["data"]["room"], Value::Null);
    assert_eq!(dm["data"]["mentions_self"], false);

    // A room message mentioning the bot, and one mentioning someone else.
    fixture
        .say(
            json!({"from": "bob", "text": "@PuppetBot ping", "room": "room1@chatroom",
                    "mentions": ["bot-user"]}),
        )
        .await;
    fixture
        .say(
            json!({"from": "carol", "text": "@Alice hi", "room": "room1@chatroom",
                    "mentions": ["alice"]}),
        )
        .await;
    let ping = wait_message(&receiver, "@PuppetBot ping").await;
    assert_eq!(ping["data"]["from"]["id"], "bob");
    assert_eq!(ping["data"]["room"]["id"], "room1@chatroom");
    assert_eq!(ping["data"]["room"]["topic"], "Service Room");
    assert_eq!(ping["data"]["to"], Value::Null);
    assert_eq!(ping["data"]["mentions"], json!(["bot-user"]));
    assert_eq!(ping["data"]["mentions_self"], true);
    let other = wait_message(&receiver, "@Alice hi").await;
    assert_eq!(other["data"]["mentions_self"], false);

    // A send with a mention reaches the server with the mention ids and the @Name text.
    let (status, body) = app
        .post(
            "/v1/messages?wait=10s",
            json!({"to": {"room_topic": "Service Room"}, "text": "lunch?", "mentions": ["alice"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "sent");
    let (status, body) = app
        .post(
            "/v1/messages?wait=10s",
            json!({"to": {"contact_name": "Bob"},
                   "link": {"url": "https://example.com/a", "title": "A link"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .post(
            "/v1/messages?wait=10s",
            json!({"to": {"contact": "carol"},
                   "file": {"base64": "aGVsbG8=", "name": "hello.txt"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .post(
            "/v1/messages?wait=10s",
            json!({"to": {"contact": "carol"}, "contact_card": "alice"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let sent = fixture.sent().await;
    let text = sent
        .iter()
        .find(|s| s["method"] == "messageSendText")
        .expect("the text send reached the server");
    assert_eq!(text["conversationId"], "room1@chatroom");
    assert_eq!(text["mentionIds"], json!(["alice"]));
    assert_eq!(text["text"], "@Alice lunch?");
    let url = sent
        .iter()
        .find(|s| s["method"] == "messageSendUrl")
        .unwrap();
    assert_eq!(url["conversationId"], "bob");
    assert_eq!(url["arg"]["url"], "https://example.com/a");
    assert_eq!(url["arg"]["title"], "A link");
    let file = sent
        .iter()
        .find(|s| s["method"] == "messageSendFile")
        .unwrap();
    assert_eq!(file["conversationId"], "carol");
    assert_eq!(file["file"]["name"], "hello.txt");
    let card = sent
        .iter()
        .find(|s| s["method"] == "messageSendContact")
        .unwrap();
    assert_eq!(card["arg"], "alice");

    // The mock puppet echoes the bot's own sends as MESSAGE events from the bot, as
    // real puppets do: none of them may reach the webhook (a reply bot would loop).
    fixture
        .say(json!({"from": "carol", "text": "marker after the sends"}))
        .await;
    wait_message(&receiver, "marker after the sends").await;
    let own: Vec<Value> = receiver
        .received()
        .iter()
        .map(Received::json)
        .filter(|e| e["type"] == "message" && e["data"]["from"]["id"] == "bot-user")
        .collect();
    assert!(
        own.is_empty(),
        "the bot's own messages were relayed: {own:?}"
    );
    assert!(messages(&receiver.received(), "lunch?").is_empty());

    // Unknown recipients are refused before anything is queued.
    let (status, body) = app
        .post(
            "/v1/messages",
            json!({"to": {"contact": "nobody"}, "text": "x"}),
        )
        .await;
    assert_eq!(status, 404, "{body}");

    // The directory comes from ContactList / RoomList / RoomMemberList.
    let (status, contacts) = app.get("/v1/contacts").await;
    assert_eq!(status, 200, "{contacts}");
    let ids: HashSet<&str> = contacts["contacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, HashSet::from(["alice", "bob", "carol", "dave"]));
    let (_, rooms) = app.get("/v1/rooms").await;
    assert_eq!(rooms["rooms"][0]["id"], "room1@chatroom");
    assert_eq!(rooms["rooms"][0]["topic"], "Service Room");
    let (_, members) = app.get("/v1/rooms/room1@chatroom/members").await;
    assert_eq!(members["members"].as_array().unwrap().len(), 4, "{members}");

    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_events_replays_and_stale_messages() {
    let fixture = PuppetFixture::start(TOKEN).await;
    let receiver = TestReceiver::start().await;
    let app = relay(&fixture, &receiver).await;

    fixture
        .post(
            "/room/join",
            json!({"room": "room1@chatroom", "invitees": ["dave"], "inviter": "alice"}),
        )
        .await;
    receiver
        .wait_for(10, "room.join", |r| {
            r.iter().any(|x| x.json()["type"] == "room.join")
        })
        .await;
    let join = receiver.of_type("room.join").remove(0).json();
    assert_eq!(join["data"]["room"]["id"], "room1@chatroom");
    assert_eq!(join["data"]["invitees"][0]["id"], "dave");
    assert_eq!(join["data"]["invitees"][0]["name"], "Dave");
    assert_eq!(join["data"]["inviter"]["id"], "alice");

    fixture
        .post(
            "/room/topic",
            json!({"room": "room1@chatroom", "topic": "Renamed", "changer": "bob"}),
        )
        .await;
    receiver
        .wait_for(10, "room.topic", |r| {
            r.iter().any(|x| x.json()["type"] == "room.topic")
        })
        .await;
    let topic = receiver.of_type("room.topic").remove(0).json();
    assert_eq!(topic["data"]["old_topic"], "Service Room");
    assert_eq!(topic["data"]["new_topic"], "Renamed");
    assert_eq!(topic["data"]["room"]["topic"], "Renamed");
    assert_eq!(topic["data"]["changer"]["id"], "bob");

    // The same message id emitted twice (a replay after a reconnect) is relayed once;
    // a message older than skip_older_than (60 s by default) is not relayed.
    let id = fixture
        .say(json!({"from": "alice", "text": "only once"}))
        .await;
    fixture.post("/replay", json!({"id": id})).await;
    fixture
        .say(json!({"from": "alice", "text": "stale", "ageMs": 120_000}))
        .await;
    fixture
        .say(json!({"from": "alice", "text": "marker"}))
        .await;
    wait_message(&receiver, "marker").await;
    assert_eq!(messages(&receiver.received(), "only once").len(), 1);
    assert!(messages(&receiver.received(), "stale").is_empty());
    let (_, events) = app.get("/v1/events?types=message&limit=100").await;
    let stored: Vec<&Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"]["id"] == id)
        .collect();
    assert_eq!(stored.len(), 1, "stored once: {events}");

    app.stop().await;
}

/// A burst from 16 concurrent senders: every message is relayed once, and stored in
/// the order the stream brought them (the fixture numbers its message ids as it emits
/// them), although the events are stored in group commits of several.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_stored_in_stream_order() {
    const SENDERS: usize = 16;
    const EACH: usize = 150;
    let fixture = std::sync::Arc::new(PuppetFixture::start(TOKEN).await);
    let receiver = TestReceiver::start().await;
    let app = relay(&fixture, &receiver).await;
    let tasks: Vec<_> = (0..SENDERS)
        .map(|t| {
            let fixture = fixture.clone();
            tokio::spawn(async move {
                for i in 0..EACH {
                    fixture
                        .say(json!({"from": "alice", "text": format!("burst {t}-{i}")}))
                        .await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let total = SENDERS * EACH;
    receiver
        .wait_for(120, "every message of the burst", |r| {
            r.iter()
                .filter(|x| {
                    x.json()["data"]["text"]
                        .as_str()
                        .is_some_and(|t| t.starts_with("burst "))
                })
                .count()
                >= total
        })
        .await;
    let relayed: HashSet<String> = receiver
        .received()
        .iter()
        .filter_map(|x| x.json()["data"]["text"].as_str().map(str::to_string))
        .filter(|t| t.starts_with("burst "))
        .collect();
    assert_eq!(relayed.len(), total, "each message once");

    // Stored in emission order: the fixture's counter in the message id grows with seq.
    let mut numbers = Vec::new();
    let mut after = 0;
    loop {
        let (status, page) = app
            .get(&format!(
                "/v1/events?types=message&limit=1000&after={after}"
            ))
            .await;
        assert_eq!(status, 200, "{page}");
        let events = page["events"].as_array().unwrap();
        for e in events {
            let id = e["data"]["id"].as_str().unwrap();
            numbers.push(id.rsplit('-').next().unwrap().parse::<u64>().unwrap());
        }
        let next = page["next_after"].as_i64().unwrap();
        if next == after {
            break;
        }
        after = next;
    }
    assert_eq!(numbers.len(), total);
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "stored in the order the stream brought them"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_the_server_dies_and_sends_what_was_queued() {
    let mut fixture = PuppetFixture::start(TOKEN).await;
    let receiver = TestReceiver::start().await;
    let app = relay(&fixture, &receiver).await;

    let mut said = Vec::new();
    for i in 0..20 {
        let text = format!("before {i}");
        fixture.say(json!({"from": "alice", "text": text})).await;
        said.push(text);
    }
    for text in &said {
        wait_message(&receiver, text).await;
    }

    fixture.kill().await;
    let session = app
        .eventually(10, "the session to notice", || async {
            let (_, s) = app.get("/v1/session").await;
            (s["state"] == "disconnected").then_some(s)
        })
        .await;
    assert_eq!(session["user"]["id"], "bot-user", "{session}");
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let reason: Value = ready.json().await.unwrap();
    let reason = reason["error"]["message"].as_str().unwrap().to_string();
    assert!(reason.contains("disconnected"), "{reason}");

    // Accepted while the puppet is away; sent once it is back.
    let (status, queued) = app
        .post(
            "/v1/messages",
            json!({"to": {"contact": "alice"}, "text": "queued while away"}),
        )
        .await;
    assert_eq!(status, 202, "{queued}");

    fixture.restart().await;
    app.wait_logged_in().await;
    let sent = app
        .eventually(20, "the queued send to go out", || async {
            let sent = fixture.sent().await;
            sent.into_iter().find(|s| s["text"] == "queued while away")
        })
        .await;
    assert_eq!(sent["conversationId"], "alice");
    // The puppet has it; the outcome is recorded right after (not in the same instant).
    let id = queued["id"].as_str().unwrap().to_string();
    let view = app
        .eventually(5, "the send recorded as sent", || async {
            let (_, view) = app.get(&format!("/v1/messages/{id}")).await;
            (view["status"] != "queued").then_some(view)
        })
        .await;
    assert_eq!(view["status"], "sent", "{view}");

    for i in 0..20 {
        let text = format!("after {i}");
        fixture.say(json!({"from": "bob", "text": text})).await;
        said.push(text);
    }
    for text in &said {
        wait_message(&receiver, text).await;
    }
    // Every message the servers delivered arrived exactly once.
    for text in &said {
        assert_eq!(messages(&receiver.received(), text).len(), 1, "{text}");
    }
    // The restarted server logged in afresh: its login is an event; a mere reconnect
    // to a server still logged in would not repeat it.
    assert_eq!(receiver.of_type("login").len(), 2);

    app.stop().await;
}

/// A CA and a server certificate for `name` signed by it; returns the CA's PEM path
/// and the server's certificate and key paths.
fn certificates(dir: &std::path::Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "waas test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, server.pem()).unwrap();
    std::fs::write(&paths.2, server_key.serialize_pem()).unwrap();
    paths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_over_tls_with_a_private_ca_and_server_name() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path(), "puppet.waas.test");
    let fixture = PuppetFixture::start_tls(TOKEN, cert, key).await;
    let receiver = TestReceiver::start().await;
    let tls = format!(
        "tls = true\ntls_ca = \"{}\"\ntls_server_name = \"puppet.waas.test\"\n",
        ca.display()
    );
    let app = spawn_app(&format!(
        "{}{tls}\n{}",
        fixture.puppet_config(TOKEN),
        webhook("bot", &receiver, "")
    ))
    .await;
    fixture
        .say(json!({"from": "alice", "text": "over tls"}))
        .await;
    let m = wait_message(&receiver, "over tls").await;
    assert_eq!(m["data"]["from"]["id"], "alice");
    app.stop().await;

    // The certificate names puppet.waas.test, not 127.0.0.1: without the server name
    // the handshake must fail, and the reason must say so.
    let app = spawn_app_unready(&format!(
        "{}tls = true\ntls_ca = \"{}\"\n",
        fixture.puppet_config(TOKEN),
        ca.display()
    ))
    .await;
    let session = app
        .eventually(10, "the refused handshake", || async {
            let (_, s) = app.get("/v1/session").await;
            (s["state"] == "disconnected").then_some(s)
        })
        .await;
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    let body: Value = ready.json().await.unwrap();
    let reason = body["error"]["message"].as_str().unwrap().to_lowercase();
    assert!(
        reason.contains("certificate") || reason.contains("tls"),
        "{session} {reason}"
    );
    app.stop().await;
}
