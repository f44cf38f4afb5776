//! A OneBot message a bot sends, as waas sends: text with mentions, images, files,
//! links. Consecutive text and `at` segments make one text message (its `at`s become
//! WeChat mentions); each image, file, audio, video or share is a message of its own,
//! in order. A `reply` segment is dropped (puppets cannot quote); a segment WeChat has
//! no equivalent for is refused, with its type named.

use super::ActionError;
use super::ids::Ids;
use super::message::Segment;
use crate::send::{Content, FileRef, Link};

/// A file segment's `file` (or `url`): `http(s)://…` or `base64://…`.
fn file_ref(segment: &Segment, default_name: &str) -> Result<FileRef, ActionError> {
    let given = segment
        .field("url")
        .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
        .or_else(|| segment.field("file"))
        .unwrap_or_default();
    let named = segment.field("name").filter(|n| !n.is_empty());
    if let Some(data) = given.strip_prefix("base64://") {
        return Ok(FileRef {
            url: None,
            base64: Some(data.to_string()),
            name: named.unwrap_or_else(|| default_name.to_string()),
        });
    }
    if given.starts_with("http://") || given.starts_with("https://") {
        let from_url = url::Url::parse(&given).ok().and_then(|u| {
            u.path_segments()
                .and_then(|mut s| s.next_back().map(str::to_string))
                .filter(|s| !s.is_empty() && s.contains('.'))
        });
        return Ok(FileRef {
            url: Some(given),
            base64: None,
            name: named
                .or(from_url)
                .unwrap_or_else(|| default_name.to_string()),
        });
    }
    Err(ActionError::bad(format!(
        "a `{}` segment's `file` must be an http(s):// URL or base64://… (waas does not read local files); got `{}`",
        segment.kind,
        given.chars().take(60).collect::<String>()
    )))
}

/// What the account sends for `segments`. `in_room`: mentions are kept (in a direct
/// chat an `at` is only text).
pub async fn contents(
    ids: &Ids,
    segments: &[Segment],
    in_room: bool,
) -> Result<Vec<Content>, ActionError> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut mentions: Vec<String> = Vec::new();
    let flush = |text: &mut String, mentions: &mut Vec<String>, out: &mut Vec<Content>| {
        let trimmed = text.trim();
        if !trimmed.is_empty() || !mentions.is_empty() {
            out.push(Content::Text {
                text: trimmed.to_string(),
                mentions: std::mem::take(mentions),
            });
        }
        text.clear();
    };
    for segment in segments {
        match segment.kind.as_str() {
            "text" => text.push_str(&segment.field("text").unwrap_or_default()),
            "at" => {
                let qq = segment.field("qq").unwrap_or_default();
                if qq == "all" {
                    text.push_str("@所有人 ");
                    continue;
                }
                let Ok(n) = qq.parse::<i64>() else {
                    return Err(ActionError::bad(format!(
                        "an `at` segment's `qq` must be a user_id or \"all\"; got `{qq}`"
                    )));
                };
                match ids.contact(n).await? {
                    Some(Some(contact)) if in_room => {
                        if !mentions.contains(&contact) {
                            mentions.push(contact);
                        }
                    }
                    // The bot itself, or a direct chat: nothing to mention.
                    Some(_) => {}
                    None => {
                        return Err(ActionError::bad(format!(
                            "an `at` segment names user_id {n}, which is no contact waas has seen"
                        )));
                    }
                }
            }
            "reply" => {}
            "image" => {
                flush(&mut text, &mut mentions, &mut out);
                out.push(Content::Image(file_ref(segment, "image.png")?));
            }
            "record" | "video" | "file" => {
                flush(&mut text, &mut mentions, &mut out);
                let default = match segment.kind.as_str() {
                    "record" => "audio.amr",
                    "video" => "video.mp4",
                    _ => "file",
                };
                out.push(Content::File(file_ref(segment, default)?));
            }
            "share" => {
                flush(&mut text, &mut mentions, &mut out);
                let url = segment.field("url").unwrap_or_default();
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(ActionError::bad("a `share` segment needs an http(s) `url`"));
                }
                out.push(Content::Link(Link {
                    title: segment.field("title").unwrap_or_else(|| url.clone()),
                    url,
                    description: segment.field("content"),
                    thumbnail_url: segment.field("image"),
                }));
            }
            other => {
                return Err(ActionError::bad(format!(
                    "`{other}` segments have no WeChat equivalent; waas sends text, at, image, record, video, file and share (reply is accepted and dropped)"
                )));
            }
        }
    }
    flush(&mut text, &mut mentions, &mut out);
    if out.is_empty() {
        return Err(ActionError::bad("the message is empty"));
    }
    Ok(out)
}
