//! Media in, against the mock puppet: message events carry a signed link that needs no
//! credential, serves the exact bytes with their headers, survives the puppet
//! forgetting the file (the disk cache), and refuses changed and expired links.

mod common;

use base64::Engine;
use common::{TestReceiver, spawn_app, webhook};
use serde_json::{Value, json};

const TOKEN: &str = "media-test-token-0123456789";

fn config(receiver: &TestReceiver) -> String {
    format!(
        "[server]\nbody_limit = \"8MiB\"\n[auth]\ntokens = [\"{TOKEN}\"]\n{}",
        webhook("all", receiver, "")
    )
}

/// Deterministic bytes that are not text.
fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(seed as u32) as u8)
        .collect()
}

async fn inject_media(app: &common::TestApp, kind: &str, name: &str, data: &[u8]) -> Value {
    let (status, body) = app
        .post(
            "/v1/mock/messages",
            json!({
                "from": "alice",
                "media": {"kind": kind, "name": name,
                          "base64": base64::engine::general_purpose::STANDARD.encode(data)},
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body
}

async fn media_of(receiver: &TestReceiver, message_id: &str) -> Value {
    let find = |all: &[common::Received]| {
        all.iter()
            .map(|r| r.json())
            .find(|e| e["type"] == "message" && e["data"]["id"] == message_id)
    };
    receiver
        .wait_for(5, message_id, |all| find(all).is_some())
        .await;
    find(&receiver.received()).unwrap()["data"].clone()
}

#[tokio::test]
async fn a_file_link_serves_the_exact_bytes_to_anyone_who_has_it() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app(&config(&receiver)).await;
    let data = bytes(3 * 1024 * 1024 + 17, 7);
    let injected = inject_media(&app, "file", "report.pdf", &data).await;
    let message = media_of(&receiver, injected["message_id"].as_str().unwrap()).await;
    assert_eq!(message["kind"], "file");
    assert_eq!(message["text"], "report.pdf");
    let media = &message["media"];
    assert_eq!(media["name"], "report.pdf");
    assert_eq!(media["mime"], "application/pdf");
    assert_eq!(media["size"], data.len());
    let url = media["url"].as_str().unwrap();
    assert!(url.starts_with("http://127.0.0.1:3010/v1/media/"), "{url}");

    // No token, no signature: the link is the credential.
    let link = app.url(url.trim_start_matches("http://127.0.0.1:3010"));
    let response = reqwest::get(&link).await.unwrap();
    assert_eq!(response.status(), 200);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    assert_eq!(header("content-type").as_deref(), Some("application/pdf"));
    assert_eq!(header("content-length"), Some(data.len().to_string()));
    assert_eq!(
        header("content-disposition").as_deref(),
        Some("attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf")
    );
    let got = response.bytes().await.unwrap();
    assert!(got.as_ref() == data.as_slice(), "the exact bytes");

    // The mock forgets old files (as WeChat does); the cache still has this one.
    for i in 0..70 {
        inject_media(&app, "file", &format!("f{i}.txt"), b"small").await;
    }
    let again = reqwest::get(&link).await.unwrap();
    assert_eq!(again.status(), 200, "served from the disk cache");
    assert!(again.bytes().await.unwrap().as_ref() == data.as_slice());

    // With the cache emptied too, the puppet's answer is a clear 404.
    let cache = app.dir.path().join("media-cache");
    assert!(cache.is_dir(), "the cache sits next to the database");
    std::fs::remove_dir_all(&cache).unwrap();
    let gone = reqwest::get(&link).await.unwrap();
    assert_eq!(gone.status(), 404);
    let body: Value = gone.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("newest"),
        "{body}"
    );
}

#[tokio::test]
async fn changed_and_expired_links_are_refused() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app(&config(&receiver)).await;
    let injected = inject_media(&app, "image", "cat.png", &bytes(1000, 1)).await;
    let message_id = injected["message_id"].as_str().unwrap().to_string();
    let message = media_of(&receiver, &message_id).await;
    assert_eq!(message["kind"], "image");
    assert_eq!(message["media"]["mime"], "image/png");
    let url = message["media"]["url"].as_str().unwrap();
    let token = url.rsplit('/').next().unwrap().to_string();

    let fetch = |token: String| {
        let url = app.url(&format!("/v1/media/{token}"));
        async move {
            let r = reqwest::get(url).await.unwrap();
            let status = r.status().as_u16();
            let ctype = r
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string());
            (status, ctype, r.bytes().await.unwrap())
        }
    };
    let (status, ctype, _) = fetch(token.clone()).await;
    assert_eq!((status, ctype.as_deref()), (200, Some("image/png")));
    let (status, _, _) = fetch(format!("{token}?size=thumbnail")).await;
    assert_eq!(status, 200, "images come in sizes");

    // One character changed anywhere: refused.
    let (payload, signature) = token.split_once('.').unwrap();
    let claims = String::from_utf8(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    let other = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(claims.replace(&message_id, "mock-someone-else"));
    for bad in [
        format!("{other}.{signature}"),
        format!("{payload}.{}", signature.replace(&signature[..2], "AA")),
        "not-a-token".to_string(),
    ] {
        let (status, _, body) = fetch(bad.clone()).await;
        assert_eq!(status, 403, "{bad}");
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "invalid_link", "{body}");
    }

    // A link made two periods ago, with the app's own key: expired.
    let links = &app.embedded.app.links;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let old = links.token_at("default", &message_id, true, "cat.png", now - 2 * 86_400);
    let (status, _, body) = fetch(old).await;
    assert_eq!(status, 403);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "link_expired", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{body}"
    );

    // A file is not an image: no sizes.
    let file = inject_media(&app, "file", "a.txt", b"abc").await;
    let m = media_of(&receiver, file["message_id"].as_str().unwrap()).await;
    let token = m["media"]["url"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap();
    let (status, _, _) = fetch(format!("{token}?size=hd")).await;
    assert_eq!(status, 422);
}

#[tokio::test]
async fn bad_media_injections_say_what_to_fix() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app(&config(&receiver)).await;
    for (media, says) in [
        (
            json!({"kind": "sticker", "name": "a.gif", "base64": "AAAA"}),
            "media.kind",
        ),
        (
            json!({"kind": "file", "name": "../etc/passwd", "base64": "AAAA"}),
            "media.name",
        ),
        (
            json!({"kind": "file", "name": "a.bin", "base64": "!!"}),
            "media.base64",
        ),
    ] {
        let (status, body) = app
            .post(
                "/v1/mock/messages",
                json!({"from": "alice", "media": media}),
            )
            .await;
        assert_eq!(status, 422, "{body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(says),
            "{body}"
        );
    }
    let (status, body) = app
        .post(
            "/v1/messages",
            json!({"to": {"contact": "bob"}, "image": {"base64": "AAAA", "name": "notes.txt"}}),
        )
        .await;
    assert_eq!(status, 422);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("image.name"),
        "{body}"
    );
}
