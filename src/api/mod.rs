//! The HTTP API: axum routes, one file per resource, all answering errors in the
//! contract's `{"error":{"code","message"}}` shape, axum's own rejections included.

mod deliveries;
mod directory;
mod events;
mod health;
mod home;
mod legacy;
mod media;
mod messages;
mod mock;
pub mod onebot;
pub mod openapi;
pub(crate) mod operations;
mod session;
pub mod slack;
mod upload;
mod webhooks;

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::{HeaderMap, HeaderName, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::app::{App, Auth};
use crate::event::now_millis;
use crate::relay::signing::{
    VerifyError, WEBHOOK_ID, WEBHOOK_SIGNATURE, WEBHOOK_TIMESTAMP, verify,
};
use crate::store::{RecordedAnswer, SignedBegin, SignedRequest, StoreError};

pub type AppState = Arc<App>;

pub use messages::parse_seconds_or_duration;

/// Runs every query-string parser of the API on `raw` (the fuzz target's entry): the
/// typed queries of `/v1/events`, `/v1/events/stream`, `/v1/messages` and
/// `/v1/deliveries`, then the values in them. Never panics; each answers or refuses.
#[doc(hidden)]
pub fn fuzz_queries(raw: &str) {
    events::fuzz_queries(raw);
    deliveries::fuzz_queries(raw);
    if let Ok(q) = serde_urlencoded::from_str::<messages::WaitQuery>(raw)
        && let Some(wait) = q.wait
    {
        let _ = parse_seconds_or_duration(&wait);
    }
}

/// Builds the whole router.
pub fn router(app: AppState) -> Router {
    let v1 = Router::new()
        .merge(session::router())
        .merge(mock::router())
        .merge(webhooks::router())
        .merge(deliveries::router())
        .merge(messages::router(
            app.settings
                .media
                .max_upload
                .0
                .max(app.settings.server.body_limit.0) as usize,
        ))
        .merge(events::router())
        .merge(directory::router())
        .merge(operations::router())
        .route_layer(middleware::from_fn_with_state(app.clone(), require_auth));
    Router::new()
        .merge(health::router())
        .merge(media::router())
        .merge(home::router())
        .merge(legacy::router())
        .merge(slack::router())
        .merge(onebot::router())
        .merge(v1)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(
            app.settings.server.body_limit.0 as usize,
        ))
        .layer(middleware::from_fn_with_state(app.clone(), edge))
        .with_state(app)
}

/// Every request's way in, as one layer (each layer of its own cost a clone of the
/// router's service and a boxed future per request, a measurable share of the CPU of a
/// small request): an id for the request and a span carrying it
/// ([`request_id`]), the open-mode guard ([`guard_open_mode`]), the time limit and the
/// contract's 500 for a handler that panics ([`within`]).
async fn edge(State(app): State<AppState>, mut request: Request, next: Next) -> Response {
    use tracing::Instrument;
    let id = request_id(&mut request);
    let echoed = request.headers().get("x-request-id").cloned();
    let span = tracing::info_span!(
        "request",
        id = %id,
        method = %request.method(),
        path = %redact_path(request.uri().path())
    );
    let started = std::time::Instant::now();
    let served = async move {
        if let Some(refused) = guard_open_mode(&app, &request) {
            return refused;
        }
        within(app.settings.server.request_timeout, request, next).await
    };
    let mut response = served.instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::debug!(
            status = response.status().as_u16(),
            ms = started.elapsed().as_millis() as u64,
            "request served"
        )
    });
    if let Some(value) = echoed {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// Runs the handler within `limit` ([`assign_idempotency_key`], [`timed_out`]) and
/// answers the contract's 500 if it panics ([`panicked`]).
async fn within(limit: std::time::Duration, mut request: Request, next: Next) -> Response {
    use futures_util::FutureExt;
    let assigned = assign_idempotency_key(&mut request);
    let handler = std::panic::AssertUnwindSafe(next.run(request)).catch_unwind();
    match tokio::time::timeout(limit, handler).await {
        Ok(Ok(response)) => response,
        Ok(Err(panic)) => panicked(panic),
        Err(_) => timed_out(limit, assigned),
    }
}

/// A handler that panicked still answers, in the contract's shape; the panic is
/// logged (inside the request's span, so with its id).
fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic without a message");
    ApiError::internal(format!("a request handler panicked: {detail}")).into_response()
}

/// The time limit (`server.request_timeout`, until the response starts: streams may
/// run on): past it, the contract's 503.
///
/// A request cut off this way may still be committed a moment later, so its outcome is
/// unknown. A POST that came without an `Idempotency-Key` (and unsigned) is given one
/// here, and the 503 names it: retrying with it answers the first outcome instead of
/// acting twice. Returns the key it gave.
fn assign_idempotency_key(request: &mut Request) -> Option<String> {
    let assigned = (request.method() == Method::POST
        && !request.headers().contains_key("idempotency-key")
        && !request.headers().contains_key(&WEBHOOK_SIGNATURE))
    .then(|| format!("idem_{}", ulid::Ulid::new()));
    if let Some(key) = &assigned
        && let Ok(value) = header::HeaderValue::from_str(key)
    {
        request.headers_mut().insert("idempotency-key", value);
    }
    assigned
}

/// The 503 of a request that ran past `limit`; `assigned` is the key it was given.
fn timed_out(limit: std::time::Duration, assigned: Option<String>) -> Response {
    let retry = match assigned {
        Some(key) => format!(
            "; it may still complete: retry with the header `Idempotency-Key: {key}` to learn its outcome without doing it twice"
        ),
        None => "; it may still complete: retry with the same Idempotency-Key (or webhook-id) to learn its outcome".into(),
    };
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "timeout",
        format!(
            "the request took longer than server.request_timeout ({}) and its outcome is unknown{retry}",
            humantime::format_duration(limit)
        ),
    )
    .into_response()
}

/// With no credentials configured the API is open to anything that can reach the
/// loopback listener, including a web page the operator has open: a foreign page may
/// not make the bot act (cross-origin writes), nor read through a rebound DNS name
/// (a `Host` that is not loopback or `server.public_url`'s host).
/// Returns the refusal, if any.
fn guard_open_mode(app: &App, request: &Request) -> Option<Response> {
    let path = request.uri().path();
    if app.auth().is_configured() || path == "/healthz" || path == "/readyz" {
        return None;
    }
    let public_host = app.public_host.as_deref();
    let allowed = |host: &str| {
        let host = host.to_ascii_lowercase();
        is_loopback_host(&host) || public_host == Some(host.as_str())
    };
    let headers = request.headers();
    if let Some(host) = headers.get(header::HOST) {
        let host = host
            .to_str()
            .ok()
            .map(host_without_port)
            .unwrap_or_default();
        if !allowed(host) {
            return Some(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "with no auth configured, waas answers only requests addressed to a loopback host or to server.public_url's host, not `{host}` (configure [auth] to serve other names)"
                ),
            )
            .into_response());
        }
    }
    let writes = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if writes {
        let origin = headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .map(|o| {
                reqwest::Url::parse(o)
                    .ok()
                    .and_then(|u| u.host_str().map(str::to_string))
                    .unwrap_or_default()
            });
        let cross_site = headers
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
        if cross_site || origin.as_deref().is_some_and(|o| !allowed(o)) {
            return Some(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "with no auth configured, waas refuses writes from another web origin (a page in a browser must not make the bot act); configure [auth] and send a token",
            )
            .into_response());
        }
    }
    None
}

/// `host:port`, `[v6]:port` or `host` → the host.
fn host_without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map_or(host, |(h, _)| h)
}

/// `localhost`, `*.localhost`, 127.0.0.0/8 and ::1 (without brackets).
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host.ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The request's id: the caller's `x-request-id` when it is sane, else a new one, set
/// on the request (and returned in the response's `x-request-id`).
fn request_id(request: &mut Request) -> String {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
        .map(str::to_string)
        .unwrap_or_else(|| format!("req_{}", ulid::Ulid::new()));
    if let Ok(value) = header::HeaderValue::from_str(&id) {
        request.headers_mut().insert("x-request-id", value);
    }
    id
}

/// The path as logged: the token in `/t/{token}/api/…` is replaced by `***`.
fn redact_path(path: &str) -> String {
    match path.strip_prefix("/t/") {
        Some(rest) => match rest.find('/') {
            Some(i) => format!("/t/***{}", &rest[i..]),
            None => "/t/***".to_string(),
        },
        None => path.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use std::time::Duration;

    /// `request` through a router of `route` behind [`super::within`] with `limit`:
    /// the status and the JSON body.
    async fn answer_within(
        limit: Duration,
        route: axum::routing::MethodRouter,
        request: axum::http::Request<Body>,
    ) -> (axum::http::StatusCode, serde_json::Value) {
        use tower::ServiceExt;
        let router = axum::Router::new()
            .route("/", route)
            .layer(axum::middleware::from_fn(move |request, next| {
                super::within(limit, request, next)
            }));
        let response = router.oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_the_contracts_500() {
        let (status, body) = answer_within(
            Duration::from_secs(5),
            axum::routing::get(|| async {
                let found: Vec<&'static str> = Vec::new();
                found[0]
            }),
            axum::http::Request::get("/").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(status, 500);
        assert_eq!(body["error"]["code"], "internal_error");
    }

    #[tokio::test]
    async fn a_slow_post_answers_503_naming_the_key_it_was_given() {
        let (status, body) = answer_within(
            Duration::from_millis(50),
            axum::routing::post(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }),
            axum::http::Request::post("/").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(status, 503);
        assert_eq!(body["error"]["code"], "timeout");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("Idempotency-Key: "), "{message}");
    }

    #[test]
    fn hosts_are_read_without_their_port() {
        use super::{host_without_port, is_loopback_host};
        assert_eq!(host_without_port("127.0.0.1:3010"), "127.0.0.1");
        assert_eq!(host_without_port("[::1]:3010"), "::1");
        assert_eq!(host_without_port("localhost"), "localhost");
        assert!(is_loopback_host("localhost") && is_loopback_host("127.9.9.9"));
        assert!(is_loopback_host("::1") && is_loopback_host("app.localhost"));
        assert!(!is_loopback_host("evil.example") && !is_loopback_host("localhost.evil.example"));
    }

    #[test]
    fn tokens_in_paths_are_not_logged() {
        assert_eq!(
            super::redact_path("/t/s3cret-token/api/message"),
            "/t/***/api/message"
        );
        assert_eq!(super::redact_path("/t/s3cret"), "/t/***");
        assert_eq!(super::redact_path("/v1/session"), "/v1/session");
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

/// `/v1` needs `Authorization: Bearer <token>` when tokens are configured. With no
/// credentials configured at all the API is open (waas then refuses to listen on
/// anything but loopback).
async fn require_auth(State(app): State<AppState>, mut request: Request, next: Next) -> Response {
    let auth = app.auth();
    if !auth.is_configured() {
        request.extensions_mut().insert(Credential::open());
        return next.run(request).await;
    }
    if let Some(i) = bearer_match(&auth, request.headers()) {
        request.extensions_mut().insert(Credential {
            id: format!("token#{i}"),
            accounts: auth.tokens[i].accounts.clone(),
        });
        return next.run(request).await;
    }
    let signed = request.headers().contains_key(&WEBHOOK_SIGNATURE);
    if signed && request.method() == Method::POST && !auth.signing_keys.is_empty() {
        return match verify_signed(&app, &auth, request).await {
            Ok(request) => serve_signed_once(&app, request, next).await,
            Err(e) => e.into_response(),
        };
    }
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "send `Authorization: Bearer <token>` with one of auth.tokens, or (on POST) \
         Standard Webhooks headers signed with one of auth.signing_secrets",
    )
    .into_response()
}

/// Largest answer kept for the replays of a signed request.
const REPLAY_BODY_CAP: usize = 1 << 20;

/// Serves a verified signed request once: its `webhook-id` is reserved in the store
/// first, so a replay (on this route or any other, now or after a restart) is answered
/// with the first answer and acts no second time. A 5xx answer is not kept: the sender
/// may retry with the same id and be served afresh.
async fn serve_signed_once(app: &App, request: Request, next: Next) -> Response {
    let Some(SignedMessageId(id)) = request.extensions().get::<SignedMessageId>().cloned() else {
        return next.run(request).await;
    };
    let key = match idempotency_key(request.headers()) {
        Ok(key) => key,
        Err(e) => return e.into_response(),
    };
    let seen = app
        .store
        .begin_signed(SignedRequest {
            webhook_id: id.clone(),
            method: request.method().to_string(),
            path: redact_path(request.uri().path()),
            idempotency_key: key,
            at: now_millis(),
        })
        .await;
    match seen {
        Ok(SignedBegin::New) => {}
        Ok(SignedBegin::Answered(answer)) => {
            tracing::info!(webhook_id = %id, "signed request replayed; answering the first answer");
            return replayed(answer);
        }
        Ok(SignedBegin::InProgress) => {
            return ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_conflict",
                "a request with this webhook-id is still being served; retry in a moment to get its answer",
            )
            .into_response();
        }
        Ok(SignedBegin::Conflict) => {
            return ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_conflict",
                "this webhook-id was already used with another Idempotency-Key; a signed request's webhook-id is its idempotency key",
            )
            .into_response();
        }
        Err(e) => return ApiError::store_unavailable(e).into_response(),
    }
    let mut reservation = Reservation {
        store: app.store.clone(),
        id: Some(id),
    };
    let response = next.run(request).await;
    let (parts, body) = response.into_parts();
    if parts.status.is_server_error() {
        return Response::from_parts(parts, body);
    }
    let bytes = match axum::body::to_bytes(body, REPLAY_BODY_CAP).await {
        Ok(bytes) => bytes,
        Err(e) => {
            return ApiError::internal(format!("cannot read a response: {e}")).into_response();
        }
    };
    let answer = RecordedAnswer {
        status: parts.status.as_u16(),
        content_type: parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body: bytes.to_vec(),
    };
    if let Some(id) = reservation.id.take()
        && let Err(e) = app.store.finish_signed(&id, Some(answer)).await
    {
        tracing::error!(webhook_id = %id, error = %e, "cannot keep the answer of a signed request; a replay will be told it is still in progress");
    }
    Response::from_parts(parts, axum::body::Body::from(bytes))
}

/// A reserved `webhook-id` whose request did not finish with an answer to keep (a 5xx,
/// or a request cut off by the time limit): forgotten, so a retry is served afresh.
struct Reservation {
    store: Arc<dyn crate::store::Store>,
    id: Option<String>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let store = self.store.clone();
            tokio::spawn(async move {
                if let Err(e) = store.finish_signed(&id, None).await {
                    tracing::warn!(webhook_id = %id, error = %e, "cannot release a signed request's reservation");
                }
            });
        }
    }
}

/// The first answer again, marked as a replay (as Stripe marks them).
fn replayed(answer: RecordedAnswer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    let mut response = (status, answer.body).into_response();
    let headers = response.headers_mut();
    if let Some(ct) = answer
        .content_type
        .and_then(|ct| header::HeaderValue::from_str(&ct).ok())
    {
        headers.insert(header::CONTENT_TYPE, ct);
    }
    headers.insert(
        HeaderName::from_static("idempotent-replayed"),
        header::HeaderValue::from_static("true"),
    );
    response
}

/// The `Idempotency-Key` header: absent, or 1–255 printable ASCII characters (422
/// otherwise, never silently ignored).
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if !key.trim().is_empty() && key.len() <= 255 => Ok(Some(key.trim().to_string())),
        _ => Err(ApiError::invalid(
            "`Idempotency-Key` must be 1 to 255 printable ASCII characters (a UUID or a ULID works)",
        )),
    }
}

/// The `webhook-id` of a request whose Standard Webhooks signature verified; it is the
/// request's idempotency key.
#[derive(Debug, Clone)]
pub struct SignedMessageId(pub String);

/// Checks a Standard Webhooks signature over the exact body bytes (±5 minutes, any
/// configured secret, constant-time), then hands the body on unchanged.
async fn verify_signed(app: &App, auth: &Auth, request: Request) -> Result<Request, ApiError> {
    let (parts, body) = request.into_parts();
    let limit = app.settings.server.body_limit.0 as usize;
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the body is larger than server.body_limit",
        )
    })?;
    let header = |name: &HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (id, timestamp, signature) = (
        header(&WEBHOOK_ID),
        header(&WEBHOOK_TIMESTAMP),
        header(&WEBHOOK_SIGNATURE),
    );
    let unauthorized = |code, message: &str| ApiError::new(StatusCode::UNAUTHORIZED, code, message);
    if id.is_empty() || timestamp.is_empty() {
        return Err(unauthorized(
            "unauthorized",
            "signed requests need webhook-id, webhook-timestamp and webhook-signature",
        ));
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    match verify(
        &auth.signing_keys,
        &id,
        &timestamp,
        &signature,
        &bytes,
        now,
        300,
    ) {
        Ok(()) => {
            // Which secret signed it decides the accounts it may act on.
            let which = (0..auth.signing_keys.len())
                .find(|&i| {
                    verify(
                        std::slice::from_ref(&auth.signing_keys[i]),
                        &id,
                        &timestamp,
                        &signature,
                        &bytes,
                        now,
                        300,
                    )
                    .is_ok()
                })
                .unwrap_or(0);
            let mut request = Request::from_parts(parts, axum::body::Body::from(bytes));
            request.extensions_mut().insert(SignedMessageId(id));
            request.extensions_mut().insert(Credential {
                id: format!("secret#{which}"),
                accounts: auth.signing_scopes.get(which).cloned().flatten(),
            });
            Ok(request)
        }
        Err(VerifyError::Stale) => Err(unauthorized(
            "stale_timestamp",
            "webhook-timestamp is more than 5 minutes from the server's clock; sign again",
        )),
        Err(VerifyError::NoMatch) => Err(unauthorized(
            "invalid_signature",
            "no signature in webhook-signature matches a configured signing secret",
        )),
        Err(e) => Err(unauthorized("unauthorized", &e.to_string())),
    }
}

/// Which credential a request came with (`token#N`, `secret#N`, or `open` when the API
/// is open), for the limits kept per credential, and which accounts it may act on
/// (`None`: every account). Never the secret itself.
#[derive(Debug, Clone)]
pub struct Credential {
    pub id: String,
    pub accounts: Option<Vec<String>>,
}

/// Handlers take the credential as an extractor: the one `require_auth` found, or the
/// open one where no auth applies.
impl<S: Send + Sync> FromRequestParts<S> for Credential {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Credential, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Credential>()
            .cloned()
            .unwrap_or_else(Credential::open))
    }
}

impl Credential {
    pub fn open() -> Credential {
        Credential {
            id: "open".into(),
            accounts: None,
        }
    }

    pub fn allows(&self, account: &str) -> bool {
        self.accounts
            .as_ref()
            .is_none_or(|a| a.iter().any(|n| n == account))
    }

    /// Whether it sees everything an account-wide listing holds.
    pub fn is_global(&self) -> bool {
        self.accounts.is_none()
    }
}

/// The account a `/v1/accounts/{account}/…` request named (its path is then served as
/// the unscoped route, with this in its extensions).
#[derive(Debug, Clone)]
pub struct AccountScope(pub String);

/// Serves `/v1/accounts/{account}/REST` as `/v1/REST` for that account: called on every
/// request before routing (`crate::server`). `/v1/accounts` and `/v1/accounts/{account}`
/// themselves are routes.
pub fn scope_account<B>(request: &mut axum::http::Request<B>) {
    let path = request.uri().path();
    let Some(rest) = path.strip_prefix("/v1/accounts/") else {
        return;
    };
    let Some((name, tail)) = rest.split_once('/') else {
        return;
    };
    if name.is_empty() || tail.is_empty() {
        return;
    }
    let name = name.to_string();
    let mut rewritten = format!("/v1/{tail}");
    if let Some(query) = request.uri().query() {
        rewritten.push('?');
        rewritten.push_str(query);
    }
    if let Ok(uri) = rewritten.parse() {
        *request.uri_mut() = uri;
        request.extensions_mut().insert(AccountScope(name));
    }
}

/// The account a request acts on: the one its path names, else the only one or the one
/// named `default` (400 `account_required` when there are several and no `default`). A
/// scoped credential may act on its own accounts only (403 `forbidden`).
pub struct Acct(pub Arc<crate::account::Account>);

impl FromRequestParts<AppState> for Acct {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        app: &AppState,
    ) -> Result<Acct, ApiError> {
        let account = match parts.extensions.get::<AccountScope>() {
            Some(AccountScope(name)) => app.accounts.get(name).cloned().ok_or_else(|| {
                ApiError::not_found(format!("no account `{name}` (GET /v1/accounts lists them)"))
            })?,
            None => app
                .accounts
                .unscoped()
                .map_err(|e| {
                    ApiError::new(StatusCode::BAD_REQUEST, "account_required", e.to_string())
                })?
                .clone(),
        };
        let credential = parts
            .extensions
            .get::<Credential>()
            .cloned()
            .unwrap_or_else(Credential::open);
        if !credential.allows(&account.name) {
            return Err(forbidden_account(&account.name));
        }
        Ok(Acct(account))
    }
}

/// Which accounts a listing may show: `?account=` (or the account of a
/// `/v1/accounts/{account}/…` path), within what the credential may see. `None` means
/// every account.
pub fn visible_accounts(
    app: &AppState,
    credential: &Credential,
    scope: Option<&AccountScope>,
    asked: Option<&str>,
) -> Result<Option<Vec<String>>, ApiError> {
    let asked = asked
        .filter(|a| !a.is_empty())
        .or(scope.map(|s| s.0.as_str()));
    match asked {
        Some(name) => {
            if app.accounts.get(name).is_none() {
                return Err(ApiError::not_found(format!(
                    "no account `{name}` (GET /v1/accounts lists them)"
                )));
            }
            if !credential.allows(name) {
                return Err(forbidden_account(name));
            }
            Ok(Some(vec![name.to_string()]))
        }
        None => Ok(credential.accounts.clone()),
    }
}

/// 403 for a credential scoped to other accounts.
pub fn forbidden_account(account: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!("this credential is not allowed to act on account `{account}`"),
    )
}

/// The index of the configured token the request's bearer token is, if any.
fn bearer_match(auth: &Auth, headers: &HeaderMap) -> Option<usize> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)?;
    // Compare against every token, without stopping early, in constant time each.
    auth.tokens.iter().enumerate().fold(None, |found, (i, t)| {
        let hit = bool::from(t.value.as_bytes().ct_eq(given.as_bytes()));
        if hit && found.is_none() {
            Some(i)
        } else {
            found
        }
    })
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is
/// case-insensitive (RFC 9110, 11.1).
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// An error as the contract shapes it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 422 with a message that names the field.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
    }

    pub fn not_ready(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", message)
    }

    /// The store cannot take the request now (a full disk, a locked database).
    pub fn store_unavailable(error: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %error, "the store refused a request's write");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the store cannot take writes right now; nothing was done, retry later",
        )
    }

    /// An unexpected failure: logged in full, answered with a generic message.
    pub fn internal(error: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %error, "internal error while answering a request");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "an internal error occurred; the details are in the server log",
        )
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<crate::feed::Refused> for ApiError {
    fn from(r: crate::feed::Refused) -> ApiError {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", r.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::IdempotencyConflict => ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_conflict",
                "this idempotency key was already used with a different request",
            ),
            other if other.is_transient() => ApiError::store_unavailable(other),
            other => ApiError::internal(other),
        }
    }
}

/// 413 `payload_too_large`, saying which limit.
pub fn too_large(message: &str) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> ApiError {
        match r {
            JsonRejection::JsonDataError(e) => ApiError::invalid(e.body_text()),
            JsonRejection::JsonSyntaxError(e) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", e.body_text())
            }
            JsonRejection::MissingJsonContentType(_) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `content-type: application/json`",
            ),
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the body is larger than server.body_limit",
                )
            }
            other => ApiError::new(other.status(), "invalid_request", other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> ApiError {
        ApiError::invalid(r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> ApiError {
        ApiError::invalid(r.body_text())
    }
}

/// An optional whole number for a JSON body, also when written `12.0` (JSON Schema, and
/// so OpenAPI, counts that as an integer).
pub fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    use serde::Deserialize;
    use serde::de::Error;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(i) = n.as_i64() {
        return Ok(Some(i));
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e18 => Ok(Some(f as i64)),
        _ => Err(D::Error::custom(format!("`{n}` is not a whole number"))),
    }
}

/// `Json` whose rejections answer in the contract's error shape.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// `Query` whose rejections answer in the contract's error shape.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// `Path` whose rejections answer in the contract's error shape.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);
