//! The OpenAPI description of the API, generated from the handlers' annotations and the
//! types they answer with. Served at `GET /openapi.json`, printed by `waas openapi`,
//! and checked in at `docs/openapi.json` (a test fails when they differ).
//!
//! Every operation may also answer the contract's errors (`{"error":{"code","message"}}`):
//! [`Errors`] adds them once for all instead of on each handler. The original polling
//! routes (`/api/…`, `/t/{token}/api/…`) are kept for old clients and left out.

use axum::Json;
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

use super::{
    deliveries, directory, events, health, media, messages, mock, operations, session, webhooks,
};

/// Every error answer.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable: `invalid_json`, `unauthorized`, `invalid_signature`,
    /// `stale_timestamp`, `not_found`, `method_not_allowed`, `idempotency_conflict`,
    /// `payload_too_large`, `unsupported_media_type`, `invalid_request`, `not_ready`,
    /// `timeout`, `internal_error`.
    #[schema(example = "invalid_request")]
    pub code: String,
    /// What went wrong and what to change, for people.
    pub message: String,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "waas",
        description = "WeChat as a service: one WeChat bot session (through a Wechaty puppet) \
                       as plain HTTP. Inbound events are pushed to webhooks (Standard Webhooks \
                       signatures) and can be pulled here; messages are sent with POST /v1/messages.",
        license(name = "Apache-2.0")
    ),
    paths(
        health::healthz,
        health::readyz,
        health::metrics,
        openapi_json,
        session::session,
        session::qr,
        session::accounts,
        session::cluster,
        messages::send,
        messages::status,
        events::pull,
        events::stream,
        directory::contacts,
        directory::contact,
        directory::rooms,
        directory::room,
        directory::members,
        webhooks::list,
        webhooks::test,
        webhooks::replay,
        webhooks::replay_progress,
        webhooks::enable,
        deliveries::list,
        deliveries::retry,
        media::download,
        operations::create_room,
        operations::add_members,
        operations::remove_member,
        operations::update_room,
        operations::quit_room,
        operations::add_friend,
        operations::accept_friendship,
        operations::accept_invitation,
        operations::update_contact,
        operations::recall,
        operations::operation,
        operations::capabilities,
        mock::inject,
        mock::sent,
        mock::scan,
        mock::friend_request,
        mock::friend_requests,
        mock::room_invitation,
    ),
    components(schemas(ErrorBody, ErrorDetail, crate::media::ImageSize)),
    modifiers(&Errors),
    tags(
        (name = "health", description = "Liveness, readiness, metrics (no auth)"),
        (name = "session", description = "The WeChat login"),
        (name = "messages", description = "Sending as the bot"),
        (name = "events", description = "Inbound events, pulled or streamed"),
        (name = "directory", description = "Contacts and rooms"),
        (name = "rooms", description = "Changing rooms, and the outcome of operations"),
        (name = "friendships", description = "Friend requests"),
        (name = "webhooks", description = "Webhook health and administration"),
        (name = "deliveries", description = "Webhook deliveries and their attempts"),
        (name = "mock", description = "The simulated account (puppet.kind = \"mock\" only)"),
    )
)]
pub struct ApiDoc;

/// The description, with this build's version and the cross-field rules.
pub fn spec() -> Value {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    let mut spec = serde_json::to_value(doc).unwrap_or_default();
    refine(&mut spec["components"]["schemas"]);
    scope_by_account(&mut spec["paths"]);
    spec
}

/// As pretty JSON, the form checked in at `docs/openapi.json`.
pub fn spec_json() -> String {
    let mut text = serde_json::to_string_pretty(&spec()).unwrap_or_default();
    text.push('\n');
    text
}

/// The routes that act on one account, also under `/v1/accounts/{account}`.
const ACCOUNT_SCOPED: &[&str] = &[
    "/v1/session",
    "/v1/session/qr.svg",
    "/v1/contacts",
    "/v1/contacts/{id}",
    "/v1/rooms",
    "/v1/rooms/{id}",
    "/v1/rooms/{id}/members",
    "/v1/rooms/{id}/members/{contact}",
    "/v1/rooms/{id}/quit",
    "/v1/messages",
    "/v1/messages/{id}",
    "/v1/friendships",
    "/v1/friendships/{id}/accept",
    "/v1/room-invitations/{id}/accept",
    "/v1/capabilities",
    "/v1/mock/messages",
    "/v1/mock/sent",
    "/v1/mock/scan",
    "/v1/mock/friendships",
    "/v1/mock/room-invitations",
];

/// Adds `/v1/accounts/{account}/…` for each account-scoped route: the same operation,
/// for the account named in the path (the unscoped form acts on the only account, or
/// the one named `default`).
fn scope_by_account(paths: &mut Value) {
    let Some(paths) = paths.as_object_mut() else {
        return;
    };
    let account = json!({
        "name": "account",
        "in": "path",
        "required": true,
        "description": "The account's `name` (GET /v1/accounts lists them)",
        "schema": {"type": "string"}
    });
    for path in ACCOUNT_SCOPED {
        let Some(mut item) = paths.get(*path).cloned() else {
            continue;
        };
        if let Some(ops) = item.as_object_mut() {
            for op in ops.values_mut() {
                if let Some(id) = op["operationId"].as_str() {
                    op["operationId"] = json!(format!("{id}_in_account"));
                }
                match op["parameters"].as_array_mut() {
                    Some(params) => params.insert(0, account.clone()),
                    None => op["parameters"] = json!([account.clone()]),
                }
            }
        }
        let scoped = format!("/v1/accounts/{{account}}{}", &path["/v1".len()..]);
        paths.insert(scoped, item);
    }
}

/// Request bodies whose rules span several fields ("exactly one of", "goes with"),
/// which the derived schemas cannot say. Each mirrors the check in the handler that
/// answers 422, so a body valid here is accepted there.
fn refine(schemas: &mut Value) {
    let non_blank = json!({"type": "string", "pattern": "\\S"});
    schemas["SendBody"] = json!({
        "description": "The body of `POST /v1/messages`: `to`, and exactly one of `text` \
                        (with optional `mentions`, rooms only), `link`, `file`, `image`, `contact_card`. \
                        A file may instead be uploaded as `multipart/form-data`.",
        "type": "object",
        "required": ["to"],
        "additionalProperties": false,
        "properties": {
            "to": {"$ref": "#/components/schemas/Recipient"},
            "text": non_blank,
            "mentions": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Contact ids to @-mention (rooms only, with `text`)."
            },
            "link": {"$ref": "#/components/schemas/Link"},
            "file": {"$ref": "#/components/schemas/FileRef"},
            "image": {"$ref": "#/components/schemas/ImageRef"},
            "contact_card": {
                "type": "string",
                "minLength": 1,
                "description": "The id of a contact whose card to share."
            }
        },
        "oneOf": [
            {"required": ["text"]},
            {"required": ["link"]},
            {"required": ["file"]},
            {"required": ["image"]},
            {"required": ["contact_card"]}
        ],
        "dependentRequired": {"mentions": ["text"]}
    });
    schemas["Link"] = json!({
        "description": "A link card.",
        "type": "object",
        "required": ["url", "title"],
        "additionalProperties": false,
        "properties": {
            "url": {"type": "string", "pattern": "^https?://"},
            "title": {"type": "string"},
            "description": {"type": "string"},
            "thumbnail_url": {"type": "string", "pattern": "^https?://[A-Za-z][A-Za-z0-9-]{0,30}(\\.[A-Za-z][A-Za-z0-9-]{0,30})*\\.(com|org|net|io|cn|dev|app)(:[1-9][0-9]{0,3})?(/[A-Za-z0-9._~%/-]*)?$", "description": "Fetched by the gateway: an http(s) URL of a public host (not loopback, private or link-local unless `send.allow_private_urls`)."}
        }
    });
    schemas["FileRef"] = json!({
        "description": "A file, by URL or inline as base64: exactly one of the two.",
        "type": "object",
        "required": ["name"],
        "additionalProperties": false,
        "properties": {
            "url": {"type": "string", "pattern": "^https?://[A-Za-z][A-Za-z0-9-]{0,30}(\\.[A-Za-z][A-Za-z0-9-]{0,30})*\\.(com|org|net|io|cn|dev|app)(:[1-9][0-9]{0,3})?(/[A-Za-z0-9._~%/-]*)?$", "description": "Fetched by the gateway: an http(s) URL of a public host (not loopback, private or link-local unless `send.allow_private_urls`)."},
            "base64": {"type": "string", "pattern": "^([ \\t\\r\\n]*[A-Za-z0-9+/][ \\t\\r\\n]*[A-Za-z0-9+/][ \\t\\r\\n]*[A-Za-z0-9+/][ \\t\\r\\n]*[A-Za-z0-9+/])*([ \\t\\r\\n]*[A-Za-z0-9+/][ \\t\\r\\n]*[A-Za-z0-9+/][ \\t\\r\\n]*(=[ \\t\\r\\n]*=|[A-Za-z0-9+/][ \\t\\r\\n]*=))?[ \\t\\r\\n]*$", "description": "Standard base64 with padding (spaces and line breaks are ignored)."},
            "name": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[^/\\\\\\x00-\\x1f\\x7f-\\x9f]*[^/\\\\\\x00-\\x1f\\x7f-\\x9f.\\s][^/\\\\\\x00-\\x1f\\x7f-\\x9f]*$", "description": "A plain file name, like `report.pdf`: no `/`, `\\`, control characters, and not `.` or `..`."}
        },
        "oneOf": [{"required": ["url"]}, {"required": ["base64"]}]
    });
    let mut image = schemas["FileRef"].clone();
    image["description"] = json!("An image, by URL or inline as base64, sent as a WeChat picture.");
    image["properties"]["name"] = json!({"type": "string", "minLength": 5, "maxLength": 255, "pattern": "^[A-Za-z0-9_-]{1,200}\\.(jpg|jpeg|png|gif|webp)$", "description": "A plain file name with an image extension, like `chart.png`."});
    schemas["ImageRef"] = image;
    let id = json!({"type": "string", "pattern": "\\S"});
    let ids = |min: usize| json!({"type": "array", "items": id.clone(), "minItems": min, "maxItems": 500, "uniqueItems": true});
    let topic = json!({"type": "string", "minLength": 1, "maxLength": 100, "pattern": "^[^\\r\\n]*\\S[^\\r\\n]*$"});
    schemas["CreateRoom"] = json!({
        "description": "A room to create: its topic and two or more contact ids (the bot is a member anyway).",
        "type": "object", "required": ["topic", "members"], "additionalProperties": false,
        "properties": {"topic": topic.clone(), "members": ids(2)}
    });
    schemas["AddMembers"] = json!({
        "description": "Contacts to add to a room.",
        "type": "object", "required": ["contacts"], "additionalProperties": false,
        "properties": {"contacts": ids(1)}
    });
    schemas["UpdateRoom"] = json!({
        "description": "A new topic, an announcement, or both.",
        "type": "object", "additionalProperties": false,
        "properties": {"topic": topic, "announce": {"type": "string", "maxLength": 2000}},
        "anyOf": [{"required": ["topic"]}, {"required": ["announce"]}]
    });
    schemas["AddFriend"] = json!({
        "description": "A friend request: exactly one of `wechat_id`, `phone`, `contact`, and a greeting.",
        "type": "object", "additionalProperties": false,
        "properties": {
            "wechat_id": id.clone(),
            "phone": {"type": "string", "pattern": "^\\+?[0-9][0-9 -]{0,30}$"},
            "contact": id.clone(),
            "hello": {"type": "string", "maxLength": 200}
        },
        "oneOf": [{"required": ["wechat_id"]}, {"required": ["phone"]}, {"required": ["contact"]}]
    });
    schemas["UpdateContact"] = json!({
        "description": "The bot's alias (remark) for a contact; null or \"\" clears it.",
        "type": "object", "required": ["alias"], "additionalProperties": false,
        "properties": {"alias": {"type": ["string", "null"], "maxLength": 64, "pattern": "^[^\\r\\n]*$"}}
    });
    let someone = json!({"oneOf": [
        {"type": "string", "minLength": 1, "description": "A contact id or name"},
        {"type": "object", "required": ["id", "name"], "additionalProperties": false,
         "properties": {"id": id.clone(), "name": id.clone()}, "description": "Someone the bot does not know"}
    ]});
    schemas["FriendRequestBody"] = json!({
        "description": "A simulated friend request to the bot.",
        "type": "object", "required": ["from"], "additionalProperties": false,
        "properties": {"from": someone.clone(), "hello": {"type": ["string", "null"]}}
    });
    schemas["InvitationBody"] = json!({
        "description": "A simulated invitation into a room.",
        "type": "object", "required": ["from", "room"], "additionalProperties": false,
        "properties": {"from": someone, "room": {
            "type": "object", "required": ["id", "topic"], "additionalProperties": false,
            "properties": {"id": {"type": "string", "pattern": "^[^@]*@[^@]*$"}, "topic": {"type": "string", "pattern": "\\S"}}
        }}
    });
    schemas["UploadForm"] = json!({
        "description": "A file sent from your disk: the recipient, and the bytes named by the part's file name. A part whose own content-type is image/jpeg, image/png, image/gif or image/webp is sent as a picture.",
        "type": "object", "required": ["to", "file"], "additionalProperties": false,
        "properties": {
            "to": {"$ref": "#/components/schemas/Recipient"},
            "file": {"type": "string", "format": "binary"}
        }
    });
    schemas["ReplayBody"] = json!({
        "description": "Which events to send again: after a `seq`, or since a time (or both).",
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "after_seq": {"type": ["integer", "null"], "format": "int64"},
            "since": {"type": ["string", "null"], "format": "date-time"}
        },
        "anyOf": [
            {"required": ["after_seq"], "properties": {"after_seq": {"type": "integer"}}},
            {"required": ["since"], "properties": {"since": {"type": "string"}}}
        ]
    });
    let recipient = |key: &str, what: &str| {
        json!({
            "type": "object",
            "required": [key],
            "additionalProperties": false,
            "properties": {key: {"type": "string", "description": what}}
        })
    };
    schemas["Recipient"] = json!({
        "description": "Who a message goes to: exactly one key.",
        "oneOf": [
            recipient("contact", "A contact id"),
            recipient("room", "A room id (`…@chatroom`)"),
            recipient("contact_name", "A contact's name or alias"),
            recipient("room_topic", "A room's topic")
        ]
    });
    schemas["InjectBody"] = json!({
        "description": "A simulated inbound message: `text`, `media`, or both (the text is then a caption).",
        "type": "object",
        "required": ["from"],
        "additionalProperties": false,
        "anyOf": [{"required": ["text"]}, {"required": ["media"]}],
        "properties": {
            "from": {"type": "string", "description": "Contact id or name."},
            "room": {"type": "string", "description": "Room id or topic."},
            "text": {"type": "string", "minLength": 1},
            "media": {
                "type": "object",
                "required": ["kind", "name", "base64"],
                "additionalProperties": false,
                "properties": {
                    "kind": {"enum": ["image", "file", "audio", "video"]},
                    "name": schemas["FileRef"]["properties"]["name"].clone(),
                    "base64": schemas["FileRef"]["properties"]["base64"].clone()
                }
            },
            "mentions": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Contact ids or names mentioned (needs `room`)."
            },
            "id": {
                "type": "string",
                "minLength": 1,
                "description": "Puppet message id; reuse one to simulate a replay."
            }
        },
        "dependentRequired": {"mentions": ["room"]}
    });
}

/// This description.
#[utoipa::path(
    get,
    path = "/openapi.json", operation_id = "openapi",
    tag = "health",
    responses((status = 200, description = "The OpenAPI 3.1 description of this API", content_type = "application/json"))
)]
pub(super) async fn openapi_json() -> Json<Value> {
    Json(spec())
}

/// Adds the error answers every operation can give, and bearer auth on `/v1`.
struct Errors;

const ERRORS: &[(&str, &str)] = &[
    (
        "400",
        "Malformed JSON, or (`account_required`) several accounts and none named `default`: use /v1/accounts/{account}/…",
    ),
    (
        "403",
        "The credential is scoped to other accounts, or (open mode) a foreign Host or cross-origin write",
    ),
    (
        "401",
        "No valid bearer token, or a bad or stale Standard Webhooks signature",
    ),
    ("404", "No such resource (the message says which)"),
    ("405", "This route does not take that method"),
    (
        "409",
        "The idempotency key was used with another request, the message to recall is not sent (`not_sent`), or (mock only) no scan is pending",
    ),
    (
        "413",
        "The body is larger than server.body_limit (an upload: media.max_upload)",
    ),
    ("415", "The body is not sent as application/json"),
    (
        "429",
        "Too many event streams or long polls (server.max_streams, server.max_streams_per_credential)",
    ),
    (
        "422",
        "A field is missing or invalid (the message names it)",
    ),
    ("500", "An internal error (details in the server log)"),
    (
        "501",
        "The account's puppet cannot do this (`not_supported`; GET /v1/capabilities lists what it can)",
    ),
    (
        "503",
        "Not ready (the message says why), or the request outlasted server.request_timeout",
    ),
];

impl Modify for Errors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "One of `auth.tokens`. POST requests may instead carry Standard \
                         Webhooks headers (webhook-id, webhook-timestamp, webhook-signature) \
                         signed with one of `auth.signing_secrets`. With neither configured \
                         the API is open (and listens on loopback only).",
                    ))
                    .build(),
            ),
        );
        for (status, description) in ERRORS {
            components.responses.insert(
                response_name(status),
                RefOr::T(
                    ResponseBuilder::new()
                        .description(*description)
                        .content(
                            "application/json",
                            ContentBuilder::new()
                                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                                    "ErrorBody",
                                ))))
                                .build(),
                        )
                        .build(),
                ),
            );
        }
        for (path, item) in openapi.paths.paths.iter_mut() {
            // A media link is its own credential: it needs no token.
            let v1 = path.starts_with("/v1/") && !path.starts_with("/v1/media/");
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                add_errors(op);
                if v1 {
                    op.security = Some(vec![SecurityRequirement::new(
                        "bearer",
                        Vec::<String>::new(),
                    )]);
                }
            }
        }
    }
}

/// `Error400` …: the name of a shared error response in `components.responses`.
fn response_name(status: &str) -> String {
    format!("Error{status}")
}

fn add_errors(op: &mut Operation) {
    for (status, _) in ERRORS {
        op.responses
            .responses
            .entry(status.to_string())
            .or_insert_with(|| {
                RefOr::Ref(utoipa::openapi::Ref::new(format!(
                    "#/components/responses/{}",
                    response_name(status)
                )))
            });
    }
}
