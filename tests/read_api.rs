//! Reading without webhooks: cursor pull with long-poll, SSE with resume, the session's
//! QR code, the directory, and the original polling API with its own client's habits.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::spawn_app;
use serde_json::{Value, json};

#[tokio::test]
async fn the_pull_api_pages_by_cursor_and_filters_types() {
    let app = spawn_app("").await;
    for i in 0..3 {
        app.inject("alice", None, &format!("m{i}")).await;
    }
    let (status, page) = app.get("/v1/events?after=0").await;
    assert_eq!(status, 200);
    let types: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["scan", "login", "ready", "message", "message", "message"]
    );
    let seqs: Vec<i64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(page["next_after"], *seqs.last().unwrap());

    let (_, only) = app.get("/v1/events?after=0&types=message&limit=2").await;
    let events = only["events"].as_array().unwrap();
    assert!(events.iter().all(|e| e["type"] == "message"));
    let (_, rest) = app
        .get(&format!(
            "/v1/events?after={}&types=message",
            only["next_after"]
        ))
        .await;
    let texts: Vec<&str> = events
        .iter()
        .chain(rest["events"].as_array().unwrap())
        .map(|e| e["data"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["m0", "m1", "m2"], "pages neither skip nor repeat");

    let (status, err) = app.get("/v1/events?types=message,party").await;
    assert_eq!(status, 422);
    assert!(err["error"]["message"].as_str().unwrap().contains("party"));
}

#[tokio::test]
async fn a_long_poll_returns_within_100ms_of_a_new_event() {
    let app = spawn_app("").await;
    let (_, page) = app.get("/v1/events?after=0").await;
    let after = page["next_after"].as_i64().unwrap();
    let url = app.url(&format!("/v1/events?after={after}&wait=10s"));
    let poll = tokio::spawn(async move {
        let body: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
        (body, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = app.inject("bob", None, "wake up").await;
    let committed = Instant::now();
    assert_eq!(status, 201);
    let (body, answered) = poll.await.unwrap();
    assert_eq!(body["events"][0]["data"]["text"], "wake up");
    let lag = answered.saturating_duration_since(committed);
    assert!(
        lag < Duration::from_millis(100),
        "long poll answered {lag:?} after the commit"
    );

    // Nothing new: the wait runs out and the cursor stays.
    let started = Instant::now();
    let (_, empty) = app
        .get(&format!("/v1/events?after={}&wait=0.3", body["next_after"]))
        .await;
    assert!(started.elapsed() >= Duration::from_millis(290));
    assert_eq!(empty["events"], json!([]));
    assert_eq!(empty["next_after"], body["next_after"]);
}

/// Reads `n` SSE events from a streaming response: (id, event, data).
async fn read_sse(resp: &mut reqwest::Response, n: usize) -> Vec<(i64, String, Value)> {
    let mut buf = String::new();
    let mut out = Vec::new();
    while out.len() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .expect("SSE event in time")
            .unwrap()
            .expect("stream open");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut id, mut event, mut data) = (None, String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if let Some(id) = id {
                out.push((id, event, serde_json::from_str(&data).unwrap()));
            }
        }
    }
    out
}

#[tokio::test]
async fn the_event_stream_resumes_after_a_disconnect_without_gap_or_duplicate() {
    let app = spawn_app("").await;
    let client = reqwest::Client::new();
    let mut first = client
        .get(app.url("/v1/events/stream?types=message"))
        .send()
        .await
        .unwrap();
    assert_eq!(first.headers()["content-type"], "text/event-stream");
    for i in 0..5 {
        app.inject("carol", None, &format!("s{i}")).await;
    }
    let got = read_sse(&mut first, 5).await;
    drop(first);
    assert!(
        got.iter()
            .all(|(_, event, body)| event == "message" && body["type"] == "message")
    );
    let last_id = got.last().unwrap().0;

    for i in 5..10 {
        app.inject("carol", None, &format!("s{i}")).await;
    }
    let mut second = client
        .get(app.url("/v1/events/stream?types=message"))
        .header("last-event-id", last_id.to_string())
        .send()
        .await
        .unwrap();
    let resumed = read_sse(&mut second, 5).await;
    let texts: Vec<String> = got
        .iter()
        .chain(&resumed)
        .map(|(_, _, b)| b["data"]["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(texts, (0..10).map(|i| format!("s{i}")).collect::<Vec<_>>());
    let ids: Vec<i64> = got
        .iter()
        .chain(&resumed)
        .map(|(id, _, b)| {
            assert_eq!(b["seq"].as_i64().unwrap(), *id);
            *id
        })
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
}

#[tokio::test]
async fn the_qr_code_is_served_while_a_scan_is_pending() {
    let app = common::spawn_app_unready("[puppet.mock]\nauto_login = false\n").await;
    let resp = reqwest::get(app.url("/v1/session/qr.svg")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "image/svg+xml");
    assert!(resp.text().await.unwrap().contains("<svg"));
    let (_, scan) = app.get("/api/scan").await;
    assert_eq!(scan["ok"], true);
    assert!(
        scan["qrurl"]
            .as_str()
            .unwrap()
            .ends_with("/v1/session/qr.svg")
    );
    let (_, status) = app.get("/api/status").await;
    assert_eq!(status, json!({"ok": false, "error": "Not login"}));

    app.post("/v1/mock/scan", json!({})).await;
    app.wait_logged_in().await;
    let resp = reqwest::get(app.url("/v1/session/qr.svg")).await.unwrap();
    assert_eq!(resp.status(), 404);
    let (_, status) = app.get("/api/status").await;
    assert_eq!(status, json!({"ok": true, "login": true}));
    let (_, scan) = app.get("/api/scan").await;
    assert_eq!(scan, json!({"ok": false, "error": "Not initialized"}));
}

#[tokio::test]
async fn the_directory_lists_and_searches() {
    let app = spawn_app("").await;
    let (_, all) = app.get("/v1/contacts").await;
    assert_eq!(all["contacts"].as_array().unwrap().len(), 3);
    let (_, some) = app.get("/v1/contacts?q=ALI").await;
    assert_eq!(some["contacts"][0]["id"], "alice");
    assert_eq!(some["contacts"].as_array().unwrap().len(), 1);
    let (status, bob) = app.get("/v1/contacts/bob").await;
    assert_eq!((status, bob["name"].as_str()), (200, Some("Bob")));
    let (status, _) = app.get("/v1/contacts/zed").await;
    assert_eq!(status, 404);
    let (_, rooms) = app.get("/v1/rooms?q=mock").await;
    assert_eq!(rooms["rooms"][0]["id"], "room1@chatroom");
    assert_eq!(rooms["rooms"][0]["member_count"], 4);
    let (_, room) = app.get("/v1/rooms/room1@chatroom").await;
    assert_eq!(room["topic"], "Mock Room");
    let (_, members) = app.get("/v1/rooms/room1@chatroom/members").await;
    let ids: HashSet<&str> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, HashSet::from(["bot-user", "alice", "bob", "carol"]));
    let (status, _) = app.get("/v1/rooms/nowhere@chatroom/members").await;
    assert_eq!(status, 404);
}

/// Behaves exactly like the original Python client: polls every 0.2 s, de-duplicates by
/// id, and echoes every message back through `POST /api/message` by name or topic.
#[tokio::test]
async fn the_old_polling_client_sees_every_message_of_a_burst_and_every_echo_lands() {
    let token = "legacy-token-0123456789";
    let app = spawn_app(&format!("[auth]\ntokens = [\"{token}\"]\n")).await;
    let base = app.url(&format!("/t/{token}"));

    // Plain /api is closed when auth is configured; a wrong token too.
    let resp = reqwest::get(app.url("/api/message")).await.unwrap();
    assert_eq!(resp.status(), 401);
    let resp = reqwest::get(app.url("/t/wrong-token/api/message"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    let client_base = base.clone();
    let old_client = tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut seen: HashSet<String> = HashSet::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while seen.len() < 100 && Instant::now() < deadline {
            let body: Value = http
                .get(format!("{client_base}/api/message"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(body["ok"], true);
            for msg in body["messages"].as_array().unwrap() {
                let id = msg["id"].as_str().unwrap().to_string();
                if !seen.insert(id) {
                    continue;
                }
                // msg.get('room', {}).get('topic'): direct messages have no "room" key.
                let text = format!("echo {}", msg["text"].as_str().unwrap());
                let echo = match msg.get("room").and_then(|r| r.get("topic")) {
                    Some(topic) => json!({"topic": topic, "text": text}),
                    None => json!({"name": msg["from"]["name"], "text": text}),
                };
                let answer: Value = http
                    .post(format!("{client_base}/api/message"))
                    .json(&echo)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                assert_eq!(answer, json!({"ok": true}));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        seen.len()
    });

    let mut injections = Vec::new();
    for i in 0..100 {
        let app = &app;
        injections.push(async move {
            let (who, room) = match i % 4 {
                0 => ("alice", None),
                1 => ("bob", None),
                2 => ("carol", Some("Mock Room")),
                _ => ("alice", Some("room1@chatroom")),
            };
            app.inject(who, room, &format!("burst {i}")).await
        });
    }
    for (status, body) in futures::future::join_all(injections).await {
        assert_eq!(status, 201, "{body}");
    }
    assert_eq!(
        old_client.await.unwrap(),
        100,
        "the old client saw every message"
    );

    let sent = app
        .eventually(20, "100 echoes", || async {
            let s = app.sent().await;
            (s.len() >= 100).then_some(s)
        })
        .await;
    assert_eq!(sent.len(), 100);
    let to_room = sent
        .iter()
        .filter(|m| m["to"] == json!({"room": "room1@chatroom"}))
        .count();
    assert_eq!(to_room, 50);
    assert!(
        sent.iter()
            .all(|m| m["text"].as_str().unwrap().starts_with("echo burst "))
    );

    // The seed shape: camelCase, no null keys, gender as Wechaty's number.
    let (_, page) = app.get(&format!("/t/{token}/api/message")).await;
    let direct = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m.get("room").is_none())
        .unwrap()
        .clone();
    assert_eq!(direct["from"]["isFriend"], true);
    assert_eq!(direct["from"]["gender"], 0);
    assert!(direct["from"].get("alias").is_none());
    assert!(direct["date"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn a_wait_longer_than_the_request_timeout_answers_before_it() {
    let app = spawn_app("[server]\nrequest_timeout = \"2s\"\n").await;
    let started = Instant::now();
    let (status, body) = app.get("/v1/events?after=1000&wait=60").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"], json!([]));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(1900),
        "{took:?}"
    );
}
