//! From the Puppet Service's wire shapes to waas's: the JSON payloads of the event
//! stream, and the payload responses of contacts, rooms and messages. Pure functions,
//! so that every numbering quirk of the protocol is pinned by a unit test.

use serde::Deserialize;
use time::OffsetDateTime;

use super::proto;
use crate::event::{Contact, Gender, MessageData, MessageKind, Room, ScanStatus};

/// `EventResponse.type` numbers (wechaty/grpc `EventType`).
pub mod event_type {
    pub const HEARTBEAT: i32 = 1;
    pub const MESSAGE: i32 = 2;
    pub const DONG: i32 = 3;
    pub const POST: i32 = 4;
    pub const ERROR: i32 = 16;
    pub const FRIENDSHIP: i32 = 17;
    pub const ROOM_INVITE: i32 = 18;
    pub const ROOM_JOIN: i32 = 19;
    pub const ROOM_LEAVE: i32 = 20;
    pub const ROOM_TOPIC: i32 = 21;
    pub const SCAN: i32 = 22;
    pub const READY: i32 = 23;
    pub const RESET: i32 = 24;
    pub const LOGIN: i32 = 25;
    pub const LOGOUT: i32 = 26;
    pub const DIRTY: i32 = 27;
}

/// What a cached payload a DIRTY event invalidates (wechaty-puppet `DirtyType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dirty {
    Message,
    Contact,
    Room,
    RoomMember,
    Friendship,
    Other,
}

/// One item of the event stream, its JSON payload parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    Heartbeat,
    Dong,
    Message {
        id: String,
    },
    Scan {
        qrcode: String,
        status: ScanStatus,
    },
    Login {
        contact_id: String,
    },
    Logout {
        contact_id: Option<String>,
        reason: Option<String>,
    },
    Ready,
    Reset {
        reason: Option<String>,
    },
    Dirty {
        kind: Dirty,
        id: String,
    },
    Friendship {
        id: String,
    },
    RoomJoin {
        room_id: String,
        invitee_ids: Vec<String>,
        inviter_id: String,
    },
    RoomLeave {
        room_id: String,
        removee_ids: Vec<String>,
        remover_id: String,
    },
    RoomTopic {
        room_id: String,
        old_topic: String,
        new_topic: String,
        changer_id: String,
    },
    RoomInvite {
        id: String,
    },
    Error {
        message: String,
    },
    /// A type waas does not relay (posts, or a number newer than this build).
    Ignored(i32),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessagePayload {
    message_id: String,
}

#[derive(Deserialize)]
struct ScanPayload {
    #[serde(default)]
    qrcode: Option<String>,
    #[serde(default)]
    status: i64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LoginPayload {
    contact_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogoutPayload {
    #[serde(default)]
    contact_id: Option<String>,
    #[serde(default)]
    data: Option<String>,
}

#[derive(Deserialize)]
struct DataPayload {
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    gerror: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DirtyPayload {
    payload_type: i64,
    payload_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FriendshipPayload {
    friendship_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RoomJoinPayload {
    room_id: String,
    #[serde(default)]
    invitee_id_list: Vec<String>,
    #[serde(default)]
    inviter_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RoomLeavePayload {
    room_id: String,
    #[serde(default)]
    removee_id_list: Vec<String>,
    #[serde(default)]
    remover_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RoomTopicPayload {
    room_id: String,
    #[serde(default)]
    old_topic: String,
    #[serde(default)]
    new_topic: String,
    #[serde(default)]
    changer_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RoomInvitePayload {
    room_invitation_id: String,
}

fn parse<'a, T: Deserialize<'a>>(kind: &str, payload: &'a str) -> Result<T, String> {
    serde_json::from_str(payload).map_err(|e| format!("unreadable {kind} event payload: {e}"))
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

/// Parses one `EventResponse`.
pub fn stream_event(kind: i32, payload: &str) -> Result<StreamEvent, String> {
    use event_type::*;
    Ok(match kind {
        HEARTBEAT => StreamEvent::Heartbeat,
        DONG => StreamEvent::Dong,
        MESSAGE => StreamEvent::Message {
            id: parse::<MessagePayload>("message", payload)?.message_id,
        },
        SCAN => {
            let p: ScanPayload = parse("scan", payload)?;
            StreamEvent::Scan {
                qrcode: p.qrcode.unwrap_or_default(),
                status: scan_status(p.status),
            }
        }
        LOGIN => StreamEvent::Login {
            contact_id: parse::<LoginPayload>("login", payload)?.contact_id,
        },
        LOGOUT => {
            let p: LogoutPayload = parse("logout", payload)?;
            StreamEvent::Logout {
                contact_id: non_empty(p.contact_id),
                reason: non_empty(p.data),
            }
        }
        READY => StreamEvent::Ready,
        RESET => StreamEvent::Reset {
            reason: parse::<DataPayload>("reset", payload)
                .ok()
                .and_then(|p| non_empty(p.data)),
        },
        DIRTY => {
            let p: DirtyPayload = parse("dirty", payload)?;
            StreamEvent::Dirty {
                kind: dirty_kind(p.payload_type),
                id: p.payload_id,
            }
        }
        FRIENDSHIP => StreamEvent::Friendship {
            id: parse::<FriendshipPayload>("friendship", payload)?.friendship_id,
        },
        ROOM_JOIN => {
            let p: RoomJoinPayload = parse("room-join", payload)?;
            StreamEvent::RoomJoin {
                room_id: p.room_id,
                invitee_ids: p.invitee_id_list,
                inviter_id: p.inviter_id,
            }
        }
        ROOM_LEAVE => {
            let p: RoomLeavePayload = parse("room-leave", payload)?;
            StreamEvent::RoomLeave {
                room_id: p.room_id,
                removee_ids: p.removee_id_list,
                remover_id: p.remover_id,
            }
        }
        ROOM_TOPIC => {
            let p: RoomTopicPayload = parse("room-topic", payload)?;
            StreamEvent::RoomTopic {
                room_id: p.room_id,
                old_topic: p.old_topic,
                new_topic: p.new_topic,
                changer_id: p.changer_id,
            }
        }
        ROOM_INVITE => StreamEvent::RoomInvite {
            id: parse::<RoomInvitePayload>("room-invite", payload)?.room_invitation_id,
        },
        ERROR => {
            // `{"data": "…"}`, or `{"gerror": "<GError as JSON>"}` from newer servers.
            let p = parse::<DataPayload>("error", payload).ok();
            let message = p
                .and_then(|p| non_empty(p.data).or(non_empty(p.gerror)))
                .unwrap_or_else(|| payload.to_string());
            StreamEvent::Error {
                message: error_text(&message),
            }
        }
        other => StreamEvent::Ignored(other),
    })
}

/// A puppet's error as one readable line: a serialized GError
/// (`{"code":2,"details":"Error: …\n    at …"}`) becomes the first line of its
/// details, without the stack trace.
fn error_text(raw: &str) -> String {
    #[derive(Deserialize)]
    struct GError {
        #[serde(default)]
        details: Option<String>,
        #[serde(default)]
        message: Option<String>,
    }
    let text = serde_json::from_str::<GError>(raw)
        .ok()
        .and_then(|g| non_empty(g.details).or(non_empty(g.message)))
        .unwrap_or_else(|| raw.to_string());
    text.lines().next().unwrap_or_default().trim().to_string()
}

/// wechaty-puppet `ScanStatus`: Unknown 0, Cancel 1, Waiting 2, Scanned 3,
/// Confirmed 4, Timeout 5.
pub fn scan_status(raw: i64) -> ScanStatus {
    match raw {
        1 => ScanStatus::Cancel,
        3 => ScanStatus::Scanned,
        4 => ScanStatus::Confirmed,
        5 => ScanStatus::Timeout,
        _ => ScanStatus::Waiting,
    }
}

/// wechaty-puppet `DirtyType`: Message 1, Contact 2, Room 3, RoomMember 4,
/// Friendship 5, Post 6.
pub fn dirty_kind(raw: i64) -> Dirty {
    match raw {
        1 => Dirty::Message,
        2 => Dirty::Contact,
        3 => Dirty::Room,
        4 => Dirty::RoomMember,
        5 => Dirty::Friendship,
        _ => Dirty::Other,
    }
}

/// `MessagePayloadResponse.type` holds wechaty-puppet's `MessageType` numbering, not
/// the proto enum's (wechaty/grpc#65): Unknown 0, Attachment 1, Audio 2, Contact 3,
/// ChatHistory 4, Emoticon 5, Image 6, Text 7, Location 8, MiniProgram 9,
/// GroupNote 10, Transfer 11, RedEnvelope 12, Recalled 13, Url 14, Video 15, Post 16.
pub fn message_kind(raw: i32) -> MessageKind {
    match raw {
        1 => MessageKind::File,
        2 => MessageKind::Audio,
        3 => MessageKind::Contact,
        5 => MessageKind::Emoticon,
        6 => MessageKind::Image,
        7 => MessageKind::Text,
        8 => MessageKind::Location,
        9 => MessageKind::MiniProgram,
        13 => MessageKind::Recalled,
        14 => MessageKind::Url,
        15 => MessageKind::Video,
        // ChatHistory, GroupNote, Transfer, RedEnvelope, Post and anything newer.
        _ => MessageKind::Unknown,
    }
}

/// wechaty `ContactGender`: Unknown 0, Male 1, Female 2.
pub fn gender(raw: i32) -> Gender {
    match raw {
        1 => Gender::Male,
        2 => Gender::Female,
        _ => Gender::Unknown,
    }
}

/// wechaty `FriendshipType`: Confirm 1, Receive 2, Verify 3.
pub fn friendship_kind(raw: i32) -> &'static str {
    match raw {
        1 => "confirm",
        2 => "receive",
        3 => "verify",
        _ => "unknown",
    }
}

/// A contact payload; `self` is decided by the caller, who knows the logged-in user.
pub fn contact(p: proto::ContactPayloadResponse, is_self: bool) -> Contact {
    Contact {
        id: p.id,
        name: p.name,
        alias: non_empty(Some(p.alias)),
        friend: p.friend && !is_self,
        gender: gender(p.gender),
        province: non_empty(Some(p.province)),
        city: non_empty(Some(p.city)),
        avatar: non_empty(Some(p.avatar)),
        is_self,
    }
}

/// A contact known only by id (its payload could not be fetched).
pub fn unknown_contact(id: &str, is_self: bool) -> Contact {
    Contact {
        id: id.to_string(),
        name: String::new(),
        alias: None,
        friend: false,
        gender: Gender::Unknown,
        province: None,
        city: None,
        avatar: None,
        is_self,
    }
}

/// A room payload, and its member ids.
pub fn room(p: proto::RoomPayloadResponse) -> (Room, Vec<String>) {
    let room = Room {
        id: p.id,
        topic: p.topic,
        member_count: p.member_ids.len() as u32,
    };
    (room, p.member_ids)
}

/// When a message was sent: `receive_time`, else the deprecated milliseconds field,
/// else now (a server that fills neither).
pub fn sent_at(p: &proto::MessagePayloadResponse) -> OffsetDateTime {
    if let Some(t) = &p.receive_time
        && let Ok(at) = OffsetDateTime::from_unix_timestamp(t.seconds)
            .map(|at| at + time::Duration::nanoseconds(i64::from(t.nanos.clamp(0, 999_999_999))))
        && (t.seconds != 0 || t.nanos != 0)
    {
        return at;
    }
    if p.timestamp_deprecated > 0
        && let Ok(at) = OffsetDateTime::from_unix_timestamp_nanos(
            i128::from(p.timestamp_deprecated) * 1_000_000,
        )
    {
        return at;
    }
    OffsetDateTime::now_utc()
}

/// A message payload with its talker, listener (direct messages) and room resolved.
pub fn message(
    p: proto::MessagePayloadResponse,
    from: Contact,
    to: Option<Contact>,
    room: Option<Room>,
    bot_id: &str,
) -> MessageData {
    let sent_at = sent_at(&p);
    let mentions_self = !bot_id.is_empty() && p.mention_ids.iter().any(|m| m == bot_id);
    let kind = message_kind(p.r#type);
    // The link is signed by ingest; the size is known once fetched.
    let media = kind.has_media().then(|| {
        let name = if p.filename.is_empty() {
            crate::media::default_name(kind, &p.id)
        } else {
            p.filename.clone()
        };
        Box::new(crate::event::Media {
            mime: crate::media::mime_of(&name),
            name,
            size: None,
            url: String::new(),
        })
    });
    MessageData {
        kind,
        media,
        // Media messages carry their file name where text would be.
        text: if p.text.is_empty() {
            p.filename
        } else {
            p.text
        },
        id: p.id,
        from,
        to: if room.is_some() { None } else { to },
        room,
        mentions: p.mention_ids,
        mentions_self,
        sent_at,
    }
}

/// The FileBox JSON the Puppet Service expects for a file send: `{"type":2,"url"}`
/// (FileBoxType.Url) or `{"type":1,"base64"}` (FileBoxType.Base64), with a name.
pub fn file_box(file: &crate::send::FileRef) -> Result<String, String> {
    let value = match (&file.url, &file.base64) {
        (Some(url), None) => serde_json::json!({"type": 2, "url": url, "name": file.name}),
        (None, Some(data)) => serde_json::json!({"type": 1, "base64": data, "name": file.name}),
        _ => return Err("a file needs exactly one of `url` and `base64`".into()),
    };
    Ok(value.to_string())
}

/// The text of a room message with mentions, as Wechaty's `Room.say` builds it: each
/// mentioned member as `@Name`, joined by U+2005 (the separator WeChat itself uses),
/// then a space and the text. A member already written as `@Name` in the text is not
/// prefixed again.
pub fn mention_text(text: &str, names: &[String]) -> String {
    let prefix: Vec<String> = names
        .iter()
        .map(|n| format!("@{n}"))
        .filter(|at| !text.contains(at.as_str()))
        .collect();
    if prefix.is_empty() {
        text.to_string()
    } else {
        format!("{} {text}", prefix.join("\u{2005}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_types_use_wechaty_puppet_numbering_not_the_proto_enum() {
        // The proto enum would call 6 TEXT and 7 VIDEO; servers send 7 for text.
        assert_eq!(message_kind(7), MessageKind::Text);
        assert_eq!(message_kind(6), MessageKind::Image);
        assert_eq!(message_kind(15), MessageKind::Video);
        assert_eq!(message_kind(1), MessageKind::File);
        assert_eq!(message_kind(2), MessageKind::Audio);
        assert_eq!(message_kind(3), MessageKind::Contact);
        assert_eq!(message_kind(5), MessageKind::Emoticon);
        assert_eq!(message_kind(8), MessageKind::Location);
        assert_eq!(message_kind(9), MessageKind::MiniProgram);
        assert_eq!(message_kind(13), MessageKind::Recalled);
        assert_eq!(message_kind(14), MessageKind::Url);
        for unrelayed in [0, 4, 10, 11, 12, 16, 17, -1] {
            assert_eq!(message_kind(unrelayed), MessageKind::Unknown, "{unrelayed}");
        }
    }

    #[test]
    fn stream_events_parse_their_json_payloads() {
        use event_type::*;
        assert_eq!(
            stream_event(HEARTBEAT, r#"{"data":"hi"}"#),
            Ok(StreamEvent::Heartbeat)
        );
        assert_eq!(
            stream_event(MESSAGE, r#"{"messageId":"m1"}"#),
            Ok(StreamEvent::Message { id: "m1".into() })
        );
        assert_eq!(
            stream_event(SCAN, r#"{"qrcode":"https://q","status":2}"#),
            Ok(StreamEvent::Scan {
                qrcode: "https://q".into(),
                status: ScanStatus::Waiting
            })
        );
        assert_eq!(
            stream_event(SCAN, r#"{"status":4}"#),
            Ok(StreamEvent::Scan {
                qrcode: String::new(),
                status: ScanStatus::Confirmed
            })
        );
        assert_eq!(
            stream_event(LOGIN, r#"{"contactId":"bot"}"#),
            Ok(StreamEvent::Login {
                contact_id: "bot".into()
            })
        );
        assert_eq!(
            stream_event(LOGOUT, r#"{"contactId":"bot","data":"kicked"}"#),
            Ok(StreamEvent::Logout {
                contact_id: Some("bot".into()),
                reason: Some("kicked".into())
            })
        );
        assert_eq!(
            stream_event(DIRTY, r#"{"payloadType":3,"payloadId":"r@chatroom"}"#),
            Ok(StreamEvent::Dirty {
                kind: Dirty::Room,
                id: "r@chatroom".into()
            })
        );
        assert_eq!(
            stream_event(
                ROOM_JOIN,
                r#"{"inviteeIdList":["a","b"],"inviterId":"c","roomId":"r@chatroom","timestamp":1}"#
            ),
            Ok(StreamEvent::RoomJoin {
                room_id: "r@chatroom".into(),
                invitee_ids: vec!["a".into(), "b".into()],
                inviter_id: "c".into()
            })
        );
        assert_eq!(
            stream_event(
                ROOM_TOPIC,
                r#"{"changerId":"a","newTopic":"new","oldTopic":"old","roomId":"r@chatroom","timestamp":1}"#
            ),
            Ok(StreamEvent::RoomTopic {
                room_id: "r@chatroom".into(),
                old_topic: "old".into(),
                new_topic: "new".into(),
                changer_id: "a".into()
            })
        );
        assert_eq!(
            stream_event(
                ERROR,
                r#"{"gerror":"{\"code\":2,\"details\":\"Error: getaddrinfo ENOTFOUND login.wx.qq.com\\n    at AxiosError.from (axios.cjs:168)\"}"}"#
            ),
            Ok(StreamEvent::Error {
                message: "Error: getaddrinfo ENOTFOUND login.wx.qq.com".into()
            })
        );
        assert_eq!(
            stream_event(ERROR, r#"{"data":"plain words"}"#),
            Ok(StreamEvent::Error {
                message: "plain words".into()
            })
        );
        assert_eq!(
            stream_event(POST, r#"{"postId":"p"}"#),
            Ok(StreamEvent::Ignored(4))
        );
        let err = stream_event(MESSAGE, "not json").unwrap_err();
        assert!(err.contains("message event payload"), "{err}");
    }

    fn payload() -> proto::MessagePayloadResponse {
        proto::MessagePayloadResponse {
            id: "m1".into(),
            text: "hello".into(),
            r#type: 7,
            talker_id: "alice".into(),
            room_id: "r@chatroom".into(),
            mention_ids: vec!["bot".into(), "bob".into()],
            receive_time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5_000_000,
            }),
            timestamp_deprecated: 1,
            ..Default::default()
        }
    }

    #[test]
    fn a_room_message_maps_mentions_and_time() {
        let room = Room {
            id: "r@chatroom".into(),
            topic: "R".into(),
            member_count: 3,
        };
        let alice = unknown_contact("alice", false);
        let m = message(
            payload(),
            alice.clone(),
            Some(unknown_contact("x", false)),
            Some(room.clone()),
            "bot",
        );
        assert_eq!(m.kind, MessageKind::Text);
        assert_eq!(m.from, alice);
        assert_eq!(m.to, None, "room messages have no addressee");
        assert_eq!(m.room, Some(room));
        assert!(m.mentions_self);
        assert_eq!(m.mentions, ["bot", "bob"]);
        assert_eq!(m.sent_at.unix_timestamp(), 1_700_000_000);
        assert_eq!(m.sent_at.millisecond(), 5);

        let not_me = message(payload(), alice, None, None, "someone-else");
        assert!(!not_me.mentions_self);
    }

    #[test]
    fn sent_at_falls_back_to_the_deprecated_milliseconds() {
        let mut p = payload();
        p.receive_time = None;
        p.timestamp_deprecated = 1_700_000_000_123;
        let at = sent_at(&p);
        assert_eq!(at.unix_timestamp(), 1_700_000_000);
        assert_eq!(at.millisecond(), 123);
    }

    #[test]
    fn contacts_map_gender_and_empty_strings() {
        let c = contact(
            proto::ContactPayloadResponse {
                id: "alice".into(),
                name: "Alice".into(),
                gender: 2,
                friend: true,
                ..Default::default()
            },
            false,
        );
        assert_eq!(c.gender, Gender::Female);
        assert_eq!(c.alias, None);
        assert_eq!(c.city, None);
        assert!(c.friend);
        assert_eq!(gender(1), Gender::Male);
        assert_eq!(gender(0), Gender::Unknown);
        assert_eq!(friendship_kind(2), "receive");
        assert_eq!(scan_status(5), ScanStatus::Timeout);
    }

    #[test]
    fn file_boxes_and_mention_text() {
        let url = crate::send::FileRef {
            url: Some("https://x/a.pdf".into()),
            base64: None,
            name: "a.pdf".into(),
        };
        let v: serde_json::Value = serde_json::from_str(&file_box(&url).unwrap()).unwrap();
        assert_eq!(v["type"], 2);
        assert_eq!(v["url"], "https://x/a.pdf");
        let inline = crate::send::FileRef {
            url: None,
            base64: Some("aGk=".into()),
            name: "hi.txt".into(),
        };
        let v: serde_json::Value = serde_json::from_str(&file_box(&inline).unwrap()).unwrap();
        assert_eq!(v["type"], 1);
        assert_eq!(v["base64"], "aGk=");

        assert_eq!(
            mention_text("lunch?", &["Alice".into(), "Bob".into()]),
            "@Alice\u{2005}@Bob lunch?"
        );
        assert_eq!(
            mention_text("@Alice lunch?", &["Alice".into()]),
            "@Alice lunch?"
        );
        assert_eq!(mention_text("hi", &[]), "hi");
    }
}
