//! Files uploaded with `multipart/form-data` to `POST /v1/messages`: stored before the
//! answer, streamed to the puppet (the mock, and the real puppet-service server over
//! `MessageSendFileStream`), removed once sent; too large 413, bad parts 422.

mod common;

use std::sync::Arc;

use common::puppet_fixture::{PuppetFixture, TOKEN};
use common::{TestApp, spawn_app, spawn_app_unready, spawn_app_unready_in};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const BOUNDARY: &str = "waas-test-boundary-7d1e";

/// A multipart body: text parts, then one file part.
fn multipart(texts: &[(&str, &str)], file: Option<(&str, &str, &[u8])>) -> Vec<u8> {
    typed_multipart(texts, file, "application/octet-stream")
}

/// The same, the file part sent with this content type.
fn typed_multipart(
    texts: &[(&str, &str)],
    file: Option<(&str, &str, &[u8])>,
    content_type: &str,
) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in texts {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\ncontent-disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    if let Some((part, filename, bytes)) = file {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\ncontent-disposition: form-data; name=\"{part}\"; filename=\"{filename}\"\r\ncontent-type: {content_type}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

async fn upload(app: &TestApp, path: &str, body: Vec<u8>, key: Option<&str>) -> (u16, Value) {
    let mut rb = app
        .client
        .post(app.url(path))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(body);
    if let Some(t) = &app.token {
        rb = rb.bearer_auth(t);
    }
    if let Some(key) = key {
        rb = rb.header("idempotency-key", key);
    }
    let resp = rb.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn bytes(n: usize) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(131) >> 3) as u8)
        .collect()
}

fn sha(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn uploads_left(app: &TestApp) -> Vec<String> {
    match std::fs::read_dir(app.dir.path().join("uploads")) {
        Ok(dir) => dir
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test]
async fn an_uploaded_file_reaches_the_puppet_byte_for_byte_and_is_then_removed() {
    let app = spawn_app("").await;
    let data = bytes(2 * 1024 * 1024 + 3);
    let body = multipart(
        &[("to", r#"{"contact": "bob"}"#)],
        Some(("file", "backup.tar", &data)),
    );
    let (status, sent) = upload(&app, "/v1/messages?wait=5s", body.clone(), Some("up-1")).await;
    assert_eq!(
        (status, sent["status"].as_str()),
        (200, Some("sent")),
        "{sent}"
    );
    let mocked = app.sent().await;
    assert_eq!(mocked.len(), 1);
    assert_eq!(mocked[0]["to"], json!({"contact": "bob"}));
    let seen = &mocked[0]["upload"];
    assert_eq!(seen["name"], "backup.tar");
    assert_eq!(seen["image"], false);
    assert_eq!(seen["size"], data.len());
    assert_eq!(seen["sha256"], sha(&data));
    assert!(uploads_left(&app).is_empty(), "{:?}", uploads_left(&app));

    // The same upload under the same key is the same send: nothing new, nothing left.
    let (status, again) = upload(&app, "/v1/messages?wait=5s", body, Some("up-1")).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["id"], sent["id"]);
    assert_eq!(app.sent().await.len(), 1);
    assert!(uploads_left(&app).is_empty());

    // A part typed as an image is sent as a picture, named to match.
    let png = [0x89, b'P', b'N', b'G', 1, 2, 3];
    let body = typed_multipart(
        &[("to", r#"{"room": "room1@chatroom"}"#)],
        Some(("file", "chart", &png)),
        "image/png",
    );
    let (status, sent) = upload(&app, "/v1/messages?wait=5s", body, None).await;
    assert_eq!(
        (status, sent["status"].as_str()),
        (200, Some("sent")),
        "{sent}"
    );
    let seen = &app.sent().await[1]["upload"];
    assert_eq!(
        (seen["name"].as_str(), seen["image"].as_bool()),
        (Some("chart.png"), Some(true))
    );
}

#[tokio::test]
async fn bad_uploads_are_refused_and_leave_nothing_behind() {
    let app = spawn_app("[media]\nmax_upload = \"1MiB\"\n").await;
    let big = bytes(1024 * 1024 + 10);
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (
            multipart(
                &[("to", r#"{"contact": "bob"}"#)],
                Some(("file", "big.bin", &big)),
            ),
            413,
            "media.max_upload",
        ),
        (multipart(&[], Some(("file", "a.txt", b"x"))), 422, "`to`"),
        (
            multipart(&[("to", r#"{"contact": "bob"}"#)], None),
            422,
            "a `file` part",
        ),
        (
            multipart(&[("to", "bob")], Some(("file", "a.txt", b"x"))),
            422,
            "recipient as JSON",
        ),
        (
            multipart(&[("to", r#"{"contact": "bob"}"#), ("colour", "red")], None),
            422,
            "colour",
        ),
        (
            multipart(
                &[("to", r#"{"contact": "bob"}"#)],
                Some(("file", "../x", b"x")),
            ),
            422,
            "file.name",
        ),
        (
            multipart(
                &[("to", r#"{"contact": "nobody"}"#)],
                Some(("file", "a.txt", b"x")),
            ),
            404,
            "recipient",
        ),
    ];
    for (body, want, says) in cases {
        let (status, answer) = upload(&app, "/v1/messages", body, None).await;
        assert_eq!(status, want, "{answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{says}: {message}");
    }
    assert!(uploads_left(&app).is_empty(), "{:?}", uploads_left(&app));
    assert!(app.sent().await.is_empty());
    // The JSON limit stays server.body_limit (1 MiB by default) on the same route.
    let long = "x".repeat(1024 * 1024 + 1);
    let (status, _) = app
        .post(
            "/v1/messages",
            json!({"to": {"contact": "bob"}, "text": long}),
        )
        .await;
    assert_eq!(status, 413);
}

#[tokio::test]
async fn an_upload_accepted_offline_is_sent_after_a_restart() {
    let config = "[puppet.mock]\nauto_login = false\n";
    let app = spawn_app_unready(config).await;
    let data = bytes(300_000);
    let body = multipart(
        &[("to", r#"{"contact": "carol"}"#)],
        Some(("file", "later.pdf", &data)),
    );
    let (status, queued) = upload(&app, "/v1/messages", body, None).await;
    assert_eq!(status, 202, "{queued}");
    assert_eq!(uploads_left(&app).len(), 1, "stored before the answer");
    let dir = app.stop().await;

    let app = spawn_app_unready_in(Arc::clone(&dir), config).await;
    app.post("/v1/mock/scan", json!({})).await;
    let id = queued["id"].as_str().unwrap();
    let (_, done) = app.get(&format!("/v1/messages/{id}?wait=5s")).await;
    assert_eq!(done["status"], "sent", "{done}");
    assert_eq!(app.sent().await[0]["upload"]["sha256"], sha(&data));
    assert!(uploads_left(&app).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_streams_to_the_puppet_service() {
    let fixture = PuppetFixture::start(TOKEN).await;
    let app = spawn_app(&fixture.puppet_config(TOKEN)).await;
    let data = bytes(1_500_000);
    let body = multipart(
        &[("to", r#"{"contact": "alice"}"#)],
        Some(("file", "slides.pdf", &data)),
    );
    let (status, sent) = upload(&app, "/v1/messages?wait=10s", body, None).await;
    assert_eq!(
        (status, sent["status"].as_str()),
        (200, Some("sent")),
        "{sent}"
    );
    let at_puppet = fixture.sent().await;
    let file = at_puppet
        .iter()
        .find(|s| s["method"] == "messageSendFile")
        .expect("the upload reached the puppet");
    assert_eq!(file["conversationId"], "alice");
    assert_eq!(file["file"]["name"], "slides.pdf");
    assert_eq!(file["file"]["size"], data.len());
    assert_eq!(file["sha256"], sha(&data));
    assert_eq!(file["mediaType"], "application/pdf");
}
