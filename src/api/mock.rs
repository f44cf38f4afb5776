//! The mock puppet's controls: inject inbound messages, confirm the QR login, read what
//! the bot sent. Present only with `puppet.kind = "mock"`.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{Acct, ApiError, ApiJson, AppState};
use crate::account::Account;
use crate::event::MessageKind;
use crate::ingest::Recorded;
use crate::puppet::mock::{
    FriendRequest, InjectedMedia, Injection, MockError, MockPuppet, SentMessage, Someone,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/mock/messages", post(inject))
        .route("/v1/mock/sent", get(sent))
        .route("/v1/mock/scan", post(scan))
        .route(
            "/v1/mock/friendships",
            post(friend_request).get(friend_requests),
        )
        .route("/v1/mock/room-invitations", post(room_invitation))
}

fn mock(account: &Account) -> Result<Arc<MockPuppet>, ApiError> {
    account.mock.clone().ok_or_else(|| {
        ApiError::not_found(format!(
            "the /v1/mock routes exist only for accounts with puppet.kind = \"mock\", and `{}` has another",
            account.name
        ))
    })
}

/// A simulated inbound message.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InjectBody {
    /// Contact id or name.
    from: String,
    /// Room id or topic.
    #[serde(default)]
    room: Option<String>,
    /// The text; with `media`, a caption (defaults to the file name).
    #[serde(default)]
    text: String,
    #[serde(default)]
    mentions: Vec<String>,
    /// Puppet message id; reuse one to simulate a replay.
    #[serde(default)]
    id: Option<String>,
    /// An image or file instead of (or with) `text`.
    #[serde(default)]
    media: Option<MediaBody>,
}

/// A simulated message's image or file.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MediaBody {
    /// `image`, `file`, `audio` or `video`.
    kind: String,
    name: String,
    base64: String,
}

impl MediaBody {
    fn into_media(self) -> Result<InjectedMedia, ApiError> {
        let kind = match self.kind.as_str() {
            "image" => MessageKind::Image,
            "file" => MessageKind::File,
            "audio" => MessageKind::Audio,
            "video" => MessageKind::Video,
            other => {
                return Err(ApiError::invalid(format!(
                    "`media.kind`: `{other}` is not image, file, audio or video"
                )));
            }
        };
        let bytes = crate::send::decode_base64(&self.base64).ok_or_else(|| {
            ApiError::invalid(
                "`media.base64` is not valid base64 (standard alphabet, with padding)",
            )
        })?;
        Ok(InjectedMedia {
            kind,
            name: self.name,
            bytes: bytes.into(),
        })
    }
}

/// What became of an injected message.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Injected {
    /// The stored event; null when the message was skipped.
    event_id: Option<String>,
    /// The puppet message id.
    message_id: String,
    /// True when this message id was already stored (a replay).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    duplicate: bool,
    /// Why it was not relayed (the bot's own message, or too old).
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped: Option<&'static str>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SentList {
    messages: Vec<SentMessage>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Confirmed {
    ok: bool,
}

/// Injects an inbound message; 201 once the message event is committed.
#[utoipa::path(
    post,
    path = "/v1/mock/messages", operation_id = "mock_inject_message",
    tag = "mock",
    request_body = InjectBody,
    responses(
        (status = 201, description = "Stored", body = Injected),
        (status = 200, description = "A duplicate id, or skipped", body = Injected),
    )
)]
pub(super) async fn inject(
    Acct(account): Acct,
    ApiJson(body): ApiJson<InjectBody>,
) -> Result<(StatusCode, Json<Injected>), ApiError> {
    let mock = mock(&account)?;
    let injection = Injection {
        from: body.from,
        room: body.room,
        text: body.text,
        mentions: body.mentions,
        id: body.id,
        media: body.media.map(MediaBody::into_media).transpose()?,
    };
    match mock.inject(injection).await {
        Ok((Recorded::Stored(a), message_id)) => Ok((
            if a.duplicate {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            },
            Json(Injected {
                event_id: Some(a.id),
                message_id,
                duplicate: a.duplicate,
                skipped: None,
            }),
        )),
        Ok((Recorded::Skipped(reason), message_id)) => Ok((
            StatusCode::OK,
            Json(Injected {
                event_id: None,
                message_id,
                duplicate: false,
                skipped: Some(reason),
            }),
        )),
        Err(e) => Err(e.into()),
    }
}

impl From<MockError> for ApiError {
    fn from(e: MockError) -> ApiError {
        match e {
            MockError::Invalid(m) => ApiError::invalid(m),
            MockError::NotFound(m) => ApiError::not_found(m),
            e @ (MockError::NotLoggedIn | MockError::NotRunning) => {
                ApiError::not_ready(e.to_string())
            }
            MockError::Store(e) => e.into(),
        }
    }
}

/// A simulated friend request to the bot.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FriendRequestBody {
    /// A contact id or name, or `{"id", "name"}` for someone the bot does not know.
    #[schema(value_type = Object)]
    from: Someone,
    #[serde(default)]
    hello: Option<String>,
}

/// A simulated invitation into a room.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InvitationBody {
    /// A contact id or name, or `{"id", "name"}` for someone the bot does not know.
    #[schema(value_type = Object)]
    from: Someone,
    room: InvitedRoom,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InvitedRoom {
    /// The room's id (with `@`, like `friends@chatroom`).
    id: String,
    topic: String,
}

/// The stored event and the id to accept.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Raised {
    /// The stored event (`friendship` or `room.invite`).
    event_id: String,
    /// The request's id, for `POST /v1/friendships/{id}/accept` or
    /// `POST /v1/room-invitations/{id}/accept`.
    id: String,
}

fn raised(recorded: Recorded, id: String) -> Result<(StatusCode, Json<Raised>), ApiError> {
    match recorded {
        Recorded::Stored(a) => Ok((StatusCode::CREATED, Json(Raised { event_id: a.id, id }))),
        Recorded::Skipped(reason) => Err(ApiError::invalid(format!(
            "the event was not stored: {reason}"
        ))),
    }
}

/// Raises a friend request to the bot: a `friendship` event of kind `receive`.
#[utoipa::path(
    post, path = "/v1/mock/friendships", operation_id = "mock_friend_request", tag = "mock",
    request_body = FriendRequestBody,
    responses((status = 201, description = "Stored", body = Raised))
)]
pub(super) async fn friend_request(
    Acct(account): Acct,
    ApiJson(body): ApiJson<FriendRequestBody>,
) -> Result<(StatusCode, Json<Raised>), ApiError> {
    let (recorded, id) = mock(&account)?
        .request_friendship(body.from, body.hello)
        .await?;
    raised(recorded, id)
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct FriendRequestList {
    requests: Vec<FriendRequest>,
}

/// The friend requests the bot made (`POST /v1/friendships`), oldest first.
#[utoipa::path(get, path = "/v1/mock/friendships", operation_id = "mock_list_friend_requests", tag = "mock", responses((status = 200, body = FriendRequestList)))]
pub(super) async fn friend_requests(
    Acct(account): Acct,
) -> Result<Json<FriendRequestList>, ApiError> {
    Ok(Json(FriendRequestList {
        requests: mock(&account)?.requested(),
    }))
}

/// Raises an invitation into a room: a `room.invite` event.
#[utoipa::path(
    post, path = "/v1/mock/room-invitations", operation_id = "mock_room_invitation", tag = "mock",
    request_body = InvitationBody,
    responses((status = 201, description = "Stored", body = Raised))
)]
pub(super) async fn room_invitation(
    Acct(account): Acct,
    ApiJson(body): ApiJson<InvitationBody>,
) -> Result<(StatusCode, Json<Raised>), ApiError> {
    let (recorded, id) = mock(&account)?
        .invite_to_room(body.from, body.room.id, body.room.topic)
        .await?;
    raised(recorded, id)
}

/// Everything the bot sent, oldest first.
#[utoipa::path(get, path = "/v1/mock/sent", operation_id = "mock_list_sent", tag = "mock", responses((status = 200, body = SentList)))]
pub(super) async fn sent(Acct(account): Acct) -> Result<Json<SentList>, ApiError> {
    Ok(Json(SentList {
        messages: mock(&account)?.sent(),
    }))
}

/// Confirms the pending QR login (`auto_login = false`).
#[utoipa::path(post, path = "/v1/mock/scan", operation_id = "mock_confirm_scan", tag = "mock", responses((status = 200, body = Confirmed)))]
pub(super) async fn scan(Acct(account): Acct) -> Result<Json<Confirmed>, ApiError> {
    if mock(&account)?.confirm_scan() {
        Ok(Json(Confirmed { ok: true }))
    } else {
        Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_pending_scan",
            "there is no QR login waiting to be confirmed",
        ))
    }
}
