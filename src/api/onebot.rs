//! OneBot v11: the HTTP API (`/onebot/v11/{action}`, GET or POST), the forward
//! WebSocket (`/onebot/v11/ws`), and the actions every OneBot transport calls.
//!
//! Auth: `onebot.access_token` as `Authorization: Bearer` or `?access_token=`; without
//! one, a token of `[auth]` (scoped to the account) does; with neither configured
//! (open mode, loopback only) the endpoints are open. A missing token is 401, a wrong
//! one 403, as the standard says; `?account=NAME` picks the account (by default the
//! only one, or `default`).
//!
//! Ids are integers from the store's id map ([`crate::onebot::ids`]). Sends and
//! operations go through the durable send queue like every other send.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq;

use super::messages::enqueue;
use super::{ApiError, AppState};
use crate::account::Account;
use crate::action::Action;
use crate::action::Queued;
use crate::event::{Contact, MessageData, Recipient, Room};
use crate::onebot::ids::MessageRef;
use crate::onebot::message::{self, Segment};
use crate::onebot::ws::{Frame, Hub, Peer};
use crate::onebot::{ActionError, Actions, event, outbound, response, retcode};
use crate::send::SendRequest;
use crate::store::SendStatus;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/onebot/v11/ws", get(forward_ws))
        .route("/onebot/v11/ws/", get(forward_ws))
        .route("/onebot/v11/{action}", any(http_api))
}

/// The hub every OneBot WebSocket of this app uses.
pub fn hub(app: &AppState) -> Arc<Hub> {
    Arc::new(Hub {
        store: app.store.clone(),
        ids: app.onebot.ids.clone(),
        feed: app.feed.clone(),
        settings: app.settings.onebot.clone(),
        actions: Arc::new(Bot(app.clone())),
        stopping: app.stopping.clone(),
    })
}

/// A failed call as an HTTP answer, in the standard's body.
fn refused(status: StatusCode, error: ActionError) -> Response {
    (status, axum::Json(response(Err(error)))).into_response()
}

/// The caller's token: `Authorization: Bearer`, else `?access_token=`.
fn given_token(headers: &HeaderMap, query: &Map<String, Value>) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| super::bearer_token(v).or_else(|| v.strip_prefix("Token ")))
        .map(str::to_string)
        .or_else(|| {
            query
                .get("access_token")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
}

/// Checks the caller's token and finds the account it acts on.
fn admit(
    app: &AppState,
    headers: &HeaderMap,
    query: &Map<String, Value>,
) -> Result<Arc<Account>, (StatusCode, ActionError)> {
    let account = match query.get("account").and_then(Value::as_str) {
        Some(name) => app.accounts.get(name).cloned().ok_or_else(|| {
            (
                StatusCode::NOT_FOUND,
                ActionError::new(retcode::NOT_FOUND, format!("no account `{name}`")),
            )
        })?,
        None => app.accounts.unscoped().cloned().map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                ActionError::bad(format!("{} (add ?account=NAME)", e.0)),
            )
        })?,
    };
    let given = given_token(headers, query);
    let auth = app.auth();
    let expected: Vec<Vec<u8>> = match &app.settings.onebot.access_token {
        Some(token) => vec![token.expose().as_bytes().to_vec()],
        None if auth.is_configured() => auth
            .tokens
            .iter()
            .filter(|t| {
                t.accounts
                    .as_ref()
                    .is_none_or(|a| a.contains(&account.name))
            })
            .map(|t| t.value.as_bytes().to_vec())
            .collect(),
        None => return Ok(account),
    };
    let Some(given) = given else {
        return Err((
            StatusCode::UNAUTHORIZED,
            ActionError::new(
                retcode::UNAUTHORIZED,
                "an access token is required: `Authorization: Bearer <onebot.access_token>` or ?access_token=",
            ),
        ));
    };
    // Every candidate is compared, so the time taken says nothing about which matched.
    let mut ok = false;
    for token in &expected {
        ok |= bool::from(token.as_slice().ct_eq(given.as_bytes()));
    }
    if !ok {
        return Err((
            StatusCode::FORBIDDEN,
            ActionError::new(retcode::FORBIDDEN, "the access token is wrong"),
        ));
    }
    Ok(account)
}

fn query_map(query: Option<&str>) -> Map<String, Value> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.unwrap_or_default()).unwrap_or_default();
    pairs
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect()
}

/// `GET|POST /onebot/v11/{action}`: params from the query string and a JSON or form body.
async fn http_api(
    State(app): State<AppState>,
    Path(action): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut params = query_map(query.as_deref());
    let account = match admit(&app, &headers, &params) {
        Ok(a) => a,
        Err((status, e)) => return refused(status, e),
    };
    params.remove("access_token");
    params.remove("account");
    if !body.iter().all(u8::is_ascii_whitespace) {
        let kind = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json");
        if kind.starts_with("application/json") {
            match serde_json::from_slice::<Value>(&body) {
                Ok(Value::Object(map)) => params.extend(map),
                Ok(_) => {
                    return refused(
                        StatusCode::BAD_REQUEST,
                        ActionError::bad("the body must be a JSON object of params"),
                    );
                }
                Err(e) => {
                    return refused(
                        StatusCode::BAD_REQUEST,
                        ActionError::bad(format!("the body is not JSON: {e}")),
                    );
                }
            }
        } else if kind.starts_with("application/x-www-form-urlencoded") {
            params.extend(query_map(std::str::from_utf8(&body).ok()));
        } else {
            return refused(
                StatusCode::NOT_ACCEPTABLE,
                ActionError::bad(format!(
                    "content-type `{kind}` is not read: send application/json or a form"
                )),
            );
        }
    }
    let action = action.trim_end_matches("_async").to_string();
    match Bot(app.clone()).call(&account.name, &action, params).await {
        Err(e)
            if e.retcode == retcode::NOT_FOUND
                && !crate::onebot::ACTIONS.contains(&action.as_str()) =>
        {
            refused(StatusCode::NOT_FOUND, e)
        }
        result => (StatusCode::OK, axum::Json(response(result))).into_response(),
    }
}

/// The `client` a forward WebSocket names (its cursor is kept under it).
#[derive(serde::Deserialize)]
struct WsQuery {
    #[serde(default)]
    client: Option<String>,
}

/// `GET /onebot/v11/ws`: the forward WebSocket. A bot that reconnects with the same
/// `?client=` (default `default`) resumes where it left off.
async fn forward_ws(
    State(app): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    parts: WsParts,
) -> Response {
    let params = query_map(query.as_deref());
    let account = match admit(&app, &headers, &params) {
        Ok(a) => a,
        Err((status, e)) => return refused(status, e),
    };
    let upgrade = match parts.0 {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    let client = serde_urlencoded::from_str::<WsQuery>(query.as_deref().unwrap_or_default())
        .ok()
        .and_then(|q| q.client)
        .filter(|c| !c.is_empty() && c.len() <= 64)
        .unwrap_or_else(|| "default".into());
    let place = match app.listeners.admit("onebot") {
        Ok(place) => place,
        Err(e) => {
            return refused(
                StatusCode::SERVICE_UNAVAILABLE,
                ActionError::failed(e.to_string()),
            );
        }
    };
    let peer = Peer {
        cursor: format!("onebot:forward:{}:{client}", account.name),
        label: format!("forward client={client}"),
        account: account.name.clone(),
    };
    let hub = hub(&app);
    upgrade
        .max_message_size(app.settings.server.body_limit.0 as usize)
        .on_upgrade(move |socket| async move {
            let _place = place;
            crate::onebot::ws::serve(hub, peer, frames(socket)).await;
        })
}

/// The upgrade, or why the request is not one (answered after the auth check, so a
/// plain GET without a token is told about the token first).
struct WsParts(Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>);

impl FromRequestParts<AppState> for WsParts {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(WsParts(
            WebSocketUpgrade::from_request_parts(parts, app).await,
        ))
    }
}

/// An axum WebSocket as [`Frame`]s.
fn frames(
    socket: WebSocket,
) -> impl futures_util::Stream<Item = Result<Frame, axum::Error>>
+ futures_util::Sink<Frame, Error = axum::Error>
+ Send
+ 'static {
    socket
        .map(|m| {
            m.map(|m| match m {
                Message::Text(t) => Frame::Text(t.to_string()),
                Message::Binary(b) => Frame::Binary(b.to_vec()),
                Message::Ping(p) => Frame::Ping(p.to_vec()),
                Message::Pong(p) => Frame::Pong(p.to_vec()),
                Message::Close(c) => Frame::Close(c.map(|c| (c.code, c.reason.to_string()))),
            })
        })
        .with(|f: Frame| {
            futures_util::future::ok::<_, axum::Error>(match f {
                Frame::Text(t) => Message::Text(t.into()),
                Frame::Binary(b) => Message::Binary(b.into()),
                Frame::Ping(p) => Message::Ping(p.into()),
                Frame::Pong(p) => Message::Pong(p.into()),
                Frame::Close(c) => {
                    Message::Close(c.map(|(code, reason)| axum::extract::ws::CloseFrame {
                        code,
                        reason: reason.into(),
                    }))
                }
            })
        })
}

/// The actions, on the app's internals.
struct Bot(AppState);

/// How long an operation (recall, a request accepted) is waited for.
const OPERATION_WAIT: Duration = Duration::from_secs(10);

fn api_error(e: ApiError) -> ActionError {
    match e.status() {
        StatusCode::NOT_IMPLEMENTED => ActionError::new(retcode::NOT_SUPPORTED, e.message()),
        s if s.is_server_error() => ActionError::failed(e.message()),
        _ => ActionError::bad(e.message()),
    }
}

fn puppet_failed(e: crate::puppet::PuppetError) -> ActionError {
    api_error(super::directory::puppet_error(e))
}

/// A required integer param (bots send numbers as numbers or strings).
fn int(params: &Map<String, Value>, name: &str) -> Result<i64, ActionError> {
    match params.get(name) {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| ActionError::bad(format!("`{name}` is required (an integer)")))
}

fn boolean(params: &Map<String, Value>, name: &str, default: bool) -> bool {
    match params.get(name) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => !matches!(s.as_str(), "false" | "0" | ""),
        Some(Value::Number(n)) => n.as_i64() != Some(0),
        _ => default,
    }
}

fn text<'a>(params: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    params
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

struct Call<'a> {
    app: &'a AppState,
    account: &'a Account,
    params: Map<String, Value>,
}

impl Call<'_> {
    fn ids(&self) -> &crate::onebot::Ids {
        &self.app.onebot.ids
    }

    fn bot(&self) -> Option<Contact> {
        self.account.session.get().user
    }

    async fn self_id(&self) -> Result<i64, ActionError> {
        Ok(self.ids().self_id(&self.account.name).await?)
    }

    async fn user_id(&self, contact: &str) -> Result<i64, ActionError> {
        let bot = self.bot().map(|b| b.id).unwrap_or_default();
        Ok(self.ids().user(&self.account.name, &bot, contact).await?)
    }

    /// The contact a `user_id` param names.
    async fn contact_id(&self, name: &str) -> Result<String, ActionError> {
        let n = int(&self.params, name)?;
        match self.ids().contact(n).await? {
            Some(Some(id)) => Ok(id),
            Some(None) => self
                .bot()
                .map(|b| b.id)
                .ok_or_else(|| ActionError::failed("the account is not logged in")),
            None => Err(ActionError::bad(format!(
                "`{name}` {n} is no contact waas has seen (get_friend_list lists them)"
            ))),
        }
    }

    /// The room a `group_id` param names.
    async fn room_id(&self) -> Result<String, ActionError> {
        let n = int(&self.params, "group_id")?;
        self.ids().room(n).await?.ok_or_else(|| {
            ActionError::bad(format!(
                "`group_id` {n} is no group waas has seen (get_group_list lists them)"
            ))
        })
    }

    async fn room(&self) -> Result<Room, ActionError> {
        let id = self.room_id().await?;
        let rooms = self.account.puppet.rooms().await.map_err(puppet_failed)?;
        rooms
            .into_iter()
            .find(|r| r.id == id)
            .ok_or_else(|| ActionError::bad(format!("the bot is not in group {id}")))
    }

    async fn friend_json(&self, c: &Contact) -> Result<Value, ActionError> {
        Ok(json!({
            "user_id": self.user_id(&c.id).await?,
            "nickname": c.name,
            "remark": c.alias.clone().unwrap_or_default(),
        }))
    }

    async fn group_json(&self, r: &Room) -> Result<Value, ActionError> {
        Ok(json!({
            "group_id": self.ids().group(&r.id).await?,
            "group_name": r.topic,
            "member_count": r.member_count,
            "max_member_count": 500,
        }))
    }

    async fn member_json(&self, group_id: i64, c: &Contact) -> Result<Value, ActionError> {
        let mut v = event::sender(self.user_id(&c.id).await?, c, true);
        if let Some(obj) = v.as_object_mut() {
            for (k, val) in [
                ("group_id", json!(group_id)),
                ("area", json!(c.city.clone().unwrap_or_default())),
                ("join_time", json!(0)),
                ("last_sent_time", json!(0)),
                ("level", json!("")),
                ("unfriendly", json!(false)),
                ("title", json!("")),
                ("title_expire_time", json!(0)),
                ("card_changeable", json!(false)),
            ] {
                obj.insert(k.into(), val);
            }
        }
        Ok(v)
    }

    /// Sends a message to `to` (a room when `in_room`), one send per part; answers the
    /// first part's `message_id`.
    async fn send(&self, to: Recipient, in_room: bool) -> Result<Value, ActionError> {
        let auto_escape = boolean(&self.params, "auto_escape", false);
        let segments = message::parse(
            self.params.get("message").unwrap_or(&Value::Null),
            auto_escape,
        )
        .map_err(|e| ActionError::bad(e.0))?;
        let contents = outbound::contents(self.ids(), &segments, in_room).await?;
        let mut first = None;
        for content in contents {
            let queued = enqueue(self.app, self.account, to.clone(), content, None)
                .await
                .map_err(api_error)?;
            first.get_or_insert(queued.send.id);
        }
        let id = first.unwrap_or_default();
        let message_id = self.ids().message(&MessageRef::Send(id)).await?;
        Ok(json!({"message_id": message_id}))
    }

    async fn send_msg(&self) -> Result<Value, ActionError> {
        let kind = text(&self.params, "message_type").map(str::to_string);
        let group = match kind.as_deref() {
            Some("group") => true,
            Some("private") => false,
            Some(other) => {
                return Err(ActionError::bad(format!(
                    "`message_type` is `private` or `group`, not `{other}`"
                )));
            }
            None => self.params.contains_key("group_id"),
        };
        if group {
            let room = self.room_id().await?;
            self.send(Recipient::Room(room), true).await
        } else {
            let contact = self.contact_id("user_id").await?;
            self.send(Recipient::Contact(contact), false).await
        }
    }

    /// Runs an operation through the send queue and waits for it.
    async fn operate(&self, action: Action) -> Result<Value, ActionError> {
        let op = super::operations::run(self.app, self.account, action, None, OPERATION_WAIT)
            .await
            .map_err(api_error)?;
        match op.status {
            super::operations::OperationStatus::Failed => Err(ActionError::failed(
                op.error.unwrap_or_else(|| "the operation failed".into()),
            )),
            _ => Ok(Value::Null),
        }
    }

    /// The send message number `n` stands for, when it is this account's.
    async fn own_send(&self, n: i64, id: &str) -> Result<crate::store::SendView, ActionError> {
        self.app
            .store
            .get_send(id)
            .await?
            .filter(|s| s.account == self.account.name)
            .ok_or_else(|| ActionError::bad(format!("no message {n}")))
    }

    async fn delete_msg(&self) -> Result<Value, ActionError> {
        let n = int(&self.params, "message_id")?;
        let id = match self.ids().message_ref(n).await? {
            Some(MessageRef::Send(id)) => id,
            Some(MessageRef::Event(_)) => {
                return Err(ActionError::bad(
                    "only messages the bot sent can be recalled (WeChat recalls no one else's)",
                ));
            }
            None => return Err(ActionError::bad(format!("no message {n}"))),
        };
        let send = self.own_send(n, &id).await?;
        let message_id = match (send.status, send.message_id) {
            (SendStatus::Sent, Some(m)) if !m.is_empty() => m,
            (SendStatus::Queued, _) => {
                return Err(ActionError::failed(
                    "the message is still queued; there is nothing to recall yet",
                ));
            }
            _ => {
                return Err(ActionError::failed(
                    "the message was not sent, or the puppet gave it no id: nothing to recall",
                ));
            }
        };
        self.operate(Action::Recall {
            send_id: id,
            message_id,
        })
        .await
    }

    async fn get_msg(&self) -> Result<Value, ActionError> {
        let n = int(&self.params, "message_id")?;
        let format = self.app.onebot.format;
        match self.ids().message_ref(n).await? {
            Some(MessageRef::Event(seq)) => {
                let stored = self
                    .app
                    .store
                    .events_after(seq - 1, 1)
                    .await?
                    .into_iter()
                    .find(|e| e.seq == seq && e.account == self.account.name)
                    .ok_or_else(|| {
                        ActionError::bad(format!(
                            "message {n} is no longer kept (storage.retention)"
                        ))
                    })?;
                let m: MessageData = serde_json::from_str(&stored.data_json)
                    .map_err(|e| ActionError::failed(format!("the stored message: {e}")))?;
                let bot = crate::event::BotRef {
                    id: self.bot().map(|b| b.id).unwrap_or_default(),
                    name: self.bot().map(|b| b.name).unwrap_or_default(),
                };
                let segments = event::segments(self.ids(), &self.account.name, &m, &bot).await?;
                let mut v = json!({
                    "time": stored.created_at.div_euclid(1000),
                    "message_type": if m.room.is_some() { "group" } else { "private" },
                    "message_id": n,
                    "real_id": n,
                    "sender": event::sender(self.user_id(&m.from.id).await?, &m.from, m.room.is_some()),
                    "message": message::render(&segments, format),
                    "raw_message": message::to_cq(&segments),
                });
                if let Some(room) = &m.room {
                    v["group_id"] = json!(self.ids().group(&room.id).await?);
                }
                Ok(v)
            }
            Some(MessageRef::Send(id)) => {
                let send = self.own_send(n, &id).await?;
                let (request, at) = send.request.unwrap_or_default();
                let (to, segments) = match serde_json::from_str::<Queued>(&request) {
                    Ok(Queued::Message(SendRequest { to, content })) => {
                        (Some(to), sent_segments(&content))
                    }
                    _ => (None, Vec::new()),
                };
                let bot_name = self.bot().map(|b| b.name).unwrap_or_default();
                let self_id = self.self_id().await?;
                let mut v = json!({
                    "time": at.div_euclid(1000),
                    "message_type": if matches!(to, Some(Recipient::Room(_) | Recipient::RoomTopic(_))) { "group" } else { "private" },
                    "message_id": n,
                    "real_id": n,
                    "sender": {"user_id": self_id, "nickname": bot_name},
                    "message": message::render(&segments, format),
                    "raw_message": message::to_cq(&segments),
                });
                if let Some(Recipient::Room(room)) = &to {
                    v["group_id"] = json!(self.ids().group(room).await?);
                }
                Ok(v)
            }
            None => Err(ActionError::bad(format!("no message {n}"))),
        }
    }

    async fn dispatch(&self, action: &str) -> Result<Value, ActionError> {
        let puppet = &self.account.puppet;
        match action {
            "send_msg" => self.send_msg().await,
            "send_private_msg" => {
                let contact = self.contact_id("user_id").await?;
                self.send(Recipient::Contact(contact), false).await
            }
            "send_group_msg" => {
                let room = self.room_id().await?;
                self.send(Recipient::Room(room), true).await
            }
            "delete_msg" => self.delete_msg().await,
            "get_msg" => self.get_msg().await,
            "get_login_info" => Ok(json!({
                "user_id": self.self_id().await?,
                "nickname": self.bot().map(|b| b.name).unwrap_or_default(),
            })),
            "get_friend_list" => {
                let contacts = puppet.contacts().await.map_err(puppet_failed)?;
                let mut out = Vec::new();
                for c in contacts.iter().filter(|c| c.friend && !c.is_self) {
                    out.push(self.friend_json(c).await?);
                }
                Ok(Value::Array(out))
            }
            "get_stranger_info" => {
                let id = self.contact_id("user_id").await?;
                let contacts = puppet.contacts().await.map_err(puppet_failed)?;
                let c = contacts
                    .iter()
                    .find(|c| c.id == id)
                    .ok_or_else(|| ActionError::bad(format!("no contact {id}")))?;
                Ok(event::sender(self.user_id(&c.id).await?, c, false))
            }
            "get_group_list" => {
                let rooms = puppet.rooms().await.map_err(puppet_failed)?;
                let mut out = Vec::new();
                for r in &rooms {
                    out.push(self.group_json(r).await?);
                }
                Ok(Value::Array(out))
            }
            "get_group_info" => {
                let room = self.room().await?;
                self.group_json(&room).await
            }
            "get_group_member_list" => {
                let room = self.room().await?;
                let group_id = self.ids().group(&room.id).await?;
                let members = puppet.room_members(&room.id).await.map_err(puppet_failed)?;
                let mut out = Vec::new();
                for c in &members {
                    out.push(self.member_json(group_id, c).await?);
                }
                Ok(Value::Array(out))
            }
            "get_group_member_info" => {
                let room = self.room().await?;
                let contact = self.contact_id("user_id").await?;
                let group_id = self.ids().group(&room.id).await?;
                let members = puppet.room_members(&room.id).await.map_err(puppet_failed)?;
                let c = members.iter().find(|c| c.id == contact).ok_or_else(|| {
                    ActionError::bad(format!("{contact} is not a member of group {group_id}"))
                })?;
                self.member_json(group_id, c).await
            }
            "get_status" => Ok(json!({
                "online": self.account.session.get().user.is_some(),
                "good": self.app.store.write_failure().is_none(),
                "account": self.account.name,
            })),
            "get_version_info" => Ok(json!({
                "app_name": crate::onebot::APP_NAME,
                "app_version": env!("CARGO_PKG_VERSION"),
                "protocol_version": crate::onebot::PROTOCOL_VERSION,
            })),
            "can_send_image" => Ok(json!({"yes": true})),
            // Audio goes out as a file, not as a voice message.
            "can_send_record" => Ok(json!({"yes": false})),
            "set_friend_add_request" => {
                let flag = text(&self.params, "flag")
                    .ok_or_else(|| ActionError::bad("`flag` is required (the request's flag)"))?
                    .to_string();
                if !boolean(&self.params, "approve", true) {
                    // WeChat has no "reject": an unanswered request expires.
                    return Ok(Value::Null);
                }
                self.operate(Action::FriendshipAccept { id: flag }).await
            }
            "set_group_add_request" => {
                let flag = text(&self.params, "flag")
                    .ok_or_else(|| ActionError::bad("`flag` is required (the request's flag)"))?
                    .to_string();
                if !boolean(&self.params, "approve", true) {
                    return Ok(Value::Null);
                }
                self.operate(Action::RoomInvitationAccept { id: flag })
                    .await
            }
            "set_group_leave" => {
                let room = self.room_id().await?;
                self.operate(Action::RoomQuit { room }).await
            }
            "set_group_kick" => {
                let room = self.room_id().await?;
                let contact = self.contact_id("user_id").await?;
                self.operate(Action::RoomRemove { room, contact }).await
            }
            "set_group_name" => {
                let room = self.room_id().await?;
                let topic = text(&self.params, "group_name")
                    .ok_or_else(|| ActionError::bad("`group_name` is required"))?
                    .to_string();
                self.operate(Action::RoomUpdate {
                    room,
                    topic: Some(topic),
                    announce: None,
                })
                .await
            }
            other => Err(ActionError::unknown(other)),
        }
    }
}

/// The segments of a message waas sent (what `get_msg` shows of it).
fn sent_segments(content: &crate::send::Content) -> Vec<Segment> {
    use crate::send::Content;
    match content {
        Content::Text { text, .. } => vec![Segment::text(text.clone())],
        Content::Image(f) => vec![Segment::new(
            "image",
            &[
                ("file", f.name.clone()),
                ("url", f.url.clone().unwrap_or_default()),
            ],
        )],
        Content::File(f) => vec![Segment::new("file", &[("file", f.name.clone())])],
        Content::Link(l) => vec![Segment::new(
            "share",
            &[("url", l.url.clone()), ("title", l.title.clone())],
        )],
        _ => Vec::new(),
    }
}

#[async_trait::async_trait]
impl Actions for Bot {
    async fn call(
        &self,
        account: &str,
        action: &str,
        params: Map<String, Value>,
    ) -> Result<Value, ActionError> {
        let Some(account) = self.0.accounts.get(account) else {
            return Err(ActionError::failed(format!("no account `{account}`")));
        };
        let call = Call {
            app: &self.0,
            account,
            params,
        };
        let result = call.dispatch(action).await;
        if let Err(e) = &result {
            tracing::info!(action, account = %account.name, retcode = e.retcode, reason = %e.message, "a OneBot action was refused");
        }
        result
    }

    fn online(&self, account: &str) -> bool {
        self.0
            .accounts
            .get(account)
            .is_some_and(|a| a.session.get().user.is_some())
    }
}
