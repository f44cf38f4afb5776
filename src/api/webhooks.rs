//! The configured webhooks and their health.

use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use std::sync::Arc;

use super::{
    AccountScope, ApiError, ApiJson, ApiPath, ApiQuery, AppState, Credential, visible_accounts,
};
use crate::event::{EventData, format_millis, now_millis};
use crate::relay::dispatcher::Target;
use crate::relay::replay::{ReplayProgress, ReplayRequest};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/webhooks", get(list))
        .route("/v1/webhooks/{name}/test", post(test))
        .route("/v1/webhooks/{name}/replay", post(replay))
        .route("/v1/webhooks/{name}/replays/{id}", get(replay_progress))
        .route("/v1/webhooks/{name}/enable", post(enable))
}

/// One webhook and its health.
#[derive(Serialize, utoipa::ToSchema)]
pub struct WebhookView {
    name: String,
    url: String,
    /// `healthy`, `failing` (the last attempt failed) or `disabled`.
    state: &'static str,
    /// Deliveries waiting (including those being attempted).
    pending: i64,
    /// Deliveries that exhausted their retries.
    dead: i64,
    #[schema(format = DateTime)]
    last_success_at: Option<String>,
    last_error: Option<String>,
    /// When `last_error` happened.
    #[schema(format = DateTime)]
    last_error_at: Option<String>,
    disabled_reason: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WebhooksQuery {
    /// Only the webhooks that take this account's events.
    account: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct WebhookList {
    webhooks: Vec<WebhookView>,
}

/// A queued `webhook.test` event.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TestQueued {
    webhook: String,
    event_id: String,
    seq: i64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Enabled {
    webhook: String,
    /// Always `enabled`.
    state: &'static str,
}

/// Whether a credential sees a webhook: every credential sees every webhook; one
/// scoped to some accounts sees the webhooks that take only those accounts' events.
fn visible(target: &Target, credential: &Credential) -> bool {
    match &credential.accounts {
        None => true,
        Some(mine) => {
            let theirs = &target.settings.accounts;
            !theirs.is_empty() && theirs.iter().all(|a| mine.contains(a))
        }
    }
}

fn known(app: &AppState, credential: &Credential, name: &str) -> Result<Arc<Target>, ApiError> {
    app.dispatcher
        .target(name)
        .filter(|t| visible(t, credential))
        .ok_or_else(|| ApiError::not_found(format!("no webhook named `{name}`")))
}

/// Queues a `webhook.test` event to this webhook only.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{name}/test", operation_id = "test_webhook",
    tag = "webhooks",
    params(("name" = String, Path, description = "The webhook's `name`")),
    responses((status = 202, body = TestQueued))
)]
pub(super) async fn test(
    State(app): State<AppState>,
    credential: Credential,
    ApiPath(name): ApiPath<String>,
) -> Result<(StatusCode, Json<TestQueued>), ApiError> {
    let target = known(&app, &credential, &name)?;
    if target.settings.format == crate::config::WebhookFormat::Onebot {
        return Err(ApiError::invalid(
            "a onebot webhook carries OneBot events only, and OneBot has no test event: send the bot a message (POST /v1/mock/messages with the mock puppet)",
        ));
    }
    if target.settings.format == crate::config::WebhookFormat::Slack {
        return Err(ApiError::invalid(
            "a slack webhook carries WeChat messages only: send the bot a message (POST /v1/mock/messages with the mock puppet); its url_verification handshake goes out at every start and reload, and the log says how the app answered",
        ));
    }
    // The test event belongs to an account the webhook takes: its first, else the
    // unscoped account, else the first one.
    let account = target
        .settings
        .accounts
        .first()
        .and_then(|a| app.accounts.get(a))
        .or_else(|| app.accounts.unscoped().ok())
        .or_else(|| app.accounts.iter().next())
        .cloned()
        .ok_or_else(|| ApiError::internal("no account"))?;
    let appended = account
        .ingest
        .append(
            EventData::WebhookTest {
                webhook: name.clone(),
            },
            vec![name.clone()],
        )
        .await?;
    tracing::info!(webhook = %name, event_id = %appended.id, "test event queued");
    Ok((
        StatusCode::ACCEPTED,
        Json(TestQueued {
            webhook: name,
            event_id: appended.id,
            seq: appended.seq,
        }),
    ))
}

/// Which events to send again: give one of the two.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayBody {
    /// Events with a larger `seq`.
    #[serde(default, deserialize_with = "super::whole_number")]
    after_seq: Option<i64>,
    /// Events created at or after this RFC 3339 time.
    #[schema(format = DateTime)]
    since: Option<String>,
}

/// Re-queues this webhook's finished deliveries of the events after `after_seq`, or
/// created since `since` (RFC 3339). They go out again with their original ids.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{name}/replay", operation_id = "replay_webhook",
    tag = "webhooks",
    params(("name" = String, Path, description = "The webhook's `name`")),
    request_body = ReplayBody,
    responses((status = 202, description = "Started; `done` already when it was small, else `running` (follow `GET /v1/webhooks/{name}/replays/{id}`)", body = ReplayProgress))
)]
pub(super) async fn replay(
    State(app): State<AppState>,
    credential: Credential,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<ReplayBody>,
) -> Result<(StatusCode, Json<ReplayProgress>), ApiError> {
    known(&app, &credential, &name)?;
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
    let progress = app
        .replays
        .start(
            app.outbox.clone(),
            ReplayRequest {
                webhook: name,
                after_seq: body.after_seq,
                since,
            },
        )
        .await?;
    Ok((StatusCode::ACCEPTED, Json(progress)))
}

/// How far a replay has come.
#[utoipa::path(
    get,
    path = "/v1/webhooks/{name}/replays/{id}", operation_id = "get_replay",
    tag = "webhooks",
    params(
        ("name" = String, Path, description = "The webhook's `name`"),
        ("id" = String, Path, description = "The replay's id (`rpl_…`)"),
    ),
    responses((status = 200, body = ReplayProgress))
)]
pub(super) async fn replay_progress(
    State(app): State<AppState>,
    credential: Credential,
    ApiPath((name, id)): ApiPath<(String, String)>,
) -> Result<Json<ReplayProgress>, ApiError> {
    known(&app, &credential, &name)?;
    app.replays.get(&name, &id).map(Json).ok_or_else(|| {
        ApiError::not_found(format!(
            "no replay `{id}` of webhook `{name}` (replays are kept until a restart)"
        ))
    })
}

/// Enables a webhook that was disabled (by a 410 Gone); its waiting deliveries go out.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{name}/enable", operation_id = "enable_webhook",
    tag = "webhooks",
    params(("name" = String, Path, description = "The webhook's `name`")),
    responses((status = 200, body = Enabled))
)]
pub(super) async fn enable(
    State(app): State<AppState>,
    credential: Credential,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Enabled>, ApiError> {
    known(&app, &credential, &name)?;
    app.store
        .set_webhook_disabled(&name, None, now_millis())
        .await?;
    app.dispatcher.enable(&name);
    tracing::info!(webhook = %name, "webhook enabled by hand");
    Ok(Json(Enabled {
        webhook: name,
        state: "enabled",
    }))
}

/// Every configured webhook with its health and backlog.
#[utoipa::path(get, path = "/v1/webhooks", operation_id = "list_webhooks", tag = "webhooks", params(WebhooksQuery), responses((status = 200, body = WebhookList)))]
pub(super) async fn list(
    State(app): State<AppState>,
    credential: Credential,
    scope: Option<Extension<AccountScope>>,
    ApiQuery(q): ApiQuery<WebhooksQuery>,
) -> Result<Json<WebhookList>, ApiError> {
    let who = credential;
    let only = visible_accounts(
        &app,
        &who,
        scope.as_ref().map(|s| &s.0),
        q.account.as_deref(),
    )?
    .filter(|_| q.account.is_some() || scope.is_some());
    let stats = app.store.webhook_stats().await?;
    let webhooks: Vec<WebhookView> = app
        .dispatcher
        .targets()
        .iter()
        .filter(|t| visible(t, &who))
        .filter(|t| {
            only.as_ref().is_none_or(|accounts| {
                t.settings.accounts.is_empty()
                    || t.settings.accounts.iter().any(|a| accounts.contains(a))
            })
        })
        .map(|t| {
            let s = stats.get(&t.settings.name).cloned().unwrap_or_default();
            let failing = match (s.last_error_at, s.last_success_at) {
                (Some(err), Some(ok)) => err >= ok,
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
            WebhookView {
                name: t.settings.name.clone(),
                url: crate::address::redact_url(&t.settings.url),
                state,
                pending: s.pending,
                dead: s.dead,
                last_success_at: s.last_success_at.map(format_millis),
                last_error: s.last_error,
                last_error_at: s.last_error_at.map(format_millis),
                disabled_reason: s.disabled_reason,
            }
        })
        .collect();
    Ok(Json(WebhookList { webhooks }))
}
