//! A stored event as the OneBot v11 event a bot receives.
//!
//! - `message` → a private or group `message` event; the bot's own messages are not
//!   reported (OneBot has no standard shape for them).
//! - `room.join` / `room.leave` → `notice` `group_increase` / `group_decrease`; one
//!   event per WeChat event, `user_id` the first contact, `user_ids` all of them.
//! - `friendship` → `request` `friend` (a request; `flag` accepts it) or `notice`
//!   `friend_add` (a confirmed one).
//! - `room.invite` → `request` `group`, `sub_type` `invite` (`flag` accepts it).
//! - `login` / `logout` → `meta_event` `lifecycle` `enable` / `disable`.
//!
//! Everything else (scans, receipts, errors) has no OneBot shape: `None`.

use serde_json::{Value, json};

use super::ids::{Ids, MessageRef};
use super::message::{self, Mentioned, Segment};
use crate::config::MessageFormat;
use crate::event::{BotRef, Contact, MessageData, MessageKind};
use crate::store::{Result, StoredEvent};

/// The OneBot event for a stored event, or `None` when OneBot has no shape for it.
pub async fn convert(
    ids: &Ids,
    event: &StoredEvent,
    format: MessageFormat,
) -> Result<Option<Value>> {
    let bot: BotRef = serde_json::from_str(&event.bot_json).unwrap_or(BotRef {
        id: String::new(),
        name: String::new(),
    });
    let account = event.account.as_str();
    let self_id = ids.self_id(account).await?;
    let time = event.created_at.div_euclid(1000);
    let base = |post_type: &str| json!({"time": time, "self_id": self_id, "post_type": post_type});
    let data: Value = match serde_json::from_str(&event.data_json) {
        Ok(v) => v,
        Err(_) => return Ok(None),
    };
    let user = |c: &Value| c["id"].as_str().unwrap_or_default().to_string();
    let out = match event.event_type.as_str() {
        "message" => {
            let Ok(m) = serde_json::from_value::<MessageData>(data) else {
                return Ok(None);
            };
            if m.from.is_self || (!bot.id.is_empty() && m.from.id == bot.id) {
                return Ok(None);
            }
            return message_event(ids, event, &m, &bot, format).await.map(Some);
        }
        "room.join" | "room.leave" => {
            let joined = event.event_type == "room.join";
            let room = data["room"]["id"].as_str().unwrap_or_default();
            let people: Vec<String> = data[if joined { "invitees" } else { "removees" }]
                .as_array()
                .map(|a| a.iter().map(user).collect())
                .unwrap_or_default();
            let Some(first) = people.first() else {
                return Ok(None);
            };
            let mut user_ids = Vec::with_capacity(people.len());
            for p in &people {
                user_ids.push(ids.user(account, &bot.id, p).await?);
            }
            let by = data[if joined { "inviter" } else { "remover" }]["id"]
                .as_str()
                .map(str::to_string);
            let operator = match &by {
                Some(id) => ids.user(account, &bot.id, id).await?,
                None => user_ids[0],
            };
            let sub_type = match (joined, by.as_deref()) {
                (true, Some(_)) => "invite",
                (true, None) => "approve",
                (false, _) if first == &bot.id => "kick_me",
                (false, Some(by)) if by != first => "kick",
                (false, _) => "leave",
            };
            let mut v = base("notice");
            v["notice_type"] = json!(if joined {
                "group_increase"
            } else {
                "group_decrease"
            });
            v["sub_type"] = json!(sub_type);
            v["group_id"] = json!(ids.group(room).await?);
            v["user_id"] = json!(user_ids[0]);
            v["operator_id"] = json!(operator);
            v["user_ids"] = json!(user_ids);
            v
        }
        "friendship" => {
            let user_id = ids.user(account, &bot.id, &user(&data["contact"])).await?;
            match data["kind"].as_str() {
                Some("receive") => {
                    let mut v = base("request");
                    v["request_type"] = json!("friend");
                    v["user_id"] = json!(user_id);
                    v["comment"] = json!(data["hello"].as_str().unwrap_or_default());
                    v["flag"] = json!(data["id"].as_str().unwrap_or_default());
                    v
                }
                Some("confirm") => {
                    let mut v = base("notice");
                    v["notice_type"] = json!("friend_add");
                    v["user_id"] = json!(user_id);
                    v
                }
                _ => return Ok(None),
            }
        }
        "room.invite" => {
            let id = data["id"].as_str().unwrap_or_default();
            let mut v = base("request");
            v["request_type"] = json!("group");
            v["sub_type"] = json!("invite");
            v["group_id"] = json!(ids.group(&format!("invitation:{id}")).await?);
            v["user_id"] = json!(ids.user(account, &bot.id, &user(&data["inviter"])).await?);
            v["comment"] = json!(data["topic"].as_str().unwrap_or_default());
            v["flag"] = json!(id);
            v
        }
        "login" | "logout" => {
            let mut v = base("meta_event");
            v["meta_event_type"] = json!("lifecycle");
            v["sub_type"] = json!(if event.event_type == "login" {
                "enable"
            } else {
                "disable"
            });
            v
        }
        _ => return Ok(None),
    };
    Ok(Some(out))
}

/// A sender as OneBot describes one.
pub fn sender(user_id: i64, contact: &Contact, in_group: bool) -> Value {
    let mut v = json!({
        "user_id": user_id,
        "nickname": contact.name,
        "sex": match contact.gender {
            crate::event::Gender::Male => "male",
            crate::event::Gender::Female => "female",
            crate::event::Gender::Unknown => "unknown",
        },
        "age": 0,
    });
    if in_group {
        v["card"] = json!(contact.alias.clone().unwrap_or_default());
        v["role"] = json!("member");
    }
    v
}

/// The segments of a received message.
pub async fn segments(
    ids: &Ids,
    account: &str,
    m: &MessageData,
    bot: &BotRef,
) -> Result<Vec<Segment>> {
    let media = m.media.as_deref();
    let file = |kind: &str| {
        let media = media?;
        Some(vec![Segment::new(
            kind,
            &[("file", media.name.clone()), ("url", media.url.clone())],
        )])
    };
    let media_segments = match m.kind {
        MessageKind::Image | MessageKind::Emoticon => file("image"),
        MessageKind::Audio => file("record"),
        MessageKind::Video => file("video"),
        // Not in the standard: `file`, as go-cqhttp's offline files, with a fetchable url.
        MessageKind::File => file("file"),
        _ => None,
    };
    if let Some(segments) = media_segments {
        return Ok(segments);
    }
    let mut mentions = Vec::with_capacity(m.mentions.len());
    for id in &m.mentions {
        let is_bot = id == &bot.id;
        mentions.push(Mentioned {
            qq: ids.user(account, &bot.id, id).await?,
            name: is_bot.then(|| bot.name.clone()),
        });
    }
    if m.mentions_self && !m.mentions.iter().any(|id| id == &bot.id) {
        mentions.insert(
            0,
            Mentioned {
                qq: ids.self_id(account).await?,
                name: Some(bot.name.clone()),
            },
        );
    }
    Ok(message::inbound_text(&m.text, &mentions))
}

async fn message_event(
    ids: &Ids,
    event: &StoredEvent,
    m: &MessageData,
    bot: &BotRef,
    format: MessageFormat,
) -> Result<Value> {
    let account = event.account.as_str();
    let segments = segments(ids, account, m, bot).await?;
    let user_id = ids.user(account, &bot.id, &m.from.id).await?;
    let message_id = ids.message(&MessageRef::Event(event.seq)).await?;
    let mut v = json!({
        "time": event.created_at.div_euclid(1000),
        "self_id": ids.self_id(account).await?,
        "post_type": "message",
        "message_id": message_id,
        "user_id": user_id,
        "message": message::render(&segments, format),
        "raw_message": message::to_cq(&segments),
        "font": 0,
        "sender": sender(user_id, &m.from, m.room.is_some()),
    });
    match &m.room {
        Some(room) => {
            v["message_type"] = json!("group");
            v["sub_type"] = json!("normal");
            v["group_id"] = json!(ids.group(&room.id).await?);
        }
        None => {
            v["message_type"] = json!("private");
            v["sub_type"] = json!(if m.from.friend { "friend" } else { "other" });
        }
    }
    Ok(v)
}
