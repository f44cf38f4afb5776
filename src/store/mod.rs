//! The store: the one source of truth. Events with their delivery rows, every attempt,
//! and the send queue. Nothing is acknowledged before the store has committed it.
//!
//! The store is split by concern ([`EventLog`], [`DeliveryQueue`], [`WebhookState`],
//! [`SendQueue`], [`SignedRequests`], [`IdMap`]); [`Store`] is all of them, and
//! [`sqlite::SqliteStore`] implements it for one process. Errors are the backend's
//! own mapped to [`StoreError`], and claims carry an owner and an expiry
//! ([`Claimant`]), so a backend shared by several instances (Postgres, claims with
//! `FOR UPDATE SKIP LOCKED`) fits without new callers.

pub mod postgres;
pub mod sqlite;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use async_trait::async_trait;
use serde::Serialize;

use crate::config::Ordering;
use crate::event::{Millis, format_millis};

/// What went wrong in the store, in terms that do not depend on the backend (each
/// backend maps its own errors here).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot take this now (a full disk, a locked or unreachable
    /// database, a failed commit): the same operation may succeed later.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The database refused this operation, and will refuse it again.
    #[error("the database refused the operation: {0}")]
    Rejected(String),
    #[error("migration failed: {0}")]
    Migrate(String),
    #[error("the store is shut down")]
    Closed,
    #[error("the same idempotency key was used with a different request")]
    IdempotencyConflict,
    /// A write made for an account's puppet under a lease epoch that is no longer the
    /// account's: another instance holds the account now.
    #[error("account `{0}` is held by another instance now (stale lease epoch)")]
    Fenced(String),
}

impl StoreError {
    /// Whether the same write may succeed later (a full disk, a locked or unreachable
    /// database), as opposed to a request that will never be accepted.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Runs a write until the store takes it: the first failure is logged at error, each
/// retry waits twice as long as the last (100 ms up to 5 s), and the recovery is logged.
/// For outcomes that must not be lost or acted on twice (a send that went out, an
/// attempt that was made, an event the puppet handed over). Gives up only on an error
/// that will not go away, or when `stop` is cancelled (`None`).
pub async fn until_stored<T, F, Fut>(
    what: &'static str,
    id: &str,
    stop: &tokio_util::sync::CancellationToken,
    mut write: F,
) -> Option<Result<T>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut delay = std::time::Duration::from_millis(100);
    let mut failures = 0u32;
    loop {
        match write().await {
            Ok(v) => {
                if failures > 0 {
                    tracing::info!(
                        what,
                        id,
                        retries = failures,
                        "the store took the write again"
                    );
                }
                return Some(Ok(v));
            }
            Err(e) if e.is_transient() => {
                if failures == 0 {
                    tracing::error!(what, id, error = %e, "the store refused a write; holding it and retrying until the store recovers");
                }
                failures += 1;
            }
            Err(e) => return Some(Err(e)),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => {
                tracing::error!(what, id, "shutting down with a write the store never took");
                return None;
            }
        }
        delay = (delay * 2).min(std::time::Duration::from_secs(5));
    }
}

/// Opens the store `storage.url` names: `sqlite://PATH` or `postgres://…`.
pub async fn open(settings: &crate::config::StorageSettings) -> Result<std::sync::Arc<dyn Store>> {
    if postgres::is_postgres_url(&settings.url) {
        Ok(std::sync::Arc::new(
            postgres::PgStore::open(settings).await?,
        ))
    } else {
        Ok(std::sync::Arc::new(
            sqlite::SqliteStore::open(&settings.url, settings.synchronous).await?,
        ))
    }
}

/// The path of a `sqlite://PATH` URL.
pub fn sqlite_path(url: &str) -> Option<&str> {
    url.strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .filter(|p| !p.is_empty())
}

/// An event about to be stored.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: String,
    pub event_type: &'static str,
    /// Events with the same key are stored once (the puppet's message id).
    pub dedup_key: Option<String>,
    pub conversation: Option<String>,
    pub created_at: Millis,
    /// The account the event belongs to.
    pub account: String,
    pub bot_json: String,
    pub data_json: String,
    /// The lease epoch the account's puppet runs under, for events the puppet handed
    /// over: refused ([`StoreError::Fenced`]) once another instance holds the account.
    /// `None` for events not made by the puppet.
    pub epoch: Option<i64>,
}

/// A delivery to create with an event.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: String,
    pub webhook: String,
    /// Created already claimed (by the claimant given to [`EventLog::append_event`]):
    /// the caller hands it to the dispatcher in memory.
    pub claimed: bool,
    /// The event's conversation, for webhooks that keep conversation order; `None`
    /// otherwise, which keeps the delivery out of the ordering index.
    pub conversation: Option<String>,
}

/// The result of [`EventLog::append_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub id: String,
    pub seq: i64,
    /// True when an event with the same dedup key was already stored; nothing new was
    /// written and no delivery was added.
    pub duplicate: bool,
}

/// An event as stored. Formats render it (`relay::format`); the store never does.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub id: String,
    pub event_type: String,
    pub seq: i64,
    pub created_at: Millis,
    pub account: String,
    pub bot_json: String,
    pub data_json: String,
}

/// A delivery the dispatcher now owns until it calls [`DeliveryQueue::finish_attempt`].
#[derive(Debug, Clone)]
pub struct DueDelivery {
    pub id: String,
    pub webhook: String,
    /// Attempts made before this one.
    pub attempts: u32,
    pub event: StoredEvent,
}

/// An attempt at a delivery, with what follows from it, ready to be recorded.
#[derive(Debug, Clone)]
pub struct FinishedAttempt {
    pub delivery_id: String,
    pub webhook: String,
    /// Attempts recorded for this delivery before this one (0: its first).
    pub attempts_before: u32,
    pub attempt: AttemptRecord,
    pub outcome: Outcome,
    /// Sends the response's reply asked for, queued in the same transaction.
    pub replies: Vec<NewSend>,
    /// Another delivery waits for this record (the next of its conversation, on an
    /// ordered webhook): the store commits it at once rather than with later work.
    pub prompt: bool,
}

/// The answers to writes queued one after the other, in their order; `None` is a write
/// that could not be queued (the store is closed).
pub(crate) async fn answers<T>(
    queued: Vec<Option<tokio::sync::oneshot::Receiver<Result<T>>>>,
) -> Vec<Result<T>> {
    let mut answers = Vec::with_capacity(queued.len());
    for answer in queued {
        answers.push(match answer {
            Some(answer) => answer.await.unwrap_or(Err(StoreError::Closed)),
            None => Err(StoreError::Closed),
        });
    }
    answers
}

/// Claimed work, and when the next not-yet-due item becomes due.
#[derive(Debug)]
pub struct Claim<T> {
    pub items: Vec<T>,
    pub next_due: Option<Millis>,
}

/// One HTTP attempt, as recorded.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AttemptRecord {
    #[serde(serialize_with = "ser_millis")]
    #[schema(value_type = String, format = DateTime)]
    pub at: Millis,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration_ms: i64,
    #[serde(skip)]
    #[schema(ignore)]
    pub response: Option<String>,
}

fn ser_millis<S: serde::Serializer>(ms: &Millis, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_millis(*ms))
}

fn ser_opt_millis<S: serde::Serializer>(ms: &Option<Millis>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => s.serialize_str(&format_millis(*ms)),
        None => s.serialize_none(),
    }
}

/// What becomes of a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Try again at this time.
    Retry {
        at: Millis,
    },
    /// Retries exhausted; kept for inspection and manual retry.
    Dead,
    /// The webhook answered 410 Gone and is now disabled; the delivery stays pending
    /// and goes out if the webhook is enabled again.
    Disabled {
        reason: &'static str,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Dead,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<DeliveryStatus> {
        match s {
            "pending" => Some(DeliveryStatus::Pending),
            "delivered" => Some(DeliveryStatus::Delivered),
            "dead" => Some(DeliveryStatus::Dead),
            _ => None,
        }
    }
}

/// A delivery as `GET /v1/deliveries` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    pub id: String,
    pub webhook: String,
    pub event_id: String,
    pub event_type: String,
    pub status: DeliveryStatus,
    pub attempts: Vec<AttemptRecord>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_opt_millis"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_attempt_at: Option<Millis>,
}

#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub webhook: Option<String>,
    /// Only deliveries of these accounts' events (`None`: all).
    pub accounts: Option<Vec<String>>,
    pub status: Option<DeliveryStatus>,
    pub limit: u32,
}

/// What the store knows of one webhook's health.
#[derive(Debug, Clone, Default)]
pub struct WebhookStats {
    pub pending: i64,
    pub dead: i64,
    pub last_success_at: Option<Millis>,
    pub last_error: Option<String>,
    pub last_error_at: Option<Millis>,
    pub disabled_reason: Option<String>,
    /// When a delivery first died since the last success.
    pub failing_since: Option<Millis>,
}

/// An outbound message about to be queued.
#[derive(Debug, Clone)]
pub struct NewSend {
    pub id: String,
    /// The account whose puppet sends it.
    pub account: String,
    pub idempotency_key: Option<String>,
    /// A digest of the request, to tell a replay from a different request under the
    /// same key.
    pub request_hash: String,
    pub request_json: String,
    pub conversation: String,
    pub created_at: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SendStatus {
    Queued,
    Sent,
    Failed,
}

/// An outbound message as `GET /v1/messages/{id}` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SendView {
    pub id: String,
    /// Whose send it is (for scoped credentials; not part of the answer).
    #[serde(skip)]
    #[schema(ignore)]
    pub account: String,
    pub status: SendStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// The request as queued (JSON) and when, where the store read them
    /// ([`SendQueue::get_send`]); not part of the answer.
    #[serde(skip)]
    #[schema(ignore)]
    pub request: Option<(String, Millis)>,
}

impl SendStatus {
    /// A send's `status` column (`queued` for anything unknown).
    pub fn parse(status: &str) -> SendStatus {
        match status {
            "sent" => SendStatus::Sent,
            "failed" => SendStatus::Failed,
            _ => SendStatus::Queued,
        }
    }
}

impl AttemptRecord {
    /// What a webhook's `last_error` says about this failed attempt.
    pub fn error_text(&self) -> String {
        self.error
            .clone()
            .or_else(|| self.status_code.map(|c| format!("HTTP {c}")))
            .unwrap_or_default()
    }
}

/// One row of the delivery listing both backends run: the delivery (id, webhook, event
/// id, event type, status, next attempt) and one of its attempts (at, status code,
/// error, duration), if any; rows of one delivery together, attempts in order.
pub(crate) type DeliveryRow = (
    String,
    String,
    String,
    String,
    String,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<i64>,
);

/// Folds listing rows into deliveries with their attempts.
pub(crate) fn fold_deliveries(rows: Vec<DeliveryRow>) -> Vec<DeliveryView> {
    let mut out: Vec<DeliveryView> = Vec::new();
    for (id, webhook, event_id, event_type, status, next, at, code, error, duration) in rows {
        if out.last().is_none_or(|d| d.id != id) {
            let status = DeliveryStatus::parse(&status).unwrap_or(DeliveryStatus::Pending);
            out.push(DeliveryView {
                id,
                webhook,
                event_id,
                event_type,
                status,
                attempts: Vec::new(),
                next_attempt_at: next.filter(|_| status == DeliveryStatus::Pending),
            });
        }
        if let Some(at) = at
            && let Some(view) = out.last_mut()
        {
            view.attempts.push(AttemptRecord {
                at,
                status_code: code.map(|c| c as u16),
                error,
                duration_ms: duration.unwrap_or_default(),
                response: None,
            });
        }
    }
    out
}

/// The result of [`SendQueue::enqueue_send`].
#[derive(Debug, Clone)]
pub struct Enqueued {
    pub send: SendView,
    /// True when the idempotency key was seen before with the same request.
    pub replayed: bool,
}

/// The event that tells what became of a send, with its deliveries.
#[derive(Debug, Clone)]
pub struct Receipt {
    pub event: NewEvent,
    pub deliveries: Vec<NewDelivery>,
}

/// A queued send the sender now owns.
#[derive(Debug, Clone)]
pub struct QueuedSend {
    pub id: String,
    pub request_json: String,
    pub conversation: String,
    pub attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    Sent { message_id: String },
    Retry { at: Millis, error: String },
    Failed { error: String },
}

/// One chunk of a replay: see [`DeliveryQueue::requeue`].
#[derive(Debug, Clone)]
pub struct RequeueChunk {
    pub webhook: String,
    pub after_seq: Option<i64>,
    pub since: Option<Millis>,
    pub now: Millis,
    /// Where this chunk starts (opaque; 0 at first).
    pub cursor: i64,
    /// How many deliveries this chunk looks at.
    pub rows: i64,
}

/// What one chunk of a replay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requeued {
    /// Deliveries queued again by this chunk.
    pub requeued: u64,
    /// Where the next chunk starts; `None` when this was the last.
    pub cursor: Option<i64>,
    /// How far the whole replay has to go, in the cursor's units (for progress).
    pub end: i64,
}

/// A verified signed request, about to be served.
#[derive(Debug, Clone)]
pub struct SignedRequest {
    pub webhook_id: String,
    pub method: String,
    pub path: String,
    /// The `Idempotency-Key` header it came with.
    pub idempotency_key: Option<String>,
    pub at: Millis,
}

/// The answer a signed request got, kept for its replays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedAnswer {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

/// What [`SignedRequests::begin_signed`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignedBegin {
    /// First sight of this `webhook-id`: serve it, then [`SignedRequests::finish_signed`].
    New,
    /// The first request with this id is still being served.
    InProgress,
    /// Seen and answered before: answer the same, do nothing.
    Answered(RecordedAnswer),
    /// Seen before with another `Idempotency-Key`.
    Conflict,
}

/// Who takes work from a queue, and for how long. A claim names its owner and expires
/// at `now + lease`: the owner finishes or releases it before then, and an owner never
/// takes its own claims again (it knows they are in flight); once expired, another
/// owner may take the work over (an instance that died mid-attempt). A backend shared
/// by several processes (Postgres, `FOR UPDATE SKIP LOCKED`) enforces the expiry; the
/// SQLite store has one process per file, so every claim is this process's and lives
/// until it is finished or released, or the process stops (see `sqlite`).
#[derive(Debug, Clone)]
pub struct Claimant {
    pub owner: std::sync::Arc<str>,
    pub lease: std::time::Duration,
    /// The account lease epoch a sender claims under: a stale one takes nothing
    /// ([`StoreError::Fenced`]). `None` for work that is not an account's puppet's.
    pub epoch: Option<i64>,
}

impl Claimant {
    pub fn new(owner: impl Into<std::sync::Arc<str>>, lease: std::time::Duration) -> Claimant {
        Claimant {
            owner: owner.into(),
            lease,
            epoch: None,
        }
    }

    /// The same claimant, claiming under an account lease's epoch.
    pub fn with_epoch(&self, epoch: Option<i64>) -> Claimant {
        Claimant {
            epoch,
            ..self.clone()
        }
    }

    /// When a claim made at `now` expires.
    pub fn until(&self, now: Millis) -> Millis {
        now.saturating_add(self.lease.as_millis() as i64)
    }
}

/// The event log: every event, once, in `seq` order.
#[async_trait]
pub trait EventLog: Send + Sync {
    /// Commits an event and its pending deliveries, atomically. A duplicate dedup key
    /// stores nothing and returns the first event's id. Deliveries marked `claimed` are
    /// created claimed by `by` (handed to a dispatcher in memory).
    async fn append_event(
        &self,
        event: NewEvent,
        deliveries: Vec<NewDelivery>,
        by: &Claimant,
    ) -> Result<Appended>;

    /// Commits several events in this order, each as [`EventLog::append_event`] does,
    /// with a result for each. Both stores queue them for their group commit back to
    /// back (one commit for a burst from the puppet); this default appends them one by
    /// one.
    async fn append_events(
        &self,
        events: Vec<(NewEvent, Vec<NewDelivery>)>,
        by: &Claimant,
    ) -> Vec<Result<Appended>> {
        let mut appended = Vec::with_capacity(events.len());
        for (event, deliveries) in events {
            appended.push(self.append_event(event, deliveries, by).await);
        }
        appended
    }

    /// Events with `seq > after`, oldest first.
    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<StoredEvent>>;

    /// The newest event's `seq` (0 when there is none).
    async fn last_seq(&self) -> Result<i64>;

    /// Events of one type created at or after `since`, oldest first, at most `limit`.
    async fn recent_events(
        &self,
        event_type: &str,
        since: Millis,
        limit: u32,
    ) -> Result<Vec<StoredEvent>>;
}

/// The delivery queue: one row per (event, webhook), claimed, attempted, finished.
#[async_trait]
pub trait DeliveryQueue: Send + Sync {
    /// Claims up to `limit` due deliveries of one webhook for `by`. With
    /// `Ordering::Conversation`, only the oldest pending delivery of each conversation
    /// is eligible. Claimed deliveries are not returned again until finished, released
    /// or (for another owner) expired. `next_due` is when the next unclaimed one
    /// becomes due.
    async fn claim_due(
        &self,
        by: &Claimant,
        webhook: &str,
        ordering: Ordering,
        limit: usize,
        now: Millis,
    ) -> Result<Claim<DueDelivery>>;

    /// Records an attempt and its outcome, queues the sends a reply in the response
    /// asked for (in the same transaction), and releases the claim.
    async fn finish_attempt(&self, finished: &FinishedAttempt) -> Result<()>;

    /// Gives up a claim on a delivery without recording anything.
    async fn release_delivery(&self, delivery_id: &str) -> Result<()>;

    /// Re-queues one delivery now, whatever its status. `None` when it does not exist;
    /// otherwise the delivery's webhook.
    async fn retry_delivery(&self, id: &str, now: Millis) -> Result<Option<String>>;

    /// Re-queues, now, the finished (delivered or dead) deliveries to `webhook` of the
    /// events after `after_seq` or created at or after `since`, one bounded chunk at a
    /// time (so a replay of millions never stalls other writes): those among the next
    /// `rows` deliveries from `cursor` on. Start with `cursor = 0`, go on with the
    /// answer's `cursor` until it is `None`.
    async fn requeue(&self, chunk: RequeueChunk) -> Result<Requeued>;

    async fn list_deliveries(&self, filter: DeliveryFilter) -> Result<Vec<DeliveryView>>;

    /// The account whose event a delivery carries (`None`: no such delivery).
    async fn delivery_account(&self, id: &str) -> Result<Option<String>>;
}

/// What is known of each webhook's health, kept across restarts.
#[async_trait]
pub trait WebhookState: Send + Sync {
    async fn webhook_stats(&self) -> Result<HashMap<String, WebhookStats>>;

    /// Marks a webhook disabled (`Some(reason)`) or enabled (`None`).
    async fn set_webhook_disabled(
        &self,
        name: &str,
        reason: Option<String>,
        now: Millis,
    ) -> Result<()>;

    /// Remembers when this webhook started losing deliveries (`None`: it recovered).
    async fn set_webhook_failing_since(&self, name: &str, since: Option<Millis>) -> Result<()>;
}

/// The send queue: outbound messages, per account, in conversation order.
#[async_trait]
pub trait SendQueue: Send + Sync {
    /// Commits an outbound message. An idempotency key seen before with the same
    /// request returns the first send; with another request it is a conflict.
    async fn enqueue_send(&self, send: NewSend) -> Result<Enqueued>;

    /// Claims up to `limit` due sends of `account` for `by`, only the oldest queued one
    /// per conversation.
    async fn claim_sends(
        &self,
        by: &Claimant,
        account: &str,
        limit: usize,
        now: Millis,
    ) -> Result<Claim<QueuedSend>>;

    /// Records a claimed send's outcome and releases the claim, with its receipt event
    /// (and the receipt's deliveries, created unclaimed) in the same transaction. A send
    /// whose outcome could not be recorded stays claimed: it went out (or was tried), and
    /// claiming it again would send it twice. Answers the receipt as appended.
    async fn finish_send(
        &self,
        send: &QueuedSend,
        outcome: SendOutcome,
        now: Millis,
        receipt: Option<Receipt>,
    ) -> Result<Option<Appended>>;

    /// Puts a claimed send back, not before `at` (pacing), without counting an attempt.
    async fn defer_send(&self, send: &QueuedSend, at: Millis) -> Result<()>;

    /// Gives up a claim on a send without recording anything.
    async fn release_send(&self, send_id: &str) -> Result<()>;

    async fn get_send(&self, id: &str) -> Result<Option<SendView>>;
}

/// Ids other protocols use for waas's own (a Slack `ts` for a send), kept so an id
/// handed out once is accepted back, also after a restart.
#[async_trait]
pub trait IdMap: Send + Sync {
    /// Remembers that `alias` (of `kind`) stands for `target`. False when the alias
    /// already stands for something else (nothing is changed then).
    async fn set_alias(&self, kind: &str, alias: &str, target: &str, now: Millis) -> Result<bool>;

    /// What an alias stands for.
    async fn alias_target(&self, kind: &str, alias: &str) -> Result<Option<String>>;

    /// The alias of `kind` given to a target, if any.
    async fn alias_of(&self, kind: &str, target: &str) -> Result<Option<String>>;

    /// The integer that stands for `target` (of `kind`): given the first time it is
    /// asked for, the same ever after (across restarts), never reused; below 2^53.
    async fn number(&self, kind: &str, target: &str, now: Millis) -> Result<i64>;

    /// What an integer of `kind` stands for.
    async fn number_target(&self, kind: &str, number: i64) -> Result<Option<String>>;

    /// The secret key called `name`: `fresh` the first time it is asked for, and what
    /// was kept then every time after, across restarts and instances.
    async fn key(&self, name: &str, fresh: Vec<u8>, now: Millis) -> Result<Vec<u8>>;
}

/// How far long-lived consumers of the event log have got (a OneBot WebSocket bot that
/// resumes where it left off), kept across restarts.
#[async_trait]
pub trait Cursors: Send + Sync {
    /// The `seq` a consumer last confirmed (`None`: never seen).
    async fn cursor(&self, name: &str) -> Result<Option<i64>>;

    /// Moves a consumer's cursor to `seq` (never back: a lower `seq` changes nothing).
    async fn set_cursor(&self, name: &str, seq: i64, now: Millis) -> Result<()>;
}

/// Signed requests seen, with their answers, so a replayed `webhook-id` acts once.
#[async_trait]
pub trait SignedRequests: Send + Sync {
    /// Reserves a signed request's `webhook-id`, or tells how it was answered before.
    async fn begin_signed(&self, request: SignedRequest) -> Result<SignedBegin>;

    /// Keeps the answer of a signed request for its replays (`Some`), or forgets the
    /// reservation (`None`: it failed in a way a retry may fix, such as a 5xx).
    async fn finish_signed(&self, webhook_id: &str, answer: Option<RecordedAnswer>) -> Result<()>;
}

/// An instance sharing the store, as `GET /v1/cluster` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InstanceView {
    pub id: String,
    #[serde(serialize_with = "ser_millis")]
    #[schema(value_type = String, format = DateTime)]
    pub started_at: Millis,
    #[serde(serialize_with = "ser_millis")]
    #[schema(value_type = String, format = DateTime)]
    pub last_seen: Millis,
}

/// Who holds an account's lease, as `GET /v1/cluster` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LeaseView {
    pub name: String,
    /// The instance that runs the account's puppet, or null while nobody holds it.
    pub holder: Option<String>,
    pub epoch: i64,
    #[serde(serialize_with = "ser_millis")]
    #[schema(value_type = String, format = DateTime)]
    pub since: Millis,
    /// When the lease runs out unless renewed (not part of the answer).
    #[serde(skip)]
    #[schema(ignore)]
    pub expires_at: Millis,
}

/// A change made by another instance sharing the store, for this one to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// An event was stored, up to this `seq` (streams and long polls wake).
    Event(i64),
    /// A send of this account was queued (its holder's sender wakes).
    Send(String),
    /// Claimed work was freed (a dead instance's), or notices may have been missed:
    /// every worker looks at the store again.
    Work,
}

/// The instances sharing a store, and which one runs each account's puppet. A store
/// that one process owns (SQLite) grants every lease to that process.
#[async_trait]
pub trait Cluster: Send + Sync {
    /// Records that `instance` (started at `started_at`) is alive now.
    async fn heartbeat(&self, instance: &str, started_at: Millis) -> Result<()>;

    /// Takes or renews the lease of `account` for `instance`, for `lease` from now.
    /// Answers the epoch while `instance` holds it; `None` while another instance holds
    /// a lease that has not run out. Taking it over from another holder (or after
    /// nobody held it) makes a new, larger epoch; a renewal keeps the epoch. Lease times
    /// are the store's clock (the database's), so instances' clocks need not agree.
    async fn acquire_lease(
        &self,
        account: &str,
        instance: &str,
        lease: std::time::Duration,
    ) -> Result<Option<i64>>;

    /// Gives up a lease `instance` holds (at shutdown), so another instance need not wait
    /// for it to run out.
    async fn release_lease(&self, account: &str, instance: &str) -> Result<()>;

    /// Forgets the instances not seen for `silence` and frees the deliveries and sends
    /// claimed by instances that are not alive. Answers how many claims were freed.
    async fn reap(&self, silence: std::time::Duration) -> Result<u64>;

    async fn instances(&self) -> Result<Vec<InstanceView>>;

    async fn leases(&self) -> Result<Vec<LeaseView>>;

    /// Changes made by other instances (`None`: no other instance can share this store).
    fn notices(&self) -> Option<tokio::sync::broadcast::Receiver<Notice>>;
}

/// Everything waas keeps durably: each concern a trait of its own (a worker holds only
/// the one it uses), one backend implementing them all.
#[async_trait]
pub trait Store:
    EventLog
    + DeliveryQueue
    + WebhookState
    + SendQueue
    + SignedRequests
    + IdMap
    + Cursors
    + Cluster
    + 'static
{
    /// Deletes delivered events, their attempts, finished sends and id aliases older
    /// than `before`.
    /// Returns how many events were pruned.
    async fn prune(&self, before: Millis) -> Result<u64>;

    /// Answers when the store is usable (`/readyz`): it can be read, and its last
    /// write did not fail.
    async fn ping(&self) -> Result<()>;

    /// Why writes are failing now (a full disk, a locked database), or `None` while they
    /// succeed. Workers stop taking new work while it is `Some`.
    fn write_failure(&self) -> Option<String>;
}
