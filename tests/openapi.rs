//! The OpenAPI description: served, checked in, and true to the router.

mod common;

use common::spawn_app;
use serde_json::Value;

const CHECKED_IN: &str = include_str!("../docs/openapi.json");

#[tokio::test]
async fn the_served_description_is_the_checked_in_one() {
    let app = spawn_app("[auth]\ntokens = [\"openapi-test-token-123\"]\n").await;
    // Served without auth, like /healthz.
    let response = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let served: Value = response.json().await.unwrap();
    let checked_in: Value = serde_json::from_str(CHECKED_IN).unwrap();
    assert!(
        served == checked_in,
        "docs/openapi.json is out of date: run `cargo run -- openapi > docs/openapi.json`"
    );
    // The CLI prints the same text byte for byte.
    assert_eq!(waas::api::openapi::spec_json(), CHECKED_IN);
    assert_eq!(served["info"]["version"], env!("CARGO_PKG_VERSION"));
    app.stop().await;
}

/// Every documented operation is routed: asking it gets its own answer (whatever the
/// status), never the router's "no such route" or "method not allowed".
#[tokio::test]
async fn every_documented_operation_is_routed() {
    let app = spawn_app("").await;
    let spec: Value = serde_json::from_str(CHECKED_IN).unwrap();
    let paths = spec["paths"].as_object().unwrap();
    assert!(paths.len() >= 20, "{} paths", paths.len());
    let mut checked = 0;
    for (path, item) in paths {
        let concrete = path
            .replace("{id}", "x")
            .replace("{name}", "nope")
            .replace("{contact}", "y");
        for method in item.as_object().unwrap().keys() {
            // The stream never ends by itself; it is covered by its own tests.
            if path.ends_with("/stream") {
                continue;
            }
            let request = match method.as_str() {
                "get" => app.client.get(app.url(&concrete)),
                "post" | "patch" | "delete" => app
                    .client
                    .request(method.to_uppercase().parse().unwrap(), app.url(&concrete))
                    .json(&serde_json::json!({})),
                other => panic!("unexpected method {other} for {path}"),
            };
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            assert_ne!(status, 405, "{method} {path}: {body}");
            assert_ne!(
                body["error"]["message"], "no such route",
                "{method} {path} is documented but not routed"
            );
            checked += 1;
        }
    }
    assert!(checked >= 20);
    app.stop().await;
}

/// The description names every response status a handler can give (spot checks of
/// what the contract promises).
#[test]
fn errors_and_auth_are_documented_on_every_operation() {
    let spec: Value = serde_json::from_str(CHECKED_IN).unwrap();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            for status in ["400", "401", "404", "413", "422", "500", "503"] {
                assert!(
                    responses.contains_key(status),
                    "{method} {path} lacks {status}"
                );
            }
            let secured = op.get("security").is_some();
            let open = path.starts_with("/v1/media/");
            assert_eq!(
                secured,
                path.starts_with("/v1/") && !open,
                "{method} {path}"
            );
        }
    }
}
