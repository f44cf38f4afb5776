//! `POST /v1/messages` as `multipart/form-data`: a file (or an image) uploaded with the
//! request rather than fetched from a URL. Parts: `to` (the recipient as JSON, as in a
//! JSON send) and `file` (the bytes, named by the part's file name). A `file` part whose
//! own `content-type` is `image/jpeg`, `image/png`, `image/gif` or `image/webp` is sent as
//! a picture (its name gets the matching extension if it lacks one).
//!
//! Nothing is acknowledged before it is stored: the bytes are streamed to a file in the
//! upload folder (never held whole in memory), synced to disk, and only then is the
//! send committed to the queue; the file goes once the send is sent or failed for good.
//! Larger than `media.max_upload`: 413.

use std::path::{Path, PathBuf};

use axum::extract::multipart::{Multipart, MultipartError};
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::{ApiError, AppState, too_large};
use crate::send::{Content, Recipient, Upload, check_file_name};

/// The parts of a multipart send, for the API description.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    /// The recipient as JSON, like `{"contact": "alice"}`.
    to: Recipient,
    /// The file's bytes, with its file name; with an image `content-type`, a picture.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

/// True for a `multipart/form-data` body.
pub fn is_multipart(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("multipart/form-data"))
}

fn multipart_error(app: &AppState, e: MultipartError) -> ApiError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        too_large(&format!(
            "the upload is larger than media.max_upload ({} bytes)",
            app.settings.media.max_upload.0
        ))
    } else {
        ApiError::invalid(format!("the multipart body: {}", e.body_text()))
    }
}

/// An upload on disk that is removed when dropped, unless kept.
pub struct Stored {
    path: PathBuf,
    kept: bool,
}

impl Drop for Stored {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A multipart send read and its file stored: what to queue, and the file, removed
/// when this is dropped unless [`Received::keep`] is called (once its send is queued).
pub struct Received {
    pub to: Recipient,
    pub content: Content,
    stored: Stored,
}

impl Received {
    pub fn keep(mut self) {
        self.stored.kept = true;
    }
}

/// Reads the parts and stores the file durably (synced before this returns).
pub async fn receive(app: &AppState, request: Request) -> Result<Received, ApiError> {
    let mut multipart = Multipart::from_request(request, app)
        .await
        .map_err(|e| ApiError::invalid(format!("the multipart body: {}", e.body_text())))?;
    let dir = app.settings.upload_dir();
    let mut to: Option<Recipient> = None;
    let mut file: Option<(Stored, String, u64, String)> = None;
    let mut image: Option<&'static str> = None;
    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|e| multipart_error(app, e))?
    {
        match field.name().unwrap_or_default() {
            "to" => {
                let text = field.text().await.map_err(|e| multipart_error(app, e))?;
                to = Some(serde_json::from_str(&text).map_err(|e| {
                    ApiError::invalid(format!(
                        "`to` must be a recipient as JSON, like {{\"contact\": \"alice\"}}: {e}"
                    ))
                })?);
            }
            "file" => {
                if file.is_some() {
                    return Err(ApiError::invalid("give one `file` part, not several"));
                }
                let given = field.file_name().unwrap_or_default().to_string();
                image = match field.content_type().map(str::to_ascii_lowercase).as_deref() {
                    Some("image/jpeg") => Some("jpg"),
                    Some("image/png") => Some("png"),
                    Some("image/gif") => Some("gif"),
                    Some("image/webp") => Some("webp"),
                    _ => None,
                };
                let path = dir.join(format!("up_{}", ulid::Ulid::new()));
                let stored = Stored {
                    path: path.clone(),
                    kept: false,
                };
                tokio::fs::create_dir_all(&dir)
                    .await
                    .map_err(|e| ApiError::internal(format!("the upload folder: {e}")))?;
                let part_path = path.with_extension("part");
                let mut out = tokio::fs::File::create(&part_path)
                    .await
                    .map_err(|e| ApiError::internal(format!("storing the upload: {e}")))?;
                let mut partial = Stored {
                    path: part_path.clone(),
                    kept: false,
                };
                let mut digest = Sha256::new();
                let mut size = 0u64;
                while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(app, e))? {
                    size += chunk.len() as u64;
                    digest.update(&chunk);
                    out.write_all(&chunk)
                        .await
                        .map_err(|e| ApiError::internal(format!("storing the upload: {e}")))?;
                }
                out.sync_all()
                    .await
                    .map_err(|e| ApiError::internal(format!("storing the upload: {e}")))?;
                drop(out);
                tokio::fs::rename(&part_path, &path)
                    .await
                    .map_err(|e| ApiError::internal(format!("storing the upload: {e}")))?;
                partial.kept = true;
                sync_dir(&dir).await;
                let sha: String = digest
                    .finalize()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                file = Some((stored, given, size, sha));
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "unknown part `{other}`: send `to` and `file`"
                )));
            }
        }
    }
    let to = to.ok_or_else(|| {
        ApiError::invalid(
            "a `to` part is needed (the recipient as JSON, like {\"contact\": \"alice\"})",
        )
    })?;
    let (stored, given, size, sha256) = file.ok_or_else(|| {
        ApiError::invalid("a `file` part is needed (the bytes, with a file name)")
    })?;
    let field = if image.is_some() { "image" } else { "file" };
    let mut name = given;
    check_file_name(field, &name).map_err(|e| ApiError::invalid(e.0))?;
    if let Some(extension) = image
        && !crate::media::mime_of(&name).is_some_and(|m| m.starts_with("image/"))
    {
        name = format!("{name}.{extension}");
    }
    let content = Content::Upload(Upload {
        path: stored.path.clone(),
        name,
        image: image.is_some(),
        size,
        sha256,
    });
    Ok(Received {
        to,
        content,
        stored,
    })
}

/// Makes a rename in `dir` durable.
async fn sync_dir(dir: &Path) {
    let dir = dir.to_path_buf();
    let _ =
        tokio::task::spawn_blocking(move || std::fs::File::open(&dir).and_then(|d| d.sync_all()))
            .await;
}
