//! The live event feed behind `GET /v1/events/stream` and long polls: each stored
//! event is read from the store once, rendered once, and broadcast to every listener,
//! however many there are. A listener first catches up from the store (its cursor), then
//! follows the broadcast; one that falls behind the broadcast catches up from the store
//! again, so nothing is missed and nothing repeats.
//!
//! Listeners are limited in all and per credential (`server.max_streams`,
//! `server.max_streams_per_credential`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::store::{Store, StoredEvent};

/// Events buffered for listeners that are a little behind; one further behind reads
/// the store instead.
const BUFFER: usize = 4096;
/// Events read from the store at once.
const BATCH: u32 = 500;

/// A stored event as listeners receive it: rendered once for all of them.
#[derive(Debug)]
pub struct FeedEvent {
    pub seq: i64,
    pub event_type: String,
    pub account: String,
    /// The event's JSON body, exactly as webhooks receive it.
    pub body: String,
}

impl From<&StoredEvent> for FeedEvent {
    fn from(e: &StoredEvent) -> FeedEvent {
        FeedEvent {
            seq: e.seq,
            event_type: e.event_type.clone(),
            account: e.account.clone(),
            body: crate::relay::format::standard::body(e),
        }
    }
}

pub struct Feed {
    tx: broadcast::Sender<Arc<FeedEvent>>,
}

impl Default for Feed {
    fn default() -> Feed {
        Feed {
            tx: broadcast::channel(BUFFER).0,
        }
    }
}

impl Feed {
    /// Every event stored from now on, in `seq` order (subscribe before reading the
    /// store, so nothing falls in between).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<FeedEvent>> {
        self.tx.subscribe()
    }

    /// Reads each newly stored event once and broadcasts it, until `shutdown`. `newest`
    /// is ingest's latest committed seq.
    pub async fn run(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        mut newest: watch::Receiver<i64>,
        shutdown: CancellationToken,
    ) {
        let mut cursor = loop {
            match store.last_seq().await {
                Ok(seq) => break seq,
                Err(e) => {
                    tracing::error!(error = %e, "the event feed cannot read the store; trying again in 1s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        };
        loop {
            let head = *newest.borrow_and_update();
            // Nobody listening: nothing to read or render. A listener that subscribes
            // later catches up from the store first, so skipping loses nothing.
            if self.tx.receiver_count() == 0 {
                cursor = cursor.max(head);
            }
            while cursor < head {
                match store.events_after(cursor, BATCH).await {
                    Ok(batch) if batch.is_empty() => break,
                    Ok(batch) => {
                        for event in &batch {
                            cursor = event.seq;
                            // No receivers is not an error: nobody is listening.
                            let _ = self.tx.send(Arc::new(FeedEvent::from(event)));
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "the event feed cannot read the store; trying again in 1s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            tokio::select! {
                changed = newest.changed() => if changed.is_err() { return },
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

/// How many streams and long polls may be open, in all and per credential.
pub struct Listeners {
    all: Arc<Semaphore>,
    max_all: usize,
    per_credential: Mutex<HashMap<String, usize>>,
    max_per_credential: usize,
}

/// One open stream or long poll; dropping it frees its place.
pub struct Listening {
    listeners: Arc<Listeners>,
    credential: String,
    _place: OwnedSemaphorePermit,
}

impl Drop for Listening {
    fn drop(&mut self) {
        let mut per = self
            .listeners
            .per_credential
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per.get_mut(&self.credential) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.credential);
            }
        }
    }
}

/// Why a listener was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("{0} event streams and long polls are open, server.max_streams; close one or raise it")]
    All(usize),
    #[error(
        "this credential has {0} event streams and long polls open, server.max_streams_per_credential; close one or raise it"
    )]
    Credential(usize),
}

impl Listeners {
    pub fn new(max_all: usize, max_per_credential: usize) -> Listeners {
        Listeners {
            all: Arc::new(Semaphore::new(max_all)),
            max_all,
            per_credential: Mutex::new(HashMap::new()),
            max_per_credential,
        }
    }

    /// A place for one more listener with `credential`, or why there is none.
    pub fn admit(self: &Arc<Self>, credential: &str) -> Result<Listening, Refused> {
        let mut per = self
            .per_credential
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mine = per.get(credential).copied().unwrap_or(0);
        if mine >= self.max_per_credential {
            return Err(Refused::Credential(mine));
        }
        let place = self
            .all
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::All(self.max_all))?;
        per.insert(credential.to_string(), mine + 1);
        Ok(Listening {
            listeners: self.clone(),
            credential: credential.to_string(),
            _place: place,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_are_capped_in_all_and_per_credential() {
        let listeners = Arc::new(Listeners::new(3, 2));
        let a1 = listeners.admit("a").unwrap();
        let _a2 = listeners.admit("a").unwrap();
        assert_eq!(listeners.admit("a").err(), Some(Refused::Credential(2)));
        let _b1 = listeners.admit("b").unwrap();
        assert_eq!(listeners.admit("b").err(), Some(Refused::All(3)));
        drop(a1);
        assert!(
            listeners.admit("b").is_ok(),
            "a closed listener frees its place"
        );
    }
}
