//! waas — WeChat-as-a-service: one WeChat bot session, held through a Wechaty puppet,
//! turned into plain, reliable HTTP.
//!
//! ```text
//!  puppet (mock | Wechaty puppet service)      ▲ sends (relay::sender, paced)
//!     │ events                                  │
//!     ▼                                         │
//!  ingest ──► outbox ──► store (SQLite) ◄── send queue ◄── outbox ◄── api (axum)
//!                │ wakes     │ due deliveries                        ▲
//!                ▼           ▼                                       │
//!       relay::dispatcher ──► signed POST (relay::format) ──► reply in the response
//! ```
//!
//! - [`action`]: operations other than sends (recall, rooms, friendships), queued like sends.
//! - [`account`]: one WeChat login — its puppet, session, ingest and sender.
//! - [`address`]: which addresses waas may call, and URLs shown without secrets.
//! - [`config`]: settings, layered defaults → file → environment.
//! - [`event`]: the event model every webhook receives.
//! - [`puppet`]: the session trait, the mock account and the Puppet Service client.
//! - [`feed`]: stored events broadcast once to every stream and long poll.
//! - [`ingest`]: puppet events → stored events with their deliveries.
//! - [`media`]: signed links to inbound images and files, and their disk cache.
//! - [`outbox`]: the one place work is written and its worker woken.
//! - [`store`]: durable storage, split by concern (event log, delivery queue, webhook
//!   state, send queue, signed requests).
//! - [`relay`]: the dispatcher, retry schedule, signatures and sender.
//! - [`api`]: the HTTP routes; [`server`] the listener and its connection limits;
//!   [`app`] wires everything together; [`harness`] runs it inside a process (tests,
//!   bench, soak).
#![forbid(unsafe_code)]

pub mod account;
pub mod action;
pub mod address;
pub mod api;
pub mod app;
pub mod config;
pub mod event;
pub mod feed;
pub mod harness;
pub mod ingest;
pub mod media;
pub mod metrics;
pub mod onebot;
pub mod outbox;
pub mod puppet;
pub mod relay;
pub mod send;
pub mod server;
pub mod store;
pub mod telemetry;

/// rustls needs one process-wide crypto provider; waas uses ring. Safe to call often.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
