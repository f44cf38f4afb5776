//! The WeChat session: login state, QR code, logged-in user.

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use super::{ApiError, AppState};
use crate::puppet::Session;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/session", get(session))
        .route("/v1/session/qr.svg", get(qr))
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
pub(super) async fn qr(State(app): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    super::home::qr_response(&app)
}

/// The login state, the QR code to scan (while waiting for one), the bot's account.
#[utoipa::path(get, path = "/v1/session", operation_id = "get_session", tag = "session", responses((status = 200, body = Session)))]
pub(super) async fn session(State(app): State<AppState>) -> Json<Session> {
    Json(app.session.get())
}
