//! The sender: drains the send queue through the puppet. Sends into one conversation
//! go in order, one at a time, paced (WeChat punishes bursts): `burst` at once, then one
//! per `min_interval`. Pacing delays, it never drops. While the session is not logged
//! in nothing is attempted; queued sends go out after login.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::action::Queued;
use crate::config::SendSettings;
use crate::event::{EventData, SendReceipt, now_millis};
use crate::ingest::Ingest;
use crate::outbox::Outbox;
use crate::puppet::{Puppet, PuppetError, SessionHandle, SessionState};
use crate::store::{Claimant, QueuedSend, SendOutcome, Store};

/// Sends attempted at once (across conversations).
const CONCURRENCY: usize = 8;
/// Attempts before a send that keeps failing is given up.
const MAX_ATTEMPTS: u32 = 10;

/// A token bucket per conversation.
pub struct Pacer {
    interval: Duration,
    burst: f64,
    buckets: HashMap<String, (f64, Instant)>,
}

impl Pacer {
    pub fn new(settings: &SendSettings) -> Pacer {
        Pacer {
            interval: settings.min_interval,
            burst: f64::from(settings.burst),
            buckets: HashMap::new(),
        }
    }

    /// Takes a token for `key`, or says how long until one is there.
    pub fn take(&mut self, key: &str, now: Instant) -> Result<(), Duration> {
        if self.interval.is_zero() {
            return Ok(());
        }
        if self.buckets.len() > 10_000 {
            let full_after = self.interval.mul_f64(self.burst);
            self.buckets
                .retain(|_, (_, at)| now.duration_since(*at) < full_after);
        }
        let per_sec = 1.0 / self.interval.as_secs_f64();
        let (tokens, last) = self
            .buckets
            .entry(key.to_string())
            .or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * per_sec).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / per_sec))
        }
    }
}

pub struct Sender {
    /// The account whose queued sends this sender takes.
    account: String,
    store: Arc<dyn Store>,
    /// Where outcomes and their receipts are recorded.
    outbox: Arc<Outbox>,
    /// Routes the receipts as the account's events.
    ingest: Arc<Ingest>,
    /// Who this sender claims sends as.
    claimant: Claimant,
    puppet: Arc<dyn Puppet>,
    session: SessionHandle,
    notify: Arc<Notify>,
    pacer: Mutex<Pacer>,
    slots: Arc<Semaphore>,
    /// Counts finished sends, so callers can wait for an outcome.
    finished: watch::Sender<u64>,
}

impl Sender {
    pub fn new(
        account: &str,
        outbox: Arc<Outbox>,
        ingest: Arc<Ingest>,
        puppet: Arc<dyn Puppet>,
        session: SessionHandle,
        notify: Arc<Notify>,
        settings: &SendSettings,
    ) -> Sender {
        Sender {
            account: account.to_string(),
            store: outbox.store().clone(),
            claimant: outbox.claimant().clone(),
            outbox,
            ingest,
            puppet,
            session,
            notify,
            pacer: Mutex::new(Pacer::new(settings)),
            slots: Arc::new(Semaphore::new(CONCURRENCY)),
            finished: watch::Sender::new(0),
        }
    }

    /// Wakes the sender (a send was queued).
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// Changes whenever a send finishes.
    pub fn finished(&self) -> watch::Receiver<u64> {
        self.finished.subscribe()
    }

    pub async fn run(self: Arc<Self>, tracker: TaskTracker, shutdown: CancellationToken) {
        let mut session = self.session.subscribe();
        loop {
            if session.borrow_and_update().state != SessionState::LoggedIn {
                tokio::select! {
                    changed = session.changed() => if changed.is_err() { break },
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
            let mut next_due = None;
            let free = self.slots.available_permits();
            // A send whose outcome cannot be recorded might be sent again: take none
            // while the store cannot write (it is probed every second).
            if let Some(why) = self.store.write_failure() {
                tracing::debug!(reason = %why, "the store cannot write; no new sends are taken");
                next_due = Some(now_millis() + 1000);
            } else if free > 0 {
                let now = now_millis();
                match self
                    .store
                    .claim_sends(
                        &self.claimant.with_epoch(self.ingest.epoch()),
                        &self.account,
                        free,
                        now,
                    )
                    .await
                {
                    Ok(claim) => {
                        next_due = claim.next_due;
                        for send in claim.items {
                            next_due = self.start(send, &tracker, next_due, &shutdown).await;
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot claim sends; trying again in 1s");
                        next_due = Some(now + 1000);
                    }
                }
            }
            let sleep = async {
                match next_due {
                    Some(at) => {
                        let ms = (at - now_millis()).max(0) as u64;
                        tokio::time::sleep(Duration::from_millis(ms)).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.notify.notified() => {}
                _ = sleep => {}
                changed = session.changed() => if changed.is_err() { break },
                _ = shutdown.cancelled() => break,
            }
        }
    }

    /// Starts one send, or defers it when its conversation is paced. Returns the
    /// earliest time the loop must look again.
    async fn start(
        self: &Arc<Self>,
        send: QueuedSend,
        tracker: &TaskTracker,
        next_due: Option<i64>,
        shutdown: &CancellationToken,
    ) -> Option<i64> {
        let paced = self
            .pacer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(&send.conversation, Instant::now());
        if let Err(wait) = paced {
            let at = now_millis() + wait.as_millis() as i64 + 1;
            tracing::debug!(send_id = %send.id, conversation = %send.conversation, wait_ms = wait.as_millis() as u64, "send paced");
            if let Err(e) = self.store.defer_send(&send, at).await {
                tracing::error!(send_id = %send.id, error = %e, "cannot defer a paced send");
            }
            return Some(next_due.map_or(at, |n| n.min(at)));
        }
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => {
                tracker.spawn(self.clone().attempt(send, permit, shutdown.clone()));
            }
            Err(_) => {
                if let Err(e) = self.store.release_send(&send.id).await {
                    tracing::error!(send_id = %send.id, error = %e, "cannot release a send");
                }
            }
        }
        next_due
    }

    async fn attempt(
        self: Arc<Self>,
        send: QueuedSend,
        _permit: OwnedSemaphorePermit,
        shutdown: CancellationToken,
    ) {
        let queued = serde_json::from_str::<Queued>(&send.request_json);
        let result = match &queued {
            Ok(Queued::Message(request)) => match self.puppet.resolve(&request.to).await {
                Ok(conversation) => self.puppet.send(&conversation, &request.content).await,
                Err(e) => Err(e),
            },
            // An operation's result (a created room's id) is kept where a message's id is.
            Ok(Queued::Action { action }) => self
                .puppet
                .perform(action)
                .await
                .map(Option::unwrap_or_default),
            Err(e) => Err(PuppetError::NotFound(format!(
                "unreadable queued request: {e}"
            ))),
        };
        let request = match &queued {
            Ok(Queued::Message(request)) => Some(request),
            _ => None,
        };
        let now = now_millis();
        let attempts = send.attempts + 1;
        let outcome = match result {
            Ok(message_id) => {
                match request {
                    Some(_) => {
                        tracing::info!(send_id = %send.id, conversation = %send.conversation, message_id = %message_id, "message sent")
                    }
                    None => {
                        tracing::info!(operation_id = %send.id, target = %send.conversation, result = %message_id, "operation done")
                    }
                }
                SendOutcome::Sent { message_id }
            }
            Err(PuppetError::NotFound(error) | PuppetError::NotSupported(error)) => {
                tracing::warn!(send_id = %send.id, error = %error, "send failed: recipient or content not found");
                SendOutcome::Failed { error }
            }
            // Offline only delays: the loop waits for the login before trying again.
            Err(PuppetError::Offline) => SendOutcome::Retry {
                at: now,
                error: PuppetError::Offline.to_string(),
            },
            Err(PuppetError::Failed(error)) if attempts >= MAX_ATTEMPTS => {
                tracing::error!(send_id = %send.id, attempts, error = %error, "send failed for good");
                SendOutcome::Failed { error }
            }
            Err(PuppetError::Failed(error)) => {
                let backoff = Duration::from_secs((1u64 << attempts.min(8)).min(300));
                tracing::warn!(send_id = %send.id, attempts, error = %error, retry_in = ?backoff, "send failed; retry scheduled");
                SendOutcome::Retry {
                    at: now + backoff.as_millis() as i64,
                    error,
                }
            }
        };
        let label = match &outcome {
            SendOutcome::Sent { .. } => "sent",
            SendOutcome::Retry { .. } => "retry",
            SendOutcome::Failed { .. } => "failed",
        };
        metrics::counter!("waas_sends_total", "account" => self.account.clone(), "outcome" => label)
            .increment(1);
        // A message's final outcome has its receipt (`message.sent`, `message.failed`),
        // committed with it; operations have their own events, from the puppet.
        let receipt = match (&outcome, request) {
            (SendOutcome::Sent { message_id }, Some(request)) => {
                Some(EventData::MessageSent(SendReceipt {
                    id: send.id.clone(),
                    to: request.to.clone(),
                    message_id: Some(message_id.clone()).filter(|m| !m.is_empty()),
                    error: None,
                }))
            }
            (SendOutcome::Failed { error }, Some(request)) => {
                Some(EventData::MessageFailed(SendReceipt {
                    id: send.id.clone(),
                    to: request.to.clone(),
                    message_id: None,
                    error: Some(error.clone()),
                }))
            }
            _ => None,
        }
        .map(|data| self.ingest.prepare(&data));
        // The send stays claimed until its outcome is recorded, however long the store
        // takes to recover: releasing it would send it again.
        match crate::store::until_stored("the outcome of a send", &send.id, &shutdown, || {
            self.outbox
                .finish_send(&send, outcome.clone(), now, receipt.clone())
        })
        .await
        {
            Some(Ok(())) => {
                // Its outcome is stored: an upload's file is needed no more.
                if !matches!(outcome, SendOutcome::Retry { .. })
                    && let Some(request) = request
                {
                    request.content.discard_upload();
                }
            }
            Some(Err(e)) => {
                tracing::error!(send_id = %send.id, error = %e, "cannot record a send outcome")
            }
            None if matches!(outcome, SendOutcome::Sent { .. }) => tracing::error!(
                send_id = %send.id,
                "stopped before the store recorded this send as sent: it is still queued there and will go out again after the restart"
            ),
            None => {}
        }
        self.finished.send_modify(|n| *n += 1);
        self.notify.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_allows_a_burst_then_one_per_interval() {
        let mut pacer = Pacer::new(&SendSettings {
            min_interval: Duration::from_secs(1),
            burst: 2,
            allow_private_urls: false,
        });
        let t0 = Instant::now();
        assert!(pacer.take("a", t0).is_ok());
        assert!(pacer.take("a", t0).is_ok());
        let wait = pacer.take("a", t0).unwrap_err();
        assert!(wait > Duration::from_millis(990) && wait <= Duration::from_secs(1));
        assert!(pacer.take("b", t0).is_ok(), "conversations are paced apart");
        assert!(pacer.take("a", t0 + Duration::from_millis(1001)).is_ok());
    }

    #[test]
    fn zero_interval_turns_pacing_off() {
        let mut pacer = Pacer::new(&SendSettings {
            min_interval: Duration::ZERO,
            burst: 1,
            allow_private_urls: false,
        });
        let t0 = Instant::now();
        for _ in 0..100 {
            assert!(pacer.take("a", t0).is_ok());
        }
    }
}
