//! Outbound messages: the body of `POST /v1/messages` and of a reply in a webhook
//! response, parsed into a [`Recipient`] and one [`Content`].

use serde::{Deserialize, Serialize};

use crate::event::{Conversation, MessageData, now_millis};

pub use crate::event::Recipient;

/// A link card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Link {
    pub url: String,
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail_url: Option<String>,
}

/// A file, by URL or inline as base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FileRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
    pub name: String,
}

/// What a message carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Content {
    Text {
        text: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        mentions: Vec<String>,
    },
    Link(Link),
    File(FileRef),
    /// An image, sent as a WeChat image (not as a file).
    Image(FileRef),
    /// Shares the card of the contact with this id.
    ContactCard(String),
    /// A file uploaded with `multipart/form-data`, stored until it is sent. Never
    /// taken from a JSON body: only the upload route makes one.
    Upload(Upload),
}

impl Content {
    /// Removes an upload's file once its send is over (sent, or failed for good).
    pub fn discard_upload(&self) {
        if let Content::Upload(upload) = self
            && let Err(e) = std::fs::remove_file(&upload.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %upload.path.display(), error = %e, "cannot remove a sent upload");
        }
    }
}

/// An uploaded file waiting on disk to be sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upload {
    pub path: std::path::PathBuf,
    pub name: String,
    /// Sent as a picture (the `image` part) rather than a file.
    #[serde(default)]
    pub image: bool,
    pub size: u64,
    /// Hex SHA-256 of the bytes, to tell a replayed upload from another.
    pub sha256: String,
}

/// The wire shape of a send body without `to` (a reply in a webhook response).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentBody {
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub mentions: Option<Vec<String>>,
    #[serde(default)]
    pub link: Option<Link>,
    #[serde(default)]
    pub file: Option<FileRef>,
    #[serde(default)]
    pub image: Option<FileRef>,
    #[serde(default)]
    pub contact_card: Option<String>,
}

/// Why a send body was refused; the message names the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct InvalidSend(pub String);

impl ContentBody {
    /// Exactly one of `text`, `link`, `file`, `image`, `contact_card`.
    pub fn into_content(self) -> Result<Content, InvalidSend> {
        let given = [
            self.text.is_some(),
            self.link.is_some(),
            self.file.is_some(),
            self.image.is_some(),
            self.contact_card.is_some(),
        ]
        .iter()
        .filter(|g| **g)
        .count();
        if given != 1 {
            return Err(InvalidSend(
                "give exactly one of `text`, `link`, `file`, `image` or `contact_card`".into(),
            ));
        }
        if self.mentions.is_some() && self.text.is_none() {
            return Err(InvalidSend("`mentions` goes with `text` only".into()));
        }
        if let Some(text) = self.text {
            if text.trim().is_empty() {
                return Err(InvalidSend("`text` must not be empty".into()));
            }
            return Ok(Content::Text {
                text,
                mentions: self.mentions.unwrap_or_default(),
            });
        }
        if let Some(link) = self.link {
            if !(link.url.starts_with("http://") || link.url.starts_with("https://")) {
                return Err(InvalidSend("`link.url` must be an http(s) URL".into()));
            }
            return Ok(Content::Link(link));
        }
        if let Some(file) = self.file {
            check_file_ref("file", &file)?;
            return Ok(Content::File(file));
        }
        if let Some(image) = self.image {
            check_file_ref("image", &image)?;
            // Puppets send a file as a picture by its type, which its name gives.
            if !crate::media::mime_of(&image.name).is_some_and(|m| m.starts_with("image/")) {
                return Err(InvalidSend(
                    "`image.name` must end in an image extension (.jpg, .png, .gif, .webp)".into(),
                ));
            }
            return Ok(Content::Image(image));
        }
        match self.contact_card {
            Some(id) if !id.is_empty() => Ok(Content::ContactCard(id)),
            _ => Err(InvalidSend("`contact_card` must be a contact id".into())),
        }
    }
}

/// `url` or `base64` (exactly one; base64 that decodes), and a plain file name.
fn check_file_ref(field: &str, file: &FileRef) -> Result<(), InvalidSend> {
    if file.url.is_some() == file.base64.is_some() {
        return Err(InvalidSend(format!(
            "`{field}` needs exactly one of `url` or `base64`"
        )));
    }
    check_file_name(field, &file.name)?;
    if let Some(data) = &file.base64
        && decode_base64(data).is_none()
    {
        return Err(InvalidSend(format!(
            "`{field}.base64` is not valid base64 (standard alphabet, with padding)"
        )));
    }
    Ok(())
}

/// Decodes standard base64, ignoring whitespace and line breaks.
pub fn decode_base64(data: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    use base64::engine::{GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
    );
    let compact: String = data
        .chars()
        .filter(|c| !matches!(c, ' ' | '\t' | '\r' | '\n'))
        .collect();
    LENIENT.decode(compact.as_bytes()).ok()
}

/// A file name is a name, not a path: no separators, no `..`, no control characters.
pub fn check_file_name(field: &str, name: &str) -> Result<(), InvalidSend> {
    if name.trim().is_empty() {
        return Err(InvalidSend(format!("`{field}.name` must not be empty")));
    }
    if name.chars().count() > 255
        || name.contains(['/', '\\'])
        || name.chars().all(|c| c == '.' || c.is_whitespace())
        || name.chars().any(char::is_control)
    {
        return Err(InvalidSend(format!(
            "`{field}.name` must be a plain file name (at most 255 bytes, no `/`, `\\`, `..` or control characters), like `report.pdf`"
        )));
    }
    Ok(())
}

impl Content {
    /// The URLs the gateway would fetch for this content must be http(s) and, unless
    /// `allow_private`, not point inside the network (see [`crate::address`]).
    pub fn check_urls(&self, allow_private: bool) -> Result<(), InvalidSend> {
        let (field, url) = match self {
            Content::File(FileRef { url: Some(url), .. }) => ("file.url", url),
            Content::Image(FileRef { url: Some(url), .. }) => ("image.url", url),
            Content::Link(Link {
                thumbnail_url: Some(url),
                ..
            }) => ("link.thumbnail_url", url),
            _ => return Ok(()),
        };
        match crate::address::content_url_problem(url, allow_private) {
            Some(why) => Err(InvalidSend(format!("`{field}` {why}"))),
            None => Ok(()),
        }
    }
}

/// The body of `POST /v1/messages`: `to`, and exactly one of `text`, `link`, `file`,
/// `contact_card`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendBody {
    pub to: Recipient,
    #[serde(default)]
    pub text: Option<String>,
    /// Contact ids to @-mention (rooms only, with `text`).
    #[serde(default)]
    pub mentions: Option<Vec<String>>,
    #[serde(default)]
    pub link: Option<Link>,
    #[serde(default)]
    pub file: Option<FileRef>,
    /// An image, shown as a picture in the chat.
    #[serde(default)]
    pub image: Option<FileRef>,
    /// The id of a contact whose card to share.
    #[serde(default)]
    pub contact_card: Option<String>,
}

impl SendBody {
    /// The recipient and the one content the body names.
    pub fn into_request(self) -> Result<SendRequest, InvalidSend> {
        let content = ContentBody {
            text: self.text,
            mentions: self.mentions,
            link: self.link,
            file: self.file,
            image: self.image,
            contact_card: self.contact_card,
        }
        .into_content()?;
        Ok(SendRequest {
            to: self.to,
            content,
        })
    }
}

/// A send ready for the queue, for `account`'s puppet: the one place sends are built
/// (the API, replies in webhook responses, the legacy route).
pub fn new_send(
    account: &str,
    request: SendRequest,
    conversation: &crate::event::Conversation,
    idempotency_key: Option<String>,
    now: i64,
) -> crate::store::NewSend {
    let request_json = serde_json::to_string(&request).unwrap_or_default();
    let mut row = queue_row(
        "out",
        account,
        request_json,
        conversation.key(),
        idempotency_key,
        now,
    );
    // An upload's digest stands for its file: the same bytes uploaded again under the
    // same key are the same request, wherever they were stored.
    if let Content::Upload(upload) = &request.content {
        let mut same = upload.clone();
        same.path = std::path::PathBuf::new();
        let canonical = serde_json::to_string(&SendRequest {
            to: request.to.clone(),
            content: Content::Upload(same),
        })
        .unwrap_or_default();
        row.request_hash =
            queue_row("out", account, canonical, String::new(), None, now).request_hash;
    }
    row
}

/// A row of the send queue: a fresh `{prefix}_…` id, the request and its digest.
pub(crate) fn queue_row(
    prefix: &str,
    account: &str,
    request_json: String,
    conversation: String,
    idempotency_key: Option<String>,
    now: i64,
) -> crate::store::NewSend {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(request_json.as_bytes());
    crate::store::NewSend {
        id: format!("{prefix}_{}", ulid::Ulid::new()),
        account: account.to_string(),
        idempotency_key,
        request_hash: digest.iter().map(|b| format!("{b:02x}")).collect(),
        request_json,
        conversation,
        created_at: now,
    }
}

/// Turns a reply in a webhook response into sends into the event's conversation, keyed
/// by the event and the webhook, so that a repeated delivery never sends twice and two
/// webhooks that both answer each get their reply sent.
pub fn reply_sends(
    event: &crate::store::StoredEvent,
    webhook: &str,
    contents: Vec<Content>,
    allow_private_urls: bool,
) -> Result<Vec<crate::store::NewSend>, String> {
    for content in &contents {
        content
            .check_urls(allow_private_urls)
            .map_err(|e| e.to_string())?;
    }
    if contents.is_empty() {
        return Ok(Vec::new());
    }
    let message: MessageData = serde_json::from_str(&event.data_json)
        .map_err(|e| format!("the event is not a message: {e}"))?;
    let conversation = message.conversation();
    let to = match &conversation {
        Conversation::Contact(id) => Recipient::Contact(id.clone()),
        Conversation::Room(id) => Recipient::Room(id.clone()),
    };
    let now = now_millis();
    Ok(contents
        .into_iter()
        .enumerate()
        .map(|(i, content)| {
            let key = match i {
                0 => format!("{}:{}", event.id, webhook),
                i => format!("{}:{}#{i}", event.id, webhook),
            };
            new_send(
                &event.account,
                SendRequest {
                    to: to.clone(),
                    content,
                },
                &conversation,
                Some(key),
                now,
            )
        })
        .collect())
}

/// A queued send as stored: where, and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendRequest {
    pub to: Recipient,
    pub content: Content,
}

/// A reply found in a webhook response: `reply` (a string or a send body without `to`)
/// or `replies` (a list of those).
pub fn parse_replies(body: &[u8]) -> Result<Vec<Content>, InvalidSend> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum One {
        Text(String),
        Body(Box<ContentBody>),
    }
    #[derive(Deserialize)]
    struct Envelope {
        #[serde(default)]
        reply: Option<One>,
        #[serde(default)]
        replies: Option<Vec<One>>,
    }
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() || trimmed[0] != b'{' {
        return Ok(Vec::new());
    }
    let Ok(envelope) = serde_json::from_slice::<Envelope>(trimmed) else {
        // A response that is JSON but not shaped like a reply is just a response.
        let valid_json = serde_json::from_slice::<serde_json::Value>(trimmed).is_ok();
        return if valid_json {
            Err(InvalidSend(
                "`reply` must be a string or a send body, `replies` a list of those".into(),
            ))
        } else {
            Ok(Vec::new())
        };
    };
    envelope
        .reply
        .into_iter()
        .chain(envelope.replies.unwrap_or_default())
        .map(|one| match one {
            One::Text(text) => ContentBody {
                text: Some(text),
                ..ContentBody::default()
            }
            .into_content(),
            One::Body(body) => body.into_content(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_take_every_documented_shape() {
        assert_eq!(parse_replies(b"").unwrap(), vec![]);
        assert_eq!(parse_replies(b"ok").unwrap(), vec![]);
        assert_eq!(parse_replies(br#"{"received":true}"#).unwrap(), vec![]);
        assert_eq!(
            parse_replies(br#"{"reply":"hi"}"#).unwrap(),
            vec![Content::Text {
                text: "hi".into(),
                mentions: vec![]
            }]
        );
        let two = parse_replies(br#"{"replies":["a",{"link":{"url":"https://x.y","title":"T"}}]}"#)
            .unwrap();
        assert_eq!(two.len(), 2);
        assert!(matches!(two[1], Content::Link(_)));
        assert!(
            parse_replies(br#"{"reply":{"text":"a","link":{"url":"https://x","title":"t"}}}"#)
                .is_err()
        );
        assert!(parse_replies(br#"{"reply":42}"#).is_err());
    }

    #[test]
    fn content_needs_exactly_one_kind() {
        let none = ContentBody::default().into_content().unwrap_err();
        assert!(none.0.contains("exactly one"));
        let file = ContentBody {
            file: Some(FileRef {
                url: None,
                base64: None,
                name: "a.txt".into(),
            }),
            ..ContentBody::default()
        };
        assert!(file.into_content().unwrap_err().0.contains("file"));
    }
}
