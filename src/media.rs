//! Media in: the signed, expiring links in `data.media.url`, and the disk cache behind
//! `GET /v1/media/{token}`.
//!
//! A link is `{public_url}/v1/media/{token}`. The token names the account, the message
//! and whether it is an image, with its expiry and the key period it was signed in:
//! `base64url(payload) "." base64url(HMAC-SHA256(period key, payload))`. The period key
//! is HMAC(master, period), the master key is made once and kept in the store (so links
//! outlive a restart), and the period is `media.link_ttl` long: a link is honoured in its
//! own period and the next, and never after its expiry. Changing one byte of a token, or
//! the path it names, breaks its signature.
//!
//! The bytes come from the puppet as a stream and go to the caller as they arrive,
//! written meanwhile to a temporary file that becomes the cache entry once complete;
//! nothing holds a whole file in memory. The cache keeps the most recently used files up
//! to `media.cache_size`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::event::MessageKind;

/// The store's name for the master key of media links.
pub const KEY_NAME: &str = "media_links";

/// The MIME type of a file name, by its extension.
pub fn mime_of(name: &str) -> Option<String> {
    mime_guess::from_path(name).first().map(|m| m.to_string())
}

/// A name for a media message that came without one.
pub fn default_name(kind: MessageKind, message_id: &str) -> String {
    let safe: String = message_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .take(64)
        .collect();
    let extension = match kind {
        MessageKind::Image => "jpg",
        MessageKind::Audio => "silk",
        MessageKind::Video => "mp4",
        MessageKind::Emoticon => "gif",
        _ => "bin",
    };
    format!("{safe}.{extension}")
}

/// An image's size, as WeChat keeps three.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImageSize {
    Thumbnail,
    Hd,
    Artwork,
}

impl ImageSize {
    fn as_str(self) -> &'static str {
        match self {
            ImageSize::Thumbnail => "thumbnail",
            ImageSize::Hd => "hd",
            ImageSize::Artwork => "artwork",
        }
    }
}

/// What a valid token names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaRef {
    #[serde(rename = "a")]
    pub account: String,
    #[serde(rename = "m")]
    pub message_id: String,
    /// True for an image (fetched with `MessageImageStream`, at a size).
    #[serde(rename = "i", default, skip_serializing_if = "std::ops::Not::not")]
    pub image: bool,
    /// The file name, for `content-disposition`.
    #[serde(rename = "n")]
    pub name: String,
    /// Unix seconds after which the link is refused.
    #[serde(rename = "e")]
    pub expires: u64,
    /// The key period it was signed in.
    #[serde(rename = "p")]
    pub period: u64,
}

/// Why a token is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    #[error("this media link is not valid (it was changed, or is not a waas link)")]
    Invalid,
    #[error("this media link has expired; newer events carry fresh links")]
    Expired,
}

/// Signs and checks media links.
pub struct MediaLinks {
    master: Vec<u8>,
    ttl: u64,
    public_url: String,
}

type HmacSha256 = Hmac<Sha256>;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl MediaLinks {
    pub fn new(master: Vec<u8>, ttl: Duration, public_url: &str) -> MediaLinks {
        MediaLinks {
            master,
            ttl: ttl.as_secs().max(1),
            public_url: public_url.trim_end_matches('/').to_string(),
        }
    }

    fn period_key(&self, period: u64) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.master).expect("HMAC takes any key");
        mac.update(b"waas media links, period ");
        mac.update(period.to_string().as_bytes());
        let key = mac.finalize().into_bytes();
        HmacSha256::new_from_slice(&key).expect("HMAC takes any key")
    }

    /// A token for `media`, valid for `media.link_ttl` from `now` (unix seconds).
    pub fn token_at(
        &self,
        account: &str,
        message_id: &str,
        image: bool,
        name: &str,
        now: u64,
    ) -> String {
        let period = now / self.ttl;
        let payload = MediaRef {
            account: account.to_string(),
            message_id: message_id.to_string(),
            image,
            name: name.to_string(),
            expires: now + self.ttl,
            period,
        };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap_or_default());
        let mut mac = self.period_key(period);
        mac.update(payload.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{payload}.{signature}")
    }

    /// The link for a message's media, as events carry it.
    pub fn url(&self, account: &str, message_id: &str, image: bool, name: &str) -> String {
        let token = self.token_at(account, message_id, image, name, unix_now());
        format!("{}/v1/media/{token}", self.public_url)
    }

    /// What `token` names, if it is intact and current at `now` (unix seconds). The
    /// signature is compared in constant time.
    pub fn verify_at(&self, token: &str, now: u64) -> Result<MediaRef, LinkError> {
        let (payload, signature) = token.split_once('.').ok_or(LinkError::Invalid)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| LinkError::Invalid)?;
        let claimed: MediaRef = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or(LinkError::Invalid)?;
        let mut mac = self.period_key(claimed.period);
        mac.update(payload.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| LinkError::Invalid)?;
        let current = now / self.ttl;
        if claimed.expires <= now || claimed.period + 1 < current {
            return Err(LinkError::Expired);
        }
        Ok(claimed)
    }

    pub fn verify(&self, token: &str) -> Result<MediaRef, LinkError> {
        self.verify_at(token, unix_now())
    }
}

/// What a cache entry is, kept beside its bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    name: String,
    size: u64,
}

/// A cached file: its path and what it is.
pub struct Cached {
    pub path: PathBuf,
    pub name: String,
    pub size: u64,
}

/// Downloaded media on disk, least recently used first out.
pub struct MediaCache {
    dir: PathBuf,
    limit: u64,
    /// One eviction pass at a time.
    evicting: tokio::sync::Mutex<()>,
}

impl MediaCache {
    pub fn new(dir: PathBuf, limit: u64) -> MediaCache {
        MediaCache {
            dir,
            limit,
            evicting: tokio::sync::Mutex::new(()),
        }
    }

    /// The entry's file name: a digest, so no id can name a path.
    fn key(media: &MediaRef, size: Option<ImageSize>) -> String {
        let mut digest = Sha256::new();
        for part in [
            media.account.as_str(),
            media.message_id.as_str(),
            size.map_or("file", ImageSize::as_str),
        ] {
            digest.update(part.as_bytes());
            digest.update([0]);
        }
        digest
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The cached file, touched as just used.
    pub async fn get(&self, media: &MediaRef, size: Option<ImageSize>) -> Option<Cached> {
        let key = Self::key(media, size);
        let path = self.dir.join(&key);
        let meta: Meta =
            serde_json::from_slice(&tokio::fs::read(path.with_extension("json")).await.ok()?)
                .ok()?;
        let file = std::fs::File::options().append(true).open(&path).ok()?;
        let _ = file.set_modified(SystemTime::now());
        Some(Cached {
            path,
            name: meta.name,
            size: meta.size,
        })
    }

    /// Streams `file` through, keeping a copy: once the stream ends the copy becomes
    /// the cache entry (and older entries go while the cache is over its size). A
    /// stream that fails, or a caller who leaves, leaves no entry.
    pub fn tee(
        self: &Arc<Self>,
        media: &MediaRef,
        size: Option<ImageSize>,
        name: String,
        body: BoxStream<'static, std::io::Result<Bytes>>,
    ) -> BoxStream<'static, std::io::Result<Bytes>> {
        let key = Self::key(media, size);
        let cache = self.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
        tokio::spawn(async move {
            let part = cache.dir.join(format!(".{key}.{}.part", ulid::Ulid::new()));
            let mut copy = match cache.limit {
                0 => None,
                _ => match tokio::fs::create_dir_all(&cache.dir).await {
                    Ok(()) => tokio::fs::File::create(&part).await.ok(),
                    Err(_) => None,
                },
            };
            let mut written = 0u64;
            let mut body = body;
            let mut complete = true;
            while let Some(chunk) = body.next().await {
                let chunk = match chunk {
                    Ok(c) => c,
                    Err(e) => {
                        complete = false;
                        let _ = tx.send(Err(e)).await;
                        break;
                    }
                };
                written += chunk.len() as u64;
                if let Some(f) = copy.as_mut()
                    && (written > cache.limit || f.write_all(&chunk).await.is_err())
                {
                    // Too big for the cache, or the disk refused: serve it uncached.
                    copy = None;
                    let _ = tokio::fs::remove_file(&part).await;
                }
                if tx.send(Ok(chunk)).await.is_err() {
                    complete = false;
                    break;
                }
            }
            match copy {
                Some(mut f) if complete => {
                    let flushed = f.flush().await.is_ok();
                    drop(f);
                    let meta = Meta {
                        name,
                        size: written,
                    };
                    let entry = cache.dir.join(&key);
                    let kept = flushed
                        && tokio::fs::rename(&part, &entry).await.is_ok()
                        && tokio::fs::write(
                            entry.with_extension("json"),
                            serde_json::to_vec(&meta).unwrap_or_default(),
                        )
                        .await
                        .is_ok();
                    if kept {
                        cache.evict().await;
                    } else {
                        let _ = tokio::fs::remove_file(&part).await;
                    }
                }
                Some(_) => {
                    let _ = tokio::fs::remove_file(&part).await;
                }
                None => {}
            }
        });
        tokio_stream_from(rx)
    }

    /// Removes the least recently used entries until the cache fits its size.
    async fn evict(&self) {
        let _one = self.evicting.lock().await;
        let dir = self.dir.clone();
        let limit = self.limit;
        let _ = tokio::task::spawn_blocking(move || evict_dir(&dir, limit)).await;
    }
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
) -> BoxStream<'static, std::io::Result<Bytes>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

/// Entries by last use, oldest first, removed until the rest fit in `limit` bytes.
fn evict_dir(dir: &Path, limit: u64) {
    let Ok(read) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<(SystemTime, u64, PathBuf)> = read
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            !name.starts_with('.') && !name.ends_with(".json")
        })
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((meta.modified().ok()?, meta.len(), e.path()))
        })
        .collect();
    let mut total: u64 = entries.iter().map(|(_, len, _)| len).sum();
    entries.sort();
    for (_, len, path) in entries {
        if total <= limit {
            break;
        }
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(path.with_extension("json"));
        total -= len;
        tracing::debug!(path = %path.display(), "media cache: evicted the least recently used file");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links() -> MediaLinks {
        MediaLinks::new(
            vec![7; 32],
            Duration::from_secs(3600),
            "http://127.0.0.1:3010/",
        )
    }

    #[test]
    fn a_token_names_what_it_was_made_for_until_it_expires() {
        let l = links();
        let t = l.token_at("default", "msg-1", true, "cat.jpg", 10_000);
        let got = l.verify_at(&t, 10_001).unwrap();
        assert_eq!(got.message_id, "msg-1");
        assert!(got.image);
        assert_eq!(got.name, "cat.jpg");
        assert_eq!(l.verify_at(&t, 10_000 + 3599).unwrap().account, "default");
        assert_eq!(l.verify_at(&t, 10_000 + 3600), Err(LinkError::Expired));
    }

    #[test]
    fn a_changed_token_or_another_key_is_refused() {
        let l = links();
        let t = l.token_at("default", "msg-1", false, "a.pdf", 10_000);
        let (payload, signature) = t.split_once('.').unwrap();
        let other = URL_SAFE_NO_PAD.encode(
            String::from_utf8(URL_SAFE_NO_PAD.decode(payload).unwrap())
                .unwrap()
                .replace("msg-1", "msg-2"),
        );
        assert_eq!(
            l.verify_at(&format!("{other}.{signature}"), 10_001),
            Err(LinkError::Invalid)
        );
        let mut flipped = t.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            l.verify_at(&String::from_utf8(flipped).unwrap(), 10_001),
            Err(LinkError::Invalid)
        );
        let stranger = MediaLinks::new(vec![8; 32], Duration::from_secs(3600), "http://x");
        assert_eq!(stranger.verify_at(&t, 10_001), Err(LinkError::Invalid));
        for junk in ["", ".", "abc", "a.b", "%%.%%"] {
            assert_eq!(l.verify_at(junk, 10_001), Err(LinkError::Invalid), "{junk}");
        }
    }

    #[test]
    fn urls_are_built_on_the_public_url() {
        let url = links().url("default", "m", false, "a.txt");
        assert!(url.starts_with("http://127.0.0.1:3010/v1/media/"), "{url}");
    }

    #[test]
    fn mime_types_come_from_the_name() {
        assert_eq!(mime_of("cat.png").as_deref(), Some("image/png"));
        assert_eq!(mime_of("report.pdf").as_deref(), Some("application/pdf"));
        assert_eq!(mime_of("noextension"), None);
        assert_eq!(default_name(MessageKind::Image, "../x"), "x.jpg");
    }

    #[test]
    fn eviction_keeps_the_most_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = SystemTime::now() - Duration::from_secs(100);
        for (i, name) in ["old", "mid", "new"].iter().enumerate() {
            let path = dir.path().join(name);
            std::fs::write(&path, vec![0u8; 100]).unwrap();
            std::fs::write(dir.path().join(format!("{name}.json")), b"{}").unwrap();
            let f = std::fs::File::options().append(true).open(&path).unwrap();
            f.set_modified(t0 + Duration::from_secs(i as u64 * 10))
                .unwrap();
        }
        evict_dir(dir.path(), 250);
        assert!(!dir.path().join("old").exists());
        assert!(!dir.path().join("old.json").exists());
        assert!(dir.path().join("mid").exists() && dir.path().join("new").exists());
    }
}
