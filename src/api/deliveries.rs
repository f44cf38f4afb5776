//! Deliveries: what was sent where, every attempt, and manual retry.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiPath, ApiQuery, AppState};
use crate::event::now_millis;
use crate::store::{DeliveryFilter, DeliveryStatus};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/deliveries", get(list))
        .route("/v1/deliveries/{id}/retry", post(retry))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    webhook: Option<String>,
    status: Option<String>,
    limit: Option<u32>,
}

async fn list(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(DeliveryStatus::parse(s).ok_or_else(|| {
            ApiError::invalid(format!(
                "`status`: `{s}` is not one of pending, delivered, dead"
            ))
        })?),
    };
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid("`limit` must be between 1 and 500"));
    }
    let deliveries = app
        .store
        .list_deliveries(DeliveryFilter {
            webhook: q.webhook.filter(|w| !w.is_empty()),
            status,
            limit,
        })
        .await?;
    Ok(Json(json!({"deliveries": deliveries})))
}

/// Re-queues one delivery now, whatever its status.
async fn retry(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Some(webhook) = app.store.retry_delivery(&id, now_millis()).await? else {
        return Err(ApiError::not_found(format!("no delivery `{id}`")));
    };
    tracing::info!(delivery = %id, webhook = %webhook, "delivery re-queued by hand");
    app.lanes.wake(std::slice::from_ref(&webhook));
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"id": id, "webhook": webhook, "status": "pending"})),
    ))
}
