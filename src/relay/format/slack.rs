//! `format = "slack"`: a WeChat message as a Slack Events API `event_callback`, so an
//! unmodified Slack Bolt app answers WeChat. Signed as Slack signs
//! (`X-Slack-Signature: v0=` HMAC-SHA256 over `v0:{timestamp}:{body}`), redeliveries
//! announced with `X-Slack-Retry-Num` / `X-Slack-Retry-Reason`. Bolt's 404
//! `unhandled request` (an app with no listener for the event) counts as delivered:
//! retrying would never change it. Replies go through the Web API (`/slack/api`), never
//! in the response.
//!
//! Ids are WeChat's own, unchanged: `channel` is the room id (or, for a direct chat,
//! the contact's id), `user` the sender's contact id, `team_id` the account. Each
//! message's `ts` is made from its creation time and `seq`, so every redelivery of it
//! carries the same one.

use hmac::{Hmac, Mac};
use reqwest::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use serde_json::json;
use sha2::Sha256;

use super::{Attempt, Format, Rendered};
use crate::event::{BotRef, MessageData};
use crate::send::Content;
use crate::store::StoredEvent;

pub struct Slack {
    /// The app's signing secrets (several during a rotation: one signature each).
    secrets: Vec<Vec<u8>>,
    /// `A` + the webhook's name: the app's id.
    app_id: String,
    /// `B` + the webhook's name: the app's bot.
    bot_id: String,
}

pub const SLACK_SIGNATURE: HeaderName = HeaderName::from_static("x-slack-signature");
pub const SLACK_TIMESTAMP: HeaderName = HeaderName::from_static("x-slack-request-timestamp");
const SLACK_RETRY_NUM: HeaderName = HeaderName::from_static("x-slack-retry-num");
const SLACK_RETRY_REASON: HeaderName = HeaderName::from_static("x-slack-retry-reason");

impl Slack {
    pub fn new(webhook: &str, secrets: Vec<Vec<u8>>) -> Slack {
        Slack {
            secrets,
            app_id: app_id(webhook),
            bot_id: bot_id(webhook),
        }
    }

    fn signed(&self, body: String, now: i64, extra: Vec<(HeaderName, HeaderValue)>) -> Rendered {
        let mut headers = vec![(CONTENT_TYPE, HeaderValue::from_static("application/json"))];
        headers.push((SLACK_TIMESTAMP, HeaderValue::from(now)));
        for secret in &self.secrets {
            if let Ok(value) = HeaderValue::from_str(&sign(secret, now, body.as_bytes())) {
                headers.push((SLACK_SIGNATURE, value));
            }
        }
        headers.extend(extra);
        Rendered { body, headers }
    }
}

/// A Slack app id for a webhook, as the contract gives it: `A` and its name.
pub fn app_id(webhook: &str) -> String {
    format!("A{webhook}")
}

/// A bot id for a webhook's app: `B` and its name (stable, like the app id).
pub fn bot_id(webhook: &str) -> String {
    format!("B{webhook}")
}

/// `v0=` and the lowercase hex HMAC-SHA256 of `v0:{timestamp}:{body}`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(format!("v0:{timestamp}:").as_bytes());
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(3 + digest.len() * 2);
    out.push_str("v0=");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// A stored message's `ts`: its creation second, and its `seq` as the fraction (unique
/// among the messages of one second; the same on every redelivery).
pub fn message_ts(event: &StoredEvent) -> String {
    format!(
        "{}.{:06}",
        event.created_at.div_euclid(1000),
        event.seq.rem_euclid(1_000_000)
    )
}

/// The message's text with the bot's @-mention written as Slack writes mentions.
fn slack_text(message: &MessageData, bot: &BotRef) -> String {
    let mut text = message.text.clone();
    if message.mentions_self && !bot.name.is_empty() {
        let mention = format!("<@{}>", bot.id);
        // WeChat writes a mention as `@Name` and a (narrow) space.
        for end in ['\u{2005}', ' '] {
            text = text.replace(&format!("@{}{end}", bot.name), &format!("{mention} "));
        }
        if text.ends_with(&format!("@{}", bot.name)) {
            let cut = text.len() - bot.name.len() - 1;
            text.truncate(cut);
            text.push_str(&mention);
        }
        if !text.contains(&mention) {
            text = format!("{mention} {text}");
        }
    }
    text
}

/// The `event_callback` for a stored message, or `None` for any other event.
pub fn envelope(event: &StoredEvent, app_id: &str, bot_id: &str) -> Option<String> {
    if event.event_type != "message" {
        return None;
    }
    let message: MessageData = serde_json::from_str(&event.data_json).ok()?;
    let bot: BotRef = serde_json::from_str(&event.bot_json).unwrap_or(BotRef {
        id: String::new(),
        name: String::new(),
    });
    let ts = message_ts(event);
    let (channel, channel_type) = match &message.room {
        Some(room) => (room.id.clone(), "group"),
        None => (message.from.id.clone(), "im"),
    };
    // A room message that mentions the bot is one `app_mention` (real Slack sends a
    // `message` too, and an app answering both would answer twice).
    let kind = if message.room.is_some() && message.mentions_self {
        "app_mention"
    } else {
        "message"
    };
    let mut inner = json!({
        "type": kind,
        "channel": channel,
        "channel_type": channel_type,
        "user": message.from.id,
        "text": slack_text(&message, &bot),
        "ts": ts,
        "event_ts": ts,
        "team": event.account,
        "client_msg_id": message.id,
    });
    if message.from.is_self {
        inner["bot_id"] = json!(bot_id);
    }
    Some(
        json!({
            "token": "",
            "team_id": event.account,
            "api_app_id": app_id,
            "event": inner,
            "type": "event_callback",
            "event_id": format!("Ev{}", event.id.trim_start_matches("evt_")),
            "event_time": event.created_at.div_euclid(1000),
            "authorizations": [{
                "enterprise_id": null,
                "team_id": event.account,
                "user_id": bot.id,
                "is_bot": true,
                "is_enterprise_install": false,
            }],
            "is_ext_shared_channel": false,
        })
        .to_string(),
    )
}

#[async_trait::async_trait]
impl Format for Slack {
    async fn render(&self, attempt: &Attempt<'_>) -> Result<Option<Rendered>, String> {
        let body =
            envelope(attempt.event, &self.app_id, &self.bot_id).unwrap_or_else(|| "{}".into());
        let mut extra = Vec::new();
        if attempt.previous > 0 {
            extra.push((SLACK_RETRY_NUM, HeaderValue::from(attempt.previous)));
            extra.push((SLACK_RETRY_REASON, HeaderValue::from_static("http_error")));
        }
        Ok(Some(self.signed(body, attempt.now, extra)))
    }

    async fn replies(
        &self,
        _event: &StoredEvent,
        _response: &[u8],
    ) -> Result<Vec<Content>, String> {
        Ok(Vec::new())
    }

    fn delivered_anyway(&self, status: u16, response: &[u8]) -> bool {
        status == 404 && String::from_utf8_lossy(response).contains("unhandled request")
    }

    fn takes(&self, event_type: &str) -> bool {
        event_type == "message"
    }

    fn handshake(&self, now: i64) -> Option<Rendered> {
        let challenge = format!("waas_{}", ulid::Ulid::new());
        let body = json!({"token": "", "challenge": challenge, "type": "url_verification"});
        Some(self.signed(body.to_string(), now, Vec::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_as_slack_documents() {
        // Slack's documented example ("Verifying requests from Slack").
        let body = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        assert_eq!(
            sign(
                b"8f742231b10e8888abcd99yyyzzz85a5",
                1531420618,
                body.as_bytes()
            ),
            "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
        );
    }
}
