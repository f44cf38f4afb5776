//! `GET /`: a small page for a person with a browser, until the console exists: the
//! session's state, the QR code while a scan is needed (in open mode only: with auth
//! configured, whoever scans it would take the bot over, so it stays behind a token),
//! and links to the API.
//!
//! `GET /qr.svg?expires=…&sig=…`: the QR code through a short-lived signed link, for
//! clients that cannot send headers (the original polling client's `qrurl`).

use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::{ApiError, AppState};
use crate::account::Account;
use crate::puppet::{SessionState, qr_svg};

/// How long a signed QR link works.
const QR_LINK_TTL: Duration = Duration::from_secs(300);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(home))
        .route("/qr.svg", get(signed_qr))
}

/// A link to an account's current QR code that needs no credential for a few minutes:
/// signed with a key that lives only in this process.
pub fn signed_qr_link(app: &AppState, account: &str) -> String {
    let expires = time::OffsetDateTime::now_utc().unix_timestamp() + QR_LINK_TTL.as_secs() as i64;
    format!(
        "{}/qr.svg?account={account}&expires={expires}&sig={}",
        app.settings.server.public_url.trim_end_matches('/'),
        qr_signature(app, account, expires)
    )
}

fn qr_signature(app: &AppState, account: &str, expires: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(&app.link_key).expect("HMAC takes any key length");
    mac.update(format!("qr.svg:{account}:{expires}").as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[derive(Deserialize)]
struct SignedQuery {
    account: Option<String>,
    expires: Option<i64>,
    sig: Option<String>,
}

async fn signed_qr(
    State(app): State<AppState>,
    Query(q): Query<SignedQuery>,
) -> Result<Response, ApiError> {
    let (Some(account), Some(expires), Some(sig)) = (q.account, q.expires, q.sig) else {
        return Err(forbidden(
            "this link needs `account`, `expires` and `sig` (GET /api/scan gives one)",
        ));
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let good = subtle::ConstantTimeEq::ct_eq(
        qr_signature(&app, &account, expires).as_bytes(),
        sig.as_bytes(),
    );
    if !bool::from(good) {
        return Err(forbidden("the link's signature does not match"));
    }
    if now > expires {
        return Err(forbidden(
            "the link has expired; ask GET /api/scan for a new one",
        ));
    }
    let account = app
        .accounts
        .get(&account)
        .ok_or_else(|| ApiError::not_found("no such account"))?;
    qr_response(account)
}

fn forbidden(message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// The QR code as SVG, or 404 when there is none to scan.
pub fn qr_response(account: &Account) -> Result<Response, ApiError> {
    let payload = account.session.get().qr.map(|q| q.payload).ok_or_else(|| {
        ApiError::not_found("there is no QR code to scan right now (see GET /v1/session)")
    })?;
    let svg =
        qr_svg(&payload).ok_or_else(|| ApiError::internal("the QR payload cannot be encoded"))?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        svg,
    )
        .into_response())
}

async fn home(State(app): State<AppState>) -> Html<String> {
    let open = !app.auth().is_configured();
    let single = app.accounts.len() == 1;
    let mut sessions = String::new();
    for account in app.accounts.iter() {
        let session = account.session.get();
        let state = serde_json::to_value(session.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let qr_path = if single {
            "/v1/session/qr.svg".to_string()
        } else {
            format!("/v1/accounts/{}/session/qr.svg", escape(&account.name))
        };
        let detail = match session.state {
            SessionState::LoggedIn => format!(
                "Logged in as <b>{}</b>.",
                escape(&session.user.map(|u| u.name).unwrap_or_default())
            ),
            SessionState::WaitingForScan if open => format!(
                "Scan this code with the WeChat app to log the bot in:<br><img src=\"{qr_path}\" width=\"256\" height=\"256\" alt=\"login QR code\">"
            ),
            SessionState::WaitingForScan => format!(
                "Waiting for the QR code to be scanned: fetch <code>{qr_path}</code> with your token (or the link <code>/t/&lt;token&gt;/api/scan</code> gives)."
            ),
            _ => escape(session.reason.as_deref().unwrap_or("")),
        };
        sessions.push_str(&format!(
            "<li>Account <b>{}</b>: <b>{state}</b> ({} puppet). {detail}</li>\n",
            escape(&account.name),
            session.puppet
        ));
    }
    let webhooks = app.dispatcher.targets().len();
    Html(format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>waas</title>
<meta http-equiv="refresh" content="5">
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem}}code{{background:#eee;padding:0 .2em}}</style>
</head><body>
<h1>waas {version}</h1>
<ul>
{sessions}</ul>
<p>{webhooks} webhook(s) configured{auth}.</p>
<ul>
<li><a href="/openapi.json">/openapi.json</a>: the HTTP API</li>
<li><a href="/v1/accounts">/v1/accounts</a>: the accounts{token}</li>
<li><a href="/v1/webhooks">/v1/webhooks</a>: webhook health{token}</li>
<li><a href="/v1/events?limit=20">/v1/events</a>: recent events{token}</li>
<li><a href="/readyz">/readyz</a>, <a href="/metrics">/metrics</a></li>
<li>Docs: README.md, docs/API.md, docs/OPERATIONS.md in the repository</li>
</ul>
<p><small>This page refreshes every 5 seconds.</small></p>
</body></html>
"#,
        version = env!("CARGO_PKG_VERSION"),
        auth = if open {
            "; the API is open (loopback only)"
        } else {
            "; the API needs a token"
        },
        token = if open { "" } else { " (needs a token)" },
    ))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
