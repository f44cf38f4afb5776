//! The configured webhooks and their health.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{ApiError, ApiJson, ApiPath, AppState};
use crate::event::{EventData, format_millis, now_millis};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/webhooks", get(list))
        .route("/v1/webhooks/{name}/test", post(test))
        .route("/v1/webhooks/{name}/replay", post(replay))
        .route("/v1/webhooks/{name}/enable", post(enable))
}

fn known(app: &AppState, name: &str) -> Result<(), ApiError> {
    app.dispatcher
        .target(name)
        .map(|_| ())
        .ok_or_else(|| ApiError::not_found(format!("no webhook named `{name}`")))
}

/// Queues a `webhook.test` event to this webhook only.
async fn test(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    known(&app, &name)?;
    let appended = app
        .ingest
        .append(
            EventData::WebhookTest {
                webhook: name.clone(),
            },
            vec![name.clone()],
        )
        .await?;
    tracing::info!(webhook = %name, event = %appended.id, "test event queued");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"webhook": name, "event_id": appended.id, "seq": appended.seq})),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    after_seq: Option<i64>,
    since: Option<String>,
}

/// Re-queues this webhook's finished deliveries of the events after `after_seq`, or
/// created since `since` (RFC 3339). They go out again with their original ids.
async fn replay(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<ReplayBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    known(&app, &name)?;
    let since = match &body.since {
        Some(text) => Some(
            OffsetDateTime::parse(text, &Rfc3339)
                .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
                .map_err(|_| {
                    ApiError::invalid("`since` must be an RFC 3339 time like 2026-11-23T18:00:00Z")
                })?,
        ),
        None => None,
    };
    if body.after_seq.is_none() && since.is_none() {
        return Err(ApiError::invalid(
            "give `after_seq` (a seq) or `since` (an RFC 3339 time)",
        ));
    }
    let requeued = app
        .store
        .requeue(&name, body.after_seq, since, now_millis())
        .await?;
    tracing::info!(webhook = %name, requeued, "deliveries replayed by hand");
    app.lanes.wake(std::slice::from_ref(&name));
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"webhook": name, "requeued": requeued})),
    ))
}

/// Enables a webhook that was disabled (by a 410 Gone); its waiting deliveries go out.
async fn enable(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    known(&app, &name)?;
    app.store
        .set_webhook_disabled(&name, None, now_millis())
        .await?;
    app.dispatcher.enable(&name);
    tracing::info!(webhook = %name, "webhook enabled by hand");
    Ok(Json(json!({"webhook": name, "state": "enabled"})))
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
