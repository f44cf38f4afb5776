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
        .route("/v1/cluster", get(cluster))
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

/// Who holds an account's lease, as `GET /v1/cluster` shows it.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct AccountHolder {
    name: String,
    /// The instance that runs the account's puppet; null while nobody does.
    holder: Option<String>,
    /// The lease's fencing epoch: it grows with every change of holder (0: never held).
    epoch: i64,
    /// Since when the holder holds it.
    #[schema(format = DateTime)]
    since: Option<String>,
}

/// The instances sharing the store and which one runs each account.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ClusterView {
    instances: Vec<crate::store::InstanceView>,
    accounts: Vec<AccountHolder>,
}

/// The instances sharing this store (each with when it was last heard from) and which
/// instance holds each account's lease, running its puppet. With SQLite there is one
/// instance, holding every account.
#[utoipa::path(get, path = "/v1/cluster", operation_id = "get_cluster", tag = "session",
    responses((status = 200, body = ClusterView), (status = 503, description = "The store does not answer", body = super::openapi::ErrorBody)))]
pub(super) async fn cluster(
    axum::extract::State(app): axum::extract::State<AppState>,
    credential: super::Credential,
) -> Result<Json<ClusterView>, ApiError> {
    let unavailable = |e: crate::store::StoreError| {
        tracing::warn!(error = %e, "cannot read the cluster from the store");
        ApiError::not_ready("the store does not answer; try again")
    };
    let instances = app.store.instances().await.map_err(unavailable)?;
    let leases = app.store.leases().await.map_err(unavailable)?;
    let accounts = app
        .accounts
        .iter()
        .filter(|a| credential.allows(&a.name))
        .map(|a| {
            let lease = leases.iter().find(|l| l.name == a.name);
            AccountHolder {
                name: a.name.clone(),
                holder: lease.and_then(|l| l.holder.clone()),
                epoch: lease.map_or(0, |l| l.epoch),
                since: lease
                    .filter(|l| l.holder.is_some())
                    .map(|l| crate::event::format_millis(l.since)),
            }
        })
        .collect();
    Ok(Json(ClusterView {
        instances,
        accounts,
    }))
}
