//! `format = "onebot"`: OneBot v11 HTTP POST reporting, as NoneBot2's HTTP mode
//! receives it (`POST /onebot/v11/`): the OneBot event as the body, `X-Self-ID` (the
//! account's `self_id`), `X-Signature: sha1=<hex HMAC-SHA1(secret, body)>` with the
//! webhook's first secret (a bot checks one). The bot's response may be a quick
//! operation: `{"reply": message, "auto_escape", "at_sender"}` on a message event
//! sends the reply into its conversation (`at_sender` defaults to true in groups, as
//! the standard says); the other quick operations are refused with a reason in the
//! attempt (call the action instead).

use hmac::{Hmac, Mac};
use reqwest::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use serde_json::Value;
use sha1::Sha1;

use super::{Attempt, Format, Rendered};
use crate::event::{BotRef, MessageData};
use crate::onebot::{Context, event, message, outbound};
use crate::send::Content;
use crate::store::StoredEvent;

pub const X_SELF_ID: HeaderName = HeaderName::from_static("x-self-id");
pub const X_SIGNATURE: HeaderName = HeaderName::from_static("x-signature");

pub struct OneBot {
    context: Context,
    secret: Vec<u8>,
}

impl OneBot {
    pub fn new(context: Context, secret: Vec<u8>) -> OneBot {
        OneBot { context, secret }
    }
}

/// `sha1=` and the lowercase hex HMAC-SHA1 of the body.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(5 + digest.len() * 2);
    out.push_str("sha1=");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[async_trait::async_trait]
impl Format for OneBot {
    async fn render(&self, attempt: &Attempt<'_>) -> Result<Option<Rendered>, String> {
        let event = attempt.event;
        let converted = event::convert(&self.context.ids, event, self.context.format)
            .await
            .map_err(|e| format!("cannot give the event its OneBot ids: {e}"))?;
        let Some(body) = converted else {
            return Ok(None);
        };
        let self_id = body["self_id"].as_i64().unwrap_or_default();
        let body = body.to_string();
        let mut headers = vec![
            (CONTENT_TYPE, HeaderValue::from_static("application/json")),
            (X_SELF_ID, HeaderValue::from(self_id)),
        ];
        if !self.secret.is_empty()
            && let Ok(value) = HeaderValue::from_str(&sign(&self.secret, body.as_bytes()))
        {
            headers.push((X_SIGNATURE, value));
        }
        Ok(Some(Rendered { body, headers }))
    }

    async fn replies(&self, event: &StoredEvent, response: &[u8]) -> Result<Vec<Content>, String> {
        if response.iter().all(u8::is_ascii_whitespace) {
            return Ok(Vec::new());
        }
        // A bot that answers something else than a JSON object asks for nothing.
        let Ok(Value::Object(op)) = serde_json::from_slice::<Value>(response) else {
            return Ok(Vec::new());
        };
        let Some(reply) = op.get("reply").filter(|r| !r.is_null()) else {
            if let Some(other) = ["delete", "kick", "ban", "approve"]
                .into_iter()
                .find(|k| op.contains_key(*k))
            {
                return Err(format!(
                    "the quick operation `{other}` is not supported; call the action (delete_msg, set_group_kick, set_friend_add_request…) instead"
                ));
            }
            return Ok(Vec::new());
        };
        if event.event_type != "message" {
            return Err(format!(
                "a quick `reply` answers message events only, and this is a `{}` event",
                event.event_type
            ));
        }
        let m: MessageData = serde_json::from_str(&event.data_json)
            .map_err(|e| format!("the stored message cannot be read: {e}"))?;
        let auto_escape = op
            .get("auto_escape")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let mut segments = message::parse(reply, auto_escape).map_err(|e| e.0)?;
        let in_room = m.room.is_some();
        let at_sender = op.get("at_sender").and_then(Value::as_bool).unwrap_or(true);
        if in_room && at_sender {
            let bot: BotRef = serde_json::from_str(&event.bot_json).unwrap_or(BotRef {
                id: String::new(),
                name: String::new(),
            });
            let sender = self
                .context
                .ids
                .user(&event.account, &bot.id, &m.from.id)
                .await
                .map_err(|e| e.to_string())?;
            segments.insert(0, message::Segment::at(sender));
        }
        outbound::contents(&self.context.ids, &segments, in_room)
            .await
            .map_err(|e| e.message)
    }

    fn takes(&self, event_type: &str) -> bool {
        crate::onebot::EVENT_TYPES
            .iter()
            .any(|t| t.as_str() == event_type)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn signs_as_nonebot_checks() {
        // hmac.new(b"secret", b'{"a":1}', "sha1").hexdigest() in Python.
        assert_eq!(
            super::sign(b"secret", br#"{"a":1}"#),
            "sha1=f8446672f033e4b2beafc5ca3a71eafcd2cafb6e"
        );
    }
}
