//! Operations that change WeChat other than sends: recall, rooms, friendships, room
//! invitations, contact aliases. Each is checked (what it names must exist: 404; what
//! the puppet cannot do: 501), committed to the send queue (an `op_…` id, paced and
//! retried like a send, kept across a restart), and then waited for up to `?wait`
//! (10 s unless given): 200 with the outcome, or 202 `queued` when it takes longer.
//! `GET /v1/operations/{id}` tells the outcome later.

use std::time::Duration;

use axum::extract::{Extension, FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::{delete, get, patch, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::directory::puppet_error;
use super::messages::{WaitQuery, parse_wait, request_key, wait_for_outcome};
use super::{Acct, ApiError, ApiJson, ApiPath, ApiQuery, AppState, Credential, SignedMessageId};
use crate::account::Account;
use crate::action::{Action, new_operation};
use crate::event::{Room, now_millis};
use crate::puppet::PuppetError;
use crate::store::{SendStatus, SendView};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/rooms", post(create_room))
        .route("/v1/rooms/{id}", patch(update_room))
        .route("/v1/contacts/{id}", patch(update_contact))
        .route("/v1/messages/{id}", delete(recall))
        .route("/v1/rooms/{id}/members", post(add_members))
        .route("/v1/rooms/{id}/members/{contact}", delete(remove_member))
        .route("/v1/rooms/{id}/quit", post(quit_room))
        .route("/v1/friendships", post(add_friend))
        .route("/v1/friendships/{id}/accept", post(accept_friendship))
        .route("/v1/room-invitations/{id}/accept", post(accept_invitation))
        .route("/v1/operations/{id}", get(operation))
        .route("/v1/capabilities", get(capabilities))
}

/// How long an operation is waited for when `?wait=` is not given.
const DEFAULT_WAIT: Duration = Duration::from_secs(10);

/// Where an operation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OperationStatus {
    Queued,
    Done,
    Failed,
}

/// An operation and its outcome.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Operation {
    /// `op_…`
    pub id: String,
    pub status: OperationStatus,
    /// What it made, when it makes something (a room's id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl From<SendView> for Operation {
    fn from(v: SendView) -> Operation {
        Operation {
            id: v.id,
            status: match v.status {
                SendStatus::Queued => OperationStatus::Queued,
                SendStatus::Sent => OperationStatus::Done,
                SendStatus::Failed => OperationStatus::Failed,
            },
            result: v.message_id.filter(|m| !m.is_empty()),
            error: v.error,
        }
    }
}

/// 200 once done or failed, 202 while still queued.
fn answer(op: Operation) -> (StatusCode, Json<Operation>) {
    let status = match op.status {
        OperationStatus::Queued => StatusCode::ACCEPTED,
        _ => StatusCode::OK,
    };
    (status, Json(op))
}

/// What an operation request carries besides its body, taken as one extractor: the
/// account, the idempotency key (a signed request's verified `webhook-id`, else
/// `Idempotency-Key`) and the `?wait=` (10 s unless given, under
/// `server.request_timeout`).
pub(super) struct Request {
    app: AppState,
    account: std::sync::Arc<Account>,
    key: Option<String>,
    wait: Duration,
}

impl FromRequestParts<AppState> for Request {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Request, ApiError> {
        let Acct(account) = Acct::from_request_parts(parts, app).await?;
        let ApiQuery(query) = ApiQuery::<WaitQuery>::from_request_parts(parts, app).await?;
        let signed = parts
            .extensions
            .get::<SignedMessageId>()
            .cloned()
            .map(Extension);
        let default = format!("{}ms", DEFAULT_WAIT.as_millis());
        let wait = parse_wait(app, Some(query.wait.as_deref().unwrap_or(&default)))?
            .unwrap_or(DEFAULT_WAIT);
        let key = request_key(signed, &parts.headers)?;
        Ok(Request {
            app: app.clone(),
            account,
            key,
            wait,
        })
    }
}

impl Request {
    /// Checks, queues and waits for `action`.
    async fn run(self, action: Action) -> Result<Operation, ApiError> {
        run(&self.app, &self.account, action, self.key, self.wait).await
    }
}

/// Checks `action` against what the account's puppet can do, queues it durably and
/// waits up to `wait` for its outcome.
pub(super) async fn run(
    app: &AppState,
    account: &Account,
    action: Action,
    key: Option<String>,
    wait: Duration,
) -> Result<Operation, ApiError> {
    let capabilities = account.puppet.capabilities();
    if let Some(op) = action
        .operations()
        .into_iter()
        .find(|op| capabilities.get(op) == Some(&false))
    {
        return Err(not_supported(account, op));
    }
    match account.puppet.check(&action).await {
        Ok(()) => {}
        Err(e @ (PuppetError::NotFound(_) | PuppetError::NotSupported(_))) => {
            return Err(puppet_error(e));
        }
        // It cannot tell now (offline): queued all the same, done after the login.
        Err(e @ (PuppetError::Offline | PuppetError::Failed(_))) => {
            tracing::debug!(error = %e, "an operation is queued unchecked");
        }
    }
    let queued = app
        .outbox
        .queue_send(new_operation(&account.name, action, key, now_millis()))
        .await?
        .send;
    let view = if queued.status == SendStatus::Queued {
        wait_for_outcome(app, &queued.id, wait)
            .await?
            .unwrap_or(queued)
    } else {
        queued
    };
    Ok(view.into())
}

fn not_supported(account: &Account, op: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "not_supported",
        format!(
            "the {} puppet of account `{}` does not support `{op}` (GET /v1/capabilities lists what it does)",
            account.puppet.kind().as_str(),
            account.name
        ),
    )
}

/// A non-empty id, or 422 naming the field.
fn need(field: &str, value: &str) -> Result<(), ApiError> {
    if value.trim().is_empty() {
        return Err(ApiError::invalid(format!("`{field}` must not be empty")));
    }
    Ok(())
}

/// A room's topic: 1 to 100 characters, no line breaks (WeChat's own limits).
fn check_topic(field: &str, topic: &str) -> Result<(), ApiError> {
    if topic.trim().is_empty() || topic.chars().count() > 100 || topic.contains(['\r', '\n']) {
        return Err(ApiError::invalid(format!(
            "`{field}` must be 1 to 100 characters on one line"
        )));
    }
    Ok(())
}

/// A list of distinct, non-empty contact ids.
fn check_ids(field: &str, ids: &[String], at_least: usize) -> Result<(), ApiError> {
    if ids.len() < at_least {
        return Err(ApiError::invalid(match at_least {
            1 => format!("`{field}` needs at least one contact id"),
            n => format!(
                "`{field}` needs at least {n} contact ids (WeChat makes rooms of three or more, the bot included)"
            ),
        }));
    }
    if ids.len() > 500 {
        return Err(ApiError::invalid(format!(
            "`{field}` takes at most 500 contact ids (a WeChat room's size)"
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for id in ids {
        need(field, id)?;
        if !seen.insert(id) {
            return Err(ApiError::invalid(format!("`{field}` names `{id}` twice")));
        }
    }
    Ok(())
}

/// `POST /v1/rooms`
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRoom {
    pub topic: String,
    /// Contact ids to invite (two or more; the bot is a member anyway).
    pub members: Vec<String>,
}

/// Either the room made, or the operation still queued.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Created {
    Room(Room),
    Operation(Operation),
}

/// Creates a room with the bot and `members`: 201 with the room once WeChat made it,
/// 202 with the operation while it waits (its `result` is the room id when done).
#[utoipa::path(
    post, path = "/v1/rooms", operation_id = "create_room", tag = "rooms",
    params(WaitQuery, ("Idempotency-Key" = Option<String>, Header, description = "Repeat safely: the same key answers the first result. 1 to 255 printable ASCII characters.", pattern = r"^[!-~]([ -~]{0,253}[!-~])?$")),
    request_body = CreateRoom,
    responses(
        (status = 201, description = "Created", body = Room),
        (status = 202, description = "Queued", body = Operation),
        (status = 200, description = "Failed", body = Operation),
    )
)]
pub(super) async fn create_room(
    request: Request,
    ApiJson(body): ApiJson<CreateRoom>,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    check_topic("topic", &body.topic)?;
    check_ids("members", &body.members, 2)?;
    let members = body.members.len() as u32;
    let topic = body.topic.clone();
    let account = request.account.clone();
    let op = request
        .run(Action::RoomCreate {
            topic: body.topic,
            members: body.members,
        })
        .await?;
    let (OperationStatus::Done, Some(id)) = (op.status, op.result.clone()) else {
        let (status, Json(op)) = answer(op);
        return Ok((status, Json(Created::Operation(op))));
    };
    // The directory may not list a room this new yet: then what WeChat was asked for.
    let room = account
        .puppet
        .rooms()
        .await
        .ok()
        .and_then(|rooms| rooms.into_iter().find(|r| r.id == id))
        .unwrap_or(Room {
            id,
            topic,
            member_count: members + 1,
        });
    Ok((StatusCode::CREATED, Json(Created::Room(room))))
}

/// `POST /v1/rooms/{id}/members`
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMembers {
    /// Contact ids to add.
    pub contacts: Vec<String>,
}

/// Adds contacts to a room (`room.join` follows).
#[utoipa::path(
    post, path = "/v1/rooms/{id}/members", operation_id = "add_room_members", tag = "rooms",
    params(("id" = String, Path, description = "Room id"), WaitQuery),
    request_body = AddMembers,
    responses((status = 200, description = "Done or failed", body = Operation), (status = 202, description = "Queued", body = Operation))
)]
pub(super) async fn add_members(
    request: Request,
    ApiPath(room): ApiPath<String>,
    ApiJson(body): ApiJson<AddMembers>,
) -> Result<(StatusCode, Json<Operation>), ApiError> {
    check_ids("contacts", &body.contacts, 1)?;
    let action = Action::RoomAdd {
        room,
        contacts: body.contacts,
    };
    Ok(answer(request.run(action).await?))
}

/// Removes a member from a room (`room.leave` follows).
#[utoipa::path(
    delete, path = "/v1/rooms/{id}/members/{contact}", operation_id = "remove_room_member", tag = "rooms",
    params(("id" = String, Path, description = "Room id"), ("contact" = String, Path, description = "Contact id"), WaitQuery),
    responses((status = 200, description = "Done or failed", body = Operation), (status = 202, description = "Queued", body = Operation))
)]
pub(super) async fn remove_member(
    request: Request,
    ApiPath((room, contact)): ApiPath<(String, String)>,
) -> Result<(StatusCode, Json<Operation>), ApiError> {
    Ok(answer(
        request.run(Action::RoomRemove { room, contact }).await?,
    ))
}

/// `PATCH /v1/rooms/{id}`
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRoom {
    /// The new topic (`room.topic` follows).
    #[serde(default)]
    pub topic: Option<String>,
    /// The room's announcement (the bot must own the room).
    #[serde(default)]
    pub announce: Option<String>,
}

/// Renames a room or sets its announcement.
#[utoipa::path(
    patch, path = "/v1/rooms/{id}", operation_id = "update_room", tag = "rooms",
    params(("id" = String, Path, description = "Room id"), WaitQuery),
    request_body = UpdateRoom,
    responses((status = 200, description = "Done or failed", body = Operation), (status = 202, description = "Queued", body = Operation))
)]
pub(super) async fn update_room(
    request: Request,
    ApiPath(room): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateRoom>,
) -> Result<(StatusCode, Json<Operation>), ApiError> {
    if body.topic.is_none() && body.announce.is_none() {
        return Err(ApiError::invalid("give `topic`, `announce` or both"));
    }
    if let Some(topic) = &body.topic {
        check_topic("topic", topic)?;
    }
    if body
        .announce
        .as_ref()
        .is_some_and(|a| a.chars().count() > 2000)
    {
        return Err(ApiError::invalid(
            "`announce` takes at most 2000 characters",
        ));
    }
    let action = Action::RoomUpdate {
        room,
        topic: body.topic,
        announce: body.announce,
    };
    Ok(answer(request.run(action).await?))
}

/// The bot leaves a room (`room.leave` follows).
#[utoipa::path(
    post, path = "/v1/rooms/{id}/quit", operation_id = "quit_room", tag = "rooms",
    params(("id" = String, Path, description = "Room id"), WaitQuery),
    responses((status = 200, description = "Done or failed", body = Operation), (status = 202, description = "Queued", body = Operation))
)]
pub(super) async fn quit_room(
    request: Request,
    ApiPath(room): ApiPath<String>,
) -> Result<(StatusCode, Json<Operation>), ApiError> {
    Ok(answer(request.run(Action::RoomQuit { room }).await?))
}

/// `POST /v1/friendships`: exactly one of `wechat_id`, `phone`, `contact`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddFriend {
    /// The person's WeChat id (the one they can be searched by).
    #[serde(default)]
    pub wechat_id: Option<String>,
    /// Their phone number.
    #[serde(default)]
    pub phone: Option<String>,
    /// A contact id the bot knows from a room, not yet a friend.
    #[serde(default)]
    pub contact: Option<String>,
    /// The greeting they see with the request.
    #[serde(default)]
    pub hello: String,
}

/// Sends a friend request.
#[utoipa::path(
    post, path = "/v1/friendships", operation_id = "add_friend", tag = "friendships",
    params(WaitQuery),
    request_body = AddFriend,
    responses((status = 200, description = "Done or failed", body = Operation), (status = 202, description = "Queued", body = Operation))
)]
pub(super) async fn add_friend(
    request: Request,
    ApiJson(body): ApiJson<AddFriend>,
) -> Result<(StatusCode, Json<Operation>), ApiError> {
    let given = [&body.wechat_id, &body.phone, &body.contact];
    if given.iter().filter(|g| g.is_some()).count() != 1 {
        return Err(ApiError::invalid(
            "give exactly one of `wechat_id`, `phone` or `contact`",
        ));
    }
    for (field, value) in [
        ("wechat_id", &body.wechat_id),
        ("phone", &body.phone),
        ("contact", &body.contact),
    ] {
        if let Some(v) = value {
            need(field, v)?;
        }
    }
    if let Some(phone) = &body.phone
        && !phone
            .trim_start_matches('+')
            .chars()
            .all(|c| c.is_ascii_digit() || c == ' ' || c == '-')
    {
        return Err(ApiError::invalid(
            "`phone` must be a phone number (digits, an optional leading +)",
        ));
    }
    if body.hello.chars().count() > 200 {
        return Err(ApiError::invalid("`hello` takes at most 200 characters"));
    }
    let action = Action::FriendshipAdd {
        contact: body.contact,
        wechat_id: body.wechat_id,
        phone: body.phone,
        hello: body.hello,
    };
    Ok(answer(request.run(action).await?))
}

/// Accepts a friend request (the `id` of a `friendship` event of kind `receive`).
#[utoipa::path(
    post, path = "/v1/friendships/{id}/accept", operation_id = "accept_friendship", tag = "friendships",
    params(("id" = String, Path, description = "The `friendship` event's `data.id`"), WaitQuery),
    responses((status = 200, description = "Done or failed", body = Operation), (status = 202, description = "Queued", body = Operation))
)]
pub(super) async fn accept_friendship(
    request: Request,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, Json<Operation>), ApiError> {
    Ok(answer(request.run(Action::FriendshipAccept { id }).await?))
}

/// Accepts an invitation into a room (the `id` of a `room.invite` event); `result` is
/// the room's id.
#[utoipa::path(
    post, path = "/v1/room-invitations/{id}/accept", operation_id = "accept_room_invitation", tag = "rooms",
    params(("id" = String, Path, description = "The `room.invite` event's `data.id`"), WaitQuery),
    responses((status = 200, description = "Done or failed", body = Operation), (status = 202, description = "Queued", body = Operation))
)]
pub(super) async fn accept_invitation(
    request: Request,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, Json<Operation>), ApiError> {
    Ok(answer(
        request.run(Action::RoomInvitationAccept { id }).await?,
    ))
}

/// `PATCH /v1/contacts/{id}`
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateContact {
    /// The bot's alias (remark) for the contact; null or `""` clears it. Required, so
    /// that an empty body is a mistake rather than a silent clear.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub alias: Option<Option<String>>,
}

/// A field that must be given, though it may be null.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// Sets the bot's alias for a contact.
#[utoipa::path(
    patch, path = "/v1/contacts/{id}", operation_id = "update_contact", tag = "directory",
    params(("id" = String, Path, description = "Contact id"), WaitQuery),
    request_body = UpdateContact,
    responses((status = 200, description = "Done or failed", body = Operation), (status = 202, description = "Queued", body = Operation))
)]
pub(super) async fn update_contact(
    request: Request,
    ApiPath(contact): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateContact>,
) -> Result<(StatusCode, Json<Operation>), ApiError> {
    let Some(alias) = body.alias else {
        return Err(ApiError::invalid(
            "`alias` is required: the new alias, or null to clear it",
        ));
    };
    if alias
        .as_ref()
        .is_some_and(|a| a.chars().count() > 64 || a.contains(['\r', '\n']))
    {
        return Err(ApiError::invalid(
            "`alias` takes at most 64 characters on one line",
        ));
    }
    let action = Action::ContactAlias {
        contact,
        alias: alias.filter(|a| !a.is_empty()),
    };
    Ok(answer(request.run(action).await?))
}

/// Recalls a sent message (`out_…`); WeChat allows it for two minutes after the send.
/// 409 while the message is not sent.
#[utoipa::path(
    delete, path = "/v1/messages/{id}", operation_id = "recall_message", tag = "messages",
    params(("id" = String, Path, description = "The send's id (`out_…`)"), WaitQuery),
    responses((status = 200, description = "Done or failed", body = Operation), (status = 202, description = "Queued", body = Operation))
)]
pub(super) async fn recall(
    mut request: Request,
    credential: Credential,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, Json<Operation>), ApiError> {
    let account = &request.account;
    let send = request
        .app
        .store
        .get_send(&id)
        .await?
        .filter(|v| credential.allows(&v.account) && v.account == account.name)
        .filter(|v| v.id.starts_with("out_"))
        .ok_or_else(|| ApiError::not_found(format!("no message `{id}`")))?;
    let message_id = match (send.status, send.message_id) {
        (SendStatus::Sent, Some(m)) if !m.is_empty() => m,
        (SendStatus::Sent, _) => {
            return Err(conflict(
                "the puppet did not report an id for this message, so it cannot be recalled",
            ));
        }
        (SendStatus::Queued, _) => {
            return Err(conflict(
                "the message is still queued; there is nothing to recall yet",
            ));
        }
        (SendStatus::Failed, _) => {
            return Err(conflict("the message was never sent (it failed)"));
        }
    };
    // Recalling twice is the same operation: DELETE is idempotent.
    request.key.get_or_insert_with(|| format!("recall:{id}"));
    let action = Action::Recall {
        send_id: id,
        message_id,
    };
    Ok(answer(request.run(action).await?))
}

fn conflict(message: &str) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "not_sent", message)
}

/// What became of an operation; with `?wait=`, waits for it to leave the queue.
#[utoipa::path(
    get, path = "/v1/operations/{id}", operation_id = "get_operation", tag = "rooms",
    params(("id" = String, Path, description = "`op_…`"), WaitQuery),
    responses((status = 200, body = Operation))
)]
pub(super) async fn operation(
    State(app): State<AppState>,
    credential: Credential,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<WaitQuery>,
) -> Result<Json<Operation>, ApiError> {
    let view = match parse_wait(&app, query.wait.as_deref())? {
        Some(wait) if id.starts_with("op_") => wait_for_outcome(&app, &id, wait).await?,
        _ => app.store.get_send(&id).await?,
    };
    view.filter(|v| v.id.starts_with("op_") && credential.allows(&v.account))
        .map(|v| Json(v.into()))
        .ok_or_else(|| ApiError::not_found(format!("no operation `{id}`")))
}

/// What the account's puppet can do.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CapabilityList {
    pub account: String,
    /// `mock` or `service`.
    pub puppet: &'static str,
    /// Operation name → supported. A service puppet starts by assuming it can do
    /// everything and learns from the first call it refuses.
    #[schema(value_type = std::collections::BTreeMap<String, bool>)]
    pub operations: crate::action::Capabilities,
}

/// What the account's puppet supports: a call it does not support answers 501
/// `not_supported`.
#[utoipa::path(
    get, path = "/v1/capabilities", operation_id = "get_capabilities", tag = "session",
    responses((status = 200, body = CapabilityList))
)]
pub(super) async fn capabilities(Acct(account): Acct) -> Json<CapabilityList> {
    Json(CapabilityList {
        account: account.name.clone(),
        puppet: account.puppet.kind().as_str(),
        operations: account.puppet.capabilities(),
    })
}
