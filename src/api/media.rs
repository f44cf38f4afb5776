//! `GET /v1/media/{token}`: the bytes of an inbound image or file, behind a signed,
//! expiring link (see [`crate::media`]). The link is the credential: no token needed,
//! so a serverless function handed an event can fetch its file.

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use futures_util::StreamExt;
use serde::Deserialize;

use super::directory::puppet_error;
use super::{ApiError, ApiPath, ApiQuery, AppState};
use crate::media::{ImageSize, LinkError};

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/media/{token}", get(download))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SizeQuery {
    /// Images only: `thumbnail`, `hd` (the default) or `artwork` (the original).
    size: Option<ImageSize>,
}

/// The file of a media message, streamed from the puppet (or the disk cache), with
/// `content-type`, `content-length` when known, and `content-disposition`. A changed
/// or expired link answers 403.
#[utoipa::path(
    get, path = "/v1/media/{token}", operation_id = "download_media", tag = "events",
    params(("token" = String, Path, description = "From an event's `data.media.url`"), SizeQuery),
    responses(
        (status = 200, description = "The bytes", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 403, description = "The link was changed or has expired", body = super::openapi::ErrorBody),
        (status = 501, description = "The puppet cannot download media", body = super::openapi::ErrorBody),
    )
)]
pub(super) async fn download(
    State(app): State<AppState>,
    ApiPath(token): ApiPath<String>,
    ApiQuery(query): ApiQuery<SizeQuery>,
) -> Result<Response, ApiError> {
    let media = app.links.verify(&token).map_err(|e| {
        let code = match e {
            LinkError::Invalid => "invalid_link",
            LinkError::Expired => "link_expired",
        };
        ApiError::new(StatusCode::FORBIDDEN, code, e.to_string())
    })?;
    let size = match (media.image, query.size) {
        (true, size) => Some(size.unwrap_or(ImageSize::Hd)),
        (false, None) => None,
        (false, Some(_)) => return Err(ApiError::invalid("`size` applies to images only")),
    };
    let account = app.accounts.get(&media.account).ok_or_else(|| {
        ApiError::not_found(format!(
            "the account `{}` of this link is no longer configured",
            media.account
        ))
    })?;
    let (name, length, body) = match app.media_cache.get(&media, size).await {
        Some(cached) => {
            let file = tokio::fs::File::open(&cached.path)
                .await
                .map_err(|e| ApiError::internal(format!("the media cache: {e}")))?;
            let stream = tokio_util::io::ReaderStream::new(file);
            (cached.name, Some(cached.size), Body::from_stream(stream))
        }
        None => {
            let file = account
                .puppet
                .media(&media.message_id, size)
                .await
                .map_err(puppet_error)?;
            let name = if file.name.is_empty() {
                media.name.clone()
            } else {
                file.name.clone()
            };
            let length = file.size;
            let body = file
                .body
                .map(|chunk| chunk.map_err(std::io::Error::other))
                .boxed();
            let stream = app.media_cache.tee(&media, size, name.clone(), body);
            (name, length, Body::from_stream(stream))
        }
    };
    let mime = crate::media::mime_of(&name).unwrap_or_else(|| "application/octet-stream".into());
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&mime) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    if let Some(length) = length {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    let disposition = if mime.starts_with("image/") {
        "inline"
    } else {
        "attachment"
    };
    if let Ok(v) = HeaderValue::from_str(&content_disposition(disposition, &name)) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=3600"),
    );
    Ok(response)
}

/// `inline; filename="ascii"; filename*=UTF-8''percent-encoded` (RFC 6266).
fn content_disposition(kind: &str, name: &str) -> String {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("{kind}; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn dispositions_carry_any_name_safely() {
        assert_eq!(
            super::content_disposition("attachment", "report.pdf"),
            "attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf"
        );
        let odd = super::content_disposition("inline", "猫 \"1\".png");
        assert!(odd.starts_with("inline; filename=\"_ _1_.png\""), "{odd}");
        assert!(odd.ends_with("%E7%8C%AB%20%221%22.png"), "{odd}");
    }
}
