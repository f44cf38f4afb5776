//! Sending: `POST /v1/messages` queues a message durably (202 once committed) and the
//! sender delivers it through the puppet; `GET /v1/messages/{id}` tells the outcome.

use std::time::Duration;

use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::{
    Acct, ApiError, ApiPath, ApiQuery, AppState, Credential, SignedMessageId, idempotency_key,
};
use crate::account::Account;
use crate::event::{Conversation, now_millis};
use crate::puppet::PuppetError;
use crate::relay::signing::WEBHOOK_ID;
use crate::send::new_send;
use crate::send::{Content, Recipient, SendBody, SendRequest};
use crate::store::{SendStatus, SendView};

/// `max_upload` bounds the body of a multipart upload (JSON keeps `server.body_limit`).
pub fn router(max_upload: usize) -> Router<AppState> {
    Router::new()
        .route(
            "/v1/messages",
            post(send).layer(axum::extract::DefaultBodyLimit::max(max_upload)),
        )
        .route("/v1/messages/{id}", get(status))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Wait up to this long for the outcome: seconds (`10`) or a duration (`10s`,
    /// `500ms`); at most a minute, and a second under `server.request_timeout`.
    #[param(pattern = r"^([0-9]{1,6}(\.[0-9]{1,3})?|[0-9]{1,6}(ms|s|m))?$")]
    pub(super) wait: Option<String>,
}

/// Longest `?wait=` honoured.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// `10` (seconds) or a duration such as `10s`, `500ms`; clamped to a minute and to a
/// second under `server.request_timeout`, so a long wait answers instead of timing out.
pub fn parse_wait(app: &AppState, raw: Option<&str>) -> Result<Option<Duration>, ApiError> {
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok(None);
    };
    let wait = parse_seconds_or_duration(raw)
        .map_err(|why| ApiError::invalid(format!("`wait`: `{raw}` {why}")))?;
    let ceiling = app
        .settings
        .server
        .request_timeout
        .saturating_sub(Duration::from_secs(1))
        .min(MAX_WAIT);
    Ok(Some(wait.min(ceiling)))
}

/// `10`, `2.5` (seconds) or a duration such as `10s`, `500ms`. Never panics: huge,
/// infinite, negative and not-a-number values are errors that say what to write.
pub fn parse_seconds_or_duration(raw: &str) -> Result<Duration, &'static str> {
    const HINT: &str = "is not seconds (10) or a duration (10s, 500ms)";
    let raw = raw.trim();
    // Only plain decimal numbers count as seconds: `1e20`, `inf` and `NaN` parse as
    // f64 but are no way to write a wait.
    if !raw.is_empty() && raw.chars().all(|c| c.is_ascii_digit() || c == '.') {
        let secs: f64 = raw.parse().map_err(|_| HINT)?;
        return Duration::try_from_secs_f64(secs).map_err(|_| "is too long");
    }
    if raw.starts_with('-') {
        return Err("must not be negative");
    }
    humantime::parse_duration(raw).map_err(|_| HINT)
}

/// Queues a message; it is committed before this answers. 202 `queued`, or with
/// `?wait=` 200 once sent (or failed). Accepted while the puppet is offline: it goes out
/// on reconnect. `Idempotency-Key` (or a signed request's `webhook-id`) makes a retry
/// answer the first result without sending again.
#[utoipa::path(
    post,
    path = "/v1/messages", operation_id = "send_message",
    tag = "messages",
    params(
        WaitQuery,
        ("Idempotency-Key" = Option<String>, Header, description = "Repeat a request safely: the same key answers the first result. 1 to 255 printable ASCII characters.", pattern = r"^[!-~]([ -~]{0,253}[!-~])?$"),
    ),
    request_body(content(
        (crate::send::SendBody = "application/json"),
        (super::upload::UploadForm = "multipart/form-data"),
    )),
    responses(
        (status = 202, description = "Queued", body = SendView),
        (status = 200, description = "Sent or failed within `wait`", body = SendView),
    )
)]
/// A multipart upload is stored before it is queued; larger than `media.max_upload`
/// answers 413.
pub(super) async fn send(
    State(app): State<AppState>,
    Acct(account): Acct,
    signed: Option<Extension<SignedMessageId>>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<WaitQuery>,
    request: axum::extract::Request,
) -> Result<(StatusCode, Json<SendView>), ApiError> {
    let wait = parse_wait(&app, query.wait.as_deref())?;
    let key = request_key(signed, &headers)?;
    let mut view = if super::upload::is_multipart(&headers) {
        let received = super::upload::receive(&app, request).await?;
        let (to, content) = (received.to.clone(), received.content.clone());
        let enqueued = enqueue(&app, &account, to, content, key).await?;
        // A replayed key answers the first send, which has its own file: this one goes.
        if !enqueued.replayed {
            received.keep();
        }
        enqueued.send
    } else {
        // The route takes uploads up to media.max_upload; JSON keeps server.body_limit.
        let limit = app.settings.server.body_limit.0 as usize;
        let bytes = axum::body::to_bytes(request.into_body(), limit)
            .await
            .map_err(|_| super::too_large("the body is larger than server.body_limit"))?;
        if !headers
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json") || v.contains("+json"))
        {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON (`content-type: application/json`), or a file as `multipart/form-data`",
            ));
        }
        let axum::Json(body) = axum::Json::<SendBody>::from_bytes(&bytes)?;
        let SendRequest { to, content } =
            body.into_request().map_err(|e| ApiError::invalid(e.0))?;
        queue_send(&app, &account, to, content, key).await?
    };
    if let Some(wait) = wait
        && view.status == SendStatus::Queued
    {
        view = wait_for_outcome(&app, &view.id, wait)
            .await?
            .unwrap_or(view);
    }
    let status = if view.status == SendStatus::Queued {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)))
}

/// The idempotency key of a request that changes WeChat: a signed request's verified
/// webhook-id, always (a captured request replayed with a fresh Idempotency-Key must not
/// act again); else `Idempotency-Key` (422 when malformed); else an unsigned webhook-id.
pub(super) fn request_key(
    signed: Option<Extension<SignedMessageId>>,
    headers: &HeaderMap,
) -> Result<Option<String>, ApiError> {
    let given = idempotency_key(headers)?;
    Ok(match signed {
        Some(Extension(SignedMessageId(id))) => Some(id),
        None => given.or_else(|| {
            headers
                .get(WEBHOOK_ID)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        }),
    })
}

/// Resolves the recipient (404 when unknown), checks what needs the recipient's kind,
/// and commits the send to the queue. A replayed idempotency key returns the first
/// send.
pub(super) async fn queue_send(
    app: &AppState,
    account: &Account,
    to: Recipient,
    content: Content,
    key: Option<String>,
) -> Result<SendView, ApiError> {
    Ok(enqueue(app, account, to, content, key).await?.send)
}

/// [`queue_send`], telling also whether the key was a replay (nothing new queued).
pub(super) async fn enqueue(
    app: &AppState,
    account: &Account,
    to: Recipient,
    content: Content,
    key: Option<String>,
) -> Result<crate::store::Enqueued, ApiError> {
    content
        .check_urls(app.settings.send.allow_private_urls)
        .map_err(|e| ApiError::invalid(e.0))?;
    let conversation = match account.puppet.resolve(&to).await {
        Ok(c) => c,
        Err(PuppetError::NotFound(_)) => {
            return Err(ApiError::not_found(format!(
                "`to`: no such recipient {}",
                describe(&to)
            )));
        }
        // Offline: accepted all the same, resolved when the session is back.
        Err(_) => Conversation::Contact(format!("unresolved:{}", describe(&to))),
    };
    if let Content::Text { mentions, .. } = &content
        && !mentions.is_empty()
        && !matches!(conversation, Conversation::Room(_))
    {
        return Err(ApiError::invalid("`mentions` works in rooms only"));
    }
    let request = SendRequest { to, content };
    Ok(app
        .outbox
        .queue_send(new_send(
            &account.name,
            request,
            &conversation,
            key,
            now_millis(),
        ))
        .await?)
}

fn describe(to: &Recipient) -> String {
    serde_json::to_string(to).unwrap_or_default()
}

/// Waits until the send is no longer queued, or `wait` passes.
pub(super) async fn wait_for_outcome(
    app: &AppState,
    id: &str,
    wait: Duration,
) -> Result<Option<SendView>, ApiError> {
    let first = app.store.get_send(id).await?;
    let Some(account) = first
        .as_ref()
        .filter(|v| v.status == SendStatus::Queued)
        .and_then(|v| app.accounts.get(&v.account))
    else {
        return Ok(first);
    };
    // Subscribed before reading again, so a send finishing in between still wakes us.
    let mut finished = account.sender.finished();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let view = app.store.get_send(id).await?;
        if view.as_ref().is_none_or(|v| v.status != SendStatus::Queued) {
            return Ok(view);
        }
        match tokio::time::timeout_at(deadline, finished.changed()).await {
            Ok(Ok(())) => {}
            _ => return Ok(view),
        }
    }
}

/// What became of a message; with `?wait=`, waits for it to leave the queue.
#[utoipa::path(
    get,
    path = "/v1/messages/{id}", operation_id = "get_message",
    tag = "messages",
    params(("id" = String, Path, description = "The id `POST /v1/messages` answered (`out_…`)"), WaitQuery),
    responses((status = 200, body = SendView))
)]
pub(super) async fn status(
    State(app): State<AppState>,
    credential: Credential,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<WaitQuery>,
) -> Result<Json<SendView>, ApiError> {
    let wait = parse_wait(&app, query.wait.as_deref())?;
    let view = match wait {
        Some(wait) => wait_for_outcome(&app, &id, wait).await?,
        None => app.store.get_send(&id).await?,
    };
    let allowed = |v: &SendView| credential.allows(&v.account);
    let view = view
        .filter(allowed)
        .ok_or_else(|| ApiError::not_found(format!("no message `{id}`")))?;
    Ok(Json(view))
}
