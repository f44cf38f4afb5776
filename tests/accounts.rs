//! Several WeChat accounts in one waas: side by side, isolated, each event naming its
//! account; scoped credentials; a v0.1 database and config keep working.

mod common;

use std::sync::Arc;

use common::puppet_fixture::{PuppetFixture, TOKEN};
use common::{SECRET, TestReceiver, spawn_app, spawn_app_in, spawn_app_unready, webhook};
use serde_json::{Value, json};

const GLOBAL: &str = "global-token-0123456789";
const SALES: &str = "sales-only-token-0123456789";

/// Two mock accounts with their own bots.
fn two_accounts() -> String {
    "[[accounts]]\nname = \"sales\"\n[accounts.puppet.mock]\nbot = { id = \"bot-user\", name = \"SalesBot\" }\n\n\
     [[accounts]]\nname = \"support\"\n[accounts.puppet.mock]\nbot = { id = \"bot-user\", name = \"SupportBot\" }\n"
        .to_string()
}

#[tokio::test]
async fn two_mock_accounts_side_by_side() {
    let all = TestReceiver::start().await;
    let sales_only = TestReceiver::start().await;
    let toml = format!(
        "{}{}{}",
        two_accounts(),
        webhook("all", &all, "events = [\"message\"]"),
        webhook(
            "sales-only",
            &sales_only,
            "events = [\"message\"]\naccounts = [\"sales\"]"
        )
    );
    let app = spawn_app(&toml).await;

    let (status, list) = app.get("/v1/accounts").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = list["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["sales", "support"]);
    assert_eq!(list["accounts"][0]["state"], "logged_in");
    assert_eq!(list["accounts"][1]["user"]["name"], "SupportBot");

    // Unscoped routes need a `default` account to pick when there are several.
    let (status, err) = app.get("/v1/session").await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["code"], "account_required");
    let (status, _) = app.get("/v1/accounts/nope/session").await;
    assert_eq!(status, 404);
    let (status, session) = app.get("/v1/accounts/support/session").await;
    assert_eq!(status, 200);
    assert_eq!(session["user"]["name"], "SupportBot");

    let (status, _) = app
        .post(
            "/v1/accounts/sales/mock/messages",
            json!({"from": "alice", "text": "to sales"}),
        )
        .await;
    assert_eq!(status, 201);
    let (status, _) = app
        .post(
            "/v1/accounts/support/mock/messages",
            json!({"from": "alice", "text": "to support"}),
        )
        .await;
    assert_eq!(status, 201);
    all.wait_for(10, "both messages", |r| r.len() == 2).await;
    let mut seen: Vec<(String, String)> = all
        .received()
        .iter()
        .map(|r| {
            let e = r.json();
            (
                e["account"].as_str().unwrap().to_string(),
                e["data"]["text"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("sales".to_string(), "to sales".to_string()),
            ("support".to_string(), "to support".to_string())
        ],
        "each event names its account"
    );
    sales_only
        .wait_for(10, "the sales message", |r| !r.is_empty())
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let only: Vec<Value> = sales_only.received().iter().map(|r| r.json()).collect();
    assert_eq!(only.len(), 1, "the accounts filter keeps support out");
    assert_eq!(only[0]["account"], "sales");
    assert_eq!(only[0]["bot"]["name"], "SalesBot");

    // Sends go through the account named in the path.
    let (status, sent) = app
        .post(
            "/v1/accounts/support/messages?wait=5s",
            json!({"to": {"contact": "bob"}, "text": "from support"}),
        )
        .await;
    assert_eq!(
        (status, sent["status"].as_str()),
        (200, Some("sent")),
        "{sent}"
    );
    let (_, support_sent) = app.get("/v1/accounts/support/mock/sent").await;
    let (_, sales_sent) = app.get("/v1/accounts/sales/mock/sent").await;
    assert_eq!(support_sent["messages"].as_array().unwrap().len(), 1);
    assert!(sales_sent["messages"].as_array().unwrap().is_empty());

    let (_, page) = app.get("/v1/events?account=support&types=message").await;
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["account"], "support");
    let (_, page) = app.get("/v1/accounts/sales/events?types=message").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    let (status, _) = app.get("/v1/events?account=nope").await;
    assert_eq!(status, 404);
    let ds = app.deliveries("webhook=all&account=sales").await;
    assert_eq!(ds.len(), 1);
    let (status, _) = app.get("/readyz?account=sales").await;
    assert_eq!(status, 200);
    let (status, _) = app.get("/readyz").await;
    assert_eq!(status, 200, "every account is logged in");
    let metrics = reqwest::get(app.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("waas_session_state{account=\"support\",state=\"logged_in\"} 1"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_scoped_token_sees_and_acts_on_its_accounts_only() {
    let hook = TestReceiver::start().await;
    let toml = format!(
        "[auth]\ntokens = [\"{GLOBAL}\", {{ value = \"{SALES}\", accounts = [\"sales\"] }}]\n{}{}{}",
        two_accounts(),
        webhook("everything", &hook, "events = [\"message\"]"),
        webhook(
            "sales-hook",
            &hook,
            "events = [\"message\"]\naccounts = [\"sales\"]"
        ),
    );
    let app = spawn_app(&toml).await;
    for account in ["sales", "support"] {
        let (status, _) = app
            .post_as(
                GLOBAL,
                &format!("/v1/accounts/{account}/mock/messages"),
                json!({"from": "alice", "text": format!("hello {account}")}),
            )
            .await;
        assert_eq!(status, 201);
    }
    let (_, support_send) = app
        .post_as(
            GLOBAL,
            "/v1/accounts/support/messages",
            json!({"to": {"contact": "bob"}, "text": "support business"}),
        )
        .await;

    // Its own account: fine.
    let (status, _) = app.get_as(SALES, "/v1/accounts/sales/contacts").await;
    assert_eq!(status, 200);
    let (status, _) = app
        .post_as(
            SALES,
            "/v1/accounts/sales/messages",
            json!({"to": {"contact": "bob"}, "text": "sales business"}),
        )
        .await;
    assert_eq!(status, 202);
    // Another account: 403, for reading and for acting.
    let (status, err) = app.get_as(SALES, "/v1/accounts/support/contacts").await;
    assert_eq!(status, 403, "{err}");
    assert_eq!(err["error"]["code"], "forbidden");
    let (status, _) = app
        .post_as(
            SALES,
            "/v1/accounts/support/messages",
            json!({"to": {"contact": "bob"}, "text": "not mine"}),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = app.get_as(SALES, "/v1/accounts/support/session").await;
    assert_eq!(status, 403);
    let (status, _) = app.get_as(SALES, "/v1/events?account=support").await;
    assert_eq!(status, 403);
    // Listings hold its own account's things only.
    let (_, page) = app.get_as(SALES, "/v1/events?types=message").await;
    let accounts: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["account"].as_str().unwrap())
        .collect();
    assert_eq!(accounts, ["sales"], "{page}");
    let (_, hooks) = app.get_as(SALES, "/v1/webhooks").await;
    let names: Vec<&str> = hooks["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["sales-hook"],
        "a webhook of every account is not its to see"
    );
    let (status, _) = app
        .post_as(SALES, "/v1/webhooks/everything/test", json!({}))
        .await;
    assert_eq!(status, 404);
    let (_, listed) = app.get_as(SALES, "/v1/accounts").await;
    assert_eq!(listed["accounts"].as_array().unwrap().len(), 1);
    let (status, _) = app
        .get_as(
            SALES,
            &format!("/v1/messages/{}", support_send["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(status, 404, "another account's send is not there for it");
    let (_, ds) = app.get_as(SALES, "/v1/deliveries?webhook=everything").await;
    assert_eq!(ds["deliveries"].as_array().unwrap().len(), 1);
    // It retries its own account's deliveries by hand, not another's.
    let own = ds["deliveries"][0]["id"].as_str().unwrap().to_string();
    let (_, all) = app
        .get_as(GLOBAL, "/v1/deliveries?webhook=everything")
        .await;
    let foreign = all["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .find(|id| *id != own)
        .expect("the support account's delivery");
    let (status, _) = app
        .post_as(SALES, &format!("/v1/deliveries/{own}/retry"), json!({}))
        .await;
    assert_eq!(status, 202);
    let (status, body) = app
        .post_as(SALES, &format!("/v1/deliveries/{foreign}/retry"), json!({}))
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = app
        .post_as(
            GLOBAL,
            &format!("/v1/accounts/sales/deliveries/{foreign}/retry"),
            json!({}),
        )
        .await;
    assert_eq!(
        status, 404,
        "under /v1/accounts/sales, support's delivery is not there"
    );
    // The legacy polling API acts on the token's one account.
    let (_, legacy) = app.get(&format!("/t/{SALES}/api/message")).await;
    let texts: Vec<&str> = legacy["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["hello sales"]);
    // The global token sees both.
    let (_, page) = app.get_as(GLOBAL, "/v1/events?types=message").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn a_v01_database_and_config_start_and_keep_their_history() {
    // A database made by v0.1: only its migration, and rows written in its shape.
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let db = dir.path().join("waas.db");
    let v01 = dir.path().join("v01-migrations");
    std::fs::create_dir_all(&v01).unwrap();
    std::fs::copy(
        "migrations/sqlite/0001_outbox.sql",
        v01.join("0001_outbox.sql"),
    )
    .unwrap();
    {
        use sqlx::ConnectOptions;
        let mut conn = format!("sqlite://{}?mode=rwc", db.display())
            .parse::<sqlx::sqlite::SqliteConnectOptions>()
            .unwrap()
            .connect()
            .await
            .unwrap();
        sqlx::migrate::Migrator::new(v01.as_path())
            .await
            .unwrap()
            .run(&mut conn)
            .await
            .unwrap();
    }
    let old_body = r#"{"id":"m-old","kind":"text","text":"from v0.1","from":{"id":"alice","name":"Alice","alias":null,"friend":true,"gender":"unknown","province":null,"city":null,"avatar":null,"self":false},"to":null,"room":null,"mentions":[],"mentions_self":false,"sent_at":"2026-11-23T17:59:59Z"}"#;
    let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute(
            "INSERT INTO events (id, type, dedup_key, conversation, created_at, bot, data)
             VALUES ('evt_v01', 'message', 'message:m-old', 'contact:alice', ?1, '{\"id\":\"bot-user\",\"name\":\"MockBot\"}', ?2)",
            rusqlite::params![now, old_body],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO sends (id, idempotency_key, request_hash, request, conversation, status, attempts, next_attempt_at, created_at, finished_at, message_id)
             VALUES ('out_v01', 'old-key', 'h', '{}', 'contact:bob', 'sent', 1, ?1, ?1, ?1, 'mock-sent-old')",
            [now],
        )
        .unwrap();
    }
    // A v0.1 config file: a top-level [puppet], no [[accounts]].
    let toml = format!(
        "[puppet]\nkind = \"mock\"\nskip_self = true\n[[webhooks]]\nname = \"a\"\nurl = \"http://127.0.0.1:9/\"\nsecret = \"{SECRET}\"\nevents = [\"message\"]\n"
    );
    let app = spawn_app_in(dir, &toml).await;
    let (_, page) = app.get("/v1/events?types=message").await;
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{page}");
    assert_eq!(events[0]["id"], "evt_v01");
    assert_eq!(
        events[0]["account"], "default",
        "old rows belong to `default`"
    );
    assert_eq!(events[0]["data"]["text"], "from v0.1");
    let (status, send) = app.get("/v1/messages/out_v01").await;
    assert_eq!((status, send["status"].as_str()), (200, Some("sent")));
    // The same message id again is still a duplicate; new ones go on from there.
    let (status, again) = app
        .post(
            "/v1/mock/messages",
            json!({"from": "alice", "text": "again", "id": "m-old"}),
        )
        .await;
    assert_eq!(status, 200, "a duplicate stores nothing new: {again}");
    assert_eq!(again["duplicate"], true, "{again}");
    app.inject("alice", None, "after the upgrade").await;
    let (_, page) = app.get("/v1/events?types=message").await;
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert!(events[1]["seq"].as_i64() > events[0]["seq"].as_i64());
    let (_, session) = app.get("/v1/session").await;
    assert_eq!(
        session["state"], "logged_in",
        "unscoped routes act on `default`"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_accounts_dead_gateway_never_holds_up_another() {
    let fixture = PuppetFixture::start(TOKEN).await;
    let receiver = TestReceiver::start().await;
    let dead_port = common::free_port();
    let live = fixture
        .puppet_config(TOKEN)
        .replace(
            "[puppet]",
            "[[accounts]]\nname = \"live\"\n[accounts.puppet]",
        )
        .replace("[puppet.service]", "[accounts.puppet.service]");
    let toml = format!(
        "{live}\n[[accounts]]\nname = \"down\"\n[accounts.puppet]\nkind = \"service\"\n[accounts.puppet.service]\nendpoint = \"127.0.0.1:{dead_port}\"\ntoken = \"{TOKEN}\"\nreconnect = {{ initial = \"100ms\", max = \"1s\" }}\n{}",
        webhook("bot", &receiver, "events = [\"message\"]")
    );
    let app = spawn_app_unready(&toml).await;
    app.eventually(20, "the live account's login", || async {
        let (_, s) = app.get("/v1/accounts/live/session").await;
        (s["state"] == "logged_in").then_some(())
    })
    .await;
    let (_, down) = app.get("/v1/accounts/down/session").await;
    assert_eq!(down["state"], "disconnected", "{down}");
    let resp = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("account down"),
        "{body}"
    );
    let (status, _) = app.get("/readyz?account=live").await;
    assert_eq!(status, 200);

    fixture
        .say(json!({"from": "alice", "text": "while the other is down"}))
        .await;
    receiver
        .wait_for(10, "the live account's message", |r| !r.is_empty())
        .await;
    let event = receiver.received()[0].json();
    assert_eq!(event["account"], "live");
    let (status, sent) = app
        .post(
            "/v1/accounts/live/messages?wait=10s",
            json!({"to": {"contact": "alice"}, "text": "answered"}),
        )
        .await;
    assert_eq!(
        (status, sent["status"].as_str()),
        (200, Some("sent")),
        "{sent}"
    );
    // The down account's send waits in its queue, and is not lost.
    let (status, queued) = app
        .post(
            "/v1/accounts/down/messages",
            json!({"to": {"contact": "alice"}, "text": "later"}),
        )
        .await;
    assert_eq!(status, 202, "{queued}");
    assert_eq!(queued["status"], "queued");
    app.stop().await;
}
