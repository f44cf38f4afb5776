//! `format = "standard"`: the event's JSON as the body, signed with the Standard
//! Webhooks scheme; a response may carry `reply` / `replies` (see [`crate::send`]).

use reqwest::header::{CONTENT_TYPE, HeaderValue};

use super::{Attempt, Format, Rendered};
use crate::event::write_millis;
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
/// on every retry, since it is rendered from stored columns only. Written into one
/// buffer of the right size: this runs for every delivery.
pub fn body(event: &StoredEvent) -> String {
    let mut out = String::with_capacity(
        96 + event.id.len() + event.account.len() + event.bot_json.len() + event.data_json.len(),
    );
    out.push_str(r#"{"id":"#);
    push_json_string(&mut out, &event.id);
    out.push_str(r#","type":"#);
    push_json_string(&mut out, &event.event_type);
    out.push_str(r#","timestamp":""#);
    write_millis(&mut out, event.created_at);
    out.push_str(r#"","seq":"#);
    out.push_str(&event.seq.to_string());
    out.push_str(r#","account":"#);
    push_json_string(&mut out, &event.account);
    out.push_str(r#","bot":"#);
    out.push_str(&event.bot_json);
    out.push_str(r#","data":"#);
    out.push_str(&event.data_json);
    out.push('}');
    out
}

/// `s` as a JSON string. Ids, types and account names need no escaping; anything that
/// does is escaped by serde_json.
fn push_json_string(out: &mut String, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The body as it was first written: serde_json for every string, `time`'s own
    /// formatter for the timestamp. The hand-written one must give the same bytes.
    fn reference(event: &StoredEvent) -> String {
        let quote = |s: &str| serde_json::to_string(s).unwrap();
        let t =
            time::OffsetDateTime::from_unix_timestamp_nanos(event.created_at as i128 * 1_000_000)
                .unwrap();
        let timestamp = t
            .format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            ))
            .unwrap();
        format!(
            r#"{{"id":{},"type":{},"timestamp":{},"seq":{},"account":{},"bot":{},"data":{}}}"#,
            quote(&event.id),
            quote(&event.event_type),
            quote(&timestamp),
            event.seq,
            quote(&event.account),
            event.bot_json,
            event.data_json
        )
    }

    #[test]
    fn the_body_is_byte_for_byte_the_reference_rendering() {
        for (id, account, created_at) in [
            ("evt_01JD", "default", 1_764_000_000_123),
            ("evt_\"quoted\\", "sales-2", 0),
            ("evt_\u{1}ctl\t", "ünïcode", 951_782_400_007),
            ("evt_", "a", 253_402_300_799_999),
        ] {
            let event = StoredEvent {
                id: id.into(),
                event_type: "message".into(),
                seq: 42,
                created_at,
                account: account.into(),
                bot_json: r#"{"id":"bot-user","name":"MockBot"}"#.into(),
                data_json: r#"{"text":"hi"}"#.into(),
            };
            let body = body(&event);
            assert_eq!(body, reference(&event));
            serde_json::from_str::<serde_json::Value>(&body).unwrap();
        }
    }
}
