//! The bot's address book: contacts, rooms and room members, with `?q=` to search by
//! name, alias or topic.

use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{Acct, ApiError, ApiPath, ApiQuery, AppState};
use crate::event::{Contact, Room};
use crate::puppet::PuppetError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/contacts", get(contacts))
        .route("/v1/contacts/{id}", get(contact))
        .route("/v1/rooms", get(rooms))
        .route("/v1/rooms/{id}", get(room))
        .route("/v1/rooms/{id}/members", get(members))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Search {
    /// Case-insensitive part of a name, alias or topic (or an exact id).
    q: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ContactList {
    contacts: Vec<Contact>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RoomList {
    rooms: Vec<Room>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MemberList {
    members: Vec<Contact>,
}

pub(super) fn puppet_error(e: PuppetError) -> ApiError {
    match e {
        PuppetError::NotFound(m) => ApiError::not_found(m),
        PuppetError::Offline => ApiError::not_ready("the session is not logged in"),
        PuppetError::Failed(m) => ApiError::internal(m),
        PuppetError::NotSupported(m) => {
            ApiError::new(axum::http::StatusCode::NOT_IMPLEMENTED, "not_supported", m)
        }
    }
}

/// Case-insensitive substring match on name and alias.
fn contact_matches(c: &Contact, q: &str) -> bool {
    let q = q.to_lowercase();
    c.name.to_lowercase().contains(&q)
        || c.alias
            .as_deref()
            .is_some_and(|a| a.to_lowercase().contains(&q))
        || c.id == q
}

/// The bot's contacts (itself excluded).
#[utoipa::path(get, path = "/v1/contacts", operation_id = "list_contacts", tag = "directory", params(Search), responses((status = 200, body = ContactList)))]
pub(super) async fn contacts(
    Acct(account): Acct,
    ApiQuery(s): ApiQuery<Search>,
) -> Result<Json<ContactList>, ApiError> {
    let mut all = account.puppet.contacts().await.map_err(puppet_error)?;
    if let Some(q) = s.q.filter(|q| !q.is_empty()) {
        all.retain(|c| contact_matches(c, &q));
    }
    Ok(Json(ContactList { contacts: all }))
}

#[utoipa::path(
    get,
    path = "/v1/contacts/{id}", operation_id = "get_contact",
    tag = "directory",
    params(("id" = String, Path, description = "A contact id")),
    responses((status = 200, body = Contact))
)]
pub(super) async fn contact(
    Acct(account): Acct,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Contact>, ApiError> {
    let all = account.puppet.contacts().await.map_err(puppet_error)?;
    all.into_iter()
        .find(|c| c.id == id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no contact `{id}`")))
}

/// The rooms the bot is in.
#[utoipa::path(get, path = "/v1/rooms", operation_id = "list_rooms", tag = "directory", params(Search), responses((status = 200, body = RoomList)))]
pub(super) async fn rooms(
    Acct(account): Acct,
    ApiQuery(s): ApiQuery<Search>,
) -> Result<Json<RoomList>, ApiError> {
    let mut all = account.puppet.rooms().await.map_err(puppet_error)?;
    if let Some(q) = s.q.filter(|q| !q.is_empty()) {
        let q = q.to_lowercase();
        all.retain(|r| r.topic.to_lowercase().contains(&q) || r.id == q);
    }
    Ok(Json(RoomList { rooms: all }))
}

#[utoipa::path(
    get,
    path = "/v1/rooms/{id}", operation_id = "get_room",
    tag = "directory",
    params(("id" = String, Path, description = "A room id (`…@chatroom`)")),
    responses((status = 200, body = Room))
)]
pub(super) async fn room(
    Acct(account): Acct,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Room>, ApiError> {
    let all = account.puppet.rooms().await.map_err(puppet_error)?;
    all.into_iter()
        .find(|r| r.id == id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no room `{id}`")))
}

/// A room's members, the bot included.
#[utoipa::path(
    get,
    path = "/v1/rooms/{id}/members", operation_id = "list_room_members",
    tag = "directory",
    params(("id" = String, Path, description = "A room id (`…@chatroom`)"), Search),
    responses((status = 200, body = MemberList))
)]
pub(super) async fn members(
    Acct(account): Acct,
    ApiPath(id): ApiPath<String>,
    ApiQuery(s): ApiQuery<Search>,
) -> Result<Json<MemberList>, ApiError> {
    let mut all = account
        .puppet
        .room_members(&id)
        .await
        .map_err(puppet_error)?;
    if let Some(q) = s.q.filter(|q| !q.is_empty()) {
        all.retain(|c| contact_matches(c, &q));
    }
    Ok(Json(MemberList { members: all }))
}
