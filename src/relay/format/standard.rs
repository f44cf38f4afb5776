//! `format = "standard"`: the event's JSON as the body, signed with the Standard
//! Webhooks scheme; a response may carry `reply` / `replies` (see [`crate::send`]).

use reqwest::header::{CONTENT_TYPE, HeaderValue};

use super::{Attempt, Format, Rendered};
use crate::event::format_millis;
use crate::relay::signing::{
    SigningKey, WEBHOOK_ID, WEBHOOK_SIGNATURE, WEBHOOK_TIMESTAMP, signature_header,
};
use crate::send::{Content, parse_replies};
use crate::store::StoredEvent;

pub struct Standard {
    /// The webhook's signing keys (several during a rotation: one signature each).
    keys: Vec<SigningKey>,
}

impl Standard {
    pub fn new(keys: Vec<SigningKey>) -> Standard {
        Standard { keys }
    }
}

/// The event body every delivery of it carries, and the pull API lists: identical bytes
/// on every retry, since it is rendered from stored columns only.
pub fn body(event: &StoredEvent) -> String {
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    format!(
        r#"{{"id":{},"type":{},"timestamp":{},"seq":{},"account":{},"bot":{},"data":{}}}"#,
        quote(&event.id),
        quote(&event.event_type),
        quote(&format_millis(event.created_at)),
        event.seq,
        quote(&event.account),
        event.bot_json,
        event.data_json
    )
}

#[async_trait::async_trait]
impl Format for Standard {
    async fn render(&self, attempt: &Attempt<'_>) -> Result<Option<Rendered>, String> {
        let event = attempt.event;
        let body = body(event);
        let signature = signature_header(&self.keys, &event.id, attempt.now, body.as_bytes());
        let mut headers = vec![(CONTENT_TYPE, HeaderValue::from_static("application/json"))];
        for (name, value) in [
            (WEBHOOK_ID, event.id.clone()),
            (WEBHOOK_TIMESTAMP, attempt.now.to_string()),
            (WEBHOOK_SIGNATURE, signature),
        ] {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.push((name, value));
            }
        }
        Ok(Some(Rendered { body, headers }))
    }

    async fn replies(&self, event: &StoredEvent, response: &[u8]) -> Result<Vec<Content>, String> {
        let contents = parse_replies(response).map_err(|e| e.to_string())?;
        if !contents.is_empty() && event.event_type != "message" {
            return Err(format!(
                "replies answer `message` events only, and this is a `{}` event",
                event.event_type
            ));
        }
        Ok(contents)
    }
}
