//! Operations that change WeChat other than sending a message: recall, rooms,
//! friendships, room invitations, contact aliases. Each is queued durably like a send
//! (an `op_…` id in the send queue, so it survives a restart and is paced with the
//! sends into the same conversation) and carried out by the account's puppet.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::send::{Content, SendRequest};

/// One operation, as queued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Action {
    /// Recalls a sent message (`send_id` is the `out_…` id, `message_id` the puppet's).
    Recall {
        send_id: String,
        message_id: String,
    },
    RoomCreate {
        topic: String,
        members: Vec<String>,
    },
    RoomAdd {
        room: String,
        contacts: Vec<String>,
    },
    RoomRemove {
        room: String,
        contact: String,
    },
    RoomUpdate {
        room: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        topic: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        announce: Option<String>,
    },
    RoomQuit {
        room: String,
    },
    FriendshipAccept {
        id: String,
    },
    /// A friend request to a WeChat id, a phone number, or a known contact.
    FriendshipAdd {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        contact: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wechat_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        phone: Option<String>,
        #[serde(default)]
        hello: String,
    },
    RoomInvitationAccept {
        id: String,
    },
    /// Sets (or with `None` clears) the bot's alias for a contact.
    ContactAlias {
        contact: String,
        alias: Option<String>,
    },
}

impl Action {
    /// The capabilities this operation needs (see [`OPERATIONS`]).
    pub fn operations(&self) -> Vec<&'static str> {
        match self {
            Action::Recall { .. } => vec!["message.recall"],
            Action::RoomCreate { .. } => vec!["room.create"],
            Action::RoomAdd { .. } => vec!["room.add"],
            Action::RoomRemove { .. } => vec!["room.remove"],
            Action::RoomUpdate {
                topic, announce, ..
            } => {
                let mut ops = Vec::new();
                if topic.is_some() {
                    ops.push("room.topic");
                }
                if announce.is_some() {
                    ops.push("room.announce");
                }
                ops
            }
            Action::RoomQuit { .. } => vec!["room.quit"],
            Action::FriendshipAccept { .. } => vec!["friendship.accept"],
            Action::FriendshipAdd { .. } => vec!["friendship.add"],
            Action::RoomInvitationAccept { .. } => vec!["room_invitation.accept"],
            Action::ContactAlias { .. } => vec!["contact.alias"],
        }
    }

    /// The key it is paced under: the room or contact it changes, so a burst of
    /// changes to one room is spread out like a burst of messages into it.
    pub fn conversation(&self) -> String {
        match self {
            Action::Recall { send_id, .. } => format!("recall:{send_id}"),
            Action::RoomAdd { room, .. }
            | Action::RoomRemove { room, .. }
            | Action::RoomUpdate { room, .. }
            | Action::RoomQuit { room } => format!("room:{room}"),
            Action::ContactAlias { contact, .. } => format!("contact:{contact}"),
            Action::RoomCreate { .. } => "rooms".into(),
            Action::FriendshipAccept { .. }
            | Action::FriendshipAdd { .. }
            | Action::RoomInvitationAccept { .. } => "friendships".into(),
        }
    }
}

/// An operation ready for the send queue (an `op_…` id), for `account`'s puppet.
pub fn new_operation(
    account: &str,
    action: Action,
    idempotency_key: Option<String>,
    now: i64,
) -> crate::store::NewSend {
    let conversation = action.conversation();
    let request_json = serde_json::to_string(&Queued::Action { action }).unwrap_or_default();
    crate::send::queue_row(
        "op",
        account,
        request_json,
        conversation,
        idempotency_key,
        now,
    )
}

/// What a row of the send queue holds: a message (the shape v0.1 stored, unchanged) or
/// an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Queued {
    Message(SendRequest),
    Action { action: Action },
}

/// Everything a puppet may or may not support, as `GET /v1/capabilities` lists it.
pub const OPERATIONS: &[&str] = &[
    "message.text",
    "message.link",
    "message.file",
    "message.image",
    "message.contact_card",
    "message.recall",
    "media.download",
    "room.create",
    "room.add",
    "room.remove",
    "room.topic",
    "room.announce",
    "room.quit",
    "friendship.accept",
    "friendship.add",
    "room_invitation.accept",
    "contact.alias",
];

/// Operation name → supported.
pub type Capabilities = BTreeMap<&'static str, bool>;

/// Every operation supported.
pub fn all_supported() -> Capabilities {
    OPERATIONS.iter().map(|op| (*op, true)).collect()
}

/// The capability a message's content needs.
pub fn content_operation(content: &Content) -> &'static str {
    match content {
        Content::Text { .. } => "message.text",
        Content::Link(_) => "message.link",
        Content::File(_) => "message.file",
        Content::Image(_) => "message.image",
        Content::ContactCard(_) => "message.contact_card",
        Content::Upload(u) if u.image => "message.image",
        Content::Upload(_) => "message.file",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::send::Recipient;

    #[test]
    fn a_queued_message_keeps_the_v01_shape() {
        let v01 = r#"{"to":{"contact":"alice"},"content":{"text":{"text":"hi"}}}"#;
        let queued: Queued = serde_json::from_str(v01).unwrap();
        assert_eq!(
            queued,
            Queued::Message(SendRequest {
                to: Recipient::Contact("alice".into()),
                content: Content::Text {
                    text: "hi".into(),
                    mentions: vec![]
                }
            })
        );
    }

    #[test]
    fn an_action_round_trips() {
        let queued = Queued::Action {
            action: Action::RoomUpdate {
                room: "r@chatroom".into(),
                topic: Some("New".into()),
                announce: None,
            },
        };
        let json = serde_json::to_string(&queued).unwrap();
        assert_eq!(
            json,
            r#"{"action":{"op":"room_update","room":"r@chatroom","topic":"New"}}"#
        );
        assert_eq!(serde_json::from_str::<Queued>(&json).unwrap(), queued);
    }

    #[test]
    fn every_operation_is_listed() {
        let actions = [
            Action::Recall {
                send_id: "s".into(),
                message_id: "m".into(),
            },
            Action::RoomCreate {
                topic: "t".into(),
                members: vec![],
            },
            Action::RoomQuit { room: "r".into() },
            Action::FriendshipAccept { id: "f".into() },
            Action::RoomInvitationAccept { id: "i".into() },
            Action::ContactAlias {
                contact: "c".into(),
                alias: None,
            },
        ];
        for action in actions {
            for op in action.operations() {
                assert!(OPERATIONS.contains(&op), "{op} is not in OPERATIONS");
            }
        }
    }
}
