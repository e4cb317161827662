//! Every keyspace (RocksDB column family) Hearth stores, in one table, and the only functions that
//! build their keys. Nothing outside this module assembles key bytes.
//!
//! Keys are big-endian and fixed-width where they hold numbers, so prefix and range scans come out
//! in order. Room, event, user and state-key IDs are interned to u64 short IDs (see `ShortIds`).

/// A keyspace. The discriminant order is the order of `KEYSPACES`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cf {
    Global,
    ShortIds,
    ShortIdsRev,
    Users,
    Profiles,
    Devices,
    AccessTokens,
    RefreshTokens,
    RegistrationTokens,
    Rooms,
    Pdus,
    EventMeta,
    Timeline,
    StateGroups,
    RoomState,
    Memberships,
    RoomMembers,
    TxnIds,
    Relations,
    Aliases,
    RoomAliases,
    PublicRooms,
    Threads,
    Reports,
    AccountData,
    AccountDataByPos,
    Receipts,
    ReceiptsByPos,
    Filters,
    DeviceKeys,
    OneTimeKeys,
    FallbackKeys,
    CrossSigningKeys,
    KeyChanges,
    ToDevice,
    Presence,
    PresenceByPos,
    Notifications,
    EventTxn,
    Forgotten,
    BackupVersions,
    BackupKeys,
    ServerKeys,
    Media,
    MediaThumbnails,
    MediaRefs,
    MediaExpiry,
    MediaPending,
    MediaUsage,
    UrlPreviews,
    FedQueue,
    FedTxns,
    Outliers,
    InviteState,
}

/// How a keyspace is laid out; the table below is the documentation of the database.
pub struct Keyspace {
    pub cf: Cf,
    pub name: &'static str,
    pub key: &'static str,
    pub value: &'static str,
}

pub const KEYSPACES: &[Keyspace] = &[
    Keyspace {
        cf: Cf::Global,
        name: "global",
        key: "name (ascii)",
        value: "server-wide values: schema version, counters",
    },
    Keyspace {
        cf: Cf::ShortIds,
        name: "shortids",
        key: "kind (u8) . id (utf-8)",
        value: "short id (u64 BE)",
    },
    Keyspace {
        cf: Cf::ShortIdsRev,
        name: "shortids_rev",
        key: "short id (u64 BE)",
        value: "kind (u8) . id (utf-8)",
    },
    Keyspace {
        cf: Cf::Users,
        name: "users",
        key: "user (short, u64 BE)",
        value: "UserRecord (JSON)",
    },
    Keyspace {
        cf: Cf::Profiles,
        name: "profiles",
        key: "user (short, u64 BE) . field name (utf-8)",
        value: "field value (JSON)",
    },
    Keyspace {
        cf: Cf::Devices,
        name: "devices",
        key: "user (short, u64 BE) . device id (utf-8)",
        value: "DeviceRecord (JSON)",
    },
    Keyspace {
        cf: Cf::AccessTokens,
        name: "access_tokens",
        key: "sha256(token)",
        value: "TokenRecord (JSON)",
    },
    Keyspace {
        cf: Cf::RefreshTokens,
        name: "refresh_tokens",
        key: "sha256(token)",
        value: "TokenRecord (JSON)",
    },
    Keyspace {
        cf: Cf::RegistrationTokens,
        name: "registration_tokens",
        key: "token (utf-8)",
        value: "RegistrationToken (JSON)",
    },
    Keyspace {
        cf: Cf::Rooms,
        name: "rooms",
        key: "room (short, u64 BE)",
        value: "RoomMeta (JSON): room ID, version, current state group, forward extremities",
    },
    Keyspace {
        cf: Cf::Pdus,
        name: "pdus",
        key: "event (short, u64 BE)",
        value: "the event's canonical JSON (redacted in place once redacted)",
    },
    Keyspace {
        cf: Cf::EventMeta,
        name: "event_meta",
        key: "event (short, u64 BE)",
        value: "EventMeta (binary): room, stream position, depth, state groups before/after, flags",
    },
    Keyspace {
        cf: Cf::Timeline,
        name: "timeline",
        key: "room (short, u64 BE) . stream position (u64 BE)",
        value: "event (short, u64 BE)",
    },
    Keyspace {
        cf: Cf::StateGroups,
        name: "state_groups",
        key: "state group (u64 BE)",
        value: "StateGroup (binary): parent, chain length, added (key, event) pairs, removed keys",
    },
    Keyspace {
        cf: Cf::RoomState,
        name: "room_state",
        key: "room (short, u64 BE) . state key (short, u64 BE)",
        value: "event (short, u64 BE): the room's current state",
    },
    Keyspace {
        cf: Cf::Memberships,
        name: "memberships",
        key: "user (short, u64 BE) . room (short, u64 BE)",
        value: "membership (u8) . event (short, u64 BE) . stream position (u64 BE)",
    },
    Keyspace {
        cf: Cf::RoomMembers,
        name: "room_members",
        key: "room (short, u64 BE) . user (short, u64 BE)",
        value: "membership (u8) . event (short, u64 BE) . stream position (u64 BE)",
    },
    Keyspace {
        cf: Cf::TxnIds,
        name: "txn_ids",
        key: "user (short, u64 BE) . device id . 0xff . room (short, u64 BE) . transaction id",
        value: "event ID (utf-8)",
    },
    Keyspace {
        cf: Cf::Relations,
        name: "relations",
        key: "parent event (short, u64 BE) . child event (short = stream position, u64 BE)",
        value: "rel_type (utf-8)",
    },
    Keyspace {
        cf: Cf::Threads,
        name: "threads",
        key: "room (short, u64 BE) . thread root (short, u64 BE)",
        value: "stream position of the latest reply (u64 BE)",
    },
    Keyspace {
        cf: Cf::Reports,
        name: "reports",
        key: "report id (u64 BE, time-ordered)",
        value: "Report (JSON): reporter, room, event, reason, time",
    },
    Keyspace {
        cf: Cf::Aliases,
        name: "aliases",
        key: "room alias (utf-8)",
        value: "AliasRecord (JSON): room ID, creator",
    },
    Keyspace {
        cf: Cf::RoomAliases,
        name: "room_aliases",
        key: "room (short, u64 BE) . alias (utf-8)",
        value: "empty",
    },
    Keyspace {
        cf: Cf::PublicRooms,
        name: "public_rooms",
        key: "room (short, u64 BE)",
        value: "empty: the room is in the public directory",
    },
    Keyspace {
        cf: Cf::AccountData,
        name: "account_data",
        key: "user (short, u64 BE) . room (short, u64 BE; 0 = global) . event type (utf-8)",
        value: "stream position (u64 BE) . content (JSON)",
    },
    Keyspace {
        cf: Cf::AccountDataByPos,
        name: "account_data_by_pos",
        key: "user (short, u64 BE) . stream position (u64 BE)",
        value: "room (short, u64 BE; 0 = global) . event type (utf-8)",
    },
    Keyspace {
        cf: Cf::Receipts,
        name: "receipts",
        key: "room (short, u64 BE) . user (short, u64 BE) . receipt type (utf-8) . 0xff . thread (utf-8)",
        value: "stream position (u64 BE) . Receipt (JSON): event ID, timestamp",
    },
    Keyspace {
        cf: Cf::ReceiptsByPos,
        name: "receipts_by_pos",
        key: "room (short, u64 BE) . stream position (u64 BE)",
        value: "the `receipts` key it points at",
    },
    Keyspace {
        cf: Cf::DeviceKeys,
        name: "device_keys",
        key: "user (short, u64 BE) . device id (utf-8)",
        value: "the device's signed identity keys (JSON)",
    },
    Keyspace {
        cf: Cf::OneTimeKeys,
        name: "one_time_keys",
        key: "user (short, u64 BE) . device id . 0xff . algorithm . ':' . key id (utf-8)",
        value: "the signed one-time key (JSON)",
    },
    Keyspace {
        cf: Cf::FallbackKeys,
        name: "fallback_keys",
        key: "user (short, u64 BE) . device id . 0xff . algorithm (utf-8)",
        value: "FallbackKey (JSON): key id, key, whether it was used",
    },
    Keyspace {
        cf: Cf::CrossSigningKeys,
        name: "cross_signing_keys",
        key: "user (short, u64 BE) . usage (master | self_signing | user_signing)",
        value: "the cross-signing key (JSON)",
    },
    Keyspace {
        cf: Cf::KeyChanges,
        name: "key_changes",
        key: "stream position (u64 BE)",
        value: "user whose device list or cross-signing keys changed (short, u64 BE)",
    },
    Keyspace {
        cf: Cf::ToDevice,
        name: "to_device",
        key: "user (short, u64 BE) . device id . 0xff . stream position (u64 BE)",
        value: "ToDeviceMessage (JSON): sender, type, content",
    },
    Keyspace {
        cf: Cf::Presence,
        name: "presence",
        key: "user (short, u64 BE)",
        value: "stream position (u64 BE) . Stored presence (JSON): state, status message, last active",
    },
    Keyspace {
        cf: Cf::PresenceByPos,
        name: "presence_by_pos",
        key: "stream position (u64 BE)",
        value: "user (short, u64 BE)",
    },
    Keyspace {
        cf: Cf::Notifications,
        name: "notifications",
        key: "user (short, u64 BE) . room (short, u64 BE) . event (short = stream position, u64 BE)",
        value: "StoredNotification (JSON): actions, highlight, thread root, timestamp",
    },
    Keyspace {
        cf: Cf::EventTxn,
        name: "event_txn",
        key: "event (short, u64 BE)",
        value: "device id (utf-8) . 0xff . transaction id (utf-8) of the sender's request",
    },
    Keyspace {
        cf: Cf::Forgotten,
        name: "forgotten",
        key: "user (short, u64 BE) . room (short, u64 BE)",
        value: "empty: the user left and forgot the room (cleared when they rejoin or are invited)",
    },
    Keyspace {
        cf: Cf::ServerKeys,
        name: "server_keys",
        key: "server name (utf-8)",
        value: "CachedKeys (JSON): verified keys, the server's signed response, when fetched",
    },
    Keyspace {
        cf: Cf::Filters,
        name: "filters",
        key: "user (short, u64 BE) . filter id (u64 BE)",
        value: "filter definition (JSON)",
    },
    Keyspace {
        cf: Cf::BackupVersions,
        name: "backup_versions",
        key: "user (short, u64 BE) . backup version (u64 BE)",
        value: "BackupVersion (JSON): algorithm, auth_data, key count, etag, deleted flag",
    },
    Keyspace {
        cf: Cf::BackupKeys,
        name: "backup_keys",
        key: "user (short, u64 BE) . backup version (u64 BE) . room ID (utf-8) . 0xff . session ID (utf-8)",
        value: "the backed-up session key (KeyBackupData JSON)",
    },
    Keyspace {
        cf: Cf::Media,
        name: "media",
        key: "server name (utf-8) . 0xff . media id (utf-8)",
        value: "MediaRecord (JSON): content hash (none while a /create awaits its upload), type, \
                filename, size, uploader, created time",
    },
    Keyspace {
        cf: Cf::MediaThumbnails,
        name: "media_thumbnails",
        key: "media key . 0xff . width (u32 BE) . height (u32 BE) . method (u8) . content type (utf-8)",
        value: "ThumbnailRecord (JSON): content hash, type, size, actual width and height",
    },
    Keyspace {
        cf: Cf::MediaRefs,
        name: "media_refs",
        key: "content hash (sha256, 32 bytes) . media key or thumbnail key",
        value: "empty: who uses a stored file; the file goes when its last row does",
    },
    Keyspace {
        cf: Cf::MediaExpiry,
        name: "media_expiry",
        key: "kind (u8: local, remote, pending /create, url preview) . time (ms, u64 BE) . subject",
        value: "empty: what the retention job may delete, oldest first (subject: media key or URL)",
    },
    Keyspace {
        cf: Cf::MediaPending,
        name: "media_pending",
        key: "user (short, u64 BE) . media id (utf-8)",
        value: "expiry time (ms, u64 BE) of a /create that awaits its upload",
    },
    Keyspace {
        cf: Cf::MediaUsage,
        name: "media_usage",
        key: "user (short, u64 BE)",
        value: "bytes of local media the user uploaded (u64 BE), for the quota",
    },
    Keyspace {
        cf: Cf::UrlPreviews,
        name: "url_previews",
        key: "url (utf-8)",
        value: "CachedPreview (JSON): fetch time, OpenGraph data",
    },
    Keyspace {
        cf: Cf::FedQueue,
        name: "federation_queue",
        key: "destination server name (utf-8) . 0xff . sequence (u64 BE)",
        value: "QueuedItem: 0 . event (short, u64 BE) for a PDU, or 1 . EDU JSON",
    },
    Keyspace {
        cf: Cf::FedTxns,
        name: "federation_txns",
        key: "origin server name (utf-8) . 0xff . transaction id (utf-8)",
        value: "the /send response we gave (JSON), so a retried transaction is answered the same",
    },
    Keyspace {
        cf: Cf::Outliers,
        name: "outliers",
        key: "event (short, u64 BE)",
        value: "u8 flags: 1 outlier (auth or state event fetched without its place in the DAG), \
                2 rejected by the auth rules, 4 soft-failed",
    },
    Keyspace {
        cf: Cf::InviteState,
        name: "invite_state",
        key: "user (short, u64 BE) . room (short, u64 BE)",
        value: "stripped state (JSON array) another server sent with an invite to a room we are not in",
    },
];

impl Cf {
    pub fn name(self) -> &'static str {
        KEYSPACES
            .iter()
            .find(|k| k.cf == self)
            .map(|k| k.name)
            .unwrap_or("unknown")
    }
}

/// The version of this layout; a database written by a newer version is refused at start.
pub const SCHEMA_VERSION: u64 = 1;

/// A u64 short ID, interned from a string ID by `ShortIds`.
pub type ShortId = u64;

/// The kinds of string IDs that get short IDs; the byte prefixes the interned string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum IdKind {
    User = 1,
    Room = 2,
    Event = 3,
    StateKey = 4,
}

pub mod key {
    //! Key builders, one per keyspace.
    use super::{IdKind, ShortId};

    pub const GLOBAL_SCHEMA_VERSION: &[u8] = b"schema_version";
    pub const GLOBAL_NEXT_SHORT_ID: &[u8] = b"next_short_id";
    pub const GLOBAL_NEXT_STATE_GROUP: &[u8] = b"next_state_group";
    pub const GLOBAL_STREAM_POS: &[u8] = b"stream_pos";
    pub const GLOBAL_SIGNING_KEY: &[u8] = b"signing_key";

    pub fn short_id(kind: IdKind, id: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(1 + id.len());
        k.push(kind as u8);
        k.extend_from_slice(id);
        k
    }

    /// The interned form of a (event type, state key) pair: the type's length makes it unambiguous.
    pub fn state_key_id(event_type: &str, state_key: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(4 + event_type.len() + state_key.len());
        k.extend_from_slice(&(event_type.len() as u32).to_be_bytes());
        k.extend_from_slice(event_type.as_bytes());
        k.extend_from_slice(state_key.as_bytes());
        k
    }

    pub fn split_state_key_id(id: &[u8]) -> Option<(&str, &str)> {
        let (len, rest) = id.split_at_checked(4)?;
        let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
        let (t, sk) = rest.split_at_checked(len)?;
        Some((std::str::from_utf8(t).ok()?, std::str::from_utf8(sk).ok()?))
    }

    pub fn u64_key(n: u64) -> [u8; 8] {
        n.to_be_bytes()
    }

    pub fn pair(a: u64, b: u64) -> [u8; 16] {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&a.to_be_bytes());
        k[8..].copy_from_slice(&b.to_be_bytes());
        k
    }

    pub fn split_pair(k: &[u8]) -> Option<(u64, u64)> {
        if k.len() != 16 {
            return None;
        }
        Some((
            u64::from_be_bytes(k[..8].try_into().ok()?),
            u64::from_be_bytes(k[8..].try_into().ok()?),
        ))
    }

    pub fn triple(a: u64, b: u64, c: u64) -> [u8; 24] {
        let mut k = [0u8; 24];
        k[..8].copy_from_slice(&a.to_be_bytes());
        k[8..16].copy_from_slice(&b.to_be_bytes());
        k[16..].copy_from_slice(&c.to_be_bytes());
        k
    }

    /// Transaction IDs are scoped to the device and the room they were used in.
    /// A destination's queue row, or with `seq` 0 the start of its rows.
    pub fn fed_queue(destination: &str, seq: u64) -> Vec<u8> {
        let mut k = Vec::with_capacity(destination.len() + 9);
        k.extend_from_slice(destination.as_bytes());
        k.push(0xff);
        k.extend_from_slice(&seq.to_be_bytes());
        k
    }

    pub fn split_fed_queue(k: &[u8]) -> Option<(&str, u64)> {
        let (dest, rest) = k.split_at_checked(k.len().checked_sub(9)?)?;
        if rest.first() != Some(&0xff) {
            return None;
        }
        let seq = u64::from_be_bytes(rest.get(1..9)?.try_into().ok()?);
        Some((std::str::from_utf8(dest).ok()?, seq))
    }

    pub fn fed_txn(origin: &str, txn_id: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(origin.len() + 1 + txn_id.len());
        k.extend_from_slice(origin.as_bytes());
        k.push(0xff);
        k.extend_from_slice(txn_id.as_bytes());
        k
    }

    pub fn txn_id(user: ShortId, device_id: &str, room: ShortId, txn_id: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(17 + device_id.len() + txn_id.len());
        k.extend_from_slice(&user.to_be_bytes());
        k.extend_from_slice(device_id.as_bytes());
        k.push(0xff);
        k.extend_from_slice(&room.to_be_bytes());
        k.extend_from_slice(txn_id.as_bytes());
        k
    }

    pub fn room_alias(room: ShortId, alias: &str) -> Vec<u8> {
        user_and_str(room, alias)
    }

    pub fn alias(alias: &str) -> Vec<u8> {
        alias.as_bytes().to_vec()
    }

    pub fn short_id_rev(short: ShortId) -> [u8; 8] {
        short.to_be_bytes()
    }

    pub fn user(user: ShortId) -> [u8; 8] {
        user.to_be_bytes()
    }

    pub fn user_and_str(user: ShortId, s: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(8 + s.len());
        k.extend_from_slice(&user.to_be_bytes());
        k.extend_from_slice(s.as_bytes());
        k
    }

    pub fn profile_field(user: ShortId, field: &str) -> Vec<u8> {
        user_and_str(user, field)
    }

    pub fn device(user: ShortId, device_id: &str) -> Vec<u8> {
        user_and_str(user, device_id)
    }

    /// The prefix under which all of a user's rows live in a keyspace keyed by user first.
    pub fn user_prefix(user: ShortId) -> [u8; 8] {
        user.to_be_bytes()
    }

    /// Splits a `user . string` key back into its parts.
    pub fn account_data(user: ShortId, room: ShortId, kind: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(16 + kind.len());
        k.extend_from_slice(&user.to_be_bytes());
        k.extend_from_slice(&room.to_be_bytes());
        k.extend_from_slice(kind.as_bytes());
        k
    }

    pub fn receipt(room: ShortId, user: ShortId, kind: &str, thread: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(17 + kind.len() + thread.len());
        k.extend_from_slice(&room.to_be_bytes());
        k.extend_from_slice(&user.to_be_bytes());
        k.extend_from_slice(kind.as_bytes());
        k.push(0xff);
        k.extend_from_slice(thread.as_bytes());
        k
    }

    /// (room, user, receipt type, thread) of a `receipts` key.
    pub fn split_receipt(k: &[u8]) -> Option<(ShortId, ShortId, &str, &str)> {
        let room = ShortId::from_be_bytes(k.get(..8)?.try_into().ok()?);
        let user = ShortId::from_be_bytes(k.get(8..16)?.try_into().ok()?);
        let rest = k.get(16..)?;
        let sep = rest.iter().position(|b| *b == 0xff)?;
        Some((
            room,
            user,
            std::str::from_utf8(&rest[..sep]).ok()?,
            std::str::from_utf8(&rest[sep + 1..]).ok()?,
        ))
    }

    pub fn notification(user: ShortId, room: ShortId, event: ShortId) -> [u8; 24] {
        let mut k = [0u8; 24];
        k[..8].copy_from_slice(&user.to_be_bytes());
        k[8..16].copy_from_slice(&room.to_be_bytes());
        k[16..].copy_from_slice(&event.to_be_bytes());
        k
    }

    /// user . device . 0xff, the prefix of a device's one-time keys, fallback keys and inbox.
    pub fn device_prefix(user: ShortId, device: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(9 + device.len());
        k.extend_from_slice(&user.to_be_bytes());
        k.extend_from_slice(device.as_bytes());
        k.push(0xff);
        k
    }

    pub fn device_item(user: ShortId, device: &str, item: &[u8]) -> Vec<u8> {
        let mut k = device_prefix(user, device);
        k.extend_from_slice(item);
        k
    }

    pub fn split_user_key(key: &[u8]) -> Option<(ShortId, &str)> {
        let (u, rest) = key.split_at_checked(8)?;
        let user = ShortId::from_be_bytes(u.try_into().ok()?);
        Some((user, std::str::from_utf8(rest).ok()?))
    }

    /// user . version: a backup version's record, and the prefix of all its keys.
    pub fn backup_version(user: ShortId, version: u64) -> [u8; 16] {
        pair(user, version)
    }

    /// user . version . room ID . 0xff, the prefix of a room's keys in a backup version. Room IDs
    /// are stored as strings: clients back up keys of rooms this server may never have seen.
    pub fn backup_room_prefix(user: ShortId, version: u64, room_id: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(17 + room_id.len());
        k.extend_from_slice(&pair(user, version));
        k.extend_from_slice(room_id.as_bytes());
        k.push(0xff);
        k
    }

    pub fn backup_key(user: ShortId, version: u64, room_id: &str, session_id: &str) -> Vec<u8> {
        let mut k = backup_room_prefix(user, version, room_id);
        k.extend_from_slice(session_id.as_bytes());
        k
    }

    /// (room ID, session ID) of a `backup_keys` key.
    pub fn split_backup_key(k: &[u8]) -> Option<(&str, &str)> {
        let rest = k.get(16..)?;
        let sep = rest.iter().position(|b| *b == 0xff)?;
        Some((
            std::str::from_utf8(&rest[..sep]).ok()?,
            std::str::from_utf8(&rest[sep + 1..]).ok()?,
        ))
    }

    pub fn token(token_hash: &[u8; 32]) -> [u8; 32] {
        *token_hash
    }

    pub fn registration_token(token: &str) -> Vec<u8> {
        token.as_bytes().to_vec()
    }

    /// server name . 0xff . media id: a media item, and the prefix of its thumbnails.
    pub fn media(server_name: &str, media_id: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(1 + server_name.len() + media_id.len());
        k.extend_from_slice(server_name.as_bytes());
        k.push(0xff);
        k.extend_from_slice(media_id.as_bytes());
        k
    }

    /// (server name, media id) of a `media` key.
    pub fn split_media(k: &[u8]) -> Option<(&str, &str)> {
        let sep = k.iter().position(|b| *b == 0xff)?;
        Some((
            std::str::from_utf8(&k[..sep]).ok()?,
            std::str::from_utf8(&k[sep + 1..]).ok()?,
        ))
    }

    /// The prefix of all thumbnails of a media item.
    pub fn media_thumbnail_prefix(media: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(media.len() + 1);
        k.extend_from_slice(media);
        k.push(0xff);
        k
    }

    pub fn media_thumbnail(
        media: &[u8],
        width: u32,
        height: u32,
        method: u8,
        content_type: &str,
    ) -> Vec<u8> {
        let mut k = media_thumbnail_prefix(media);
        k.extend_from_slice(&width.to_be_bytes());
        k.extend_from_slice(&height.to_be_bytes());
        k.push(method);
        k.extend_from_slice(content_type.as_bytes());
        k
    }

    /// content hash . user: the user's (a media or thumbnail key) reference to a stored file.
    pub fn media_ref(hash: &[u8; 32], user: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(32 + user.len());
        k.extend_from_slice(hash);
        k.extend_from_slice(user);
        k
    }

    /// Kinds of rows in `media_expiry`.
    pub const MEDIA_EXPIRY_LOCAL: u8 = 0;
    pub const MEDIA_EXPIRY_REMOTE: u8 = 1;
    pub const MEDIA_EXPIRY_PENDING: u8 = 2;
    pub const MEDIA_EXPIRY_PREVIEW: u8 = 3;

    pub fn media_expiry(kind: u8, time_ms: u64, subject: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(9 + subject.len());
        k.push(kind);
        k.extend_from_slice(&time_ms.to_be_bytes());
        k.extend_from_slice(subject);
        k
    }

    /// (time, subject) of a `media_expiry` key.
    pub fn split_media_expiry(k: &[u8]) -> Option<(u64, &[u8])> {
        let time = u64::from_be_bytes(k.get(1..9)?.try_into().ok()?);
        Some((time, k.get(9..)?))
    }

    pub fn media_pending(user: ShortId, media_id: &str) -> Vec<u8> {
        user_and_str(user, media_id)
    }

    pub fn url_preview(url: &str) -> Vec<u8> {
        url.as_bytes().to_vec()
    }
}
