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

    pub fn short_id(kind: IdKind, id: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(1 + id.len());
        k.push(kind as u8);
        k.extend_from_slice(id.as_bytes());
        k
    }

    pub fn short_id_rev(short: ShortId) -> [u8; 8] {
        short.to_be_bytes()
    }

    pub fn user(user: ShortId) -> [u8; 8] {
        user.to_be_bytes()
    }

    fn user_and_str(user: ShortId, s: &str) -> Vec<u8> {
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
    pub fn split_user_key(key: &[u8]) -> Option<(ShortId, &str)> {
        let (u, rest) = key.split_at_checked(8)?;
        let user = ShortId::from_be_bytes(u.try_into().ok()?);
        Some((user, std::str::from_utf8(rest).ok()?))
    }

    pub fn token(token_hash: &[u8; 32]) -> [u8; 32] {
        *token_hash
    }

    pub fn registration_token(token: &str) -> Vec<u8> {
        token.as_bytes().to_vec()
    }
}
