//! The relay: everything that moves stored work outwards.
//!
//! - [`dispatcher`] claims due deliveries and POSTs them to webhooks, each rendered by
//!   its webhook's [`format`] and signed ([`signing`]), deciding retries with [`retry`];
//! - [`lanes`] hands new deliveries from the outbox to the dispatcher in memory;
//! - [`replay`] re-queues finished deliveries by hand, in chunks, as a job;
//! - [`sender`] drains the send queue through the puppet, paced per conversation.

pub mod dispatcher;
pub mod format;
pub mod lanes;
pub mod replay;
pub mod retry;
pub mod sender;
pub mod signing;
