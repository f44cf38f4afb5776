//! Reverse WebSocket clients: waas connects to each `[[onebot.reverse_ws]]` bot (the
//! bot is the WebSocket server, as NoneBot2 is by default) and reconnects forever, with
//! a doubling backoff between `onebot.reconnect.initial` and `.max`, reset once a
//! connection has lasted a minute. The request carries `X-Self-ID`,
//! `X-Client-Role: Universal` and, with an `access_token`, `Authorization: Bearer`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};

use super::ws::{Ended, Frame, Hub, Peer, serve};

/// A connection that lasted this long was a good one: the next wait starts over.
const STABLE: Duration = Duration::from_secs(60);

/// The cursor name of a reverse WebSocket bot.
pub fn cursor_name(account: &str, url: &str) -> String {
    format!("onebot:reverse:{account}:{url}")
}

fn to_frame(m: Message) -> Frame {
    match m {
        Message::Text(t) => Frame::Text(t.to_string()),
        Message::Binary(b) => Frame::Binary(b.to_vec()),
        Message::Ping(p) => Frame::Ping(p.to_vec()),
        Message::Pong(p) => Frame::Pong(p.to_vec()),
        Message::Close(c) => Frame::Close(c.map(|c| (u16::from(c.code), c.reason.to_string()))),
        Message::Frame(_) => Frame::Binary(Vec::new()),
    }
}

fn to_message(f: Frame) -> Message {
    match f {
        Frame::Text(t) => Message::text(t),
        Frame::Binary(b) => Message::binary(b),
        Frame::Ping(p) => Message::Ping(p.into()),
        Frame::Pong(p) => Message::Pong(p.into()),
        Frame::Close(c) => {
            Message::Close(c.map(|(code, reason)| tungstenite::protocol::CloseFrame {
                code: code.into(),
                reason: reason.into(),
            }))
        }
    }
}

/// Connects to one bot, again and again, until waas stops.
pub async fn run(hub: Arc<Hub>, account: String, url: String) {
    let initial = hub
        .settings
        .reconnect
        .initial
        .max(Duration::from_millis(10));
    let max = hub.settings.reconnect.max.max(initial);
    let mut wait = initial;
    let mut failures = 0u32;
    let label = format!("reverse {url}");
    let peer = Peer {
        account: account.clone(),
        cursor: cursor_name(&account, &url),
        label: label.clone(),
    };
    // Events stored from now on wait for this bot even if it is not up yet.
    if let Err(e) = hub.cursor(&peer.cursor).await {
        tracing::warn!(bot = %label, error = %e, "cannot create the bot's cursor yet");
    }
    loop {
        let self_id = match hub.ids.self_id(&account).await {
            Ok(id) => id,
            Err(e) => {
                tracing::error!(bot = %label, error = %e, "cannot read the account's self_id");
                if sleep_or_stop(&hub, wait).await {
                    return;
                }
                continue;
            }
        };
        let request = match request(&url, self_id, &hub) {
            Ok(r) => r,
            Err(e) => {
                // Unreachable: the configuration check validates the URL.
                tracing::error!(bot = %label, error = %e, "not a WebSocket URL; this bot is not connected");
                return;
            }
        };
        let attempt = tokio::select! {
            // Nagle off: an event frame and the ping after it must not wait for an ACK.
            a = tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async_with_config(request, None, true)) => a,
            _ = hub.stopping.cancelled() => return,
        };
        match attempt {
            Ok(Ok((socket, _))) => {
                if failures > 0 {
                    tracing::info!(bot = %label, after = failures, "reached the OneBot bot again");
                }
                failures = 0;
                let started = Instant::now();
                let socket = socket.map(|m| m.map(to_frame)).with(|f: Frame| {
                    futures_util::future::ok::<_, tungstenite::Error>(to_message(f))
                });
                match serve(hub.clone(), peer.clone(), socket).await {
                    Ended::Stopping => return,
                    Ended::Closed(_) => {}
                }
                if started.elapsed() >= STABLE {
                    wait = initial;
                }
            }
            Ok(Err(e)) => {
                failures += 1;
                let how = describe(&e);
                if failures == 1 {
                    tracing::warn!(bot = %label, error = %how, retry_in = %humantime::format_duration(wait), "cannot reach the OneBot bot; retrying until it answers (events wait in the store)");
                } else {
                    tracing::debug!(bot = %label, error = %how, failures, retry_in = %humantime::format_duration(wait), "the OneBot bot is still unreachable");
                }
            }
            Err(_) => {
                failures += 1;
                tracing::warn!(bot = %label, retry_in = %humantime::format_duration(wait), "the OneBot bot did not answer within 10s");
            }
        }
        if sleep_or_stop(&hub, jitter(wait)).await {
            return;
        }
        wait = (wait * 2).min(max);
    }
}

/// True when waas began stopping while waiting.
async fn sleep_or_stop(hub: &Hub, wait: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(wait) => false,
        _ = hub.stopping.cancelled() => true,
    }
}

/// Up to a fifth less, so bots restarted together are not reached in lockstep.
fn jitter(wait: Duration) -> Duration {
    let cut = rand::random::<f64>() * 0.2;
    wait.mul_f64(1.0 - cut)
}

fn request(
    url: &str,
    self_id: i64,
    hub: &Hub,
) -> Result<tungstenite::handshake::client::Request, tungstenite::Error> {
    let mut request = url.into_client_request()?;
    let headers = request.headers_mut();
    headers.insert("x-self-id", self_id.into());
    headers.insert(
        "x-client-role",
        tungstenite::http::HeaderValue::from_static("Universal"),
    );
    headers.insert(
        "user-agent",
        tungstenite::http::HeaderValue::from_static(concat!(
            "waas/",
            env!("CARGO_PKG_VERSION"),
            " OneBot/11"
        )),
    );
    if let Some(token) = &hub.settings.access_token
        && let Ok(value) = format!("Bearer {}", token.expose()).parse()
    {
        headers.insert("authorization", value);
    }
    Ok(request)
}

/// A failed handshake in a few words: the bot's HTTP answer when it gave one (a wrong
/// token is a 403 from NoneBot).
fn describe(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Http(response) => {
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            format!(
                "the bot answered HTTP {} {}",
                response.status(),
                body.trim()
            )
        }
        tungstenite::Error::Io(e) => format!("connection failed: {e}"),
        e => e.to_string(),
    }
}
