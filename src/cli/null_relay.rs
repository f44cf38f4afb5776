//! The null relay: the ceiling `waas bench --http` and `--grpc` measure waas against.
//!
//! It has waas's shape and none of its guarantees: it takes the same inject request
//! (`POST /v1/mock/messages`, answered 201) or reads the same gRPC event stream of a
//! puppet service (`MessagePayload`, then the talker and the room, each read once), and
//! sends the same Standard Webhooks event (the same body layout, signed the same way) to
//! one webhook, up to `--max-in-flight` at once, retrying in memory. Nothing is stored:
//! it answers before anything is written anywhere, and a crash loses all it holds. It
//! runs as its own process (a hidden `waas null-relay` command) so that its CPU time is
//! measured apart from the load generator's, as waas's is.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use waas::event::{format_millis, new_event_id, now_millis};
use waas::puppet::service::map::{StreamEvent, stream_event};
use waas::puppet::service::proto;
use waas::relay::format::standard;
use waas::relay::signing::{
    SigningKey, WEBHOOK_ID, WEBHOOK_SIGNATURE, WEBHOOK_TIMESTAMP, signature_header,
};
use waas::store::StoredEvent;

#[derive(clap::Args, Debug)]
pub struct NullRelayArgs {
    /// Where to take inject requests (and `GET /readyz`).
    #[arg(long)]
    listen: String,
    /// The webhook every event is sent to.
    #[arg(long)]
    webhook: String,
    /// The webhook's `whsec_` secret.
    #[arg(long)]
    secret: String,
    /// Read events from this puppet service (host:port, plaintext) instead of taking
    /// inject requests.
    #[arg(long)]
    puppet_service: Option<String>,
    /// The puppet service token.
    #[arg(long, default_value = "insecure_waas_test")]
    token: String,
    /// Webhook requests in flight at once.
    #[arg(long, default_value_t = 32)]
    max_in_flight: usize,
}

const BOT: &str = r#"{"id":"bot-user","name":"MockBot"}"#;

struct Null {
    client: reqwest::Client,
    webhook: String,
    keys: Vec<SigningKey>,
    slots: Semaphore,
    seq: AtomicI64,
    ready: AtomicBool,
}

impl Null {
    /// Hands `data` to a webhook request; answers the event id at once.
    fn relay(self: &Arc<Self>, data_json: String) -> String {
        let event = StoredEvent {
            id: new_event_id(),
            event_type: "message".into(),
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            created_at: now_millis(),
            account: "default".into(),
            bot_json: BOT.into(),
            data_json,
        };
        let id = event.id.clone();
        let this = self.clone();
        tokio::spawn(async move {
            let Ok(_slot) = this.slots.acquire().await else {
                return;
            };
            let body = bytes::Bytes::from(standard::body(&event));
            loop {
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                let signature = signature_header(&this.keys, &event.id, now, &body);
                let sent = this
                    .client
                    .post(&this.webhook)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header(WEBHOOK_ID, &event.id)
                    .header(WEBHOOK_TIMESTAMP, now.to_string())
                    .header(WEBHOOK_SIGNATURE, signature)
                    .body(body.clone())
                    .send()
                    .await;
                if let Ok(response) = sent
                    && response.status().is_success()
                {
                    let _ = response.bytes().await;
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        id
    }
}

fn contact(id: &str, name: &str) -> Value {
    json!({"id": id, "name": name, "alias": null, "friend": true, "gender": "unknown",
           "province": null, "city": null, "avatar": null, "self": id == "bot-user"})
}

fn message(id: &str, text: &str, from: Value, room: Option<Value>, mentions: &[String]) -> String {
    let to = room.is_none().then(|| contact("bot-user", "MockBot"));
    json!({"id": id, "kind": "text", "text": text, "from": from, "to": to, "room": room,
           "mentions": mentions, "mentions_self": mentions.iter().any(|m| m == "bot-user"),
           "sent_at": format_millis(now_millis())})
    .to_string()
}

/// The inject request of `POST /v1/mock/messages`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Inject {
    from: String,
    #[serde(default)]
    room: Option<String>,
    text: String,
    #[serde(default)]
    mentions: Vec<String>,
    #[serde(default)]
    id: Option<String>,
}

/// The mock puppet's default world.
fn known(id: &str) -> Option<&'static str> {
    match id {
        "alice" => Some("Alice"),
        "bob" => Some("Bob"),
        "carol" => Some("Carol"),
        _ => None,
    }
}

async fn inject(State(null): State<Arc<Null>>, Json(body): Json<Inject>) -> impl IntoResponse {
    let Some(name) = known(&body.from) else {
        return (
            StatusCode::NOT_FOUND,
            Json(
                json!({"error": {"code": "not_found", "message": format!("no contact `{}`", body.from)}}),
            ),
        );
    };
    let room = match body.room.as_deref() {
        None => None,
        Some("room1@chatroom") => {
            Some(json!({"id": "room1@chatroom", "topic": "Mock Room", "member_count": 4}))
        }
        Some(other) => {
            return (
                StatusCode::NOT_FOUND,
                Json(
                    json!({"error": {"code": "not_found", "message": format!("no room `{other}`")}}),
                ),
            );
        }
    };
    let message_id = body
        .id
        .unwrap_or_else(|| format!("mock-{}", ulid::Ulid::new()));
    let data = message(
        &message_id,
        &body.text,
        contact(&body.from, name),
        room,
        &body.mentions,
    );
    let event_id = null.relay(data);
    (
        StatusCode::CREATED,
        Json(json!({"event_id": event_id, "message_id": message_id})),
    )
}

async fn readyz(State(null): State<Arc<Null>>) -> StatusCode {
    if null.ready.load(Ordering::Relaxed) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

pub async fn run(args: NullRelayArgs) -> anyhow::Result<()> {
    waas::install_crypto_provider();
    let null = Arc::new(Null {
        client: reqwest::Client::builder().tcp_nodelay(true).build()?,
        webhook: args.webhook.clone(),
        keys: vec![SigningKey::parse(&args.secret).context("--secret")?],
        slots: Semaphore::new(args.max_in_flight.max(1)),
        seq: AtomicI64::new(0),
        ready: AtomicBool::new(args.puppet_service.is_none()),
    });
    let app = axum::Router::new()
        .route("/v1/mock/messages", post(inject))
        .route("/readyz", get(readyz))
        .with_state(null.clone());
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    match args.puppet_service {
        Some(endpoint) => follow(null, &endpoint, &args.token).await,
        None => Ok(server.await??),
    }
}

/// Adds `authorization: Wechaty <token>` to every call.
#[derive(Clone)]
struct Token(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Token {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

type Client = proto::PuppetClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Token>,
>;

/// Reads the puppet service's event stream and relays each message.
async fn follow(null: Arc<Null>, endpoint: &str, token: &str) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("cannot reach the puppet service at {endpoint}"))?;
    let client: Client =
        proto::PuppetClient::with_interceptor(channel, Token(format!("Wechaty {token}").parse()?));
    let mut stream = client
        .clone()
        .event(proto::EventRequest {})
        .await?
        .into_inner();
    client.clone().start(proto::StartRequest {}).await?;
    null.ready.store(true, Ordering::Relaxed);
    let names = Arc::new(Mutex::new(HashMap::<String, Value>::new()));
    let fetches = Arc::new(Semaphore::new(16));
    while let Some(event) = stream.message().await? {
        let Ok(StreamEvent::Message { id }) = stream_event(event.r#type, &event.payload) else {
            continue;
        };
        let (null, names, fetches, mut client) =
            (null.clone(), names.clone(), fetches.clone(), client.clone());
        tokio::spawn(async move {
            let Ok(_slot) = fetches.acquire().await else {
                return;
            };
            let Ok(payload) = client
                .message_payload(proto::MessagePayloadRequest { id: id.clone() })
                .await
                .map(tonic::Response::into_inner)
            else {
                return;
            };
            let from = known_or_fetch(&mut client, &names, &payload.talker_id, false).await;
            let room = if payload.room_id.is_empty() {
                None
            } else {
                Some(known_or_fetch(&mut client, &names, &payload.room_id, true).await)
            };
            null.relay(message(
                &payload.id,
                &payload.text,
                from,
                room,
                &payload.mention_ids,
            ));
        });
    }
    Ok(())
}

/// A contact or room, read from the puppet service the first time it is seen.
async fn known_or_fetch(
    client: &mut Client,
    names: &Mutex<HashMap<String, Value>>,
    id: &str,
    room: bool,
) -> Value {
    if let Some(v) = names.lock().unwrap_or_else(|e| e.into_inner()).get(id) {
        return v.clone();
    }
    let value = if room {
        match client
            .room_payload(proto::RoomPayloadRequest { id: id.into() })
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                json!({"id": id, "topic": r.topic, "member_count": r.member_ids.len()})
            }
            Err(_) => json!({"id": id, "topic": "", "member_count": 0}),
        }
    } else {
        match client
            .contact_payload(proto::ContactPayloadRequest { id: id.into() })
            .await
        {
            Ok(c) => contact(id, &c.into_inner().name),
            Err(_) => contact(id, id),
        }
    };
    names
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id.to_string(), value.clone());
    value
}
