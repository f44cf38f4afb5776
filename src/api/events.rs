//! Reading events without a webhook: a cursor pull with long-polling, and the same as
//! Server-Sent Events. Both catch up from the store, then follow the live feed
//! ([`crate::feed`]), so nothing is missed across reconnects: the cursor is `seq`, and a
//! client resumes from the last one it saw. Without a cursor a stream starts from the
//! oldest stored event.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::Stream;
use serde::Deserialize;

use super::messages::parse_wait;
use tokio::sync::broadcast;

use super::{AccountScope, ApiError, ApiQuery, AppState, Credential, visible_accounts};
use crate::event::EventType;
use crate::feed::{FeedEvent, Listening};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/events", get(pull))
        .route("/v1/events/stream", get(stream))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PullQuery {
    /// Events with a larger `seq` (the `next_after` of the previous page); default 0.
    after: Option<i64>,
    /// 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// When nothing matches yet, wait up to this long (`10`, `10s`, `500ms`).
    #[param(pattern = r"^([0-9]{1,6}(\.[0-9]{1,3})?|[0-9]{1,6}(ms|s|m))?$")]
    wait: Option<String>,
    /// Comma-separated event types to keep, e.g. `message,login`; default all.
    #[param(
        pattern = r"^((message|scan|login|logout|ready|friendship|room\.join|room\.leave|room\.topic|room\.invite|error|webhook\.test)(,(message|scan|login|logout|ready|friendship|room\.join|room\.leave|room\.topic|room\.invite|error|webhook\.test))*)?$"
    )]
    types: Option<String>,
    /// Only this account's events (default: every account the credential sees).
    account: Option<String>,
}

/// One event, as webhooks receive it and the pull API lists it. (The pull API splices
/// the stored bodies, so this type documents them rather than producing them.)
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Event {
    /// `evt_…`: the same on every delivery of this event (`webhook-id`).
    #[schema(example = "evt_01JD3Q7X2V1N9M4B6C8D0F2H4K")]
    id: String,
    /// `message`, `scan`, `login`, `logout`, `ready`, `friendship`, `room.join`,
    /// `room.leave`, `room.topic`, `room.invite`, `error`, `webhook.test`.
    #[serde(rename = "type")]
    event_type: String,
    #[schema(format = DateTime)]
    timestamp: String,
    /// Grows by one per stored event: the cursor of the pull API.
    seq: i64,
    bot: BotRefView,
    /// Depends on `type`; a message: `{id, kind, text, from, to, room, mentions,
    /// mentions_self, sent_at}` (see the README and DESIGN).
    #[schema(value_type = Object)]
    data: serde_json::Value,
}

/// The bot account an event belongs to.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct BotRefView {
    id: String,
    name: String,
}

/// One Server-Sent Event of `/v1/events/stream`, as a client's SSE parser hands it over.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct StreamedEvent {
    /// The event's JSON body (an [`Event`]), on one line.
    #[schema(content_media_type = "application/json")]
    data: String,
    /// The event's `type`.
    event: String,
    /// The event's `seq`: send it back as `Last-Event-ID` to resume.
    id: String,
}

/// A page of events.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct EventPage {
    events: Vec<Event>,
    /// Pass as `after` to read on.
    next_after: i64,
}

/// `types=message,login` → the set; empty means all.
fn parse_types(raw: Option<&str>) -> Result<HashSet<String>, ApiError> {
    let mut types = HashSet::new();
    for t in raw
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        let parsed: EventType = t
            .parse()
            .map_err(|e| ApiError::invalid(format!("`types`: {e}")))?;
        types.insert(parsed.as_str().to_string());
    }
    Ok(types)
}

/// `{"events":[…],"next_after":N}`: events with `seq > after`, oldest first. With
/// `wait`, an empty answer waits up to that long for a matching event.
#[utoipa::path(
    get,
    path = "/v1/events", operation_id = "list_events",
    tag = "events",
    params(PullQuery),
    responses((status = 200, body = EventPage))
)]
pub(super) async fn pull(
    State(app): State<AppState>,
    credential: Credential,
    scope: Option<Extension<AccountScope>>,
    ApiQuery(q): ApiQuery<PullQuery>,
) -> Result<Response, ApiError> {
    let accounts = visible_accounts(
        &app,
        &credential,
        scope.as_ref().map(|s| &s.0),
        q.account.as_deref(),
    )?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("`limit` must be between 1 and 1000"));
    }
    let types = parse_types(q.types.as_deref())?;
    let wait = parse_wait(&app, q.wait.as_deref())?.unwrap_or_default();
    let deadline = tokio::time::Instant::now() + wait;
    let mut after = q.after.unwrap_or(0).max(0);
    let in_account = |a: &str| {
        accounts
            .as_ref()
            .is_none_or(|list| list.iter().any(|n| n == a))
    };
    let matches = |t: &str, a: &str| (types.is_empty() || types.contains(t)) && in_account(a);
    // Subscribe before reading, so an event committed in between still arrives.
    let mut live = app.feed.subscribe();
    // One page from the store, from the cursor: the matching events, and whether the
    // page was full (then it is the answer even if nothing in it matched).
    let store = app.store.clone();
    let matches = &matches;
    let read_page = |after: i64| {
        let store = store.clone();
        async move {
            let batch = store.events_after(after, limit).await?;
            let last = batch.last().map_or(after, |e| e.seq);
            let matching: Vec<FeedEvent> = batch
                .iter()
                .filter(|e| matches(&e.event_type, &e.account))
                .map(FeedEvent::from)
                .collect();
            Ok::<_, ApiError>((matching, last, batch.len() as u32 == limit))
        }
    };
    let (matching, last, full) = read_page(after).await?;
    after = last;
    if !matching.is_empty() || full || wait.is_zero() {
        return Ok(events_response(&matching, after));
    }
    // Waiting: a long poll holds a place like a stream does.
    let _place = app.listeners.admit(&credential.id)?;
    let mut found: Vec<Arc<FeedEvent>> = Vec::new();
    loop {
        let next = tokio::select! {
            next = live.recv() => next,
            _ = tokio::time::sleep_until(deadline) => break,
            _ = app.stopping.cancelled() => break,
        };
        match next {
            Ok(event) if event.seq <= after => {}
            Ok(event) => {
                after = event.seq;
                if matches(&event.event_type, &event.account) {
                    found.push(event);
                }
                // Take what else is already here, then answer.
                while found.len() < limit as usize
                    && let Ok(event) = live.try_recv()
                {
                    if event.seq > after {
                        after = event.seq;
                        if matches(&event.event_type, &event.account) {
                            found.push(event);
                        }
                    }
                }
                if !found.is_empty() {
                    break;
                }
            }
            // Too far behind the broadcast: read the store once, from the cursor.
            Err(broadcast::error::RecvError::Lagged(_)) => {
                let (matching, last, full) = read_page(after).await?;
                after = last;
                if !matching.is_empty() || full {
                    return Ok(events_response(&matching, after));
                }
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
    let found: Vec<&FeedEvent> = found.iter().map(|e| e.as_ref()).collect();
    Ok(events_response(&found, after))
}

fn events_response<E: std::borrow::Borrow<FeedEvent>>(events: &[E], next_after: i64) -> Response {
    // The bodies are JSON already; splice them rather than re-encode.
    let mut body = String::with_capacity(
        64 + events
            .iter()
            .map(|e| e.borrow().body.len() + 1)
            .sum::<usize>(),
    );
    body.push_str(r#"{"events":["#);
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&e.borrow().body);
    }
    body.push_str(&format!(r#"],"next_after":{next_after}}}"#));
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Start after this `seq` (`Last-Event-ID` wins when both are given).
    after: Option<i64>,
    /// Comma-separated event types to keep; default all.
    #[param(
        pattern = r"^((message|scan|login|logout|ready|friendship|room\.join|room\.leave|room\.topic|room\.invite|error|webhook\.test)(,(message|scan|login|logout|ready|friendship|room\.join|room\.leave|room\.topic|room\.invite|error|webhook\.test))*)?$"
    )]
    types: Option<String>,
    /// Only this account's events (default: every account the credential sees).
    account: Option<String>,
}

/// Server-Sent Events: `id:` is the seq, `event:` the type, `data:` the event body.
/// Resumes after `Last-Event-ID` (or `?after=`), with no gap and no duplicate.
#[utoipa::path(
    get,
    path = "/v1/events/stream", operation_id = "stream_events",
    tag = "events",
    params(StreamQuery, ("Last-Event-ID" = Option<i64>, Header, nullable = false, description = "Resume after this seq")),
    responses((status = 200, description = "An endless `text/event-stream`: `id:` seq, `event:` type, `data:` the event", content_type = "text/event-stream", body = StreamedEvent))
)]
pub(super) async fn stream(
    State(app): State<AppState>,
    credential: Credential,
    scope: Option<Extension<AccountScope>>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let accounts = visible_accounts(
        &app,
        &credential,
        scope.as_ref().map(|s| &s.0),
        q.account.as_deref(),
    )?;
    let types = parse_types(q.types.as_deref())?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.trim()
                .parse::<i64>()
                .map_err(|_| ApiError::invalid("`Last-Event-ID` must be an event seq"))
        })
        .transpose()?;
    let after = resume.or(q.after).unwrap_or(0).max(0);
    let place = app.listeners.admit(&credential.id)?;
    struct Cursor {
        app: AppState,
        after: i64,
        /// Reading the store (at the start, and after falling behind the broadcast).
        catching_up: bool,
        buffered: VecDeque<Arc<FeedEvent>>,
        types: HashSet<String>,
        accounts: Option<Vec<String>>,
        live: broadcast::Receiver<Arc<FeedEvent>>,
        _place: Listening,
    }
    let cursor = Cursor {
        live: app.feed.subscribe(),
        app,
        after,
        catching_up: true,
        buffered: VecDeque::new(),
        types,
        accounts,
        _place: place,
    };
    impl Cursor {
        fn wants(&self, event_type: &str, account: &str) -> bool {
            (self.types.is_empty() || self.types.contains(event_type))
                && self
                    .accounts
                    .as_ref()
                    .is_none_or(|list| list.iter().any(|n| n == account))
        }
    }
    let events = futures_util::stream::unfold(cursor, |mut c| async move {
        loop {
            if let Some(e) = c.buffered.pop_front() {
                let event = SseEvent::default()
                    .id(e.seq.to_string())
                    .event(e.event_type.clone())
                    .data(e.body.clone());
                return Some((Ok(event), c));
            }
            if c.catching_up {
                match c.app.store.events_after(c.after, 200).await {
                    Ok(batch) if !batch.is_empty() => {
                        c.after = batch.last().map_or(c.after, |e| e.seq);
                        let wanted: Vec<Arc<FeedEvent>> = batch
                            .iter()
                            .filter(|e| c.wants(&e.event_type, &e.account))
                            .map(|e| Arc::new(FeedEvent::from(e)))
                            .collect();
                        c.buffered.extend(wanted);
                        continue;
                    }
                    Ok(_) => c.catching_up = false,
                    Err(e) => {
                        tracing::error!(error = %e, "event stream cannot read the store; closing it");
                        return None;
                    }
                }
            }
            let next = tokio::select! {
                next = c.live.recv() => next,
                _ = c.app.stopping.cancelled() => return None,
            };
            match next {
                Ok(e) if e.seq <= c.after => {}
                Ok(e) => {
                    c.after = e.seq;
                    if c.wants(&e.event_type, &e.account) {
                        c.buffered.push_back(e);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => c.catching_up = true,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// The fuzz target's way in: the queries of both routes, then their values.
pub(super) fn fuzz_queries(raw: &str) {
    if let Ok(q) = serde_urlencoded::from_str::<PullQuery>(raw) {
        let _ = parse_types(q.types.as_deref());
        if let Some(wait) = q.wait {
            let _ = super::parse_seconds_or_duration(&wait);
        }
    }
    if let Ok(q) = serde_urlencoded::from_str::<StreamQuery>(raw) {
        let _ = parse_types(q.types.as_deref());
    }
}
