//! The original polling API, kept with its exact shapes so its Python client works
//! unchanged: `/api/scan`, `/api/status`, `/api/message` (GET and POST). That client
//! cannot send headers, so with auth configured the token goes in the path:
//! `/t/{token}/api/…`. Without any auth configured, plain `/api/…` answers.
//!
//! Differences that fix the original's losses: `GET /api/message` returns every
//! message of the last 5 minutes (up to [`RECENT_CAP`]), not just the last 5, and keys
//! whose value would be null are omitted (the client does `msg.get('room', {})`).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq;

use std::sync::Arc;

use super::AppState;
use crate::account::Account;
use crate::event::{Contact, Gender, MessageData, format_millis, now_millis};
use crate::puppet::SessionState;
use crate::send::{Content, Recipient};

/// How far back `GET /api/message` looks.
const RECENT_MS: i64 = 5 * 60 * 1000;
/// Most messages one `GET /api/message` returns.
pub const RECENT_CAP: u32 = 2000;

type Legacy = (StatusCode, Json<Value>);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/scan", get(|s: State<AppState>| open(s, scan)))
        .route("/api/status", get(|s: State<AppState>| open(s, status)))
        .route(
            "/api/message",
            get(|s: State<AppState>| open(s, messages)).post(
                |s: State<AppState>, h: HeaderMap, b: Bytes| async move {
                    match refuse_open(&s.0) {
                        Err(refused) => refused,
                        Ok(account) => post_message(s.0, account, &h, b).await,
                    }
                },
            ),
        )
        .route(
            "/t/{token}/api/scan",
            get(|s: State<AppState>, t: Path<String>| with_token(s, t, scan)),
        )
        .route(
            "/t/{token}/api/status",
            get(|s: State<AppState>, t: Path<String>| with_token(s, t, status)),
        )
        .route(
            "/t/{token}/api/message",
            get(|s: State<AppState>, t: Path<String>| with_token(s, t, messages)).post(
                |s: State<AppState>, t: Path<String>, h: HeaderMap, b: Bytes| async move {
                    match check_token(&s.0, &t.0) {
                        Err(refused) => refused,
                        Ok(account) => post_message(s.0, account, &h, b).await,
                    }
                },
            ),
        )
}

fn failure(status: StatusCode, error: &str) -> Legacy {
    (status, Json(json!({"ok": false, "error": error})))
}

/// Plain `/api/…` is open only when no auth is configured; it acts on the only
/// account, or the one named `default`.
fn refuse_open(app: &AppState) -> Result<Arc<Account>, Legacy> {
    if app.auth().is_configured() {
        return Err(failure(
            StatusCode::UNAUTHORIZED,
            "Unauthorized: use /t/<token>/api/… with one of auth.tokens",
        ));
    }
    unscoped(app)
}

fn unscoped(app: &AppState) -> Result<Arc<Account>, Legacy> {
    app.accounts
        .unscoped()
        .cloned()
        .map_err(|e| failure(StatusCode::BAD_REQUEST, &e.to_string()))
}

/// A token of `auth.tokens`; the account is the token's when it is scoped to exactly
/// one, else the only one or `default`.
fn check_token(app: &AppState, token: &str) -> Result<Arc<Account>, Legacy> {
    let auth = app.auth();
    if !auth.is_configured() {
        return unscoped(app);
    }
    let found = auth.tokens.iter().fold(None, |found, t| {
        let hit = bool::from(t.value.as_bytes().ct_eq(token.as_bytes()));
        if hit && found.is_none() {
            Some(t)
        } else {
            found
        }
    });
    let Some(token) = found else {
        return Err(failure(StatusCode::UNAUTHORIZED, "Unauthorized"));
    };
    match token.accounts.as_deref() {
        Some([only]) => app
            .accounts
            .get(only)
            .cloned()
            .ok_or_else(|| failure(StatusCode::NOT_FOUND, "no such account")),
        Some(several) => {
            let account = unscoped(app)?;
            if several.iter().any(|a| *a == account.name) {
                Ok(account)
            } else {
                Err(failure(
                    StatusCode::FORBIDDEN,
                    "this token is scoped to several accounts; the legacy API needs one",
                ))
            }
        }
        None => unscoped(app),
    }
}

async fn open<F, Fut>(State(app): State<AppState>, handler: F) -> Legacy
where
    F: FnOnce(AppState, Arc<Account>) -> Fut,
    Fut: Future<Output = Legacy>,
{
    match refuse_open(&app) {
        Err(refused) => refused,
        Ok(account) => handler(app, account).await,
    }
}

async fn with_token<F, Fut>(
    State(app): State<AppState>,
    Path(token): Path<String>,
    handler: F,
) -> Legacy
where
    F: FnOnce(AppState, Arc<Account>) -> Fut,
    Fut: Future<Output = Legacy>,
{
    match check_token(&app, &token) {
        Err(refused) => refused,
        Ok(account) => handler(app, account).await,
    }
}

async fn scan(app: AppState, account: Arc<Account>) -> Legacy {
    let session = account.session.get();
    match session.qr {
        Some(_) => (
            StatusCode::OK,
            Json(json!({
                "ok": true,
                // With auth on, the client cannot send a token to /v1: a short-lived
                // signed link instead, that opens as it is.
                "qrurl": if app.auth().is_configured() {
                    super::home::signed_qr_link(&app, &account.name)
                } else {
                    let base = app.settings.server.public_url.trim_end_matches('/');
                    if app.accounts.len() == 1 {
                        format!("{base}/v1/session/qr.svg")
                    } else {
                        format!("{base}/v1/accounts/{}/session/qr.svg", account.name)
                    }
                },
            })),
        ),
        None => failure(StatusCode::OK, "Not initialized"),
    }
}

async fn status(_app: AppState, account: Arc<Account>) -> Legacy {
    if account.session.state() == SessionState::LoggedIn {
        (StatusCode::OK, Json(json!({"ok": true, "login": true})))
    } else {
        failure(StatusCode::OK, "Not login")
    }
}

async fn messages(app: AppState, account: Arc<Account>) -> Legacy {
    let since = now_millis() - RECENT_MS;
    match app.store.recent_events("message", since, RECENT_CAP).await {
        Ok(events) => {
            let messages: Vec<Value> = events
                .iter()
                .filter(|e| e.account == account.name)
                .filter_map(|e| serde_json::from_str::<MessageData>(&e.data_json).ok())
                .map(|m| seed_message(&m))
                .collect();
            (
                StatusCode::OK,
                Json(json!({"ok": true, "messages": messages})),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "GET /api/message cannot read the store");
            failure(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

#[derive(Deserialize)]
struct LegacySend {
    name: Option<String>,
    topic: Option<String>,
    text: Option<String>,
}

/// `{name?, topic?, text}`: to a room by topic, else to a contact by name.
async fn post_message(
    app: AppState,
    account: Arc<Account>,
    headers: &HeaderMap,
    body: Bytes,
) -> Legacy {
    // JSON only (the original client posts JSON): a `text/plain` form from a web page
    // must not make the bot send.
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return failure(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the body as JSON with content-type: application/json",
        );
    }
    let key = match super::idempotency_key(headers) {
        Ok(key) => key,
        Err(e) => return failure(e.status(), e.message()),
    };
    let send: LegacySend = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => return failure(StatusCode::BAD_REQUEST, &format!("invalid JSON: {e}")),
    };
    let Some(text) = send.text.filter(|t| !t.trim().is_empty()) else {
        return failure(StatusCode::BAD_REQUEST, "text is required");
    };
    let to = match (send.topic, send.name) {
        (Some(topic), _) => Recipient::RoomTopic(topic),
        (None, Some(name)) => Recipient::ContactName(name),
        (None, None) => return failure(StatusCode::BAD_REQUEST, "name or topic is required"),
    };
    let content = Content::Text {
        text,
        mentions: Vec::new(),
    };
    match super::messages::queue_send(&app, &account, to, content, key).await {
        Ok(_) => (StatusCode::OK, Json(json!({"ok": true}))),
        Err(e) if e.status() == StatusCode::NOT_FOUND => {
            failure(StatusCode::NOT_FOUND, "Contact or room not found")
        }
        Err(e) => failure(e.status(), e.message()),
    }
}

/// A message in the original server's shape (camelCase, null keys left out).
fn seed_message(m: &MessageData) -> Value {
    let mut out = Map::new();
    out.insert("id".into(), json!(m.id));
    out.insert("from".into(), seed_contact(&m.from));
    if let Some(to) = &m.to {
        out.insert("to".into(), seed_contact(to));
    }
    if let Some(room) = &m.room {
        out.insert("room".into(), json!({"id": room.id, "topic": room.topic}));
    }
    out.insert("text".into(), json!(m.text));
    let ms = (m.sent_at.unix_timestamp_nanos() / 1_000_000) as i64;
    out.insert("date".into(), json!(format_millis(ms)));
    Value::Object(out)
}

/// Wechaty's contact shape: `gender` as its number (0 unknown, 1 male, 2 female).
fn seed_contact(c: &Contact) -> Value {
    let mut out = Map::new();
    out.insert("id".into(), json!(c.id));
    out.insert("name".into(), json!(c.name));
    if let Some(alias) = &c.alias {
        out.insert("alias".into(), json!(alias));
    }
    out.insert("isFriend".into(), json!(c.friend));
    let gender = match c.gender {
        Gender::Unknown => 0,
        Gender::Male => 1,
        Gender::Female => 2,
    };
    out.insert("gender".into(), json!(gender));
    if let Some(p) = &c.province {
        out.insert("province".into(), json!(p));
    }
    if let Some(city) = &c.city {
        out.insert("city".into(), json!(city));
    }
    out.insert("isSelf".into(), json!(c.is_self));
    Value::Object(out)
}
