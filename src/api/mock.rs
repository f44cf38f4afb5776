//! The mock puppet's controls: inject inbound messages, confirm the QR login, read what
//! the bot sent. Present only with `puppet.kind = "mock"`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiJson, AppState};
use crate::ingest::Recorded;
use crate::puppet::mock::{Injection, MockError, MockPuppet};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/mock/messages", post(inject))
        .route("/v1/mock/sent", get(sent))
        .route("/v1/mock/scan", post(scan))
}

fn mock(app: &AppState) -> Result<Arc<MockPuppet>, ApiError> {
    app.mock.clone().ok_or_else(|| {
        ApiError::not_found("the /v1/mock routes exist only with puppet.kind = \"mock\"")
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InjectBody {
    /// Contact id or name.
    from: String,
    /// Room id or topic.
    #[serde(default)]
    room: Option<String>,
    text: String,
    #[serde(default)]
    mentions: Vec<String>,
    /// Puppet message id; reuse one to simulate a replay.
    #[serde(default)]
    id: Option<String>,
}

/// 201 once the message event is committed.
async fn inject(
    State(app): State<AppState>,
    ApiJson(body): ApiJson<InjectBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let mock = mock(&app)?;
    let injection = Injection {
        from: body.from,
        room: body.room,
        text: body.text,
        mentions: body.mentions,
        id: body.id,
    };
    match mock.inject(injection).await {
        Ok((Recorded::Stored(a), message_id)) if !a.duplicate => Ok((
            StatusCode::CREATED,
            Json(json!({"event_id": a.id, "message_id": message_id})),
        )),
        Ok((Recorded::Stored(a), message_id)) => Ok((
            StatusCode::OK,
            Json(json!({"event_id": a.id, "message_id": message_id, "duplicate": true})),
        )),
        Ok((Recorded::Skipped(reason), message_id)) => Ok((
            StatusCode::OK,
            Json(json!({"event_id": null, "message_id": message_id, "skipped": reason})),
        )),
        Err(MockError::Invalid(m)) => Err(ApiError::invalid(m)),
        Err(MockError::NotFound(m)) => Err(ApiError::not_found(m)),
        Err(e @ (MockError::NotLoggedIn | MockError::NotRunning)) => {
            Err(ApiError::not_ready(e.to_string()))
        }
        Err(MockError::Store(e)) => Err(e.into()),
    }
}

async fn sent(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"messages": mock(&app)?.sent()})))
}

async fn scan(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    if mock(&app)?.confirm_scan() {
        Ok(Json(json!({"ok": true})))
    } else {
        Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_pending_scan",
            "there is no QR login waiting to be confirmed",
        ))
    }
}
