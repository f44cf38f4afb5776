//! Webhook signatures verify with the official `standardwebhooks` Python package
//! (installed by `.ci/run`), including during a secret rotation.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{SECRET, TestReceiver, spawn_app};
use serde_json::json;

const NEW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn verify_with_python(cases: &serde_json::Value) -> Result<String, String> {
    let mut child = Command::new("python3")
        .arg("tests/interop/verify_standardwebhooks.py")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs (install it and `pip install standardwebhooks`)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(cases.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(stderr)
    }
}

#[tokio::test]
async fn deliveries_verify_with_the_official_library_for_every_secret() {
    let r = TestReceiver::start().await;
    let app = spawn_app(&format!(
        "[[webhooks]]\nname = \"rotating\"\nurl = \"{}\"\nsecret = [\"{SECRET}\", \"{NEW_SECRET}\"]\nevents = [\"message\"]\n",
        r.url
    ))
    .await;
    app.inject("alice", None, "héllo, 世界 \"quoted\"").await;
    app.inject("bob", Some("Mock Room"), "second").await;
    r.wait_for(10, "2 deliveries", |r| r.len() == 2).await;

    let mut cases = Vec::new();
    for got in r.received() {
        assert_eq!(
            got.header("webhook-signature").split(' ').count(),
            2,
            "one signature per secret"
        );
        for secret in [SECRET, NEW_SECRET] {
            cases.push(json!({
                "secret": secret,
                "headers": {
                    "webhook-id": got.header("webhook-id"),
                    "webhook-timestamp": got.header("webhook-timestamp"),
                    "webhook-signature": got.header("webhook-signature"),
                },
                "body": String::from_utf8(got.body.to_vec()).unwrap(),
            }));
        }
    }
    let ok =
        verify_with_python(&json!(cases)).expect("standardwebhooks verifies waas's signatures");
    assert!(ok.contains("verified 4 deliveries"), "{ok}");

    // The same library refuses a tampered body, so the check above can fail.
    let mut tampered = cases[0].clone();
    tampered["body"] = json!(
        tampered["body"]
            .as_str()
            .unwrap()
            .replace("second", "sec0nd")
            .replace("héllo", "hello")
    );
    let err = verify_with_python(&json!([tampered])).unwrap_err();
    assert!(
        err.contains("WebhookVerificationError") || err.contains("No matching signature"),
        "{err}"
    );
}
