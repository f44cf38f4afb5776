//! The mock puppet: an embedded, deterministic simulated account. It stands in for
//! WeChat itself (which tests cannot reach), and nothing else: everything it reports
//! goes through the same ingest, store and dispatcher as a real puppet's events.
//!
//! At start it shows a QR code (`scan`), then logs in (`login`, `ready`) at once, or
//! when `POST /v1/mock/scan` confirms the scan if `auto_login = false`.
//!
//! It keeps a small world (contacts, rooms, pending friend requests and room
//! invitations) that operations change and report as WeChat would (`room.join`,
//! `room.leave`, `room.topic`, `friendship`), so every operation is testable offline.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::MediaFile;
use super::{Puppet, PuppetError, Qr, SessionHandle, SessionState};
use crate::action::Action;
use crate::config::{MockSettings, PuppetKind};
use crate::event::{
    BotRef, Contact, Conversation, EventData, Gender, MessageData, MessageKind, Room, ScanStatus,
    now_millis,
};
use crate::ingest::{Ingest, Recorded};
use crate::media::ImageSize;
use crate::send::{Content, FileRef, Link, Recipient};
use crate::store::StoreError;
use futures_util::StreamExt;

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
    pub image: Option<FileRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contact_card: Option<String>,
    /// A file uploaded with multipart, as the mock read it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload: Option<SentUpload>,
    pub sent_at: String,
    /// True once the bot recalled it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub recalled: bool,
}

/// An uploaded file the bot sent: its name, kind, size and digest.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SentUpload {
    pub name: String,
    /// Sent as a picture.
    pub image: bool,
    pub size: u64,
    /// Hex SHA-256 of the bytes the mock read.
    pub sha256: String,
}

/// Reads an upload back in chunks: its size and digest.
async fn read_upload(path: &std::path::Path) -> Result<(u64, String), PuppetError> {
    use sha2::{Digest, Sha256};
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| PuppetError::NotFound(format!("the uploaded file is gone ({e})")))?;
    let mut digest = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file
            .read(&mut buf)
            .await
            .map_err(|e| PuppetError::Failed(format!("reading the upload: {e}")))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        digest.update(&buf[..n]);
    }
    let hex = digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((size, hex))
}

/// How many pending friend requests and room invitations the mock keeps.
pub const PENDING_KEPT: usize = 1_000;

/// A friend request the bot made (`POST /v1/friendships`), as
/// `GET /v1/mock/friendships` lists it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FriendRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contact: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wechat_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    pub hello: String,
}

/// A room as the mock holds it.
#[derive(Debug, Clone)]
struct MockRoom {
    room: Room,
    members: Vec<String>,
    announce: Option<String>,
}

/// What operations change: the mock's contacts and rooms, and what waits for the bot.
struct World {
    contacts: Vec<Contact>,
    rooms: Vec<MockRoom>,
    /// Friend requests received, by id, oldest first.
    friend_requests: VecDeque<(String, Contact, Option<String>)>,
    /// Room invitations received: id, inviter, room.
    invitations: VecDeque<(String, Contact, Room)>,
    /// Friend requests the bot made, oldest first.
    requested: VecDeque<FriendRequest>,
    /// The newest [`SENT_KEPT`] messages the bot sent, oldest first.
    sent: VecDeque<SentMessage>,
    /// The files of the newest [`MEDIA_KEPT`] media messages, by message id.
    media: VecDeque<(String, InjectedMedia)>,
}

fn keep<T>(list: &mut VecDeque<T>, item: T) {
    if list.len() >= PENDING_KEPT {
        list.pop_front();
    }
    list.push_back(item);
}

impl World {
    fn contact(&self, bot: &Contact, id: &str) -> Option<Contact> {
        std::iter::once(bot)
            .chain(&self.contacts)
            .find(|c| c.id == id)
            .cloned()
    }

    fn contact_by_id_or_name(&self, bot: &Contact, key: &str) -> Option<Contact> {
        self.contact(bot, key).or_else(|| {
            self.contacts
                .iter()
                .find(|c| c.name == key || c.alias.as_deref() == Some(key))
                .cloned()
        })
    }

    fn room_by_id_or_topic(&self, key: &str) -> Option<&MockRoom> {
        self.rooms
            .iter()
            .find(|r| r.room.id == key)
            .or_else(|| self.rooms.iter().find(|r| r.room.topic == key))
    }

    fn room_mut(&mut self, id: &str) -> Result<&mut MockRoom, PuppetError> {
        self.rooms
            .iter_mut()
            .find(|r| r.room.id == id)
            .ok_or_else(|| PuppetError::NotFound(format!("no room `{id}`")))
    }

    fn known(&self, bot: &Contact, id: &str) -> Result<Contact, PuppetError> {
        self.contact(bot, id)
            .ok_or_else(|| PuppetError::NotFound(format!("no contact `{id}`")))
    }

    /// Whether `action` can be carried out now: everything it names exists.
    fn check(&self, bot: &Contact, action: &Action) -> Result<(), PuppetError> {
        let room = |id: &str| {
            self.rooms
                .iter()
                .find(|r| r.room.id == id)
                .ok_or_else(|| PuppetError::NotFound(format!("no room `{id}`")))
        };
        let missing =
            |what: &str, id: &str| Err(PuppetError::NotFound(format!("no {what} `{id}`")));
        match action {
            Action::Recall { message_id, .. } => {
                if !self.sent.iter().any(|m| m.id == *message_id) {
                    return missing("sent message", message_id);
                }
            }
            Action::RoomCreate { members, .. } => {
                for id in members {
                    self.known(bot, id)?;
                }
            }
            Action::RoomAdd { room: id, contacts } => {
                room(id)?;
                for c in contacts {
                    self.known(bot, c)?;
                }
            }
            Action::RoomRemove { room: id, contact } => {
                if !room(id)?.members.contains(contact) {
                    return Err(PuppetError::NotFound(format!(
                        "`{contact}` is not a member of `{id}`"
                    )));
                }
            }
            Action::RoomUpdate { room: id, .. } | Action::RoomQuit { room: id } => {
                room(id)?;
            }
            Action::FriendshipAccept { id } => {
                if !self.friend_requests.iter().any(|(r, _, _)| r == id) {
                    return missing("friend request", id);
                }
            }
            Action::FriendshipAdd { contact, .. } => {
                if let Some(id) = contact {
                    self.known(bot, id)?;
                }
            }
            Action::RoomInvitationAccept { id } => {
                if !self.invitations.iter().any(|(i, _, _)| i == id) {
                    return missing("room invitation", id);
                }
            }
            Action::ContactAlias { contact, .. } => {
                if !self.contacts.iter().any(|c| c.id == *contact) {
                    return missing("contact", contact);
                }
            }
        }
        Ok(())
    }

    /// Carries out `action`: its result and the events WeChat would report.
    fn apply(
        &mut self,
        bot: &Contact,
        action: &Action,
    ) -> Result<(Option<String>, Vec<EventData>), PuppetError> {
        self.check(bot, action)?;
        let mut events = Vec::new();
        let result = match action {
            Action::Recall { message_id, .. } => {
                let m = self
                    .sent
                    .iter_mut()
                    .find(|m| m.id == *message_id)
                    .ok_or_else(|| {
                        PuppetError::NotFound(format!("no sent message `{message_id}`"))
                    })?;
                m.recalled = true;
                None
            }
            Action::RoomCreate { topic, members } => {
                let invitees = members
                    .iter()
                    .map(|id| self.known(bot, id))
                    .collect::<Result<Vec<_>, _>>()?;
                let room = Room {
                    id: format!("mock-{}@chatroom", ulid::Ulid::new()),
                    topic: topic.clone(),
                    member_count: invitees.len() as u32 + 1,
                };
                let ids = std::iter::once(bot.id.clone())
                    .chain(invitees.iter().map(|c| c.id.clone()))
                    .collect();
                self.rooms.push(MockRoom {
                    room: room.clone(),
                    members: ids,
                    announce: None,
                });
                let id = room.id.clone();
                events.push(EventData::RoomJoin {
                    room,
                    invitees,
                    inviter: Some(bot.clone()),
                });
                Some(id)
            }
            Action::RoomAdd { room, contacts } => {
                let added = contacts
                    .iter()
                    .map(|id| self.known(bot, id))
                    .collect::<Result<Vec<_>, _>>()?;
                let r = self.room_mut(room)?;
                let added: Vec<Contact> = added
                    .into_iter()
                    .filter(|c| !r.members.contains(&c.id))
                    .collect();
                r.members.extend(added.iter().map(|c| c.id.clone()));
                r.room.member_count = r.members.len() as u32;
                if !added.is_empty() {
                    events.push(EventData::RoomJoin {
                        room: r.room.clone(),
                        invitees: added,
                        inviter: Some(bot.clone()),
                    });
                }
                None
            }
            Action::RoomRemove { room, contact } => {
                let removed = self.known(bot, contact)?;
                let r = self.room_mut(room)?;
                let Some(at) = r.members.iter().position(|m| m == contact) else {
                    return Err(PuppetError::NotFound(format!(
                        "`{contact}` is not a member of `{room}`"
                    )));
                };
                r.members.remove(at);
                r.room.member_count = r.members.len() as u32;
                events.push(EventData::RoomLeave {
                    room: r.room.clone(),
                    removees: vec![removed],
                    remover: Some(bot.clone()),
                });
                None
            }
            Action::RoomUpdate {
                room,
                topic,
                announce,
            } => {
                let r = self.room_mut(room)?;
                if let Some(new_topic) = topic.clone()
                    && new_topic != r.room.topic
                {
                    let old_topic = std::mem::replace(&mut r.room.topic, new_topic.clone());
                    events.push(EventData::RoomTopic {
                        room: r.room.clone(),
                        old_topic,
                        new_topic,
                        changer: Some(bot.clone()),
                    });
                }
                if let Some(announce) = announce {
                    r.announce = Some(announce.clone());
                }
                None
            }
            Action::RoomQuit { room } => {
                let at = self
                    .rooms
                    .iter()
                    .position(|r| r.room.id == *room)
                    .ok_or_else(|| PuppetError::NotFound(format!("no room `{room}`")))?;
                let mut gone = self.rooms.remove(at);
                gone.room.member_count = gone.room.member_count.saturating_sub(1);
                events.push(EventData::RoomLeave {
                    room: gone.room,
                    removees: vec![bot.clone()],
                    remover: None,
                });
                None
            }
            Action::FriendshipAccept { id } => {
                let at = self
                    .friend_requests
                    .iter()
                    .position(|(r, _, _)| r == id)
                    .ok_or_else(|| PuppetError::NotFound(format!("no friend request `{id}`")))?;
                let (_, mut contact, _) = self.friend_requests.remove(at).expect("found");
                contact.friend = true;
                match self.contacts.iter_mut().find(|c| c.id == contact.id) {
                    Some(known) => known.friend = true,
                    None => self.contacts.push(contact.clone()),
                }
                events.push(EventData::Friendship {
                    id: id.clone(),
                    kind: "confirm".into(),
                    contact,
                    hello: None,
                });
                None
            }
            Action::FriendshipAdd {
                contact,
                wechat_id,
                phone,
                hello,
            } => {
                keep(
                    &mut self.requested,
                    FriendRequest {
                        contact: contact.clone(),
                        wechat_id: wechat_id.clone(),
                        phone: phone.clone(),
                        hello: hello.clone(),
                    },
                );
                None
            }
            Action::RoomInvitationAccept { id } => {
                let at = self
                    .invitations
                    .iter()
                    .position(|(i, _, _)| i == id)
                    .ok_or_else(|| PuppetError::NotFound(format!("no room invitation `{id}`")))?;
                let (_, inviter, mut room) = self.invitations.remove(at).expect("found");
                if !self.contacts.iter().any(|c| c.id == inviter.id) {
                    self.contacts.push(inviter.clone());
                }
                let mut members = vec![bot.id.clone(), inviter.id.clone()];
                if let Some(known) = self.rooms.iter_mut().find(|r| r.room.id == room.id) {
                    known.members.push(bot.id.clone());
                    known.room.member_count = known.members.len() as u32;
                    room = known.room.clone();
                } else {
                    members.dedup();
                    room.member_count = room.member_count.max(members.len() as u32);
                    self.rooms.push(MockRoom {
                        room: room.clone(),
                        members,
                        announce: None,
                    });
                }
                let id = room.id.clone();
                events.push(EventData::RoomJoin {
                    room,
                    invitees: vec![bot.clone()],
                    inviter: Some(inviter),
                });
                Some(id)
            }
            Action::ContactAlias { contact, alias } => {
                let c = self
                    .contacts
                    .iter_mut()
                    .find(|c| c.id == *contact)
                    .ok_or_else(|| PuppetError::NotFound(format!("no contact `{contact}`")))?;
                c.alias = alias.clone().filter(|a| !a.is_empty());
                None
            }
        };
        Ok((result, events))
    }
}

/// Who sends a simulated friend request or invitation: a known contact (id or name) or
/// a stranger.
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Someone {
    Known(String),
    Stranger(Stranger),
}

/// Someone the bot does not know yet.
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Stranger {
    pub id: String,
    pub name: String,
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
    /// An image or file the message carries instead of text.
    pub media: Option<InjectedMedia>,
}

/// The image, file, audio or video of a simulated message.
#[derive(Debug, Clone)]
pub struct InjectedMedia {
    pub kind: MessageKind,
    pub name: String,
    pub bytes: bytes::Bytes,
}

/// How many injected files the mock keeps to serve (`GET /v1/media/…`); older ones are
/// gone, as WeChat forgets old media.
pub const MEDIA_KEPT: usize = 64;

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
    world: Mutex<World>,
    auto_login: bool,
    session: SessionHandle,
    scan_confirmed: Notify,
    ingest: OnceLock<Arc<Ingest>>,
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
        let world = World {
            contacts: settings
                .contacts
                .iter()
                .map(|c| contact(&c.id, &c.name, c.alias.clone(), false))
                .collect(),
            rooms: settings
                .rooms
                .iter()
                .map(|r| MockRoom {
                    room: Room {
                        id: r.id.clone(),
                        topic: r.topic.clone(),
                        member_count: r.members.len() as u32,
                    },
                    members: r.members.clone(),
                    announce: None,
                })
                .collect(),
            friend_requests: VecDeque::new(),
            invitations: VecDeque::new(),
            requested: VecDeque::new(),
            sent: VecDeque::new(),
            media: VecDeque::new(),
        };
        MockPuppet {
            world: Mutex::new(world),
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
        }
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The ingest, once running and logged in.
    fn running(&self) -> Result<&Arc<Ingest>, MockError> {
        let ingest = self.ingest.get().ok_or(MockError::NotRunning)?;
        if self.session.state() != SessionState::LoggedIn {
            return Err(MockError::NotLoggedIn);
        }
        Ok(ingest)
    }

    /// The room's announcement, as set through `PATCH /v1/rooms/{id}`.
    pub fn announcement(&self, room_id: &str) -> Option<String> {
        self.world()
            .rooms
            .iter()
            .find(|r| r.room.id == room_id)
            .and_then(|r| r.announce.clone())
    }

    /// The friend requests the bot made, oldest first.
    pub fn requested(&self) -> Vec<FriendRequest> {
        self.world().requested.iter().cloned().collect()
    }

    fn someone(&self, who: Someone) -> Result<Contact, MockError> {
        match who {
            Someone::Known(key) => self
                .world()
                .contact_by_id_or_name(&self.bot, &key)
                .filter(|c| !c.is_self)
                .ok_or_else(|| {
                    MockError::NotFound(format!(
                        "no contact `{key}` (give an id or a name, or {{\"id\", \"name\"}} for a stranger)"
                    ))
                }),
            Someone::Stranger(Stranger { id, name }) => {
                if id.trim().is_empty() || name.trim().is_empty() {
                    return Err(MockError::Invalid(
                        "`from.id` and `from.name` must not be empty".into(),
                    ));
                }
                if let Some(known) = self.world().contact(&self.bot, &id) {
                    return Ok(known);
                }
                let mut c = contact(&id, &name, None, false);
                c.friend = false;
                Ok(c)
            }
        }
    }

    /// Simulates a friend request to the bot (`POST /v1/mock/friendships`): a
    /// `friendship` event of kind `receive`, whose id `POST /v1/friendships/{id}/accept`
    /// takes.
    pub async fn request_friendship(
        &self,
        from: Someone,
        hello: Option<String>,
    ) -> Result<(Recorded, String), MockError> {
        let ingest = self.running()?;
        let contact = self.someone(from)?;
        let id = format!("mock-friendship-{}", ulid::Ulid::new());
        keep(
            &mut self.world().friend_requests,
            (id.clone(), contact.clone(), hello.clone()),
        );
        let recorded = ingest
            .record(EventData::Friendship {
                id: id.clone(),
                kind: "receive".into(),
                contact,
                hello,
            })
            .await?;
        Ok((recorded, id))
    }

    /// Simulates an invitation into a room (`POST /v1/mock/room-invitations`): a
    /// `room.invite` event whose id `POST /v1/room-invitations/{id}/accept` takes.
    pub async fn invite_to_room(
        &self,
        from: Someone,
        room_id: String,
        topic: String,
    ) -> Result<(Recorded, String), MockError> {
        let ingest = self.running()?;
        if !room_id.contains('@') || topic.trim().is_empty() {
            return Err(MockError::Invalid(
                "`room` needs an `id` with `@` (like `friends@chatroom`) and a `topic`".into(),
            ));
        }
        let inviter = self.someone(from)?;
        let id = format!("mock-invitation-{}", ulid::Ulid::new());
        let room = Room {
            id: room_id,
            topic: topic.clone(),
            member_count: 2,
        };
        keep(
            &mut self.world().invitations,
            (id.clone(), inviter.clone(), room),
        );
        let recorded = ingest
            .record(EventData::RoomInvite {
                id: id.clone(),
                topic,
                inviter,
                member_count: 2,
            })
            .await?;
        Ok((recorded, id))
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
        self.world().sent.iter().cloned().collect()
    }

    /// Simulates an inbound message; returns once it is stored.
    pub async fn inject(&self, msg: Injection) -> Result<(Recorded, String), MockError> {
        let ingest = self.running()?;
        if let Some(m) = &msg.media {
            if !m.kind.has_media() {
                return Err(MockError::Invalid(
                    "`media.kind` must be image, file, audio or video".into(),
                ));
            }
            crate::send::check_file_name("media", &m.name).map_err(|e| MockError::Invalid(e.0))?;
        } else if msg.text.is_empty() {
            return Err(MockError::Invalid("`text` must not be empty".into()));
        }
        let (from, room, mentions) = {
            let world = self.world();
            let from = world
                .contact_by_id_or_name(&self.bot, &msg.from)
                .ok_or_else(|| {
                    MockError::NotFound(format!("no contact `{}` (give an id or a name)", msg.from))
                })?;
            let room = match &msg.room {
                None => None,
                Some(key) => {
                    let r = world.room_by_id_or_topic(key).ok_or_else(|| {
                        MockError::NotFound(format!("no room `{key}` (give an id or a topic)"))
                    })?;
                    if !r.members.contains(&from.id) {
                        return Err(MockError::Invalid(format!(
                            "`from`: {} is not a member of {}",
                            from.id, r.room.id
                        )));
                    }
                    Some(r.clone())
                }
            };
            let mut mentions = Vec::with_capacity(msg.mentions.len());
            for key in &msg.mentions {
                let Some(r) = &room else {
                    return Err(MockError::Invalid("`mentions` needs a `room`".into()));
                };
                let c = world
                    .contact_by_id_or_name(&self.bot, key)
                    .filter(|c| r.members.contains(&c.id))
                    .ok_or_else(|| {
                        MockError::Invalid(format!(
                            "`mentions`: `{key}` is not a member of the room"
                        ))
                    })?;
                mentions.push(c.id.clone());
            }
            (from, room, mentions)
        };
        let id = msg
            .id
            .unwrap_or_else(|| format!("mock-{}", ulid::Ulid::new()));
        let media = msg.media.map(|m| {
            let data = crate::event::Media {
                name: m.name.clone(),
                mime: crate::media::mime_of(&m.name),
                size: Some(m.bytes.len() as u64),
                url: String::new(),
            };
            let kind = m.kind;
            let media = &mut self.world().media;
            media.retain(|(known, _)| *known != id);
            if media.len() >= MEDIA_KEPT {
                media.pop_front();
            }
            media.push_back((id.clone(), m));
            (kind, data)
        });
        let data = MessageData {
            id: id.clone(),
            kind: media.as_ref().map_or(MessageKind::Text, |(k, _)| *k),
            text: match (&media, msg.text.is_empty()) {
                (Some((_, m)), true) => m.name.clone(),
                _ => msg.text,
            },
            to: room.is_none().then(|| self.bot.clone()),
            mentions_self: mentions.contains(&self.bot.id),
            mentions,
            room: room.map(|r| r.room),
            from,
            sent_at: OffsetDateTime::now_utc(),
            media: media.map(|(_, m)| Box::new(m)),
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
        let world = self.world();
        let found = match to {
            Recipient::Contact(id) => world
                .contacts
                .iter()
                .find(|c| c.id == *id)
                .map(|c| Conversation::Contact(c.id.clone())),
            Recipient::ContactName(name) => world
                .contacts
                .iter()
                .find(|c| c.name == *name || c.alias.as_ref() == Some(name))
                .map(|c| Conversation::Contact(c.id.clone())),
            Recipient::Room(id) => world
                .rooms
                .iter()
                .find(|r| r.room.id == *id)
                .map(|r| Conversation::Room(r.room.id.clone())),
            Recipient::RoomTopic(topic) => world
                .rooms
                .iter()
                .find(|r| r.room.topic == *topic)
                .map(|r| Conversation::Room(r.room.id.clone())),
        };
        found.ok_or_else(|| PuppetError::NotFound(format!("no such recipient: {to:?}")))
    }

    async fn contacts(&self) -> Result<Vec<Contact>, PuppetError> {
        Ok(self.world().contacts.clone())
    }

    async fn rooms(&self) -> Result<Vec<Room>, PuppetError> {
        Ok(self.world().rooms.iter().map(|r| r.room.clone()).collect())
    }

    async fn room_members(&self, room_id: &str) -> Result<Vec<Contact>, PuppetError> {
        let world = self.world();
        let r = world
            .rooms
            .iter()
            .find(|r| r.room.id == room_id)
            .ok_or_else(|| PuppetError::NotFound(format!("no room `{room_id}`")))?;
        Ok(r.members
            .iter()
            .filter_map(|id| world.contact(&self.bot, id))
            .collect())
    }

    async fn media(
        &self,
        message_id: &str,
        _image: Option<ImageSize>,
    ) -> Result<MediaFile, PuppetError> {
        // One size of each image: the mock serves what was injected.
        let found = self
            .world()
            .media
            .iter()
            .find(|(id, _)| id == message_id)
            .map(|(_, m)| m.clone());
        let m = found.ok_or_else(|| {
            PuppetError::NotFound(format!(
                "the mock keeps the files of its newest {MEDIA_KEPT} media messages only, and `{message_id}` is not one of them"
            ))
        })?;
        const CHUNK: usize = 64 * 1024;
        let chunks: Vec<Result<bytes::Bytes, PuppetError>> = (0..m.bytes.len())
            .step_by(CHUNK)
            .map(|at| Ok(m.bytes.slice(at..(at + CHUNK).min(m.bytes.len()))))
            .collect();
        Ok(MediaFile {
            name: m.name,
            size: Some(m.bytes.len() as u64),
            body: futures_util::stream::iter(chunks).boxed(),
        })
    }

    async fn check(&self, action: &Action) -> Result<(), PuppetError> {
        self.world().check(&self.bot, action)
    }

    async fn perform(&self, action: &Action) -> Result<Option<String>, PuppetError> {
        if self.session.state() != SessionState::LoggedIn {
            return Err(PuppetError::Offline);
        }
        let (result, events) = self.world().apply(&self.bot, action)?;
        if let Some(ingest) = self.ingest.get() {
            for event in events {
                self.emit(ingest, event).await;
            }
        }
        Ok(result)
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
            image: None,
            contact_card: None,
            upload: None,
            sent_at: crate::event::format_millis(now_millis()),
            recalled: false,
        };
        match content {
            Content::Text { text, mentions } => {
                if !mentions.is_empty() {
                    let Conversation::Room(room_id) = to else {
                        return Err(PuppetError::NotFound("mentions need a room".into()));
                    };
                    let members: HashSet<String> = self
                        .world()
                        .rooms
                        .iter()
                        .find(|r| r.room.id == *room_id)
                        .map(|r| r.members.iter().cloned().collect())
                        .unwrap_or_default();
                    if let Some(m) = mentions.iter().find(|m| !members.contains(m.as_str())) {
                        return Err(PuppetError::NotFound(format!("`{m}` is not in {room_id}")));
                    }
                    sent.mentions = Some(mentions.clone());
                }
                sent.text = Some(text.clone());
            }
            Content::Link(link) => sent.link = Some(link.clone()),
            Content::File(file) => sent.file = Some(file.clone()),
            Content::Image(image) => sent.image = Some(image.clone()),
            Content::Upload(upload) => {
                // What WeChat would receive: the bytes read back from the upload.
                let (size, sha256) = read_upload(&upload.path).await?;
                sent.upload = Some(SentUpload {
                    name: upload.name.clone(),
                    image: upload.image,
                    size,
                    sha256,
                });
            }
            Content::ContactCard(id) => {
                if !self.world().contacts.iter().any(|c| c.id == *id) {
                    return Err(PuppetError::NotFound(format!(
                        "no contact `{id}` for the card"
                    )));
                }
                sent.contact_card = Some(id.clone());
            }
        }
        let id = sent.id.clone();
        tracing::debug!(to = ?to, message_id = %id, "mock puppet sent a message");
        let kept = &mut self.world().sent;
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
