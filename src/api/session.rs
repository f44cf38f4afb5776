//! The WeChat session: login state, QR code, logged-in user.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use super::{ApiError, AppState};
use crate::puppet::{Session, qr_svg};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/session", get(session))
        .route("/v1/session/qr.svg", get(qr))
}

/// The current login QR code, rendered here (no third-party QR service sees it).
async fn qr(State(app): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let session = app.session.get();
    let payload = session.qr.map(|q| q.payload).ok_or_else(|| {
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
    ))
}

async fn session(State(app): State<AppState>) -> Json<Session> {
    Json(app.session.get())
}
