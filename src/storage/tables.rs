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
    Empty, Field, Hash32, Json, KeyCodec, Packed, Positioned, Raw, Schema, Str, Table, Term,
    ValueCodec, U32, U64, U8,
};
use super::Result;

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
    /// user (short) . app ID (str 0xff) . pushkey (str) → `Json<StoredPusher>`: the pusher as the
    /// client set it, its ID, the device whose token set it.
    Pushers<T>: Pushers, (U64, Term, Str) => Json<T>;
    /// pusher ID (u64: a stream position taken when it was set) . stream position (u64) →
    /// `Json<QueuedPush>`: a notification to deliver (room, event, priority, tweaks) or a badge
    /// update.
    PushQueue<T>: PushQueue, (U64, U64) => Json<T>;
}

// The user directory.
tables! {
    /// user (short) → `Json<DirEntry>`: the name and avatar a directory search finds the user by
    /// (a local user's profile, a remote user's latest join). The row of user 0, never a short
    /// ID, says the directory was built from what the database held before it existed.
    UserDirectory<T>: UserDirectory, U64 => Json<T>;
    /// term (str 0xff: a folded word of the name or user ID) . user (short) → nothing.
    UserDirectoryTerms: UserDirectoryTerms, (Term, U64) => Empty;
}

// Full-text search.
tables! {
    /// event (short = stream position) → nothing: an event whose text the search index has yet
    /// to take in (or, for a redaction, whose target it has yet to drop).
    SearchQueue: SearchQueue, U64 => Empty;
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

// Application services.
tables! {
    /// appservice ID (str 0xff) . stream position (u64) → [`QueuedItem`] queued for it there:
    /// 0 . an event (short), written in the event's own batch, or 1 . a to-device message or
    /// ephemeral event (JSON); deleted once the appservice acknowledged it.
    AppserviceQueue: AppserviceQueue, (Term, U64) => QueuedItem;
    /// appservice ID (str) → `Json<Delivery>`: transactions sent, the key-change position
    /// delivered, and the transaction in flight (its queue positions and device data), fixed
    /// before its first attempt so that every retry carries the same content under the same ID.
    AppserviceTxns<T>: AppserviceTxns, Str => Json<T>;
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
    MediaRefs: MediaRefs, (Hash32, MediaSubject) => Empty;
    /// kind (u8: [`MEDIA_EXPIRY_LOCAL`], ...) . time (ms, u64) . subject (a `media` key, or for
    /// previews the URL) → nothing: what the retention job may delete, oldest first.
    MediaExpiry: MediaExpiry, (U8, U64, MediaSubject) => Empty;
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
    /// state group (u64) → [`StateGroup`]: parent, chain length, added (state key, event)
    /// pairs, removed state keys.
    StateGroups: StateGroups, U64 => StateGroup;
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
    /// room (short) → stream position (u64) of its latest timeline event of a type that moves
    /// a room up a client's list (a message, not a reaction or a state change): sliding sync's
    /// `bump_stamp`.
    RoomBump: RoomBump, U64 => Packed<U64>;
    /// third-party instance ID (str 0xff: appservice ID '|' network ID) . room (short) →
    /// nothing: the room is in the directory of a bridged network, which an appservice keeps.
    NetworkRooms: NetworkRooms, (Term, U64) => Empty;
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

// Delayed events (MSC4140). A delayed event's `delayed_events` row is the fact; the indexes
// below point at it and are written and deleted with it. An index row whose record is gone (a
// restart racing a cancellation) is stale and skipped, then removed when met.
tables! {
    /// delay ID (str) → `Json<Scheduled>`: owner, device, room, event type, state key,
    /// content, delay, the client's transaction ID. Written once, deleted once.
    DelayedEvents<T>: DelayedEvents, Str => Json<T>;
    /// send time (ms, u64) . delay ID (str) → its owner (user short): what is due next,
    /// earliest first.
    DelayedEventsDue: DelayedEventsDue, (U64, Str) => Packed<U64>;
    /// user (short) . delay ID (str) → send time (ms, u64): a user's scheduled events and when
    /// each is due (a restart moves it).
    DelayedEventsByUser: DelayedEventsByUser, (U64, Str) => Packed<U64>;
    /// room (short) . event type (str 0xff) . state key (str 0xff) . delay ID (str) → nothing:
    /// delayed state events by the state they will set, to cancel them when another user sets
    /// that state first.
    DelayedEventsByState: DelayedEventsByState, (U64, Term, Term, Str) => Empty;
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

impl Table<FedQueue> {
    /// The destinations with queued rows, each once, in order.
    pub fn destinations(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut from = Vec::new();
        // Server names are UTF-8, so every key sorts below 0xff.
        while let Some(row) = self
            .db
            .scan_range(Cf::FedQueue, &from, &[0xff], false)
            .next()
        {
            let (k, _) = row?;
            let Some((destination, _)) = <FedQueue as Schema>::Key::decode(&k) else {
                break;
            };
            // Past this destination's rows.
            from = Self::key((&destination, u64::MAX));
            from.push(0);
            out.push(destination);
        }
        Ok(out)
    }
}

/// A state group as stored: the changes against its parent group (or, without one, the whole
/// state). Laid out as parent (u64; 0: none) . chain length (u32) . count (u32) . that many
/// (state key (short) . event (short)) pairs . count (u32) . that many removed state keys (short).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateGroup {
    pub parent: Option<u64>,
    /// How many deltas lead back to a snapshot (0 for a snapshot).
    pub chain: u32,
    pub added: Vec<(u64, u64)>,
    pub removed: Vec<u64>,
}

impl ValueCodec for StateGroup {
    type Value = StateGroup;
    fn encode(group: &StateGroup) -> Vec<u8> {
        let mut out = Vec::with_capacity(20 + group.added.len() * 16 + group.removed.len() * 8);
        out.extend_from_slice(&group.parent.unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&group.chain.to_be_bytes());
        out.extend_from_slice(&(group.added.len() as u32).to_be_bytes());
        for (k, e) in &group.added {
            out.extend_from_slice(&k.to_be_bytes());
            out.extend_from_slice(&e.to_be_bytes());
        }
        out.extend_from_slice(&(group.removed.len() as u32).to_be_bytes());
        for k in &group.removed {
            out.extend_from_slice(&k.to_be_bytes());
        }
        out
    }
    fn decode(raw: &[u8]) -> Result<StateGroup, String> {
        fn take<F: Field>(raw: &mut &[u8]) -> Result<F::Owned, String> {
            let (v, rest) = F::take(raw).ok_or("truncated state group")?;
            *raw = rest;
            Ok(v)
        }
        let mut r = raw;
        let parent = take::<U64>(&mut r)?;
        let chain = take::<U32>(&mut r)?;
        let n = take::<U32>(&mut r)? as usize;
        let mut added = Vec::with_capacity(n.min(raw.len() / 16));
        for _ in 0..n {
            added.push((take::<U64>(&mut r)?, take::<U64>(&mut r)?));
        }
        let n = take::<U32>(&mut r)? as usize;
        let mut removed = Vec::with_capacity(n.min(raw.len() / 8));
        for _ in 0..n {
            removed.push(take::<U64>(&mut r)?);
        }
        Ok(StateGroup {
            parent: (parent != 0).then_some(parent),
            chain,
            added,
            removed,
        })
    }
}

impl Table<StateGroups> {
    /// The highest state group stored.
    pub fn last_group(&self) -> Result<Option<u64>> {
        match self
            .db
            .scan_range(Cf::StateGroups, &[0xff; 9], &[], true)
            .next()
        {
            Some(row) => {
                let (k, _) = row?;
                Ok(Some(<StateGroups as Schema>::Key::decode(&k).ok_or_else(
                    || super::StorageError::Corrupt {
                        cf: Cf::StateGroups.name(),
                        reason: format!("key of {} bytes", k.len()),
                    },
                )?))
            }
            None => Ok(None),
        }
    }
}

/// Kinds of rows in `media_expiry`.
pub const MEDIA_EXPIRY_LOCAL: u8 = 0;
pub const MEDIA_EXPIRY_REMOTE: u8 = 1;
pub const MEDIA_EXPIRY_PENDING: u8 = 2;
pub const MEDIA_EXPIRY_PREVIEW: u8 = 3;

/// What a `media_refs` or `media_expiry` row points at: the key of a media item or of one of its
/// thumbnails, or a URL preview's URL, running to the end of the key. Opaque to services: build it
/// with [`MediaSubject::media`], [`MediaSubject::thumbnail`] or [`MediaSubject::url`]; compare
/// and hash it freely. The empty subject sorts first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct MediaSubject(Vec<u8>);

/// A media item's key: server name, media ID.
pub type MediaKey<'a> = (&'a str, &'a str);

/// A thumbnail's key: server name, media ID, width, height, method, content type.
pub type ThumbnailKey<'a> = (&'a str, &'a str, u32, u32, u8, &'a str);

impl MediaSubject {
    /// A media item (its `media` key).
    pub fn media(item: MediaKey<'_>) -> Self {
        Self(Table::<Media<()>>::key(item))
    }

    /// A thumbnail (its `media_thumbnails` key).
    pub fn thumbnail(thumbnail: ThumbnailKey<'_>) -> Self {
        Self(Table::<MediaThumbnails<()>>::key(thumbnail))
    }

    /// A URL preview.
    pub fn url(url: &str) -> Self {
        Self(url.as_bytes().to_vec())
    }

    /// (server name, media ID) of a media item's subject.
    pub fn media_item(&self) -> Option<(String, String)> {
        <(Term, Str)>::decode(&self.0)
    }

    /// The URL of a preview's subject.
    pub fn as_url(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }

    /// The bytes, for an in-memory key (single-flight fetches).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl Field for MediaSubject {
    type Ref<'a> = &'a MediaSubject;
    type Owned = MediaSubject;
    fn put(value: &MediaSubject, out: &mut Vec<u8>) {
        out.extend_from_slice(&value.0);
    }
    fn take(raw: &[u8]) -> Option<(MediaSubject, &[u8])> {
        Some((MediaSubject(raw.to_vec()), &[]))
    }
    fn borrow(owned: &MediaSubject) -> &MediaSubject {
        owned
    }
}

/// A `receipts` key as read back: room, user, receipt type, thread.
pub type ReceiptKey = (u64, u64, String, String);

#[cfg(test)]
mod tests {
    //! Every keyspace's codecs: keys and values read back as written, keys keep the byte layout
    //! that databases already hold, and keys sort as scans need.

    use std::{fmt::Debug, sync::Arc};

    use serde_json::json;

    use super::*;
    use crate::storage::{Batch, Db, RocksDb};

    type Key<'a, S> = <<S as Schema>::Key as KeyCodec>::Key<'a>;
    type Value<S> = <<S as Schema>::Value as ValueCodec>::Value;

    /// Encodes a key and a value, decodes them and checks they come back; returns the key bytes.
    fn round_trip<S: Schema>(key: Key<'_, S>, value: Value<S>) -> Vec<u8>
    where
        Value<S>: PartialEq + Debug,
    {
        let raw = Table::<S>::key(key);
        let back = S::Key::decode(&raw).expect("the key decodes");
        let mut again = Vec::new();
        S::Key::encode(S::Key::borrow(&back), &mut again);
        assert_eq!(again, raw, "{:?}: the key reads back", S::CF);
        let bytes = S::Value::encode(&value);
        assert_eq!(S::Value::decode(&bytes).unwrap(), value, "{:?}", S::CF);
        raw
    }

    fn be(n: u64) -> [u8; 8] {
        n.to_be_bytes()
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn account_keyspaces_round_trip_in_their_layout() {
        let j = json!({"a": [1, "b"]});
        assert_eq!(round_trip::<Users<JsonValue>>(7, j.clone()), be(7));
        assert_eq!(
            round_trip::<Profiles>((7, "displayname"), j.clone()),
            cat(&[&be(7), b"displayname"])
        );
        assert_eq!(
            round_trip::<Devices<JsonValue>>((7, "DEV"), j.clone()),
            cat(&[&be(7), b"DEV"])
        );
        assert_eq!(
            round_trip::<AccessTokens<JsonValue>>(&[9; 32], j.clone()),
            [9; 32]
        );
        assert_eq!(
            round_trip::<RefreshTokens<JsonValue>>(&[1; 32], j.clone()),
            [1; 32]
        );
        assert_eq!(
            round_trip::<RegistrationTokens<JsonValue>>("tok", j.clone()),
            b"tok"
        );
        assert_eq!(
            round_trip::<Filters>((7, 3), j.clone()),
            cat(&[&be(7), &be(3)])
        );
        assert_eq!(
            round_trip::<AccountData>((7, 0, "m.push_rules"), (42, j.clone())),
            cat(&[&be(7), &be(0), b"m.push_rules"])
        );
        assert_eq!(
            round_trip::<AccountDataByPos>((7, 42), (9, "m.tag".into())),
            cat(&[&be(7), &be(42)])
        );
        assert_eq!(
            round_trip::<BackupVersions<JsonValue>>((7, 2), j.clone()),
            cat(&[&be(7), &be(2)])
        );
        assert_eq!(
            round_trip::<BackupKeys>((7, 2, "!r:x", "sess"), j),
            cat(&[&be(7), &be(2), b"!r:x\xffsess"])
        );
    }

    #[test]
    fn e2ee_and_stream_keyspaces_round_trip_in_their_layout() {
        let j = json!({"k": "v"});
        assert_eq!(
            round_trip::<DeviceKeys>((7, "DEV"), j.clone()),
            cat(&[&be(7), b"DEV"])
        );
        assert_eq!(
            round_trip::<OneTimeKeys>((7, "DEV", "signed_curve25519:AAA"), j.clone()),
            cat(&[&be(7), b"DEV\xffsigned_curve25519:AAA"])
        );
        assert_eq!(
            round_trip::<FallbackKeys<JsonValue>>((7, "DEV", "signed_curve25519"), j.clone()),
            cat(&[&be(7), b"DEV\xffsigned_curve25519"])
        );
        assert_eq!(
            round_trip::<CrossSigningKeys>((7, "master"), j.clone()),
            cat(&[&be(7), b"master"])
        );
        assert_eq!(round_trip::<KeyChanges>(42, 7), be(42));
        assert_eq!(
            round_trip::<ToDevice<JsonValue>>((7, "DEV", 42), j.clone()),
            cat(&[&be(7), b"DEV\xff", &be(42)])
        );
        assert_eq!(round_trip::<Presence<JsonValue>>(7, (42, j.clone())), be(7));
        assert_eq!(round_trip::<PresenceByPos>(42, 7), be(42));
        assert_eq!(
            round_trip::<Receipts<JsonValue>>((3, 7, "m.read", ""), (42, j.clone())),
            cat(&[&be(3), &be(7), b"m.read\xff"])
        );
        let receipt = (3, 7, "m.read".to_owned(), "$root".to_owned());
        assert_eq!(
            round_trip::<ReceiptsByPos>((3, 42), receipt.clone()),
            cat(&[&be(3), &be(42)])
        );
        // The index points at the receipt's own key, byte for byte.
        assert_eq!(
            <Packed<(U64, U64, Term, Str)>>::encode(&receipt),
            Table::<Receipts<()>>::key((3, 7, "m.read", "$root"))
        );
        assert_eq!(
            round_trip::<Notifications<JsonValue>>((7, 3, 42), j),
            cat(&[&be(7), &be(3), &be(42)])
        );
    }

    #[test]
    fn push_keyspaces_round_trip_in_their_layout() {
        let j = json!([1, 2]);
        assert_eq!(
            round_trip::<Pushers<JsonValue>>((7, "im.app", "key"), j.clone()),
            cat(&[&be(7), b"im.app\xff", b"key"])
        );
        assert_eq!(
            round_trip::<PushQueue<JsonValue>>((5, 42), j),
            cat(&[&be(5), &be(42)])
        );
    }

    #[test]
    fn appservice_keyspaces_round_trip_in_their_layout() {
        assert_eq!(
            round_trip::<AppserviceQueue>(("irc", 42), QueuedItem::Pdu(9)),
            cat(&[b"irc\xff", &be(42)])
        );
        assert_eq!(
            round_trip::<AppserviceQueue>(("irc", 43), QueuedItem::Edu(b"{}".to_vec())),
            cat(&[b"irc\xff", &be(43)])
        );
        assert_eq!(
            round_trip::<AppserviceTxns<JsonValue>>("irc", json!([1, 2])),
            b"irc"
        );
    }

    #[test]
    fn federation_and_media_keyspaces_round_trip_in_their_layout() {
        let j = json!([1, 2]);
        assert_eq!(
            round_trip::<ServerKeys<JsonValue>>("a.org", j.clone()),
            b"a.org"
        );
        assert_eq!(
            round_trip::<FedQueue>(("a.org", 42), QueuedItem::Pdu(9)),
            cat(&[b"a.org\xff", &be(42)])
        );
        round_trip::<FedQueue>(("a.org", 43), QueuedItem::Edu(b"{}".to_vec()));
        assert_eq!(
            QueuedItem::encode(&QueuedItem::Pdu(9)),
            cat(&[&[0], &be(9)])
        );
        assert_eq!(
            QueuedItem::encode(&QueuedItem::Edu(b"{}".to_vec())),
            b"\x01{}"
        );
        assert_eq!(
            round_trip::<FedTxns<JsonValue>>(("a.org", "txn1"), j.clone()),
            b"a.org\xfftxn1"
        );
        assert_eq!(
            round_trip::<Media<JsonValue>>(("a.org", "abc"), j.clone()),
            b"a.org\xffabc"
        );
        let thumb = ("a.org", "abc", 32, 24, 1, "image/png");
        assert_eq!(
            round_trip::<MediaThumbnails<JsonValue>>(thumb, j.clone()),
            cat(&[
                b"a.org\xffabc\xff",
                &32u32.to_be_bytes(),
                &24u32.to_be_bytes(),
                &[1],
                b"image/png"
            ])
        );
        let media = MediaSubject::media(("a.org", "abc"));
        assert_eq!(media.as_bytes(), b"a.org\xffabc");
        assert_eq!(media.media_item(), Some(("a.org".into(), "abc".into())));
        assert_eq!(
            MediaSubject::thumbnail(thumb).as_bytes(),
            Table::<MediaThumbnails<()>>::key(thumb)
        );
        assert_eq!(
            round_trip::<MediaRefs>((&[5; 32], &media), ()),
            cat(&[&[5; 32], b"a.org\xffabc"])
        );
        assert_eq!(
            round_trip::<MediaExpiry>((MEDIA_EXPIRY_REMOTE, 1000, &media), ()),
            cat(&[&[1], &be(1000), b"a.org\xffabc"])
        );
        assert_eq!(
            round_trip::<MediaPending>((7, "abc"), 99),
            cat(&[&be(7), b"abc"])
        );
        assert_eq!(round_trip::<MediaUsage>(7, 1 << 40), be(7));
        assert_eq!(
            round_trip::<UrlPreviews<JsonValue>>("https://x/", j),
            b"https://x/"
        );
        assert_eq!(
            round_trip::<SigningKey<JsonValue>>((), json!({"version": "a_1"})),
            b"signing_key"
        );
    }

    #[test]
    fn room_keyspaces_round_trip_in_their_layout() {
        let j = json!({"room_id": "!r:x"});
        assert_eq!(round_trip::<Rooms<JsonValue>>(3, j.clone()), be(3));
        assert_eq!(round_trip::<Pdus>(9, b"{\"a\":1}".to_vec()), be(9));
        let meta = (3, 10, 100, 101, 1);
        assert_eq!(round_trip::<EventMeta>(9, meta), be(9));
        assert_eq!(
            <Packed<(U64, U64, U64, U64, U8)>>::encode(&meta),
            cat(&[&be(3), &be(10), &be(100), &be(101), &[1]])
        );
        assert_eq!(round_trip::<Timeline>((3, 9), ()), cat(&[&be(3), &be(9)]));
        let delta = StateGroup {
            parent: Some(4),
            chain: 2,
            added: vec![(7, 9), (8, 10)],
            removed: vec![11],
        };
        assert_eq!(round_trip::<StateGroups>(5, delta.clone()), be(5));
        assert_eq!(
            StateGroup::encode(&delta),
            cat(&[
                &be(4),
                &2u32.to_be_bytes(),
                &2u32.to_be_bytes(),
                &be(7),
                &be(9),
                &be(8),
                &be(10),
                &1u32.to_be_bytes(),
                &be(11)
            ])
        );
        // A snapshot has no parent: 0 on disk.
        let snapshot = StateGroup {
            added: vec![(1, 2)],
            ..StateGroup::default()
        };
        assert_eq!(round_trip::<StateGroups>(6, snapshot.clone()), be(6));
        assert_eq!(&StateGroup::encode(&snapshot)[..8], be(0));
        assert_eq!(StateGroup::decode(&[0; 20]).unwrap(), StateGroup::default());
        assert!(StateGroup::decode(&[0; 19]).is_err());
        assert_eq!(round_trip::<RoomState>((3, 4), 9), cat(&[&be(3), &be(4)]));
        assert_eq!(
            round_trip::<Memberships>((7, 3), (1, 9)),
            cat(&[&be(7), &be(3)])
        );
        assert_eq!(<Packed<(U8, U64)>>::encode(&(1, 9)), cat(&[&[1], &be(9)]));
        assert_eq!(
            round_trip::<RoomMembers>((3, 7), (2, 9)),
            cat(&[&be(3), &be(7)])
        );
        assert_eq!(
            round_trip::<TxnIds>((7, "DEV", 3, "t1"), "$e".into()),
            cat(&[&be(7), b"DEV\xff", &be(3), b"t1"])
        );
        assert_eq!(
            round_trip::<EventTxn>(9, ("DEV".into(), "t1".into())),
            be(9)
        );
        assert_eq!(
            <Packed<(Term, Str)>>::encode(&("DEV".into(), "t1".into())),
            b"DEV\xfft1"
        );
        assert_eq!(
            round_trip::<Relations>((8, 9), "m.thread".into()),
            cat(&[&be(8), &be(9)])
        );
        assert_eq!(round_trip::<Threads>((3, 8), 9), cat(&[&be(3), &be(8)]));
        assert_eq!(round_trip::<Reports<JsonValue>>(1, j.clone()), be(1));
        assert_eq!(round_trip::<Aliases<JsonValue>>("#a:x", j.clone()), b"#a:x");
        assert_eq!(
            round_trip::<RoomAliases>((3, "#a:x"), ()),
            cat(&[&be(3), b"#a:x"])
        );
        assert_eq!(round_trip::<PublicRooms>(3, ()), be(3));
        assert_eq!(round_trip::<RoomBump>(3, 9), be(3));
        assert_eq!(
            round_trip::<NetworkRooms>(("irc|libera", 3), ()),
            cat(&[b"irc|libera\xff", &be(3)])
        );
        assert_eq!(round_trip::<Forgotten>((7, 3), ()), cat(&[&be(7), &be(3)]));
        assert_eq!(round_trip::<Outliers>(9, 4), be(9));
        assert_eq!(
            round_trip::<InviteState<JsonValue>>((7, 3), j),
            cat(&[&be(7), &be(3)])
        );
    }

    #[test]
    fn delayed_event_keyspaces_round_trip_in_their_layout() {
        assert_eq!(
            round_trip::<DelayedEvents<JsonValue>>("hde_1", json!({"type": "m.x"})),
            b"hde_1"
        );
        assert_eq!(
            round_trip::<DelayedEventsDue>((1000, "hde_1"), 7),
            cat(&[&be(1000), b"hde_1"])
        );
        assert_eq!(
            round_trip::<DelayedEventsByUser>((7, "hde_1"), 1000),
            cat(&[&be(7), b"hde_1"])
        );
        assert_eq!(
            round_trip::<DelayedEventsByState>((3, "m.call", "", "hde_1"), ()),
            cat(&[&be(3), b"m.call\xff\xffhde_1"])
        );
    }

    #[test]
    fn delayed_events_come_due_in_time_order() {
        let (_dir, due) = filled::<DelayedEventsDue>(
            [(256, "b"), (1, "z"), (255, "a"), (256, "a")].map(|k| (k, 7)),
        );
        let order: Vec<(u64, String)> = due.iter().keys().map(Result::unwrap).collect();
        assert_eq!(
            order,
            [(1, "z"), (255, "a"), (256, "a"), (256, "b")].map(|(t, id)| (t, id.to_owned()))
        );
    }

    #[test]
    fn malformed_rows_are_refused() {
        assert_eq!(<(U64, U64)>::decode(&[0; 15]), None);
        assert_eq!(<(U64, U64)>::decode(&[0; 17]), None);
        assert_eq!(<(Term, U64)>::decode(b"a.org"), None, "no terminator");
        assert_eq!(
            <(U64, Str)>::decode(&cat(&[&be(1), b"\xfe"])),
            None,
            "not UTF-8"
        );
        assert!(<Positioned<Json<JsonValue>>>::decode(&[0; 7]).is_err());
        assert!(QueuedItem::decode(&[0, 1, 2]).is_err());
        assert!(QueuedItem::decode(&[7]).is_err());
    }

    /// A fresh database holding `rows` in the keyspace of `S`.
    fn filled<'a, S: Schema>(
        rows: impl IntoIterator<Item = (Key<'a, S>, Value<S>)>,
    ) -> (tempfile::TempDir, Table<S>) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::new(Arc::new(RocksDb::open(dir.path(), 1 << 20).unwrap())).unwrap();
        let table = Table::<S>::new(&db);
        let mut b = Batch::new();
        for (key, value) in rows {
            table.put_in(&mut b, key, &value);
        }
        db.kv().write(b).unwrap();
        (dir, table)
    }

    #[test]
    fn positions_sort_numerically_and_ranges_are_half_open() {
        let (_dir, by_pos) =
            filled::<PresenceByPos>([256, 1, 2, 255, 1 << 40].map(|pos| (pos, pos * 10)));
        let all: Vec<u64> = by_pos.iter().keys().map(Result::unwrap).collect();
        assert_eq!(all, [1, 2, 255, 256, 1 << 40]);
        let some: Vec<(u64, u64)> = by_pos.range(2, 256).map(Result::unwrap).collect();
        assert_eq!(some, [(2, 20), (255, 2550)]);
    }

    #[test]
    fn a_reverse_range_excludes_its_lower_end() {
        let (_dir, timeline) =
            filled::<Timeline>([(3, 1), (3, 5), (3, 9), (4, 2), (2, 7)].map(|k| (k, ())));
        let back = |from, down_to| -> Vec<(u64, u64)> {
            timeline
                .range_rev(from, down_to)
                .keys()
                .map(Result::unwrap)
                .collect()
        };
        assert_eq!(back((3, 9), (3, 0)), [(3, 9), (3, 5), (3, 1)]);
        assert_eq!(back((3, 8), (3, 1)), [(3, 5)]);
        assert_eq!(back((3, u64::MAX), (3, 0)), [(3, 9), (3, 5), (3, 1)]);
    }

    #[test]
    fn a_prefix_scan_sees_only_its_own_rows() {
        // Users 1 and 256 differ in one byte; devices "AB" and "ABC" share a prefix.
        let (_dir, otks) = filled::<OneTimeKeys>(
            [
                (1, "AB", "curve:1"),
                (1, "AB", "ed:1"),
                (1, "ABC", "curve:2"),
                (256, "AB", "curve:3"),
            ]
            .map(|key| (key, json!(key.2))),
        );
        let ids = |rows: crate::storage::table::Rows<'_, OneTimeKeys>| -> Vec<String> {
            rows.keys().map(|k| k.unwrap().2).collect()
        };
        // A 0xff-ended string sorts after the strings it begins: "ABC" before "AB".
        assert_eq!(ids(otks.scan((1,))), ["curve:2", "curve:1", "ed:1"]);
        assert_eq!(ids(otks.scan((1, "AB"))), ["curve:1", "ed:1"]);
        assert_eq!(ids(otks.scan((1, "AB", "curve:"))), ["curve:1"]);
        assert_eq!(ids(otks.scan((256,))), ["curve:3"]);
        assert!(!otks.any((2,)).unwrap());

        let mut b = Batch::new();
        assert_eq!(otks.delete_prefix_in(&mut b, (1, "AB")).unwrap(), 2);
        otks.db.kv().write(b).unwrap();
        assert_eq!(ids(otks.scan((1,))), ["curve:2"]);
    }

    #[test]
    fn a_reverse_scan_starts_at_the_last_row_of_the_prefix() {
        let (_dir, filters) = filled::<Filters>(
            [(1, 1), (1, 2), (1, u64::MAX), (2, 1), (0, 5)].map(|key| (key, json!(key.1))),
        );
        let last = |user| filters.scan_rev((user,)).keys().next().transpose().unwrap();
        assert_eq!(last(1), Some((1, u64::MAX)));
        assert_eq!(last(2), Some((2, 1)));
        assert_eq!(last(0), Some((0, 5)));
        assert_eq!(last(3), None);
        let ones: Vec<u64> = filters
            .scan_rev((1,))
            .keys()
            .map(|k| k.unwrap().1)
            .collect();
        assert_eq!(ones, [u64::MAX, 2, 1]);
    }

    #[test]
    fn queued_destinations_are_listed_once_each() {
        let (_dir, queue) = filled::<FedQueue>(
            [
                ("b.org", 1),
                ("a.org", 5),
                ("a.org.uk", 2),
                ("a.org", u64::MAX),
            ]
            .map(|key| (key, QueuedItem::Pdu(key.1))),
        );
        assert_eq!(
            queue.destinations().unwrap(),
            ["a.org.uk", "a.org", "b.org"]
        );
        let seqs: Vec<u64> = queue
            .scan(("a.org",))
            .keys()
            .map(|k| k.unwrap().1)
            .collect();
        assert_eq!(seqs, [5, u64::MAX]);
    }
}
