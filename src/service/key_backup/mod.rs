//! Server-side key backups: per-user backup versions (numbered 1, 2, ... and never reused) and the
//! encrypted megolm session keys stored in them.
//!
//! Each version record carries its key count and an etag counter, both changed in the same batch
//! as the keys, so reading them never needs a scan of the keys.

use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;

use super::tables::service;
use crate::{
    error::{wrong_room_keys_version_kind, Error, Result},
    storage::{tables, Batch, ShortId},
};

/// A backup version as stored.
#[derive(Clone, Serialize, Deserialize)]
struct StoredVersion {
    algorithm: String,
    auth_data: JsonValue,
    /// Number of session keys in the version.
    count: u64,
    /// Bumped whenever the version's keys change.
    etag: u64,
    /// Deleted versions stay as tombstones: their numbers are not reused, and deleting them
    /// again succeeds as the spec asks.
    deleted: bool,
}

/// A backup version as clients see it.
pub struct VersionInfo {
    pub version: String,
    pub algorithm: String,
    pub auth_data: JsonValue,
    pub count: u64,
    pub etag: String,
}

/// One backed-up session key.
pub struct SessionKey {
    pub room_id: String,
    pub session_id: String,
    pub data: KeyData,
}

/// The metadata that decides which of two keys for a session is kept, and the whole object as
/// the client sent it.
#[derive(Clone)]
pub struct KeyData {
    pub is_verified: bool,
    pub first_message_index: u64,
    pub forwarded_count: u64,
    pub json: JsonValue,
}

impl KeyData {
    /// Checks a key against the spec's `KeyBackupData`; bad input is 400 M_BAD_JSON.
    pub fn from_json(json: JsonValue) -> Result<Self> {
        fn uint(json: &JsonValue, field: &str) -> Result<u64> {
            json.get(field)
                .and_then(JsonValue::as_u64)
                // Matrix integers stop at 2^53 - 1.
                .filter(|n| *n <= ruma::UInt::MAX.into())
                .ok_or_else(|| Error::bad_json(format!("{field} must be a non-negative integer")))
        }
        if !json.is_object() {
            return Err(Error::bad_json("Key data must be a JSON object"));
        }
        let is_verified = json
            .get("is_verified")
            .and_then(JsonValue::as_bool)
            .ok_or_else(|| Error::bad_json("is_verified must be a boolean"))?;
        let first_message_index = uint(&json, "first_message_index")?;
        let forwarded_count = uint(&json, "forwarded_count")?;
        if !json.get("session_data").is_some_and(JsonValue::is_object) {
            return Err(Error::bad_json("session_data must be an object"));
        }
        Ok(Self {
            is_verified,
            first_message_index,
            forwarded_count,
            json,
        })
    }

    /// The spec's order of preference: verified first, then the lower first message index
    /// (the key decrypts more), then the lower forwarded count.
    fn rank(&self) -> (bool, u64, u64) {
        (
            !self.is_verified,
            self.first_message_index,
            self.forwarded_count,
        )
    }

    /// Whether this key replaces `existing`; on a tie the stored key stays.
    fn replaces(&self, existing: &KeyData) -> bool {
        self.rank() < existing.rank()
    }
}

/// Versions are decimal integers; anything else (including "01" or "+1") names no version.
fn parse_version(version: &str) -> Option<u64> {
    version
        .parse::<u64>()
        .ok()
        .filter(|n| n.to_string() == version)
}

fn unknown_version() -> Error {
    Error::not_found("Unknown backup version")
}

fn decode_key(json: JsonValue) -> Result<KeyData> {
    KeyData::from_json(json).map_err(|e| Error::internal(format!("corrupt backup key: {e}")))
}

service! {
    tables {
        versions: tables::BackupVersions<StoredVersion>,
        keys: tables::BackupKeys,
    }
    deps {}
    state {
        /// Serialises read-modify-write of versions and their keys, so counts and etags stay exact.
        write: tokio::sync::Mutex<()> = tokio::sync::Mutex::new(()),
    }
}

impl Service {
    fn stored(&self, user: ShortId, version: u64) -> Result<Option<StoredVersion>> {
        Ok(self.tables.versions.get((user, version))?)
    }

    /// A version that exists and was not deleted.
    fn live(&self, user: ShortId, version: &str) -> Result<Option<(u64, StoredVersion)>> {
        let Some(n) = parse_version(version) else {
            return Ok(None);
        };
        Ok(self.stored(user, n)?.filter(|v| !v.deleted).map(|v| (n, v)))
    }

    /// The highest version number ever allocated to the user, deleted or not.
    fn last_allocated(&self, user: ShortId) -> Result<u64> {
        Ok(self
            .tables
            .versions
            .scan_rev((user,))
            .keys()
            .next()
            .transpose()?
            .map_or(0, |(_, n)| n))
    }

    /// The current version: the newest one that was not deleted.
    fn current(&self, user: ShortId) -> Result<Option<(u64, StoredVersion)>> {
        for row in self.tables.versions.scan_rev((user,)) {
            let ((_, n), stored) = row?;
            if !stored.deleted {
                return Ok(Some((n, stored)));
            }
        }
        Ok(None)
    }

    fn info(n: u64, v: StoredVersion) -> VersionInfo {
        VersionInfo {
            version: n.to_string(),
            algorithm: v.algorithm,
            auth_data: v.auth_data,
            count: v.count,
            etag: v.etag.to_string(),
        }
    }

    /// Creates a new version, which becomes the current one; returns its number.
    pub async fn create_version(
        &self,
        user: ShortId,
        algorithm: &str,
        auth_data: &JsonValue,
    ) -> Result<String> {
        let _guard = self.write.lock().await;
        let n = self
            .last_allocated(user)?
            .checked_add(1)
            .ok_or_else(|| Error::internal("backup versions exhausted"))?;
        let mut batch = Batch::new();
        self.tables.versions.put_in(
            &mut batch,
            (user, n),
            &StoredVersion {
                algorithm: algorithm.to_owned(),
                auth_data: auth_data.clone(),
                count: 0,
                etag: 0,
                deleted: false,
            },
        );
        self.db.write(batch).await?;
        Ok(n.to_string())
    }

    pub fn latest_version(&self, user: ShortId) -> Result<Option<VersionInfo>> {
        Ok(self.current(user)?.map(|(n, v)| Self::info(n, v)))
    }

    pub fn version(&self, user: ShortId, version: &str) -> Result<Option<VersionInfo>> {
        Ok(self.live(user, version)?.map(|(n, v)| Self::info(n, v)))
    }

    /// Replaces a version's auth_data; the algorithm cannot change.
    pub async fn update_version(
        &self,
        user: ShortId,
        version: &str,
        algorithm: &str,
        auth_data: &JsonValue,
    ) -> Result<()> {
        let _guard = self.write.lock().await;
        let (n, mut stored) = self.live(user, version)?.ok_or_else(unknown_version)?;
        if stored.algorithm != algorithm {
            return Err(Error::invalid_param(
                "The algorithm of a backup version cannot change",
            ));
        }
        stored.auth_data = auth_data.clone();
        let mut batch = Batch::new();
        self.tables.versions.put_in(&mut batch, (user, n), &stored);
        self.db.write(batch).await?;
        Ok(())
    }

    /// Deletes a version and all its keys. Deleting a deleted version succeeds; a version that
    /// never existed is 404.
    pub async fn delete_version(&self, user: ShortId, version: &str) -> Result<()> {
        let _guard = self.write.lock().await;
        let n = parse_version(version).ok_or_else(unknown_version)?;
        let mut stored = self.stored(user, n)?.ok_or_else(unknown_version)?;
        if stored.deleted {
            return Ok(());
        }
        let mut batch = Batch::new();
        self.tables.keys.delete_prefix_in(&mut batch, (user, n))?;
        stored.deleted = true;
        stored.auth_data = JsonValue::Null;
        stored.count = 0;
        stored.etag += 1;
        self.tables.versions.put_in(&mut batch, (user, n), &stored);
        self.db.write(batch).await?;
        Ok(())
    }

    /// Stores keys in the current version, keeping the better key where one exists already.
    /// Returns the version's etag and count afterwards.
    pub async fn add_keys(
        &self,
        user: ShortId,
        version: &str,
        keys: Vec<SessionKey>,
    ) -> Result<(String, u64)> {
        let _guard = self.write.lock().await;
        let (n, mut stored) = self.live(user, version)?.ok_or_else(unknown_version)?;
        // Only the newest live version takes keys; older ones can still be read and cleared.
        if let Some((current, _)) = self.current(user)?.filter(|(c, _)| *c != n) {
            return Err(Error::matrix(
                wrong_room_keys_version_kind(current.to_string()),
                "Keys can only be added to the current backup version",
            ));
        }
        let mut batch = Batch::new();
        let mut changed = false;
        for k in keys {
            let row = (user, n, k.room_id.as_str(), k.session_id.as_str());
            match self.tables.keys.get(row)?.map(decode_key).transpose()? {
                Some(old) if !k.data.replaces(&old) => continue,
                Some(_) => {}
                None => stored.count += 1,
            }
            self.tables.keys.put_in(&mut batch, row, &k.data.json);
            changed = true;
        }
        if changed {
            stored.etag += 1;
            self.tables.versions.put_in(&mut batch, (user, n), &stored);
            self.db.write(batch).await?;
        }
        Ok((stored.etag.to_string(), stored.count))
    }

    /// Keys of a live version: all of them, a room's, or one session's (in key order).
    pub fn get_keys(
        &self,
        user: ShortId,
        version: &str,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<Vec<SessionKey>> {
        let (n, _) = self.live(user, version)?.ok_or_else(unknown_version)?;
        let mut out = Vec::new();
        if let (Some(room_id), Some(session_id)) = (room_id, session_id) {
            if let Some(v) = self.tables.keys.get((user, n, room_id, session_id))? {
                out.push(SessionKey {
                    room_id: room_id.to_owned(),
                    session_id: session_id.to_owned(),
                    data: decode_key(v)?,
                });
            }
            return Ok(out);
        }
        let rows = match room_id {
            Some(room_id) => self.tables.keys.scan((user, n, room_id)),
            None => self.tables.keys.scan((user, n)),
        };
        for row in rows {
            let ((_, _, room_id, session_id), v) = row?;
            out.push(SessionKey {
                room_id,
                session_id,
                data: decode_key(v)?,
            });
        }
        Ok(out)
    }

    /// Deletes keys of a live version (all, a room's, or one session's). Returns the etag and
    /// count afterwards; the etag moves only if a key was actually removed.
    pub async fn delete_keys(
        &self,
        user: ShortId,
        version: &str,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<(String, u64)> {
        let _guard = self.write.lock().await;
        let (n, mut stored) = self.live(user, version)?.ok_or_else(unknown_version)?;
        let mut batch = Batch::new();
        let mut removed = 0u64;
        if let (Some(room_id), Some(session_id)) = (room_id, session_id) {
            let k = (user, n, room_id, session_id);
            if self.tables.keys.contains(k)? {
                self.tables.keys.delete_in(&mut batch, k);
                removed += 1;
            }
        } else {
            removed = match room_id {
                Some(room_id) => self
                    .tables
                    .keys
                    .delete_prefix_in(&mut batch, (user, n, room_id))?,
                None => self.tables.keys.delete_prefix_in(&mut batch, (user, n))?,
            };
        }
        if removed > 0 {
            stored.count = stored.count.saturating_sub(removed);
            stored.etag += 1;
            self.tables.versions.put_in(&mut batch, (user, n), &stored);
            self.db.write(batch).await?;
        }
        Ok((stored.etag.to_string(), stored.count))
    }
}
