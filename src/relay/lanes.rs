//! The hand-off between the outbox and each webhook's dispatcher loop: new deliveries,
//! created already claimed, passed over in memory.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::Notify;

use crate::store::DueDelivery;

/// Most deliveries waiting in one lane before new ones go through the store instead.
pub(crate) const HANDOFF_CAP: usize = 4096;

/// The path from ingest to one webhook's dispatcher loop. A new delivery is created
/// already claimed and handed over here in memory, so the hot path never reads back
/// what it just wrote; retries, recovery after a restart, and webhooks with
/// conversation ordering go through [`crate::store::DeliveryQueue::claim_due`] instead.
pub struct Lane {
    pub(crate) notify: Notify,
    queue: Mutex<VecDeque<DueDelivery>>,
    /// Whether new deliveries may be handed over in memory (not for conversation
    /// ordering, which needs the store's view of each chat, nor while disabled).
    pub(crate) direct: AtomicBool,
    /// Set when the store may hold due work for this webhook (deliveries stored
    /// unclaimed, or rescheduled): the next wake-up claims. A wake-up without it (a
    /// hand-off, a freed slot) only hands out what the loop holds, and costs no write.
    pub(crate) stored: AtomicBool,
}

impl Lane {
    /// Wakes the loop to claim from the store.
    pub(crate) fn wake_stored(&self) {
        self.stored.store(true, AtomicOrdering::Release);
        self.notify.notify_one();
    }

    /// Whether the store may hold due work since the last call.
    pub(crate) fn take_stored(&self) -> bool {
        self.stored.swap(false, AtomicOrdering::AcqRel)
    }

    /// Takes up to `n` deliveries, oldest first. What is left stays here and counts
    /// against [`HANDOFF_CAP`], so a webhook slower than ingest makes new deliveries go
    /// through the store instead of piling up in memory.
    pub(crate) fn take(&self, n: usize) -> Vec<DueDelivery> {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let n = n.min(queue.len());
        queue.drain(..n).collect()
    }

    pub(crate) fn take_all(&self) -> VecDeque<DueDelivery> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Every webhook's [`Lane`], by name.
#[derive(Default)]
pub struct Lanes(RwLock<HashMap<String, Arc<Lane>>>);

impl Lanes {
    /// Wakes the loops of these webhooks (new work in the store).
    pub fn wake(&self, webhooks: &[String]) {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        for name in webhooks {
            if let Some(lane) = map.get(name) {
                lane.wake_stored();
            }
        }
    }

    /// Wakes every webhook's loop (work was freed in the store).
    pub fn wake_all(&self) {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        for lane in map.values() {
            lane.wake_stored();
        }
    }

    /// Whether a new delivery to `webhook` can be handed over in memory now.
    pub fn can_hand_off(&self, webhook: &str) -> bool {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        map.get(webhook).is_some_and(|lane| {
            lane.direct.load(AtomicOrdering::Relaxed)
                && lane.queue.lock().unwrap_or_else(|e| e.into_inner()).len() < HANDOFF_CAP
        })
    }

    /// Gives a delivery stored as claimed to its webhook's loop.
    pub fn hand_off(&self, delivery: DueDelivery) {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        if let Some(lane) = map.get(&delivery.webhook) {
            lane.queue
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back(delivery);
            lane.notify.notify_one();
        }
    }

    pub(crate) fn register(&self, name: &str, direct: bool) -> Arc<Lane> {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        let lane = map
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(Lane {
                    notify: Notify::new(),
                    queue: Mutex::new(VecDeque::new()),
                    direct: AtomicBool::new(direct),
                    stored: AtomicBool::new(false),
                })
            })
            .clone();
        lane.direct.store(direct, AtomicOrdering::Relaxed);
        lane
    }
}
