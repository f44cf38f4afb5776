//! The relay: everything that moves stored work outwards.
//!
//! - [`dispatcher`] claims due deliveries and POSTs them to webhooks, signed
//!   ([`signing`]), deciding retries with [`retry`];
//! - [`sender`] drains the send queue through the puppet, paced per conversation.

pub mod dispatcher;
pub mod retry;
pub mod sender;
pub mod signing;
