//! The mock puppet: an embedded, deterministic simulated account. It stands in for
//! WeChat itself (which tests cannot reach), and nothing else: everything it reports
//! goes through the same ingest, store and dispatcher as a real puppet's events.
//!
//! At start it shows a QR code (`scan`), then logs in (`login`, `ready`) at once, or
//! when `POST /v1/mock/scan` confirms the scan if `auto_login = false`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Puppet, PuppetError, Qr, SessionHandle, SessionState};
use crate::config::{MockSettings, PuppetKind};
use crate::event::{
    BotRef, Contact, Conversation, EventData, Gender, MessageData, MessageKind, Room, ScanStatus,
    now_millis,
};
use crate::ingest::{Ingest, Recorded};
use crate::send::{Content, FileRef, Link, Recipient};
use crate::store::StoreError;

/// How many sent messages the mock remembers for `GET /v1/mock/sent`: a long-running
/// mock must not grow without bound.
pub const SENT_KEPT: usize = 10_000;

/// A message the bot sent, as `GET /v1/mock/sent` lists it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SentMessage {
    pub id: String,
    pub to: Conversation,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mentions: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<Link>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<FileRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contact_card: Option<String>,
    pub sent_at: String,
    /// True once the bot recalled it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub recalled: bool,
}

/// An inbound message to simulate.
#[derive(Debug, Clone, Default)]
pub struct Injection {
    /// Sender: contact id or name.
    pub from: String,
    /// Room id or topic; none for a direct message to the bot.
    pub room: Option<String>,
    pub text: String,
    /// Contact ids or names mentioned (room messages only).
    pub mentions: Vec<String>,
    /// The puppet message id; a fresh one when absent. Reusing one simulates a replay.
    pub id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MockError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("the mock account is not logged in yet (POST /v1/mock/scan to confirm the login)")]
    NotLoggedIn,
    #[error("the mock puppet is not running")]
    NotRunning,
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct MockPuppet {
    bot: Contact,
    contacts: Vec<Contact>,
    rooms: Vec<(Room, Vec<String>)>,
    auto_login: bool,
    session: SessionHandle,
    scan_confirmed: Notify,
    ingest: OnceLock<Arc<Ingest>>,
    /// The newest [`SENT_KEPT`] messages the bot sent, oldest first.
    sent: Mutex<VecDeque<SentMessage>>,
}

fn contact(id: &str, name: &str, alias: Option<String>, is_self: bool) -> Contact {
    Contact {
        id: id.to_string(),
        name: name.to_string(),
        alias,
        friend: !is_self,
        gender: Gender::Unknown,
        province: None,
        city: None,
        avatar: None,
        is_self,
    }
}

impl MockPuppet {
    pub fn new(settings: &MockSettings, session: SessionHandle) -> MockPuppet {
        let bot = contact(&settings.bot.id, &settings.bot.name, None, true);
        MockPuppet {
            contacts: settings
                .contacts
                .iter()
                .map(|c| contact(&c.id, &c.name, c.alias.clone(), false))
                .collect(),
            rooms: settings
                .rooms
                .iter()
                .map(|r| {
                    let room = Room {
                        id: r.id.clone(),
                        topic: r.topic.clone(),
                        member_count: r.members.len() as u32,
                    };
                    (room, r.members.clone())
                })
                .collect(),
            bot,
            auto_login: settings.auto_login,
            // Logging itself in, the mock never asks anyone to scan.
            session: if settings.auto_login {
                session.quiet()
            } else {
                session
            },
            scan_confirmed: Notify::new(),
            ingest: OnceLock::new(),
            sent: Mutex::new(VecDeque::new()),
        }
    }

    fn contact_by_id_or_name(&self, key: &str) -> Option<&Contact> {
        std::iter::once(&self.bot)
            .chain(&self.contacts)
            .find(|c| c.id == key)
            .or_else(|| {
                self.contacts
                    .iter()
                    .find(|c| c.name == key || c.alias.as_deref() == Some(key))
            })
    }

    fn room_by_id_or_topic(&self, key: &str) -> Option<&(Room, Vec<String>)> {
        self.rooms
            .iter()
            .find(|(r, _)| r.id == key)
            .or_else(|| self.rooms.iter().find(|(r, _)| r.topic == key))
    }

    /// Confirms the pending QR login (`POST /v1/mock/scan`).
    pub fn confirm_scan(&self) -> bool {
        if self.session.state() == SessionState::WaitingForScan {
            self.scan_confirmed.notify_one();
            true
        } else {
            false
        }
    }

    /// What the bot sent, oldest first (the newest [`SENT_KEPT`]).
    pub fn sent(&self) -> Vec<SentMessage> {
        let sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        sent.iter().cloned().collect()
    }

    /// Simulates an inbound message; returns once it is stored.
    pub async fn inject(&self, msg: Injection) -> Result<(Recorded, String), MockError> {
        let ingest = self.ingest.get().ok_or(MockError::NotRunning)?;
        if self.session.state() != SessionState::LoggedIn {
            return Err(MockError::NotLoggedIn);
        }
        if msg.text.is_empty() {
            return Err(MockError::Invalid("`text` must not be empty".into()));
        }
        let from = self
            .contact_by_id_or_name(&msg.from)
            .ok_or_else(|| {
                MockError::NotFound(format!("no contact `{}` (give an id or a name)", msg.from))
            })?
            .clone();
        let room = match &msg.room {
            None => None,
            Some(key) => {
                let (room, members) = self.room_by_id_or_topic(key).ok_or_else(|| {
                    MockError::NotFound(format!("no room `{key}` (give an id or a topic)"))
                })?;
                if !members.contains(&from.id) {
                    return Err(MockError::Invalid(format!(
                        "`from`: {} is not a member of {}",
                        from.id, room.id
                    )));
                }
                Some((room.clone(), members.clone()))
            }
        };
        let mut mentions = Vec::with_capacity(msg.mentions.len());
        for key in &msg.mentions {
            let Some((_, members)) = &room else {
                return Err(MockError::Invalid("`mentions` needs a `room`".into()));
            };
            let c = self
                .contact_by_id_or_name(key)
                .filter(|c| members.contains(&c.id))
                .ok_or_else(|| {
                    MockError::Invalid(format!("`mentions`: `{key}` is not a member of the room"))
                })?;
            mentions.push(c.id.clone());
        }
        let id = msg
            .id
            .unwrap_or_else(|| format!("mock-{}", ulid::Ulid::new()));
        let data = MessageData {
            id: id.clone(),
            kind: MessageKind::Text,
            text: msg.text,
            to: room.is_none().then(|| self.bot.clone()),
            mentions_self: mentions.contains(&self.bot.id),
            mentions,
            room: room.map(|(r, _)| r),
            from,
            sent_at: OffsetDateTime::now_utc(),
        };
        let recorded = ingest.record(EventData::Message(data)).await?;
        Ok((recorded, id))
    }

    async fn emit(&self, ingest: &Ingest, data: EventData) {
        if let Err(e) = ingest.record(data).await {
            tracing::error!(error = %e, "could not store a session event");
        }
    }
}

#[async_trait]
impl Puppet for MockPuppet {
    fn kind(&self) -> PuppetKind {
        PuppetKind::Mock
    }

    async fn run(self: Arc<Self>, ingest: Arc<Ingest>, shutdown: CancellationToken) {
        let _ = self.ingest.set(ingest.clone());
        ingest.set_bot(BotRef {
            id: self.bot.id.clone(),
            name: self.bot.name.clone(),
        });
        let qr = Qr {
            payload: format!("https://login.weixin.qq.com/l/waas-mock-{}", self.bot.id),
            status: ScanStatus::Waiting,
        };
        self.session.set(
            SessionState::WaitingForScan,
            Some(qr.clone()),
            None,
            Some("waiting for the QR code to be scanned".into()),
        );
        self.emit(
            &ingest,
            EventData::Scan {
                payload: qr.payload.clone(),
                status: qr.status,
            },
        )
        .await;
        if !self.auto_login {
            tracing::info!("mock puppet waiting for POST /v1/mock/scan to log in");
            tokio::select! {
                _ = self.scan_confirmed.notified() => {}
                _ = shutdown.cancelled() => return,
            }
        }
        // Store login and ready first, so that whoever sees the session logged in
        // also finds both events in the store.
        self.emit(
            &ingest,
            EventData::Login {
                user: self.bot.clone(),
            },
        )
        .await;
        self.emit(&ingest, EventData::Ready {}).await;
        self.session
            .set(SessionState::LoggedIn, None, Some(self.bot.clone()), None);
        tracing::info!(user = %self.bot.id, name = %self.bot.name, "mock puppet logged in");
        shutdown.cancelled().await;
    }

    async fn resolve(&self, to: &Recipient) -> Result<Conversation, PuppetError> {
        let found = match to {
            Recipient::Contact(id) => self
                .contacts
                .iter()
                .find(|c| c.id == *id)
                .map(|c| Conversation::Contact(c.id.clone())),
            Recipient::ContactName(name) => self
                .contacts
                .iter()
                .find(|c| c.name == *name || c.alias.as_ref() == Some(name))
                .map(|c| Conversation::Contact(c.id.clone())),
            Recipient::Room(id) => self
                .rooms
                .iter()
                .find(|(r, _)| r.id == *id)
                .map(|(r, _)| Conversation::Room(r.id.clone())),
            Recipient::RoomTopic(topic) => self
                .rooms
                .iter()
                .find(|(r, _)| r.topic == *topic)
                .map(|(r, _)| Conversation::Room(r.id.clone())),
        };
        found.ok_or_else(|| PuppetError::NotFound(format!("no such recipient: {to:?}")))
    }

    async fn contacts(&self) -> Result<Vec<Contact>, PuppetError> {
        Ok(self.contacts.clone())
    }

    async fn recall(&self, message_id: &str) -> Result<(), PuppetError> {
        if self.session.state() != SessionState::LoggedIn {
            return Err(PuppetError::Offline);
        }
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        match sent.iter_mut().find(|m| m.id == message_id) {
            Some(m) => {
                m.recalled = true;
                Ok(())
            }
            None => Err(PuppetError::NotFound(format!(
                "no sent message `{message_id}`"
            ))),
        }
    }

    async fn rooms(&self) -> Result<Vec<Room>, PuppetError> {
        Ok(self.rooms.iter().map(|(r, _)| r.clone()).collect())
    }

    async fn room_members(&self, room_id: &str) -> Result<Vec<Contact>, PuppetError> {
        let (_, members) = self
            .rooms
            .iter()
            .find(|(r, _)| r.id == room_id)
            .ok_or_else(|| PuppetError::NotFound(format!("no room `{room_id}`")))?;
        Ok(members
            .iter()
            .filter_map(|id| {
                std::iter::once(&self.bot)
                    .chain(&self.contacts)
                    .find(|c| c.id == *id)
                    .cloned()
            })
            .collect())
    }

    async fn send(&self, to: &Conversation, content: &Content) -> Result<String, PuppetError> {
        if self.session.state() != SessionState::LoggedIn {
            return Err(PuppetError::Offline);
        }
        let mut sent = SentMessage {
            id: format!("mock-sent-{}", ulid::Ulid::new()),
            to: to.clone(),
            text: None,
            mentions: None,
            link: None,
            file: None,
            contact_card: None,
            sent_at: crate::event::format_millis(now_millis()),
            recalled: false,
        };
        match content {
            Content::Text { text, mentions } => {
                if !mentions.is_empty() {
                    let Conversation::Room(room_id) = to else {
                        return Err(PuppetError::NotFound("mentions need a room".into()));
                    };
                    let members: HashMap<&str, ()> = self
                        .rooms
                        .iter()
                        .find(|(r, _)| r.id == *room_id)
                        .map(|(_, m)| m.iter().map(|m| (m.as_str(), ())).collect())
                        .unwrap_or_default();
                    if let Some(m) = mentions.iter().find(|m| !members.contains_key(m.as_str())) {
                        return Err(PuppetError::NotFound(format!("`{m}` is not in {room_id}")));
                    }
                    sent.mentions = Some(mentions.clone());
                }
                sent.text = Some(text.clone());
            }
            Content::Link(link) => sent.link = Some(link.clone()),
            Content::File(file) => sent.file = Some(file.clone()),
            Content::ContactCard(id) => {
                if !self.contacts.iter().any(|c| c.id == *id) {
                    return Err(PuppetError::NotFound(format!(
                        "no contact `{id}` for the card"
                    )));
                }
                sent.contact_card = Some(id.clone());
            }
        }
        let id = sent.id.clone();
        tracing::debug!(to = ?to, message_id = %id, "mock puppet sent a message");
        let mut kept = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() >= SENT_KEPT {
            kept.pop_front();
        }
        kept.push_back(sent);
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_sent_list_keeps_only_the_newest() {
        let settings = crate::config::Settings::from_toml("").unwrap();
        let session = SessionHandle::new(PuppetKind::Mock);
        let mock = MockPuppet::new(&settings.puppet.mock, session.clone());
        session.set(SessionState::LoggedIn, None, None, None);
        let to = Conversation::Contact("alice".into());
        let mut last = String::new();
        for i in 0..SENT_KEPT + 5 {
            let text = Content::Text {
                text: format!("m{i}"),
                mentions: vec![],
            };
            last = mock.send(&to, &text).await.unwrap();
        }
        let sent = mock.sent();
        assert_eq!(sent.len(), SENT_KEPT);
        assert_eq!(sent[0].text.as_deref(), Some("m5"), "the oldest went first");
        assert_eq!(sent.last().unwrap().id, last);
    }
}
