//! OneBot v11 mode, tested with the real NoneBot2 and its OneBot adapter from PyPI
//! (`examples/nonebot`, unmodified bot code; `bash .ci/run` installs them), in its three
//! modes: reverse WebSocket (waas connects to the bot), forward WebSocket (the bot
//! connects to waas) and HTTP (events POSTed to the bot, actions through the HTTP API).
//! WeChat is the mock puppet. Bad input is tested with a raw WebSocket client.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};

use common::{TestApp, TestReceiver, free_port, spawn_app, spawn_app_in};

const TOKEN: &str = "onebot_access_token_for_tests";
const SECRET: &str = "onebot_secret_for_the_tests";

/// The example bot, run by the Python that `.ci/run` installed NoneBot2 into.
struct NoneBot {
    child: Option<Child>,
    env: Vec<(String, String)>,
    log: PathBuf,
    journal: PathBuf,
    _dir: tempfile::TempDir,
}

fn example_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/nonebot")
}

impl NoneBot {
    /// Starts `examples/nonebot/bot.py` with NoneBot settings `env` (on top of the
    /// example's `.env`), listening on `port`.
    fn start(port: u16, env: &[(&str, String)]) -> NoneBot {
        let dir = tempfile::tempdir().unwrap();
        let mut all: Vec<(String, String)> = vec![
            ("HOST".into(), "127.0.0.1".into()),
            ("PORT".into(), port.to_string()),
            ("ONEBOT_ACCESS_TOKEN".into(), TOKEN.into()),
            ("LOG_LEVEL".into(), "DEBUG".into()),
        ];
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let mut bot = NoneBot {
            child: None,
            env: all,
            log: dir.path().join("bot.log"),
            journal: dir.path().join("journal.jsonl"),
            _dir: dir,
        };
        bot.spawn();
        bot
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new("python3")
            .arg("bot.py")
            .current_dir(example_dir())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("BOT_JOURNAL", &self.journal)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect(
                "python3 with nonebot2 (bash .ci/run installs examples/nonebot/requirements.txt)",
            );
        self.child = Some(child);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the bot's log has `needle` (`count` times).
    async fn wait_log(&self, needle: &str, count: usize, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while self.log().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "the bot's log never said `{needle}` {count} time(s); it says:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What reached the bot's handlers, in order.
    fn journal(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.journal)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    async fn wait_journal(&self, secs: u64, what: &str, done: impl Fn(&[Value]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !done(&self.journal()) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the bot got {:?}\nits log:\n{}",
                self.journal(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: the bot vanishes without closing anything.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for NoneBot {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn say(app: &TestApp, from: &str, room: Option<&str>, text: &str, mentions: &[&str]) {
    let mut body = json!({"from": from, "text": text});
    if let Some(room) = room {
        body["room"] = json!(room);
        body["mentions"] = json!(mentions);
    }
    let (status, answer) = app.post("/v1/mock/messages", body).await;
    assert_eq!(status, 201, "{answer}");
}

/// Waits for the mock puppet to have sent a message matching `check`.
async fn sent(app: &TestApp, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    app.eventually(20, what, || async {
        app.sent().await.into_iter().find(|m| check(m))
    })
    .await
}

fn text_is<'a>(text: &'a str) -> impl Fn(&Value) -> bool + 'a {
    move |m: &Value| m["text"] == text
}

const ROOM: &str = "room1@chatroom";

/// What every mode must do: commands in private and group chats, `to_me()` on an
/// at-mention, `MessageSegment.at` in a reply, and the actions bots call most.
async fn a_bot_answers_wechat(app: &TestApp, bot: &NoneBot) {
    say(app, "alice", None, "ping 1", &[]).await;
    let pong = sent(app, "pong 1", text_is("pong 1")).await;
    assert_eq!(pong["to"], json!({"contact": "alice"}));

    // An at-mention of the bot is to_me(); the reply's MessageSegment.at is a mention.
    say(
        app,
        "bob",
        Some(ROOM),
        "@MockBot\u{2005}hello there",
        &["bot-user"],
    )
    .await;
    let said = sent(
        app,
        "the answer to the mention",
        text_is("you said: hello there"),
    )
    .await;
    assert_eq!(said["to"], json!({"room": ROOM}));
    assert_eq!(said["mentions"], json!(["bob"]));
    let mention = bot
        .journal()
        .into_iter()
        .find(|m| m["text"] == "hello there")
        .expect("the mention reached the bot");
    assert_eq!(mention["to_me"], true, "an at of self_id is to me");
    // Without the mention, the same words are not to_me.
    say(app, "bob", Some(ROOM), "just chatting", &[]).await;
    bot.wait_journal(20, "the plain group message", |j| {
        j.iter()
            .any(|m| m["text"] == "just chatting" && m["to_me"] == false)
    })
    .await;

    say(app, "bob", Some(ROOM), "/whoami", &[]).await;
    let whoami = sent(app, "get_group_member_info", text_is("you are Bob")).await;
    assert_eq!(whoami["mentions"], json!(["bob"]));

    say(app, "alice", None, "friends", &[]).await;
    sent(
        app,
        "get_friend_list",
        text_is("friends: Alice, Bob, Carol"),
    )
    .await;

    say(app, "carol", Some(ROOM), "/dm", &[]).await;
    let dm = sent(app, "send_private_msg", text_is("a private hello")).await;
    assert_eq!(dm["to"], json!({"contact": "carol"}));

    say(app, "carol", Some(ROOM), "/announce lunch at noon", &[]).await;
    let group = sent(
        app,
        "send_group_msg",
        text_is("announcement: lunch at noon"),
    )
    .await;
    assert_eq!(group["to"], json!({"room": ROOM}));

    // A friend request, approved by the bot's on_request handler.
    let (status, raised) = app
        .post(
            "/v1/mock/friendships",
            json!({"from": {"id": "dave", "name": "Dave"}, "hello": "hi, I'm Dave"}),
        )
        .await;
    assert_eq!(status, 201, "{raised}");
    app.eventually(20, "the bot to accept Dave", || async {
        let (status, dave) = app.get("/v1/contacts/dave").await;
        (status == 200 && dave["friend"] == true).then_some(())
    })
    .await;
}

/// The bot is stopped, messages come meanwhile, the bot comes back: it gets every one,
/// in order, once.
async fn a_restarted_bot_gets_what_it_missed(app: &TestApp, bot: &mut NoneBot, connected: &str) {
    let before = bot.log().matches(connected).count();
    bot.kill();
    for i in 0..20 {
        say(app, "alice", None, &format!("missed {i}"), &[]).await;
    }
    bot.restart();
    bot.wait_log(connected, before + 1, 60).await;
    bot.wait_journal(60, "the 20 missed messages", |j| {
        (0..20).all(|i| j.iter().any(|m| m["text"] == format!("missed {i}")))
    })
    .await;
    let missed: Vec<String> = bot
        .journal()
        .iter()
        .filter_map(|m| m["text"].as_str())
        .filter(|t| t.starts_with("missed "))
        .map(str::to_string)
        .collect();
    let expected: Vec<String> = (0..20).map(|i| format!("missed {i}")).collect();
    assert_eq!(missed, expected, "every missed message, in order, once");
    // And the bot answers them: the replies went out through waas.
    say(app, "alice", None, "ping after", &[]).await;
    sent(app, "pong after the restart", text_is("pong after")).await;
}

fn reverse_config(port: u16) -> String {
    format!(
        "[onebot]\naccess_token = \"{TOKEN}\"\nheartbeat = \"1s\"\nreconnect = {{ initial = \"200ms\", max = \"1s\" }}\n\
         [[onebot.reverse_ws]]\nurl = \"ws://127.0.0.1:{port}/onebot/v11/ws\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonebot_over_a_reverse_websocket() {
    let port = free_port();
    let app = spawn_app(&reverse_config(port)).await;
    let mut bot = NoneBot::start(port, &[]);
    // waas reaches the bot (it was not up when waas started, so this is a reconnect).
    bot.wait_log("connected", 1, 60).await;
    a_bot_answers_wechat(&app, &bot).await;
    a_restarted_bot_gets_what_it_missed(&app, &mut bot, "connected").await;
    app.stop().await;
}

/// Killed in the middle of a burst, the bot loses nothing: what it had not confirmed
/// (by answering the ping after it) comes again when it is back, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_killed_mid_burst_loses_nothing() {
    let port = free_port();
    let app = spawn_app(&reverse_config(port)).await;
    let mut bot = NoneBot::start(port, &[]);
    bot.wait_log("connected", 1, 60).await;
    const N: usize = 300;
    let burst = async {
        for i in 0..N {
            say(&app, "carol", None, &format!("burst {i}"), &[]).await;
        }
    };
    let kill = async {
        bot.wait_journal(60, "the burst to begin", |j| j.len() >= 20)
            .await;
        bot.kill();
    };
    tokio::join!(burst, kill);
    let before = bot.journal().len();
    assert!(
        before < N,
        "the bot was killed mid-burst ({before} of {N} seen)"
    );
    bot.restart();
    bot.wait_journal(60, "every message of the burst", |j| {
        let seen: std::collections::HashSet<&str> =
            j.iter().filter_map(|m| m["text"].as_str()).collect();
        (0..N).all(|i| seen.contains(format!("burst {i}").as_str()))
    })
    .await;
    // In order: each message first arrives after the one before it.
    let mut first_seen = Vec::new();
    for m in bot.journal() {
        let text = m["text"].as_str().unwrap_or_default().to_string();
        if !first_seen.contains(&text) {
            first_seen.push(text);
        }
    }
    let expected: Vec<String> = (0..N).map(|i| format!("burst {i}")).collect();
    assert_eq!(first_seen, expected);
    let again = bot.journal().len() - N;
    println!(
        "killed after {before} of {N}; {again} delivered again (the bot got them in its last seconds, so they were not confirmed yet)"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonebot_over_a_forward_websocket() {
    let app = spawn_app(&format!(
        "[onebot]\naccess_token = \"{TOKEN}\"\nheartbeat = \"1s\"\n"
    ))
    .await;
    let mut bot = NoneBot::start(
        free_port(),
        &[(
            "ONEBOT_WS_URLS",
            format!("[\"ws://{}/onebot/v11/ws\"]", app.addr),
        )],
    );
    bot.wait_log("connected", 1, 60).await;
    a_bot_answers_wechat(&app, &bot).await;
    a_restarted_bot_gets_what_it_missed(&app, &mut bot, "connected").await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonebot_over_http() {
    let port = free_port();
    let app = spawn_app(&format!(
        "[onebot]\naccess_token = \"{TOKEN}\"\n\n[[webhooks]]\nname = \"nonebot\"\nurl = \"http://127.0.0.1:{port}/onebot/v11/\"\nformat = \"onebot\"\nsecret = \"{SECRET}\"\nordering = \"conversation\"\nretry = [\"200ms\", \"500ms\", \"1s\", \"1s\", \"1s\", \"1s\", \"1s\", \"1s\"]\n"
    ))
    .await;
    let login = app
        .client
        .get(app.url("/onebot/v11/get_login_info"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let self_id = login["data"]["user_id"].as_i64().expect("a self_id");
    let mut bot = NoneBot::start(
        port,
        &[
            ("ONEBOT_SECRET", SECRET.into()),
            (
                "ONEBOT_API_ROOTS",
                json!({self_id.to_string(): format!("http://{}/onebot/v11/", app.addr)})
                    .to_string(),
            ),
        ],
    );
    bot.wait_log("Application startup complete", 1, 60).await;
    a_bot_answers_wechat(&app, &bot).await;
    // A bot that was down: its events were retried until it answered, in order in
    // each chat (`ordering = "conversation"`).
    a_restarted_bot_gets_what_it_missed(&app, &mut bot, "Application startup complete").await;
    // NoneBot checked every signature: a wrong one is a 403, which would have left
    // deliveries failing.
    assert!(
        !bot.log().contains("Signature Header is invalid"),
        "{}",
        bot.log()
    );
    app.stop().await;
}

// ---------------------------------------------------------------------------------
// The standard's errors, with a raw client.

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(
    app: &TestApp,
    query: &str,
    token: Option<&str>,
) -> Result<Ws, tungstenite::Error> {
    let mut request = format!("ws://{}/onebot/v11/ws{query}", app.addr)
        .into_client_request()
        .unwrap();
    if let Some(token) = token {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(socket, _)| Ws {
            socket,
            backlog: Vec::new(),
        })
}

/// A raw client's connection, with the frames it read but no one asked for yet.
struct Ws {
    socket: Socket,
    backlog: Vec<Value>,
}

impl Ws {
    async fn send(&mut self, text: impl Into<String>) {
        let text: String = text.into();
        self.socket.send(Message::text(text)).await.unwrap();
    }
}

/// The next text frame that satisfies `check`, in the order they came (the others are
/// kept for later calls).
async fn next_text(ws: &mut Ws, check: impl Fn(&Value) -> bool) -> Value {
    if let Some(i) = ws.backlog.iter().position(&check) {
        return ws.backlog.remove(i);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, ws.socket.next())
            .await
            .unwrap_or_else(|_| panic!("no such frame in 10 s; unclaimed: {:?}", ws.backlog))
            .expect("the connection is open")
            .expect("a frame");
        if let Message::Text(text) = frame {
            let v: Value = serde_json::from_str(&text).expect("JSON frames");
            if check(&v) {
                return v;
            }
            ws.backlog.push(v);
        }
    }
}

fn answer_to(echo: Value) -> impl Fn(&Value) -> bool {
    move |v: &Value| v.get("echo") == Some(&echo)
}

#[tokio::test]
async fn bad_frames_unknown_actions_and_wrong_tokens_get_the_standards_errors() {
    let app = spawn_app(&format!(
        "[onebot]\naccess_token = \"{TOKEN}\"\nheartbeat = \"300ms\"\n"
    ))
    .await;
    // The WebSocket: no token 401, a wrong one 403, before any upgrade.
    for (token, status) in [(None, 401), (Some("wrong_token_wrong_token"), 403)] {
        match connect(&app, "", token).await {
            Err(tungstenite::Error::Http(response)) => {
                assert_eq!(response.status().as_u16(), status)
            }
            Err(other) => panic!("expected HTTP {status}, got {other:?}"),
            Ok(_) => panic!("expected HTTP {status}, the upgrade was accepted"),
        }
    }
    // The token may come in the query, as the standard allows.
    let mut socket = connect(&app, &format!("?access_token={TOKEN}"), None)
        .await
        .unwrap();
    let connect_event = next_text(&mut socket, |_| true).await;
    assert_eq!(connect_event["post_type"], "meta_event");
    assert_eq!(connect_event["meta_event_type"], "lifecycle");
    assert_eq!(
        connect_event["sub_type"], "connect",
        "lifecycle connect comes first"
    );
    let self_id = connect_event["self_id"].as_i64().unwrap();

    // Not JSON: retcode 1400, the connection kept.
    socket.send("this is not json").await;
    let bad = next_text(&mut socket, |v| v.get("retcode").is_some()).await;
    assert_eq!(bad["retcode"], 1400);
    assert_eq!(bad["status"], "failed");
    assert!(bad["msg"].as_str().unwrap().contains("not JSON"), "{bad}");

    // An unknown action: 1404 and the echo, verbatim, whatever its type.
    let echo = json!({"n": 1, "s": "x", "list": [1, 2]});
    socket
        .send(json!({"action": "fly_to_the_moon", "params": {}, "echo": echo}).to_string())
        .await;
    let unknown = next_text(&mut socket, answer_to(echo.clone())).await;
    assert_eq!(unknown["retcode"], 1404);
    assert!(
        unknown["msg"].as_str().unwrap().contains("fly_to_the_moon"),
        "{unknown}"
    );

    // Bad params: 1400 saying what is missing.
    socket
        .send(
            json!({"action": "send_private_msg", "params": {"message": "hi"}, "echo": "7"})
                .to_string(),
        )
        .await;
    let missing = next_text(&mut socket, answer_to(json!("7"))).await;
    assert_eq!(missing["retcode"], 1400);
    assert!(
        missing["msg"].as_str().unwrap().contains("user_id"),
        "{missing}"
    );
    socket.send(json!({"action": "send_group_msg", "params": {"group_id": 999999, "message": "hi"}, "echo": 8}).to_string()).await;
    let no_group = next_text(&mut socket, answer_to(json!(8))).await;
    assert_eq!(no_group["retcode"], 1400, "{no_group}");
    socket.send(json!({"action": "send_msg", "params": {"user_id": self_id, "message": [{"type": "face", "data": {"id": "1"}}]}, "echo": 9}).to_string()).await;
    let face = next_text(&mut socket, answer_to(json!(9))).await;
    assert_eq!(face["retcode"], 1400);
    assert!(face["msg"].as_str().unwrap().contains("face"), "{face}");

    // The connection is still good: a real call answers, and a heartbeat comes.
    socket
        .send(json!({"action": "get_status", "echo": "s"}).to_string())
        .await;
    let status = next_text(&mut socket, answer_to(json!("s"))).await;
    assert_eq!(status["retcode"], 0);
    assert_eq!(status["data"]["online"], true);
    let beat = next_text(&mut socket, |v| v["meta_event_type"] == "heartbeat").await;
    assert_eq!(beat["interval"], 300);
    assert_eq!(beat["status"]["online"], true);

    // The HTTP API: 401, 403, 404 for an unknown action, 400 for a body that is not JSON.
    let http = |path: &str| app.client.post(app.url(&format!("/onebot/v11/{path}")));
    assert_eq!(http("get_status").send().await.unwrap().status(), 401);
    assert_eq!(
        http("get_status")
            .bearer_auth("wrong_token_wrong_token")
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    let unknown = http("fly_to_the_moon")
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(unknown.json::<Value>().await.unwrap()["retcode"], 1404);
    let not_json = http("send_msg")
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 400);
    assert_eq!(not_json.json::<Value>().await.unwrap()["retcode"], 1400);
    // GET with query params works too.
    let version = app
        .client
        .get(app.url(&format!(
            "/onebot/v11/get_version_info?access_token={TOKEN}"
        )))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(version["data"]["protocol_version"], "v11");
    assert_eq!(version["data"]["app_name"], "waas");
    app.stop().await;
}

#[tokio::test]
async fn ids_are_integers_stable_across_restarts_and_messages_can_be_cq_strings() {
    let toml = format!(
        "[onebot]\naccess_token = \"{TOKEN}\"\nmessage_format = \"string\"\nheartbeat = \"0s\"\n"
    );
    let app = spawn_app(&toml).await;
    let call = |app: &TestApp, action: &str, params: Value| {
        let request = app
            .client
            .post(app.url(&format!("/onebot/v11/{action}")))
            .bearer_auth(TOKEN)
            .json(&params);
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let friends = call(&app, "get_friend_list", json!({})).await;
    let groups = call(&app, "get_group_list", json!({})).await;
    let login = call(&app, "get_login_info", json!({})).await;
    let members = call(
        &app,
        "get_group_member_list",
        json!({"group_id": groups["data"][0]["group_id"]}),
    )
    .await;
    assert_eq!(members["retcode"], 0, "{members}");
    let bot_as_member = members["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["nickname"] == "MockBot")
        .expect("the bot is a member");
    assert_eq!(
        bot_as_member["user_id"], login["data"]["user_id"],
        "the bot's own user_id is its self_id"
    );
    for id in friends["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| &f["user_id"])
    {
        let n = id.as_i64().expect("integer user ids");
        assert!(n > 0 && n < (1 << 53));
    }

    // A message event as a CQ string, with the mention as an at code.
    let mut socket = connect(&app, "", Some(TOKEN)).await.unwrap();
    next_text(&mut socket, |v| v["sub_type"] == "connect").await;
    say(
        &app,
        "bob",
        Some(ROOM),
        "@MockBot\u{2005}[hi] & bye",
        &["bot-user"],
    )
    .await;
    let event = next_text(&mut socket, |v| v["post_type"] == "message").await;
    let self_id = login["data"]["user_id"].as_i64().unwrap();
    assert_eq!(
        event["message"],
        format!("[CQ:at,qq={self_id}]&#91;hi&#93; &amp; bye")
    );
    assert_eq!(event["raw_message"], event["message"]);
    assert_eq!(event["message_type"], "group");
    assert_eq!(event["group_id"], groups["data"][0]["group_id"]);
    let bob = friends["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["nickname"] == "Bob")
        .unwrap()["user_id"]
        .clone();
    assert_eq!(event["user_id"], bob);
    // get_msg finds it by its message_id (as the adapter does for a reply segment).
    let got = call(&app, "get_msg", json!({"message_id": event["message_id"]})).await;
    assert_eq!(got["retcode"], 0, "{got}");
    assert_eq!(got["data"]["sender"]["user_id"], bob);
    assert_eq!(got["data"]["message"], event["message"]);
    drop(socket);

    // A send answers a message_id that get_msg and delete_msg know.
    let sent = call(
        &app,
        "send_group_msg",
        json!({"group_id": event["group_id"], "message": format!("[CQ:at,qq={bob}] noted")}),
    )
    .await;
    assert_eq!(sent["retcode"], 0, "{sent}");
    let message_id = sent["data"]["message_id"].as_i64().unwrap();
    let mine = call(&app, "get_msg", json!({"message_id": message_id})).await;
    assert_eq!(mine["data"]["sender"]["user_id"], self_id);
    assert_eq!(mine["data"]["message_type"], "group");

    // After a restart on the same store, every number means the same.
    let dir = app.stop().await;
    let app = spawn_app_in(dir, &toml).await;
    assert_eq!(
        call(&app, "get_friend_list", json!({})).await["data"],
        friends["data"]
    );
    assert_eq!(
        call(&app, "get_group_list", json!({})).await["data"],
        groups["data"]
    );
    assert_eq!(
        call(&app, "get_login_info", json!({})).await["data"]["user_id"],
        self_id
    );
    let again = call(&app, "get_msg", json!({"message_id": event["message_id"]})).await;
    assert_eq!(again["data"]["message"], event["message"]);
    app.stop().await;
}

#[tokio::test]
async fn an_http_bot_answers_with_a_quick_reply() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app(&format!(
        "[[webhooks]]\nname = \"quick\"\nurl = \"{}\"\nformat = \"onebot\"\nsecret = \"{SECRET}\"\n",
        receiver.url
    ))
    .await;
    receiver.set_response(r#"{"reply": "quick pong"}"#);
    say(&app, "bob", Some(ROOM), "ping", &[]).await;
    let reply = sent(&app, "the quick reply", text_is("quick pong")).await;
    assert_eq!(reply["to"], json!({"room": ROOM}));
    assert_eq!(
        reply["mentions"],
        json!(["bob"]),
        "at_sender is true by default in groups"
    );
    let request = receiver
        .received()
        .into_iter()
        .find(|r| r.json()["post_type"] == "message")
        .unwrap();
    let body = request.json();
    assert_eq!(body["post_type"], "message");
    assert!(
        body["user_id"].is_i64() && body["group_id"].is_i64(),
        "{body}"
    );
    assert_eq!(request.header("x-self-id"), body["self_id"].to_string());
    // The signature, checked the way NoneBot checks it (Python's hmac).
    let expected = python_hmac_sha1(SECRET, &request.body);
    assert_eq!(request.header("x-signature"), format!("sha1={expected}"));
    app.stop().await;
}

fn python_hmac_sha1(secret: &str, body: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import hmac,sys; print(hmac.new(sys.argv[1].encode(), sys.stdin.buffer.read(), 'sha1').hexdigest())",
            secret,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Room joins and leaves are notices, friend requests and room invitations are
/// requests whose `flag` the bot answers with the standard's actions.
#[tokio::test]
async fn notices_and_requests_over_a_websocket() {
    let app = spawn_app(&format!(
        "[onebot]\naccess_token = \"{TOKEN}\"\nheartbeat = \"0s\"\n"
    ))
    .await;
    let mut socket = connect(&app, "", Some(TOKEN)).await.unwrap();
    let hello = next_text(&mut socket, |v| v["sub_type"] == "connect").await;
    let self_id = hello["self_id"].as_i64().unwrap();
    let call = |action: &str, params: Value, echo: &str| {
        json!({"action": action, "params": params, "echo": echo}).to_string()
    };

    // A room invitation: a group request; set_group_add_request accepts it.
    let (status, raised) = app
        .post(
            "/v1/mock/room-invitations",
            json!({"from": "alice", "room": {"id": "club@chatroom", "topic": "Club"}}),
        )
        .await;
    assert_eq!(status, 201, "{raised}");
    let invite = next_text(&mut socket, |v| v["post_type"] == "request").await;
    assert_eq!(invite["request_type"], "group");
    assert_eq!(invite["sub_type"], "invite");
    assert_eq!(invite["comment"], "Club");
    socket
        .send(call(
            "set_group_add_request",
            json!({"flag": invite["flag"], "sub_type": "invite", "approve": true}),
            "accept",
        ))
        .await;
    let accepted = next_text(&mut socket, answer_to(json!("accept"))).await;
    assert_eq!(accepted["retcode"], 0, "{accepted}");
    // The bot joining is a group_increase of self_id.
    let joined = next_text(&mut socket, |v| v["notice_type"] == "group_increase").await;
    assert_eq!(joined["user_id"], self_id);
    let club = joined["group_id"].clone();
    let info = {
        socket
            .send(call("get_group_info", json!({"group_id": club}), "info"))
            .await;
        next_text(&mut socket, answer_to(json!("info"))).await
    };
    assert_eq!(info["data"]["group_name"], "Club", "{info}");

    // Someone joins and is kicked: group_increase, then group_decrease `kick`.
    let (status, op) = app
        .post(
            "/v1/rooms/club@chatroom/members",
            json!({"contacts": ["bob"]}),
        )
        .await;
    assert_eq!(status, 200, "{op}");
    let bob_joined = next_text(&mut socket, |v| v["notice_type"] == "group_increase").await;
    assert_eq!(bob_joined["sub_type"], "invite");
    assert_eq!(bob_joined["operator_id"], self_id);
    let bob = bob_joined["user_id"].clone();
    socket
        .send(call(
            "set_group_kick",
            json!({"group_id": club, "user_id": bob}),
            "kick",
        ))
        .await;
    assert_eq!(
        next_text(&mut socket, answer_to(json!("kick"))).await["retcode"],
        0
    );
    let left = next_text(&mut socket, |v| v["notice_type"] == "group_decrease").await;
    assert_eq!(left["sub_type"], "kick");
    assert_eq!(left["user_id"], bob);

    // A friend request: set_friend_add_request accepts it; friend_add follows.
    let (status, _) = app
        .post(
            "/v1/mock/friendships",
            json!({"from": {"id": "dave", "name": "Dave"}, "hello": "hi, I'm Dave"}),
        )
        .await;
    assert_eq!(status, 201);
    let request = next_text(&mut socket, |v| v["request_type"] == "friend").await;
    assert_eq!(request["comment"], "hi, I'm Dave");
    socket
        .send(call(
            "set_friend_add_request",
            json!({"flag": request["flag"]}),
            "friend",
        ))
        .await;
    assert_eq!(
        next_text(&mut socket, answer_to(json!("friend"))).await["retcode"],
        0
    );
    let added = next_text(&mut socket, |v| v["notice_type"] == "friend_add").await;
    assert_eq!(added["user_id"], request["user_id"]);
    // An unknown flag is refused with the puppet's reason.
    socket
        .send(call(
            "set_friend_add_request",
            json!({"flag": "nope"}),
            "nope",
        ))
        .await;
    assert_ne!(
        next_text(&mut socket, answer_to(json!("nope"))).await["retcode"],
        0
    );
    app.stop().await;
}

/// An image a contact sends is an `image` segment whose `url` fetches the bytes with
/// no other credential; an image segment a bot sends is a WeChat image.
#[tokio::test]
async fn images_both_ways() {
    use base64::Engine;
    let app = spawn_app(&format!(
        "[onebot]\naccess_token = \"{TOKEN}\"\nheartbeat = \"0s\"\n"
    ))
    .await;
    let mut socket = connect(&app, "", Some(TOKEN)).await.unwrap();
    next_text(&mut socket, |v| v["sub_type"] == "connect").await;
    let png: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    let (status, body) = app
        .post(
            "/v1/mock/messages",
            json!({"from": "alice", "text": "", "media": {"kind": "image", "name": "cat.png", "base64": b64}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let event = next_text(&mut socket, |v| v["post_type"] == "message").await;
    let segment = &event["message"][0];
    assert_eq!(segment["type"], "image", "{event}");
    assert_eq!(segment["data"]["file"], "cat.png");
    // The link is on server.public_url (the default's port, not this test app's).
    let url = segment["data"]["url"].as_str().unwrap();
    let path = &url[url.find("/v1/media/").expect("a media link")..];
    let fetched = reqwest::get(app.url(path)).await.unwrap();
    assert_eq!(fetched.status(), 200);
    assert_eq!(fetched.bytes().await.unwrap().to_vec(), png);

    // The bot answers with an image (base64://) and text: two messages, in order.
    socket
        .send(
            json!({"action": "send_private_msg", "echo": 1, "params": {"user_id": event["user_id"], "message": [
                {"type": "image", "data": {"file": format!("base64://{b64}")}},
                {"type": "text", "data": {"text": "nice cat"}},
            ]}})
            .to_string(),
        )
        .await;
    let answer = next_text(&mut socket, answer_to(json!(1))).await;
    assert_eq!(answer["retcode"], 0, "{answer}");
    let image = sent(&app, "the image", |m| m.get("image").is_some()).await;
    assert_eq!(image["to"], json!({"contact": "alice"}));
    sent(&app, "the text after it", text_is("nice cat")).await;
    // A local file is refused, saying why.
    socket
        .send(
            json!({"action": "send_private_msg", "echo": 2, "params": {"user_id": event["user_id"], "message": "[CQ:image,file=file:///etc/passwd]"}})
                .to_string(),
        )
        .await;
    let refused = next_text(&mut socket, answer_to(json!(2))).await;
    assert_eq!(refused["retcode"], 1400);
    assert!(
        refused["msg"].as_str().unwrap().contains("local files"),
        "{refused}"
    );
    app.stop().await;
}
