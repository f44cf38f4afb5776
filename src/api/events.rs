//! Reading events without a webhook: a cursor pull with long-polling, and the same as
//! Server-Sent Events. Both read the store, so nothing is missed across reconnects:
//! the cursor is `seq`, and a client resumes from the last one it saw.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::Stream;
use serde::Deserialize;

use super::messages::parse_wait;
use super::{ApiError, ApiQuery, AppState};
use crate::event::EventType;
use crate::store::StoredEvent;

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
    ApiQuery(q): ApiQuery<PullQuery>,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("`limit` must be between 1 and 1000"));
    }
    let types = parse_types(q.types.as_deref())?;
    let wait = parse_wait(&app, q.wait.as_deref())?.unwrap_or_default();
    let deadline = tokio::time::Instant::now() + wait;
    let mut after = q.after.unwrap_or(0).max(0);
    // Subscribe before reading, so an event committed in between still wakes us.
    let mut newest = app.ingest.last_seq();
    loop {
        newest.borrow_and_update();
        let batch = app.store.events_after(after, limit).await?;
        if let Some(last) = batch.last() {
            after = last.seq;
        }
        let matching: Vec<&StoredEvent> = batch
            .iter()
            .filter(|e| types.is_empty() || types.contains(&e.event_type))
            .collect();
        let full = batch.len() as u32 == limit;
        if !matching.is_empty() || full {
            return Ok(events_response(&matching, after));
        }
        tokio::select! {
            changed = newest.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep_until(deadline) => break,
            _ = app.stopping.cancelled() => break,
        }
    }
    Ok(events_response(&[], after))
}

fn events_response(events: &[&StoredEvent], next_after: i64) -> Response {
    // The stored bodies are JSON already; splice them rather than re-encode.
    let bodies: Vec<String> = events.iter().map(|e| e.body()).collect();
    let body = format!(
        r#"{{"events":[{}],"next_after":{next_after}}}"#,
        bodies.join(",")
    );
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
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
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
    struct Cursor {
        app: AppState,
        after: i64,
        buffered: VecDeque<StoredEvent>,
        types: HashSet<String>,
        newest: tokio::sync::watch::Receiver<i64>,
    }
    let cursor = Cursor {
        newest: app.ingest.last_seq(),
        app,
        after,
        buffered: VecDeque::new(),
        types,
    };
    let events = futures_util::stream::unfold(cursor, |mut c| async move {
        loop {
            if let Some(e) = c.buffered.pop_front() {
                let event = SseEvent::default()
                    .id(e.seq.to_string())
                    .event(e.event_type.clone())
                    .data(e.body());
                return Some((Ok(event), c));
            }
            c.newest.borrow_and_update();
            match c.app.store.events_after(c.after, 200).await {
                Ok(batch) if !batch.is_empty() => {
                    c.after = batch.last().map_or(c.after, |e| e.seq);
                    c.buffered.extend(
                        batch
                            .into_iter()
                            .filter(|e| c.types.is_empty() || c.types.contains(&e.event_type)),
                    );
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "event stream cannot read the store; closing it");
                    return None;
                }
            }
            tokio::select! {
                changed = c.newest.changed() => if changed.is_err() { return None },
                _ = c.app.stopping.cancelled() => return None,
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
