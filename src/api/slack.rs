//! Slack-compatible routes: the Web API subset a Bolt app calls (`/slack/api/{method}`)
//! and Slack-style incoming webhooks (`/slack/hooks/{token}`).
//!
//! The Web API answers as Slack does: always HTTP 200, `{"ok": true, …}` or
//! `{"ok": false, "error": "snake_case"}`. A caller is the Slack app of a `format =
//! "slack"` webhook, known by its `bot_token` (compared in constant time), and acts on
//! that webhook's account. Ids are WeChat's own: `channel` is a room id or a contact id
//! (a direct chat), `user` a contact id; the `ts` of a message waas sent is kept in the
//! store, so `chat.delete` and the like accept it back after a restart.
//!
//! Messages go through the durable send queue like every other send: paced, resolved
//! against the directory, answered only once committed.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq;

use super::messages::queue_send;
use super::{AppState, idempotency_key};
use crate::account::Account;
use crate::event::{Contact, Room, now_millis};
use crate::relay::dispatcher::Target;
use crate::relay::format::slack::bot_id;
use crate::send::{Content, Recipient};
use crate::store::SendStatus;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/slack/api/{method}", post(web_api).get(web_api))
        .route("/slack/hooks/{token}", post(incoming))
}

/// The `ts` kind in the id map.
const TS: &str = "slack_ts";

/// A Web API answer: HTTP 200 and Slack's JSON.
fn slack_ok(mut body: Map<String, Value>) -> Response {
    body.insert("ok".into(), Value::Bool(true));
    (StatusCode::OK, axum::Json(Value::Object(body))).into_response()
}

fn slack_error(error: &str) -> Response {
    (
        StatusCode::OK,
        axum::Json(json!({"ok": false, "error": error})),
    )
        .into_response()
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// The call's arguments, from the query string and a JSON or form body (Slack's SDKs
/// use both). A form value that is JSON (`blocks`, `attachments`) is read as JSON.
fn arguments(
    headers: &HeaderMap,
    query: Option<&str>,
    body: &[u8],
) -> Result<Map<String, Value>, &'static str> {
    let mut args = Map::new();
    let form = |raw: &[u8], args: &mut Map<String, Value>| {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(raw).unwrap_or_default();
        for (k, v) in pairs {
            let value = match k.as_str() {
                "blocks" | "attachments" => serde_json::from_str(&v).unwrap_or(Value::String(v)),
                _ => Value::String(v),
            };
            args.insert(k, value);
        }
    };
    if let Some(q) = query {
        form(q.as_bytes(), &mut args);
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"));
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(args);
    }
    if is_json {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => args.extend(map),
            _ => return Err("invalid_json"),
        }
    } else {
        form(body, &mut args);
    }
    Ok(args)
}

/// The slack webhook whose `bot_token` the call carries.
fn caller(app: &AppState, headers: &HeaderMap, args: &Map<String, Value>) -> Option<Arc<Target>> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(super::bearer_token)
        .map(str::to_string)
        .or_else(|| {
            args.get("token")
                .and_then(Value::as_str)
                .map(str::to_string)
        })?;
    // Every candidate is compared, so the time taken says nothing about which matched.
    let mut found = None;
    for target in app.dispatcher.targets() {
        if let Some(token) = &target.settings.bot_token
            && bool::from(token.expose().as_bytes().ct_eq(given.as_bytes()))
        {
            found = Some(target);
        }
    }
    found
}

fn account_of(app: &AppState, target: &Target) -> Option<Arc<Account>> {
    let name = target.settings.slack_account(&app.settings.accounts)?;
    app.accounts.get(name).cloned()
}

/// Methods Slack has that WeChat cannot do; each is named in the log once.
const NOT_SUPPORTED: &[&str] = &[
    "chat.update",
    "chat.postEphemeral",
    "chat.scheduleMessage",
    "chat.getPermalink",
    "reactions.add",
    "reactions.remove",
    "reactions.get",
    "files.upload",
    "files.uploadV2",
    "files.getUploadURLExternal",
    "files.completeUploadExternal",
    "views.open",
    "views.publish",
    "views.push",
    "views.update",
    "pins.add",
    "pins.remove",
    "conversations.history",
    "conversations.replies",
    "conversations.join",
    "conversations.open",
    "conversations.create",
    "conversations.invite",
    "conversations.kick",
    "conversations.setTopic",
    "conversations.leave",
    "users.conversations",
    "users.lookupByEmail",
    "team.info",
    "bots.info",
    "apps.connections.open",
];

fn log_not_supported(method: &str) {
    static SEEN: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(Default::default);
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if seen.insert(method.to_string()) {
        tracing::warn!(
            method,
            "a Slack app called a Web API method WeChat cannot do; it is answered `not_supported`"
        );
    }
}

async fn web_api(
    State(app): State<AppState>,
    Path(method): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let args = match arguments(&headers, query.as_deref(), &body) {
        Ok(args) => args,
        Err(error) => return slack_error(error),
    };
    let Some(target) = caller(&app, &headers, &args) else {
        return slack_error(
            if headers.contains_key(header::AUTHORIZATION) || args.contains_key("token") {
                "invalid_auth"
            } else {
                "not_authed"
            },
        );
    };
    let Some(account) = account_of(&app, &target) else {
        return slack_error("account_inactive");
    };
    let call = Call {
        app: &app,
        target: &target,
        account: &account,
        args: &args,
        headers: &headers,
    };
    match method.as_str() {
        "api.test" => slack_ok(object(json!({"args": args}))),
        "auth.test" => call.auth_test(),
        "chat.postMessage" => call.post_message().await,
        "chat.delete" => call.delete().await,
        "users.info" => call.users_info().await,
        "users.list" => call.users_list().await,
        "conversations.info" => call.conversations_info().await,
        "conversations.list" => call.conversations_list().await,
        "conversations.members" => call.conversations_members().await,
        m if NOT_SUPPORTED.contains(&m) => {
            log_not_supported(m);
            slack_error("not_supported")
        }
        _ => slack_error("unknown_method"),
    }
}

struct Call<'a> {
    app: &'a AppState,
    target: &'a Target,
    account: &'a Account,
    args: &'a Map<String, Value>,
    headers: &'a HeaderMap,
}

impl Call<'_> {
    fn arg(&self, name: &str) -> Option<&str> {
        self.args
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }

    /// The bot's own WeChat user, once logged in.
    fn bot(&self) -> Option<Contact> {
        self.account.session.get().user
    }

    fn auth_test(&self) -> Response {
        let bot = self.bot();
        let base = self.app.settings.server.public_url.trim_end_matches('/');
        slack_ok(object(json!({
            "url": format!("{base}/"),
            "team": self.account.name,
            "team_id": self.account.name,
            "user": bot.as_ref().map(|b| b.name.clone()).unwrap_or_default(),
            "user_id": bot.as_ref().map(|b| b.id.clone()).unwrap_or_default(),
            "bot_id": bot_id(&self.target.settings.name),
            "app_id": crate::relay::format::slack::app_id(&self.target.settings.name),
            "is_enterprise_install": false,
        })))
    }

    /// Finds what a `channel` names: a room, or a contact (a direct chat).
    async fn channel(&self, id: &str) -> Result<Channel, Response> {
        let rooms = self
            .account
            .puppet
            .rooms()
            .await
            .map_err(|_| slack_error("fatal_error"))?;
        if let Some(room) = rooms.into_iter().find(|r| r.id == id) {
            return Ok(Channel::Room(room));
        }
        let contacts = self
            .account
            .puppet
            .contacts()
            .await
            .map_err(|_| slack_error("fatal_error"))?;
        match contacts.into_iter().find(|c| c.id == id) {
            Some(contact) => Ok(Channel::Direct(contact)),
            None => Err(slack_error("channel_not_found")),
        }
    }

    async fn post_message(&self) -> Response {
        let Some(channel_id) = self.arg("channel") else {
            return slack_error("channel_not_found");
        };
        let written = match self.arg("text") {
            Some(text) => text.to_string(),
            None => flatten(self.args),
        };
        if written.trim().is_empty() {
            return slack_error("no_text");
        }
        let channel = match self.channel(channel_id).await {
            Ok(c) => c,
            Err(answer) => return answer,
        };
        let contacts = self.account.puppet.contacts().await.unwrap_or_default();
        let (text, mentioned) = to_wechat(&written, &contacts);
        let (to, mentions) = match &channel {
            Channel::Room(room) => (Recipient::Room(room.id.clone()), mentioned),
            Channel::Direct(contact) => (Recipient::Contact(contact.id.clone()), Vec::new()),
        };
        let key = match idempotency_key(self.headers) {
            Ok(key) => key,
            Err(_) => return slack_error("invalid_arguments"),
        };
        let content = Content::Text {
            text: text.clone(),
            mentions,
        };
        let view = match queue_send(self.app, self.account, to, content, key).await {
            Ok(view) => view,
            Err(e) if e.status() == StatusCode::NOT_FOUND => {
                return slack_error("channel_not_found");
            }
            Err(e) if e.status().is_server_error() => {
                tracing::error!(error = %e.message(), "chat.postMessage: the send could not be queued");
                return slack_error("internal_error");
            }
            Err(e) => {
                tracing::info!(error = %e.message(), "chat.postMessage refused");
                return slack_error("invalid_arguments");
            }
        };
        let ts = match self.ts_for(&view.id).await {
            Ok(ts) => ts,
            Err(answer) => return answer,
        };
        let bot = self.bot();
        slack_ok(object(json!({
            "channel": channel_id,
            "ts": ts,
            "message": {
                "type": "message",
                "subtype": "bot_message",
                "text": written,
                "user": bot.map(|b| b.id).unwrap_or_default(),
                "bot_id": bot_id(&self.target.settings.name),
                "ts": ts,
                "team": self.account.name,
            },
            "waas_message_id": view.id,
            "waas_status": match view.status {
                SendStatus::Queued => "queued",
                SendStatus::Sent => "sent",
                SendStatus::Failed => "failed",
            },
        })))
    }

    /// The `ts` a send is known by: the one it was given (an idempotent replay), or a
    /// new one, unique, kept in the store.
    async fn ts_for(&self, send_id: &str) -> Result<String, Response> {
        let store = &self.app.store;
        let failed = |e: crate::store::StoreError| {
            tracing::error!(error = %e, "cannot keep a message's ts");
            slack_error("internal_error")
        };
        if let Some(ts) = store.alias_of(TS, send_id).await.map_err(failed)? {
            return Ok(ts);
        }
        let now = now_millis();
        let micros = (now.rem_euclid(1000) * 1000) as u32;
        for step in 0..1000u32 {
            let ts = format!(
                "{}.{:06}",
                now.div_euclid(1000),
                (micros + step) % 1_000_000
            );
            if store
                .set_alias(TS, &ts, send_id, now)
                .await
                .map_err(failed)?
            {
                return Ok(ts);
            }
        }
        Err(slack_error("internal_error"))
    }

    async fn delete(&self) -> Response {
        let Some(ts) = self.arg("ts") else {
            return slack_error("message_not_found");
        };
        let send = match self.app.store.alias_target(TS, ts).await {
            Ok(Some(id)) => self.app.store.get_send(&id).await.ok().flatten(),
            Ok(None) => None,
            Err(_) => return slack_error("internal_error"),
        };
        let Some(send) = send.filter(|s| s.account == self.account.name) else {
            return slack_error("message_not_found");
        };
        let message_id = match (send.status, send.message_id) {
            (SendStatus::Sent, Some(id)) => id,
            // Still queued (or never sent): there is nothing in WeChat to recall yet.
            (SendStatus::Queued, _) => return slack_error("cant_delete_message"),
            _ => return slack_error("message_not_found"),
        };
        let recall = crate::action::Action::Recall {
            send_id: send.id.clone(),
            message_id,
        };
        match self.account.puppet.perform(&recall).await {
            Ok(_) => {
                tracing::info!(send_id = %send.id, "message recalled (chat.delete)");
                let channel = self.arg("channel").unwrap_or_default();
                slack_ok(object(json!({"channel": channel, "ts": ts})))
            }
            Err(crate::puppet::PuppetError::NotSupported(why)) => {
                tracing::warn!(reason = %why, "chat.delete answered not_supported");
                slack_error("not_supported")
            }
            Err(crate::puppet::PuppetError::NotFound(_)) => slack_error("message_not_found"),
            Err(e) => {
                tracing::warn!(error = %e, "chat.delete: the recall failed");
                slack_error("cant_delete_message")
            }
        }
    }

    async fn users_info(&self) -> Response {
        let Some(id) = self.arg("user") else {
            return slack_error("user_not_found");
        };
        let contacts = match self.account.puppet.contacts().await {
            Ok(c) => c,
            Err(_) => return slack_error("fatal_error"),
        };
        match contacts.iter().find(|c| c.id == id) {
            Some(c) => slack_ok(object(json!({"user": user_json(c, &self.account.name)}))),
            None => slack_error("user_not_found"),
        }
    }

    async fn users_list(&self) -> Response {
        match self.account.puppet.contacts().await {
            Ok(contacts) => slack_ok(object(json!({
                "members": contacts.iter().map(|c| user_json(c, &self.account.name)).collect::<Vec<_>>(),
                "response_metadata": {"next_cursor": ""},
            }))),
            Err(_) => slack_error("fatal_error"),
        }
    }

    async fn conversations_info(&self) -> Response {
        let Some(id) = self.arg("channel") else {
            return slack_error("channel_not_found");
        };
        match self.channel(id).await {
            Ok(channel) => slack_ok(object(json!({"channel": channel.json()}))),
            Err(answer) => answer,
        }
    }

    async fn conversations_list(&self) -> Response {
        match self.account.puppet.rooms().await {
            Ok(rooms) => slack_ok(object(json!({
                "channels": rooms.into_iter().map(|r| Channel::Room(r).json()).collect::<Vec<_>>(),
                "response_metadata": {"next_cursor": ""},
            }))),
            Err(_) => slack_error("fatal_error"),
        }
    }

    async fn conversations_members(&self) -> Response {
        let Some(id) = self.arg("channel") else {
            return slack_error("channel_not_found");
        };
        match self.channel(id).await {
            Ok(Channel::Room(room)) => match self.account.puppet.room_members(&room.id).await {
                Ok(members) => slack_ok(object(json!({
                    "members": members.into_iter().map(|c| c.id).collect::<Vec<_>>(),
                    "response_metadata": {"next_cursor": ""},
                }))),
                Err(_) => slack_error("fatal_error"),
            },
            Ok(Channel::Direct(contact)) => {
                let mut members = vec![contact.id];
                members.extend(self.bot().map(|b| b.id));
                slack_ok(object(
                    json!({"members": members, "response_metadata": {"next_cursor": ""}}),
                ))
            }
            Err(answer) => answer,
        }
    }
}

enum Channel {
    Room(Room),
    Direct(Contact),
}

impl Channel {
    fn json(&self) -> Value {
        match self {
            Channel::Room(room) => json!({
                "id": room.id,
                "name": room.topic,
                "is_channel": false,
                "is_group": true,
                "is_im": false,
                "is_private": true,
                "is_member": true,
                "num_members": room.member_count,
                "topic": {"value": room.topic},
            }),
            Channel::Direct(contact) => json!({
                "id": contact.id,
                "name": contact.name,
                "is_channel": false,
                "is_group": false,
                "is_im": true,
                "is_private": true,
                "user": contact.id,
            }),
        }
    }
}

fn user_json(c: &Contact, team: &str) -> Value {
    let display = c.alias.clone().unwrap_or_else(|| c.name.clone());
    json!({
        "id": c.id,
        "team_id": team,
        "name": c.name,
        "real_name": c.name,
        "is_bot": c.is_self,
        "deleted": false,
        "profile": {
            "real_name": c.name,
            "display_name": display,
            "image_72": c.avatar.clone().unwrap_or_default(),
        },
    })
}

/// Slack's mrkdwn made readable in WeChat: `<@id>` becomes `@Name` (and a WeChat
/// mention of that contact), `<url|label>` becomes `label (url)`, `<!here>` and the
/// like `@all`, and Slack's three escapes are undone. Returns the text and the mentioned
/// contact ids.
pub fn to_wechat(text: &str, contacts: &[Contact]) -> (String, Vec<String>) {
    let mut out = String::with_capacity(text.len());
    let mut mentions = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('<') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find('>') else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let inner = &after[..end];
        rest = &after[end + 1..];
        let (target, label) = match inner.split_once('|') {
            Some((t, l)) => (t, Some(l)),
            None => (inner, None),
        };
        if let Some(id) = target.strip_prefix('@') {
            let name = contacts
                .iter()
                .find(|c| c.id == id)
                .map(|c| c.name.clone())
                .or(label.map(str::to_string))
                .unwrap_or_else(|| id.to_string());
            out.push('@');
            out.push_str(&name);
            if !mentions.iter().any(|m| m == id) {
                mentions.push(id.to_string());
            }
        } else if let Some(special) = target.strip_prefix('!') {
            match special {
                "here" | "channel" | "everyone" => out.push_str("@all"),
                other => out.push_str(label.unwrap_or(other)),
            }
        } else if let Some(channel) = target.strip_prefix('#') {
            out.push('#');
            out.push_str(label.unwrap_or(channel));
        } else {
            match label {
                Some(l) if l != target => {
                    out.push_str(l);
                    out.push_str(" (");
                    out.push_str(target.trim_start_matches("mailto:"));
                    out.push(')');
                }
                _ => out.push_str(target.trim_start_matches("mailto:")),
            }
        }
    }
    out.push_str(rest);
    let text = out
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    (text, mentions)
}

/// `blocks` and `attachments` as readable text, for a message that has no `text`
/// (and for incoming webhooks, whose senders put the substance there): headers and
/// sections, their fields, context lines, and each attachment's pretext, title (with
/// its link), text, fields (`Title: value`) and footer.
pub fn flatten(args: &Map<String, Value>) -> String {
    let mut lines: Vec<String> = Vec::new();
    let text_of = |v: &Value| -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => o.get("text").and_then(Value::as_str).map(str::to_string),
            _ => None,
        }
    };
    if let Some(text) = args
        .get("text")
        .and_then(Value::as_str)
        .filter(|t| !t.trim().is_empty())
    {
        lines.push(text.to_string());
    }
    for block in args
        .get("blocks")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match block["type"].as_str().unwrap_or_default() {
            "header" | "section" => {
                if let Some(t) = text_of(&block["text"]) {
                    lines.push(t);
                }
                for field in block["fields"].as_array().into_iter().flatten() {
                    if let Some(t) = text_of(field) {
                        lines.push(t);
                    }
                }
            }
            "context" => {
                let parts: Vec<String> = block["elements"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(text_of)
                    .collect();
                if !parts.is_empty() {
                    lines.push(parts.join(" "));
                }
            }
            "rich_text" => {
                let mut line = String::new();
                for section in block["elements"].as_array().into_iter().flatten() {
                    for element in section["elements"].as_array().into_iter().flatten() {
                        if let Some(t) = element["text"].as_str() {
                            line.push_str(t);
                        } else if let Some(url) = element["url"].as_str() {
                            line.push_str(url);
                        }
                    }
                }
                if !line.is_empty() {
                    lines.push(line);
                }
            }
            "divider" => lines.push("────────".into()),
            _ => {}
        }
    }
    for attachment in args
        .get("attachments")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let before = lines.len();
        let field = |name: &str| attachment[name].as_str().filter(|s| !s.trim().is_empty());
        if let Some(p) = field("pretext") {
            lines.push(p.to_string());
        }
        match (field("title"), field("title_link")) {
            (Some(title), Some(link)) => lines.push(format!("{title} ({link})")),
            (Some(title), None) => lines.push(title.to_string()),
            _ => {}
        }
        if let Some(t) = field("text") {
            lines.push(t.to_string());
        }
        for f in attachment["fields"].as_array().into_iter().flatten() {
            match (f["title"].as_str(), f["value"].as_str()) {
                (Some(t), Some(v)) if !t.is_empty() => lines.push(format!("{t}: {v}")),
                (_, Some(v)) => lines.push(v.to_string()),
                _ => {}
            }
        }
        if let Some(footer) = field("footer") {
            lines.push(footer.to_string());
        }
        if lines.len() == before
            && let Some(fallback) = field("fallback")
        {
            lines.push(fallback.to_string());
        }
    }
    lines.join("\n")
}

/// A Slack-style incoming webhook: the body (JSON, or a form with `payload`) becomes
/// one message into the configured chat. `ok` only once it is queued durably.
async fn incoming(
    State(app): State<AppState>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let plain = |status: StatusCode, text: &'static str| {
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            text,
        )
            .into_response()
    };
    // Every hook is compared, so the time taken says nothing about which matched.
    let mut found = None;
    for hook in &app.settings.incoming {
        if bool::from(hook.token.expose().as_bytes().ct_eq(token.as_bytes())) {
            found = Some(hook);
        }
    }
    let Some(hook) = found else {
        return plain(StatusCode::NOT_FOUND, "no_service");
    };
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"));
    let parsed: Option<Value> = if is_json {
        serde_json::from_slice(&body).ok()
    } else {
        // Slack also takes `payload=<json>` as a form.
        serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body)
            .unwrap_or_default()
            .into_iter()
            .find(|(k, _)| k == "payload")
            .and_then(|(_, v)| serde_json::from_str(&v).ok())
            .or_else(|| serde_json::from_slice(&body).ok())
    };
    let Some(Value::Object(args)) = parsed else {
        return plain(StatusCode::BAD_REQUEST, "invalid_payload");
    };
    let written = flatten(&args);
    if written.trim().is_empty() {
        return plain(StatusCode::BAD_REQUEST, "no_text");
    }
    let account = match &hook.account {
        Some(name) => app.accounts.get(name).cloned(),
        None => app.accounts.unscoped().ok().cloned(),
    };
    let Some(account) = account else {
        return plain(StatusCode::NOT_FOUND, "no_service");
    };
    let contacts = account.puppet.contacts().await.unwrap_or_default();
    let (text, mentions) = to_wechat(&written, &contacts);
    let mentions = match hook.to {
        Recipient::Room(_) | Recipient::RoomTopic(_) => mentions,
        _ => Vec::new(),
    };
    let key = idempotency_key(&headers).ok().flatten();
    match queue_send(
        &app,
        &account,
        hook.to.clone(),
        Content::Text { text, mentions },
        key,
    )
    .await
    {
        Ok(view) => {
            tracing::info!(incoming = %hook.name, send_id = %view.id, "incoming webhook message queued");
            plain(StatusCode::OK, "ok")
        }
        Err(e) if e.status() == StatusCode::NOT_FOUND => {
            tracing::error!(incoming = %hook.name, error = %e.message(), "incoming webhook: its chat does not exist");
            plain(StatusCode::NOT_FOUND, "channel_not_found")
        }
        Err(e) if e.status().is_server_error() => {
            tracing::error!(incoming = %hook.name, error = %e.message(), "incoming webhook: the message could not be queued");
            plain(StatusCode::SERVICE_UNAVAILABLE, "internal_error")
        }
        Err(e) => {
            tracing::info!(incoming = %hook.name, error = %e.message(), "incoming webhook refused");
            plain(StatusCode::BAD_REQUEST, "invalid_payload")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contact(id: &str, name: &str) -> Contact {
        serde_json::from_value(json!({
            "id": id, "name": name, "alias": null, "friend": true, "gender": "unknown",
            "province": null, "city": null, "avatar": null, "self": false
        }))
        .unwrap()
    }

    #[test]
    fn slack_markup_reads_well_in_wechat() {
        let contacts = [contact("wxid_alice", "Alice")];
        let (text, mentions) = to_wechat(
            "Hi <@wxid_alice>! See <https://example.com/x|the docs> &amp; <!here> &lt;3",
            &contacts,
        );
        assert_eq!(
            text,
            "Hi @Alice! See the docs (https://example.com/x) & @all <3"
        );
        assert_eq!(mentions, ["wxid_alice"]);
    }

    #[test]
    fn alertmanager_and_grafana_payloads_flatten_to_text() {
        let alert = object(json!({
            "attachments": [{
                "title": "[FIRING:1] HighLatency api",
                "title_link": "http://alertmanager/#/alerts",
                "text": "p99 above 2s for 5m",
                "fields": [{"title": "severity", "value": "page", "short": true}],
                "fallback": "[FIRING:1] HighLatency"
            }]
        }));
        assert_eq!(
            flatten(&alert),
            "[FIRING:1] HighLatency api (http://alertmanager/#/alerts)\np99 above 2s for 5m\nseverity: page"
        );
        let blocks = object(json!({
            "blocks": [
                {"type": "header", "text": {"type": "plain_text", "text": "Deploy done"}},
                {"type": "section", "fields": [{"type": "mrkdwn", "text": "*env* prod"}]},
                {"type": "context", "elements": [{"type": "mrkdwn", "text": "by ci"}]}
            ]
        }));
        assert_eq!(flatten(&blocks), "Deploy done\n*env* prod\nby ci");
    }
}
