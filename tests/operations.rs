//! Operations beyond sends, against the mock puppet: rooms, friendships, room
//! invitations, aliases, recall, capabilities; each through the durable queue, each with
//! the events WeChat reports.

mod common;

use std::sync::Arc;

use common::{TestApp, TestReceiver, spawn_app, spawn_app_unready, webhook};
use serde_json::{Value, json};

async fn with_receiver() -> (TestApp, TestReceiver) {
    let receiver = TestReceiver::start().await;
    let app = spawn_app(&webhook("all", &receiver, "")).await;
    (app, receiver)
}

/// The data of the first event of `kind` the receiver got that `pred` accepts.
async fn event(receiver: &TestReceiver, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let found = |all: &[common::Received]| {
        all.iter()
            .map(|r| r.json())
            .find(|e| e["type"] == kind && pred(&e["data"]))
    };
    receiver.wait_for(5, kind, |all| found(all).is_some()).await;
    found(&receiver.received()).unwrap()["data"].clone()
}

fn ids(list: &Value) -> Vec<String> {
    let mut ids: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn a_room_is_created_changed_and_left_with_its_events() {
    let (app, receiver) = with_receiver().await;
    let (status, room) = app
        .call(
            "POST",
            "/v1/rooms",
            Some(json!({"topic": "Team", "members": ["alice", "bob"]})),
        )
        .await;
    assert_eq!(status, 201, "{room}");
    assert_eq!(room["topic"], "Team");
    assert_eq!(room["member_count"], 3);
    let id = room["id"].as_str().unwrap().to_string();
    assert!(id.ends_with("@chatroom"), "{id}");
    let (_, members) = app.get(&format!("/v1/rooms/{id}/members")).await;
    assert_eq!(ids(&members["members"]), ["alice", "bob", "bot-user"]);
    let joined = event(&receiver, "room.join", |d| d["room"]["id"] == id.as_str()).await;
    assert_eq!(ids(&joined["invitees"]), ["alice", "bob"]);
    assert_eq!(joined["inviter"]["id"], "bot-user");

    let (status, op) = app
        .call(
            "POST",
            &format!("/v1/rooms/{id}/members"),
            Some(json!({"contacts": ["carol"]})),
        )
        .await;
    assert_eq!(status, 200, "{op}");
    assert_eq!(op["status"], "done");
    assert!(op["id"].as_str().unwrap().starts_with("op_"));
    let joined = event(&receiver, "room.join", |d| {
        d["invitees"][0]["id"] == "carol" && d["room"]["id"] == id.as_str()
    })
    .await;
    assert_eq!(joined["room"]["member_count"], 4);

    let (status, op) = app
        .call("DELETE", &format!("/v1/rooms/{id}/members/bob"), None)
        .await;
    assert_eq!((status, op["status"].as_str()), (200, Some("done")), "{op}");
    let left = event(&receiver, "room.leave", |d| d["removees"][0]["id"] == "bob").await;
    assert_eq!(left["remover"]["id"], "bot-user");
    let (_, members) = app.get(&format!("/v1/rooms/{id}/members")).await;
    assert_eq!(ids(&members["members"]), ["alice", "bot-user", "carol"]);

    let (status, op) = app
        .call(
            "PATCH",
            &format!("/v1/rooms/{id}"),
            Some(json!({"topic": "Team Two", "announce": "Standup at 10"})),
        )
        .await;
    assert_eq!((status, op["status"].as_str()), (200, Some("done")), "{op}");
    let renamed = event(&receiver, "room.topic", |d| d["room"]["id"] == id.as_str()).await;
    assert_eq!(renamed["old_topic"], "Team");
    assert_eq!(renamed["new_topic"], "Team Two");
    let (_, found) = app.get("/v1/rooms?q=team%20two").await;
    assert_eq!(ids(&found["rooms"]), std::slice::from_ref(&id));

    let (status, op) = app
        .call("POST", &format!("/v1/rooms/{id}/quit"), None)
        .await;
    assert_eq!((status, op["status"].as_str()), (200, Some("done")), "{op}");
    event(&receiver, "room.leave", |d| {
        d["removees"][0]["id"] == "bot-user"
    })
    .await;
    let (status, _) = app.get(&format!("/v1/rooms/{id}")).await;
    assert_eq!(status, 404, "the bot left the room");

    // The operation is kept, and told by its id.
    let op_id = op["id"].as_str().unwrap();
    let (status, again) = app.get(&format!("/v1/operations/{op_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(again["status"], "done");
}

#[tokio::test]
async fn bad_room_operations_are_refused_with_what_to_fix() {
    let app = spawn_app("").await;
    let cases = [
        (
            "POST",
            "/v1/rooms",
            Some(json!({"topic": "T", "members": ["alice"]})),
            422,
            "at least 2",
        ),
        (
            "POST",
            "/v1/rooms",
            Some(json!({"topic": "T", "members": ["alice", "alice"]})),
            422,
            "twice",
        ),
        (
            "POST",
            "/v1/rooms",
            Some(json!({"topic": " ", "members": ["alice", "bob"]})),
            422,
            "topic",
        ),
        (
            "POST",
            "/v1/rooms",
            Some(json!({"topic": "T", "members": ["alice", "nobody"]})),
            404,
            "nobody",
        ),
        (
            "POST",
            "/v1/rooms/nope@chatroom/members",
            Some(json!({"contacts": ["alice"]})),
            404,
            "nope@chatroom",
        ),
        (
            "POST",
            "/v1/rooms/room1@chatroom/members",
            Some(json!({"contacts": []})),
            422,
            "contacts",
        ),
        (
            "DELETE",
            "/v1/rooms/room1@chatroom/members/dave",
            None,
            404,
            "not a member",
        ),
        (
            "PATCH",
            "/v1/rooms/room1@chatroom",
            Some(json!({})),
            422,
            "topic",
        ),
        (
            "PATCH",
            "/v1/rooms/room1@chatroom",
            Some(json!({"topic": "a\nb"})),
            422,
            "one line",
        ),
        (
            "POST",
            "/v1/rooms/nope@chatroom/quit",
            None,
            404,
            "nope@chatroom",
        ),
        (
            "POST",
            "/v1/friendships/unknown/accept",
            None,
            404,
            "friend request",
        ),
        (
            "POST",
            "/v1/room-invitations/unknown/accept",
            None,
            404,
            "invitation",
        ),
        (
            "POST",
            "/v1/friendships",
            Some(json!({"wechat_id": "x", "phone": "1"})),
            422,
            "exactly one",
        ),
        (
            "POST",
            "/v1/friendships",
            Some(json!({"phone": "call me"})),
            422,
            "phone",
        ),
        (
            "PATCH",
            "/v1/contacts/nobody",
            Some(json!({"alias": "N"})),
            404,
            "nobody",
        ),
        (
            "DELETE",
            "/v1/messages/out_nothing",
            None,
            404,
            "out_nothing",
        ),
        ("GET", "/v1/operations/op_nothing", None, 404, "op_nothing"),
    ];
    for (method, path, body, want, says) in cases {
        let (status, answer) = app.call(method, path, body.clone()).await;
        assert_eq!(status, want, "{method} {path} {body:?}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{method} {path}: {message}");
    }
    let (_, rooms) = app.get("/v1/rooms").await;
    assert_eq!(ids(&rooms["rooms"]), ["room1@chatroom"], "nothing was made");
}

#[tokio::test]
async fn a_friend_request_is_accepted_and_one_is_made() {
    let (app, receiver) = with_receiver().await;
    let (status, raised) = app
        .post(
            "/v1/mock/friendships",
            json!({"from": {"id": "dave", "name": "Dave"}, "hello": "hi, I'm Dave"}),
        )
        .await;
    assert_eq!(status, 201, "{raised}");
    let id = raised["id"].as_str().unwrap().to_string();
    let request = event(&receiver, "friendship", |d| d["kind"] == "receive").await;
    assert_eq!(request["id"], id.as_str());
    assert_eq!(request["hello"], "hi, I'm Dave");
    assert_eq!(request["contact"]["id"], "dave");
    assert_eq!(
        app.get("/v1/contacts/dave").await.0,
        404,
        "not a contact yet"
    );

    let (status, op) = app
        .post(&format!("/v1/friendships/{id}/accept"), json!({}))
        .await;
    assert_eq!((status, op["status"].as_str()), (200, Some("done")), "{op}");
    let confirmed = event(&receiver, "friendship", |d| d["kind"] == "confirm").await;
    assert_eq!(confirmed["contact"]["id"], "dave");
    let (status, dave) = app.get("/v1/contacts/dave").await;
    assert_eq!(status, 200);
    assert_eq!(dave["friend"], true);
    let (status, _) = app
        .post(&format!("/v1/friendships/{id}/accept"), json!({}))
        .await;
    assert_eq!(status, 404, "a request is accepted once");

    let (status, op) = app
        .post(
            "/v1/friendships",
            json!({"wechat_id": "erin_wx", "hello": "from the bot"}),
        )
        .await;
    assert_eq!((status, op["status"].as_str()), (200, Some("done")), "{op}");
    let (_, made) = app.get("/v1/mock/friendships").await;
    assert_eq!(
        made["requests"],
        json!([{"wechat_id": "erin_wx", "hello": "from the bot"}])
    );
}

#[tokio::test]
async fn a_room_invitation_is_accepted_into_the_directory() {
    let (app, receiver) = with_receiver().await;
    let (status, raised) = app
        .post(
            "/v1/mock/room-invitations",
            json!({"from": "alice", "room": {"id": "club@chatroom", "topic": "Club"}}),
        )
        .await;
    assert_eq!(status, 201, "{raised}");
    let id = raised["id"].as_str().unwrap().to_string();
    let invite = event(&receiver, "room.invite", |_| true).await;
    assert_eq!(invite["id"], id.as_str());
    assert_eq!(invite["topic"], "Club");
    assert_eq!(invite["inviter"]["id"], "alice");

    let (status, op) = app
        .post(&format!("/v1/room-invitations/{id}/accept"), json!({}))
        .await;
    assert_eq!(status, 200, "{op}");
    assert_eq!(op["result"], "club@chatroom");
    let (status, room) = app.get("/v1/rooms/club@chatroom").await;
    assert_eq!(status, 200, "{room}");
    assert_eq!(room["topic"], "Club");
    let joined = event(&receiver, "room.join", |d| {
        d["room"]["id"] == "club@chatroom"
    })
    .await;
    assert_eq!(joined["invitees"][0]["id"], "bot-user");

    // The bot can talk there now.
    let (status, sent) = app
        .post(
            "/v1/messages?wait=5s",
            json!({"to": {"room": "club@chatroom"}, "text": "hello club"}),
        )
        .await;
    assert_eq!(
        (status, sent["status"].as_str()),
        (200, Some("sent")),
        "{sent}"
    );
}

#[tokio::test]
async fn an_alias_is_set_used_and_cleared() {
    let app = spawn_app("").await;
    let (status, op) = app
        .call("PATCH", "/v1/contacts/alice", Some(json!({"alias": "Al"})))
        .await;
    assert_eq!((status, op["status"].as_str()), (200, Some("done")), "{op}");
    assert_eq!(app.get("/v1/contacts/alice").await.1["alias"], "Al");
    let (status, sent) = app
        .post(
            "/v1/messages?wait=5s",
            json!({"to": {"contact_name": "Al"}, "text": "by alias"}),
        )
        .await;
    assert_eq!(
        (status, sent["status"].as_str()),
        (200, Some("sent")),
        "{sent}"
    );
    let (status, _) = app
        .call("PATCH", "/v1/contacts/alice", Some(json!({"alias": null})))
        .await;
    assert_eq!(status, 200);
    assert_eq!(app.get("/v1/contacts/alice").await.1["alias"], Value::Null);
}

#[tokio::test]
async fn a_sent_message_is_recalled_once() {
    let app = spawn_app("[send]\nmin_interval = \"1h\"\nburst = 1\n").await;
    let (status, sent) = app
        .post(
            "/v1/messages?wait=5s",
            json!({"to": {"contact": "alice"}, "text": "oops"}),
        )
        .await;
    assert_eq!(
        (status, sent["status"].as_str()),
        (200, Some("sent")),
        "{sent}"
    );
    let out = sent["id"].as_str().unwrap();
    let (status, op) = app
        .call("DELETE", &format!("/v1/messages/{out}"), None)
        .await;
    assert_eq!((status, op["status"].as_str()), (200, Some("done")), "{op}");
    let mocked = app.sent().await;
    assert_eq!(mocked[0]["recalled"], true);
    let (_, again) = app
        .call("DELETE", &format!("/v1/messages/{out}"), None)
        .await;
    assert_eq!(again["id"], op["id"], "DELETE twice is one recall");

    // The next message to alice waits for the pacer: nothing to recall yet.
    let (status, queued) = app
        .post(
            "/v1/messages",
            json!({"to": {"contact": "alice"}, "text": "later"}),
        )
        .await;
    assert_eq!(status, 202);
    let (status, refused) = app
        .call(
            "DELETE",
            &format!("/v1/messages/{}", queued["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "not_sent");
}

#[tokio::test]
async fn images_are_sent_as_images_and_bad_ones_refused() {
    let app = spawn_app("").await;
    let (status, sent) = app
        .post(
            "/v1/messages?wait=5s",
            json!({"to": {"contact": "bob"}, "image": {"base64": "iVBORw0KGgo=", "name": "dot.png"}}),
        )
        .await;
    assert_eq!(
        (status, sent["status"].as_str()),
        (200, Some("sent")),
        "{sent}"
    );
    let mocked = app.sent().await;
    assert_eq!(mocked[0]["image"]["name"], "dot.png");
    assert!(mocked[0].get("file").is_none(), "an image, not a file");
    let (status, bad) = app
        .post(
            "/v1/messages",
            json!({"to": {"contact": "bob"}, "image": {"base64": "not base64!", "name": "x.png"}}),
        )
        .await;
    assert_eq!(status, 422);
    assert!(
        bad["error"]["message"]
            .as_str()
            .unwrap()
            .contains("image.base64"),
        "{bad}"
    );
}

#[tokio::test]
async fn capabilities_list_every_operation() {
    let app = spawn_app("").await;
    let (status, caps) = app.get("/v1/capabilities").await;
    assert_eq!(status, 200);
    assert_eq!(caps["puppet"], "mock");
    assert_eq!(caps["account"], "default");
    let ops = caps["operations"].as_object().unwrap();
    for op in waas::action::OPERATIONS {
        assert_eq!(ops[*op], true, "{op}");
    }
}

#[tokio::test]
async fn an_operation_queued_offline_survives_a_restart_and_runs_after_login() {
    let config = "[puppet.mock]\nauto_login = false\n";
    let app = spawn_app_unready(config).await;
    let (status, op) = app
        .post(
            "/v1/rooms?wait=200ms",
            json!({"topic": "Later", "members": ["alice", "carol"]}),
        )
        .await;
    assert_eq!(status, 202, "{op}");
    assert_eq!(op["status"], "queued");
    let op_id = op["id"].as_str().unwrap().to_string();
    let dir = app.stop().await;

    let app = common::spawn_app_unready_in(Arc::clone(&dir), config).await;
    let (_, still) = app.get(&format!("/v1/operations/{op_id}")).await;
    assert_eq!(still["status"], "queued", "{still}");
    let (status, _) = app.post("/v1/mock/scan", json!({})).await;
    assert_eq!(status, 200);
    let (_, done) = app.get(&format!("/v1/operations/{op_id}?wait=5s")).await;
    assert_eq!(done["status"], "done", "{done}");
    let room_id = done["result"].as_str().unwrap();
    let (status, room) = app.get(&format!("/v1/rooms/{room_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(room["topic"], "Later");
}
