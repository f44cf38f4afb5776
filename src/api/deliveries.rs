//! Deliveries: what was sent where, every attempt, and manual retry.

use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{
    AccountScope, ApiError, ApiPath, ApiQuery, AppState, Credential, forbidden_account,
    visible_accounts,
};
use crate::event::now_millis;
use crate::store::{DeliveryFilter, DeliveryStatus, DeliveryView};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/deliveries", get(list))
        .route("/v1/deliveries/{id}/retry", post(retry))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this webhook's deliveries.
    webhook: Option<String>,
    /// `pending`, `delivered` or `dead` (empty: any).
    #[param(pattern = "^(pending|delivered|dead)?$")]
    status: Option<String>,
    /// 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// Only deliveries of this account's events.
    account: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DeliveryList {
    deliveries: Vec<DeliveryView>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Requeued {
    id: String,
    webhook: String,
    /// Always `pending`.
    status: &'static str,
}

/// Deliveries, newest first, each with every attempt.
#[utoipa::path(
    get,
    path = "/v1/deliveries", operation_id = "list_deliveries",
    tag = "deliveries",
    params(ListQuery),
    responses((status = 200, body = DeliveryList))
)]
pub(super) async fn list(
    State(app): State<AppState>,
    credential: Credential,
    scope: Option<Extension<AccountScope>>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<DeliveryList>, ApiError> {
    let accounts = visible_accounts(
        &app,
        &credential,
        scope.as_ref().map(|s| &s.0),
        q.account.as_deref(),
    )?;
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
    let webhook = q.webhook.filter(|w| !w.is_empty());
    if let Some(name) = &webhook
        && app.dispatcher.target(name).is_none()
    {
        return Err(ApiError::not_found(format!(
            "no webhook named `{name}` is configured (GET /v1/webhooks lists them)"
        )));
    }
    let deliveries = app
        .store
        .list_deliveries(DeliveryFilter {
            webhook,
            accounts,
            status,
            limit,
        })
        .await?;
    Ok(Json(DeliveryList { deliveries }))
}

/// Re-queues one delivery now, whatever its status.
#[utoipa::path(
    post,
    path = "/v1/deliveries/{id}/retry", operation_id = "retry_delivery",
    tag = "deliveries",
    params(("id" = String, Path, description = "A delivery id (`dlv_…`)")),
    responses((status = 202, body = Requeued))
)]
pub(super) async fn retry(
    State(app): State<AppState>,
    credential: Credential,
    scope: Option<Extension<AccountScope>>,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, Json<Requeued>), ApiError> {
    let missing = || ApiError::not_found(format!("no delivery `{id}`"));
    // A scoped credential retries the deliveries of its accounts' events only.
    let Some(account) = app.store.delivery_account(&id).await? else {
        return Err(missing());
    };
    if !credential.allows(&account) {
        return Err(forbidden_account(&account));
    }
    // Under /v1/accounts/{account}/…, another account's delivery is not there.
    if scope.is_some_and(|Extension(AccountScope(a))| a != account) {
        return Err(missing());
    }
    let Some(webhook) = app.outbox.retry_delivery(&id, now_millis()).await? else {
        return Err(missing());
    };
    tracing::info!(delivery_id = %id, webhook = %webhook, "delivery re-queued by hand");
    Ok((
        StatusCode::ACCEPTED,
        Json(Requeued {
            id,
            webhook,
            status: "pending",
        }),
    ))
}

/// The fuzz target's way in.
pub(super) fn fuzz_queries(raw: &str) {
    if let Ok(q) = serde_urlencoded::from_str::<ListQuery>(raw)
        && let Some(status) = q.status
    {
        let _ = DeliveryStatus::parse(&status);
    }
}
