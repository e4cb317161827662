//! The end-to-end encryption key server: device keys, one-time and fallback keys, cross-signing
//! keys and signatures, the device-list change stream, and to-device messages.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use ruma::{events::room::member::MembershipState, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as JsonValue};

use super::tables::service;
use crate::{
    error::{Error, Result},
    service::{
        rooms,
        stream::{Reservation, Stream},
    },
    storage::{tables, Batch, ShortId},
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

service! {
    tables {
        device_keys: tables::DeviceKeys,
        one_time_keys: tables::OneTimeKeys,
        fallback_keys: tables::FallbackKeys<FallbackKey>,
        cross_signing_keys: tables::CrossSigningKeys,
        key_changes: tables::KeyChanges,
        to_device: tables::ToDevice<ToDeviceMessage>,
    }
    deps {
        stream: Arc<Stream>,
        rooms: Arc<rooms::Service>,
    }
    state {
        /// Serialises read-modify-write of key material (claims, signature merges).
        write: tokio::sync::Mutex<()> = tokio::sync::Mutex::new(()),
        /// Who else hears of to-device messages and key changes (appservices), set at start.
        listener: std::sync::OnceLock<std::sync::Weak<dyn KeysListener>> =
            std::sync::OnceLock::new(),
    }
}

/// Someone besides /sync who must hear of to-device messages and key changes: appservices that
/// keep their users' devices themselves (MSC2409, MSC3202) get them in their transactions.
pub trait KeysListener: Send + Sync {
    /// Offered each to-device message as it is queued; returns whether it took it (its rows are
    /// then in `batch`, at `pos`, and the device's inbox is not written).
    fn to_device_in(
        &self,
        batch: &mut Batch,
        pos: u64,
        user: ShortId,
        device: &str,
        message: &ToDeviceMessage,
    ) -> Result<bool>;

    /// Called once a batch of to-device messages or key changes is durable.
    fn written(&self);

    /// A one-time or fallback key of this device was claimed, so its counts changed.
    fn keys_claimed(&self, user: ShortId, device: &str);
}

/// The stored key that a signature upload names.
enum Signed {
    Device,
    CrossSigning(&'static str),
}

impl Service {
    /// Everyone whose sync should hear about `user`'s keys: the user and everyone sharing a room.
    fn key_watchers(&self, user: ShortId) -> Result<BTreeSet<ShortId>> {
        self.rooms.membership.peers(user)
    }

    /// Records that `user`'s keys changed, in `batch`, at a position of `reserved`.
    fn note_change_in(&self, batch: &mut Batch, reserved: &mut Reservation, user: ShortId) {
        let pos = reserved.position_in(batch);
        self.tables.key_changes.put_in(batch, pos, &user);
    }

    async fn commit(
        &self,
        batch: Batch,
        reserved: Reservation,
        wake: impl IntoIterator<Item = ShortId>,
    ) -> Result<()> {
        reserved.write(&self.db, batch).await?;
        self.stream.wake(wake);
        if let Some(l) = self.listener() {
            l.written();
        }
        Ok(())
    }

    /// Sets who else hears of to-device messages and key changes (see [`KeysListener`]).
    pub fn set_listener(&self, listener: std::sync::Weak<dyn KeysListener>) {
        let _ = self.listener.set(listener);
    }

    fn listener(&self) -> Option<Arc<dyn KeysListener>> {
        self.listener.get().and_then(std::sync::Weak::upgrade)
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
            // Re-uploading the same keys is a no-op for everyone else.
            if self.tables.device_keys.get((user, device))?.as_ref() != Some(keys) {
                self.tables
                    .device_keys
                    .put_in(&mut batch, (user, device), keys);
                self.note_change_in(&mut batch, &mut reserved, user);
                wake = self.key_watchers(user)?;
            }
        }
        for (id, otk) in one_time_keys {
            let k = (user, device, id.as_str());
            match self.tables.one_time_keys.get(k)? {
                Some(existing) if existing == *otk => {}
                Some(_) => {
                    return Err(Error::invalid_param(format!(
                        "One-time key {id} already exists with different content"
                    )))
                }
                None => self.tables.one_time_keys.put_in(&mut batch, k, otk),
            }
        }
        for (id, fallback) in fallback_keys {
            let algorithm = id.split_once(':').map_or(id.as_str(), |(a, _)| a);
            let value = FallbackKey {
                key_id: id.clone(),
                key: fallback.clone(),
                used: false,
            };
            self.tables
                .fallback_keys
                .put_in(&mut batch, (user, device, algorithm), &value);
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
        for row in self.tables.one_time_keys.scan((user, device)).keys() {
            let (_, _, id) = row?;
            let algorithm = id.split_once(':').map_or(id.as_str(), |(a, _)| a);
            *counts.entry(algorithm.to_owned()).or_default() += 1;
        }
        Ok(counts)
    }

    /// Algorithms with a fallback key that was not used yet.
    pub fn unused_fallback_types(&self, user: ShortId, device: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for row in self.tables.fallback_keys.scan((user, device)) {
            let ((_, _, algorithm), fb) = row?;
            if !fb.used {
                out.push(algorithm);
            }
        }
        Ok(out)
    }

    /// A device's keys, if it uploaded any.
    pub fn device_keys(&self, user: ShortId, device: &str) -> Result<Option<JsonValue>> {
        Ok(self.tables.device_keys.get((user, device))?)
    }

    /// All device keys of a user: (device ID, keys).
    pub fn all_device_keys(&self, user: ShortId) -> Result<Vec<(String, JsonValue)>> {
        let mut out = Vec::new();
        for row in self.tables.device_keys.scan((user,)) {
            let ((_, device), keys) = row?;
            out.push((device, keys));
        }
        Ok(out)
    }

    /// Forgets a deleted device's keys, and tells those who shared rooms with it.
    pub async fn delete_device(&self, user: ShortId, device: &str) -> Result<()> {
        let _guard = self.write.lock().await;
        let mut batch = Batch::new();
        self.tables
            .device_keys
            .delete_in(&mut batch, (user, device));
        self.tables
            .one_time_keys
            .delete_prefix_in(&mut batch, (user, device))?;
        self.tables
            .fallback_keys
            .delete_prefix_in(&mut batch, (user, device))?;
        self.tables
            .to_device
            .delete_prefix_in(&mut batch, (user, device))?;
        let mut reserved = self.stream.reserve();
        self.note_change_in(&mut batch, &mut reserved, user);
        let wake = self.key_watchers(user)?;
        self.commit(batch, reserved, wake).await
    }

    pub fn cross_signing_key(&self, user: ShortId, usage: &str) -> Result<Option<JsonValue>> {
        Ok(self.tables.cross_signing_keys.get((user, usage))?)
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
            self.tables
                .cross_signing_keys
                .put_in(&mut batch, (user, usage), k);
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
        let stored = (|| -> Result<Option<(Signed, JsonValue)>> {
            if let Some(json) = self.tables.device_keys.get((user, key_id))? {
                return Ok(Some((Signed::Device, json)));
            }
            for usage in USAGES {
                if let Some(json) = self.tables.cross_signing_keys.get((user, usage))? {
                    let matches =
                        json.get("keys")
                            .and_then(JsonValue::as_object)
                            .is_some_and(|keys| {
                                keys.keys()
                                    .any(|id| id.split_once(':').map(|(_, p)| p) == Some(key_id))
                            });
                    if matches {
                        return Ok(Some((Signed::CrossSigning(usage), json)));
                    }
                }
            }
            Ok(None)
        })()
        .map_err(|e| e.to_string())?;
        let Some((signed_key, mut json)) = stored else {
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
        match signed_key {
            Signed::Device => self
                .tables
                .device_keys
                .put_in(&mut batch, (user, key_id), &json),
            Signed::CrossSigning(usage) => {
                self.tables
                    .cross_signing_keys
                    .put_in(&mut batch, (user, usage), &json)
            }
        }
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
        let of_algorithm = format!("{algorithm}:");
        let first = self
            .tables
            .one_time_keys
            .scan((user, device, of_algorithm.as_str()))
            .next();
        if let Some(row) = first {
            let (k, otk) = row?;
            let mut batch = Batch::new();
            self.tables.one_time_keys.delete_row_in(&mut batch, &k);
            self.db.write(batch).await?;
            if let Some(l) = self.listener() {
                l.keys_claimed(user, device);
            }
            return Ok(Some((k.2, otk)));
        }
        let fk = (user, device, algorithm);
        let Some(mut fb) = self.tables.fallback_keys.get(fk)? else {
            return Ok(None);
        };
        if !fb.used {
            fb.used = true;
            let mut batch = Batch::new();
            self.tables.fallback_keys.put_in(&mut batch, fk, &fb);
            self.db.write(batch).await?;
            if let Some(l) = self.listener() {
                l.keys_claimed(user, device);
            }
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
        let rows = self
            .tables
            .key_changes
            .range(since.saturating_add(1), upto.saturating_add(1));
        for row in rows {
            let (_, user) = row?;
            out.insert(user);
        }
        Ok(out)
    }

    /// The rooms a user is joined to.
    pub fn joined_rooms(&self, user: ShortId) -> Result<BTreeSet<ShortId>> {
        Ok(self
            .rooms
            .membership
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
            .membership
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
        let listener = self.listener();
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
                let taken = match &listener {
                    Some(l) => l.to_device_in(&mut batch, pos, user, &device, &message)?,
                    None => false,
                };
                if !taken {
                    self.tables
                        .to_device
                        .put_in(&mut batch, (user, &device, pos), &message);
                }
            }
            wake.insert(user);
        }
        self.commit(batch, reserved, wake).await
    }

    /// A page of a device's inbox: drops what the client acknowledged (positions up to `ack`)
    /// and returns up to `limit` messages after it, up to `upto`, with their positions.
    pub async fn to_device_page(
        &self,
        user: ShortId,
        device: &str,
        ack: Option<u64>,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<(u64, ToDeviceMessage)>> {
        let mut delete = Batch::new();
        let mut out = Vec::new();
        for row in self.tables.to_device.scan((user, device)) {
            let ((_, _, pos), message) = row?;
            if ack.is_some_and(|a| pos <= a) {
                self.tables
                    .to_device
                    .delete_in(&mut delete, (user, device, pos));
                continue;
            }
            if pos > upto || out.len() >= limit {
                break;
            }
            out.push((pos, message));
        }
        self.db.write(delete).await?;
        Ok(out)
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
        let page = self
            .to_device_page(user, device, ack, upto, usize::MAX)
            .await?;
        Ok(page.into_iter().map(|(_, m)| m).collect())
    }
}
