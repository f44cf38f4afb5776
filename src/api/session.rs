//! The WeChat session: login state, QR code, logged-in user.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use super::AppState;
use crate::puppet::Session;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/session", get(session))
}

async fn session(State(app): State<AppState>) -> Json<Session> {
    Json(app.session.get())
}
