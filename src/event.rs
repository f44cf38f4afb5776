//! Events: what happened in the WeChat session, in the shape webhooks and the pull API
//! receive.
//!
//! WeChat has *contacts* (people, each with a stable id such as `wxid_…`, a nickname
//! `name`, and an `alias` the bot's owner gave them) and *rooms* (group chats, ids end
//! in `@chatroom`, with a `topic`). A *conversation* is either one contact (a direct
//! chat) or one room. Every event waas stores gets a stable `evt_…` id, which is the
//! `webhook-id` on every delivery of it, and a `seq` that grows by one per stored event.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The kinds of event, as they appear in `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Message,
    Scan,
    Login,
    Logout,
    Ready,
    Friendship,
    RoomJoin,
    RoomLeave,
    RoomTopic,
    RoomInvite,
    Error,
    WebhookTest,
    MessageSent,
    MessageFailed,
}

impl EventType {
    pub const ALL: [EventType; 14] = [
        EventType::Message,
        EventType::Scan,
        EventType::Login,
        EventType::Logout,
        EventType::Ready,
        EventType::Friendship,
        EventType::RoomJoin,
        EventType::RoomLeave,
        EventType::RoomTopic,
        EventType::RoomInvite,
        EventType::Error,
        EventType::WebhookTest,
        EventType::MessageSent,
        EventType::MessageFailed,
    ];

    /// Whether a webhook without an `events` filter receives this type. The send
    /// receipts came after v0.1: a webhook gets them when it lists them, so a v0.1
    /// configuration receives exactly what it did.
    pub fn sent_by_default(self) -> bool {
        !matches!(
            self,
            EventType::MessageSent | EventType::MessageFailed | EventType::WebhookTest
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Message => "message",
            EventType::Scan => "scan",
            EventType::Login => "login",
            EventType::Logout => "logout",
            EventType::Ready => "ready",
            EventType::Friendship => "friendship",
            EventType::RoomJoin => "room.join",
            EventType::RoomLeave => "room.leave",
            EventType::RoomTopic => "room.topic",
            EventType::RoomInvite => "room.invite",
            EventType::Error => "error",
            EventType::WebhookTest => "webhook.test",
            EventType::MessageSent => "message.sent",
            EventType::MessageFailed => "message.failed",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown event type `{s}` (known: {})",
                    EventType::ALL.map(|t| t.as_str()).join(", ")
                )
            })
    }
}

impl Serialize for EventType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Gender {
    Male,
    Female,
    #[default]
    Unknown,
}

/// A WeChat account as waas shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Contact {
    pub id: String,
    pub name: String,
    pub alias: Option<String>,
    /// Whether the bot and this contact are friends (strangers can share a room).
    pub friend: bool,
    pub gender: Gender,
    pub province: Option<String>,
    pub city: Option<String>,
    pub avatar: Option<String>,
    /// True for the bot's own account.
    #[serde(rename = "self")]
    pub is_self: bool,
}

/// A group chat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Room {
    pub id: String,
    pub topic: String,
    pub member_count: u32,
}

/// What a message carries. WeChat has many message types; text is the one most bots
/// care about, the others are announced so a bot can fetch or ignore them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    Text,
    Image,
    File,
    Audio,
    Video,
    Url,
    Contact,
    Emoticon,
    Location,
    MiniProgram,
    Recalled,
    Unknown,
}

/// `data` of a `message` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageData {
    /// The puppet's id of the message; the same message seen twice is stored once.
    pub id: String,
    pub kind: MessageKind,
    pub text: String,
    pub from: Contact,
    /// The addressee of a direct message; `null` in a room.
    pub to: Option<Contact>,
    pub room: Option<Room>,
    /// Contact ids @-mentioned in a room message.
    pub mentions: Vec<String>,
    /// True when the bot itself is mentioned.
    pub mentions_self: bool,
    #[serde(with = "rfc3339_seconds")]
    pub sent_at: OffsetDateTime,
    /// The image or file of a media message, with a link to fetch it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<Box<Media>>,
}

/// The image, file, audio, video or sticker a message carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Media {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// `{public_url}/v1/media/{token}`: a signed, expiring link that needs no other
    /// credential (`media.link_ttl`).
    pub url: String,
}

impl MessageKind {
    /// Kinds whose message carries a file to fetch.
    pub fn has_media(self) -> bool {
        matches!(
            self,
            MessageKind::Image
                | MessageKind::File
                | MessageKind::Audio
                | MessageKind::Video
                | MessageKind::Emoticon
        )
    }
}

impl MessageData {
    /// The conversation a reply goes to: the room, or the sender of a direct message.
    pub fn conversation(&self) -> Conversation {
        match &self.room {
            Some(room) => Conversation::Room(room.id.clone()),
            None => Conversation::Contact(self.from.id.clone()),
        }
    }
}

/// Who a message goes to, as the request names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Recipient {
    Contact(String),
    Room(String),
    ContactName(String),
    RoomTopic(String),
}

/// One chat: a direct chat with a contact, or a room.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Conversation {
    Contact(String),
    Room(String),
}

impl Conversation {
    /// A key for ordering and pacing: room ids contain `@`, contact ids never do, but
    /// the prefix keeps them apart regardless.
    pub fn key(&self) -> String {
        match self {
            Conversation::Contact(id) => format!("contact:{id}"),
            Conversation::Room(id) => format!("room:{id}"),
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Conversation::Contact(id) | Conversation::Room(id) => id,
        }
    }
}

/// The state of a login QR code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScanStatus {
    Waiting,
    Scanned,
    Confirmed,
    Timeout,
    Cancel,
}

/// The payload of each event type: the part of an event that varies.
// Messages are most events, so boxing them would allocate for nearly every event to
// save bytes on the rare others; an event is built once and moved a few times.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum EventData {
    Message(MessageData),
    /// A QR code to scan with the WeChat app to log in.
    Scan {
        payload: String,
        status: ScanStatus,
    },
    Login {
        user: Contact,
    },
    Logout {
        user: Option<Contact>,
        reason: Option<String>,
    },
    Ready {},
    /// A friend request (`receive`), its acceptance (`confirm`) or a verification.
    Friendship {
        id: String,
        kind: String,
        contact: Contact,
        hello: Option<String>,
    },
    RoomJoin {
        room: Room,
        invitees: Vec<Contact>,
        inviter: Option<Contact>,
    },
    RoomLeave {
        room: Room,
        removees: Vec<Contact>,
        remover: Option<Contact>,
    },
    RoomTopic {
        room: Room,
        old_topic: String,
        new_topic: String,
        changer: Option<Contact>,
    },
    RoomInvite {
        id: String,
        topic: String,
        inviter: Contact,
        member_count: u32,
    },
    Error {
        message: String,
    },
    WebhookTest {
        webhook: String,
    },
    /// An outbound send went out (its receipt).
    MessageSent(SendReceipt),
    /// An outbound send failed for good.
    MessageFailed(SendReceipt),
}

/// What became of one outbound send (`out_…`): the receipt of `message.sent` and
/// `message.failed` events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendReceipt {
    /// The send's id, as `POST /v1/messages` answered it.
    pub id: String,
    /// The recipient, as the send named it.
    pub to: Recipient,
    /// The puppet's id of the sent message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl EventData {
    pub fn event_type(&self) -> EventType {
        match self {
            EventData::Message(_) => EventType::Message,
            EventData::Scan { .. } => EventType::Scan,
            EventData::Login { .. } => EventType::Login,
            EventData::Logout { .. } => EventType::Logout,
            EventData::Ready {} => EventType::Ready,
            EventData::Friendship { .. } => EventType::Friendship,
            EventData::RoomJoin { .. } => EventType::RoomJoin,
            EventData::RoomLeave { .. } => EventType::RoomLeave,
            EventData::RoomTopic { .. } => EventType::RoomTopic,
            EventData::RoomInvite { .. } => EventType::RoomInvite,
            EventData::Error { .. } => EventType::Error,
            EventData::WebhookTest { .. } => EventType::WebhookTest,
            EventData::MessageSent(_) => EventType::MessageSent,
            EventData::MessageFailed(_) => EventType::MessageFailed,
        }
    }

    /// The room this event concerns, for webhook filters.
    pub fn room(&self) -> Option<&Room> {
        match self {
            EventData::Message(m) => m.room.as_ref(),
            EventData::RoomJoin { room, .. }
            | EventData::RoomLeave { room, .. }
            | EventData::RoomTopic { room, .. } => Some(room),
            _ => None,
        }
    }

    /// The contact who caused this event, for webhook filters.
    pub fn contact(&self) -> Option<&Contact> {
        match self {
            EventData::Message(m) => Some(&m.from),
            EventData::Friendship { contact, .. } => Some(contact),
            EventData::RoomInvite { inviter, .. } => Some(inviter),
            _ => None,
        }
    }

    /// The conversation, for `ordering = "conversation"`; session events have none.
    pub fn conversation(&self) -> Option<Conversation> {
        match self {
            EventData::Message(m) => Some(m.conversation()),
            EventData::RoomJoin { room, .. }
            | EventData::RoomLeave { room, .. }
            | EventData::RoomTopic { room, .. } => Some(Conversation::Room(room.id.clone())),
            _ => None,
        }
    }

    /// A key under which the same puppet event is stored only once.
    pub fn dedup_key(&self) -> Option<String> {
        match self {
            EventData::Message(m) => Some(format!("message:{}", m.id)),
            EventData::Friendship { id, kind, .. } => Some(format!("friendship:{id}:{kind}")),
            EventData::RoomInvite { id, .. } => Some(format!("room.invite:{id}")),
            // One receipt per send, however often its outcome is written.
            EventData::MessageSent(r) | EventData::MessageFailed(r) => {
                Some(format!("receipt:{}", r.id))
            }
            _ => None,
        }
    }
}

/// The bot account an event belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BotRef {
    pub id: String,
    pub name: String,
}

/// A new event id: `evt_` and a ULID, so ids sort by creation time.
pub fn new_event_id() -> String {
    format!("evt_{}", ulid::Ulid::new())
}

/// Milliseconds since the Unix epoch; the store keeps all times in this unit.
pub type Millis = i64;

pub fn now_millis() -> Millis {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as Millis
}

/// `2026-11-23T18:00:00.123Z`, the `timestamp` format of the contract.
pub fn format_millis(ms: Millis) -> String {
    let mut out = String::with_capacity(24);
    write_millis(&mut out, ms);
    out
}

/// Appends [`format_millis`]'s text to `out` (it is in every webhook body, and a general
/// formatter costs more than the rest of the body).
pub fn write_millis(out: &mut String, ms: Millis) {
    use std::fmt::Write;
    let t = OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let (date, time) = (t.date(), t.time());
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        date.year(),
        u8::from(date.month()),
        date.day(),
        time.hour(),
        time.minute(),
        time.second(),
        time.millisecond()
    );
}

/// RFC 3339 with whole seconds and `Z` (`2026-11-23T17:59:59Z`).
pub mod rfc3339_seconds {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;

    pub fn format(t: OffsetDateTime) -> String {
        t.to_offset(time::UtcOffset::UTC)
            .format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
            ))
            .unwrap_or_default()
    }

    pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let s = String::deserialize(d)?;
        OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_round_trip() {
        for t in EventType::ALL {
            assert_eq!(t.as_str().parse::<EventType>().unwrap(), t);
        }
        assert!("room.explode".parse::<EventType>().is_err());
    }

    #[test]
    fn timestamps_have_the_contract_format() {
        assert_eq!(format_millis(1_779_559_200_123), "2026-05-23T18:00:00.123Z");
        let t = OffsetDateTime::from_unix_timestamp(1_779_559_199).unwrap();
        assert_eq!(rfc3339_seconds::format(t), "2026-05-23T17:59:59Z");
    }

    #[test]
    fn message_data_serializes_in_snake_case_with_self() {
        let alice = Contact {
            id: "alice".into(),
            name: "Alice".into(),
            alias: None,
            friend: true,
            gender: Gender::Unknown,
            province: None,
            city: None,
            avatar: None,
            is_self: false,
        };
        let m = MessageData {
            id: "m1".into(),
            kind: MessageKind::MiniProgram,
            text: "hi".into(),
            from: alice,
            to: None,
            room: None,
            mentions: vec![],
            mentions_self: false,
            sent_at: OffsetDateTime::from_unix_timestamp(0).unwrap(),
            media: None,
        };
        let v = serde_json::to_value(EventData::Message(m)).unwrap();
        assert_eq!(v["kind"], "mini_program");
        assert_eq!(v["from"]["self"], false);
        assert_eq!(v["from"]["gender"], "unknown");
        assert_eq!(v["room"], serde_json::Value::Null);
        assert_eq!(v["sent_at"], "1970-01-01T00:00:00Z");
    }
}
