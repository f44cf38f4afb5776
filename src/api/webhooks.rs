//! The configured webhooks and their health.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::{ApiError, AppState};
use crate::event::format_millis;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/webhooks", get(list))
}

async fn list(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let stats = app.store.webhook_stats().await?;
    let hooks: Vec<Value> = app
        .dispatcher
        .targets()
        .iter()
        .map(|t| {
            let s = stats.get(&t.settings.name).cloned().unwrap_or_default();
            let failing = match (s.last_error_at, s.last_success_at) {
                (Some(err), Some(ok)) => err > ok,
                (Some(_), None) => true,
                _ => false,
            };
            let state = if t.is_disabled() {
                "disabled"
            } else if failing {
                "failing"
            } else {
                "healthy"
            };
            json!({
                "name": t.settings.name,
                "url": t.settings.url,
                "state": state,
                "pending": s.pending,
                "dead": s.dead,
                "last_success_at": s.last_success_at.map(format_millis),
                "last_error": s.last_error,
                "disabled_reason": s.disabled_reason,
            })
        })
        .collect();
    Ok(Json(json!({"webhooks": hooks})))
}
