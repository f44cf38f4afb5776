//! Ingest: where puppet events become stored events. Drops what must not be relayed
//! (the bot's own messages, stale replays), decides which webhooks get a delivery
//! (their filters), and records the event for them in the outbox.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::config::{PuppetSettings, WebhookSettings};
use crate::event::{BotRef, EventData, EventType, new_event_id, now_millis};
use crate::media::MediaLinks;
use crate::outbox::{Destination, Outbox};
use crate::store::{Appended, NewEvent, StoreError};
use time::OffsetDateTime;

/// Which events one webhook receives.
#[derive(Debug, Clone)]
pub struct WebhookRoute {
    pub name: String,
    events: HashSet<EventType>,
    rooms: Vec<String>,
    contacts: Vec<String>,
    /// Only these accounts' events; empty means all.
    accounts: Vec<String>,
    /// `ordering = "conversation"`: deliveries carry their conversation.
    ordered: bool,
}

impl WebhookRoute {
    pub fn new(settings: &WebhookSettings) -> WebhookRoute {
        WebhookRoute {
            name: settings.name.clone(),
            // A Slack app is told about messages only.
            events: match settings.format {
                crate::config::WebhookFormat::Slack => [EventType::Message].into(),
                crate::config::WebhookFormat::Standard => settings.events.iter().copied().collect(),
                // A OneBot bot is told about what OneBot has a shape for (of those
                // listed, when `events` is given).
                crate::config::WebhookFormat::Onebot => crate::onebot::EVENT_TYPES
                    .into_iter()
                    .filter(|t| settings.events.is_empty() || settings.events.contains(t))
                    .collect(),
            },
            rooms: settings.rooms.clone(),
            contacts: settings.contacts.clone(),
            accounts: settings.accounts.clone(),
            ordered: settings.ordering == crate::config::Ordering::Conversation,
        }
    }

    /// Whether this webhook takes the events of `account` (its `accounts` filter).
    pub fn takes_account(&self, account: &str) -> bool {
        self.accounts.is_empty() || self.accounts.iter().any(|a| a == account)
    }

    /// Filters are ANDed: an event passes when its type is wanted, and — for events
    /// that concern a room — the room is listed, and — for events caused by a contact
    /// — the contact is listed. A `rooms` filter therefore excludes direct messages.
    /// Session events (scan, login…) pass room and contact filters.
    pub fn accepts(&self, data: &EventData) -> bool {
        let event_type = data.event_type();
        if event_type == EventType::WebhookTest {
            return false;
        }
        if self.events.is_empty() {
            if !event_type.sent_by_default() {
                return false;
            }
        } else if !self.events.contains(&event_type) {
            return false;
        }
        let concerns_chat = data.conversation().is_some();
        if !self.rooms.is_empty() && concerns_chat {
            match data.room() {
                Some(room) if self.rooms.iter().any(|r| *r == room.id || *r == room.topic) => {}
                _ => return false,
            }
        }
        if !self.contacts.is_empty()
            && let Some(contact) = data.contact()
            && !self.contacts.iter().any(|c| {
                *c == contact.id || *c == contact.name || Some(c) == contact.alias.as_ref()
            })
        {
            return false;
        }
        true
    }
}

/// What became of a reported event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    Stored(Appended),
    /// Not relayed, and why.
    Skipped(&'static str),
}

pub struct Ingest {
    /// The account whose puppet reports here; every event is stored as its.
    account: String,
    outbox: Arc<Outbox>,
    routes: RwLock<Arc<Vec<WebhookRoute>>>,
    /// The account's bot as every event's `bot` carries it (JSON, written once at login).
    bot_json: RwLock<String>,
    skip_self: bool,
    skip_older_than: Duration,
    /// Signs the links of media messages.
    links: Arc<MediaLinks>,
    /// The lease epoch the account's puppet runs under here (0: never held). Events the
    /// puppet hands over carry it, so once another instance holds the account they are
    /// refused; it is kept when the lease is lost for exactly that.
    epoch: std::sync::atomic::AtomicI64,
}

impl Ingest {
    pub fn new(
        account: &str,
        outbox: Arc<Outbox>,
        webhooks: &[WebhookSettings],
        puppet: &PuppetSettings,
        links: Arc<MediaLinks>,
    ) -> Ingest {
        Ingest {
            account: account.to_string(),
            outbox,
            routes: RwLock::new(Arc::new(webhooks.iter().map(WebhookRoute::new).collect())),
            bot_json: RwLock::new(bot_json(&BotRef {
                id: String::new(),
                name: String::new(),
            })),
            skip_self: puppet.skip_self,
            skip_older_than: puppet.skip_older_than,
            links,
            epoch: Default::default(),
        }
    }

    /// The lease epoch of the account's puppet here, once it was held.
    pub fn epoch(&self) -> Option<i64> {
        Some(self.epoch.load(std::sync::atomic::Ordering::Acquire)).filter(|e| *e > 0)
    }

    /// The puppet runs under this lease epoch from now on.
    pub fn set_epoch(&self, epoch: i64) {
        self.epoch
            .store(epoch, std::sync::atomic::Ordering::Release);
    }

    /// The account this ingest stores events for.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// A key unique across accounts: the same room message seen by two bots is two
    /// events. The `default` account keeps v0.1's plain keys.
    fn scoped(&self, key: String) -> String {
        if self.account == crate::config::DEFAULT_ACCOUNT {
            key
        } else {
            format!("{}/{key}", self.account)
        }
    }

    /// Replaces the webhook filters (configuration reload).
    pub fn set_routes(&self, webhooks: &[WebhookSettings]) {
        let routes = Arc::new(webhooks.iter().map(WebhookRoute::new).collect());
        *self.routes.write().unwrap_or_else(|e| e.into_inner()) = routes;
    }

    /// The account events are attributed to; set at login.
    pub fn set_bot(&self, bot: BotRef) {
        *self.bot_json.write().unwrap_or_else(|e| e.into_inner()) = bot_json(&bot);
    }

    /// Stores one event and its deliveries. Returns once committed.
    pub async fn record(&self, data: EventData) -> Result<Recorded, StoreError> {
        let mut recorded = self.record_all(vec![data]).await;
        recorded.pop().unwrap_or(Err(StoreError::Closed))
    }

    /// Several events, in this order, as [`Ingest::record`] records each, committed
    /// together when the store can (a burst from the puppet's stream).
    pub async fn record_all(&self, events: Vec<EventData>) -> Vec<Result<Recorded, StoreError>> {
        let mut results: Vec<Option<Result<Recorded, StoreError>>> =
            Vec::with_capacity(events.len());
        let mut batch = Vec::with_capacity(events.len());
        for mut data in events {
            match self.screen(&mut data) {
                Some(skipped) => results.push(Some(Ok(skipped))),
                None => {
                    let (mut event, destinations) = self.prepare(&data);
                    event.epoch = self.epoch();
                    batch.push((event, destinations));
                    results.push(None);
                }
            }
        }
        let mut stored = self.outbox.record_events(batch).await.into_iter();
        results
            .into_iter()
            .map(|r| match r {
                Some(skipped) => skipped,
                None => stored
                    .next()
                    .unwrap_or(Err(StoreError::Closed))
                    .map(Recorded::Stored),
            })
            .collect()
    }

    /// Signs a media message's link; `Some` when the event is not to be relayed.
    fn screen(&self, data: &mut EventData) -> Option<Recorded> {
        if let EventData::Message(m) = data {
            // A media message's link, signed as it is stored.
            if let Some(media) = m.media.as_mut().filter(|media| media.url.is_empty()) {
                media.url = self.links.url(
                    &self.account,
                    &m.id,
                    m.kind == crate::event::MessageKind::Image,
                    &media.name,
                );
            }
            if self.skip_self && m.from.is_self {
                return Some(Recorded::Skipped("the bot's own message"));
            }
            let age = OffsetDateTime::now_utc() - m.sent_at;
            if age > self.skip_older_than {
                tracing::debug!(message_id = %m.id, age = %age, "dropping a stale message");
                return Some(Recorded::Skipped("older than puppet.skip_older_than"));
            }
        }
        None
    }

    /// Stores an event for exactly these webhooks, bypassing filters (`webhook.test`).
    pub async fn append(
        &self,
        data: EventData,
        hooks: Vec<String>,
    ) -> Result<Appended, StoreError> {
        let destinations = hooks
            .into_iter()
            .map(|webhook| Destination {
                webhook,
                ordered: false,
            })
            .collect();
        self.outbox
            .record_event(self.new_event(&data), destinations)
            .await
    }

    /// An event of this account, and the webhooks that take it, for a caller that
    /// commits it with other work (a send's receipt, with the send's outcome).
    pub fn prepare(&self, data: &EventData) -> (NewEvent, Vec<Destination>) {
        let routes = self
            .routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let recipients = routes
            .iter()
            .filter(|r| r.takes_account(&self.account) && r.accepts(data))
            .map(|r| Destination {
                webhook: r.name.clone(),
                ordered: r.ordered,
            })
            .collect();
        (self.new_event(data), recipients)
    }

    fn new_event(&self, data: &EventData) -> NewEvent {
        let bot_json = self
            .bot_json
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        NewEvent {
            id: new_event_id(),
            event_type: data.event_type().as_str(),
            dedup_key: data.dedup_key().map(|k| self.scoped(k)),
            conversation: data.conversation().map(|c| self.scoped(c.key())),
            created_at: now_millis(),
            account: self.account.clone(),
            bot_json,
            data_json: serde_json::to_string(data).unwrap_or_else(|_| "{}".into()),
            epoch: None,
        }
    }
}

fn bot_json(bot: &BotRef) -> String {
    serde_json::to_string(bot).unwrap_or_else(|_| "{}".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Contact, Gender, MessageData, MessageKind, Room};

    fn contact(id: &str, name: &str) -> Contact {
        Contact {
            id: id.into(),
            name: name.into(),
            alias: None,
            friend: true,
            gender: Gender::Unknown,
            province: None,
            city: None,
            avatar: None,
            is_self: false,
        }
    }

    fn message(room: Option<Room>) -> EventData {
        EventData::Message(MessageData {
            id: "m".into(),
            kind: MessageKind::Text,
            text: "hi".into(),
            from: contact("alice", "Alice"),
            to: None,
            room,
            mentions: vec![],
            mentions_self: false,
            sent_at: OffsetDateTime::now_utc(),
            media: None,
        })
    }

    fn route(toml: &str) -> WebhookRoute {
        let s = crate::config::Settings::from_toml(&format!(
            "[[webhooks]]\nname = \"w\"\nurl = \"http://x\"\nsecret = \"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"\n{toml}"
        ))
        .unwrap();
        WebhookRoute::new(&s.webhooks[0])
    }

    #[test]
    fn filters_select_events() {
        let room = Room {
            id: "r@chatroom".into(),
            topic: "Mock Room".into(),
            member_count: 3,
        };
        let login = EventData::Login {
            user: contact("bot", "Bot"),
        };
        let all = route("");
        assert!(all.accepts(&message(None)) && all.accepts(&login));

        let only_messages = route("events = [\"message\"]");
        assert!(only_messages.accepts(&message(None)));
        assert!(!only_messages.accepts(&login));

        let by_topic = route("rooms = [\"Mock Room\"]");
        assert!(by_topic.accepts(&message(Some(room.clone()))));
        assert!(!by_topic.accepts(&message(None)));
        assert!(by_topic.accepts(&login));

        let by_name = route("contacts = [\"Alice\"]");
        assert!(by_name.accepts(&message(None)));
        let by_other = route("contacts = [\"bob\"]");
        assert!(!by_other.accepts(&message(Some(room))));
    }
}
