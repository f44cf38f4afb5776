//! The outbox: the one place where work is written and whoever must act on it is woken.
//!
//! Ingest records events here (with a delivery per webhook that takes them), handlers
//! queue sends and re-queue deliveries here, the dispatcher reports the replies it
//! queued here. Each call commits to the store first, and only then wakes the worker:
//! a webhook's dispatcher loop (handing new deliveries over in memory when it can, see
//! [`Lanes`]), an account's sender, or the streams and long polls waiting on the feed.
//! Nobody else reaches into the dispatcher's hand-off or a sender's wake-up.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::relay::lanes::Lanes;
use crate::store::{
    Appended, Claimant, DueDelivery, Enqueued, NewDelivery, NewEvent, NewSend, QueuedSend, Receipt,
    RequeueChunk, Requeued, Result, SendOutcome, SendStatus, Store, StoreError, StoredEvent,
};

/// How long a claim on a delivery or a send lasts before another instance may take the
/// work over: far longer than any one attempt (webhook timeouts and puppet calls are
/// bounded well below it).
pub const CLAIM_LEASE: Duration = Duration::from_secs(600);

/// A webhook an event is recorded for.
#[derive(Debug, Clone)]
pub struct Destination {
    pub webhook: String,
    /// The webhook keeps conversation order: the delivery carries its conversation.
    pub ordered: bool,
}

/// An event on its way into the store, with its deliveries.
struct Recording {
    event: NewEvent,
    deliveries: Vec<NewDelivery>,
}

pub struct Outbox {
    store: Arc<dyn Store>,
    /// Every webhook's dispatcher loop.
    lanes: Arc<Lanes>,
    /// Every account's sender.
    senders: HashMap<String, Arc<Notify>>,
    /// This instance, as the owner of what it claims.
    claimant: Claimant,
    /// The newest stored seq, across accounts (the feed and long polls watch it).
    last_seq: watch::Sender<i64>,
    /// `waas_events_stored_total` by account and type, looked up once each.
    stored_total: std::sync::RwLock<HashMap<(String, &'static str), metrics::Counter>>,
    /// `waas_store_append_seconds`, looked up at the first append (after the recorder
    /// is installed).
    append_seconds: std::sync::OnceLock<metrics::Histogram>,
}

impl Outbox {
    pub fn new(
        store: Arc<dyn Store>,
        lanes: Arc<Lanes>,
        senders: HashMap<String, Arc<Notify>>,
        claimant: Claimant,
    ) -> Outbox {
        Outbox {
            store,
            lanes,
            senders,
            claimant,
            last_seq: watch::Sender::new(0),
            stored_total: Default::default(),
            append_seconds: std::sync::OnceLock::new(),
        }
    }

    /// The store the outbox writes to.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Who this instance claims work as.
    pub fn claimant(&self) -> &Claimant {
        &self.claimant
    }

    /// Changes whenever an event is stored.
    pub fn last_seq(&self) -> watch::Receiver<i64> {
        self.last_seq.subscribe()
    }

    /// Commits an event with one delivery per recipient, then hands the deliveries to
    /// their dispatcher loops: in memory, already claimed, where the loop takes them so
    /// (the hot path never reads back what it just wrote), through the store otherwise.
    /// A duplicate (same dedup key) stores and wakes nothing.
    pub async fn record_event(
        &self,
        event: NewEvent,
        recipients: Vec<Destination>,
    ) -> Result<Appended> {
        let mut appended = self.record_events(vec![(event, recipients)]).await;
        appended.pop().unwrap_or(Err(StoreError::Closed))
    }

    /// Several events, in this order, as [`Outbox::record_event`] records each: the
    /// store commits them together when it can (a burst from the puppet's stream).
    pub async fn record_events(
        &self,
        events: Vec<(NewEvent, Vec<Destination>)>,
    ) -> Vec<Result<Appended>> {
        // Everything screened out (the bot's own messages, stale ones): no append to
        // wait for, and none to time.
        if events.is_empty() {
            return Vec::new();
        }
        let recorded: Vec<Recording> = events
            .into_iter()
            .map(|(event, recipients)| self.to_record(event, recipients))
            .collect();
        let batch = recorded
            .iter()
            .map(|r| (r.event.clone(), r.deliveries.clone()))
            .collect();
        let started = std::time::Instant::now();
        let results = self.store.append_events(batch, &self.claimant).await;
        self.append_seconds
            .get_or_init(|| metrics::histogram!(crate::metrics::STORE_APPEND_SECONDS))
            .record(started.elapsed());
        results
            .into_iter()
            .zip(recorded)
            .map(|(result, recorded)| {
                let appended = result?;
                self.recorded(&appended, recorded);
                Ok(appended)
            })
            .collect()
    }

    /// An event's deliveries, each handed over in memory if its webhook's loop can
    /// take it.
    fn to_record(&self, event: NewEvent, recipients: Vec<Destination>) -> Recording {
        let deliveries: Vec<NewDelivery> = recipients
            .into_iter()
            .map(|r| NewDelivery {
                id: format!("dlv_{}", ulid::Ulid::new()),
                claimed: self.lanes.can_hand_off(&r.webhook),
                conversation: if r.ordered {
                    event.conversation.clone()
                } else {
                    None
                },
                webhook: r.webhook,
            })
            .collect();
        Recording { event, deliveries }
    }

    /// After the commit: hands the claimed deliveries over, wakes the other webhooks
    /// and the feed. A duplicate wakes nothing.
    fn recorded(&self, appended: &Appended, recorded: Recording) {
        if appended.duplicate {
            return;
        }
        let Recording { event, deliveries } = recorded;
        tracing::debug!(event_id = %appended.id, seq = appended.seq, r#type = event.event_type, webhooks = deliveries.len(), "event stored");
        let mut to_wake = Vec::new();
        // What the dispatcher needs to send the deliveries handed over in memory.
        let stored = StoredEvent {
            id: event.id,
            event_type: event.event_type.to_string(),
            seq: appended.seq,
            created_at: event.created_at,
            account: event.account.clone(),
            bot_json: event.bot_json,
            data_json: event.data_json,
        };
        for d in deliveries {
            if d.claimed {
                self.lanes.hand_off(DueDelivery {
                    id: d.id,
                    webhook: d.webhook,
                    attempts: 0,
                    event: stored.clone(),
                });
            } else {
                to_wake.push(d.webhook);
            }
        }
        self.lanes.wake(&to_wake);
        self.count_stored(event.account, event.event_type);
        self.stored(appended.seq);
    }

    fn count_stored(&self, account: String, event_type: &'static str) {
        let key = (account, event_type);
        if let Some(counter) = self
            .stored_total
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return counter.increment(1);
        }
        let counter = metrics::counter!("waas_events_stored_total", "account" => key.0.clone(), "type" => event_type);
        counter.increment(1);
        self.stored_total
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, counter);
    }

    /// Tells the feed and long polls that events up to `seq` are stored (also by
    /// another instance sharing the store).
    pub fn stored(&self, seq: i64) {
        self.last_seq.send_if_modified(|s| {
            let newer = seq > *s;
            if newer {
                *s = seq;
            }
            newer
        });
    }

    /// Commits a send, then wakes its account's sender. Also on an idempotent replay
    /// that is still queued: the first request may have committed after its caller
    /// gave up (a timeout), before anyone woke the sender.
    pub async fn queue_send(&self, send: NewSend) -> Result<Enqueued> {
        let account = send.account.clone();
        let enqueued = self.store.enqueue_send(send).await?;
        if !enqueued.replayed {
            tracing::info!(send_id = %enqueued.send.id, account = %account, "message queued");
        }
        if enqueued.send.status == SendStatus::Queued {
            self.sends_queued(&account);
        }
        Ok(enqueued)
    }

    /// Records a send's outcome, with its receipt event (if any) for the webhooks that
    /// take it, in one transaction; then wakes those webhooks and the feed.
    pub async fn finish_send(
        &self,
        send: &QueuedSend,
        outcome: SendOutcome,
        now: i64,
        receipt: Option<(NewEvent, Vec<Destination>)>,
    ) -> Result<()> {
        let (receipt, webhooks) = match receipt {
            Some((event, destinations)) => {
                let webhooks: Vec<String> =
                    destinations.iter().map(|d| d.webhook.clone()).collect();
                let deliveries = destinations
                    .into_iter()
                    .map(|d| NewDelivery {
                        id: format!("dlv_{}", ulid::Ulid::new()),
                        claimed: false,
                        conversation: if d.ordered {
                            event.conversation.clone()
                        } else {
                            None
                        },
                        webhook: d.webhook,
                    })
                    .collect();
                (Some(Receipt { event, deliveries }), webhooks)
            }
            None => (None, Vec::new()),
        };
        let appended = self.store.finish_send(send, outcome, now, receipt).await?;
        if let Some(appended) = appended.filter(|a| !a.duplicate) {
            self.lanes.wake(&webhooks);
            self.stored(appended.seq);
        }
        Ok(())
    }

    /// Wakes `account`'s sender: sends were committed for it elsewhere (the replies a
    /// finished attempt queued in its own transaction).
    pub fn sends_queued(&self, account: &str) {
        if let Some(wake) = self.senders.get(account) {
            wake.notify_one();
        }
    }

    /// Re-queues one delivery now and wakes its webhook; `None` when there is no such
    /// delivery, otherwise its webhook.
    pub async fn retry_delivery(&self, id: &str, now: i64) -> Result<Option<String>> {
        let webhook = self.store.retry_delivery(id, now).await?;
        if let Some(webhook) = &webhook {
            self.lanes.wake(std::slice::from_ref(webhook));
        }
        Ok(webhook)
    }

    /// Re-queues one chunk of a replay and wakes its webhook if anything was queued.
    pub async fn requeue(&self, chunk: RequeueChunk) -> Result<Requeued> {
        let webhook = chunk.webhook.clone();
        let done = self.store.requeue(chunk).await?;
        if done.requeued > 0 {
            self.lanes.wake(std::slice::from_ref(&webhook));
        }
        Ok(done)
    }
}
