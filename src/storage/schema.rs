//! Every keyspace (RocksDB column family) Hearth stores, by name. How each lays out its keys and
//! values is in `tables`, the one place that documents and codes it; services use those typed
//! tables and never a `Cf`.
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
    AppserviceQueue,
    AppserviceTxns,
    NetworkRooms,
    RoomBump,
    Pushers,
    PushQueue,
    UserDirectory,
    UserDirectoryTerms,
    DelayedEvents,
    DelayedEventsDue,
    DelayedEventsByUser,
    DelayedEventsByState,
    SearchQueue,
}

/// A keyspace's column family and its name in RocksDB (which must never change: it is on disk).
pub struct Keyspace {
    pub cf: Cf,
    pub name: &'static str,
}

/// Every keyspace. Their key and value layouts are documented, and coded, in `tables`.
pub const KEYSPACES: &[Keyspace] = &[
    Keyspace {
        cf: Cf::Global,
        name: "global",
    },
    Keyspace {
        cf: Cf::ShortIds,
        name: "shortids",
    },
    Keyspace {
        cf: Cf::ShortIdsRev,
        name: "shortids_rev",
    },
    Keyspace {
        cf: Cf::Users,
        name: "users",
    },
    Keyspace {
        cf: Cf::Profiles,
        name: "profiles",
    },
    Keyspace {
        cf: Cf::Devices,
        name: "devices",
    },
    Keyspace {
        cf: Cf::AccessTokens,
        name: "access_tokens",
    },
    Keyspace {
        cf: Cf::RefreshTokens,
        name: "refresh_tokens",
    },
    Keyspace {
        cf: Cf::RegistrationTokens,
        name: "registration_tokens",
    },
    Keyspace {
        cf: Cf::Rooms,
        name: "rooms",
    },
    Keyspace {
        cf: Cf::Pdus,
        name: "pdus",
    },
    Keyspace {
        cf: Cf::EventMeta,
        name: "event_meta",
    },
    Keyspace {
        cf: Cf::Timeline,
        name: "timeline",
    },
    Keyspace {
        cf: Cf::StateGroups,
        name: "state_groups",
    },
    Keyspace {
        cf: Cf::RoomState,
        name: "room_state",
    },
    Keyspace {
        cf: Cf::Memberships,
        name: "memberships",
    },
    Keyspace {
        cf: Cf::RoomMembers,
        name: "room_members",
    },
    Keyspace {
        cf: Cf::TxnIds,
        name: "txn_ids",
    },
    Keyspace {
        cf: Cf::Relations,
        name: "relations",
    },
    Keyspace {
        cf: Cf::Threads,
        name: "threads",
    },
    Keyspace {
        cf: Cf::Reports,
        name: "reports",
    },
    Keyspace {
        cf: Cf::Aliases,
        name: "aliases",
    },
    Keyspace {
        cf: Cf::RoomAliases,
        name: "room_aliases",
    },
    Keyspace {
        cf: Cf::PublicRooms,
        name: "public_rooms",
    },
    Keyspace {
        cf: Cf::AccountData,
        name: "account_data",
    },
    Keyspace {
        cf: Cf::AccountDataByPos,
        name: "account_data_by_pos",
    },
    Keyspace {
        cf: Cf::Receipts,
        name: "receipts",
    },
    Keyspace {
        cf: Cf::ReceiptsByPos,
        name: "receipts_by_pos",
    },
    Keyspace {
        cf: Cf::DeviceKeys,
        name: "device_keys",
    },
    Keyspace {
        cf: Cf::OneTimeKeys,
        name: "one_time_keys",
    },
    Keyspace {
        cf: Cf::FallbackKeys,
        name: "fallback_keys",
    },
    Keyspace {
        cf: Cf::CrossSigningKeys,
        name: "cross_signing_keys",
    },
    Keyspace {
        cf: Cf::KeyChanges,
        name: "key_changes",
    },
    Keyspace {
        cf: Cf::ToDevice,
        name: "to_device",
    },
    Keyspace {
        cf: Cf::Presence,
        name: "presence",
    },
    Keyspace {
        cf: Cf::PresenceByPos,
        name: "presence_by_pos",
    },
    Keyspace {
        cf: Cf::Notifications,
        name: "notifications",
    },
    Keyspace {
        cf: Cf::EventTxn,
        name: "event_txn",
    },
    Keyspace {
        cf: Cf::Forgotten,
        name: "forgotten",
    },
    Keyspace {
        cf: Cf::ServerKeys,
        name: "server_keys",
    },
    Keyspace {
        cf: Cf::Filters,
        name: "filters",
    },
    Keyspace {
        cf: Cf::BackupVersions,
        name: "backup_versions",
    },
    Keyspace {
        cf: Cf::BackupKeys,
        name: "backup_keys",
    },
    Keyspace {
        cf: Cf::Media,
        name: "media",
    },
    Keyspace {
        cf: Cf::MediaThumbnails,
        name: "media_thumbnails",
    },
    Keyspace {
        cf: Cf::MediaRefs,
        name: "media_refs",
    },
    Keyspace {
        cf: Cf::MediaExpiry,
        name: "media_expiry",
    },
    Keyspace {
        cf: Cf::MediaPending,
        name: "media_pending",
    },
    Keyspace {
        cf: Cf::MediaUsage,
        name: "media_usage",
    },
    Keyspace {
        cf: Cf::UrlPreviews,
        name: "url_previews",
    },
    Keyspace {
        cf: Cf::FedQueue,
        name: "federation_queue",
    },
    Keyspace {
        cf: Cf::FedTxns,
        name: "federation_txns",
    },
    Keyspace {
        cf: Cf::Outliers,
        name: "outliers",
    },
    Keyspace {
        cf: Cf::InviteState,
        name: "invite_state",
    },
    Keyspace {
        cf: Cf::AppserviceQueue,
        name: "appservice_queue",
    },
    Keyspace {
        cf: Cf::AppserviceTxns,
        name: "appservice_txns",
    },
    Keyspace {
        cf: Cf::NetworkRooms,
        name: "network_rooms",
    },
    Keyspace {
        cf: Cf::RoomBump,
        name: "room_bump",
    },
    Keyspace {
        cf: Cf::Pushers,
        name: "pushers",
    },
    Keyspace {
        cf: Cf::PushQueue,
        name: "push_queue",
    },
    Keyspace {
        cf: Cf::UserDirectory,
        name: "user_directory",
    },
    Keyspace {
        cf: Cf::UserDirectoryTerms,
        name: "user_directory_terms",
    },
    Keyspace {
        cf: Cf::DelayedEvents,
        name: "delayed_events",
    },
    Keyspace {
        cf: Cf::DelayedEventsDue,
        name: "delayed_events_due",
    },
    Keyspace {
        cf: Cf::DelayedEventsByUser,
        name: "delayed_events_by_user",
    },
    Keyspace {
        cf: Cf::DelayedEventsByState,
        name: "delayed_events_by_state",
    },
    Keyspace {
        cf: Cf::SearchQueue,
        name: "search_queue",
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

pub(super) mod key {
    //! The rows of `global`, and the keys of `shortids` and `shortids_rev`, which belong to `Db`
    //! and `ShortIds` rather than to a table.
    use super::{IdKind, ShortId};
    pub const GLOBAL_SCHEMA_VERSION: &[u8] = b"schema_version";

    pub const GLOBAL_NEXT_SHORT_ID: &[u8] = b"next_short_id";

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

    pub fn short_id_rev(short: ShortId) -> [u8; 8] {
        short.to_be_bytes()
    }
}
