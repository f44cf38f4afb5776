//! Formats: how a stored event becomes an HTTP request to a webhook, and how a webhook's
//! response becomes replies. Each `format` of the configuration is one implementation of
//! [`Format`] in a file of its own (`standard`, `slack`, `onebot`). The
//! store keeps the event, never a body rendered in one format's shape, so a retry
//! renders again — to the same bytes — and a format never sees another's internals.

pub mod onebot;
pub mod slack;
pub mod standard;

use async_trait::async_trait;
use reqwest::header::{HeaderName, HeaderValue};

use crate::config::{WebhookFormat, WebhookSettings};
use crate::relay::signing::SigningKey;
use crate::send::Content;
use crate::store::StoredEvent;

/// One attempt's request: the body and the headers that go with it.
pub struct Rendered {
    pub body: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// What one attempt is rendered for.
pub struct Attempt<'a> {
    pub event: &'a StoredEvent,
    /// Unix seconds of this attempt (signed with it).
    pub now: i64,
    /// Attempts made before this one (formats that announce retries use it).
    pub previous: u32,
}

#[async_trait]
pub trait Format: Send + Sync {
    /// The request for one attempt at delivering an event; `Ok(None)` when the format
    /// has nothing to say about this event (it counts as delivered, with no request);
    /// `Err` when it cannot be rendered now (the attempt fails and is retried).
    async fn render(&self, attempt: &Attempt<'_>) -> Result<Option<Rendered>, String>;

    /// The replies a successful response asks to send into the event's conversation
    /// (none for most responses), or why the response's reply is refused.
    async fn replies(&self, event: &StoredEvent, response: &[u8]) -> Result<Vec<Content>, String>;

    /// Whether a response that is not a 2xx still means the event arrived and retrying
    /// would change nothing (Bolt's 404 for an event it has no listener for).
    fn delivered_anyway(&self, _status: u16, _response: &[u8]) -> bool {
        false
    }

    /// Whether this format carries events of this type at all (the others get no
    /// delivery).
    fn takes(&self, _event_type: &str) -> bool {
        true
    }

    /// A request that proves the endpoint is the app it should be, sent when the
    /// webhook starts or is reloaded (Slack's `url_verification`); `None` for none.
    fn handshake(&self, _now: i64) -> Option<Rendered> {
        None
    }
}

/// The implementation for a configured webhook, with its secrets; `onebot` is what
/// OneBot bodies are made with (the id map, the message format).
pub fn for_webhook(webhook: &WebhookSettings, onebot: &crate::onebot::Context) -> Box<dyn Format> {
    let secrets = webhook.secret.as_slice();
    match webhook.format {
        WebhookFormat::Standard => Box::new(standard::Standard::new(
            secrets
                .iter()
                .filter_map(|s| SigningKey::parse(s.expose()).ok())
                .collect(),
        )),
        WebhookFormat::Slack => Box::new(slack::Slack::new(
            &webhook.name,
            secrets
                .iter()
                .map(|s| s.expose().as_bytes().to_vec())
                .collect(),
        )),
        WebhookFormat::Onebot => Box::new(onebot::OneBot::new(
            onebot.clone(),
            secrets
                .first()
                .map(|s| s.expose().as_bytes().to_vec())
                .unwrap_or_default(),
        )),
    }
}
