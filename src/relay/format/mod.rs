//! Formats: how a stored event becomes an HTTP request to a webhook, and how a webhook's
//! response becomes replies. Each `format` of the configuration is one implementation of
//! [`Format`] in a file of its own (`standard` today; `slack` and `onebot` next). The
//! store keeps the event, never a body rendered in one format's shape, so a retry
//! renders again — to the same bytes — and a format never sees another's internals.

pub mod standard;

use reqwest::header::{HeaderName, HeaderValue};

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
    /// The webhook's signing keys.
    pub keys: &'a [SigningKey],
    /// Unix seconds of this attempt (signed with it).
    pub now: i64,
    /// Attempts made before this one (formats that announce retries use it).
    pub previous: u32,
}

pub trait Format: Send + Sync {
    /// The request for one attempt at delivering an event.
    fn render(&self, attempt: &Attempt<'_>) -> Rendered;

    /// The replies a successful response asks to send into the event's conversation
    /// (none for most responses), or why the response's reply is refused.
    fn replies(&self, event: &StoredEvent, response: &[u8]) -> Result<Vec<Content>, String>;
}

/// The implementation for a configured `format`.
pub fn for_webhook(format: crate::config::WebhookFormat) -> Box<dyn Format> {
    match format {
        crate::config::WebhookFormat::Standard | crate::config::WebhookFormat::Slack => {
            Box::new(standard::Standard)
        }
    }
}
