//! One WebSocket connection to a OneBot bot, forward (the bot connected to us) or
//! reverse (we connected to the bot): the same frames both ways.
//!
//! Events come from the store, never from memory only: the connection reads the event
//! log from its cursor on, in `seq` order, and sends each event of its account that
//! OneBot has a shape for. After each batch, and twice a second while anything is
//! unconfirmed, it sends a WebSocket ping carrying the last `seq` sent. A pong says the
//! bot's WebSocket library has everything before it — not that the bot handled it: a
//! library queues frames (Python's `websockets` holds 16) and a bot killed then loses
//! them. So an event is confirmed, and the cursor moved in the store, only once the bot
//! has answered a ping [`CONFIRM_AFTER`] later than the pong that covered it: alive that
//! long after receiving it, it has drained its queue. A bot that was away (stopped,
//! redeployed, its network down) gets, when it is back, everything after the last
//! confirmed event, in order — at least once: what it got in its last moments comes
//! again. A bot whose WebSocket library never answers pings has its cursor moved as
//! frames are written instead (said once in the log).
//!
//! API calls (`{"action", "params", "echo"}`) are answered on the same socket with
//! `echo` returned verbatim, several at once; a frame that is not a call is answered
//! with retcode 1400 and the connection kept.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use serde_json::{Map, Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::{ActionError, Actions, EVENT_TYPES, Ids, response};
use crate::config::OneBotSettings;
use crate::event::now_millis;
use crate::feed::Feed;
use crate::store::Store;

/// A WebSocket frame, whichever library carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
}

/// Events read from the store at once.
const BATCH: u32 = 200;
/// API calls one connection may have running at once.
const CONCURRENT_CALLS: usize = 32;
/// Pings unanswered this long, with no pong ever seen, mean a client that never pongs.
const NO_PONGS: Duration = Duration::from_secs(10);
/// How long a bot must stay alive after its pong covered an event for the event to be
/// confirmed (see the module's documentation).
pub const CONFIRM_AFTER: Duration = Duration::from_secs(2);
/// How often an unconfirmed connection is pinged.
const PING_EVERY: Duration = Duration::from_millis(500);

/// Pongs seen, and what they confirm.
struct Confirmations {
    /// The highest `seq` confirmed (and written to the store).
    confirmed: i64,
    /// Whether any pong was ever seen.
    answered: bool,
    /// Pongs not old enough yet to confirm their `seq`: (seq, when).
    recent: std::collections::VecDeque<(i64, Instant)>,
}

impl Confirmations {
    /// A pong for `seq` came now: what it newly confirms, if anything.
    fn pong(&mut self, seq: i64, now: Instant) -> Option<i64> {
        self.answered = true;
        if self.recent.back().is_none_or(|&(s, _)| seq > s) {
            self.recent.push_back((seq, now));
        }
        let mut newest = None;
        while let Some(&(s, at)) = self.recent.front() {
            if now.duration_since(at) < CONFIRM_AFTER {
                break;
            }
            newest = Some(s);
            self.recent.pop_front();
        }
        let seq = newest.filter(|&s| s > self.confirmed)?;
        self.confirmed = seq;
        Some(seq)
    }
}

/// What every OneBot WebSocket needs.
pub struct Hub {
    pub store: Arc<dyn Store>,
    pub ids: Arc<Ids>,
    pub feed: Arc<Feed>,
    pub settings: OneBotSettings,
    pub actions: Arc<dyn Actions>,
    /// Cancelled at shutdown: connections close with 1001.
    pub stopping: CancellationToken,
}

/// Who is on the other end.
#[derive(Debug, Clone)]
pub struct Peer {
    pub account: String,
    /// The cursor's name in the store.
    pub cursor: String,
    /// For the log: `forward 127.0.0.1:5555` or `reverse ws://…`.
    pub label: String,
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The bot closed it, or the socket failed.
    Closed(String),
    /// waas is stopping.
    Stopping,
}

impl Hub {
    /// The cursor of a consumer, created at the newest event if it has none yet (a bot
    /// seen for the first time starts from now, not from the start of the log).
    pub async fn cursor(&self, name: &str) -> crate::store::Result<i64> {
        if let Some(seq) = self.store.cursor(name).await? {
            return Ok(seq);
        }
        let seq = self.store.last_seq().await?;
        self.store.set_cursor(name, seq, now_millis()).await?;
        Ok(seq)
    }

    async fn meta(&self, account: &str, kind: &str, extra: Value) -> Option<String> {
        let self_id = self.ids.self_id(account).await.ok()?;
        let mut v = json!({
            "time": now_millis().div_euclid(1000),
            "self_id": self_id,
            "post_type": "meta_event",
            "meta_event_type": kind,
        });
        if let (Some(v), Value::Object(extra)) = (v.as_object_mut(), extra) {
            v.extend(extra);
        }
        Some(v.to_string())
    }

    /// Answers one text frame.
    async fn answer(&self, account: &str, text: &str) -> String {
        let request: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                return response(Err(ActionError::bad(format!(
                    "the frame is not JSON ({e}); an API call is {{\"action\": \"…\", \"params\": {{…}}, \"echo\": …}}"
                ))))
                .to_string();
            }
        };
        let echo = request.get("echo").cloned();
        let result = match (request.get("action"), request.get("params")) {
            (Some(Value::String(action)), params) => match params {
                None | Some(Value::Null) => self.actions.call(account, action, Map::new()).await,
                Some(Value::Object(p)) => self.actions.call(account, action, p.clone()).await,
                Some(_) => Err(ActionError::bad("`params` must be an object")),
            },
            _ => Err(ActionError::bad(
                "an API call needs `action` (a string), like {\"action\": \"get_status\", \"params\": {}, \"echo\": 1}",
            )),
        };
        let mut answer = response(result);
        if let Some(echo) = echo {
            answer["echo"] = echo;
        }
        answer.to_string()
    }
}

/// Serves one connection until the bot goes away or waas stops.
pub async fn serve<S, E>(hub: Arc<Hub>, peer: Peer, socket: S) -> Ended
where
    S: Stream<Item = Result<Frame, E>> + Sink<Frame, Error = E> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    // Subscribed before the cursor is read, so nothing stored in between is missed.
    let mut wake = hub.feed.subscribe();
    let mut sent = loop {
        match hub.cursor(&peer.cursor).await {
            Ok(seq) => break seq,
            Err(e) => {
                tracing::error!(bot = %peer.label, error = %e, "a OneBot connection cannot read its cursor; trying again in 1s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = hub.stopping.cancelled() => return Ended::Stopping,
                }
            }
        }
    };
    tracing::info!(bot = %peer.label, account = %peer.account, from_seq = sent, "OneBot bot connected; events after its cursor follow");

    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Frame>(64);
    let closed = CancellationToken::new();
    let writer = {
        let closed = closed.clone();
        tokio::spawn(async move {
            let mut why = String::from("the connection ended");
            while let Some(frame) = rx.recv().await {
                let last = matches!(frame, Frame::Close(_));
                if let Err(e) = sink.send(frame).await {
                    why = format!("writing failed: {e}");
                    break;
                }
                if last {
                    break;
                }
            }
            closed.cancel();
            why
        })
    };

    let confirmed = Arc::new(std::sync::Mutex::new(Confirmations {
        confirmed: sent,
        answered: false,
        recent: Default::default(),
    }));
    let reader = {
        let (hub, peer, tx, closed, confirmed) = (
            hub.clone(),
            peer.clone(),
            tx.clone(),
            closed.clone(),
            confirmed.clone(),
        );
        tokio::spawn(async move {
            let calls = Arc::new(Semaphore::new(CONCURRENT_CALLS));
            let why = loop {
                let frame = tokio::select! {
                    f = stream.next() => f,
                    _ = closed.cancelled() => break "the connection ended".to_string(),
                };
                match frame {
                    None => break "the bot closed the connection".to_string(),
                    Some(Err(e)) => break format!("reading failed: {e}"),
                    Some(Ok(Frame::Text(text))) => {
                        let Ok(permit) = calls.clone().acquire_owned().await else {
                            break "stopping".into();
                        };
                        let (hub, account, tx) = (hub.clone(), peer.account.clone(), tx.clone());
                        tokio::spawn(async move {
                            let answer = hub.answer(&account, &text).await;
                            let _ = tx.send(Frame::Text(answer)).await;
                            drop(permit);
                        });
                    }
                    Some(Ok(Frame::Binary(_))) => {
                        let answer = response(Err(ActionError::bad(
                            "binary frames are not API calls: send JSON text",
                        )));
                        let _ = tx.send(Frame::Text(answer.to_string())).await;
                    }
                    Some(Ok(Frame::Pong(payload))) => {
                        let Some(seq) = std::str::from_utf8(&payload)
                            .ok()
                            .and_then(|s| s.parse::<i64>().ok())
                        else {
                            continue;
                        };
                        let newer = confirmed
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .pong(seq, Instant::now());
                        if let Some(seq) = newer
                            && let Err(e) =
                                hub.store.set_cursor(&peer.cursor, seq, now_millis()).await
                        {
                            // Not fatal: the bot gets these events again next time.
                            tracing::warn!(bot = %peer.label, error = %e, "cannot move a OneBot cursor");
                        }
                    }
                    Some(Ok(Frame::Ping(_))) => {}
                    Some(Ok(Frame::Close(frame))) => {
                        break match frame {
                            Some((code, reason)) => {
                                format!("the bot closed the connection ({code} {reason})")
                            }
                            None => "the bot closed the connection".to_string(),
                        };
                    }
                }
            };
            closed.cancel();
            why
        })
    };

    if let Some(connect) = hub
        .meta(&peer.account, "lifecycle", json!({"sub_type": "connect"}))
        .await
    {
        let _ = tx.send(Frame::Text(connect)).await;
    }
    let heartbeat = hub.settings.heartbeat;
    let mut beat = tokio::time::interval(if heartbeat.is_zero() {
        Duration::from_secs(3600)
    } else {
        heartbeat
    });
    beat.reset();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let format = hub.settings.message_format;
    let mut first_unanswered: Option<Instant> = None;
    let mut without_pongs = false;
    let ended = 'pump: loop {
        let batch = match hub.store.events_after(sent, BATCH).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(bot = %peer.label, error = %e, "a OneBot connection cannot read events; trying again in 1s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = closed.cancelled() => break None,
                    _ = hub.stopping.cancelled() => break Some(Ended::Stopping),
                }
            }
        };
        if let Some(last) = batch.last() {
            let last = last.seq;
            for event in &batch {
                if event.account != peer.account
                    || !EVENT_TYPES.iter().any(|t| t.as_str() == event.event_type)
                {
                    continue;
                }
                let converted = loop {
                    match super::event::convert(&hub.ids, event, format).await {
                        Ok(v) => break v,
                        Err(e) => {
                            tracing::error!(bot = %peer.label, error = %e, "cannot give a OneBot event its ids; trying again in 1s");
                            tokio::select! {
                                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                                _ = closed.cancelled() => break 'pump None,
                            }
                        }
                    }
                };
                if let Some(v) = converted
                    && tx.send(Frame::Text(v.to_string())).await.is_err()
                {
                    break 'pump None;
                }
            }
            sent = last;
            if without_pongs {
                if let Err(e) = hub.store.set_cursor(&peer.cursor, sent, now_millis()).await {
                    tracing::warn!(bot = %peer.label, error = %e, "cannot move a OneBot cursor");
                }
            } else {
                let answered = confirmed.lock().unwrap_or_else(|e| e.into_inner()).answered;
                if !answered {
                    let since = *first_unanswered.get_or_insert_with(Instant::now);
                    if since.elapsed() > NO_PONGS {
                        tracing::warn!(bot = %peer.label, "this bot never answers WebSocket pings: its cursor now moves as events are written, so events in flight when it goes away are lost to it");
                        without_pongs = true;
                    }
                }
                if tx
                    .send(Frame::Ping(sent.to_string().into_bytes()))
                    .await
                    .is_err()
                {
                    break None;
                }
            }
            continue;
        }
        tokio::select! {
            woke = wake.recv() => {
                if let Err(tokio::sync::broadcast::error::RecvError::Closed) = woke {
                    break Some(Ended::Stopping);
                }
            }
            _ = beat.tick(), if !heartbeat.is_zero() => {
                let status = json!({
                    "status": {"online": hub.actions.online(&peer.account), "good": true},
                    "interval": heartbeat.as_millis() as u64,
                });
                if let Some(frame) = hub.meta(&peer.account, "heartbeat", status).await
                    && tx.send(Frame::Text(frame)).await.is_err()
                {
                    break None;
                }
            }
            _ = ping.tick(), if !without_pongs => {
                let unconfirmed =
                    confirmed.lock().unwrap_or_else(|e| e.into_inner()).confirmed < sent;
                if unconfirmed
                    && tx.send(Frame::Ping(sent.to_string().into_bytes())).await.is_err()
                {
                    break None;
                }
            }
            _ = closed.cancelled() => break None,
            _ = hub.stopping.cancelled() => break Some(Ended::Stopping),
        }
    };
    let ended = match ended {
        Some(Ended::Stopping) => {
            let _ = tx
                .send(Frame::Close(Some((1001, "waas is stopping".into()))))
                .await;
            Ended::Stopping
        }
        _ => {
            closed.cancel();
            let why = reader.await.unwrap_or_else(|_| "the reader failed".into());
            Ended::Closed(why)
        }
    };
    drop(tx);
    let wrote = tokio::time::timeout(Duration::from_secs(2), writer).await;
    if let Ended::Closed(why) = &ended {
        tracing::info!(bot = %peer.label, reason = %why, confirmed_seq = confirmed.lock().unwrap_or_else(|e| e.into_inner()).confirmed, "OneBot bot disconnected; what it missed waits in the store");
    } else if wrote.is_err() {
        tracing::debug!(bot = %peer.label, "the close frame could not be written in time");
    }
    ended
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pong_confirms_only_what_an_older_pong_covered() {
        let mut c = Confirmations {
            confirmed: 0,
            answered: false,
            recent: Default::default(),
        };
        let t0 = Instant::now();
        assert_eq!(
            c.pong(10, t0),
            None,
            "alive now, but not for long enough yet"
        );
        assert_eq!(c.pong(20, t0 + Duration::from_millis(500)), None);
        assert_eq!(c.pong(20, t0 + CONFIRM_AFTER), Some(10));
        assert_eq!(c.pong(30, t0 + CONFIRM_AFTER * 2), Some(20));
        assert_eq!(c.pong(30, t0 + CONFIRM_AFTER * 3), Some(30));
        assert_eq!(c.pong(30, t0 + CONFIRM_AFTER * 4), None, "nothing new");
        assert!(c.answered);
    }
}
