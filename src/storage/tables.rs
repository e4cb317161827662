//! Every keyspace Hearth stores, with its key and value layout: this file is the documentation of
//! the database, and the code that reads and writes it. Services hold a [`Table`] of the
//! keyspaces they touch (`Table<tables::Presence<Stored>>`) and never see key bytes.
//!
//! Notation: `a . b` is `a` followed by `b`; `short` is a u64 short ID (see `ShortIds`); numbers
//! are big-endian and fixed-width; `str` runs to the end of the key, `str 0xff` is ended by 0xff.
//! `Json<T>` is the record `T` of the service that owns the keyspace, as JSON.
//!
//! `global`, `shortids` and `shortids_rev` belong to `Db` and `ShortIds` (see `shortid.rs`).

use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value as JsonValue;

use super::schema::{key, Cf};
use super::table::{
    Bytes, Empty, Hash32, Json, KeyCodec, Packed, Positioned, Raw, Schema, Str, Table, Term,
    ValueCodec, U32, U64, U8,
};

/// Declares keyspaces: `Name<T>: cf, key => value;`, `T` being the record its owner stores.
macro_rules! tables {
    ($($(#[$doc:meta])* $name:ident $(<$t:ident>)?: $cf:ident, $key:ty => $value:ty;)*) => {$(
        $(#[$doc])*
        pub struct $name $(<$t>)? (std::marker::PhantomData<fn() -> ($($t,)?)>);

        impl $(<$t: Serialize + DeserializeOwned + 'static>)? Schema for $name $(<$t>)? {
            const CF: Cf = Cf::$cf;
            type Key = $key;
            type Value = $value;
        }
    )*};
}

// Accounts.
tables! {
    /// user (short) → `Json<UserRecord>`.
    Users<T>: Users, U64 => Json<T>;
    /// user (short) . field name (str) → the field's value (JSON).
    Profiles: Profiles, (U64, Str) => Json<JsonValue>;
    /// user (short) . device ID (str) → `Json<DeviceRecord>`.
    Devices<T>: Devices, (U64, Str) => Json<T>;
    /// sha256(access token) → `Json<TokenRecord>`.
    AccessTokens<T>: AccessTokens, Hash32 => Json<T>;
    /// sha256(refresh token) → `Json<TokenRecord>`.
    RefreshTokens<T>: RefreshTokens, Hash32 => Json<T>;
    /// token (str) → `Json<RegistrationToken>`.
    RegistrationTokens<T>: RegistrationTokens, Str => Json<T>;
    /// user (short) . filter ID (u64, per user from 1) → the filter definition (JSON).
    Filters: Filters, (U64, U64) => Json<JsonValue>;
    /// user (short) . room (short; 0 = global) . event type (str) →
    /// stream position of the last change (u64) . content (JSON).
    AccountData: AccountData, (U64, U64, Str) => Positioned<Json<JsonValue>>;
    /// user (short) . stream position (u64) → room (short; 0 = global) . event type (str): the
    /// `account_data` row that changed there.
    AccountDataByPos: AccountDataByPos, (U64, U64) => Packed<(U64, Str)>;
    /// user (short) . backup version (u64, per user from 1, never reused) →
    /// `Json<StoredVersion>`: algorithm, auth_data, key count, etag, deleted flag.
    BackupVersions<T>: BackupVersions, (U64, U64) => Json<T>;
    /// user (short) . backup version (u64) . room ID (str 0xff) . session ID (str) → the session
    /// key (KeyBackupData JSON). Room IDs are strings: clients back up rooms we may never see.
    BackupKeys: BackupKeys, (U64, U64, Term, Str) => Json<JsonValue>;
}

// End-to-end encryption.
tables! {
    /// user (short) . device ID (str) → the device's signed identity keys (JSON).
    DeviceKeys: DeviceKeys, (U64, Str) => Json<JsonValue>;
    /// user (short) . device ID (str 0xff) . algorithm ':' key ID (str) → the signed one-time
    /// key (JSON).
    OneTimeKeys: OneTimeKeys, (U64, Term, Str) => Json<JsonValue>;
    /// user (short) . device ID (str 0xff) . algorithm (str) → `Json<FallbackKey>`: key ID, key,
    /// whether it was used.
    FallbackKeys<T>: FallbackKeys, (U64, Term, Str) => Json<T>;
    /// user (short) . usage (str: master | self_signing | user_signing) → the key (JSON).
    CrossSigningKeys: CrossSigningKeys, (U64, Str) => Json<JsonValue>;
    /// stream position (u64) → the user (short) whose devices or cross-signing keys changed.
    KeyChanges: KeyChanges, U64 => Packed<U64>;
    /// user (short) . device ID (str 0xff) . stream position (u64) → `Json<ToDeviceMessage>`:
    /// sender, type, content.
    ToDevice<T>: ToDevice, (U64, Term, U64) => Json<T>;
}

// Ephemeral streams and notifications.
tables! {
    /// user (short) → stream position of the last change (u64) . `Json<Stored>`: state, status
    /// message, last activity.
    Presence<T>: Presence, U64 => Positioned<Json<T>>;
    /// stream position (u64) → the user (short) whose presence changed there.
    PresenceByPos: PresenceByPos, U64 => Packed<U64>;
    /// room (short) . user (short) . receipt type (str 0xff) . thread (str; empty: unthreaded) →
    /// stream position of the last change (u64) . `Json<Stored>`: event ID, timestamp.
    Receipts<T>: Receipts, (U64, U64, Term, Str) => Positioned<Json<T>>;
    /// room (short) . stream position (u64) → the `receipts` key that changed there.
    ReceiptsByPos: ReceiptsByPos, (U64, U64) => Packed<(U64, U64, Term, Str)>;
    /// user (short) . room (short) . event (short = stream position) →
    /// `Json<StoredNotification>`: actions, highlight, thread root, timestamp.
    Notifications<T>: Notifications, (U64, U64, U64) => Json<T>;
}

// Federation.
tables! {
    /// server name (str) → `Json<CachedKeys>`: verified keys, the server's signed answer, when
    /// fetched.
    ServerKeys<T>: ServerKeys, Str => Json<T>;
    /// destination server name (str 0xff) . sequence (u64, the stream position it was queued
    /// at) → [`QueuedItem`]: 0 . event (short) for a PDU, or 1 . the EDU's JSON.
    FedQueue: FedQueue, (Term, U64) => QueuedItem;
    /// origin server name (str 0xff) . transaction ID (str) → the /send answer we gave (JSON:
    /// event ID → error or null), so that a retried transaction is answered the same.
    FedTxns<T>: FedTxns, (Term, Str) => Json<T>;
}

// Media.
tables! {
    /// server name (str 0xff) . media ID (str) → `Json<MediaRecord>`: content hash (none while
    /// a /create awaits its upload), type, filename, size, uploader, created time.
    Media<T>: Media, (Term, Str) => Json<T>;
    /// server name (str 0xff) . media ID (str 0xff) . width (u32) . height (u32) . method (u8) .
    /// content type (str) → `Json<ThumbnailRecord>`: content hash, type, size, width, height.
    MediaThumbnails<T>: MediaThumbnails, (Term, Term, U32, U32, U8, Str) => Json<T>;
    /// content hash (sha256) . the key of a `media` or `media_thumbnails` row (see
    /// [`MediaSubject`]) → nothing: who uses a stored file; the file goes with its last row.
    MediaRefs: MediaRefs, (Hash32, Bytes) => Empty;
    /// kind (u8: [`MEDIA_EXPIRY_LOCAL`], ...) . time (ms, u64) . subject (a `media` key, or for
    /// previews the URL) → nothing: what the retention job may delete, oldest first.
    MediaExpiry: MediaExpiry, (U8, U64, Bytes) => Empty;
    /// user (short) . media ID (str) → expiry time (ms, u64) of a /create awaiting its upload.
    MediaPending: MediaPending, (U64, Str) => Packed<U64>;
    /// user (short) → bytes of local media the user uploaded (u64), for the quota.
    MediaUsage: MediaUsage, U64 => Packed<U64>;
    /// URL (str) → `Json<CachedPreview>`: fetch time, OpenGraph data.
    UrlPreviews<T>: UrlPreviews, Str => Json<T>;
}

// Rooms and events.
tables! {
    /// room (short) → `Json<RoomMeta>`: room ID, version, current state group, forward
    /// extremities, depth, create event.
    Rooms<T>: Rooms, U64 => Json<T>;
    /// event (short) → the event's canonical JSON (redacted in place once redacted).
    Pdus: Pdus, U64 => Raw;
    /// event (short) → room (short) . depth (u64) . state group before (u64) . state group after
    /// (u64) . redacted (u8: 0 | 1).
    EventMeta: EventMeta, U64 => Packed<(U64, U64, U64, U64, U8)>;
    /// room (short) . event (short = stream position) → nothing: the room's timeline in order.
    Timeline: Timeline, (U64, U64) => Empty;
    /// state group (u64) → StateGroup (binary, see `rooms::state`): parent, chain length, added
    /// (state key, event) pairs, removed state keys.
    StateGroups: StateGroups, U64 => Raw;
    /// room (short) . state key (short, of (type, state key)) → event (short): current state.
    RoomState: RoomState, (U64, U64) => Packed<U64>;
    /// user (short) . room (short) → membership (u8: 1 join, 2 invite, 3 leave, 4 ban,
    /// 5 knock) . the member event (short).
    Memberships: Memberships, (U64, U64) => Packed<(U8, U64)>;
    /// room (short) . user (short) → membership (u8) . the member event (short), as above.
    RoomMembers: RoomMembers, (U64, U64) => Packed<(U8, U64)>;
    /// user (short) . device ID (str 0xff) . room (short) . transaction ID (str) → the event ID
    /// (str) that the transaction sent.
    TxnIds: TxnIds, (U64, Term, U64, Str) => Packed<Str>;
    /// event (short) → device ID (str 0xff) . transaction ID (str) of the sender's request.
    EventTxn: EventTxn, U64 => Packed<(Term, Str)>;
    /// parent event (short) . child event (short = stream position) → rel_type (str).
    Relations: Relations, (U64, U64) => Packed<Str>;
    /// room (short) . thread root (short) → event (short) of the latest reply.
    Threads: Threads, (U64, U64) => Packed<U64>;
    /// report ID (u64, time-ordered) → `Json<Report>`: reporter, room, event, reason, time.
    Reports<T>: Reports, U64 => Json<T>;
    /// room alias (str) → `Json<AliasRecord>`: room ID, creator.
    Aliases<T>: Aliases, Str => Json<T>;
    /// room (short) . alias (str) → nothing.
    RoomAliases: RoomAliases, (U64, Str) => Empty;
    /// room (short) → nothing: the room is in the public directory.
    PublicRooms: PublicRooms, U64 => Empty;
    /// user (short) . room (short) → nothing: the user left and forgot the room (cleared when
    /// they rejoin or are invited).
    Forgotten: Forgotten, (U64, U64) => Empty;
    /// event (short) → flags (u8): 1 outlier (fetched without its place in the DAG), 2 rejected
    /// by the auth rules, 4 soft-failed.
    Outliers: Outliers, U64 => Packed<U8>;
    /// user (short) . room (short) → stripped state (JSON array) another server sent with an
    /// invite to a room we are not in.
    InviteState<T>: InviteState, (U64, U64) => Json<T>;
}

/// The server's signing key, the row `signing_key` of `global` → `Json<StoredSigningKey>`: key
/// version, PKCS#8 DER (base64).
pub struct SigningKey<T>(std::marker::PhantomData<fn() -> T>);

impl<T: Serialize + DeserializeOwned + 'static> Schema for SigningKey<T> {
    const CF: Cf = Cf::Global;
    type Key = SigningKeyRow;
    type Value = Json<T>;
}

/// The key of the signing key's row: its name.
pub enum SigningKeyRow {}

impl KeyCodec for SigningKeyRow {
    type Key<'a> = ();
    type Owned = ();
    fn encode((): (), out: &mut Vec<u8>) {
        out.extend_from_slice(key::GLOBAL_SIGNING_KEY);
    }
    fn decode(raw: &[u8]) -> Option<()> {
        (raw == key::GLOBAL_SIGNING_KEY).then_some(())
    }
    fn borrow((): &()) {}
}

/// A row of the federation queue.
#[derive(Clone, Debug, PartialEq)]
pub enum QueuedItem {
    /// An event (short) to send as a PDU.
    Pdu(u64),
    /// An EDU, as JSON bytes.
    Edu(Vec<u8>),
}

impl ValueCodec for QueuedItem {
    type Value = QueuedItem;
    fn encode(value: &QueuedItem) -> Vec<u8> {
        match value {
            QueuedItem::Pdu(event) => {
                let mut out = vec![0];
                out.extend_from_slice(&event.to_be_bytes());
                out
            }
            QueuedItem::Edu(json) => {
                let mut out = vec![1];
                out.extend_from_slice(json);
                out
            }
        }
    }
    fn decode(raw: &[u8]) -> Result<QueuedItem, String> {
        match raw.split_first() {
            Some((0, event)) => event
                .try_into()
                .map(|b| QueuedItem::Pdu(u64::from_be_bytes(b)))
                .map_err(|_| "a PDU row is 9 bytes".into()),
            Some((1, json)) => Ok(QueuedItem::Edu(json.to_vec())),
            _ => Err("unknown queue row kind".into()),
        }
    }
}

/// Kinds of rows in `media_expiry`.
pub const MEDIA_EXPIRY_LOCAL: u8 = 0;
pub const MEDIA_EXPIRY_REMOTE: u8 = 1;
pub const MEDIA_EXPIRY_PENDING: u8 = 2;
pub const MEDIA_EXPIRY_PREVIEW: u8 = 3;

/// What a `media_refs` or `media_expiry` row points at: the key of a media item or of one of its
/// thumbnails, or a URL preview's URL. Opaque to services; compare and hash it freely.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MediaSubject(Vec<u8>);

impl MediaSubject {
    /// A media item (its `media` key).
    pub fn media(server: &str, media_id: &str) -> Self {
        Self(Table::<Media<()>>::key((server, media_id)))
    }

    /// A thumbnail (its `media_thumbnails` key).
    pub fn thumbnail(
        (server, media_id, width, height, method, content_type): ThumbnailKey<'_>,
    ) -> Self {
        Self(Table::<MediaThumbnails<()>>::key((
            server,
            media_id,
            width,
            height,
            method,
            content_type,
        )))
    }

    /// A URL preview.
    pub fn url(url: &str) -> Self {
        Self(url.as_bytes().to_vec())
    }

    /// The bytes, as a row key of `media_refs` and `media_expiry` holds them.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Back from the bytes of a `media_expiry` row.
    pub fn from_bytes(raw: Vec<u8>) -> Self {
        Self(raw)
    }

    /// (server name, media ID) of a media item's subject.
    pub fn media_item(&self) -> Option<(String, String)> {
        <(Term, Str)>::decode(&self.0)
    }

    /// The URL of a preview's subject.
    pub fn as_url(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

/// A `receipts` key as read back: room, user, receipt type, thread.
pub type ReceiptKey = (u64, u64, String, String);

/// A thumbnail's key: server, media ID, width, height, method, content type.
pub type ThumbnailKey<'a> = (&'a str, &'a str, u32, u32, u8, &'a str);
