//! The relay end to end: real app, real receivers, real SQLite.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{TestReceiver, spawn_app, spawn_app_in, webhook};
use serde_json::json;

#[tokio::test]
async fn messages_reach_two_webhooks_with_the_contract_shape() {
    let a = TestReceiver::start().await;
    let b = TestReceiver::start().await;
    let app = spawn_app(&(webhook("a", &a, "") + &webhook("b", &b, ""))).await;

    let mut event_ids = Vec::new();
    for i in 0..5 {
        let (status, body) = app.inject("alice", None, &format!("hello {i}")).await;
        assert_eq!(status, 201, "{body}");
        event_ids.push(body["event_id"].as_str().unwrap().to_string());
    }
    let (status, body) = app.inject("Bob", Some("Mock Room"), "in the room").await;
    assert_eq!(status, 201, "{body}");

    for receiver in [&a, &b] {
        receiver
            .wait_for(10, "6 messages", |r| {
                r.iter().filter(|r| r.json()["type"] == "message").count() == 6
            })
            .await;
        let messages = receiver.of_type("message");
        let first = messages[0].json();
        assert!(first["id"].as_str().unwrap().starts_with("evt_"));
        assert_eq!(messages[0].header("webhook-id"), first["id"]);
        assert_eq!(messages[0].header("content-type"), "application/json");
        assert!(messages[0].header("user-agent").starts_with("waas/"));
        assert!(messages[0].header("webhook-signature").starts_with("v1,"));
        assert!(
            messages[0]
                .header("webhook-timestamp")
                .parse::<i64>()
                .is_ok()
        );
        assert_eq!(first["bot"], json!({"id": "bot-user", "name": "MockBot"}));
        assert!(first["timestamp"].as_str().unwrap().ends_with('Z'));
        let ids: HashSet<String> = messages.iter().map(|m| m.header("webhook-id")).collect();
        for id in &event_ids {
            assert!(ids.contains(id), "{id} missing");
        }
        let room_msg = messages
            .iter()
            .map(|m| m.json())
            .find(|m| m["data"]["text"] == "in the room")
            .unwrap();
        assert_eq!(room_msg["data"]["kind"], "text");
        assert_eq!(room_msg["data"]["from"]["id"], "bob");
        assert_eq!(room_msg["data"]["room"]["id"], "room1@chatroom");
        assert_eq!(room_msg["data"]["room"]["topic"], "Mock Room");
        assert_eq!(room_msg["data"]["to"], serde_json::Value::Null);
        let direct = messages[0].json();
        assert_eq!(direct["data"]["to"]["id"], "bot-user");
        assert_eq!(direct["data"]["room"], serde_json::Value::Null);
        // seq grows by one per stored event.
        let mut seqs: Vec<i64> = messages
            .iter()
            .map(|m| m.json()["seq"].as_i64().unwrap())
            .collect();
        seqs.sort();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    }
    // The session events went out too (webhooks take all types by default).
    a.wait_for(5, "login and ready", |r| {
        let types: HashSet<String> = r
            .iter()
            .map(|r| r.json()["type"].as_str().unwrap().to_string())
            .collect();
        ["scan", "login", "ready"]
            .iter()
            .all(|t| types.contains(*t))
    })
    .await;
    let login = a.of_type("login")[0].json();
    assert_eq!(login["data"]["user"]["id"], "bot-user");
    assert_eq!(login["data"]["user"]["self"], true);
}

#[tokio::test]
async fn a_failing_receiver_gets_retries_with_the_same_webhook_id() {
    let r = TestReceiver::start().await;
    r.set_status(500);
    let app = spawn_app(&webhook("flaky", &r, "events = [\"message\"]\nretry = [\"50ms\", \"50ms\", \"50ms\", \"50ms\", \"50ms\", \"50ms\"]")).await;
    let (_, body) = app.inject("carol", None, "retry me").await;
    let event_id = body["event_id"].as_str().unwrap().to_string();

    r.wait_for(10, "3 failed attempts", |r| r.len() >= 3).await;
    r.set_status(204);
    r.wait_for(10, "a success", |_| true).await;
    let delivered = app
        .eventually(10, "delivered", || async {
            let d = app.deliveries("webhook=flaky&status=delivered").await;
            d.into_iter().next()
        })
        .await;
    let got = r.received();
    assert!(got.len() >= 4);
    assert!(
        got.iter().all(|g| g.header("webhook-id") == event_id),
        "the webhook-id never changes"
    );
    // The body is byte-identical on every retry.
    assert!(got.iter().all(|g| g.body == got[0].body));
    let attempts = delivered["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), got.len());
    assert_eq!(attempts[0]["status_code"], 500);
    assert_eq!(attempts.last().unwrap()["status_code"], 204);
    assert!(attempts[0]["duration_ms"].as_i64().is_some());
    assert_eq!(delivered["event_id"], event_id.as_str());
    let hook = app.webhook("flaky").await;
    assert_eq!(hook["state"], "healthy");
    assert!(hook["last_success_at"].is_string());
}

#[tokio::test]
async fn a_hopeless_delivery_dies_is_listed_and_a_manual_retry_delivers_it() {
    let r = TestReceiver::start().await;
    r.set_status(503);
    let app = spawn_app(&webhook(
        "down",
        &r,
        "events = [\"message\"]\nretry = [\"20ms\", \"20ms\"]",
    ))
    .await;
    let (_, body) = app.inject("alice", None, "doomed").await;
    let event_id = body["event_id"].as_str().unwrap().to_string();

    let dead = app
        .eventually(10, "a dead delivery", || async {
            app.deliveries("webhook=down&status=dead")
                .await
                .into_iter()
                .next()
        })
        .await;
    assert_eq!(dead["event_id"], event_id.as_str());
    assert_eq!(
        dead["attempts"].as_array().unwrap().len(),
        3,
        "1 try + 2 retries"
    );
    assert!(dead.get("next_attempt_at").is_none());
    let hook = app.webhook("down").await;
    assert_eq!(hook["dead"], 1);
    assert_eq!(hook["pending"], 0);
    assert_eq!(hook["state"], "failing");
    assert_eq!(hook["last_error"], "HTTP 503");
    assert_eq!(r.received().len(), 3);

    r.set_status(200);
    let id = dead["id"].as_str().unwrap();
    let (status, body) = app
        .post(&format!("/v1/deliveries/{id}/retry"), json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    r.wait_for(10, "the manual retry", |r| r.len() == 4).await;
    assert_eq!(r.received()[3].header("webhook-id"), event_id);
    app.eventually(10, "delivered", || async {
        app.deliveries("webhook=down&status=delivered")
            .await
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(app.webhook("down").await["dead"], 0);

    let (status, body) = app.post("/v1/deliveries/dlv_nope/retry", json!({})).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
}

#[tokio::test]
async fn a_reply_in_the_response_is_sent_back_once() {
    let r = TestReceiver::start().await;
    r.set_response(r#"{"reply":"pong"}"#);
    let app = spawn_app(&webhook("bot", &r, "events = [\"message\"]")).await;
    app.inject("alice", None, "ping").await;
    let sent = app
        .eventually(10, "the reply", || async {
            let s = app.sent().await;
            (!s.is_empty()).then_some(s)
        })
        .await;
    assert_eq!(sent[0]["to"], json!({"contact": "alice"}));
    assert_eq!(sent[0]["text"], "pong");

    // In a room, replies go to the room; `replies` sends several, in order.
    r.set_response(r#"{"replies":["one",{"text":"two","mentions":["bob"]}]}"#);
    app.inject("bob", Some("room1@chatroom"), "hi all").await;
    let sent = app
        .eventually(10, "two more replies", || async {
            let s = app.sent().await;
            (s.len() == 3).then_some(s)
        })
        .await;
    assert_eq!(sent[1]["to"], json!({"room": "room1@chatroom"}));
    assert_eq!(sent[1]["text"], "one");
    assert_eq!(sent[2]["text"], "two");
    assert_eq!(sent[2]["mentions"], json!(["bob"]));

    // Delivering the same event again (a manual retry) does not send the reply again.
    let first = app
        .deliveries("webhook=bot&status=delivered&limit=500")
        .await;
    let id = first.last().unwrap()["id"].as_str().unwrap().to_string();
    let (status, _) = app
        .post(&format!("/v1/deliveries/{id}/retry"), json!({}))
        .await;
    assert_eq!(status, 202);
    r.wait_for(10, "the redelivery", |r| r.len() == 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.sent().await.len(), 3);
}

#[tokio::test]
async fn gone_disables_the_webhook_and_its_deliveries_wait() {
    let r = TestReceiver::start().await;
    r.set_status(410);
    let app = spawn_app(&webhook("gone", &r, "events = [\"message\"]")).await;
    app.inject("alice", None, "one").await;
    app.eventually(10, "disabled", || async {
        let hook = app.webhook("gone").await;
        (hook["state"] == "disabled").then_some(())
    })
    .await;
    app.inject("alice", None, "two").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        r.received().len(),
        1,
        "a disabled webhook gets nothing more"
    );
    assert_eq!(app.webhook("gone").await["pending"], 2);
}

#[tokio::test]
async fn conversation_ordering_keeps_each_chat_in_seq_order() {
    let r = TestReceiver::start().await;
    r.set_random_delay(Duration::from_millis(20));
    let app = spawn_app(&webhook(
        "ordered",
        &r,
        "events = [\"message\"]\nordering = \"conversation\"\nmax_in_flight = 8",
    ))
    .await;
    let mut injections = Vec::new();
    for i in 0..20 {
        for who in ["alice", "bob", "carol"] {
            let app = &app;
            injections.push(async move { app.inject(who, None, &format!("{who} {i}")).await });
        }
    }
    for (status, _) in futures::future::join_all(injections).await {
        assert_eq!(status, 201);
    }
    r.wait_for(20, "60 messages", |r| r.len() == 60).await;
    let mut last: HashMap<String, i64> = HashMap::new();
    for got in r.received() {
        let body = got.json();
        let from = body["data"]["from"]["id"].as_str().unwrap().to_string();
        let seq = body["seq"].as_i64().unwrap();
        let prev = last.insert(from.clone(), seq).unwrap_or(0);
        assert!(seq > prev, "{from}: seq {seq} arrived after {prev}");
    }
}

#[tokio::test]
async fn filters_pick_event_types_rooms_and_contacts() {
    let rooms = TestReceiver::start().await;
    let alice = TestReceiver::start().await;
    let app = spawn_app(
        &(webhook(
            "rooms",
            &rooms,
            "events = [\"message\"]\nrooms = [\"Mock Room\"]",
        ) + &webhook("alice", &alice, "contacts = [\"alice\"]")),
    )
    .await;
    app.inject("alice", None, "direct from alice").await;
    app.inject("bob", None, "direct from bob").await;
    app.inject("bob", Some("Mock Room"), "room from bob").await;
    app.inject("alice", Some("room1@chatroom"), "room from alice")
        .await;
    rooms
        .wait_for(10, "2 room messages", |r| r.len() == 2)
        .await;
    alice
        .wait_for(10, "alice's messages", |r| {
            r.iter().filter(|r| r.json()["type"] == "message").count() == 2
        })
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let texts = |r: &TestReceiver| -> Vec<String> {
        r.of_type("message")
            .iter()
            .map(|m| m.json()["data"]["text"].as_str().unwrap().to_string())
            .collect()
    };
    let mut got = texts(&rooms);
    got.sort();
    assert_eq!(got, ["room from alice", "room from bob"]);
    let mut got = texts(&alice);
    got.sort();
    assert_eq!(got, ["direct from alice", "room from alice"]);
    // Session events pass a contact filter but not an events filter.
    assert!(!alice.of_type("login").is_empty());
    assert!(rooms.of_type("login").is_empty());
}

#[tokio::test]
async fn the_same_puppet_message_is_stored_once() {
    let r = TestReceiver::start().await;
    let app = spawn_app(&webhook("w", &r, "events = [\"message\"]")).await;
    let body = json!({"from": "alice", "text": "once", "id": "wx-msg-42"});
    let (first_status, first) = app.post("/v1/mock/messages", body.clone()).await;
    let (again_status, again) = app.post("/v1/mock/messages", body).await;
    assert_eq!(first_status, 201);
    assert_eq!(again_status, 200);
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["event_id"], first["event_id"]);
    r.wait_for(10, "one delivery", |r| r.len() == 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(r.received().len(), 1);
}

#[tokio::test]
async fn pending_deliveries_survive_a_restart() {
    let r = TestReceiver::start().await;
    r.set_status(500);
    let hooks = webhook(
        "w",
        &r,
        "events = [\"message\"]\nretry = [\"300ms\", \"300ms\", \"300ms\", \"300ms\"]",
    );
    let app = spawn_app(&hooks).await;
    let (_, body) = app.inject("alice", None, "keep me").await;
    r.wait_for(10, "a first attempt", |r| !r.is_empty()).await;
    let dir = app.stop().await;
    r.set_status(200);
    let app = spawn_app_in(dir, &hooks).await;
    r.wait_for(10, "delivery after restart", |r| {
        r.iter().any(|r| {
            r.headers["webhook-id"] == body["event_id"].as_str().unwrap()
                && r.at.elapsed() < Duration::from_secs(5)
        })
    })
    .await;
    app.eventually(10, "delivered", || async {
        app.deliveries("status=delivered").await.into_iter().next()
    })
    .await;
}

#[tokio::test]
async fn retry_after_on_429_is_honoured_within_the_step() {
    let r = TestReceiver::start().await;
    r.set_status(429);
    // Asks for 60 s; the step is 300 ms, so waas waits twice the step: 600 ms.
    r.set_header("retry-after", "60");
    let app = spawn_app(&webhook(
        "limited",
        &r,
        "events = [\"message\"]\nretry = [\"300ms\", \"300ms\"]",
    ))
    .await;
    app.inject("alice", None, "slow down").await;
    r.wait_for(10, "two attempts", |r| r.len() == 2).await;
    let got = r.received();
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(590) && gap < Duration::from_millis(1500),
        "Retry-After clamped to 2×step: waited {gap:?}"
    );
}

#[tokio::test]
async fn admin_test_replay_and_enable() {
    let a = TestReceiver::start().await;
    let b = TestReceiver::start().await;
    let app = spawn_app(
        &(webhook("a", &a, "events = [\"message\"]") + &webhook("b", &b, "events = [\"message\"]")),
    )
    .await;

    // A test event goes to the named webhook only.
    let (status, test) = app.post("/v1/webhooks/a/test", json!({})).await;
    assert_eq!(status, 202, "{test}");
    a.wait_for(10, "the test event", |r| r.len() == 1).await;
    let got = a.received()[0].json();
    assert_eq!(got["type"], "webhook.test");
    assert_eq!(got["data"], json!({"webhook": "a"}));
    assert_eq!(got["id"], test["event_id"]);
    let (status, _) = app.post("/v1/webhooks/nope/test", json!({})).await;
    assert_eq!(status, 404);

    // Replay re-sends delivered events, with their original ids, to that webhook only.
    let (_, first) = app.inject("alice", None, "one").await;
    app.inject("bob", None, "two").await;
    a.wait_for(10, "two messages", |r| r.len() == 3).await;
    b.wait_for(10, "two messages", |r| r.len() == 2).await;
    let seq = a.received()[1].json()["seq"].as_i64().unwrap();
    let (status, replay) = app
        .post("/v1/webhooks/a/replay", json!({"after_seq": seq - 1}))
        .await;
    assert_eq!(status, 202, "{replay}");
    assert_eq!(replay["requeued"], 2);
    a.wait_for(10, "the replay", |r| r.len() == 5).await;
    let ids: Vec<String> = a.received()[3..]
        .iter()
        .map(|r| r.header("webhook-id"))
        .collect();
    assert!(ids.contains(&first["event_id"].as_str().unwrap().to_string()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.received().len(), 2, "other webhooks are not replayed to");
    let (status, err) = app.post("/v1/webhooks/a/replay", json!({})).await;
    assert_eq!(status, 422, "{err}");
    let (status, _) = app
        .post("/v1/webhooks/a/replay", json!({"since": "yesterday"}))
        .await;
    assert_eq!(status, 422);
    let (_, since) = app
        .post(
            "/v1/webhooks/b/replay",
            json!({"since": "2000-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(since["requeued"], 2);

    // A webhook disabled by 410 is enabled by hand and catches up.
    a.set_status(410);
    app.inject("carol", None, "three").await;
    app.eventually(10, "disabled", || async {
        (app.webhook("a").await["state"] == "disabled").then_some(())
    })
    .await;
    app.inject("carol", None, "four").await;
    a.set_status(200);
    let (status, _) = app.post("/v1/webhooks/a/enable", json!({})).await;
    assert_eq!(status, 200);
    a.wait_for(10, "three and four after enabling", |r| {
        let texts: Vec<String> = r
            .iter()
            .filter_map(|r| r.json()["data"]["text"].as_str().map(str::to_string))
            .collect();
        texts.iter().filter(|t| *t == "three").count() == 2 && texts.contains(&"four".to_string())
    })
    .await;
    assert_ne!(app.webhook("a").await["state"], "disabled");
}

#[tokio::test]
async fn a_webhook_whose_deliveries_keep_dying_is_disabled() {
    let r = TestReceiver::start().await;
    r.set_status(500);
    let app = spawn_app(&webhook(
        "dying",
        &r,
        "events = [\"message\"]\nretry = [\"10ms\"]\ndisable_after = \"400ms\"",
    ))
    .await;
    let dead = |n: usize| {
        let app = &app;
        async move {
            app.eventually(10, "dead deliveries", || async {
                (app.deliveries("webhook=dying&status=dead").await.len() == n).then_some(())
            })
            .await
        }
    };
    app.inject("alice", None, "one").await;
    dead(1).await;
    // A success in between clears the record: no disabling.
    r.set_status(200);
    app.inject("alice", None, "two").await;
    r.wait_for(10, "a success", |r| {
        r.iter().any(|r| r.json()["data"]["text"] == "two")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    r.set_status(500);
    app.inject("alice", None, "three").await;
    dead(2).await;
    assert_eq!(app.webhook("dying").await["state"], "failing");

    // Dying again more than disable_after after the first death: disabled.
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.inject("alice", None, "four").await;
    dead(3).await;
    let hook = app
        .eventually(10, "disabled", || async {
            let hook = app.webhook("dying").await;
            (hook["state"] == "disabled").then_some(hook)
        })
        .await;
    assert!(
        hook["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("kept dying"),
        "{hook}"
    );
    let (status, _) = app.post("/v1/webhooks/dying/enable", json!({})).await;
    assert_eq!(status, 200);
    assert_ne!(app.webhook("dying").await["state"], "disabled");
}
