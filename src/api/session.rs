//! The WeChat session: login state, QR code, logged-in user.

use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use super::{Acct, ApiError, AppState};
use crate::puppet::Session;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/session", get(session))
        .route("/v1/session/qr.svg", get(qr))
        .route("/v1/accounts", get(accounts))
}

/// The current login QR code, rendered here (no third-party QR service sees it).
#[utoipa::path(
    get,
    path = "/v1/session/qr.svg", operation_id = "get_session_qr",
    tag = "session",
    responses(
        (status = 200, description = "The QR code to scan with the WeChat app", content_type = "image/svg+xml", body = String),
        (status = 404, description = "No QR code to scan right now", body = super::openapi::ErrorBody),
    )
)]
pub(super) async fn qr(Acct(account): Acct) -> Result<impl IntoResponse, ApiError> {
    super::home::qr_response(&account)
}

/// The login state, the QR code to scan (while waiting for one), the bot's account.
#[utoipa::path(get, path = "/v1/session", operation_id = "get_session", tag = "session", responses((status = 200, body = Session)))]
pub(super) async fn session(Acct(account): Acct) -> Json<Session> {
    Json(account.session.get())
}

/// One account, as `GET /v1/accounts` lists it.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct AccountView {
    name: String,
    /// `mock` or `service`.
    puppet: &'static str,
    /// The login state, as `GET /v1/accounts/{account}/session` has it.
    state: crate::puppet::SessionState,
    user: Option<crate::event::Contact>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct AccountList {
    accounts: Vec<AccountView>,
}

/// The accounts this credential may act on, with their login state. Each one's routes
/// are under `/v1/accounts/{account}/…`.
#[utoipa::path(get, path = "/v1/accounts", operation_id = "list_accounts", tag = "session", responses((status = 200, body = AccountList)))]
pub(super) async fn accounts(
    axum::extract::State(app): axum::extract::State<AppState>,
    credential: super::Credential,
) -> Json<AccountList> {
    let accounts = app
        .accounts
        .iter()
        .filter(|a| credential.allows(&a.name))
        .map(|a| {
            let session = a.session.get();
            AccountView {
                name: a.name.clone(),
                puppet: session.puppet,
                state: session.state,
                user: session.user,
            }
        })
        .collect();
    Json(AccountList { accounts })
}
