//! The Wechaty Puppet Service puppet (`puppet.kind = "service"`): a gRPC client of the
//! `wechaty.Puppet` service, the protocol python-wechaty and go-wechaty use. Behind the
//! service runs any Wechaty puppet (a `wechaty gateway`, or a hosted token), and behind
//! that, WeChat.
//!
//! The session: open the `Event` stream first, then call `Start` (events emitted while
//! no stream is open are lost, so the stream must exist before anything happens). The
//! stream carries SCAN, LOGIN, READY, MESSAGE… as JSON payloads; for each message waas
//! fetches the message, contact and room payloads (contacts and rooms are cached and
//! dropped on DIRTY) and stores the result through [`Ingest`], in stream order.
//!
//! Resilience: a `Ding` every 15 s keeps the stream busy (the stock client drops a
//! stream after 60 s of silence, and so does waas); when the stream ends or the server
//! goes away the session becomes `disconnected` with the reason, and waas reconnects
//! with capped exponential backoff, calling `Start` again (a no-op when the puppet is
//! still running, a new login when the server lost it). A refused token is retried at
//! the slowest pace only. Messages the server replays after a reconnect are stored once
//! (the store de-duplicates puppet message ids).
//!
//! The protocol has no acknowledgements: an event is the server's to lose until waas
//! has it on the stream, and waas's to keep from the moment it is stored.

pub mod map;
pub mod proto;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use self::map::{Dirty, StreamEvent};
use super::MediaFile;
use super::{Puppet, PuppetError, Qr, SessionHandle, SessionState};
use crate::action::{Action, Capabilities, all_supported};
use crate::config::{PuppetKind, ReconnectSettings, ServiceSettings};
use crate::event::{BotRef, Contact, Conversation, EventData, Room};
use crate::ingest::Ingest;
use crate::media::ImageSize;
use crate::send::{Content, Recipient};
use bytes::Bytes;
use futures_util::stream::BoxStream;

/// Longest wait for one unary call.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How often a `Ding` is sent while the stream is open.
const DING_EVERY: Duration = Duration::from_secs(15);
/// A stream silent for this long (not even a DONG) is considered dead.
const SILENCE_LIMIT: Duration = Duration::from_secs(60);
/// Events whose payloads are fetched at once; results are stored in stream order.
const PIPELINE: usize = 16;
/// Stream events read but not yet stored. The stream is read as it comes, whatever
/// the store's pace: left unread, a burst of small messages exhausts h2's budget for
/// buffered DATA frames, the connection is closed (ENHANCE_YOUR_CALM,
/// `too_many_data_frames`), and what the puppet emits until the reconnect is gone.
/// Measured: a 20,000-message burst from the fixture broke the stream with a buffer of
/// 1,024; a step is about a hundred bytes.
const STREAM_BUFFER: usize = 65_536;
/// Most stream events stored in one group commit.
const RECORD_RUN: usize = 64;
/// Pauses between attempts to fetch a payload while the server is unreachable.
const FETCH_RETRIES: [Duration; 5] = [
    Duration::from_millis(200),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];

/// Adds `authorization: Wechaty <token>` to every call.
#[derive(Clone)]
struct Token(MetadataValue<Ascii>);

impl Interceptor for Token {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

type Client = proto::PuppetClient<InterceptedService<Channel, Token>>;

/// A step for the ordered processing pipeline.
enum Step {
    Event(StreamEvent),
    Lost(String),
}

/// A step with its payloads fetched, ready to be applied in order.
enum Resolved {
    Record(Box<EventData>),
    Scan(Qr),
    Login(Contact),
    Ready,
    Logout {
        user: Option<Contact>,
        reason: Option<String>,
    },
    Lost(String),
    Nothing,
}

impl Resolved {
    fn record(data: EventData) -> Resolved {
        Resolved::Record(Box::new(data))
    }
}

/// What the pipeline has already announced, so a reconnect does not repeat `login`.
#[derive(Default)]
struct Announced {
    login: Option<String>,
    ready: bool,
    scan: Option<Qr>,
    /// The last `error` event stored, when, and how many identical ones followed it.
    error: Option<(String, Instant, u32)>,
}

/// An identical puppet error repeated within this window is counted, not stored again
/// (a puppet that cannot reach WeChat reports the same failure several times a second).
const ERROR_REPEAT_WINDOW: Duration = Duration::from_secs(60);

impl Announced {
    /// Whether this puppet error should be stored; repeats are folded into a count
    /// that the next stored one mentions.
    fn error_is_new(&mut self, message: &mut String, now: Instant) -> bool {
        if let Some((last, at, repeats)) = &mut self.error
            && last == message
        {
            if now.duration_since(*at) < ERROR_REPEAT_WINDOW {
                *repeats += 1;
                return false;
            }
            let folded = *repeats;
            *at = now;
            *repeats = 0;
            if folded > 0 {
                message.push_str(&format!(
                    " (repeated {folded} more times in the last minute)"
                ));
            }
            return true;
        }
        self.error = Some((message.clone(), now, 0));
        true
    }
}

/// Why a connection ended.
enum Ended {
    Shutdown,
    Lost {
        reason: String,
        /// The stream had delivered at least its first heartbeat: backoff starts over.
        established: bool,
        /// The server refused the token.
        unauthenticated: bool,
    },
}

impl Ended {
    /// `token` is removed from the server's words: a server may echo a refused token.
    fn from_status(what: &str, status: &Status, established: bool, token: &str) -> Ended {
        let unauthenticated = status.code() == Code::Unauthenticated;
        let reason = if unauthenticated {
            format!(
                "the puppet service refused the token ({what}: UNAUTHENTICATED {}); check puppet.service.token",
                status.message()
            )
        } else {
            format!("{what}: {}", describe(status))
        };
        let reason = if token.is_empty() {
            reason
        } else {
            reason.replace(token, "(redacted)")
        };
        Ended::Lost {
            reason,
            established,
            unauthenticated,
        }
    }
}

/// A status as a person reads it: the code, the message, and what caused it (the
/// transport's "connection refused" hides in the source chain).
fn describe(status: &Status) -> String {
    let mut text = format!("{:?}", status.code());
    if !status.message().is_empty() {
        text.push_str(": ");
        text.push_str(status.message());
    }
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Worth retrying: the server could not be reached or did not answer in time.
fn transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted
    )
}

pub struct ServicePuppet {
    /// The account this puppet drives (metrics carry it).
    account: String,
    client: Client,
    /// Kept only to scrub it from error messages.
    token: String,
    endpoint: String,
    reconnect: ReconnectSettings,
    session: SessionHandle,
    bot: RwLock<Option<Contact>>,
    contacts: Mutex<HashMap<String, Contact>>,
    rooms: Mutex<HashMap<String, (Room, Vec<String>)>>,
    /// Operations the server answered UNIMPLEMENTED: `GET /v1/capabilities` says so,
    /// and the API refuses them with 501 up front.
    refused: Mutex<std::collections::BTreeSet<&'static str>>,
}

impl ServicePuppet {
    /// Prepares the client; nothing connects until [`Puppet::run`].
    pub fn new(
        account: &str,
        settings: &ServiceSettings,
        session: SessionHandle,
    ) -> anyhow::Result<ServicePuppet> {
        let scheme = if settings.tls { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", settings.endpoint))
            .map_err(|e| anyhow::anyhow!("puppet.service.endpoint: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        if settings.tls {
            let mut tls = ClientTlsConfig::new();
            tls = match &settings.tls_ca {
                Some(path) => {
                    let pem = std::fs::read(path).map_err(|e| {
                        anyhow::anyhow!(
                            "puppet.service.tls_ca: cannot read {}: {e}",
                            path.display()
                        )
                    })?;
                    tls.ca_certificate(Certificate::from_pem(pem))
                }
                None => tls.with_webpki_roots(),
            };
            if let Some(name) = &settings.tls_server_name {
                tls = tls.domain_name(name.clone());
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| anyhow::anyhow!("puppet.service.tls: {e}"))?;
        }
        let mut token: MetadataValue<Ascii> = format!("Wechaty {}", settings.token.expose())
            .parse()
            .map_err(|_| anyhow::anyhow!("puppet.service.token: must be printable ASCII"))?;
        token.set_sensitive(true);
        let client = proto::PuppetClient::with_interceptor(endpoint.connect_lazy(), Token(token));
        Ok(ServicePuppet {
            account: account.to_string(),
            client,
            token: settings.token.expose().to_string(),
            endpoint: settings.endpoint.clone(),
            reconnect: settings.reconnect.clone(),
            session,
            bot: RwLock::new(None),
            contacts: Mutex::new(HashMap::new()),
            rooms: Mutex::new(HashMap::new()),
            refused: Mutex::new(std::collections::BTreeSet::new()),
        })
    }

    /// One unary call with [`CALL_TIMEOUT`].
    async fn call<T>(
        fut: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, Status> {
        match tokio::time::timeout(CALL_TIMEOUT, fut).await {
            Ok(result) => result.map(tonic::Response::into_inner),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no answer from the puppet service within {}s",
                CALL_TIMEOUT.as_secs()
            ))),
        }
    }

    /// One call, retried while the server is unreachable, for a few seconds.
    async fn fetch<T, F, Fut>(&self, op: F) -> Result<T, Status>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut pauses = FETCH_RETRIES.iter();
        loop {
            match Self::call(op(self.client.clone())).await {
                Err(status) if transient(&status) => match pauses.next() {
                    Some(pause) => tokio::time::sleep(*pause).await,
                    None => return Err(status),
                },
                other => return other,
            }
        }
    }

    fn bot_id(&self) -> Option<String> {
        self.bot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|b| b.id.clone())
    }

    /// Marks the bot's own account, which the cache stores like any other.
    fn with_self(&self, mut contact: Contact) -> Contact {
        contact.is_self = self.bot_id().as_deref() == Some(contact.id.as_str());
        if contact.is_self {
            contact.friend = false;
        }
        contact
    }

    async fn contact(&self, id: &str) -> Result<Contact, Status> {
        let cached = self
            .contacts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned();
        if let Some(contact) = cached {
            return Ok(self.with_self(contact));
        }
        let payload = self
            .fetch(|mut c| {
                let id = id.to_string();
                async move { c.contact_payload(proto::ContactPayloadRequest { id }).await }
            })
            .await?;
        let contact = map::contact(payload, false);
        self.contacts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), contact.clone());
        Ok(self.with_self(contact))
    }

    /// A contact for an event: its payload, or just its id when that cannot be read.
    async fn contact_or_id(&self, id: &str) -> Contact {
        match self.contact(id).await {
            Ok(c) => c,
            Err(status) => {
                tracing::warn!(contact = %id, error = %describe(&status), "cannot read a contact payload; relaying its id only");
                let is_self = self.bot_id().as_deref() == Some(id);
                map::unknown_contact(id, is_self)
            }
        }
    }

    async fn room(&self, id: &str) -> Result<(Room, Vec<String>), Status> {
        let cached = self
            .rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned();
        if let Some(room) = cached {
            return Ok(room);
        }
        let payload = self
            .fetch(|mut c| {
                let id = id.to_string();
                async move { c.room_payload(proto::RoomPayloadRequest { id }).await }
            })
            .await?;
        let room = map::room(payload);
        self.rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), room.clone());
        Ok(room)
    }

    fn forget_room(&self, id: &str) {
        self.rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    fn forget_contact(&self, id: &str) {
        self.contacts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Runs the session until `shutdown`: connects, relays, reconnects.
    async fn connect_loop(&self, steps: &mpsc::Sender<Step>, shutdown: &CancellationToken) {
        let mut delay = self.reconnect.initial;
        // Until a stream was established once, a failure is "cannot reach", not "lost".
        let mut ever_established = false;
        self.session.set(
            SessionState::Starting,
            None,
            None,
            Some(format!(
                "connecting to the puppet service at {}",
                self.endpoint
            )),
        );
        loop {
            let Ended::Lost {
                reason,
                established,
                unauthenticated,
            } = self.connect_once(steps, shutdown).await
            else {
                return;
            };
            if established {
                delay = self.reconnect.initial;
                ever_established = true;
            }
            let reason = if ever_established || unauthenticated {
                reason
            } else {
                format!(
                    "cannot reach the puppet service at {}: {reason}",
                    self.endpoint
                )
            };
            let wait = if unauthenticated {
                self.reconnect.max
            } else {
                delay
            };
            if unauthenticated {
                tracing::error!(endpoint = %self.endpoint, retry_in = ?wait, "{reason}");
            } else {
                tracing::warn!(
                    endpoint = %self.endpoint,
                    retry_in = ?wait,
                    reason = %reason,
                    "{}",
                    if ever_established {
                        "lost the puppet service; reconnecting"
                    } else {
                        "cannot reach the puppet service; trying again"
                    }
                );
            }
            metrics::counter!("waas_puppet_disconnects_total", "account" => self.account.clone())
                .increment(1);
            let user = self.session.get().user;
            self.session
                .set(SessionState::Disconnected, None, user, Some(reason.clone()));
            if steps.send(Step::Lost(reason)).await.is_err() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return,
            }
            if !established {
                delay = (delay * 2).min(self.reconnect.max);
            }
        }
    }

    /// One connection: the event stream, `Start`, and dings, until something breaks.
    async fn connect_once(
        &self,
        steps: &mpsc::Sender<Step>,
        shutdown: &CancellationToken,
    ) -> Ended {
        let mut client = self.client.clone();
        let opened = tokio::select! {
            r = Self::call(client.event(proto::EventRequest {})) => r,
            _ = shutdown.cancelled() => return Ended::Shutdown,
        };
        let mut stream = match opened {
            Ok(stream) => stream,
            Err(status) => {
                return Ended::from_status("opening the event stream", &status, false, &self.token);
            }
        };
        tracing::info!(endpoint = %self.endpoint, "event stream open; starting the puppet");
        let mut start_client = self.client.clone();
        let start = Self::call(start_client.start(proto::StartRequest {}));
        tokio::pin!(start);
        let mut started = false;
        let mut established = false;
        let mut last_seen = Instant::now();
        let mut ding =
            tokio::time::interval_at(tokio::time::Instant::now() + DING_EVERY, DING_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ended::Shutdown,
                message = stream.message() => {
                    let event = match message {
                        Ok(Some(event)) => event,
                        Ok(None) => return Ended::Lost {
                            reason: "the puppet service closed the event stream".into(),
                            established,
                            unauthenticated: false,
                        },
                        Err(status) => return Ended::from_status("event stream", &status, established, &self.token),
                    };
                    established = true;
                    last_seen = Instant::now();
                    match map::stream_event(event.r#type, &event.payload) {
                        Ok(StreamEvent::Heartbeat | StreamEvent::Dong) => {}
                        Ok(StreamEvent::Reset { reason }) => {
                            return Ended::Lost {
                                reason: format!(
                                    "the puppet service asked for a reset{}",
                                    reason.map(|r| format!(": {r}")).unwrap_or_default()
                                ),
                                established,
                                unauthenticated: false,
                            };
                        }
                        Ok(StreamEvent::Ignored(kind)) => {
                            tracing::debug!(kind, "ignoring a puppet event type waas does not relay");
                        }
                        Ok(event) => {
                            if steps.capacity() == 0 {
                                tracing::warn!(buffered = STREAM_BUFFER, "the store is behind the puppet's event stream; reading it pauses until events are stored");
                            }
                            if steps.send(Step::Event(event)).await.is_err() {
                                return Ended::Shutdown;
                            }
                        }
                        Err(e) => tracing::warn!(kind = event.r#type, error = %e, "unreadable puppet event"),
                    }
                }
                result = &mut start, if !started => {
                    started = true;
                    match result {
                        Ok(_) => tracing::info!(endpoint = %self.endpoint, "puppet started"),
                        Err(status) => return Ended::from_status("Start", &status, established, &self.token),
                    }
                }
                _ = ding.tick() => {
                    if last_seen.elapsed() > SILENCE_LIMIT {
                        return Ended::Lost {
                            reason: format!("no event or heartbeat from the puppet service for {}s", SILENCE_LIMIT.as_secs()),
                            established,
                            unauthenticated: false,
                        };
                    }
                    let mut client = self.client.clone();
                    tokio::spawn(async move {
                        let ding = proto::DingRequest { data: "waas".into() };
                        if let Err(status) = Self::call(client.ding(ding)).await {
                            tracing::debug!(error = %describe(&status), "ding failed");
                        }
                    });
                }
            }
        }
    }

    /// Fetches what a step needs. Runs up to [`PIPELINE`] at once.
    async fn resolve_step(&self, step: Step) -> Resolved {
        let event = match step {
            Step::Lost(reason) => return Resolved::Lost(reason),
            Step::Event(event) => event,
        };
        match event {
            StreamEvent::Message { id } => match self.message(&id).await {
                Ok(data) => Resolved::record(data),
                Err(status) => {
                    let message = format!(
                        "cannot read message {id} from the puppet service: {}",
                        describe(&status)
                    );
                    tracing::error!("{message}");
                    Resolved::record(EventData::Error { message })
                }
            },
            StreamEvent::Scan { qrcode, status } => Resolved::Scan(Qr {
                payload: qrcode,
                status,
            }),
            StreamEvent::Login { contact_id } => {
                // Known before the contact is read, so that it is marked `self`.
                let bot = map::unknown_contact(&contact_id, true);
                *self.bot.write().unwrap_or_else(|e| e.into_inner()) = Some(bot);
                Resolved::Login(self.contact_or_id(&contact_id).await)
            }
            StreamEvent::Ready => Resolved::Ready,
            StreamEvent::Logout { contact_id, reason } => {
                let user = match contact_id {
                    Some(id) => Some(self.contact_or_id(&id).await),
                    None => None,
                };
                Resolved::Logout { user, reason }
            }
            StreamEvent::Dirty { kind, id } => {
                match kind {
                    Dirty::Contact => self.forget_contact(&id),
                    Dirty::Room | Dirty::RoomMember => self.forget_room(&id),
                    _ => {}
                }
                Resolved::Nothing
            }
            StreamEvent::Friendship { id } => self.friendship(&id).await,
            StreamEvent::RoomJoin {
                room_id,
                invitee_ids,
                inviter_id,
            } => {
                self.forget_room(&room_id);
                let Some(room) = self.event_room(&room_id).await else {
                    return Resolved::Nothing;
                };
                let mut invitees = Vec::with_capacity(invitee_ids.len());
                for id in &invitee_ids {
                    invitees.push(self.contact_or_id(id).await);
                }
                let inviter = self.optional_contact(&inviter_id).await;
                Resolved::record(EventData::RoomJoin {
                    room,
                    invitees,
                    inviter,
                })
            }
            StreamEvent::RoomLeave {
                room_id,
                removee_ids,
                remover_id,
            } => {
                self.forget_room(&room_id);
                let Some(room) = self.event_room(&room_id).await else {
                    return Resolved::Nothing;
                };
                let mut removees = Vec::with_capacity(removee_ids.len());
                for id in &removee_ids {
                    removees.push(self.contact_or_id(id).await);
                }
                let remover = self.optional_contact(&remover_id).await;
                Resolved::record(EventData::RoomLeave {
                    room,
                    removees,
                    remover,
                })
            }
            StreamEvent::RoomTopic {
                room_id,
                old_topic,
                new_topic,
                changer_id,
            } => {
                self.forget_room(&room_id);
                let Some(mut room) = self.event_room(&room_id).await else {
                    return Resolved::Nothing;
                };
                room.topic.clone_from(&new_topic);
                let changer = self.optional_contact(&changer_id).await;
                Resolved::record(EventData::RoomTopic {
                    room,
                    old_topic,
                    new_topic,
                    changer,
                })
            }
            StreamEvent::RoomInvite { id } => self.room_invitation(&id).await,
            StreamEvent::Error { message } => Resolved::record(EventData::Error { message }),
            StreamEvent::Heartbeat
            | StreamEvent::Dong
            | StreamEvent::Reset { .. }
            | StreamEvent::Ignored(_) => Resolved::Nothing,
        }
    }

    async fn optional_contact(&self, id: &str) -> Option<Contact> {
        if id.is_empty() {
            None
        } else {
            Some(self.contact_or_id(id).await)
        }
    }

    /// The room an event names, or a log line saying why it cannot be relayed.
    async fn event_room(&self, id: &str) -> Option<Room> {
        match self.room(id).await {
            Ok((room, _)) => Some(room),
            Err(status) => {
                tracing::error!(room = %id, error = %describe(&status), "cannot read the room of a room event; not relayed");
                None
            }
        }
    }

    async fn message(&self, id: &str) -> Result<EventData, Status> {
        let payload = self
            .fetch(|mut c| {
                let id = id.to_string();
                async move { c.message_payload(proto::MessagePayloadRequest { id }).await }
            })
            .await?;
        let from = self.contact_or_id(&payload.talker_id).await;
        let room = if payload.room_id.is_empty() {
            None
        } else {
            Some(self.room(&payload.room_id).await?.0)
        };
        let to = if room.is_none() && !payload.listener_id.is_empty() {
            Some(self.contact_or_id(&payload.listener_id).await)
        } else {
            None
        };
        let bot_id = self.bot_id().unwrap_or_default();
        Ok(EventData::Message(map::message(
            payload, from, to, room, &bot_id,
        )))
    }

    async fn friendship(&self, id: &str) -> Resolved {
        let payload = self
            .fetch(|mut c| {
                let id = id.to_string();
                async move {
                    c.friendship_payload(proto::FriendshipPayloadRequest { id })
                        .await
                }
            })
            .await;
        match payload {
            Ok(p) => Resolved::record(EventData::Friendship {
                id: p.id,
                kind: map::friendship_kind(p.r#type).to_string(),
                contact: self.contact_or_id(&p.contact_id).await,
                hello: Some(p.hello).filter(|h| !h.is_empty()),
            }),
            Err(status) => {
                let message = format!("cannot read friendship {id}: {}", describe(&status));
                tracing::error!("{message}");
                Resolved::record(EventData::Error { message })
            }
        }
    }

    async fn room_invitation(&self, id: &str) -> Resolved {
        let payload = self
            .fetch(|mut c| {
                let id = id.to_string();
                async move {
                    c.room_invitation_payload(proto::RoomInvitationPayloadRequest { id })
                        .await
                }
            })
            .await;
        match payload {
            Ok(p) => Resolved::record(EventData::RoomInvite {
                id: if p.id.is_empty() {
                    id.to_string()
                } else {
                    p.id
                },
                topic: p.topic,
                inviter: self.contact_or_id(&p.inviter_id).await,
                member_count: u32::try_from(p.member_count).unwrap_or(0),
            }),
            Err(status) => {
                let message = format!("cannot read room invitation {id}: {}", describe(&status));
                tracing::error!("{message}");
                Resolved::record(EventData::Error { message })
            }
        }
    }

    /// Applies resolved steps in stream order: session state, then the store.
    async fn process(self: Arc<Self>, steps: mpsc::Receiver<Step>, ingest: Arc<Ingest>) {
        // What a step needs is fetched by a task of its own, up to PIPELINE at once, in
        // stream order: the next events' payloads are read while a group is being
        // committed, not after (at a steady 1,000 events/s, fetching and committing one
        // after the other queued events behind each other).
        let (ready, mut resolved) = mpsc::channel(RECORD_RUN);
        let this = self.clone();
        tokio::spawn(async move {
            let mut steps = steps;
            let incoming = futures_util::stream::poll_fn(move |cx| steps.poll_recv(cx));
            let mut fetched = incoming
                .map(move |step| {
                    let this = this.clone();
                    async move { this.resolve_step(step).await }
                })
                .buffered(PIPELINE);
            while let Some(step) = fetched.next().await {
                if ready.send(step).await.is_err() {
                    return;
                }
            }
        });
        let mut announced = Announced::default();
        while let Some(step) = resolved.recv().await {
            // The events already fetched behind this one go in the same group commit,
            // in stream order: a burst is stored at the store's pace, not at one
            // commit per event.
            let mut other = None;
            if let Some(first) = plain_record(step, &mut other) {
                let mut run = vec![first];
                while run.len() < RECORD_RUN && other.is_none() {
                    match resolved.try_recv() {
                        Ok(step) => run.extend(plain_record(step, &mut other)),
                        Err(_) => break,
                    }
                }
                record_run(&ingest, run).await;
            }
            if let Some(step) = other {
                self.apply(step, &ingest, &mut announced).await;
            }
        }
    }

    async fn apply(&self, step: Resolved, ingest: &Ingest, announced: &mut Announced) {
        match step {
            Resolved::Nothing => {}
            Resolved::Record(data) => match *data {
                EventData::Error { mut message } => {
                    // Not logged in, the puppet's own words are the best reason there is
                    // (an offline gateway says `ENOTFOUND login.wx.qq.com`).
                    let session = self.session.get();
                    if session.state != SessionState::LoggedIn {
                        self.session.set(
                            session.state,
                            session.qr,
                            session.user,
                            Some(format!("the puppet reports: {message}")),
                        );
                    }
                    if announced.error_is_new(&mut message, Instant::now()) {
                        tracing::warn!(error = %message, "the puppet reported an error");
                        record(ingest, EventData::Error { message }).await;
                    } else {
                        tracing::debug!(error = %message, "the same puppet error again; folded");
                        metrics::counter!("waas_puppet_errors_folded_total", "account" => ingest.account().to_string()).increment(1);
                    }
                }
                data => record(ingest, data).await,
            },
            Resolved::Scan(qr) => {
                announced.login = None;
                announced.ready = false;
                if announced.scan.as_ref() != Some(&qr) {
                    announced.scan = Some(qr.clone());
                    record(
                        ingest,
                        EventData::Scan {
                            payload: qr.payload.clone(),
                            status: qr.status,
                        },
                    )
                    .await;
                }
                self.session.set(
                    SessionState::WaitingForScan,
                    Some(qr),
                    None,
                    Some("waiting for the QR code to be scanned".into()),
                );
            }
            Resolved::Login(user) => {
                ingest.set_bot(BotRef {
                    id: user.id.clone(),
                    name: user.name.clone(),
                });
                *self.bot.write().unwrap_or_else(|e| e.into_inner()) = Some(user.clone());
                announced.scan = None;
                if announced.login.as_deref() != Some(user.id.as_str()) {
                    announced.login = Some(user.id.clone());
                    announced.ready = false;
                    record(ingest, EventData::Login { user: user.clone() }).await;
                    tracing::info!(user = %user.id, name = %user.name, "logged in through the puppet service");
                } else {
                    tracing::info!(user = %user.id, "puppet service reconnected; still logged in");
                }
                self.session
                    .set(SessionState::LoggedIn, None, Some(user), None);
            }
            Resolved::Ready => {
                if announced.login.is_some() && !announced.ready {
                    announced.ready = true;
                    record(ingest, EventData::Ready {}).await;
                }
            }
            Resolved::Logout { user, reason } => {
                announced.login = None;
                announced.ready = false;
                tracing::warn!(reason = ?reason, "the bot was logged out");
                record(
                    ingest,
                    EventData::Logout {
                        user,
                        reason: reason.clone(),
                    },
                )
                .await;
                self.session.set(
                    SessionState::LoggedOut,
                    None,
                    None,
                    Some(format!(
                        "logged out{}",
                        reason.map(|r| format!(": {r}")).unwrap_or_default()
                    )),
                );
            }
            Resolved::Lost(reason) => {
                let user = self.session.get().user;
                self.session
                    .set(SessionState::Disconnected, None, user, Some(reason));
            }
        }
    }

    /// A media download failed: UNIMPLEMENTED is learned like a refused operation.
    fn media_error(&self, status: Status, image: bool) -> PuppetError {
        if unimplemented(&status) {
            self.refused
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert("media.download");
        }
        if transient(&status) {
            return PuppetError::Offline;
        }
        match operation_error(status) {
            PuppetError::NotFound(why) => PuppetError::NotFound(format!(
                "the puppet has no {} for this message: {why}",
                if image { "image" } else { "file" }
            )),
            other => other,
        }
    }

    /// Carries out one operation with the RPCs the protocol has for it.
    async fn operate(&self, action: &Action) -> Result<Option<String>, Status> {
        let mut client = self.client.clone();
        match action {
            Action::Recall { message_id, .. } => {
                let r = Self::call(client.message_recall(proto::MessageRecallRequest {
                    id: message_id.clone(),
                }))
                .await?;
                if r.success {
                    Ok(None)
                } else {
                    Err(Status::failed_precondition(
                        "the puppet could not recall the message (WeChat allows it for two minutes after the send)",
                    ))
                }
            }
            Action::RoomCreate { topic, members } => {
                let r = Self::call(client.room_create(proto::RoomCreateRequest {
                    contact_ids: members.clone(),
                    topic: topic.clone(),
                }))
                .await?;
                Ok(Some(r.id))
            }
            Action::RoomAdd { room, contacts } => {
                for contact in contacts {
                    Self::call(client.room_add(proto::RoomAddRequest {
                        id: room.clone(),
                        contact_id: contact.clone(),
                        invite_only: false,
                    }))
                    .await?;
                }
                self.forget_room(room);
                Ok(None)
            }
            Action::RoomRemove { room, contact } => {
                Self::call(client.room_del(proto::RoomDelRequest {
                    id: room.clone(),
                    contact_id: contact.clone(),
                }))
                .await?;
                self.forget_room(room);
                Ok(None)
            }
            Action::RoomUpdate {
                room,
                topic,
                announce,
            } => {
                if let Some(topic) = topic {
                    Self::call(client.room_topic(proto::RoomTopicRequest {
                        id: room.clone(),
                        topic: Some(topic.clone()),
                    }))
                    .await?;
                }
                if let Some(text) = announce {
                    Self::call(client.room_announce(proto::RoomAnnounceRequest {
                        id: room.clone(),
                        text: Some(text.clone()),
                    }))
                    .await?;
                }
                self.forget_room(room);
                Ok(None)
            }
            Action::RoomQuit { room } => {
                Self::call(client.room_quit(proto::RoomQuitRequest { id: room.clone() })).await?;
                self.forget_room(room);
                Ok(None)
            }
            Action::FriendshipAccept { id } => {
                Self::call(
                    client.friendship_accept(proto::FriendshipAcceptRequest { id: id.clone() }),
                )
                .await?;
                Ok(None)
            }
            Action::FriendshipAdd {
                contact,
                wechat_id,
                phone,
                hello,
            } => {
                let contact_id = match (contact, wechat_id, phone) {
                    (Some(id), _, _) => id.clone(),
                    (None, Some(handle), _) => {
                        Self::call(client.friendship_search_handle(
                            proto::FriendshipSearchHandleRequest {
                                weixin: handle.clone(),
                            },
                        ))
                        .await?
                        .contact_id
                    }
                    (None, None, Some(phone)) => {
                        Self::call(client.friendship_search_phone(
                            proto::FriendshipSearchPhoneRequest {
                                phone: phone.clone(),
                            },
                        ))
                        .await?
                        .contact_id
                    }
                    (None, None, None) => String::new(),
                };
                if contact_id.is_empty() {
                    return Err(Status::not_found(
                        "WeChat found nobody with that WeChat id or phone number",
                    ));
                }
                Self::call(client.friendship_add(proto::FriendshipAddRequest {
                    contact_id,
                    hello: hello.clone(),
                }))
                .await?;
                Ok(None)
            }
            Action::RoomInvitationAccept { id } => {
                Self::call(
                    client.room_invitation_accept(proto::RoomInvitationAcceptRequest {
                        id: id.clone(),
                    }),
                )
                .await?;
                Ok(None)
            }
            Action::ContactAlias { contact, alias } => {
                Self::call(client.contact_alias(proto::ContactAliasRequest {
                    id: contact.clone(),
                    alias: Some(alias.clone().unwrap_or_default()),
                }))
                .await?;
                self.forget_contact(contact);
                Ok(None)
            }
        }
    }

    fn online(&self) -> Result<(), PuppetError> {
        if self.session.state() == SessionState::LoggedIn {
            Ok(())
        } else {
            Err(PuppetError::Offline)
        }
    }

    /// Every contact's payload, read `PIPELINE` at a time; unreadable ones are skipped.
    async fn contacts_by_id(&self, ids: Vec<String>) -> Vec<Contact> {
        futures_util::stream::iter(ids)
            .map(|id| async move { self.contact(&id).await.ok() })
            .buffered(PIPELINE)
            .filter_map(|c| async move { c })
            .collect()
            .await
    }

    async fn all_rooms(&self) -> Result<Vec<(Room, Vec<String>)>, PuppetError> {
        let ids = Self::call(self.client.clone().room_list(proto::RoomListRequest {}))
            .await
            .map_err(directory_error)?
            .ids;
        Ok(futures_util::stream::iter(ids)
            .map(|id| async move { self.room(&id).await.ok() })
            .buffered(PIPELINE)
            .filter_map(|r| async move { r })
            .collect()
            .await)
    }

    /// How a member is written after `@` in a room: their room alias, else their name.
    async fn member_name(&self, room_id: &str, member_id: &str) -> Result<String, PuppetError> {
        let (_, members) = self
            .room(room_id)
            .await
            .map_err(|s| lookup_error(s, format!("no room `{room_id}`")))?;
        if !members.iter().any(|m| m == member_id) {
            return Err(PuppetError::NotFound(format!(
                "`{member_id}` is not a member of {room_id}"
            )));
        }
        let member = Self::call(self.client.clone().room_member_payload(
            proto::RoomMemberPayloadRequest {
                id: room_id.to_string(),
                member_id: member_id.to_string(),
            },
        ))
        .await;
        if let Ok(m) = member {
            if !m.room_alias.is_empty() {
                return Ok(m.room_alias);
            }
            if !m.name.is_empty() {
                return Ok(m.name);
            }
        }
        let contact = self
            .contact(member_id)
            .await
            .map_err(|s| lookup_error(s, format!("no contact `{member_id}`")))?;
        Ok(contact.alias.unwrap_or(contact.name))
    }
}

/// A step that is a plain event to record (not a puppet error, which is folded first);
/// any other step is left in `other`.
fn plain_record(step: Resolved, other: &mut Option<Resolved>) -> Option<EventData> {
    match step {
        Resolved::Record(data) if !matches!(*data, EventData::Error { .. }) => Some(*data),
        step => {
            *other = Some(step);
            None
        }
    }
}

/// Stores a run of events in stream order, together. Should the store refuse one for
/// now, it and the ones after it that were refused go again one by one, in order.
async fn record_run(ingest: &Ingest, run: Vec<EventData>) {
    if run.len() == 1 {
        for data in run {
            record(ingest, data).await;
        }
        return;
    }
    let results = ingest.record_all(run.clone()).await;
    for (data, result) in run.into_iter().zip(results) {
        match result {
            Ok(_) => {}
            Err(e) if e.is_transient() => record(ingest, data).await,
            Err(e) => {
                tracing::error!(event_type = %data.event_type(), error = %e, "could not store a puppet event")
            }
        }
    }
}

/// Stores what the puppet reported. The stream has no acknowledgement to withhold, so
/// an event the store refuses (a full disk) is held here and written again until the
/// store takes it; the stream waits meanwhile, in order, rather than lose it.
async fn record(ingest: &Ingest, data: EventData) {
    let kind = data.event_type();
    let never = CancellationToken::new();
    if let Some(Err(e)) =
        crate::store::until_stored("a puppet event", kind.as_str(), &never, || {
            ingest.record(data.clone())
        })
        .await
    {
        tracing::error!(event_type = %kind, error = %e, "could not store a puppet event");
    }
}

/// A lookup failed: unreachable is `Offline`; anything else means it does not exist.
fn lookup_error(status: Status, not_found: String) -> PuppetError {
    if transient(&status) {
        PuppetError::Offline
    } else {
        PuppetError::NotFound(not_found)
    }
}

fn directory_error(status: Status) -> PuppetError {
    if transient(&status) {
        PuppetError::Offline
    } else {
        PuppetError::Failed(format!("the puppet service: {}", describe(&status)))
    }
}

/// The server cannot do this at all: UNIMPLEMENTED, or wechaty-puppet-service's answer
/// when its puppet lacks the method (`UNKNOWN`, "TypeError: puppet.x is not a
/// function").
fn unimplemented(status: &Status) -> bool {
    status.code() == Code::Unimplemented
        || (status.code() == Code::Unknown && status.message().contains("is not a function"))
}

/// The next chunk of a media stream, or a timeout error when none comes in time.
async fn next_chunk(
    chunks: &mut BoxStream<'static, Result<Option<proto::FileBoxChunk>, Status>>,
) -> Option<Result<Option<proto::FileBoxChunk>, Status>> {
    match tokio::time::timeout(CALL_TIMEOUT, chunks.next()).await {
        Ok(next) => next,
        Err(_) => Some(Err(Status::deadline_exceeded(format!(
            "no part of the file came within {}s",
            CALL_TIMEOUT.as_secs()
        )))),
    }
}

/// An operation failed: UNIMPLEMENTED means this puppet cannot do it at all (learned
/// for `GET /v1/capabilities`); a missing or refused target will not change; anything
/// else may pass and is retried.
fn operation_error(status: Status) -> PuppetError {
    if unimplemented(&status) {
        return PuppetError::NotSupported(format!(
            "the puppet service does not implement this: {}",
            describe(&status)
        ));
    }
    match status.code() {
        Code::Unimplemented => PuppetError::NotSupported(format!(
            "the puppet service does not implement this: {}",
            describe(&status)
        )),
        Code::NotFound | Code::InvalidArgument | Code::FailedPrecondition => {
            PuppetError::NotFound(describe(&status))
        }
        _ => PuppetError::Failed(format!("the puppet service: {}", describe(&status))),
    }
}

/// A send failed. Unreachable servers and unexplained errors may pass: `Failed`, which
/// the sender retries with backoff; a missing recipient will not.
fn send_error(status: Status) -> PuppetError {
    match status.code() {
        Code::NotFound | Code::InvalidArgument => PuppetError::NotFound(describe(&status)),
        _ => PuppetError::Failed(format!("the puppet service: {}", describe(&status))),
    }
}

#[async_trait]
impl Puppet for ServicePuppet {
    fn kind(&self) -> PuppetKind {
        PuppetKind::Service
    }

    async fn run(self: Arc<Self>, ingest: Arc<Ingest>, shutdown: CancellationToken) {
        let (steps, incoming) = mpsc::channel(STREAM_BUFFER);
        let processor = tokio::spawn(self.clone().process(incoming, ingest));
        self.connect_loop(&steps, &shutdown).await;
        drop(steps);
        // What the stream delivered is stored if the store still answers in time.
        if tokio::time::timeout(Duration::from_secs(5), processor)
            .await
            .is_err()
        {
            tracing::warn!("gave up storing the last puppet events at shutdown");
        }
    }

    async fn resolve(&self, to: &Recipient) -> Result<Conversation, PuppetError> {
        self.online()?;
        match to {
            Recipient::Contact(id) => self
                .contact(id)
                .await
                .map(|c| Conversation::Contact(c.id))
                .map_err(|s| lookup_error(s, format!("no contact `{id}`"))),
            Recipient::Room(id) => self
                .room(id)
                .await
                .map(|(r, _)| Conversation::Room(r.id))
                .map_err(|s| lookup_error(s, format!("no room `{id}`"))),
            Recipient::ContactName(name) => self
                .contacts()
                .await?
                .into_iter()
                .find(|c| c.name == *name || c.alias.as_ref() == Some(name))
                .map(|c| Conversation::Contact(c.id))
                .ok_or_else(|| PuppetError::NotFound(format!("no contact named `{name}`"))),
            Recipient::RoomTopic(topic) => self
                .all_rooms()
                .await?
                .into_iter()
                .find(|(r, _)| r.topic == *topic)
                .map(|(r, _)| Conversation::Room(r.id))
                .ok_or_else(|| PuppetError::NotFound(format!("no room with topic `{topic}`"))),
        }
    }

    async fn contacts(&self) -> Result<Vec<Contact>, PuppetError> {
        self.online()?;
        let ids = Self::call(
            self.client
                .clone()
                .contact_list(proto::ContactListRequest {}),
        )
        .await
        .map_err(directory_error)?
        .ids;
        let mut contacts = self.contacts_by_id(ids).await;
        contacts.retain(|c| !c.is_self);
        Ok(contacts)
    }

    async fn rooms(&self) -> Result<Vec<Room>, PuppetError> {
        self.online()?;
        Ok(self
            .all_rooms()
            .await?
            .into_iter()
            .map(|(r, _)| r)
            .collect())
    }

    async fn room_members(&self, room_id: &str) -> Result<Vec<Contact>, PuppetError> {
        self.online()?;
        let ids = Self::call(
            self.client
                .clone()
                .room_member_list(proto::RoomMemberListRequest {
                    id: room_id.to_string(),
                }),
        )
        .await
        .map_err(|s| lookup_error(s, format!("no room `{room_id}`")))?
        .member_ids;
        Ok(self.contacts_by_id(ids).await)
    }

    fn capabilities(&self) -> Capabilities {
        let mut all = all_supported();
        for op in self
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            all.insert(op, false);
        }
        all
    }

    async fn media(
        &self,
        message_id: &str,
        image: Option<ImageSize>,
    ) -> Result<MediaFile, PuppetError> {
        self.online()?;
        let mut client = self.client.clone();
        let id = message_id.to_string();
        let chunks: BoxStream<'static, Result<Option<proto::FileBoxChunk>, Status>> = match image {
            None => Self::call(client.message_file_stream(proto::MessageFileStreamRequest { id }))
                .await
                .map(|s| s.map(|r| r.map(|m| m.file_box_chunk)).boxed()),
            Some(size) => Self::call(client.message_image_stream(
                proto::MessageImageStreamRequest {
                    id,
                    r#type: match size {
                        ImageSize::Thumbnail => proto::ImageType::Thumbnail,
                        ImageSize::Hd => proto::ImageType::Hd,
                        ImageSize::Artwork => proto::ImageType::Artwork,
                    } as i32,
                },
            ))
            .await
            .map(|s| s.map(|r| r.map(|m| m.file_box_chunk)).boxed()),
        }
        .map_err(|status| self.media_error(status, image.is_some()))?;
        // The first chunk names the file; the rest carry its bytes. Each must come
        // within CALL_TIMEOUT of the one before.
        let mut chunks = chunks;
        let mut name = String::new();
        let mut first = None;
        while let Some(next) = next_chunk(&mut chunks).await {
            let chunk = next.map_err(|status| self.media_error(status, image.is_some()))?;
            let Some(chunk) = chunk else { continue };
            if let Some(n) = chunk.name {
                name = n;
            }
            if let Some(data) = chunk.data {
                first = Some(Bytes::from(data));
                break;
            }
            if !name.is_empty() {
                break;
            }
        }
        let rest = futures_util::stream::unfold(chunks, |mut chunks| async move {
            let next = next_chunk(&mut chunks).await?;
            Some((next, chunks))
        })
        .filter_map(|next| async move {
            match next {
                Ok(chunk) => chunk.and_then(|c| c.data).map(|d| Ok(Bytes::from(d))),
                Err(status) => Some(Err(PuppetError::Failed(format!(
                    "the puppet service stopped sending the file: {}",
                    describe(&status)
                )))),
            }
        });
        let body = futures_util::stream::iter(first.map(Ok))
            .chain(rest)
            .boxed();
        Ok(MediaFile {
            name,
            size: None,
            body,
        })
    }

    async fn perform(&self, action: &Action) -> Result<Option<String>, PuppetError> {
        self.online()?;
        let result = self.operate(action).await;
        if let Err(status) = &result
            && unimplemented(status)
        {
            let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
            for op in action.operations() {
                if refused.insert(op) {
                    tracing::warn!(account = %self.account, operation = op, "the puppet service does not implement this operation; GET /v1/capabilities now says so");
                }
            }
        }
        result.map_err(operation_error)
    }

    async fn send(&self, to: &Conversation, content: &Content) -> Result<String, PuppetError> {
        self.online()?;
        let conversation_id = to.id().to_string();
        let mut client = self.client.clone();
        let sent = match content {
            Content::Text { text, mentions } => {
                let text = if mentions.is_empty() {
                    text.clone()
                } else {
                    let Conversation::Room(room_id) = to else {
                        return Err(PuppetError::NotFound("mentions work in rooms only".into()));
                    };
                    let mut names = Vec::with_capacity(mentions.len());
                    for id in mentions {
                        names.push(self.member_name(room_id, id).await?);
                    }
                    map::mention_text(text, &names)
                };
                Self::call(client.message_send_text(proto::MessageSendTextRequest {
                    conversation_id,
                    text,
                    mentional_ids: mentions.clone(),
                }))
                .await
                .map(|r| r.id)
            }
            Content::Link(link) => {
                Self::call(client.message_send_url(proto::MessageSendUrlRequest {
                    conversation_id,
                    url_link: Some(proto::UrlLinkPayload {
                        url: link.url.clone(),
                        title: link.title.clone(),
                        description: link.description.clone().unwrap_or_default(),
                        thumbnail_url: link.thumbnail_url.clone().unwrap_or_default(),
                    }),
                }))
                .await
                .map(|r| r.id)
            }
            // Puppets send a file box with an image's MIME type as a WeChat image.
            Content::File(file) | Content::Image(file) => {
                let file_box = map::file_box(file).map_err(PuppetError::NotFound)?;
                Self::call(client.message_send_file(proto::MessageSendFileRequest {
                    conversation_id,
                    file_box,
                }))
                .await
                .map(|r| r.id)
            }
            Content::Upload(upload) => {
                let file = tokio::fs::File::open(&upload.path).await.map_err(|e| {
                    PuppetError::NotFound(format!("the uploaded file is gone ({e})"))
                })?;
                let head = [
                    proto::MessageSendFileStreamRequest {
                        conversation_id: Some(conversation_id),
                        file_box_chunk: None,
                    },
                    proto::MessageSendFileStreamRequest {
                        conversation_id: None,
                        file_box_chunk: Some(proto::FileBoxChunk {
                            data: None,
                            name: Some(upload.name.clone()),
                        }),
                    },
                ];
                // A read error ends the stream early; the send then fails, named.
                let unreadable = Arc::new(Mutex::new(None::<std::io::Error>));
                let seen = unreadable.clone();
                let body = tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024)
                    .take_while(move |r| {
                        let ok = match r {
                            Ok(_) => true,
                            Err(e) => {
                                *seen.lock().unwrap_or_else(|p| p.into_inner()) =
                                    Some(std::io::Error::new(e.kind(), e.to_string()));
                                false
                            }
                        };
                        std::future::ready(ok)
                    })
                    .filter_map(|r| std::future::ready(r.ok()))
                    .map(|bytes| proto::MessageSendFileStreamRequest {
                        conversation_id: None,
                        file_box_chunk: Some(proto::FileBoxChunk {
                            data: Some(bytes.to_vec()),
                            name: None,
                        }),
                    });
                let requests = futures_util::stream::iter(head).chain(body);
                // A large file takes longer than one call's timeout: a second per MB more.
                let limit = CALL_TIMEOUT + Duration::from_secs(upload.size / 1_000_000);
                let sent =
                    match tokio::time::timeout(limit, client.message_send_file_stream(requests))
                        .await
                    {
                        Ok(r) => r.map(|r| r.into_inner().id),
                        Err(_) => Err(Status::deadline_exceeded(format!(
                            "the puppet service took over {}s to take the file",
                            limit.as_secs()
                        ))),
                    };
                if let Some(e) = unreadable.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    tracing::error!(path = %upload.path.display(), error = %e, "an upload could not be read while it was sent");
                    return Err(PuppetError::Failed(format!(
                        "reading the uploaded file failed: {e}"
                    )));
                }
                sent
            }
            Content::ContactCard(contact_id) => Self::call(client.message_send_contact(
                proto::MessageSendContactRequest {
                    conversation_id,
                    contact_id: contact_id.clone(),
                },
            ))
            .await
            .map(|r| r.id),
        };
        // Some puppets do not report the id of what they sent; the send still happened.
        sent.map_err(send_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_puppet_errors_are_folded_for_a_minute() {
        let mut announced = Announced::default();
        let t0 = Instant::now();
        let mut first = "cannot reach WeChat".to_string();
        assert!(announced.error_is_new(&mut first, t0));
        assert_eq!(first, "cannot reach WeChat");
        for i in 1..=5 {
            let mut again = "cannot reach WeChat".to_string();
            assert!(!announced.error_is_new(&mut again, t0 + Duration::from_secs(i)));
        }
        let mut other = "another failure".to_string();
        assert!(announced.error_is_new(&mut other, t0 + Duration::from_secs(6)));
        let mut back = "another failure".to_string();
        assert!(!announced.error_is_new(&mut back, t0 + Duration::from_secs(7)));
        let mut later = "another failure".to_string();
        assert!(announced.error_is_new(&mut later, t0 + Duration::from_secs(70)));
        assert_eq!(
            later,
            "another failure (repeated 1 more times in the last minute)"
        );
    }

    #[test]
    fn refused_tokens_are_scrubbed_from_reasons() {
        let status = Status::unauthenticated("Invalid Wechaty TOKEN \"s3cret_token\"");
        let Ended::Lost {
            reason,
            unauthenticated,
            ..
        } = Ended::from_status("opening the event stream", &status, false, "s3cret_token")
        else {
            panic!("a refusal ends the connection");
        };
        assert!(unauthenticated);
        assert!(!reason.contains("s3cret_token"), "{reason}");
        assert!(reason.contains("puppet.service.token"), "{reason}");
    }
}
