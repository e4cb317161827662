//! The end-to-end encryption key server: device keys, one-time and fallback keys, cross-signing
//! keys and signatures, the device-list change stream, and to-device messages.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use ruma::{events::room::member::MembershipState, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as JsonValue};

use crate::{
    error::{Error, Result},
    service::{
        rooms,
        stream::{Reservation, Stream},
    },
    storage::{decode_u64, schema::key, Batch, Cf, Db, ShortId},
};

#[derive(Serialize, Deserialize)]
struct FallbackKey {
    key_id: String,
    key: JsonValue,
    used: bool,
}

#[derive(Serialize, Deserialize)]
pub struct ToDeviceMessage {
    pub sender: OwnedUserId,
    #[serde(rename = "type")]
    pub kind: String,
    pub content: JsonValue,
}

/// The cross-signing key usages, as stored.
pub const USAGES: [&str; 3] = ["master", "self_signing", "user_signing"];

pub struct Service {
    db: Db,
    stream: Arc<Stream>,
    rooms: Arc<rooms::Service>,
    /// Serialises read-modify-write of key material (claims, signature merges).
    write: tokio::sync::Mutex<()>,
}

fn decode_json(cf: Cf, v: &[u8]) -> Result<JsonValue> {
    serde_json::from_slice(v).map_err(|e| Error::internal(format!("corrupt {}: {e}", cf.name())))
}

impl Service {
    pub fn new(db: Db, stream: Arc<Stream>, rooms: Arc<rooms::Service>) -> Self {
        Self {
            db,
            stream,
            rooms,
            write: tokio::sync::Mutex::new(()),
        }
    }

    /// Everyone whose sync should hear about `user`'s keys: the user and everyone sharing a room.
    fn key_watchers(&self, user: ShortId) -> Result<BTreeSet<ShortId>> {
        self.rooms.peers(user)
    }

    /// Records that `user`'s keys changed, in `batch`, at a position of `reserved`.
    fn note_change_in(&self, batch: &mut Batch, reserved: &mut Reservation, user: ShortId) {
        let pos = reserved.position_in(batch);
        batch.put(Cf::KeyChanges, key::u64_key(pos), user.to_be_bytes());
    }

    async fn commit(
        &self,
        batch: Batch,
        reserved: Reservation,
        wake: impl IntoIterator<Item = ShortId>,
    ) -> Result<()> {
        reserved.write(&self.db, batch).await?;
        self.stream.wake(wake);
        Ok(())
    }

    /// Stores a device's uploads. Device keys are replaced (a change is announced to everyone
    /// sharing a room); one-time keys are added; a fallback key replaces the previous one.
    pub async fn upload(
        &self,
        user: ShortId,
        device: &str,
        device_keys: Option<&JsonValue>,
        one_time_keys: &[(String, JsonValue)],
        fallback_keys: &[(String, JsonValue)],
    ) -> Result<BTreeMap<String, u64>> {
        let _guard = self.write.lock().await;
        let mut batch = Batch::new();
        let mut reserved = self.stream.reserve();
        let mut wake = BTreeSet::new();
        if let Some(keys) = device_keys {
            let k = key::user_and_str(user, device);
            let old = self.db.get(Cf::DeviceKeys, &k)?;
            let new = serde_json::to_vec(keys).map_err(Error::internal)?;
            // Re-uploading the same keys is a no-op for everyone else.
            if old.as_deref() != Some(new.as_slice()) {
                batch.put(Cf::DeviceKeys, k, new);
                self.note_change_in(&mut batch, &mut reserved, user);
                wake = self.key_watchers(user)?;
            }
        }
        for (id, otk) in one_time_keys {
            let k = key::device_item(user, device, id.as_bytes());
            let value = serde_json::to_vec(otk).map_err(Error::internal)?;
            match self.db.get(Cf::OneTimeKeys, &k)? {
                Some(existing) if existing == value => {}
                Some(_) => {
                    return Err(Error::invalid_param(format!(
                        "One-time key {id} already exists with different content"
                    )))
                }
                None => batch.put(Cf::OneTimeKeys, k, value),
            }
        }
        for (id, fallback) in fallback_keys {
            let algorithm = id.split_once(':').map_or(id.as_str(), |(a, _)| a);
            let value = serde_json::to_vec(&FallbackKey {
                key_id: id.clone(),
                key: fallback.clone(),
                used: false,
            })
            .map_err(Error::internal)?;
            batch.put(
                Cf::FallbackKeys,
                key::device_item(user, device, algorithm.as_bytes()),
                value,
            );
        }
        self.commit(batch, reserved, wake).await?;
        self.one_time_key_counts(user, device)
    }

    pub fn one_time_key_counts(
        &self,
        user: ShortId,
        device: &str,
    ) -> Result<BTreeMap<String, u64>> {
        let mut counts = BTreeMap::new();
        for row in self
            .db
            .scan_prefix(Cf::OneTimeKeys, &key::device_prefix(user, device))
        {
            let (k, _) = row?;
            let id = &k[key::device_prefix(user, device).len()..];
            let id = String::from_utf8_lossy(id);
            let algorithm = id
                .split_once(':')
                .map_or(id.as_ref(), |(a, _)| a)
                .to_owned();
            *counts.entry(algorithm).or_default() += 1;
        }
        Ok(counts)
    }

    /// Algorithms with a fallback key that was not used yet.
    pub fn unused_fallback_types(&self, user: ShortId, device: &str) -> Result<Vec<String>> {
        let prefix = key::device_prefix(user, device);
        let mut out = Vec::new();
        for row in self.db.scan_prefix(Cf::FallbackKeys, &prefix) {
            let (k, v) = row?;
            let fb: FallbackKey = serde_json::from_slice(&v)
                .map_err(|e| Error::internal(format!("corrupt fallback key: {e}")))?;
            if !fb.used {
                out.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
            }
        }
        Ok(out)
    }

    /// A device's keys, if it uploaded any.
    pub fn device_keys(&self, user: ShortId, device: &str) -> Result<Option<JsonValue>> {
        self.db
            .get(Cf::DeviceKeys, &key::user_and_str(user, device))?
            .map(|v| decode_json(Cf::DeviceKeys, &v))
            .transpose()
    }

    /// All device keys of a user: (device ID, keys).
    pub fn all_device_keys(&self, user: ShortId) -> Result<Vec<(String, JsonValue)>> {
        let mut out = Vec::new();
        for row in self.db.scan_prefix(Cf::DeviceKeys, &key::u64_key(user)) {
            let (k, v) = row?;
            let device = String::from_utf8_lossy(&k[8..]).into_owned();
            out.push((device, decode_json(Cf::DeviceKeys, &v)?));
        }
        Ok(out)
    }

    /// Forgets a deleted device's keys, and tells those who shared rooms with it.
    pub async fn delete_device(&self, user: ShortId, device: &str) -> Result<()> {
        let _guard = self.write.lock().await;
        let mut batch = Batch::new();
        batch.delete(Cf::DeviceKeys, key::user_and_str(user, device));
        for cf in [Cf::OneTimeKeys, Cf::FallbackKeys, Cf::ToDevice] {
            for row in self.db.scan_prefix(cf, &key::device_prefix(user, device)) {
                batch.delete(cf, row?.0);
            }
        }
        let mut reserved = self.stream.reserve();
        self.note_change_in(&mut batch, &mut reserved, user);
        let wake = self.key_watchers(user)?;
        self.commit(batch, reserved, wake).await
    }

    pub fn cross_signing_key(&self, user: ShortId, usage: &str) -> Result<Option<JsonValue>> {
        self.db
            .get(Cf::CrossSigningKeys, &key::user_and_str(user, usage))?
            .map(|v| decode_json(Cf::CrossSigningKeys, &v))
            .transpose()
    }

    /// Stores cross-signing keys (usage → key) and announces the change.
    pub async fn set_cross_signing_keys(
        &self,
        user: ShortId,
        keys: &[(&str, JsonValue)],
    ) -> Result<()> {
        let _guard = self.write.lock().await;
        let mut batch = Batch::new();
        for (usage, k) in keys {
            batch.put(
                Cf::CrossSigningKeys,
                key::user_and_str(user, usage),
                serde_json::to_vec(k).map_err(Error::internal)?,
            );
        }
        let mut reserved = self.stream.reserve();
        self.note_change_in(&mut batch, &mut reserved, user);
        let wake = self.key_watchers(user)?;
        self.commit(batch, reserved, wake).await
    }

    /// Merges the signatures of `signed` into the stored key it signs: a device's keys (by device
    /// ID) or a cross-signing key (by its public key). Returns an error message for a key that
    /// is unknown or whose signed content differs from what is stored.
    pub async fn add_signatures(
        &self,
        user: ShortId,
        key_id: &str,
        signed: &JsonValue,
    ) -> std::result::Result<(), String> {
        let _guard = self.write.lock().await;
        let stored = (|| -> Result<Option<(Cf, Vec<u8>, JsonValue)>> {
            let k = key::user_and_str(user, key_id);
            if let Some(v) = self.db.get(Cf::DeviceKeys, &k)? {
                return Ok(Some((Cf::DeviceKeys, k, decode_json(Cf::DeviceKeys, &v)?)));
            }
            for usage in USAGES {
                let k = key::user_and_str(user, usage);
                if let Some(v) = self.db.get(Cf::CrossSigningKeys, &k)? {
                    let json = decode_json(Cf::CrossSigningKeys, &v)?;
                    let matches =
                        json.get("keys")
                            .and_then(JsonValue::as_object)
                            .is_some_and(|keys| {
                                keys.keys()
                                    .any(|id| id.split_once(':').map(|(_, p)| p) == Some(key_id))
                            });
                    if matches {
                        return Ok(Some((Cf::CrossSigningKeys, k, json)));
                    }
                }
            }
            Ok(None)
        })()
        .map_err(|e| e.to_string())?;
        let Some((cf, k, mut json)) = stored else {
            return Err("Unknown key".into());
        };
        // Only signatures are merged: the signed body must be the stored one.
        let strip = |v: &JsonValue| {
            let mut v = v.clone();
            if let Some(o) = v.as_object_mut() {
                o.remove("signatures");
                o.remove("unsigned");
            }
            v
        };
        if strip(&json) != strip(signed) {
            return Err("The signed object does not match the stored key".into());
        }
        let Some(new) = signed.get("signatures").and_then(JsonValue::as_object) else {
            return Err("No signatures".into());
        };
        if !json.get("signatures").is_some_and(JsonValue::is_object) {
            json["signatures"] = json!({});
        }
        for (signer, sigs) in new {
            let Some(sigs) = sigs.as_object() else {
                continue;
            };
            if !json["signatures"]
                .get(signer)
                .is_some_and(JsonValue::is_object)
            {
                json["signatures"][signer] = json!({});
            }
            for (id, sig) in sigs {
                json["signatures"][signer][id] = sig.clone();
            }
        }
        let mut batch = Batch::new();
        batch.put(cf, k, serde_json::to_vec(&json).map_err(|e| e.to_string())?);
        let mut reserved = self.stream.reserve();
        self.note_change_in(&mut batch, &mut reserved, user);
        let wake = self.key_watchers(user).map_err(|e| e.to_string())?;
        self.commit(batch, reserved, wake)
            .await
            .map_err(|e| e.to_string())
    }

    /// Takes one one-time key of `algorithm` from a device, or its fallback key when none are
    /// left: (key ID, key).
    pub async fn claim(
        &self,
        user: ShortId,
        device: &str,
        algorithm: &str,
    ) -> Result<Option<(String, JsonValue)>> {
        let _guard = self.write.lock().await;
        let mut prefix = key::device_prefix(user, device);
        prefix.extend_from_slice(algorithm.as_bytes());
        prefix.push(b':');
        if let Some(row) = self.db.scan_prefix(Cf::OneTimeKeys, &prefix).next() {
            let (k, v) = row?;
            let id =
                String::from_utf8_lossy(&k[key::device_prefix(user, device).len()..]).into_owned();
            let mut batch = Batch::new();
            batch.delete(Cf::OneTimeKeys, k);
            self.db.write(batch).await?;
            return Ok(Some((id, decode_json(Cf::OneTimeKeys, &v)?)));
        }
        let fk = key::device_item(user, device, algorithm.as_bytes());
        let Some(v) = self.db.get(Cf::FallbackKeys, &fk)? else {
            return Ok(None);
        };
        let mut fb: FallbackKey = serde_json::from_slice(&v)
            .map_err(|e| Error::internal(format!("corrupt fallback key: {e}")))?;
        if !fb.used {
            fb.used = true;
            let mut batch = Batch::new();
            batch.put(
                Cf::FallbackKeys,
                fk,
                serde_json::to_vec(&fb).map_err(Error::internal)?,
            );
            self.db.write(batch).await?;
        }
        Ok(Some((fb.key_id, fb.key)))
    }

    /// A user of another server changed their devices or cross-signing keys (an EDU told us):
    /// local users who share a room with them see it in device_lists.changed and query again.
    pub async fn remote_keys_changed(&self, user: ShortId) -> Result<()> {
        let mut batch = Batch::new();
        let mut reserved = self.stream.reserve();
        self.note_change_in(&mut batch, &mut reserved, user);
        let wake = self.key_watchers(user)?;
        self.commit(batch, reserved, wake).await
    }

    /// Users whose keys changed in (since, upto].
    pub fn changed_users(&self, since: u64, upto: u64) -> Result<BTreeSet<ShortId>> {
        let mut out = BTreeSet::new();
        let rows = self.db.scan_range(
            Cf::KeyChanges,
            &key::u64_key(since.saturating_add(1)),
            &key::u64_key(upto.saturating_add(1)),
            false,
        );
        for row in rows {
            let (_, v) = row?;
            out.insert(decode_u64(Cf::KeyChanges, &v)?);
        }
        Ok(out)
    }

    /// The rooms a user is joined to.
    pub fn joined_rooms(&self, user: ShortId) -> Result<BTreeSet<ShortId>> {
        Ok(self
            .rooms
            .memberships(user)?
            .into_iter()
            .filter(|(_, m)| m.membership() == MembershipState::Join)
            .map(|(r, _)| r)
            .collect())
    }

    /// Whether `other` is joined to one of `rooms` (the joined rooms of `me`), or is `me`.
    pub fn shares_with(
        &self,
        me: ShortId,
        rooms: &BTreeSet<ShortId>,
        other: ShortId,
    ) -> Result<bool> {
        if me == other {
            return Ok(true);
        }
        Ok(self
            .rooms
            .memberships(other)?
            .into_iter()
            .any(|(r, m)| m.membership() == MembershipState::Join && rooms.contains(&r)))
    }

    /// Whether two users share a joined room.
    pub fn share_a_room(&self, a: ShortId, b: ShortId) -> Result<bool> {
        if a == b {
            return Ok(true);
        }
        self.shares_with(a, &self.joined_rooms(a)?, b)
    }

    /// Queues to-device messages: (recipient, device or None for all devices, content).
    pub async fn send_to_device(
        &self,
        sender: &UserId,
        kind: &str,
        messages: Vec<(ShortId, Option<String>, JsonValue)>,
        devices_of: impl Fn(ShortId) -> Result<Vec<String>>,
    ) -> Result<()> {
        let mut batch = Batch::new();
        let mut reserved = self.stream.reserve();
        let mut wake = BTreeSet::new();
        for (user, device, content) in messages {
            let devices = match device {
                Some(d) => vec![d],
                None => devices_of(user)?,
            };
            for device in devices {
                let pos = reserved.position_in(&mut batch);
                let message = ToDeviceMessage {
                    sender: sender.to_owned(),
                    kind: kind.to_owned(),
                    content: content.clone(),
                };
                batch.put(
                    Cf::ToDevice,
                    key::device_item(user, &device, &pos.to_be_bytes()),
                    serde_json::to_vec(&message).map_err(Error::internal)?,
                );
            }
            wake.insert(user);
        }
        self.commit(batch, reserved, wake).await
    }

    /// A device's inbox: drops what the client acknowledged (positions up to `ack`) and returns
    /// the messages up to `upto`.
    pub async fn to_device_inbox(
        &self,
        user: ShortId,
        device: &str,
        ack: Option<u64>,
        upto: u64,
    ) -> Result<Vec<ToDeviceMessage>> {
        let prefix = key::device_prefix(user, device);
        let mut delete = Batch::new();
        let mut out = Vec::new();
        for row in self.db.scan_prefix(Cf::ToDevice, &prefix) {
            let (k, v) = row?;
            let pos = decode_u64(Cf::ToDevice, &k[prefix.len()..])?;
            if ack.is_some_and(|a| pos <= a) {
                delete.delete(Cf::ToDevice, k);
                continue;
            }
            if pos > upto {
                break;
            }
            out.push(
                serde_json::from_slice(&v)
                    .map_err(|e| Error::internal(format!("corrupt to-device message: {e}")))?,
            );
        }
        self.db.write(delete).await?;
        Ok(out)
    }
}
