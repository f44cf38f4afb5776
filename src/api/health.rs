//! Liveness and readiness, for load balancers and orchestrators (no auth).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::{ApiError, AppState};
use crate::puppet::SessionState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(super::openapi::openapi_json))
}

/// The body of `/healthz` and `/readyz` when all is well.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok` (healthz) or `ready` (readyz).
    pub status: &'static str,
}

/// Prometheus text format (see [`crate::metrics`]).
#[utoipa::path(
    get,
    path = "/metrics", operation_id = "metrics",
    tag = "health",
    responses((status = 200, description = "Prometheus text exposition format 0.0.4", content_type = "text/plain", body = String))
)]
pub(super) async fn metrics(
    State(app): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<impl axum::response::IntoResponse, ApiError> {
    if let Some(token) = &app.auth().metrics_token {
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(super::bearer_token)
            .unwrap_or_default();
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            token.as_bytes(),
            given.as_bytes(),
        )) {
            return Err(ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send `Authorization: Bearer <auth.metrics_token>` to read /metrics",
            ));
        }
    }
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(&app).await,
    ))
}

/// 200 while the process runs.
#[utoipa::path(get, path = "/healthz", operation_id = "healthz", tag = "health", responses((status = 200, body = Health)))]
pub(super) async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// 200 when the store answers and the puppet is logged in; 503 with the reason.
#[utoipa::path(
    get,
    path = "/readyz", operation_id = "readyz",
    tag = "health",
    responses((status = 200, body = Health), (status = 503, description = "Not ready; the message says why", body = super::openapi::ErrorBody))
)]
pub(super) async fn readyz(
    State(app): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<ReadyQuery>,
) -> Result<Json<Health>, ApiError> {
    if let Some(why) = app.store.write_failure() {
        return Err(ApiError::not_ready(format!(
            "the store cannot write ({why}); new sends wait until it can"
        )));
    }
    if let Err(e) = app.store.ping().await {
        tracing::warn!(error = %e, "readiness: the store does not answer");
        return Err(ApiError::not_ready("the store does not answer"));
    }
    let checked: Vec<_> = match q.account.as_deref().filter(|a| !a.is_empty()) {
        Some(name) => vec![app.accounts.get(name).cloned().ok_or_else(|| {
            ApiError::not_found(format!("no account `{name}` (GET /v1/accounts lists them)"))
        })?],
        None => app.accounts.iter().cloned().collect(),
    };
    let several = app.accounts.len() > 1;
    let mut not_ready = Vec::new();
    for account in checked {
        let session = account.session.get();
        if session.state == SessionState::LoggedIn {
            continue;
        }
        // Another instance sharing the store runs this account: this one serves its API
        // (sends are queued for the holder), so it is ready for it.
        if account
            .holder()
            .is_some_and(|holder| *holder != *app.instance)
        {
            continue;
        }
        let reason = session
            .reason
            .unwrap_or_else(|| "the puppet is not logged in".into());
        let state = serde_json::to_value(session.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        not_ready.push(if several {
            format!("account {}: session is {state}: {reason}", account.name)
        } else {
            format!("session is {state}: {reason}")
        });
    }
    if !not_ready.is_empty() {
        return Err(ApiError::not_ready(not_ready.join("; ")));
    }
    Ok(Json(Health { status: "ready" }))
}

/// `?account=NAME` checks one account only.
#[derive(serde::Deserialize)]
pub(super) struct ReadyQuery {
    account: Option<String>,
}
