//! Operations, image sends and media links through the real `wechaty-puppet-service`
//! server (npm), whose `wechaty-puppet-mock` stands in for WeChat: each operation must
//! reach the puppet as the right gRPC call with the right arguments, and the puppet's
//! own answers (a refused recall, nobody found) must come back as clear outcomes.

mod common;

use common::puppet_fixture::{PuppetFixture, TOKEN};
use common::{TestReceiver, spawn_app, webhook};
use serde_json::{Value, json};

/// The arguments of the operations of `method` that reached the puppet.
async fn ops(fixture: &PuppetFixture, method: &str) -> Vec<Value> {
    fixture
        .ops()
        .await
        .into_iter()
        .filter(|o| o["method"] == method)
        .map(|o| o["args"].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_reach_the_puppet_service_as_their_rpcs() {
    let fixture = PuppetFixture::start(TOKEN).await;
    let app = spawn_app(&fixture.puppet_config(TOKEN)).await;

    let (status, room) = app
        .call(
            "POST",
            "/v1/rooms",
            Some(json!({"topic": "Team", "members": ["alice", "bob"]})),
        )
        .await;
    assert_eq!(status, 201, "{room}");
    // wechaty-puppet-mock answers every RoomCreate with this id.
    assert_eq!(room["id"], "mock_room_id");
    assert_eq!(
        ops(&fixture, "roomCreate").await,
        [json!([["alice", "bob"], "Team"])]
    );

    let room1 = "room1@chatroom";
    let steps = [
        (
            "POST",
            format!("/v1/rooms/{room1}/members"),
            Some(json!({"contacts": ["dave"]})),
            "roomAdd",
            json!([room1, "dave", false]),
        ),
        (
            "DELETE",
            format!("/v1/rooms/{room1}/members/carol"),
            None,
            "roomDel",
            json!([room1, "carol"]),
        ),
        (
            "PATCH",
            format!("/v1/rooms/{room1}"),
            Some(json!({"topic": "Renamed"})),
            "roomTopic",
            json!([room1, "Renamed"]),
        ),
        (
            "PATCH",
            format!("/v1/rooms/{room1}"),
            Some(json!({"announce": "Hello all"})),
            "roomAnnounce",
            json!([room1, "Hello all"]),
        ),
        (
            "POST",
            format!("/v1/rooms/{room1}/quit"),
            None,
            "roomQuit",
            json!([room1]),
        ),
        (
            "PATCH",
            "/v1/contacts/alice".to_string(),
            Some(json!({"alias": "Al"})),
            "contactAlias",
            json!(["alice", "Al"]),
        ),
        (
            "POST",
            "/v1/friendships/fr-1/accept".to_string(),
            None,
            "friendshipAccept",
            json!(["fr-1"]),
        ),
        (
            "POST",
            "/v1/room-invitations/inv-1/accept".to_string(),
            None,
            "roomInvitationAccept",
            json!(["inv-1"]),
        ),
        (
            "POST",
            "/v1/friendships".to_string(),
            Some(json!({"contact": "dave", "hello": "hi"})),
            "friendshipAdd",
            json!(["dave", {"hello": "hi"}]),
        ),
    ];
    for (method, path, body, rpc, args) in steps {
        let (status, op) = app.call(method, &path, body).await;
        assert_eq!(
            (status, op["status"].as_str()),
            (200, Some("done")),
            "{method} {path}: {op}"
        );
        let seen = ops(&fixture, rpc).await;
        assert!(seen.contains(&args), "{rpc}: {seen:?}, wanted {args}");
    }

    // The puppet finds nobody with this phone number: the operation fails, and says why.
    let (status, op) = app
        .call(
            "POST",
            "/v1/friendships",
            Some(json!({"phone": "+1 555 0100", "hello": "hi"})),
        )
        .await;
    assert_eq!(
        (status, op["status"].as_str()),
        (200, Some("failed")),
        "{op}"
    );
    assert!(
        op["error"].as_str().unwrap().contains("found nobody"),
        "{op}"
    );

    // This wechaty-puppet-mock lacks the search by WeChat id (the server answers
    // "puppet.friendshipSearchHandle is not a function"): 501 from then on, and the
    // capabilities say so.
    let (status, op) = app
        .call(
            "POST",
            "/v1/friendships",
            Some(json!({"wechat_id": "someone_wx"})),
        )
        .await;
    assert_eq!(
        (status, op["status"].as_str()),
        (200, Some("failed")),
        "{op}"
    );
    assert!(
        op["error"].as_str().unwrap().contains("does not implement"),
        "{op}"
    );
    let (_, caps) = app.get("/v1/capabilities").await;
    assert_eq!(caps["operations"]["friendship.add"], false, "{caps}");
    let (status, refused) = app
        .call("POST", "/v1/friendships", Some(json!({"contact": "dave"})))
        .await;
    assert_eq!(status, 501, "{refused}");
    assert_eq!(refused["error"]["code"], "not_supported");

    // wechaty-puppet-mock refuses every recall: the outcome says so.
    let (status, sent) = app
        .call(
            "POST",
            "/v1/messages?wait=5s",
            Some(json!({"to": {"contact": "bob"}, "text": "to recall"})),
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
    assert_eq!(
        (status, op["status"].as_str()),
        (200, Some("failed")),
        "{op}"
    );
    assert!(
        op["error"].as_str().unwrap().contains("could not recall"),
        "{op}"
    );
    assert_eq!(
        ops(&fixture, "messageRecall").await,
        [json!([sent["message_id"]])]
    );

    let (_, caps) = app.get("/v1/capabilities").await;
    assert_eq!(caps["puppet"], "service");
    assert_eq!(caps["operations"]["room.create"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_is_sent_as_an_image_and_inbound_media_is_linked() {
    let fixture = PuppetFixture::start(TOKEN).await;
    let receiver = TestReceiver::start().await;
    let app = spawn_app(&format!(
        "{}\n{}",
        fixture.puppet_config(TOKEN),
        webhook("all", &receiver, "")
    ))
    .await;

    let png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";
    let (status, sent) = app
        .post(
            "/v1/messages?wait=5s",
            json!({"to": {"contact": "bob"}, "image": {"base64": png, "name": "dot.png"}}),
        )
        .await;
    assert_eq!(
        (status, sent["status"].as_str()),
        (200, Some("sent")),
        "{sent}"
    );
    let at_puppet = fixture.sent().await;
    let image = at_puppet
        .iter()
        .find(|s| s["method"] == "messageSendFile")
        .expect("the image reached the puppet");
    assert_eq!(image["conversationId"], "bob");
    assert_eq!(image["mediaType"], "image/png", "{image}");
    assert_eq!(image["file"]["name"], "dot.png");

    // A file from a contact: its link fetches its bytes, with no credential.
    let id = fixture
        .post(
            "/say-file",
            json!({"from": "alice", "name": "notes.bin", "size": 100_000}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let find = |all: &[common::Received]| {
        all.iter()
            .map(|r| r.json())
            .find(|e| e["type"] == "message" && e["data"]["id"] == id.as_str())
    };
    receiver
        .wait_for(10, "the file message", |r| find(r).is_some())
        .await;
    let message = find(&receiver.received()).unwrap()["data"].clone();
    assert_eq!(message["kind"], "file", "{message}");
    assert_eq!(message["media"]["name"], "notes.bin");
    let path = message["media"]["url"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://127.0.0.1:3010")
        .to_string();
    let body = reqwest::get(app.url(&path)).await.unwrap();
    assert_eq!(body.status(), 200);
    let got = body.bytes().await.unwrap();
    let want: Vec<u8> = (0..100_000u32).map(|i| (i * 31 + 7) as u8).collect();
    assert!(got.as_ref() == want.as_slice(), "{} bytes", got.len());

    // An image's link serves what the puppet's MessageImageStream gives (the mock
    // answers a QR code PNG for every image).
    let id = fixture
        .post(
            "/say-file",
            json!({"from": "alice", "name": "photo.jpg", "size": 10, "kind": "image"}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    receiver
        .wait_for(10, "the image message", |r| {
            r.iter().any(|x| x.json()["data"]["id"] == id.as_str())
        })
        .await;
    let message = receiver
        .received()
        .iter()
        .map(|r| r.json())
        .find(|e| e["data"]["id"] == id.as_str())
        .unwrap()["data"]
        .clone();
    assert_eq!(message["kind"], "image", "{message}");
    let path = message["media"]["url"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://127.0.0.1:3010")
        .to_string();
    let image = reqwest::get(app.url(&format!("{path}?size=thumbnail")))
        .await
        .unwrap();
    assert_eq!(image.status(), 200);
    assert_eq!(image.headers()["content-type"], "image/png");
    assert!(image.bytes().await.unwrap().starts_with(b"\x89PNG"));
}
