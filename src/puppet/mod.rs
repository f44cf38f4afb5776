//! Puppets: what holds the WeChat session.
//!
//! Wechaty reaches WeChat through *puppets*: each one drives an account somehow (a
//! protocol implementation, a desktop client…) and exposes the same operations: log in
//! by QR code, emit events (messages, logins, room changes), send messages, list
//! contacts and rooms. waas talks to one puppet through [`Puppet`]:
//!
//! - [`mock::MockPuppet`], an embedded simulated account, the default, so waas runs
//!   with no WeChat at all; messages are injected through `POST /v1/mock/messages`.
//! - [`service::ServicePuppet`], a gRPC client of the Wechaty Puppet Service protocol
//!   (`puppet.kind = "service"`), which reaches real WeChat through a gateway.
//!
//! A puppet reports what happens to an [`crate::ingest::Ingest`], which stores it, and
//! keeps the login state in a [`SessionHandle`].

pub mod mock;
pub mod service;

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::action::{Action, Capabilities, all_supported};
use crate::config::PuppetKind;
use crate::event::{Contact, Conversation, Millis, Room, ScanStatus, format_millis, now_millis};
use crate::ingest::Ingest;
use crate::media::ImageSize;
use crate::send::{Content, Recipient};

/// Where the login stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Starting,
    WaitingForScan,
    LoggedIn,
    LoggedOut,
    Disconnected,
}

/// The QR code a person scans with the WeChat app to log the bot in.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Qr {
    pub payload: String,
    pub status: ScanStatus,
}

/// The session as `GET /v1/session` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Session {
    pub state: SessionState,
    /// `mock` or `service`.
    pub puppet: &'static str,
    /// The QR code to scan, while `waiting_for_scan`.
    pub qr: Option<Qr>,
    /// The bot's account, once logged in.
    pub user: Option<Contact>,
    /// When the state last changed.
    #[serde(serialize_with = "ser_since")]
    #[schema(value_type = String, format = DateTime)]
    pub since: Millis,
    /// Why the session is not logged in, for `/readyz`.
    #[serde(skip)]
    #[schema(ignore)]
    pub reason: Option<String>,
}

fn ser_since<S: serde::Serializer>(ms: &Millis, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_millis(*ms))
}

/// The shared, observable session state. Puppets write it; the API, `/readyz` and the
/// sender read or watch it.
#[derive(Clone)]
pub struct SessionHandle {
    state: Arc<watch::Sender<Session>>,
    /// Whether this handle tells the person at the terminal to scan a new QR code (not
    /// for the mock that logs itself in).
    announce: bool,
}

impl SessionHandle {
    pub fn new(kind: PuppetKind) -> SessionHandle {
        SessionHandle {
            state: Arc::new(watch::Sender::new(Session {
                state: SessionState::Starting,
                puppet: kind.as_str(),
                qr: None,
                user: None,
                since: now_millis(),
                reason: Some("the puppet is starting".into()),
            })),
            announce: true,
        }
    }

    /// The same session, through a handle that never asks a person to scan.
    pub fn quiet(&self) -> SessionHandle {
        SessionHandle {
            state: self.state.clone(),
            announce: false,
        }
    }

    pub fn get(&self) -> Session {
        self.state.borrow().clone()
    }

    pub fn state(&self) -> SessionState {
        self.state.borrow().state
    }

    pub fn subscribe(&self) -> watch::Receiver<Session> {
        self.state.subscribe()
    }

    /// Moves to `state`; `since` changes only when the state does.
    pub fn set(
        &self,
        state: SessionState,
        qr: Option<Qr>,
        user: Option<Contact>,
        reason: Option<String>,
    ) {
        if self.announce
            && state == SessionState::WaitingForScan
            && let Some(qr) = &qr
            && self.state.borrow().qr.as_ref() != Some(qr)
        {
            announce_qr(&qr.payload);
        }
        self.state.send_modify(|s| {
            if s.state != state {
                s.since = now_millis();
                tracing::info!(from = ?s.state, to = ?state, "session state changed");
            }
            s.state = state;
            s.qr = qr;
            s.user = user;
            s.reason = reason;
        });
    }
}

/// Tells the person at the terminal to scan: the QR code itself when stderr is a
/// terminal, and always a log line pointing at `/v1/session/qr.svg`.
fn announce_qr(payload: &str) {
    use std::io::{IsTerminal, Write};
    tracing::info!(
        "scan the QR code with the WeChat app to log in (GET /v1/session/qr.svg shows it)"
    );
    if std::io::stderr().is_terminal()
        && let Ok(code) = qrcode::QrCode::new(payload.as_bytes())
    {
        let art = code
            .render::<qrcode::render::unicode::Dense1x2>()
            .quiet_zone(true)
            .build();
        // Not eprintln!: it panics when stderr is closed.
        let _ = writeln!(std::io::stderr(), "{art}");
    }
}

/// The login QR code as an SVG image, rendered locally.
pub fn qr_svg(payload: &str) -> Option<String> {
    let code = qrcode::QrCode::new(payload.as_bytes()).ok()?;
    Some(
        code.render::<qrcode::render::svg::Color>()
            .min_dimensions(256, 256)
            .quiet_zone(true)
            .build(),
    )
}

/// A media message's file as the puppet streams it.
pub struct MediaFile {
    pub name: String,
    /// Known when the puppet tells it up front.
    pub size: Option<u64>,
    pub body: futures_util::stream::BoxStream<'static, Result<bytes::Bytes, PuppetError>>,
}

/// Why the puppet could not do something.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PuppetError {
    /// The recipient does not exist; retrying will not help.
    #[error("{0}")]
    NotFound(String),
    /// The session is not logged in right now; try again later.
    #[error("the puppet is not logged in")]
    Offline,
    /// The send failed for a reason that may pass.
    #[error("{0}")]
    Failed(String),
    /// This puppet cannot do that at all.
    #[error("{0}")]
    NotSupported(String),
}

/// One WeChat session.
#[async_trait]
pub trait Puppet: Send + Sync + 'static {
    fn kind(&self) -> PuppetKind;

    /// Runs the session: logs in and reports every event to `ingest`, until
    /// `shutdown` is cancelled.
    async fn run(self: Arc<Self>, ingest: Arc<Ingest>, shutdown: CancellationToken);

    /// Finds the conversation a recipient names.
    async fn resolve(&self, to: &Recipient) -> Result<Conversation, PuppetError>;

    /// The bot's contacts.
    async fn contacts(&self) -> Result<Vec<Contact>, PuppetError>;

    /// The rooms the bot is in.
    async fn rooms(&self) -> Result<Vec<Room>, PuppetError>;

    /// The members of one room.
    async fn room_members(&self, room_id: &str) -> Result<Vec<Contact>, PuppetError>;

    /// Sends one message; returns the puppet's id of the sent message.
    async fn send(&self, to: &Conversation, content: &Content) -> Result<String, PuppetError>;

    /// Checks, before an operation is queued, that what it names exists (404 at the API
    /// otherwise). `Offline` or `Failed` mean it cannot tell now: the operation is queued
    /// all the same.
    async fn check(&self, _action: &Action) -> Result<(), PuppetError> {
        Ok(())
    }

    /// Carries out an operation that changes WeChat (recall, rooms, friendships…);
    /// returns the id it made, if any (a created room's id).
    async fn perform(&self, action: &Action) -> Result<Option<String>, PuppetError> {
        Err(PuppetError::NotSupported(format!(
            "the {} puppet cannot do `{}` in this version",
            self.kind().as_str(),
            action.operations().join("`, `")
        )))
    }

    /// The bytes of a media message's file, or with `image` of its image at that size,
    /// as a stream.
    async fn media(
        &self,
        _message_id: &str,
        _image: Option<ImageSize>,
    ) -> Result<MediaFile, PuppetError> {
        Err(PuppetError::NotSupported(format!(
            "the {} puppet cannot download media in this version",
            self.kind().as_str()
        )))
    }

    /// What this puppet can do, as far as it knows now (a puppet that learns from a
    /// refused call changes its answer).
    fn capabilities(&self) -> Capabilities {
        all_supported()
    }
}
