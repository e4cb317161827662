//! The media repository: uploads (direct, and asynchronous via `/create`), downloads, thumbnails,
//! URL previews, per-user quotas and retention. Metadata lives in RocksDB (the `media*` keyspaces);
//! bytes live in a `MediaStore`, addressed by content hash and shared by every media item with the
//! same content: a file is deleted when the last row referring to it (`media_refs`) goes.
//!
//! Media of other servers is fetched from its origin over federation (`federation::media`) the
//! first time it is asked for, and cached here like local media but marked remote, under the
//! remote retention age; concurrent requests for the same remote file share one download.
//!
//! This module knows nothing of HTTP headers or ranges; `api::client::media` turns its answers into
//! responses.

pub mod preview;
pub mod s3;
pub mod store;
pub mod thumbnail;

use std::{
    collections::HashMap,
    future::Future,
    hash::{DefaultHasher, Hash, Hasher},
    ops::Range,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use ruma::{OwnedMxcUri, OwnedServerName, OwnedUserId, ServerName, UserId};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Mutex, Notify, Semaphore};

pub use self::store::{ByteStream, ContentHash, FsStore, MediaStore};
use self::{
    preview::AddressPolicy,
    thumbnail::{Method, Outcome, ThumbnailError},
};
use super::tables::keyspaces;
use crate::{
    config,
    error::{Error, ErrorKind, Result},
    service::{
        federation::{self, media::MediaRequest},
        users,
    },
    storage::{
        tables::{
            self, MediaKey, MediaSubject, ThumbnailKey, MEDIA_EXPIRY_LOCAL, MEDIA_EXPIRY_PENDING,
            MEDIA_EXPIRY_PREVIEW, MEDIA_EXPIRY_REMOTE,
        },
        Batch, Db, ShortId,
    },
    util::{now_ms, random_string},
};

/// Length of generated media IDs (letters and digits: about 143 bits).
const MEDIA_ID_LEN: usize = 24;
/// Longest wait for the content of a `/create`d media ID, whatever the client asks.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// How long a fetched URL preview is served from the cache.
const PREVIEW_TTL_MS: u64 = 24 * 3600 * 1000;
/// Thumbnails decoded at once; each may hold a large decoded image in memory.
const THUMBNAIL_SLOTS: usize = 2;
/// Lock stripes for content hashes and users.
const STRIPES: usize = 64;
/// Expired rows handled per scan, so a large backlog is not read into memory at once.
const PURGE_BATCH: usize = 500;
/// Bytes read from a file to recognise its format.
const SNIFF_LEN: u64 = 64;

/// A media item's metadata.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MediaRecord {
    /// SHA-256 (hex) of the content; `None` while a `/create`d ID awaits its upload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    pub size: u64,
    /// The local user who uploaded it; `None` for remote media and URL preview images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploader: Option<OwnedUserId>,
    /// Upload time, or for remote media the time it was cached.
    pub created_ts: u64,
    /// For a `/create`d ID: when it expires unless uploaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unused_expires_at: Option<u64>,
    #[serde(default)]
    pub remote: bool,
}

impl MediaRecord {
    pub fn hash(&self) -> Option<ContentHash> {
        self.content_hash.as_deref().and_then(ContentHash::from_hex)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ThumbnailRecord {
    pub content_hash: String,
    pub content_type: String,
    pub size: u64,
    pub width: u32,
    pub height: u32,
}

#[derive(Serialize, Deserialize)]
struct CachedPreview {
    fetched_ts: u64,
    data: serde_json::Value,
}

/// Content ready to be served.
#[derive(Clone, Debug)]
pub struct Content {
    pub hash: ContentHash,
    pub size: u64,
    pub content_type: Option<String>,
    pub filename: Option<String>,
}

keyspaces! {
    media: tables::Media<MediaRecord>,
    thumbnails: tables::MediaThumbnails<ThumbnailRecord>,
    refs: tables::MediaRefs,
    expiry: tables::MediaExpiry,
    pending: tables::MediaPending,
    usage: tables::MediaUsage,
    previews: tables::UrlPreviews<CachedPreview>,
}

pub struct Service {
    db: Db,
    tables: Tables,
    store: Arc<dyn MediaStore>,
    users: Arc<users::Service>,
    server_name: OwnedServerName,
    config: config::Media,
    preview_policy: AddressPolicy,
    /// Woken when content arrives for a `/create`d ID.
    uploaded: Notify,
    /// Woken when something new may expire, so the retention job reschedules.
    expiry_changed: Notify,
    /// Serialise "put file + add reference" against "last reference gone + delete file".
    content_locks: Vec<Mutex<()>>,
    /// Serialise a user's quota check and usage update, and the upload to a `/create`d ID.
    user_locks: Vec<Mutex<()>>,
    thumbnail_slots: Semaphore,
    /// Fetches remote media from its origin; `None` when federation is off.
    federation: Option<Arc<federation::Service>>,
    /// Serialise writes of a remote media item's record (its download and its thumbnails).
    remote_locks: Vec<Mutex<()>>,
    /// Remote fetches under way, by flight key; callers asking for the same one wait for it.
    inflight: parking_lot::Mutex<HashMap<Vec<u8>, watch::Receiver<Option<FlightOutcome>>>>,
    /// Federation media requests served to other servers (downloads and thumbnails).
    federation_served: AtomicU64,
}

/// What a finished remote fetch tells the callers that waited for it.
/// What a finished remote fetch tells the callers that waited for it: every waiter receives a
/// copy of the error.
type FlightOutcome = std::result::Result<Content, Error>;

/// Removes a fetch from the in-flight map when its leader finishes or is dropped (a client that
/// went away); waiters then see the outcome, or no outcome and try again themselves.
struct FlightGuard<'a> {
    inflight: &'a parking_lot::Mutex<HashMap<Vec<u8>, watch::Receiver<Option<FlightOutcome>>>>,
    key: Vec<u8>,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        self.inflight.lock().remove(&self.key);
    }
}

/// Flight keys: downloads and thumbnails of the same media item are different fetches.
const FLIGHT_DOWNLOAD: u8 = 0;
const FLIGHT_THUMBNAIL: u8 = 1;

/// The key part of a thumbnail fetched from the origin, whose type is known only once fetched.
fn remote_thumbnail_kind(animated: bool) -> &'static str {
    if animated {
        "remote;animated"
    } else {
        "remote"
    }
}

/// Media IDs are letters, digits, `_` and `-` (the spec's rule against path traversal).
pub fn is_valid_media_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 255
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks the server name and media ID of a request path.
pub fn parse_media_path(server_name: &str, media_id: &str) -> Result<OwnedServerName> {
    let server = ServerName::parse(server_name)
        .map_err(|e| Error::invalid_param(format!("Invalid server name: {e}")))?;
    if !is_valid_media_id(media_id) {
        return Err(Error::invalid_param(
            "Invalid media ID: only A-Z, a-z, 0-9, _ and - are allowed",
        ));
    }
    Ok(server)
}

fn io_error(e: std::io::Error) -> Error {
    Error::internal(format!("media store: {e}"))
}

fn content_of(record: MediaRecord) -> Result<Content> {
    let hash = record
        .hash()
        .ok_or_else(|| Error::internal("media record without content"))?;
    Ok(Content {
        hash,
        size: record.size,
        content_type: record.content_type,
        filename: record.filename,
    })
}

/// The SHA-256 of `data`, off the async threads.
async fn hash_of(data: Bytes) -> Result<ContentHash> {
    tokio::task::spawn_blocking(move || ContentHash::of(&data))
        .await
        .map_err(Error::internal)
}

fn stripe<T>(locks: &[T], n: u64) -> &T {
    &locks[(n % locks.len() as u64) as usize]
}

impl Service {
    pub fn new(
        db: Db,
        store: Arc<dyn MediaStore>,
        users: Arc<users::Service>,
        server_name: OwnedServerName,
        config: config::Media,
        federation: Option<Arc<federation::Service>>,
    ) -> Self {
        Self {
            tables: Tables::new(&db),
            db,
            store,
            users,
            server_name,
            preview_policy: AddressPolicy::new(&config.url_preview),
            config,
            uploaded: Notify::new(),
            expiry_changed: Notify::new(),
            content_locks: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            user_locks: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            thumbnail_slots: Semaphore::new(THUMBNAIL_SLOTS),
            federation,
            remote_locks: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            inflight: parking_lot::Mutex::new(HashMap::new()),
            federation_served: AtomicU64::new(0),
        }
    }

    /// Fails when the media store is unusable (a missing bucket, refused credentials).
    pub async fn check_store(&self) -> Result<()> {
        self.store
            .check()
            .await
            .map_err(|e| Error::internal(format!("media store: {e}")))
    }

    /// Counts a media request served to another server.
    pub fn note_federation_served(&self) {
        self.federation_served.fetch_add(1, Ordering::Relaxed);
    }

    /// Media requests (downloads and thumbnails) served to other servers since the start.
    pub fn federation_served(&self) -> u64 {
        self.federation_served.load(Ordering::Relaxed)
    }

    pub fn server_name(&self) -> &ServerName {
        &self.server_name
    }

    pub fn max_upload_size(&self) -> u64 {
        self.config.max_upload_size.0
    }

    pub fn legacy_endpoints(&self) -> bool {
        self.config.legacy_endpoints
    }

    pub fn is_local(&self, server: &ServerName) -> bool {
        server.as_str() == self.server_name.as_str()
    }

    fn content_lock(&self, hash: ContentHash) -> &Mutex<()> {
        stripe(
            &self.content_locks,
            u64::from_be_bytes(hash.0[..8].try_into().unwrap_or_default()),
        )
    }

    fn mxc(&self, media_id: &str) -> OwnedMxcUri {
        format!("mxc://{}/{media_id}", self.server_name).into()
    }

    fn record(&self, item: MediaKey<'_>) -> Result<Option<MediaRecord>> {
        Ok(self.tables.media.get(item)?)
    }

    fn usage(&self, user: ShortId) -> Result<u64> {
        Ok(self.tables.usage.get(user)?.unwrap_or(0))
    }

    /// Refuses an upload of `incoming` bytes that would take the user over the quota.
    pub fn check_quota(&self, user: ShortId, incoming: u64) -> Result<()> {
        let quota = self.config.user_quota.0;
        if quota > 0 && self.usage(user)?.saturating_add(incoming) > quota {
            // The spec's answer for "the user has reached a quota for uploaded content".
            return Err(Error::forbidden("Media quota exceeded"));
        }
        Ok(())
    }

    /// Stores `data` and adds `reference` to it (in `batch`, written here), holding the content
    /// lock so a concurrent purge cannot delete the file in between.
    async fn put_referenced(
        &self,
        hash: ContentHash,
        data: Bytes,
        mut batch: Batch,
        reference: &MediaSubject,
    ) -> Result<()> {
        let _content = self.content_lock(hash).lock().await;
        self.store.put(hash, data).await.map_err(io_error)?;
        self.tables
            .refs
            .put_in(&mut batch, (&hash.0, reference), &());
        self.db.write(batch).await?;
        Ok(())
    }

    /// Deletes the files among `hashes` that nothing refers to any more.
    async fn release(&self, hashes: impl IntoIterator<Item = ContentHash>) -> Result<()> {
        for hash in hashes {
            let _content = self.content_lock(hash).lock().await;
            if !self.tables.refs.any((&hash.0,))? {
                self.store.delete(hash).await.map_err(io_error)?;
            }
        }
        Ok(())
    }

    /// Uploads new local media; returns its `mxc://` URI.
    pub async fn upload(
        &self,
        uploader: Option<(&UserId, ShortId)>,
        content_type: Option<String>,
        filename: Option<String>,
        data: Bytes,
    ) -> Result<OwnedMxcUri> {
        let media_id = random_string(MEDIA_ID_LEN);
        let _user = match uploader {
            Some((_, short)) => Some(stripe(&self.user_locks, short).lock().await),
            None => None,
        };
        if let Some((_, short)) = uploader {
            self.check_quota(short, data.len() as u64)?;
        }
        let record = MediaRecord {
            content_hash: None,
            content_type,
            filename,
            size: 0,
            uploader: uploader.map(|(u, _)| u.to_owned()),
            created_ts: now_ms(),
            unused_expires_at: None,
            remote: false,
        };
        self.store_content(&media_id, record, uploader.map(|(_, s)| s), data)
            .await?;
        Ok(self.mxc(&media_id))
    }

    /// Writes content and the record that points at it; the caller holds the uploader's lock.
    async fn store_content(
        &self,
        media_id: &str,
        mut record: MediaRecord,
        uploader: Option<ShortId>,
        data: Bytes,
    ) -> Result<()> {
        let hash = hash_of(data.clone()).await?;
        let item = (self.server_name.as_str(), media_id);
        let subject = MediaSubject::media(item);
        record.content_hash = Some(hash.to_hex());
        record.size = data.len() as u64;
        record.created_ts = now_ms();
        let mut batch = Batch::new();
        if let Some(expires) = record.unused_expires_at.take() {
            self.tables
                .expiry
                .delete_in(&mut batch, (MEDIA_EXPIRY_PENDING, expires, &subject));
        }
        self.tables.expiry.put_in(
            &mut batch,
            (MEDIA_EXPIRY_LOCAL, record.created_ts, &subject),
            &(),
        );
        if let Some(user) = uploader {
            self.tables.pending.delete_in(&mut batch, (user, media_id));
            let usage = self.usage(user)?.saturating_add(record.size);
            self.tables.usage.put_in(&mut batch, user, &usage);
        }
        self.tables.media.put_in(&mut batch, item, &record);
        self.put_referenced(hash, data, batch, &subject).await?;
        self.expiry_changed.notify_one();
        tracing::debug!(media_id, size = record.size, "media stored");
        Ok(())
    }

    /// Reserves a media ID for a later upload (`POST /_matrix/media/v1/create`).
    pub async fn create_pending(
        &self,
        user_id: &UserId,
        user: ShortId,
    ) -> Result<(OwnedMxcUri, u64)> {
        let _user = stripe(&self.user_locks, user).lock().await;
        let now = now_ms();
        let max = self.config.max_pending_uploads as usize;
        let waiting: Vec<u64> = self
            .tables
            .pending
            .scan((user,))
            .values()
            .filter_map(|r| r.ok())
            .filter(|t| *t > now)
            .take(max)
            .collect();
        if waiting.len() >= max {
            // The spec's answer: 429 until one of them is uploaded or expires.
            let first = waiting.iter().min().copied().unwrap_or(now);
            return Err(Error::limit_exceeded(first.saturating_sub(now).max(1000)));
        }
        let media_id = random_string(MEDIA_ID_LEN);
        let expires = now + self.config.unused_expiry.0.as_millis() as u64;
        let item = (self.server_name.as_str(), media_id.as_str());
        let record = MediaRecord {
            content_hash: None,
            content_type: None,
            filename: None,
            size: 0,
            uploader: Some(user_id.to_owned()),
            created_ts: now,
            unused_expires_at: Some(expires),
            remote: false,
        };
        let mut batch = Batch::new();
        self.tables.media.put_in(&mut batch, item, &record);
        self.tables
            .pending
            .put_in(&mut batch, (user, &media_id), &expires);
        let subject = MediaSubject::media(item);
        self.tables
            .expiry
            .put_in(&mut batch, (MEDIA_EXPIRY_PENDING, expires, &subject), &());
        self.db.write(batch).await?;
        self.expiry_changed.notify_one();
        Ok((self.mxc(&media_id), expires))
    }

    /// Looks up a `/create`d ID for its upload, with the spec's errors; the caller holds the
    /// user's lock so two uploads to one ID cannot both pass.
    fn pending_for(
        &self,
        user_id: &UserId,
        server: &ServerName,
        media_id: &str,
    ) -> Result<MediaRecord> {
        let record = self
            .is_local(server)
            .then(|| self.record((server.as_str(), media_id)))
            .transpose()?
            .flatten()
            .ok_or_else(|| Error::not_found("Unknown media ID"))?;
        if record.uploader.as_deref() != Some(user_id) {
            return Err(Error::forbidden(
                "This media ID was created by another user",
            ));
        }
        if record.content_hash.is_some() {
            return Err(Error::matrix(
                ErrorKind::CannotOverwriteMedia,
                "Media already uploaded",
            ));
        }
        if record.unused_expires_at.is_some_and(|t| t <= now_ms()) {
            return Err(Error::not_found("The media ID has expired"));
        }
        Ok(record)
    }

    /// Checks that the user may upload to a `/create`d ID, before its body is read.
    pub fn check_pending(
        &self,
        user_id: &UserId,
        server: &ServerName,
        media_id: &str,
    ) -> Result<()> {
        self.pending_for(user_id, server, media_id).map(|_| ())
    }

    /// Uploads content to a `/create`d ID (`PUT /_matrix/media/v3/upload/{server}/{id}`).
    pub async fn upload_pending(
        &self,
        (user_id, user): (&UserId, ShortId),
        server: &ServerName,
        media_id: &str,
        content_type: Option<String>,
        filename: Option<String>,
        data: Bytes,
    ) -> Result<()> {
        let _user = stripe(&self.user_locks, user).lock().await;
        let mut record = self.pending_for(user_id, server, media_id)?;
        self.check_quota(user, data.len() as u64)?;
        record.content_type = content_type;
        record.filename = filename;
        self.store_content(media_id, record, Some(user), data)
            .await?;
        self.uploaded.notify_waiters();
        Ok(())
    }

    /// The content of a media item, waiting up to `wait` for a `/create`d ID's upload.
    pub async fn content(
        &self,
        server: &ServerName,
        media_id: &str,
        wait: Duration,
    ) -> Result<Content> {
        let wait = wait.min(MAX_WAIT);
        if !self.is_local(server) {
            return self.remote_content(server, media_id, wait).await;
        }
        content_of(self.local_record(media_id, wait).await?)
    }

    async fn local_record(&self, media_id: &str, wait: Duration) -> Result<MediaRecord> {
        let item = (self.server_name.as_str(), media_id);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before the read, so an upload between the read and the wait still wakes us.
            let uploaded = self.uploaded.notified();
            tokio::pin!(uploaded);
            uploaded.as_mut().enable();
            let record = self
                .record(item)?
                .ok_or_else(|| Error::not_found("Media not found"))?;
            if record.content_hash.is_some() {
                return Ok(record);
            }
            if record.unused_expires_at.is_some_and(|t| t <= now_ms()) {
                return Err(Error::not_found("Media not found"));
            }
            if tokio::time::timeout_at(deadline, uploaded).await.is_err() {
                return Err(Error::matrix(
                    ErrorKind::NotYetUploaded,
                    "Content has not yet been uploaded",
                ));
            }
        }
    }

    /// Cached remote media, if its content is here.
    fn cached_remote(&self, item: MediaKey<'_>) -> Result<Option<Content>> {
        self.record(item)?
            .filter(|r| r.content_hash.is_some())
            .map(content_of)
            .transpose()
    }

    /// Media of another server: from the cache, else fetched from its origin and cached.
    async fn remote_content(
        &self,
        server: &ServerName,
        media_id: &str,
        wait: Duration,
    ) -> Result<Content> {
        if let Some(content) = self.cached_remote((server.as_str(), media_id))? {
            return Ok(content);
        }
        let mut flight = vec![FLIGHT_DOWNLOAD];
        flight.extend_from_slice(MediaSubject::media((server.as_str(), media_id)).as_bytes());
        self.single_flight(flight, move || self.download_remote(server, media_id, wait))
            .await
    }

    /// The federation client remote media is fetched with, or not found when federation is off.
    fn remote_fetcher(&self) -> Result<&federation::Service> {
        self.federation.as_deref().ok_or_else(|| {
            Error::not_found("Remote media is not available: federation is disabled")
        })
    }

    async fn download_remote(
        &self,
        server: &ServerName,
        media_id: &str,
        wait: Duration,
    ) -> Result<Content> {
        let item = (server.as_str(), media_id);
        // A fetch that finished while we queued for the flight left it in the cache.
        if let Some(content) = self.cached_remote(item)? {
            return Ok(content);
        }
        let federation = self.remote_fetcher()?;
        let request = MediaRequest::Download {
            media_id,
            timeout_ms: wait.as_millis() as u64,
        };
        let file = federation
            .fetch_media(server, request, self.max_upload_size())
            .await?;
        tracing::debug!(%server, media_id, size = file.data.len(), "remote media fetched");
        let hash = hash_of(file.data.clone()).await?;
        let now = now_ms();
        let record = MediaRecord {
            content_hash: Some(hash.to_hex()),
            content_type: file.content_type,
            filename: file.filename,
            size: file.data.len() as u64,
            uploader: None,
            created_ts: now,
            unused_expires_at: None,
            remote: true,
        };
        let subject = MediaSubject::media(item);
        let _record = self.remote_lock(&subject).lock().await;
        let mut batch = Batch::new();
        // A record left by a thumbnail fetch is replaced, and so is its expiry row.
        if let Some(old) = self.record(item)? {
            self.tables
                .expiry
                .delete_in(&mut batch, (MEDIA_EXPIRY_REMOTE, old.created_ts, &subject));
        }
        self.tables
            .expiry
            .put_in(&mut batch, (MEDIA_EXPIRY_REMOTE, now, &subject), &());
        self.tables.media.put_in(&mut batch, item, &record);
        self.put_referenced(hash, file.data, batch, &subject)
            .await?;
        self.expiry_changed.notify_one();
        content_of(record)
    }

    fn remote_lock(&self, item: &MediaSubject) -> &Mutex<()> {
        let mut hasher = DefaultHasher::new();
        item.hash(&mut hasher);
        stripe(&self.remote_locks, hasher.finish())
    }

    /// Runs `fetch` once for `key` however many callers ask at the same time: the first caller
    /// fetches, the others wait for its outcome. When the first caller is dropped midway (its
    /// client went away), a waiter takes over.
    async fn single_flight<F, Fut>(&self, key: Vec<u8>, fetch: F) -> Result<Content>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Content>>,
    {
        loop {
            let joined = {
                let mut inflight = self.inflight.lock();
                match inflight.get(&key) {
                    Some(rx) => Err(rx.clone()),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        inflight.insert(key.clone(), rx);
                        Ok(tx)
                    }
                }
            };
            match joined {
                Ok(tx) => {
                    let _guard = FlightGuard {
                        inflight: &self.inflight,
                        key: key.clone(),
                    };
                    let outcome = fetch().await;
                    tx.send_replace(Some(outcome.clone()));
                    return outcome;
                }
                Err(mut rx) => {
                    if let Ok(done) = rx.wait_for(Option::is_some).await {
                        if let Some(outcome) = done.clone() {
                            return outcome;
                        }
                    }
                    // The fetch was abandoned without an outcome: try again.
                }
            }
        }
    }

    /// A thumbnail of remote media whose original is not cached: fetched from the origin (which
    /// has the original) and cached under the remote media item.
    async fn remote_thumbnail(
        &self,
        server: &ServerName,
        media_id: &str,
        (width, height): (u32, u32),
        method: Method,
        animated: bool,
        wait: Duration,
    ) -> Result<Content> {
        let thumb_key = (
            server.as_str(),
            media_id,
            width,
            height,
            method.as_u8(),
            remote_thumbnail_kind(animated),
        );
        if let Some(content) = self.cached_thumbnail(thumb_key)? {
            return Ok(content);
        }
        let mut flight = vec![FLIGHT_THUMBNAIL];
        flight.extend_from_slice(MediaSubject::thumbnail(thumb_key).as_bytes());
        self.single_flight(flight, || async {
            if let Some(content) = self.cached_thumbnail(thumb_key)? {
                return Ok(content);
            }
            let federation = self.remote_fetcher()?;
            let request = MediaRequest::Thumbnail {
                media_id,
                width,
                height,
                method: method.as_str(),
                animated,
                timeout_ms: wait.as_millis() as u64,
            };
            let file = federation
                .fetch_media(server, request, self.max_upload_size())
                .await?;
            self.store_remote_thumbnail(thumb_key, file.data).await
        })
        .await
    }

    fn cached_thumbnail(&self, thumb_key: ThumbnailKey<'_>) -> Result<Option<Content>> {
        let Some(t) = self.tables.thumbnails.get(thumb_key)? else {
            return Ok(None);
        };
        Ok(ContentHash::from_hex(&t.content_hash).map(|hash| Content {
            hash,
            size: t.size,
            content_type: Some(t.content_type),
            filename: None,
        }))
    }

    /// Caches a thumbnail from the origin. Its type is what its bytes are, whatever the origin
    /// said; bytes that are no image are not served as a thumbnail. The media item gets a record
    /// without content if it has none, so retention and purges find the thumbnail.
    async fn store_remote_thumbnail(
        &self,
        thumb_key: ThumbnailKey<'_>,
        data: Bytes,
    ) -> Result<Content> {
        let sniffed = data.clone();
        let (hash, info) = tokio::task::spawn_blocking(move || {
            let format = image::guess_format(&sniffed).ok();
            let dims = thumbnail::dimensions(&sniffed);
            (ContentHash::of(&sniffed), format.zip(dims))
        })
        .await
        .map_err(Error::internal)?;
        let Some((format, (width, height))) = info else {
            return Err(Error::upstream("The origin's thumbnail is not an image"));
        };
        let record = ThumbnailRecord {
            content_hash: hash.to_hex(),
            content_type: format.to_mime_type().to_owned(),
            size: data.len() as u64,
            width,
            height,
        };
        let item = (thumb_key.0, thumb_key.1);
        let subject = MediaSubject::media(item);
        let _record = self.remote_lock(&subject).lock().await;
        let mut batch = Batch::new();
        if self.record(item)?.is_none() {
            let now = now_ms();
            let placeholder = MediaRecord {
                content_hash: None,
                content_type: None,
                filename: None,
                size: 0,
                uploader: None,
                created_ts: now,
                unused_expires_at: None,
                remote: true,
            };
            self.tables.media.put_in(&mut batch, item, &placeholder);
            self.tables
                .expiry
                .put_in(&mut batch, (MEDIA_EXPIRY_REMOTE, now, &subject), &());
        }
        self.tables
            .thumbnails
            .put_in(&mut batch, thumb_key, &record);
        let thumb_subject = MediaSubject::thumbnail(thumb_key);
        self.put_referenced(hash, data, batch, &thumb_subject)
            .await?;
        self.expiry_changed.notify_one();
        Ok(Content {
            hash,
            size: record.size,
            content_type: Some(record.content_type),
            filename: None,
        })
    }

    /// The bytes of stored content, or of a range of it.
    pub async fn open(&self, hash: ContentHash, range: Option<Range<u64>>) -> Result<ByteStream> {
        self.store
            .get(hash, range)
            .await
            .map_err(io_error)?
            .ok_or_else(|| Error::internal(format!("media file {} is missing", hash.to_hex())))
    }

    /// A thumbnail of a media item (generated once, then served from the store), or the original
    /// content when it is already small enough, or animated and `animated` was asked for.
    pub async fn thumbnail(
        &self,
        server: &ServerName,
        media_id: &str,
        (width, height): (u32, u32),
        method: Method,
        animated: bool,
        wait: Duration,
    ) -> Result<Content> {
        // Remote originals are not downloaded for a thumbnail: the origin makes it. One already
        // cached is thumbnailed here like local media.
        if !self.is_local(server) && self.cached_remote((server.as_str(), media_id))?.is_none() {
            return self
                .remote_thumbnail(server, media_id, (width, height), method, animated, wait)
                .await;
        }
        let original = self.content(server, media_id, wait).await?;
        // Large originals are not decoded at all: the spec's 413 for "too large to thumbnail".
        let limit = self.config.max_upload_size.0;
        if original.size > limit {
            return Err(Error::too_large("Content is too large to thumbnail"));
        }
        // The format (and so the thumbnail's type, part of its key) from the first bytes only:
        // a cached thumbnail is served without reading the original.
        let mut head = Vec::new();
        {
            use futures_util::StreamExt;
            let mut stream = self.open(original.hash, Some(0..SNIFF_LEN)).await?;
            while let Some(chunk) = stream.next().await {
                head.extend_from_slice(&chunk.map_err(io_error)?);
            }
        }
        let cannot = || Error::unknown("Cannot generate thumbnails for the requested content");
        let out_type = thumbnail::output_type(&head).ok_or_else(cannot)?;
        // When the original is served as its own thumbnail, its type is what it is, whatever
        // the uploader claimed (the spec allows only image types here).
        let original = Content {
            content_type: image::guess_format(&head)
                .ok()
                .map(|f| f.to_mime_type().to_owned()),
            ..original
        };
        let thumb_key = (
            server.as_str(),
            media_id,
            width,
            height,
            method.as_u8(),
            out_type,
        );
        // An animated request may be answered with the original instead, decided while generating.
        if !animated {
            if let Some(content) = self.cached_thumbnail(thumb_key)? {
                return Ok(content);
            }
        }

        let _slot = self
            .thumbnail_slots
            .acquire()
            .await
            .map_err(Error::internal)?;
        let source = store::read_all(&*self.store, original.hash, limit)
            .await
            .map_err(io_error)?
            .ok_or_else(|| Error::internal("media file is missing"))?;
        let outcome = tokio::task::spawn_blocking(move || {
            thumbnail::generate(&source, width, height, method, animated)
        })
        .await
        .map_err(|e| Error::internal(format!("thumbnail task: {e}")))?;
        let thumb = match outcome {
            Ok(Outcome::Original) => return Ok(original),
            Ok(Outcome::Thumbnail(t)) => t,
            Err(ThumbnailError::TooLarge) => {
                return Err(Error::too_large("Content is too large to thumbnail"))
            }
            Err(ThumbnailError::NotAnImage) => return Err(cannot()),
            Err(ThumbnailError::Corrupt(reason)) => {
                tracing::debug!(media_id, %reason, "cannot thumbnail");
                return Err(cannot());
            }
        };
        let data = Bytes::from(thumb.data);
        let hash = ContentHash::of(&data);
        let record = ThumbnailRecord {
            content_hash: hash.to_hex(),
            content_type: thumb.content_type.to_owned(),
            size: data.len() as u64,
            width: thumb.width,
            height: thumb.height,
        };
        let mut batch = Batch::new();
        self.tables
            .thumbnails
            .put_in(&mut batch, thumb_key, &record);
        // The original may have been purged while we worked: then keep nothing.
        if self.record((server.as_str(), media_id))?.is_some() {
            let subject = MediaSubject::thumbnail(thumb_key);
            self.put_referenced(hash, data, batch, &subject).await?;
        }
        Ok(Content {
            hash,
            size: record.size,
            content_type: Some(record.content_type),
            filename: None,
        })
    }

    /// Deletes a media item, its thumbnails, and the files nothing else uses.
    async fn delete_media(&self, item: MediaKey<'_>) -> Result<bool> {
        let Some(record) = self.record(item)? else {
            return Ok(false);
        };
        let user = match &record.uploader {
            Some(u) if !record.remote => self.users.short_id(u)?,
            _ => None,
        };
        let _user = match user {
            Some(short) => Some(stripe(&self.user_locks, short).lock().await),
            None => None,
        };
        let mut batch = Batch::new();
        let mut hashes = Vec::new();
        for row in self.tables.thumbnails.scan(item) {
            let (k, t) = row?;
            if let Some(hash) = ContentHash::from_hex(&t.content_hash) {
                let (server, media_id, width, height, method, content_type) = &k;
                let thumbnail = (
                    server.as_str(),
                    media_id.as_str(),
                    *width,
                    *height,
                    *method,
                    content_type.as_str(),
                );
                let subject = MediaSubject::thumbnail(thumbnail);
                self.tables.refs.delete_in(&mut batch, (&hash.0, &subject));
                hashes.push(hash);
            }
            self.tables.thumbnails.delete_row_in(&mut batch, &k);
        }
        let subject = MediaSubject::media(item);
        if let Some(hash) = record.hash() {
            self.tables.refs.delete_in(&mut batch, (&hash.0, &subject));
            hashes.push(hash);
        }
        let kind = if record.remote {
            MEDIA_EXPIRY_REMOTE
        } else {
            MEDIA_EXPIRY_LOCAL
        };
        self.tables
            .expiry
            .delete_in(&mut batch, (kind, record.created_ts, &subject));
        if let Some(expires) = record.unused_expires_at {
            self.tables
                .expiry
                .delete_in(&mut batch, (MEDIA_EXPIRY_PENDING, expires, &subject));
        }
        if let Some(short) = user {
            self.tables.pending.delete_in(&mut batch, (short, item.1));
            let usage = self.usage(short)?.saturating_sub(record.size);
            self.tables.usage.put_in(&mut batch, short, &usage);
        }
        self.tables.media.delete_in(&mut batch, item);
        self.db.write(batch).await?;
        self.release(hashes).await?;
        Ok(true)
    }

    /// Drops cached remote media fetched before `before_ts`; returns the media IDs deleted.
    pub async fn purge_remote_cache(&self, before_ts: u64) -> Result<Vec<String>> {
        self.purge(MEDIA_EXPIRY_REMOTE, before_ts).await
    }

    /// Deletes local media uploaded before `before_ts`; returns the media IDs deleted.
    pub async fn purge_local(&self, before_ts: u64) -> Result<Vec<String>> {
        self.purge(MEDIA_EXPIRY_LOCAL, before_ts).await
    }

    /// Deletes everything of one expiry kind dated before `before_ts`; returns the media IDs (or
    /// URLs) deleted.
    async fn purge(&self, kind: u8, before_ts: u64) -> Result<Vec<String>> {
        let mut deleted = Vec::new();
        loop {
            let start = MediaSubject::default();
            let rows: Vec<_> = self
                .tables
                .expiry
                .range((kind, 0, &start), (kind, before_ts, &start))
                .keys()
                .take(PURGE_BATCH)
                .collect::<Result<_, _>>()?;
            let done = rows.len() < PURGE_BATCH;
            for row in rows {
                let subject = &row.2;
                let mut batch = Batch::new();
                if kind == MEDIA_EXPIRY_PREVIEW {
                    let url = subject.as_url();
                    self.tables.previews.delete_in(&mut batch, &url);
                    deleted.push(url);
                } else if let Some((server, media_id)) = subject.media_item() {
                    if self.delete_media((&server, &media_id)).await? {
                        deleted.push(media_id);
                    }
                }
                // Also when the media went some other way and this row is all that is left.
                self.tables.expiry.delete_row_in(&mut batch, &row);
                self.db.write(batch).await?;
            }
            if done {
                break;
            }
        }
        if !deleted.is_empty() {
            tracing::info!(kind, count = deleted.len(), "media purged");
        }
        Ok(deleted)
    }

    /// The age limit of each expiry kind, for the retention job.
    fn max_ages(&self) -> [(u8, Option<u64>); 4] {
        let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
        [
            (
                MEDIA_EXPIRY_LOCAL,
                ms(self.config.retention.local_max_age.0),
            ),
            (
                MEDIA_EXPIRY_REMOTE,
                ms(self.config.retention.remote_max_age.0),
            ),
            // Pending rows are dated by their expiry time already.
            (MEDIA_EXPIRY_PENDING, Some(0)),
            (MEDIA_EXPIRY_PREVIEW, Some(PREVIEW_TTL_MS)),
        ]
    }

    /// Purges whatever has expired; returns when the next thing will (`None`: nothing will).
    pub async fn expire_due(&self) -> Result<Option<u64>> {
        let mut next: Option<u64> = None;
        for (kind, max_age) in self.max_ages() {
            let Some(age) = max_age else { continue };
            let cutoff = now_ms().saturating_sub(age);
            self.purge(kind, cutoff.saturating_add(1)).await?;
            let first = self
                .tables
                .expiry
                .scan((kind,))
                .keys()
                .next()
                .transpose()?
                .map(|(_, time, _)| time);
            if let Some(t) = first {
                let due = t.saturating_add(age);
                next = Some(next.map_or(due, |n| n.min(due)));
            }
        }
        Ok(next)
    }

    /// The retention job: sleeps until the next expiry, purges, repeats. Runs until dropped
    /// (the server selects it against shutdown).
    pub async fn run_retention(self: Arc<Self>) {
        loop {
            // Registered first, so something stored during the pass reschedules us.
            let changed = self.expiry_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wait = match self.expire_due().await {
                Ok(Some(due)) => Some(Duration::from_millis(due.saturating_sub(now_ms()))),
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "media retention pass failed");
                    Some(Duration::from_secs(60))
                }
            };
            match wait {
                Some(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }

    /// An OpenGraph preview of `url`, from the cache when fetched within the last day.
    pub async fn preview(&self, url: &str) -> Result<serde_json::Value> {
        if !self.config.url_preview.enabled {
            return Err(Error::not_found("URL previews are disabled"));
        }
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| Error::invalid_param(format!("Invalid URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Error::invalid_param(
                "Only http and https URLs are previewed",
            ));
        }
        let url = parsed.as_str();
        let now = now_ms();
        let cached = self.tables.previews.get(url)?;
        if let Some(c) = &cached {
            if now.saturating_sub(c.fetched_ts) < PREVIEW_TTL_MS {
                return Ok(c.data.clone());
            }
        }
        let data = tokio::time::timeout(
            self.config.url_preview.timeout.0,
            self.fetch_preview(parsed.as_str()),
        )
        .await
        .map_err(|_| Error::upstream_timeout("Timed out fetching the URL"))??;
        let subject = MediaSubject::url(url);
        let mut batch = Batch::new();
        if let Some(old) = cached {
            self.tables
                .expiry
                .delete_in(&mut batch, (MEDIA_EXPIRY_PREVIEW, old.fetched_ts, &subject));
        }
        self.tables
            .expiry
            .put_in(&mut batch, (MEDIA_EXPIRY_PREVIEW, now, &subject), &());
        self.tables.previews.put_in(
            &mut batch,
            url,
            &CachedPreview {
                fetched_ts: now,
                data: data.clone(),
            },
        );
        self.db.write(batch).await?;
        self.expiry_changed.notify_one();
        Ok(data)
    }

    async fn fetch_preview(&self, url: &str) -> Result<serde_json::Value> {
        let max = self.config.url_preview.max_size.0;
        let page = preview::fetch(&self.preview_policy, url, max).await?;
        let mut out = serde_json::Map::new();
        let image_url = if preview::is_html(&page.content_type) {
            let html = String::from_utf8_lossy(&page.body);
            let mut og = preview::parse_html(&html, &page.url);
            let image = og.remove("og:image");
            // Dimensions and type are set from the image we store, not trusted from the page.
            og.retain(|k, _| !k.starts_with("og:image"));
            for (k, v) in og {
                out.insert(k, v.into());
            }
            image
        } else {
            None
        };
        let image = match image_url {
            Some(u) => {
                match preview::fetch(&self.preview_policy, &u, max.min(self.max_upload_size()))
                    .await
                {
                    Ok(fetched) => Some(fetched.body),
                    Err(e) => {
                        tracing::debug!(error = %e, url = %u, "og:image not fetched");
                        None
                    }
                }
            }
            // A URL that is itself an image previews as that image.
            None if page.content_type.starts_with("image/") => Some(page.body),
            None => None,
        };
        if let Some(body) = image.filter(|b| b.len() as u64 <= self.max_upload_size()) {
            let sniffed = body.clone();
            let info = tokio::task::spawn_blocking(move || {
                let dims = thumbnail::dimensions(&sniffed)?;
                let format = image::guess_format(&sniffed).ok()?;
                Some((dims, format.to_mime_type()))
            })
            .await
            .map_err(Error::internal)?;
            if let Some(((w, h), mime)) = info {
                let size = body.len();
                let mxc = self.upload(None, Some(mime.to_owned()), None, body).await?;
                out.insert("og:image".into(), mxc.to_string().into());
                out.insert("og:image:type".into(), mime.into());
                out.insert("og:image:width".into(), w.into());
                out.insert("og:image:height".into(), h.into());
                out.insert("matrix:image:size".into(), size.into());
            }
        }
        Ok(serde_json::Value::Object(out))
    }
}
