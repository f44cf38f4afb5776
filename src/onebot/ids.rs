//! OneBot's integer ids for WeChat's string ids, kept in the store ([`IdMap::number`]):
//! the same number for the same id forever (across restarts), never reused, below
//! 2^53 (JavaScript bots read them exactly). Numbers are cached in memory once read.
//!
//! - users (`user_id`, `at.qq`): a contact id. The bot itself is `self_id`, one number
//!   per *account* (`account:NAME`), so it is known before the login and stays the same
//!   if the account logs in as another WeChat user.
//! - groups (`group_id`): a room id; a room invitation, whose room is not known yet,
//!   is `invitation:ID`.
//! - messages (`message_id`, `reply.id`): a received message is its stored event's
//!   `seq` times two (even, computed: nothing to write per message, and as stable as
//!   the event log); one waas sent is twice its number in the map (`send:out_…`) plus
//!   one (odd).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::event::now_millis;
use crate::store::{IdMap, Result};

pub const USER: &str = "onebot_user";
pub const GROUP: &str = "onebot_group";
pub const MESSAGE: &str = "onebot_message";

/// What a message number stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageRef {
    /// A received message: the event with this `seq`.
    Event(i64),
    /// A message waas sent: the send with this id.
    Send(String),
}

pub struct Ids {
    store: Arc<dyn IdMap>,
    numbers: Mutex<HashMap<(&'static str, String), i64>>,
    targets: Mutex<HashMap<(&'static str, i64), String>>,
}

/// Entries kept in memory before the cache starts over (the store has them all).
const CACHED: usize = 100_000;

impl Ids {
    pub fn new(store: Arc<dyn IdMap>) -> Ids {
        Ids {
            store,
            numbers: Mutex::new(HashMap::new()),
            targets: Mutex::new(HashMap::new()),
        }
    }

    fn remember(&self, kind: &'static str, target: &str, number: i64) {
        let mut numbers = self.numbers.lock().unwrap_or_else(|e| e.into_inner());
        let mut targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        if numbers.len() >= CACHED {
            numbers.clear();
            targets.clear();
        }
        numbers.insert((kind, target.to_string()), number);
        targets.insert((kind, number), target.to_string());
    }

    /// The number of `target`, given now if it has none yet.
    pub async fn number(&self, kind: &'static str, target: &str) -> Result<i64> {
        let cached = self
            .numbers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(kind, target.to_string()))
            .copied();
        if let Some(n) = cached {
            return Ok(n);
        }
        let n = self.store.number(kind, target, now_millis()).await?;
        self.remember(kind, target, n);
        Ok(n)
    }

    /// What a number stands for (`None`: no id was given this number).
    pub async fn target(&self, kind: &'static str, number: i64) -> Result<Option<String>> {
        let cached = self
            .targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(kind, number))
            .cloned();
        if cached.is_some() {
            return Ok(cached);
        }
        let target = self.store.number_target(kind, number).await?;
        if let Some(t) = &target {
            self.remember(kind, t, number);
        }
        Ok(target)
    }

    /// The account's `self_id`.
    pub async fn self_id(&self, account: &str) -> Result<i64> {
        self.number(USER, &format!("account:{account}")).await
    }

    /// A contact's `user_id`: `self_id` for the bot itself.
    pub async fn user(&self, account: &str, bot_id: &str, contact: &str) -> Result<i64> {
        if !bot_id.is_empty() && contact == bot_id {
            return self.self_id(account).await;
        }
        self.number(USER, contact).await
    }

    /// The contact a `user_id` stands for: `Some(None)` for the account itself (the
    /// caller knows its WeChat user), `None` for a number never given.
    pub async fn contact(&self, number: i64) -> Result<Option<Option<String>>> {
        Ok(match self.target(USER, number).await? {
            Some(t) if t.starts_with("account:") => Some(None),
            Some(t) => Some(Some(t)),
            None => None,
        })
    }

    pub async fn group(&self, room: &str) -> Result<i64> {
        self.number(GROUP, room).await
    }

    /// The room a `group_id` stands for (`None`: not a room's number).
    pub async fn room(&self, number: i64) -> Result<Option<String>> {
        Ok(self
            .target(GROUP, number)
            .await?
            .filter(|t| !t.starts_with("invitation:")))
    }

    pub async fn message(&self, message: &MessageRef) -> Result<i64> {
        match message {
            MessageRef::Event(seq) => Ok(seq.saturating_mul(2)),
            MessageRef::Send(id) => Ok(self.number(MESSAGE, &format!("send:{id}")).await? * 2 + 1),
        }
    }

    pub async fn message_ref(&self, number: i64) -> Result<Option<MessageRef>> {
        if number <= 0 {
            return Ok(None);
        }
        if number % 2 == 0 {
            return Ok(Some(MessageRef::Event(number / 2)));
        }
        Ok(self.target(MESSAGE, number / 2).await?.and_then(|t| {
            t.strip_prefix("send:")
                .map(|id| MessageRef::Send(id.into()))
        }))
    }
}
