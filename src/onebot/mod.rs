//! OneBot v11 mode: NoneBot2, Koishi and other OneBot bots drive WeChat unmodified.
//!
//! - [`ids`]: OneBot's ids are integers; WeChat's are strings. A stable two-way map,
//!   kept in the store, gives every contact, room and message a number below 2^53.
//! - [`message`]: segment arrays and CQ-code strings.
//! - [`event`]: a stored event as the OneBot event a bot receives.
//! - [`ws`]: one WebSocket connection to a bot (forward or reverse), delivering events
//!   from the store from a cursor the bot confirms, and answering its API calls.
//! - [`reverse`]: the reverse WebSocket clients, reconnecting forever.
//!
//! The actions themselves ([`Actions`]) are implemented by the API (`api::onebot`),
//! which also serves the HTTP API and the forward WebSocket; the HTTP POST reporting
//! transport is a webhook format (`relay::format::onebot`).

pub mod event;
pub mod ids;
pub mod message;
pub mod outbound;
pub mod reverse;
pub mod ws;

use async_trait::async_trait;
use serde_json::{Map, Value, json};

pub use ids::Ids;

/// What OneBot bodies are made with, wherever they are made (webhooks, WebSockets).
#[derive(Clone)]
pub struct Context {
    pub ids: std::sync::Arc<Ids>,
    pub format: crate::config::MessageFormat,
}

/// The event types OneBot has a shape for; the others never reach a OneBot bot.
pub const EVENT_TYPES: [crate::event::EventType; 7] = {
    use crate::event::EventType as T;
    [
        T::Message,
        T::RoomJoin,
        T::RoomLeave,
        T::Friendship,
        T::RoomInvite,
        T::Login,
        T::Logout,
    ]
};

/// The version `get_version_info` and the lifecycle events name.
pub const APP_NAME: &str = "waas";
pub const PROTOCOL_VERSION: &str = "v11";

/// The standard's return codes.
pub mod retcode {
    pub const OK: i64 = 0;
    pub const BAD_REQUEST: i64 = 1400;
    pub const UNAUTHORIZED: i64 = 1401;
    pub const FORBIDDEN: i64 = 1403;
    pub const NOT_FOUND: i64 = 1404;
    /// The call was understood but failed (WeChat refused, the store is down).
    pub const FAILED: i64 = 103;
    /// The puppet cannot do this (OneBot has no code for it; go-cqhttp uses 1404 for
    /// "no such API", which this is not).
    pub const NOT_SUPPORTED: i64 = 1501;
}

/// Why an action failed: a return code and a message that says what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionError {
    pub retcode: i64,
    pub message: String,
}

impl ActionError {
    pub fn new(retcode: i64, message: impl Into<String>) -> ActionError {
        ActionError {
            retcode,
            message: message.into(),
        }
    }

    pub fn bad(message: impl Into<String>) -> ActionError {
        ActionError::new(retcode::BAD_REQUEST, message)
    }

    pub fn failed(message: impl Into<String>) -> ActionError {
        ActionError::new(retcode::FAILED, message)
    }

    pub fn unknown(action: &str) -> ActionError {
        ActionError::new(
            retcode::NOT_FOUND,
            format!(
                "no action `{action}` (waas implements: {})",
                ACTIONS.join(", ")
            ),
        )
    }
}

impl From<crate::store::StoreError> for ActionError {
    fn from(e: crate::store::StoreError) -> ActionError {
        tracing::error!(error = %e, "a OneBot action cannot use the store");
        ActionError::failed(format!("the store is unavailable: {e}"))
    }
}

/// The actions waas implements.
pub const ACTIONS: &[&str] = &[
    "send_msg",
    "send_private_msg",
    "send_group_msg",
    "delete_msg",
    "get_msg",
    "get_login_info",
    "get_friend_list",
    "get_stranger_info",
    "get_group_list",
    "get_group_info",
    "get_group_member_list",
    "get_group_member_info",
    "get_status",
    "get_version_info",
    "can_send_image",
    "can_send_record",
    "set_friend_add_request",
    "set_group_add_request",
    "set_group_leave",
    "set_group_kick",
    "set_group_name",
];

/// An action's answer as the standard writes it (`echo` added by the caller).
pub fn response(result: Result<Value, ActionError>) -> Value {
    match result {
        Ok(data) => json!({"status": "ok", "retcode": retcode::OK, "data": data}),
        Err(e) => json!({
            "status": "failed",
            "retcode": e.retcode,
            "data": null,
            "msg": e.message,
            "wording": e.message,
        }),
    }
}

/// What OneBot transports call actions on: implemented with the API's internals.
#[async_trait]
pub trait Actions: Send + Sync {
    /// Runs one action for `account`.
    async fn call(
        &self,
        account: &str,
        action: &str,
        params: Map<String, Value>,
    ) -> Result<Value, ActionError>;

    /// Whether the account is logged in (the heartbeat's `status.online`).
    fn online(&self, account: &str) -> bool;
}
