//! The dispatcher: one loop per webhook claims due deliveries and POSTs them, signed,
//! up to `max_in_flight` at a time, so a slow or dead webhook never delays another.
//! Every attempt is recorded; failures are rescheduled from the webhook's retry
//! schedule; a 2xx answer to a message event may carry replies, which are queued in
//! the same transaction that marks the delivery delivered.
//!
//! The loops never poll: they sleep until the next due time or until woken (a new
//! delivery, a finished attempt, a manual retry).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::format::{Attempt, Format};
use super::retry::{next_delay, parse_retry_after};
use crate::config::{Ordering, WebhookSettings};
use crate::event::now_millis;
use crate::outbox::Outbox;
use crate::relay::lanes::{Lane, Lanes};
use crate::store::{
    AttemptRecord, Claim, DueDelivery, FinishedAttempt, Outcome, Store, WebhookStats,
};

/// How much of a response is kept in the attempt record.
const RESPONSE_PREFIX: usize = 1024;
/// Fewest deliveries a webhook loop claims ahead.
const PREFETCH_MIN: usize = 256;
/// How much of a response is read at all (a reply may carry a small file).
const RESPONSE_CAP: usize = 1 << 20;

/// One webhook as the dispatcher drives it.
pub struct Target {
    pub settings: WebhookSettings,
    /// `settings.url`, parsed once (validated with the configuration).
    url: reqwest::Url,
    meters: Meters,
    /// How events become requests for this webhook, and responses replies.
    format: Box<dyn Format>,
    /// Successful attempts, logged as a summary at most every few seconds.
    summary: DeliverySummary,
    lane: Arc<Lane>,
    slots: Arc<Semaphore>,
    disabled: AtomicBool,
    /// When a delivery first died since the last success (for `disable_after`).
    failing_since: Mutex<Option<i64>>,
    /// Cancelled when a reload replaces this webhook.
    stop: CancellationToken,
}

/// This webhook's metric handles, looked up once instead of by label on every attempt.
struct Meters {
    delivered: metrics::Counter,
    retry: metrics::Counter,
    dead: metrics::Counter,
    disabled: metrics::Counter,
    attempt_seconds: metrics::Histogram,
}

impl Meters {
    fn new(webhook: &str) -> Meters {
        let outcome = |outcome: &'static str| metrics::counter!("waas_deliveries_total", "webhook" => webhook.to_string(), "outcome" => outcome);
        Meters {
            delivered: outcome("delivered"),
            retry: outcome("retry"),
            dead: outcome("dead"),
            disabled: outcome("disabled"),
            attempt_seconds: metrics::histogram!("waas_delivery_attempt_seconds", "webhook" => webhook.to_string()),
        }
    }

    fn record(&self, outcome: Outcome, duration_ms: i64) {
        match outcome {
            Outcome::Delivered => &self.delivered,
            Outcome::Retry { .. } => &self.retry,
            Outcome::Dead => &self.dead,
            Outcome::Disabled { .. } => &self.disabled,
        }
        .increment(1);
        self.attempt_seconds.record(duration_ms as f64 / 1000.0);
    }
}

impl Target {
    pub fn is_disabled(&self) -> bool {
        self.disabled.load(AtomicOrdering::Relaxed)
    }
}

pub struct Dispatcher {
    store: Arc<dyn Store>,
    client: reqwest::Client,
    /// The webhooks now configured; replaced as a whole on reload.
    targets: RwLock<Vec<Arc<Target>>>,
    /// Where loops run, once started: reload starts new ones there.
    running: Mutex<Option<(TaskTracker, CancellationToken)>>,
    /// Where replies queued by a finished attempt wake their account's sender.
    outbox: Arc<Outbox>,
    /// `send.allow_private_urls`, for the URLs in replies.
    allow_private_urls: bool,
    /// What `format = "onebot"` bodies are made with.
    onebot: crate::onebot::Context,
}

/// One info line per webhook per [`SUMMARY_EVERY`] with how many deliveries succeeded,
/// instead of a line per delivery (hundreds a second under load) or none at all. Kept
/// with atomics: it is on every successful attempt's path.
#[derive(Default)]
struct DeliverySummary {
    /// Deliveries since the last line.
    delivered: AtomicU64,
    /// When the last line was written (unix ms); 0 before the first success.
    since: AtomicI64,
}

/// How often delivered attempts are summed up in the log.
const SUMMARY_EVERY: Duration = Duration::from_secs(10);

impl DeliverySummary {
    fn delivered(&self, webhook: &str) {
        let now = now_millis();
        let since = self.since.load(AtomicOrdering::Relaxed);
        if since == 0 {
            if self
                .since
                .compare_exchange(0, now, AtomicOrdering::Relaxed, AtomicOrdering::Relaxed)
                .is_ok()
            {
                // The very first success is told at once: a newcomer sees it work.
                tracing::info!(
                    webhook,
                    "delivered; from now on successes are summed up every {}s",
                    SUMMARY_EVERY.as_secs()
                );
            }
            return;
        }
        self.delivered.fetch_add(1, AtomicOrdering::Relaxed);
        let every = SUMMARY_EVERY.as_millis() as i64;
        if now - since >= every
            && self
                .since
                .compare_exchange(since, now, AtomicOrdering::Relaxed, AtomicOrdering::Relaxed)
                .is_ok()
        {
            let delivered = self.delivered.swap(0, AtomicOrdering::Relaxed);
            tracing::info!(
                webhook,
                delivered,
                seconds = (now - since) / 1000,
                "deliveries succeeded"
            );
        }
    }
}

/// The HTTP client for webhooks: no redirects (a 3xx is a failure, as Svix does), our
/// user agent, rustls.
pub fn http_client() -> reqwest::Client {
    crate::install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("waas/", env!("CARGO_PKG_VERSION")))
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .dns_resolver(crate::address::resolver())
        .build()
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot build the configured HTTP client; using defaults");
            reqwest::Client::new()
        })
}

impl Dispatcher {
    /// `disabled` names the webhooks the store remembers as disabled.
    pub fn new(
        store: Arc<dyn Store>,
        outbox: Arc<Outbox>,
        webhooks: &[WebhookSettings],
        stats: &HashMap<String, WebhookStats>,
        lanes: &Lanes,
        allow_private_urls: bool,
        onebot: crate::onebot::Context,
    ) -> Dispatcher {
        Dispatcher {
            store,
            client: http_client(),
            targets: RwLock::new(build_targets(webhooks, stats, lanes, &onebot)),
            running: Mutex::new(None),
            outbox,
            allow_private_urls,
            onebot,
        }
    }

    /// The webhooks now configured.
    pub fn targets(&self) -> Vec<Arc<Target>> {
        self.targets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn target(&self, name: &str) -> Option<Arc<Target>> {
        self.targets().into_iter().find(|t| t.settings.name == name)
    }

    /// Replaces the webhooks (configuration reload). Each old loop stops claiming and
    /// hands back what it had not started; deliveries in flight finish under the old
    /// settings; new loops start at once.
    pub fn reload(
        self: &Arc<Self>,
        webhooks: &[WebhookSettings],
        stats: &HashMap<String, WebhookStats>,
        lanes: &Lanes,
    ) {
        let new = build_targets(webhooks, stats, lanes, &self.onebot);
        let old = std::mem::replace(
            &mut *self.targets.write().unwrap_or_else(|e| e.into_inner()),
            new.clone(),
        );
        for target in old {
            target.stop.cancel();
        }
        let running = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some((tracker, shutdown)) = running {
            for target in new {
                tracker.spawn(
                    self.clone()
                        .run_target(target, tracker.clone(), shutdown.clone()),
                );
            }
        }
    }

    /// Enables a disabled webhook again; its waiting deliveries go out.
    pub fn enable(&self, name: &str) -> bool {
        let Some(target) = self.target(name) else {
            return false;
        };
        target.disabled.store(false, AtomicOrdering::Relaxed);
        *target
            .failing_since
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        target.lane.direct.store(
            target.settings.ordering == Ordering::None,
            AtomicOrdering::Relaxed,
        );
        target.lane.wake_stored();
        true
    }

    /// Starts one loop per webhook on `tracker`.
    pub fn spawn(self: &Arc<Self>, tracker: &TaskTracker, shutdown: CancellationToken) {
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((tracker.clone(), shutdown.clone()));
        for target in &self.targets() {
            if target.is_disabled() {
                tracing::warn!(webhook = %target.settings.name, "webhook is disabled; its deliveries wait");
            }
            tracker.spawn(self.clone().run_target(
                target.clone(),
                tracker.clone(),
                shutdown.clone(),
            ));
        }
    }

    async fn run_target(
        self: Arc<Self>,
        target: Arc<Target>,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) {
        let name = target.settings.name.clone();
        let ordering = target.settings.ordering;
        if let Some(handshake) = target
            .format
            .handshake(time::OffsetDateTime::now_utc().unix_timestamp())
        {
            tracker.spawn(self.clone().handshake(target.clone(), handshake));
        }
        // Claimed deliveries waiting for a free slot. A claim is a write and waits for a
        // group commit, so under load the loop claims well ahead of the free slots and
        // refills at half, keeping the slots busy while the next claim commits.
        let prefetch = (4 * target.settings.max_in_flight).max(PREFETCH_MIN);
        let mut ready: VecDeque<DueDelivery> = VecDeque::new();
        // The claim under way, if any: the loop keeps handing out slots while it commits.
        let mut claiming: Option<
            tokio::task::JoinHandle<crate::store::Result<Claim<DueDelivery>>>,
        > = None;
        // Something may have become due since the last claim (new work, a finished
        // attempt, a due time passed, or the last claim was full).
        let mut dirty = true;
        let mut next_due: Option<i64> = None;
        loop {
            ready.extend(target.lane.take(prefetch.saturating_sub(ready.len())));
            if target.is_disabled() {
                for d in ready.drain(..) {
                    if let Err(e) = self.store.release_delivery(&d.id).await {
                        tracing::error!(webhook = %name, error = %e, "cannot release a delivery");
                    }
                }
                next_due = None;
            } else if claiming.is_none() && dirty && ready.len() <= prefetch / 2 {
                dirty = false;
                let (store, name, limit) =
                    (self.store.clone(), name.clone(), prefetch - ready.len());
                let by = self.outbox.claimant().clone();
                claiming = Some(tokio::spawn(async move {
                    store
                        .claim_due(&by, &name, ordering, limit, now_millis())
                        .await
                }));
            }
            while !ready.is_empty() {
                let Ok(permit) = target.slots.clone().try_acquire_owned() else {
                    break;
                };
                if let Some(delivery) = ready.pop_front() {
                    tracker.spawn(self.clone().deliver(
                        target.clone(),
                        delivery,
                        permit,
                        shutdown.clone(),
                    ));
                }
            }
            let wake_at = if claiming.is_none() { next_due } else { None };
            let sleep = async {
                match wake_at {
                    Some(at) => {
                        let ms = (at - now_millis()).max(0) as u64;
                        tokio::time::sleep(Duration::from_millis(ms)).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                claimed = async { claiming.as_mut().expect("guarded by the branch condition").await },
                    if claiming.is_some() =>
                {
                    claiming = None;
                    match claimed {
                        Ok(Ok(claim)) => {
                            let asked = prefetch.saturating_sub(ready.len());
                            dirty |= claim.items.len() >= asked;
                            next_due = claim.next_due;
                            ready.extend(claim.items);
                        }
                        Ok(Err(e)) => {
                            tracing::error!(webhook = %name, error = %e, "cannot claim deliveries; trying again in 1s");
                            next_due = Some(now_millis() + 1000);
                        }
                        Err(e) => {
                            tracing::error!(webhook = %name, error = %e, "the claim task failed; trying again in 1s");
                            next_due = Some(now_millis() + 1000);
                        }
                    }
                }
                _ = target.lane.notify.notified() => dirty |= target.lane.take_stored(),
                _ = sleep => dirty = true,
                _ = shutdown.cancelled() => break,
                _ = target.stop.cancelled() => break,
            }
        }
        if let Some(claim) = claiming
            && let Ok(Ok(claim)) = claim.await
        {
            ready.extend(claim.items);
        }
        // Claimed but never started: hand them back for the next start.
        ready.extend(target.lane.take_all());
        for d in ready {
            let _ = self.store.release_delivery(&d.id).await;
        }
        tracing::debug!(webhook = %name, "dispatcher loop stopped");
    }

    /// Sends the format's handshake (Slack's `url_verification`) once, and says in the
    /// log how the endpoint answered. Deliveries go on whatever the answer.
    async fn handshake(self: Arc<Self>, target: Arc<Target>, rendered: super::format::Rendered) {
        let hook = &target.settings;
        let mut request = self.client.post(target.url.clone()).timeout(hook.timeout);
        for (name, value) in rendered.headers {
            request = request.header(name, value);
        }
        let challenge = serde_json::from_str::<serde_json::Value>(&rendered.body)
            .ok()
            .and_then(|b| b["challenge"].as_str().map(str::to_string))
            .unwrap_or_default();
        match request.body(rendered.body).send().await {
            Ok(response) => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                if status.is_success() && body.contains(&challenge) {
                    tracing::info!(webhook = %hook.name, "the app answered url_verification");
                } else {
                    tracing::warn!(webhook = %hook.name, status = status.as_u16(), "the app did not answer url_verification with its challenge (is the signing secret the app's?); deliveries go on");
                }
            }
            Err(e) => {
                tracing::warn!(webhook = %hook.name, error = %describe(&e), "url_verification: the app cannot be reached yet; deliveries go on and are retried until it answers")
            }
        }
    }

    async fn deliver(
        self: Arc<Self>,
        target: Arc<Target>,
        delivery: DueDelivery,
        permit: OwnedSemaphorePermit,
        shutdown: CancellationToken,
    ) {
        let hook = &target.settings;
        let rendered = target
            .format
            .render(&Attempt {
                event: &delivery.event,
                now: time::OffsetDateTime::now_utc().unix_timestamp(),
                previous: delivery.attempts,
            })
            .await;
        let at = now_millis();
        let started = Instant::now();
        let rendered = match rendered {
            Ok(Some(rendered)) => rendered,
            Ok(None) => {
                drop(permit);
                target.lane.notify.notify_one();
                let attempt = AttemptRecord {
                    at,
                    status_code: None,
                    error: Some(format!(
                        "nothing to send: the {} format has no shape for this event",
                        hook.format.as_str()
                    )),
                    duration_ms: 0,
                    response: None,
                };
                return self
                    .record(
                        &target,
                        delivery,
                        attempt,
                        Outcome::Delivered,
                        Vec::new(),
                        &shutdown,
                    )
                    .await;
            }
            Err(why) => {
                drop(permit);
                target.lane.notify.notify_one();
                let failures = delivery.attempts + 1;
                let attempt = AttemptRecord {
                    at,
                    status_code: None,
                    error: Some(why),
                    duration_ms: 0,
                    response: None,
                };
                let outcome = self.schedule(hook, failures, None);
                return self
                    .record(&target, delivery, attempt, outcome, Vec::new(), &shutdown)
                    .await;
            }
        };
        let mut request = self.client.post(target.url.clone());
        for (name, value) in rendered.headers {
            request = request.header(name, value);
        }
        let request = request.body(rendered.body);
        let answer = tokio::time::timeout(hook.timeout, async {
            let mut response = request.send().await?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let mut bytes = Vec::new();
            while let Some(chunk) = response.chunk().await? {
                let room = RESPONSE_CAP.saturating_sub(bytes.len());
                bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if room <= chunk.len() {
                    break;
                }
            }
            Ok::<_, reqwest::Error>((status, retry_after, bytes))
        })
        .await;
        let duration_ms = started.elapsed().as_millis() as i64;
        // The slot is for the HTTP exchange; recording it waits for a group commit,
        // and the next request need not wait for that.
        drop(permit);
        target.lane.notify.notify_one();

        let failures = delivery.attempts + 1;
        let mut attempt = AttemptRecord {
            at,
            status_code: None,
            error: None,
            duration_ms,
            response: None,
        };
        let mut replies = Vec::new();
        let outcome = match answer {
            Ok(Ok((status, retry_after, bytes))) => {
                attempt.status_code = Some(status.as_u16());
                let prefix = &bytes[..bytes.len().min(RESPONSE_PREFIX)];
                attempt.response = Some(String::from_utf8_lossy(prefix).into_owned());
                if status.is_success() {
                    let contents = target.format.replies(&delivery.event, &bytes).await;
                    match contents.and_then(|contents| {
                        crate::send::reply_sends(
                            &delivery.event,
                            &delivery.webhook,
                            contents,
                            self.allow_private_urls,
                        )
                    }) {
                        Ok(sends) => replies = sends,
                        Err(why) => {
                            tracing::warn!(webhook = %hook.name, event_id = %delivery.event.id, reason = %why, "ignoring the reply in the webhook response");
                            attempt.error = Some(format!("reply ignored: {why}"));
                        }
                    }
                    Outcome::Delivered
                } else if target.format.delivered_anyway(status.as_u16(), &bytes) {
                    Outcome::Delivered
                } else if status == reqwest::StatusCode::GONE {
                    Outcome::Disabled {
                        reason: "the endpoint answered 410 Gone",
                    }
                } else {
                    let honoured = matches!(status.as_u16(), 429 | 503)
                        .then_some(retry_after)
                        .flatten();
                    self.schedule(hook, failures, honoured)
                }
            }
            Ok(Err(e)) => {
                attempt.error = Some(describe(&e));
                self.schedule(hook, failures, None)
            }
            Err(_) => {
                attempt.error = Some(format!(
                    "timed out after {}",
                    humantime::format_duration(hook.timeout)
                ));
                self.schedule(hook, failures, None)
            }
        };
        self.record(&target, delivery, attempt, outcome, replies, &shutdown)
            .await;
    }

    /// Logs, counts and records one attempt's outcome, and wakes whoever it concerns.
    async fn record(
        &self,
        target: &Arc<Target>,
        delivery: DueDelivery,
        attempt: AttemptRecord,
        outcome: Outcome,
        replies: Vec<crate::store::NewSend>,
        shutdown: &CancellationToken,
    ) {
        let hook = &target.settings;
        let failures = delivery.attempts + 1;
        self.log_outcome(hook, &delivery, &attempt, outcome, failures);
        if outcome == Outcome::Delivered {
            target.summary.delivered(&hook.name);
        }
        target.meters.record(outcome, attempt.duration_ms);
        if let Outcome::Disabled { .. } = outcome {
            target.lane.direct.store(false, AtomicOrdering::Relaxed);
            target.disabled.store(true, AtomicOrdering::Relaxed);
        }
        self.track_failure(target, outcome).await;
        let queued_replies = !replies.is_empty();
        let account = delivery.event.account.clone();
        let finished = FinishedAttempt {
            delivery_id: delivery.id,
            webhook: delivery.webhook,
            attempts_before: delivery.attempts,
            attempt,
            outcome,
            replies,
            prompt: hook.ordering == Ordering::Conversation,
        };
        // Until it is recorded the delivery stays claimed; once the store recovers the
        // record goes in, without a restart. Stopped first, it stays claimed in the
        // store and goes out again after the next start (same webhook-id).
        if let Some(Err(e)) = crate::store::until_stored(
            "an attempt at a delivery",
            &finished.delivery_id,
            shutdown,
            || self.store.finish_attempt(&finished),
        )
        .await
        {
            tracing::error!(webhook = %hook.name, delivery_id = %finished.delivery_id, error = %e, "cannot record an attempt");
        }
        if queued_replies {
            self.outbox.sends_queued(&account);
        }
        // A recorded attempt changes what is due only when it scheduled a retry, or when
        // it lets the next delivery of the same conversation go.
        if outcome != Outcome::Delivered || hook.ordering == Ordering::Conversation {
            target.lane.wake_stored();
        }
    }

    /// Svix's rule: when deliveries keep dying for `disable_after` with no success in
    /// between, the webhook is disabled; a success clears the record.
    async fn track_failure(&self, target: &Target, outcome: Outcome) {
        let hook = &target.settings;
        let now = now_millis();
        let (persist, disable) = {
            let mut since = target
                .failing_since
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match (outcome, *since) {
                (Outcome::Delivered, Some(_)) => {
                    *since = None;
                    (Some(None), false)
                }
                (Outcome::Dead, None) => {
                    *since = Some(now);
                    (Some(Some(now)), false)
                }
                (Outcome::Dead, Some(first)) => {
                    let limit = hook.disable_after.as_millis() as i64;
                    (None, limit > 0 && now - first >= limit)
                }
                _ => (None, false),
            }
        };
        if let Some(since) = persist
            && let Err(e) = self
                .store
                .set_webhook_failing_since(&hook.name, since)
                .await
        {
            tracing::error!(webhook = %hook.name, error = %e, "cannot record the webhook's failure state");
        }
        if disable && !target.is_disabled() {
            target.lane.direct.store(false, AtomicOrdering::Relaxed);
            target.disabled.store(true, AtomicOrdering::Relaxed);
            let reason = format!(
                "deliveries kept dying for {} with no success",
                humantime::format_duration(hook.disable_after)
            );
            tracing::error!(webhook = %hook.name, %reason, "webhook disabled; re-enable it with POST /v1/webhooks/{}/enable", hook.name);
            if let Err(e) = self
                .store
                .set_webhook_disabled(&hook.name, Some(reason), now)
                .await
            {
                tracing::error!(webhook = %hook.name, error = %e, "cannot record the webhook as disabled");
            }
        }
    }

    fn schedule(
        &self,
        hook: &WebhookSettings,
        failures: u32,
        retry_after: Option<Duration>,
    ) -> Outcome {
        match next_delay(&hook.retry, failures, retry_after, &mut rand::rng()) {
            Some(delay) => Outcome::Retry {
                at: now_millis() + delay.as_millis() as i64,
            },
            None => Outcome::Dead,
        }
    }

    fn log_outcome(
        &self,
        hook: &WebhookSettings,
        d: &DueDelivery,
        attempt: &AttemptRecord,
        outcome: Outcome,
        failures: u32,
    ) {
        let reason = || {
            attempt
                .error
                .clone()
                .or_else(|| attempt.status_code.map(|c| format!("HTTP {c}")))
                .unwrap_or_default()
        };
        match outcome {
            Outcome::Delivered => {
                tracing::debug!(
                    webhook = %hook.name, delivery_id = %d.id, event_id = %d.event.id,
                    status = attempt.status_code, ms = attempt.duration_ms, "delivered"
                );
            }
            Outcome::Retry { at } => tracing::warn!(
                webhook = %hook.name, delivery_id = %d.id, event_id = %d.event.id, attempt = failures,
                reason = %reason(), retry_in_ms = at - now_millis(), "delivery failed; retry scheduled"
            ),
            Outcome::Dead => tracing::error!(
                webhook = %hook.name, delivery_id = %d.id, event_id = %d.event.id, attempts = failures,
                reason = %reason(), "delivery is dead: retries exhausted (retry it with POST /v1/deliveries/{}/retry)", d.id
            ),
            Outcome::Disabled { reason } => tracing::error!(
                webhook = %hook.name, delivery_id = %d.id, reason, "webhook disabled; its deliveries wait"
            ),
        }
    }
}

fn build_targets(
    webhooks: &[WebhookSettings],
    stats: &HashMap<String, WebhookStats>,
    lanes: &Lanes,
    onebot: &crate::onebot::Context,
) -> Vec<Arc<Target>> {
    webhooks
        .iter()
        .filter_map(|w| {
            let url = match reqwest::Url::parse(&w.url) {
                Ok(url) => url,
                Err(e) => {
                    // Unreachable: the configuration is validated before it is used.
                    tracing::error!(webhook = %w.name, error = %e, "not a URL; webhook skipped");
                    return None;
                }
            };
            let state = stats.get(&w.name).cloned().unwrap_or_default();
            let disabled = state.disabled_reason.is_some();
            Some(Arc::new(Target {
                url,
                format: super::format::for_webhook(w, onebot),
                summary: DeliverySummary::default(),
                meters: Meters::new(&w.name),
                failing_since: Mutex::new(state.failing_since),
                lane: lanes.register(&w.name, w.ordering == Ordering::None && !disabled),
                slots: Arc::new(Semaphore::new(w.max_in_flight)),
                disabled: AtomicBool::new(disabled),
                stop: CancellationToken::new(),
                settings: w.clone(),
            }))
        })
        .collect()
}

/// A transport error in a few words, with its cause (connection refused, DNS…).
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_connect() {
        "connection failed".to_string()
    } else if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_body() || e.is_decode() {
        "response body error".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    let mut last = None;
    while let Some(s) = source {
        last = Some(s.to_string());
        source = s.source();
    }
    if let Some(cause) = last {
        text.push_str(": ");
        text.push_str(&cause);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::lanes::HANDOFF_CAP;
    use crate::store::StoredEvent;

    fn delivery(n: usize) -> DueDelivery {
        DueDelivery {
            id: format!("dlv_{n}"),
            webhook: "hook".into(),
            attempts: 0,
            event: StoredEvent {
                id: format!("evt_{n}"),
                event_type: "message".into(),
                seq: n as i64,
                created_at: 0,
                account: "default".into(),
                bot_json: "{}".into(),
                data_json: "{}".into(),
            },
        }
    }

    /// A webhook slower than ingest: its loop takes only what it can start soon, the
    /// rest stays in the lane, and once the lane is full new deliveries go through the
    /// store: what waits in memory stays under `HANDOFF_CAP` + the prefetch.
    #[test]
    fn deliveries_waiting_in_memory_are_bounded() {
        let lanes = Lanes::default();
        let lane = lanes.register("hook", true);
        let prefetch = PREFETCH_MIN;
        // The loop's queue of deliveries waiting for a slot; no slot ever frees here.
        let mut ready: Vec<DueDelivery> = Vec::new();
        let mut handed = 0;
        for n in 0..4 * HANDOFF_CAP {
            if lanes.can_hand_off("hook") {
                lanes.hand_off(delivery(n));
                handed += 1;
            }
            ready.extend(lane.take(prefetch.saturating_sub(ready.len())));
        }
        assert_eq!(ready.len(), prefetch);
        assert_eq!(ready[0].id, "dlv_0", "oldest first");
        assert_eq!(handed, HANDOFF_CAP + prefetch);
        assert!(!lanes.can_hand_off("hook"));

        let rest = lane.take(usize::MAX);
        assert_eq!(rest.len(), HANDOFF_CAP);
        assert_eq!(rest[0].id, format!("dlv_{prefetch}"));
        assert!(lanes.can_hand_off("hook"));
        assert!(!lanes.can_hand_off("other"), "unknown webhooks get nothing");
    }

    /// Only a wake-up that says the store may hold due work makes the loop claim: a
    /// hand-off or a freed slot wakes it too, and costs no write.
    #[tokio::test]
    async fn only_stored_work_makes_the_loop_claim() {
        let lanes = Lanes::default();
        let lane = lanes.register("hook", true);
        lanes.hand_off(delivery(1));
        lane.notify.notified().await;
        assert!(!lane.take_stored(), "a hand-off is taken from memory");
        lanes.wake(&["hook".to_string()]);
        lane.notify.notified().await;
        assert!(lane.take_stored(), "stored work is claimed");
        assert!(!lane.take_stored(), "once");
        lanes.wake_all();
        lane.notify.notify_one();
        lane.notify.notified().await;
        assert!(
            lane.take_stored(),
            "a freed slot after a wake-up keeps the claim due"
        );
    }
}
